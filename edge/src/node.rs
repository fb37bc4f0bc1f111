//! What every node answers besides its services' routes: `/healthz`, `/readyz`
//! ([`crate::readiness`]), `/metrics` ([`crate::metrics`]), a JSON 404 and 405, and every error
//! answer as JSON ([`json_errors`]), with the body read timeout of [`HttpLimits`].

use crate::listener::{body_read_timeout, HttpLimits};
use crate::metrics::NodeMetrics;
use crate::readiness::{readyz, Readiness};
use crate::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// Adds the node's own endpoints and error handling to the services' `router`. `not_found` is
/// the message of a 404 (it says where the API is described).
pub fn node_router(
    router: Router,
    readiness: Readiness,
    metrics: NodeMetrics,
    not_found: String,
    limits: &HttpLimits,
) -> Router {
    let router = router
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz).with_state(Arc::new(readiness)))
        .route(
            "/metrics",
            get(crate::metrics::render).with_state(Arc::new(metrics)),
        )
        .fallback(move || async move { ApiError::not_found("no_route", not_found) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::map_response(json_errors));
    body_read_timeout(router, limits)
}

/// Every error answer is JSON: a framework rejection (a body over a route's limit, a bad header)
/// arrives as plain text and is rewrapped as `{"error": {"code", "message"}}` with its status.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if message.is_empty() {
        status.to_string()
    } else {
        message
    };
    let mut fixed = ApiError::new(status, code, message).into_response();
    if let Some(retry) = parts.headers.get(header::RETRY_AFTER) {
        fixed
            .headers_mut()
            .insert(header::RETRY_AFTER, retry.clone());
    }
    fixed
}
