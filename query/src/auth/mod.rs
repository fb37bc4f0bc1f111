//! Operator access. No operator key ever travels in a URL.
//!
//! - [`keys`]: the configured keys (compared as SHA-256 digests in constant time) and what a
//!   request proves: `Authorization: Bearer <key>`, `X-Api-Key: <key>`, or the session cookie.
//! - [`token`]: HMAC-SHA256-signed tokens (a session, or a screen's pass for one poll) under a
//!   secret derived from the key that minted them: they expire, and die with their key.
//! - [`session`]: `POST|GET|DELETE /v1/operator/session` (the console signs in once with the key
//!   and gets an HttpOnly, SameSite=Strict cookie holding a session token) and
//!   `POST /v1/polls/{id}/screen-token` (a read-only, expiring token for one poll's screen, carried
//!   as `?token=`).
//!
//! `?key=` is refused everywhere it used to be taken (401 `key_in_url`, naming what to use).

pub mod keys;
pub mod session;
pub mod token;

pub use keys::{Operator, OperatorKeys};
pub use token::Grant;

use schemas::ApiError;

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
