//! Which web pages may open a live connection: the `Origin` allow-list of the WebSocket endpoints.
//!
//! A browser sends `Origin` with every WebSocket upgrade, and lets any page open a socket to any
//! server with the user's cookies. So a socket whose `Origin` names another site is refused (403)
//! unless that site is allowed: the server's own origin (the `Origin` names the request's `Host`),
//! the origin of `public_url`, and `realtime.allowed_origins` (`"*"` allows every origin). A client
//! that sends no `Origin` is not a browser page and is let through (its credentials are its own).

use axum::http::{header, HeaderMap};

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Allowed origins, lower case, without a trailing slash (`https://vote.example.tv`).
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// `allowed_origins` from the configuration, and `public_url` (its origin is allowed).
    pub fn new(allowed_origins: &[String], public_url: &str) -> Self {
        let mut allowed: Vec<String> = allowed_origins
            .iter()
            .filter(|o| o.as_str() != "*")
            .map(|o| normalize(o))
            .collect();
        if let Some(origin) = origin_of(public_url) {
            allowed.push(origin);
        }
        Self {
            allowed,
            any: allowed_origins.iter().any(|o| o == "*"),
        }
    }

    /// `Err` with the refused origin when a browser page of another site asks.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = normalize(origin.to_str().unwrap_or_default());
        if self.any || self.allowed.contains(&origin) {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let authority = origin.split_once("://").map(|(_, a)| a);
        if host.is_some() && authority == host.as_deref() {
            return Ok(());
        }
        Err(origin)
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `scheme://authority` of a URL (`https://vote.example.tv/x` → `https://vote.example.tv`).
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(normalize(&format!("{scheme}://{authority}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn own_origin_public_url_and_the_list_are_allowed_and_other_sites_refused() {
        let policy = OriginPolicy::new(
            &["https://Partner.example.com/".into()],
            "https://vote.example.tv/p",
        );
        let host = "crowdtick.internal:8080";
        assert!(policy.check(&headers(None, host)).is_ok());
        assert!(policy
            .check(&headers(Some("http://crowdtick.internal:8080"), host))
            .is_ok());
        assert!(policy
            .check(&headers(Some("https://vote.example.tv"), host))
            .is_ok());
        assert!(policy
            .check(&headers(Some("https://partner.example.com"), host))
            .is_ok());
        assert_eq!(
            policy.check(&headers(Some("https://evil.example"), host)),
            Err("https://evil.example".to_owned())
        );
        // The same host on another port is another origin.
        assert!(policy
            .check(&headers(Some("http://crowdtick.internal:9090"), host))
            .is_err());
        assert!(OriginPolicy::new(&["*".into()], "")
            .check(&headers(Some("https://evil.example"), host))
            .is_ok());
    }
}
