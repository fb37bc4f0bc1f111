//! CrowdTick's query service: poll management, results, timelines, rejection accounting, the
//! OpenAPI document and the web UI.
//!
//! - [`session`]: `POST|GET|DELETE /v1/operator/session` (the console signs in once with the key
//!   and gets an HttpOnly, SameSite=Strict cookie holding a session token) and
//!   `POST /v1/polls/{id}/screen-token` (a read-only, expiring token for one poll's screen, carried
//!   as `?token=`). The keys and tokens themselves are `edge::access`, shared with realtime.
//! - The JSON shapes of a poll and of its results, and the merged results themselves, are the read
//!   model (`results`), shared with the realtime service so a pushed update and a `GET` agree.
//! - [`start`]: the service's routes (API and pages) on its [`QueryState`].
//! - [`routes`]: `/v1/polls…` handlers.
//! - [`shared`]: results from Redis and the tally store when the query service runs on its own.
//! - [`ui`]: the pages in `ui/` (embedded in the binary, no build step), the QR code, `/openapi.json`.

pub mod routes;
pub mod session;
pub mod shared;
pub mod ui;

use edge::access::OperatorKeys;
use results::ResultsBoard;
use std::sync::Arc;
use storage::{EdgeRejections, PollCatalog};

pub use routes::router;

/// Starts the query service: the API and the web pages, on `state`.
pub fn start(state: QueryState) -> axum::Router {
    routes::router(state.clone()).merge(ui::router(state))
}

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
