//! Operator API keys and what a request proves with them: a key in a header, or a session cookie
//! minted from one ([`super::token`]).

use super::token::{self, Grant, TokenError, TokenSecret, Verified};
use super::{key_in_url, SESSION_COOKIE};
use crate::ApiError;
use axum::http::{header, HeaderMap};
use schemas::PollId;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The configured operator keys, kept as SHA-256 digests (for comparison) and token secrets.
#[derive(Clone, Debug)]
pub struct OperatorKeys(Arc<Keys>);

#[derive(Debug)]
struct Keys {
    digests: Vec<[u8; 32]>,
    secrets: Vec<TokenSecret>,
}

/// The request's operator credential: the index of the key it proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    pub key: usize,
    /// Proven by a session cookie (not by the key itself): when that session ends (Unix seconds).
    pub session_expires: Option<u64>,
}

const NEEDS_OPERATOR: &str = "this needs an operator: send `Authorization: Bearer <key>` (the key \
     is in the server's configuration, `operator_keys`), or sign in once with `POST \
     /v1/operator/session` and send its cookie";

impl OperatorKeys {
    pub fn new(keys: Vec<String>) -> Self {
        let keys: Vec<String> = keys.into_iter().filter(|k| !k.is_empty()).collect();
        Self(Arc::new(Keys {
            digests: keys.iter().map(|k| digest(k)).collect(),
            secrets: keys.iter().map(|k| TokenSecret::derive(k)).collect(),
        }))
    }

    /// The key a request names in `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
    pub fn key_in_headers(&self, headers: &HeaderMap) -> Option<usize> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, api_key]
            .into_iter()
            .flatten()
            .find_map(|k| self.matching(k))
    }

    /// The operator a request proves: a key in a header, or a valid session cookie.
    pub fn operator(&self, headers: &HeaderMap) -> Option<Operator> {
        if let Some(key) = self.key_in_headers(headers) {
            return Some(Operator {
                key,
                session_expires: None,
            });
        }
        session_cookies(headers).find_map(|t| match self.verify(t) {
            Ok(Verified {
                grant: Grant::Session,
                key,
                expires,
            }) => Some(Operator {
                key,
                session_expires: Some(expires),
            }),
            _ => None,
        })
    }

    /// Whether the request proves an operator (see [`Self::operator`]).
    pub fn is_operator(&self, headers: &HeaderMap) -> bool {
        self.operator(headers).is_some()
    }

    /// `Ok` for an operator. `query_key` is the request's `?key=`, if it has one: keys are not
    /// taken from URLs (they end up in logs, history and Referer headers), so it is refused.
    pub fn require(&self, headers: &HeaderMap, query_key: Option<&str>) -> Result<(), ApiError> {
        if query_key.is_some() {
            return Err(key_in_url());
        }
        self.require_operator(headers).map(|_| ())
    }

    /// The operator, or 401 saying what to send.
    pub fn require_operator(&self, headers: &HeaderMap) -> Result<Operator, ApiError> {
        self.operator(headers)
            .ok_or_else(|| ApiError::unauthorized(NEEDS_OPERATOR))
    }

    /// Whether a request may see poll `poll`'s results under embargo: an operator, or the holder
    /// of a screen token for that poll (`?token=`). A `?key=` or a token that is not valid for
    /// this poll now is a 401 that says why.
    pub fn sees_embargoed(
        &self,
        headers: &HeaderMap,
        query_key: Option<&str>,
        query_token: Option<&str>,
        poll: PollId,
    ) -> Result<bool, ApiError> {
        if query_key.is_some() {
            return Err(key_in_url());
        }
        if let Some(t) = query_token {
            return match self.verify(t) {
                Ok(Verified {
                    grant: Grant::Screen { poll: p },
                    ..
                }) if p == poll => Ok(true),
                Ok(_) => Err(ApiError::unauthorized(format!(
                    "this token is not a screen token for poll {poll}; an operator mints one with \
                     `POST /v1/polls/{poll}/screen-token`"
                ))),
                Err(e) => Err(ApiError::unauthorized(format!(
                    "screen token refused: {e}; an operator mints a new one with `POST \
                     /v1/polls/{poll}/screen-token`"
                ))),
            };
        }
        Ok(self.is_operator(headers))
    }

    /// Checks a token against every key's secret.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        token::verify(&self.0.secrets, token, token::unix_now())
    }

    /// A token for `grant`, valid for `ttl_secs`, signed with key `key`'s secret (so it dies with
    /// that key). Answers the token and its expiry (Unix seconds).
    pub fn mint(&self, key: usize, grant: Grant, ttl_secs: u64) -> (String, u64) {
        let expires = token::unix_now() + ttl_secs;
        (self.0.secrets[key].sign(grant, expires), expires)
    }

    /// The index of the key equal to `given`. Compares SHA-256 digests in constant time, and
    /// every key, so neither the time nor anything else tells how much of a key (or of its
    /// length) was right.
    fn matching(&self, given: &str) -> Option<usize> {
        let given = digest(given);
        let mut found = None;
        for (i, d) in self.0.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&given)) {
                found = Some(i);
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The values of every session cookie the request carries.
fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_from_headers_never_from_the_url() {
        let keys = OperatorKeys::new(vec!["s3cret".into(), String::new(), "other".into()]);
        assert!(!keys.is_operator(&HeaderMap::new()));
        assert!(keys.is_operator(&with("authorization", "Bearer s3cret")));
        assert_eq!(
            keys.operator(&with("x-api-key", "other")),
            Some(Operator {
                key: 1,
                session_expires: None
            })
        );
        for wrong in ["s3cre", "s3crett", "", "S3CRET", "Basic s3cret"] {
            assert!(
                !keys.is_operator(&with("authorization", &format!("Bearer {wrong}")))
                    && !keys.is_operator(&with("x-api-key", wrong)),
                "{wrong:?}"
            );
        }
        let err = keys.require(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED);
        let in_url = keys
            .require(&with("authorization", "Bearer s3cret"), Some("s3cret"))
            .unwrap_err();
        assert_eq!(in_url.code, "key_in_url");
        assert_eq!(
            keys.sees_embargoed(&HeaderMap::new(), Some("s3cret"), None, 1)
                .unwrap_err()
                .code,
            "key_in_url"
        );
    }

    #[test]
    fn session_cookies_and_screen_tokens() {
        let keys = OperatorKeys::new(vec!["s3cret".into()]);
        let (session, expires) = keys.mint(0, Grant::Session, 60);
        let cookie = with("cookie", &format!("a=b; {SESSION_COOKIE}={session}; c=d"));
        assert_eq!(
            keys.operator(&cookie),
            Some(Operator {
                key: 0,
                session_expires: Some(expires)
            })
        );
        assert!(keys.sees_embargoed(&cookie, None, None, 5).unwrap());
        let (screen, _) = keys.mint(0, Grant::Screen { poll: 5 }, 60);
        // A screen token is not a session, and only opens its own poll.
        let as_cookie = with("cookie", &format!("{SESSION_COOKIE}={screen}"));
        assert!(!keys.is_operator(&as_cookie));
        let none = HeaderMap::new();
        assert!(keys.sees_embargoed(&none, None, Some(&screen), 5).unwrap());
        assert_eq!(
            keys.sees_embargoed(&none, None, Some(&screen), 6)
                .unwrap_err()
                .status,
            axum::http::StatusCode::UNAUTHORIZED
        );
        assert!(keys.sees_embargoed(&none, None, Some(&session), 5).is_err());
        assert!(!keys.sees_embargoed(&none, None, None, 5).unwrap());
        // The key removed: its session and screen tokens are dead.
        let rotated = OperatorKeys::new(vec!["new-key".into()]);
        assert!(!rotated.is_operator(&cookie));
        assert!(rotated
            .sees_embargoed(&none, None, Some(&screen), 5)
            .is_err());
    }
}
