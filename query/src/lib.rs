//! CrowdTick's query service: poll management, results, timelines, rejection accounting, the
//! OpenAPI document and the web UI.
//!
//! - [`auth`]: operator access: keys in headers, the console's session cookie, screen tokens
//!   (never a key in a URL).
//! - [`views`]: the JSON shapes of a poll and of its results (shared with the realtime service, so
//!   a pushed update and a `GET` agree), including the embargo rule.
//! - [`routes`]: `/v1/polls…` handlers.
//! - [`shared`]: results from Redis and the tally store when the query service runs on its own.
//! - [`ui`]: the pages in `ui/` (embedded in the binary, no build step), the QR code, `/openapi.json`.

pub mod auth;
pub mod routes;
pub mod shared;
pub mod ui;
pub mod views;

use processor::ResultsBoard;
use std::sync::Arc;
use storage::{EdgeRejections, PollCatalog};

pub use auth::OperatorKeys;
pub use routes::router;

/// The query service's shared state.
#[derive(Clone)]
pub struct QueryState {
    pub catalog: PollCatalog,
    pub board: Arc<ResultsBoard>,
    pub keys: OperatorKeys,
    pub edge_rejections: Arc<EdgeRejections>,
    /// Base URL printed in QR codes and links (empty: taken from the request's Host header).
    pub public_url: String,
    /// Distributed mode: results come from Redis and the tally store, and poll changes are
    /// announced (None: the board is fed by this process's own tallies tailer).
    pub shared: Option<Arc<shared::SharedResults>>,
    /// A manual close takes effect this many microseconds after the request, so that every edge
    /// has re-read the poll before then (0 with one edge in the same process).
    pub close_lead_us: i64,
}
