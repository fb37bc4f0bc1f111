//! The ceiling an edge could reach on this machine: a bare axum endpoint that parses a vote and
//! answers 202 with a receipt, and does nothing else (no log, no fsync, no dedupe, no limits).
//! `scripts/bench-edge.sh` runs the load generator against it and against CrowdTick under the same
//! load and reports the ratio (issue 11, item 2).
//!
//! ```sh
//! cargo run --release -p loadtest --example bare_edge -- 127.0.0.1:18195
//! ```

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The vote as `POST /v1/votes` takes it (the fields CrowdTick reads).
#[derive(Deserialize)]
#[allow(dead_code)] // parsed, as the real edge parses it, and then dropped
struct VoteIn {
    poll_id: i64,
    option_id: Option<u32>,
    option_ids: Option<Vec<u32>>,
    voter_id: String,
    vote_id: Option<String>,
}

#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    offset: AtomicU64,
}

async fn vote(State(c): State<Arc<Counters>>, Json(v): Json<VoteIn>) -> (StatusCode, Json<Value>) {
    let offset = c.offset.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "vote_id": v.vote_id.unwrap_or_default(),
            "poll_id": v.poll_id,
            "partition": 0,
            "offset": offset,
        })),
    )
}

/// Enough of `POST /v1/polls` for the load generator to start: an id per poll.
async fn poll(State(c): State<Arc<Counters>>) -> (StatusCode, Json<Value>) {
    let id = c.polls.fetch_add(1, Ordering::Relaxed) + 1;
    (StatusCode::CREATED, Json(json!({"id": id})))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18195".to_owned());
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/polls", post(poll))
        .route("/v1/votes", post(vote))
        .with_state(Arc::new(Counters::default()));
    // The node's own bind and default listen backlog (http.listen_backlog), not tokio's 128:
    // the same door.
    let backlog = edge::listener::HttpLimits::default().listen_backlog;
    let listener = edge::listener::bind(&addr, backlog).await?;
    eprintln!("bare edge on {addr}");
    axum::serve(listener, app).await
}
