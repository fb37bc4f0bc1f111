//! What every node answers besides its services' routes: `/healthz`, `/readyz`
//! ([`crate::readiness`]), `/metrics` ([`crate::metrics`]), a JSON 404 and 405, and every error
//! answer as JSON (`json_errors`), with the body read timeout of [`HttpLimits`]: both in one
//! layer ([`NodeLayer`]), which the listener puts around the whole router
//! ([`crate::listener::serve`]) rather than on it: a layer of a router wraps each of its routes,
//! and costs every request a clone of the boxed route and a boxed future.

use crate::body_gap_timeout::GapTimeoutBody;
use crate::listener::HttpLimits;
use crate::metrics::NodeMetrics;
use crate::readiness::{readyz, Readiness};
use crate::ApiError;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::{self, BoxFuture, Either, FutureExt, TryFutureExt};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Adds the node's own endpoints, and a JSON 404 and 405, to the services' `router`. `not_found`
/// is the message of a 404 (it says where the API is described). The listener serves it inside
/// [`NodeLayer`].
pub fn node_router(
    router: Router,
    readiness: Readiness,
    metrics: NodeMetrics,
    not_found: String,
) -> Router {
    router
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
}

/// Cuts off a request body that does not arrive within `body_read_timeout` ([`GapTimeoutBody`]:
/// it bounds the gap between chunks) and rewraps every error answer that is not
/// JSON (`json_errors`). An answer that needs no rewrap passes through without an allocation.
#[derive(Clone, Copy)]
pub struct NodeLayer {
    pub body_read_timeout: Duration,
}

impl NodeLayer {
    pub fn new(limits: &HttpLimits) -> NodeLayer {
        NodeLayer {
            body_read_timeout: Duration::from_millis(limits.body_read_timeout_ms),
        }
    }
}

impl<S> Layer<S> for NodeLayer {
    type Service = NodeService<S>;

    fn layer(&self, inner: S) -> NodeService<S> {
        NodeService {
            inner,
            body_read_timeout: self.body_read_timeout,
        }
    }
}

/// The service of [`NodeLayer`].
#[derive(Clone)]
pub struct NodeService<S> {
    inner: S,
    body_read_timeout: Duration,
}

/// An answer as it leaves [`NodeService`]: as it was, or rewrapped as JSON.
type Answer = Either<
    future::Ready<Result<Response, Infallible>>,
    future::Map<BoxFuture<'static, Response>, fn(Response) -> Result<Response, Infallible>>,
>;

/// Any request body: hyper's `Incoming` as the listener serves it, so that axum boxes it once,
/// around the timeout.
impl<S, B> Service<Request<B>> for NodeService<S>
where
    S: Service<Request<GapTimeoutBody<B>>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = future::AndThen<S::Future, Answer, fn(Response) -> Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = self.body_read_timeout;
        let request = request.map(|body| GapTimeoutBody::new(timeout, body));
        self.inner
            .call(request)
            .and_then(as_json as fn(Response) -> Answer)
    }
}

fn as_json(response: Response) -> Answer {
    if !needs_json(&response) {
        return Either::Left(future::ready(Ok(response)));
    }
    Either::Right(json_errors(response).boxed().map(Ok))
}

/// An error answer (4xx, 5xx) whose body is not JSON (nor an event stream).
fn needs_json(resp: &Response) -> bool {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

/// Every error answer is JSON: a framework rejection (a body over a route's limit, a bad header)
/// arrives as plain text and is rewrapped as `{"error": {"code", "message"}}` with its status.
/// Called by [`NodeLayer`] only for an answer that [`needs_json`].
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// As the listener serves a router: inside [`NodeLayer`], put around it.
    fn served(router: Router, body_read_timeout: Duration) -> NodeService<Router> {
        NodeLayer { body_read_timeout }.layer(router)
    }

    async fn call(
        router: &NodeService<Router>,
        request: Request,
    ) -> (StatusCode, Option<String>, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            retry_after,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn get_request(path: &str) -> Request {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_plain_error_is_rewrapped_as_json_and_every_other_answer_passes_unchanged() {
        let plain = || async {
            let retry = [(header::RETRY_AFTER, "3")];
            (StatusCode::SERVICE_UNAVAILABLE, retry, "try later")
        };
        let router = Router::new()
            .route("/plain", get(plain))
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/json",
                get(|| async { ApiError::bad_request("bad_x", "x is bad") }),
            );
        let router = served(router, Duration::from_secs(5));

        let (status, retry, body) = call(&router, get_request("/plain")).await;
        assert_eq!(
            (status, retry.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("3"))
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal", "{body}");
        assert_eq!(json["error"]["message"], "try later", "{body}");

        assert_eq!(
            call(&router, get_request("/ok")).await,
            (StatusCode::OK, None, "fine".into())
        );
        let (status, _, body) = call(&router, get_request("/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"bad_x\""), "{body}");

        // The router's own answers pass through the layer too: axum's empty 404 and 405.
        let (status, _, body) = call(&router, get_request("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["message"], "404 Not Found", "{body}");
        let post = Request::post("/ok").body(Body::empty()).unwrap();
        let (status, _, body) = call(&router, post).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("\"method_not_allowed\""), "{body}");
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_cut_off_after_the_read_timeout() {
        let read = |body: Body| async move {
            match axum::body::to_bytes(body, 1024).await {
                Ok(bytes) => format!("read {}", bytes.len()),
                Err(e) => format!("cut off: {e:?}"),
            }
        };
        let router = served(
            Router::new().route("/body", axum::routing::post(read)),
            Duration::from_millis(100),
        );
        let stalled = futures::stream::pending::<Result<axum::body::Bytes, Infallible>>();
        let request = Request::post("/body")
            .body(Body::from_stream(stalled))
            .unwrap();
        let (status, _, body) =
            tokio::time::timeout(Duration::from_secs(3), call(&router, request))
                .await
                .expect("a stalled body was not cut off within 3 s");
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.starts_with("cut off") && body.contains("TimeoutError"),
            "{body}"
        );

        let whole = Request::post("/body").body(Body::from("abc")).unwrap();
        assert_eq!(call(&router, whole).await.2, "read 3");
    }
}
