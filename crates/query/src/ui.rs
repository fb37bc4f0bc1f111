//! The web UI (pages in `crates/query/ui/`, embedded at compile time: no build step), the QR code
//! of a poll's voter link, and the OpenAPI document.

use crate::QueryState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use schemas::ApiError;

const INDEX: &str = include_str!("../ui/index.html");
const VOTE: &str = include_str!("../ui/vote.html");
const SCREEN: &str = include_str!("../ui/screen.html");
const CSS: &str = include_str!("../ui/app.css");
const JS: &str = include_str!("../ui/app.js");
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/p/{slug}", get(|| async { Html(VOTE) }))
        .route("/screen/{id}", get(|| async { Html(SCREEN) }))
        .route(
            "/ui/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    JS,
                )
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/qr/{file}", get(qr))
        .with_state(state)
}

/// `/qr/{slug}.svg`: a QR code of the poll's voter page, for a TV screen.
async fn qr(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let slug = file.strip_suffix(".svg").unwrap_or(&file);
    let poll = s.catalog.by_slug(slug).ok_or_else(|| {
        ApiError::not_found(
            "unknown_poll",
            format!("there is no poll with the code {slug:?}"),
        )
    })?;
    let base = if s.public_url.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1:8080");
        format!("http://{host}")
    } else {
        s.public_url.trim_end_matches('/').to_owned()
    };
    let url = format!("{base}/p/{}", poll.slug);
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| ApiError::internal(format!("QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        svg,
    )
        .into_response())
}
