//! `GET /v1/polls/{id}/ws` (WebSocket) and `GET /v1/polls/{id}/sse` (Server-Sent Events).
//!
//! Who sees embargoed counts: an operator (`Authorization: Bearer <key>`, `X-Api-Key`, or the
//! console's session cookie) or a screen token for the poll (`?token=`); `?key=` is refused (401).

use crate::websocket::Handshake;
use crate::{broadcast, ConnectionContext, LiveSocket, Realtime, Subscription};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use edge::access::KeyQuery;
use edge::listener::StreamWriter;
use edge::ApiError;
use futures::StreamExt;
use parking_lot::Mutex;
use schemas::PollId;
use std::convert::Infallible;
use std::sync::Arc;

pub fn router(rt: Arc<Realtime>) -> Router {
    Router::new()
        .route("/v1/polls/{id}/ws", get(ws))
        .route("/v1/polls/{id}/sse", get(sse))
        .with_state(rt)
}

/// 403 for a page of another site (see [`crate::origin`]).
pub fn forbidden_origin(origin: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "pages of {origin:?} may not open live connections here; an operator can allow it in \
             realtime.allowed_origins"
        ),
    )
}

/// A path id that is not a number is a 404 (the message does not repeat what the client sent).
fn poll_id(raw: &str) -> Result<PollId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("unknown_poll", "there is no such poll (ids are numbers)"))
}

/// Whether the client sees embargoed counts (an operator, or a screen token for this poll); 401 for
/// a key in the URL or a token that is not valid for this poll.
fn sees_embargoed(
    rt: &Realtime,
    headers: &HeaderMap,
    q: &KeyQuery,
    id: PollId,
) -> Result<bool, ApiError> {
    rt.keys.sees_embargoed(headers, q.key(), q.token(), id)
}

/// Per-connection WebSocket buffers: client messages are a few bytes (at most
/// [`crate::MAX_CLIENT_MESSAGE_BYTES`]), and each frame is written out at once, so a viewer holds
/// no buffer of its own beyond what its largest message needs (tungstenite's defaults reserve
/// 128 KiB for reading at the upgrade).
const WS_READ_BUFFER_BYTES: usize = 256;

/// Asks for the small kernel send buffer of a live socket (`realtime.socket_send_buffer_bytes`),
/// where the listener offers it; the old API's socket asks too.
pub fn small_send_buffer(rt: &Realtime, live: Option<&LiveSocket>) {
    if let (Some(live), n @ 1..) = (live, rt.settings.socket_send_buffer) {
        live.request_send_buffer(n);
    }
}

async fn ws(
    State(rt): State<Arc<Realtime>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    connection: Option<Extension<ConnectionContext>>,
    handshake: Result<Handshake, ApiError>,
) -> Result<Response, ApiError> {
    let handshake = handshake?;
    rt.origins.check(&headers).map_err(forbidden_origin)?;
    let id = poll_id(&id)?;
    let operator = sees_embargoed(&rt, &headers, &q, id)?;
    let sub = rt
        .subscribe(id, operator)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    let live = connection.map(|Extension(context)| context.live);
    small_send_buffer(&rt, live.as_ref());
    Ok(handshake.accept(move |conn, early| async move {
        // Served on the fan-out runtime, below the vote path's priority.
        rt.serve_websocket(sub, conn, operator, early);
    }))
}

/// A WebSocket upgrade with the limits and small buffers every live socket here uses (the old
/// API's socket, which tungstenite serves).
pub fn lean(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(crate::MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(crate::MAX_CLIENT_MESSAGE_BYTES)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

async fn sse(
    State(rt): State<Arc<Realtime>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    connection: Option<Extension<ConnectionContext>>,
) -> Result<Response, ApiError> {
    let id = poll_id(&id)?;
    let operator = sees_embargoed(&rt, &headers, &q, id)?;
    let sub = rt
        .subscribe(id, operator)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    let live = connection.map(|Extension(context)| context.live);
    small_send_buffer(&rt, live.as_ref());
    // Whichever starts first has the subscription: the node's listener hands the socket to the
    // writer once the head is written, and the viewer is written to in its poll's sweeps
    // (`crate::broadcast`); the body is the stream where it does not (HTTP/1.0, a `GET` with a
    // body, a router served elsewhere; a `HEAD` gets the head alone).
    let slot = Arc::new(Mutex::new(Some(sub)));
    let writer = {
        let slot = slot.clone();
        StreamWriter::new(move |conn, stopping| async move {
            let Some(sub) = slot.lock().take() else {
                return;
            };
            let client = broadcast::Client::EventStream { stopping };
            broadcast::serve(rt, sub, conn, operator, client).await
        })
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(events(slot, live)),
    )
        .into_response();
    response.extensions_mut().insert(writer);
    Ok(response)
}

/// An event stream as a body, once it takes the subscription from `slot`. The subscription always
/// has the newest state, and the stream takes the next frame only once the socket takes writes
/// again (hyper alone would queue up to 16 events behind a slow socket): no task or channel per
/// viewer, and a slow viewer is behind by what its socket holds. A client for which a write waits
/// for `http.write_stall_timeout_ms` is closed by the listener.
fn events(
    slot: Arc<Mutex<Option<Subscription>>>,
    live: Option<LiveSocket>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    if let Some(live) = &live {
        live.track();
    }
    let taken = futures::stream::once(async move { slot.lock().take() });
    taken.filter_map(std::future::ready).flat_map(move |sub| {
        futures::stream::unfold((sub, live.clone()), |(mut sub, live)| async move {
            // What the HTTP server holds leaves first (see `live_socket`).
            if let Some(live) = &live {
                live.writable().await;
            }
            // Events, and a comment when the stream has been quiet (see `crate::feed`).
            let event = sub.next_sse().await;
            Some((Ok(event), (sub, live)))
        })
    })
}
