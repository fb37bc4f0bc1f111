//! The HTTP edge every CrowdTick service answers through.
//!
//! - [`api_error`]: [`ApiError`], the one JSON error (`{"error": {"code", "message"}}`, with
//!   `Retry-After` on 429 and 503).
//! - [`access`]: operator access shared by the query and realtime services: operator keys, signed
//!   session and screen tokens, `?key=` refused.
//! - [`rejection`]: the one mapping of the domain's reasons ([`schemas::VoteRejection`],
//!   [`schemas::PollRejection`]) onto HTTP status codes. Services return domain reasons from their
//!   pure parts and `?` turns them into [`ApiError`] here; nowhere else chooses their status.

pub mod access;
pub mod api_error;
pub mod rejection;

pub use api_error::ApiError;
