//! `POST|GET|DELETE /v1/operator/session` (the console's cookie) and
//! `POST /v1/polls/{id}/screen-token` (a studio screen's read-only pass for one poll).

use crate::routes::{find_fresh, poll_id};
use crate::QueryState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use edge::access::{Grant, SESSION_COOKIE};
use edge::ApiError;
use schemas::Timestamp;
use serde::Deserialize;
use serde_json::json;

/// How long a console stays signed in.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// A screen token's lifetime unless the request asks for another (a show's length).
pub const SCREEN_TOKEN_TTL_SECS: u64 = 4 * 3600;
/// The longest screen token an operator may mint.
pub const SCREEN_TOKEN_MAX_TTL_SECS: u64 = 24 * 3600;

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route(
            "/v1/operator/session",
            post(sign_in).get(session).delete(sign_out),
        )
        .route("/v1/polls/{id}/screen-token", post(screen_token))
        .with_state(state)
}

fn unix_time(secs: u64) -> String {
    Timestamp(secs as i64 * 1_000_000).rfc3339_millis()
}

/// `Set-Cookie` for the session: HttpOnly (scripts cannot read it), SameSite=Strict (no other
/// site's page sends it), Secure when the site is served over https.
fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a token is a valid header value")
}

fn served_over_https(s: &QueryState, headers: &HeaderMap) -> bool {
    s.public_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Signs in with the key (in a header, never a cookie: a session cannot extend itself).
async fn sign_in(State(s): State<QueryState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let key = s.keys.key_in_headers(&headers).ok_or_else(|| {
        ApiError::unauthorized(
            "sign in with the operator key in `Authorization: Bearer <key>` (or `X-Api-Key`)",
        )
    })?;
    let (token, expires) = s.keys.mint(key, Grant::Session, SESSION_TTL_SECS);
    let mut resp = Json(json!({
        "operator": true,
        "expires_at": unix_time(expires),
        "expires_in_secs": SESSION_TTL_SECS,
    }))
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, SESSION_TTL_SECS, served_over_https(&s, &headers)),
    );
    Ok(no_store(resp))
}

/// Whether the request is an operator's, and until when its session lasts.
async fn session(State(s): State<QueryState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let op = s.keys.require_operator(&headers)?;
    let body = match op.session_expires {
        Some(exp) => json!({"operator": true, "via": "session", "expires_at": unix_time(exp)}),
        None => json!({"operator": true, "via": "key"}),
    };
    Ok(no_store(Json(body).into_response()))
}

/// Signs out: the browser drops the cookie.
async fn sign_out(State(s): State<QueryState>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0, served_over_https(&s, &headers)),
    );
    no_store(resp)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScreenTokenRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// Mints a screen token for one poll (an operator only; the body is read after the check).
async fn screen_token(
    State(s): State<QueryState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let op = s.keys.require_operator(&headers)?;
    let poll = find_fresh(&s, poll_id(&id)?).await?;
    let body = axum::body::to_bytes(body, 1024)
        .await
        .map_err(|_| ApiError::too_large(1024))?;
    let req: ScreenTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ScreenTokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "malformed",
                format!("the body is not a screen token request: {e}"),
            )
        })?
    };
    let ttl = req.ttl_secs.unwrap_or(SCREEN_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > SCREEN_TOKEN_MAX_TTL_SECS {
        return Err(ApiError::unprocessable(
            "invalid_ttl",
            format!("ttl_secs must be 1 to {SCREEN_TOKEN_MAX_TTL_SECS}"),
        ));
    }
    let (token, expires) = s.keys.mint(op.key, Grant::Screen { poll: poll.id }, ttl);
    let resp = (
        StatusCode::CREATED,
        Json(json!({
            "poll_id": poll.id,
            "token": token,
            "expires_at": unix_time(expires),
            "expires_in_secs": ttl,
            "screen_url": format!("/screen/{}?token={token}", poll.id),
        })),
    )
        .into_response();
    Ok(no_store(resp))
}
