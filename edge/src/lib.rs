//! The HTTP edge every CrowdTick service answers through.
//!
//! - [`api_error`]: [`ApiError`], the one JSON error (`{"error": {"code", "message"}}`, with
//!   `Retry-After` on 429 and 503).
//! - [`body_gap_timeout`]: a request body's read timeout between chunks, whose timer is armed
//!   only while the body keeps the node waiting (a vote's body, already there, costs none).
//! - [`access`]: operator access shared by the query and realtime services: operator keys, signed
//!   session and screen tokens, `?key=` refused.
//! - [`listener`]: the accept loop every node serves on: connection caps, header, idle, body and
//!   write timeouts, the open-file limit; each admitted socket (`listener/admitted.rs`) with the
//!   kernel's receive stamps (`receive_stamp.rs`, read by admission as [`listener::Arrival`]), the
//!   read gate that pauses new requests while many votes wait for the log (`read_gate.rs`), what
//!   a live stream shares with its socket (`live_socket.rs`), and what a request's handler learns
//!   of its connection, as one extension ([`listener::ConnectionContext`]).
//! - [`memory`]: the node's background trim that gives the allocators' free memory back to the
//!   system after a burst (jemalloc's, the binary's, and glibc's keep it a while), and its
//!   counters.
//! - [`metrics`]: `GET /metrics`, a Prometheus registry each service registers its collector in;
//!   the process's and the accept loop's own figures.
//! - [`node`]: what every node answers besides its services: `/healthz`, `/readyz`, `/metrics`,
//!   JSON 404/405, and every error answer rewrapped as JSON.
//! - [`probe`]: `crowdtick healthcheck`'s client: a plain HTTP/1.0 GET that reads the status code
//!   (the container image has no curl).
//! - [`readiness`]: `GET /readyz`, the named checks a node runs (each part's own `readiness()`).
//! - [`rejection`]: the one mapping of the domain's reasons ([`schemas::VoteRejection`],
//!   [`schemas::PollRejection`]) onto HTTP status codes. Services return domain reasons from their
//!   pure parts and `?` turns them into [`ApiError`] here; nowhere else chooses their status.

pub mod access;
pub mod api_error;
pub mod body_gap_timeout;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod probe;
pub mod readiness;
pub mod rejection;

pub use api_error::ApiError;
