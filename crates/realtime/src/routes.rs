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
    let id = poll_id(&id)?;
    let operator = rt.keys.is_operator(&headers, q.key());
    let sub = rt
        .subscribe(id)
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("there is no poll {id}")))?;
    Ok(upgrade
        .on_upgrade(move |socket| async move {
            let (mut tx, mut rx) = socket.split();
            let mut sub = sub;
            loop {
                tokio::select! {
                    update = sub.next() => {
                        if tx.send(Message::Text(update.to_json(operator).into())).await.is_err() {
                            break;
                        }
                    }
                    incoming = rx.next() => match incoming {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(_)) => {} // pings are answered by axum; other messages are ignored
                    }
                }
            }
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
