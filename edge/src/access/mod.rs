//! Operator access, shared by the query and realtime services. No operator key ever travels in a
//! URL.
//!
//! - [`keys`]: the configured keys (compared as SHA-256 digests in constant time) and what a
//!   request proves: `Authorization: Bearer <key>`, `X-Api-Key: <key>`, or the session cookie.
//! - [`token`]: HMAC-SHA256-signed tokens (a session, or a screen's pass for one poll) under a
//!   secret derived from the key that minted them: they expire, and die with their key.
//! - [`KeyQuery`]: the query string, where a screen's `?token=` comes from.
//!
//! The session and screen-token endpoints themselves are the query service's
//! (`query/src/session.rs`). `?key=` is refused everywhere it used to be taken (401
//! `key_in_url`, naming what to use).

pub mod keys;
pub mod token;

pub use keys::{Operator, OperatorKeys};
pub use token::Grant;

use crate::ApiError;
use serde::Deserialize;

/// The console's session cookie (holds a [`Grant::Session`] token, never a key).
pub const SESSION_COOKIE: &str = "crowdtick_operator";

/// 401 for an operator key given as `?key=`.
pub fn key_in_url() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "key_in_url",
        "operator keys are not accepted in URLs (they end up in logs and browser history): send \
         `Authorization: Bearer <key>`; a browser console signs in with `POST \
         /v1/operator/session` (a cookie); a screen uses `?token=` from `POST \
         /v1/polls/{id}/screen-token`",
    )
}

/// Query-string parameters, taken leniently (repeated or unknown ones never make a request fail).
#[derive(Debug, Deserialize, Default)]
#[serde(transparent)]
pub struct KeyQuery(pub Vec<(String, String)>);

impl KeyQuery {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// An operator key given as `?key=` (refused: keys never travel in URLs).
    pub fn key(&self) -> Option<&str> {
        self.get("key")
    }
    /// A screen token given as `?token=`.
    pub fn token(&self) -> Option<&str> {
        self.get("token")
    }
}
