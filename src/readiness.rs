//! `GET /readyz`: whether this node can do its job now, check by check. Liveness (`/healthz`) only
//! says the process serves; readiness is what a load balancer or Kubernetes routes by.
//!
//! Which checks a node runs follows from its services ([`Readiness::for_roles`]):
//! - `log`: the votes log answers (a Kafka broker is reachable) — ingest and processor;
//! - `poll_catalog`: the poll catalog was re-read from PostgreSQL recently enough — every node of
//!   the distributed mode (for an edge: the age past which it answers 503 itself);
//! - `partitions`: the processor owns its partitions, and each has caught up with the log and
//!   published since its task (re)started;
//! - `tallies`: the node follows the tallies topic (realtime nodes, and query nodes that keep a
//!   board of their own: `serve`; a distributed query node reads Redis and PostgreSQL instead).
//!
//! Ready is 200 `{"status": "ready", "checks": […]}`; not ready is 503 (with `Retry-After`) and
//! the same body, each failing check saying why.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use processor::ProcessorMetrics;
use results::ResultsBoard;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use storage::{Log, PollCatalog};

/// How long the `log` check waits for the log to answer.
const LOG_TIMEOUT: Duration = Duration::from_secs(2);

enum Check {
    Log(Arc<dyn Log>),
    Catalog {
        catalog: PollCatalog,
        max_age: Duration,
    },
    Partitions(Arc<ProcessorMetrics>),
    Tallies(Arc<ResultsBoard>),
}

/// The checks of one node.
#[derive(Default)]
pub struct Readiness {
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Readiness {
    pub fn log(mut self, log: Arc<dyn Log>) -> Self {
        self.checks.push(Check::Log(log));
        self
    }

    /// Only for a shared (PostgreSQL) catalog; a local one is always current.
    pub fn catalog(mut self, catalog: PollCatalog, max_age: Duration) -> Self {
        if catalog.is_shared() {
            self.checks.push(Check::Catalog { catalog, max_age });
        }
        self
    }

    pub fn partitions(mut self, metrics: Arc<ProcessorMetrics>) -> Self {
        self.checks.push(Check::Partitions(metrics));
        self
    }

    pub fn tallies(mut self, board: Arc<ResultsBoard>) -> Self {
        self.checks.push(Check::Tallies(board));
        self
    }

    /// Runs every check (the log's with a timeout).
    pub async fn report(&self) -> (bool, Vec<CheckResult>) {
        let mut results = Vec::with_capacity(self.checks.len());
        for check in &self.checks {
            let (name, outcome) = match check {
                Check::Log(log) => ("log", log_answers(&**log).await),
                Check::Catalog { catalog, max_age } => {
                    let age = catalog.refreshed_at().elapsed();
                    let outcome = if age <= *max_age {
                        Ok(format!("re-read {} ms ago", age.as_millis()))
                    } else {
                        Err(format!(
                            "the poll catalog was last read from PostgreSQL {} ms ago (at most {} ms \
                             allowed): is PostgreSQL reachable?",
                            age.as_millis(),
                            max_age.as_millis()
                        ))
                    };
                    ("poll_catalog", outcome)
                }
                Check::Partitions(metrics) => ("partitions", metrics.readiness()),
                Check::Tallies(board) => ("tallies", board.following()),
            };
            let (ok, detail) = match outcome {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            results.push(CheckResult { name, ok, detail });
        }
        (results.iter().all(|r| r.ok), results)
    }
}

async fn log_answers(log: &dyn Log) -> Result<String, String> {
    match tokio::time::timeout(LOG_TIMEOUT, log.ping()).await {
        Ok(Ok(_)) => Ok("the votes log answers".into()),
        Ok(Err(e)) => Err(format!("the votes log does not answer: {e}")),
        Err(_) => Err(format!(
            "the votes log did not answer within {} s (is the Kafka broker reachable?)",
            LOG_TIMEOUT.as_secs()
        )),
    }
}

/// `GET /readyz`.
pub async fn readyz(State(readiness): State<Arc<Readiness>>) -> Response {
    let (ready, checks) = readiness.report().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    let mut response = (status, Json(body)).into_response();
    if !ready {
        // Like every 503 here: when to ask again.
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
    }
    response
}
