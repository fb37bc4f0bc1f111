//! `GET /readyz`: whether this node can do its job now, check by check. Liveness (`/healthz`) only
//! says the process serves; readiness is what a load balancer or Kubernetes routes by.
//!
//! A node adds one named check per part it depends on (the binary chooses them from its services):
//! `log` (the votes log answers), `poll_catalog` (a shared catalog was re-read recently enough),
//! `partitions` (the processor owns its partitions and each has caught up), `tallies` (the node
//! follows the tallies topic). Each check is the part's own `readiness()`; this module runs them.
//!
//! Ready is 200 `{"status": "ready", "checks": […]}`; not ready is 503 (with `Retry-After`) and
//! the same body, each failing check saying why.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::BoxFuture;
use serde::Serialize;
use std::sync::Arc;

type CheckFn = Box<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The checks of one node.
#[derive(Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Readiness {
    /// Adds a check: `Ok(detail)` when ready, `Err(why not)` otherwise.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        self.checks
            .push((name, Box::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check, in the order they were added.
    pub async fn report(&self) -> (bool, Vec<CheckResult>) {
        let mut results = Vec::with_capacity(self.checks.len());
        for (name, check) in &self.checks {
            let (ok, detail) = match check().await {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            results.push(CheckResult { name, ok, detail });
        }
        (results.iter().all(|r| r.ok), results)
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
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_failing_check_makes_the_node_not_ready_and_says_why() {
        let ready = Readiness::default().check("log", || async { Ok("answers".to_owned()) });
        let (ok, checks) = ready.report().await;
        assert!(ok);
        assert_eq!(checks[0].detail, "answers");
        let not = Readiness::default()
            .check("log", || async { Ok("answers".to_owned()) })
            .check("partitions", || async { Err("replaying".to_owned()) });
        let response = readyz(State(Arc::new(not))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"][1]["detail"], "replaying");
        assert_eq!(body["checks"][1]["ok"], false);
    }
}
