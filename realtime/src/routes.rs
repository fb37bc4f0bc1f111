//! `GET /v1/polls/{id}/ws` (WebSocket) and `GET /v1/polls/{id}/sse` (Server-Sent Events).

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

fn poll_id(raw: &str) -> Result<PollId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("unknown_poll", format!("there is no poll {raw:?}")))
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
    let operator = rt.keys.is_operator(&headers, q.key());
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
            loop {
                let update = tokio::select! {
                    u = sub.next() => u,
                    _ = &mut closed => break,
                };
                if tx
                    .send(Message::Text(update.to_json(operator).into()))
                    .await
                    .is_err()
                {
                    break;
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
    let operator = rt.keys.is_operator(&headers, q.key());
    let sub = rt
        .subscribe(id)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    let stream = futures::stream::unfold(sub, move |mut sub| async move {
        let update = sub.next().await;
        let event = Event::default()
            .event(update.event_name())
            .data(update.to_json(operator));
        Some((Ok::<_, Infallible>(event), sub))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
