//! `GET /v1/polls/{id}/ws` (WebSocket) and `GET /v1/polls/{id}/sse` (Server-Sent Events).
//!
//! Who sees embargoed counts: an operator (`Authorization: Bearer <key>`, `X-Api-Key`, or the
//! console's session cookie) or a screen token for the poll (`?token=`); `?key=` is refused (401).

use crate::send::Outbox;
use crate::Realtime;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use query::routes::KeyQuery;
use schemas::{ApiError, PollId};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio_stream::wrappers::ReceiverStream;

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

async fn ws(
    State(rt): State<Arc<Realtime>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(
            "not_a_websocket",
            format!("this endpoint speaks WebSocket: {e}"),
        )
    })?;
    rt.origins.check(&headers).map_err(forbidden_origin)?;
    let upgrade = upgrade
        .max_message_size(crate::MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(crate::MAX_CLIENT_MESSAGE_BYTES);
    let id = poll_id(&id)?;
    let operator = sees_embargoed(&rt, &headers, &q, id)?;
    let sub = rt
        .subscribe(id)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    Ok(upgrade
        .on_upgrade(move |socket| async move {
            let (mut tx, mut rx) = socket.split();
            // `Subscription::next` must not be cancelled midway (it may have taken a change it
            // has not returned yet), so incoming frames are read by their own task and only a
            // closed connection interrupts the loop.
            let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
            let reader = tokio::spawn(async move {
                while let Some(Ok(msg)) = rx.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
                let _ = closed_tx.send(());
            });
            let mut sub = sub;
            let mut outbox = Outbox::new(operator);
            loop {
                let update = tokio::select! {
                    u = sub.next() => u,
                    _ = &mut closed => break,
                };
                let Some(text) = outbox.message(&update) else {
                    continue;
                };
                let sent = tokio::select! {
                    sent = tokio::time::timeout(rt.send_timeout, tx.send(Message::Text(text.into()))) => sent,
                    _ = &mut closed => break,
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        rt.dropped_slow_consumer(id, "ws");
                        break;
                    }
                }
            }
            reader.abort();
        })
        .into_response())
}

async fn sse(
    State(rt): State<Arc<Realtime>>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = poll_id(&id)?;
    let operator = sees_embargoed(&rt, &headers, &q, id)?;
    let sub = rt
        .subscribe(id)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    // hyper pulls the next event only once the socket has taken the previous ones, so the
    // events are made by a task that waits at most `send_timeout` for each to be taken; a
    // client that takes none for that long loses its subscription, and its stream ends.
    let (events, rx) = tokio::sync::mpsc::channel::<Event>(1);
    tokio::spawn(async move {
        let mut sub = sub;
        let mut outbox = Outbox::new(operator);
        loop {
            let update = tokio::select! {
                u = sub.next() => u,
                _ = events.closed() => break,
            };
            let Some(text) = outbox.message(&update) else {
                continue;
            };
            let event = Event::default().event(update.event_name()).data(text);
            match events.send_timeout(event, rt.send_timeout).await {
                Ok(()) => {}
                Err(SendTimeoutError::Closed(_)) => break,
                Err(SendTimeoutError::Timeout(_)) => {
                    rt.dropped_slow_consumer(id, "sse");
                    break;
                }
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
