//! The web UI (pages in `query/ui/`, embedded at compile time: no build step), the QR code
//! of a poll's voter link, and the OpenAPI document.

use crate::QueryState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use edge::access::KeyQuery;
use edge::ApiError;

const INDEX: &str = include_str!("../ui/index.html");
const VOTE: &str = include_str!("../ui/vote.html");
const SCREEN: &str = include_str!("../ui/screen.html");
const CSS: &str = include_str!("../ui/app.css");
/// The helpers every page shares, then each page's own script.
const JS: &str = include_str!("../ui/app.js");
const VOTE_JS: &str = include_str!("../ui/vote.js");
const SCREEN_JS: &str = include_str!("../ui/screen.js");
const CONSOLE_JS: &str = include_str!("../ui/console.js");
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/p/{slug}", get(|| async { Html(VOTE) }))
        .route("/screen/{id}", get(screen))
        .route(
            "/ui/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route("/ui/app.js", get(|| async { script(JS) }))
        .route("/ui/vote.js", get(|| async { script(VOTE_JS) }))
        .route("/ui/screen.js", get(|| async { script(SCREEN_JS) }))
        .route("/ui/console.js", get(|| async { script(CONSOLE_JS) }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/qr/{file}", get(qr))
        .with_state(state)
}

fn script(body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
}

/// `/screen/{id}`: the results screen. A studio screen that shows embargoed counts carries a
/// screen token (`?token=`), never the operator key: `?key=` is refused. The page sends no
/// `Referer`, so its token stays on this site.
async fn screen(Query(q): Query<KeyQuery>) -> Result<Response, ApiError> {
    if q.key().is_some() {
        return Err(edge::access::key_in_url());
    }
    Ok((
        [
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(SCREEN),
    )
        .into_response())
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

#[cfg(test)]
mod tests {
    use super::OPENAPI;
    use serde_json::Value;

    /// Every route the server answers (`src/serve.rs` merges these routers), with its methods. A route
    /// added, removed or renamed must be changed here and in `openapi.json` together.
    const ROUTES: &[(&str, &[&str])] = &[
        // query/src/routes.rs
        ("/v1/polls", &["get", "post"]),
        ("/v1/polls/{id}", &["get"]),
        ("/v1/s/{slug}", &["get"]),
        ("/v1/polls/{id}/open", &["post"]),
        ("/v1/polls/{id}/close", &["post"]),
        ("/v1/polls/{id}/reveal", &["post"]),
        ("/v1/polls/{id}/results", &["get"]),
        ("/v1/polls/{id}/timeline", &["get"]),
        ("/v1/polls/{id}/rejections", &["get"]),
        // query/src/session.rs
        ("/v1/operator/session", &["get", "post", "delete"]),
        ("/v1/polls/{id}/screen-token", &["post"]),
        // ingest/src/routes.rs
        ("/v1/votes", &["post"]),
        ("/v1/votes/batch", &["post"]),
        // realtime/src/routes.rs
        ("/v1/polls/{id}/ws", &["get"]),
        ("/v1/polls/{id}/sse", &["get"]),
        // src/serve.rs
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        // this file
        ("/openapi.json", &["get"]),
        ("/", &["get"]),
        ("/p/{slug}", &["get"]),
        ("/screen/{id}", &["get"]),
        ("/ui/app.css", &["get"]),
        ("/ui/app.js", &["get"]),
        ("/ui/vote.js", &["get"]),
        ("/ui/screen.js", &["get"]),
        ("/ui/console.js", &["get"]),
        ("/qr/{slug}.svg", &["get"]),
        // the seed compatibility API (seed_api/src/, the old API contract), each path also served
        // without its trailing slash
        ("/api/register/", &["post"]),
        ("/api/register", &["post"]),
        ("/api/polls/", &["post"]),
        ("/api/polls", &["post"]),
        ("/api/polls/{id}/vote/", &["post"]),
        ("/api/polls/{id}/vote", &["post"]),
        ("/api/polls/{id}/results/", &["get"]),
        ("/api/polls/{id}/results", &["get"]),
        ("/ws/poll/{id}/", &["get"]),
        ("/ws/poll/{id}", &["get"]),
        ("/polls/", &["post"]),
        ("/polls", &["post"]),
        ("/votes/", &["post"]),
        ("/votes", &["post"]),
        ("/polls/{id}/results/", &["get"]),
        ("/polls/{id}/results", &["get"]),
    ];

    /// Endpoints that refuse a request without an operator key.
    const OPERATOR_ONLY: &[(&str, &str)] = &[
        ("/v1/polls", "post"),
        ("/v1/polls/{id}/open", "post"),
        ("/v1/polls/{id}/close", "post"),
        ("/v1/polls/{id}/reveal", "post"),
        ("/v1/polls/{id}/rejections", "get"),
        ("/v1/polls/{id}/screen-token", "post"),
        ("/v1/operator/session", "get"),
    ];

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn doc() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON")
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths is an object") {
            for (method, op) in item.as_object().expect("a path item is an object") {
                if METHODS.contains(&method.as_str()) {
                    ops.push((path.clone(), method.clone(), op.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn documents_every_route_with_its_methods() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths is an object");
        for (path, methods) in ROUTES {
            let item = paths
                .get(*path)
                .unwrap_or_else(|| panic!("openapi.json does not document {path}"));
            let mut documented: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|m| METHODS.contains(m))
                .collect();
            documented.sort_unstable();
            let mut expected = methods.to_vec();
            expected.sort_unstable();
            assert_eq!(documented, expected, "methods of {path}");
        }
        for path in paths.keys() {
            assert!(
                ROUTES.iter().any(|(p, _)| p == path),
                "openapi.json documents {path}, which is not in the route list of this test"
            );
        }
    }

    #[test]
    fn every_reference_resolves_and_operations_are_complete() {
        let doc = doc();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in &all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r} is not local"));
            assert!(doc.pointer(pointer).is_some(), "{r} points nowhere");
        }

        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["operatorBearer"]["type"], "http");
        assert_eq!(schemes["operatorBearer"]["scheme"], "bearer");
        assert_eq!(schemes["operatorApiKey"]["type"], "apiKey");
        assert_eq!(schemes["operatorApiKey"]["in"], "header");
        assert_eq!(schemes["operatorApiKey"]["name"], "X-Api-Key");

        let mut ids = std::collections::HashSet::new();
        for (path, method, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path} documents no success response"
            );
            for (status, resp) in responses {
                if status == "429" || status == "503" {
                    assert!(
                        resp["headers"].get("Retry-After").is_some(),
                        "{method} {path} {status} lacks the Retry-After header"
                    );
                }
                let json_schema = &resp["content"]["application/json"]["schema"]["$ref"];
                if path.starts_with("/v1/")
                    && status.parse::<u16>().is_ok_and(|s| s >= 400)
                    && !json_schema.is_null()
                {
                    assert_eq!(
                        json_schema, "#/components/schemas/Error",
                        "{method} {path} {status} answers the error schema"
                    );
                }
            }
            if path.starts_with("/v1/") && method == "post" {
                let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
                // open, close, reveal and signing in take no body
                let bodiless = ["/open", "/close", "/reveal", "/operator/session"]
                    .iter()
                    .any(|s| path.ends_with(s));
                assert!(
                    bodiless
                        || body
                            .as_str()
                            .is_some_and(|r| r.starts_with("#/components/schemas/")),
                    "{method} {path} has no request body schema in components"
                );
            }
        }

        for (path, method) in OPERATOR_ONLY {
            let op = &doc["paths"][path][method];
            let security = op["security"].as_array().unwrap_or_else(|| {
                panic!("{method} {path} is an operator endpoint without security")
            });
            for scheme in ["operatorBearer", "operatorApiKey"] {
                assert!(
                    security.iter().any(|s| s.get(scheme).is_some()),
                    "{method} {path} does not accept {scheme}"
                );
            }
            assert!(
                !security
                    .iter()
                    .any(|s| s.as_object().is_some_and(|o| o.is_empty())),
                "{method} {path} must not make the key optional"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents no 401"
            );
        }
    }
}
