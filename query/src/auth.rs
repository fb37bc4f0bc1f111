//! Operator API keys.

use axum::http::{header, HeaderMap};
use schemas::ApiError;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct OperatorKeys(Arc<Vec<String>>);

impl OperatorKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(Arc::new(
            keys.into_iter().filter(|k| !k.is_empty()).collect(),
        ))
    }

    /// Whether the request carries a valid key: `Authorization: Bearer <key>`, `X-Api-Key: <key>`,
    /// or `?key=<key>` (for WebSocket/SSE, which cannot set headers from a browser).
    pub fn is_operator(&self, headers: &HeaderMap, query_key: Option<&str>) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, api_key, query_key]
            .into_iter()
            .flatten()
            .any(|k| self.matches(k))
    }

    pub fn require(&self, headers: &HeaderMap, query_key: Option<&str>) -> Result<(), ApiError> {
        if self.is_operator(headers, query_key) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("this needs an operator API key: send `Authorization: Bearer <key>` (the key is in the server's configuration, `operator_keys`)"))
        }
    }

    fn matches(&self, given: &str) -> bool {
        self.0
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), given.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_headers_or_query() {
        let keys = OperatorKeys::new(vec!["s3cret".into()]);
        let mut h = HeaderMap::new();
        assert!(!keys.is_operator(&h, None));
        assert!(keys.is_operator(&h, Some("s3cret")));
        assert!(!keys.is_operator(&h, Some("s3cre")));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(keys.is_operator(&h, None));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "s3cret".parse().unwrap());
        assert!(keys.is_operator(&h, None));
        assert!(
            keys.require(&HeaderMap::new(), None).unwrap_err().status
                == axum::http::StatusCode::UNAUTHORIZED
        );
    }
}
