//! `WS /ws/poll/{id}/`: live results in the seed shape, and votes over the socket.
//!
//! - Authentication as for HTTP (the `sessionid` cookie or Basic on the upgrade request).
//! - Server → client: on connect `{"results": {label: count, …}}` (every label, option order), then
//!   the same shape whenever the counts change, from [`realtime::Subscription`] (coalesced; a
//!   message never shows a lower total than one already sent; `Update::Viewers` is not forwarded).
//!   While the poll's visibility hides its counts: `{"hidden": true, "detail": "Results are hidden …"}`
//!   instead, then results once they are public.
//! - Client → server (optional): `{"choice": "X"}` votes on this poll as the connection's user,
//!   exactly as `POST /api/polls/{id}/vote/`. Answer: `{"vote": {"choice": "X"}}` once durable, or
//!   `{"error": "<sentence>", "status": <the HTTP status the same vote would get>}` (for example
//!   `{"error": "You have already voted on this poll.", "status": 400}`; field errors read
//!   `"choice: <what is wrong>"`). An error never repeats what the client sent (an unknown choice
//!   is `"choice: not a valid choice of this poll."`). Other messages are answered with an error
//!   too; binary messages are ignored. Votes on the socket share the per-address vote limit of the
//!   HTTP paths ([`super::throttle`]); over it: `{"error": "Request was throttled. …", "status": 429}`.
//! - A client that does not take a message within `realtime.send_timeout_ms` is disconnected
//!   (counted as a slow consumer).
//! - When the node stops, the socket is closed with code 1001 (going away) so the client can
//!   reconnect elsewhere at once, and the node waits for the client's answer as it does for its
//!   `/v1` viewers (`realtime::Realtime::stop`), at most a second: a client that has stopped
//!   reading (a send waiting for room) is let go then, without it.
//! - Its kernel send buffer is the small one of every live socket
//!   (`realtime.socket_send_buffer_bytes`).
//! - A page of another site (an `Origin` the realtime service does not allow) gets `403
//!   {"detail": …}`; messages over 4 KiB close the socket.
//! - Unknown poll (or a non-numeric id), or no valid credentials: the upgrade is accepted, then the
//!   socket is closed with code 1008 (policy violation) and the reason (DRF's sentence). A plain
//!   HTTP request (not an upgrade) gets `400 {"detail": …}`.

use super::auth::UserId;
use super::drf::{self, hidden_detail, DrfError, LabelCounts};
use super::{padded_counts, Seed};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use edge::listener::ConnectionContext;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use realtime::{Subscription, Update};
use results::Snapshot;
use schemas::{Poll, PollId, Timestamp};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn handler(
    State(seed): State<Arc<Seed>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    connection: Option<Extension<ConnectionContext>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (peer, live) = match connection {
        Some(Extension(context)) => (Some(context.peer.ip()), Some(context.live)),
        None => (None, None),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return DrfError::detail(
                StatusCode::BAD_REQUEST,
                format!("This endpoint speaks WebSocket: {e}"),
            )
            .into_response()
        }
    };
    // A page of another site must not vote with the user's session cookie.
    if let Err(origin) = seed.realtime.origins.check(&headers) {
        return DrfError::detail(
            StatusCode::FORBIDDEN,
            format!("Pages of {origin:?} may not open this socket."),
        )
        .into_response();
    }
    let upgrade = realtime::routes::lean(upgrade);
    // Credentials first, then the poll (a refused client is never counted as a viewer).
    let outcome = match seed.auth.authenticate(&headers).await {
        Err(e) => Err(e.message()),
        Ok(user) => drf::path_poll_id(&id)
            .and_then(|id| seed.realtime.subscribe(id, true))
            .map(|sub| (user, sub))
            .ok_or_else(|| drf::NO_POLL.to_owned()),
    };
    if outcome.is_ok() {
        realtime::routes::small_send_buffer(&seed.realtime, live.as_ref());
    }
    let realtime = seed.realtime.clone();
    upgrade
        .on_upgrade(move |socket| {
            realtime.track_socket(async move {
                match outcome {
                    Err(reason) => close(socket, close_code::POLICY, &reason, REFUSE_WAIT).await,
                    Ok((user, sub)) => serve(seed, socket, user, peer, sub).await,
                }
            })
        })
        .into_response()
}

/// What a socket is told when the node stops (with close code 1001, going away).
const GOING_AWAY: &str = "The server is going away; reconnect.";

/// How long a refused socket's close, and its client's answer, may take.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// How long the close of a socket may take once the node stops: like a `/v1` viewer's, a client
/// that has stopped reading does not hold the node's stop up for long.
const GOING_AWAY_WAIT: Duration = Duration::from_secs(1);

/// Closes a socket with `code` and `reason`, then waits for the client's close reply so the frame
/// is not lost to a reset; `within` in all, however slowly the client reads.
async fn close(mut socket: WebSocket, code: u16, reason: &str, within: Duration) {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = tokio::time::timeout(within, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn serve(
    seed: Arc<Seed>,
    socket: WebSocket,
    user: UserId,
    peer: Option<IpAddr>,
    mut sub: Subscription,
) {
    let poll_id = sub.poll_id();
    let mut stop = seed.realtime.stopping();
    let (mut tx, mut rx) = socket.split();
    let mut last = LastSent::default();
    let ended = loop {
        // All are cancel-safe: whichever loses the race loses nothing.
        tokio::select! {
            biased;
            // The node is stopping (a stop signal gone is a stop): the client is told, so it can
            // reconnect elsewhere at once.
            () = stopped(&mut stop) => break Ended::Stopping,
            update = sub.next() => {
                let Update::Results(poll, snap) = update else { continue };
                if let Some(msg) = last.message(&poll, &snap, Timestamp::now()) {
                    if let Err(ended) = send_within(&seed, &mut tx, &mut stop, poll_id, msg).await {
                        break ended;
                    }
                }
            }
            incoming = rx.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break Ended::Over,
                Some(Ok(Message::Text(text))) => {
                    let reply = client_message(&seed, user, peer, poll_id, text.as_str()).await;
                    let reply = reply.to_string();
                    if let Err(ended) = send_within(&seed, &mut tx, &mut stop, poll_id, reply).await {
                        break ended;
                    }
                }
                Some(Ok(_)) => {} // pings are answered by axum; binary messages are ignored
            }
        }
    };
    drop(sub);
    if ended == Ended::Stopping {
        if let Ok(socket) = tx.reunite(rx) {
            close(socket, close_code::AWAY, GOING_AWAY, GOING_AWAY_WAIT).await;
        }
    }
}

/// Why a socket's loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client closed or left, a write failed, or it was dropped as a slow consumer.
    Over,
    /// The node is stopping: the client is told so.
    Stopping,
}

/// Returns once the node stops (or its stop signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sends one message within `realtime.send_timeout_ms`, unless the node stops first (a message
/// is never cut: what the socket's writer took is written whole ahead of the close, and what it
/// had not taken is dropped).
async fn send_within(
    seed: &Seed,
    tx: &mut SplitSink<WebSocket, Message>,
    stop: &mut watch::Receiver<bool>,
    poll_id: PollId,
    text: String,
) -> Result<(), Ended> {
    let rt = &seed.realtime;
    let send = tokio::time::timeout(
        rt.settings.send_timeout,
        tx.send(Message::Text(text.into())),
    );
    tokio::select! {
        biased;
        sent = send => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended::Over),
            Err(_) => {
                rt.dropped_slow_consumer(poll_id, "seed_ws");
                Err(Ended::Over)
            }
        },
        // A client that stopped reading does not hold the node's stop up.
        () = stopped(stop) => Err(Ended::Stopping),
    }
}

/// The socket's answer to a choice that is not one of the poll's labels: unlike the HTTP
/// endpoint's DRF sentence, it does not repeat the choice.
const NOT_A_CHOICE: &str = "not a valid choice of this poll.";

/// Answers one client message: a vote, or an error.
async fn client_message(
    seed: &Arc<Seed>,
    user: UserId,
    peer: Option<IpAddr>,
    poll_id: PollId,
    text: &str,
) -> Value {
    if let Err(e) = seed.throttles.vote(peer) {
        return reply(Err(e));
    }
    let poll = seed.app.catalog.get(poll_id);
    let result = match read_vote(text, poll.as_deref()) {
        Ok((poll, option)) => seed.cast(user, poll, option).await,
        Err(e) => Err(e),
    };
    reply(result)
}

/// Reads a client message (pure): `{"choice": label}` on `poll` (None: the poll is gone) gives
/// the poll and the option voted for; anything else the error to answer, which never repeats what
/// the client sent. Errors come in the order of the HTTP vote: the body, then the poll, then the
/// choice.
pub fn read_vote<'p>(text: &str, poll: Option<&'p Poll>) -> Result<(&'p Poll, usize), DrfError> {
    let body = drf::parse_object(text.as_bytes())?;
    let poll = poll.ok_or_else(DrfError::not_found)?;
    let choice = body.get("choice");
    let known = |v: &Value| {
        v.as_str()
            .is_some_and(|l| drf::label_index(&poll.options, l).is_some())
    };
    if choice.is_some_and(|v| !v.is_null() && !known(v)) {
        return Err(DrfError::field("choice", NOT_A_CHOICE));
    }
    let option = drf::choice_option(&poll.options, choice)?;
    Ok((poll, option))
}

/// The answer to a client message (pure): `{"vote": {"choice": label}}` or
/// `{"error": sentence, "status": the HTTP status the same vote would get}`.
pub fn reply(result: Result<String, DrfError>) -> Value {
    match result {
        Ok(label) => json!({"vote": {"choice": label}}),
        Err(e) => json!({"error": e.message(), "status": e.status.as_u16()}),
    }
}

/// What a connection was last sent, to send only changes and never a lower total.
#[derive(Debug, Default)]
pub struct LastSent {
    version: i64,
    total: i64,
    counts: Option<Vec<i64>>,
    hidden: Option<bool>,
}

impl LastSent {
    /// The message to send for this state of the poll, if the client has not seen it.
    pub fn message(&mut self, poll: &Poll, snap: &Snapshot, now: Timestamp) -> Option<String> {
        if snap.version < self.version {
            return None;
        }
        self.version = snap.version;
        if !poll.results_public(now) {
            if self.hidden == Some(true) {
                return None;
            }
            self.hidden = Some(true);
            return Some(
                json!({"hidden": true, "detail": hidden_detail(poll.visibility)}).to_string(),
            );
        }
        let counts = padded_counts(poll, &snap.counts);
        let total: i64 = counts.iter().sum();
        if self.hidden == Some(false)
            && (self.counts.as_ref() == Some(&counts) || total < self.total)
        {
            return None;
        }
        self.hidden = Some(false);
        self.total = total;
        let msg = serde_json::to_string(&json_results(&poll.options, &counts)).ok();
        self.counts = Some(counts);
        msg
    }
}

#[derive(serde::Serialize)]
struct Results<'a> {
    results: LabelCounts<'a>,
}

fn json_results<'a>(labels: &'a [String], counts: &'a [i64]) -> Results<'a> {
    Results {
        results: LabelCounts { labels, counts },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Visibility;

    fn poll(visibility: Visibility) -> Poll {
        serde_json::from_value(json!({
            "id": 1, "slug": "s", "title": "t", "options": ["a", "b"], "max_choices": 1,
            "visibility": visibility, "opens_at": null, "closes_at": null, "opened_at": 0,
            "closed_at": null, "created_at": 0, "creator": null,
        }))
        .unwrap()
    }

    fn snap(version: i64, counts: &[i64]) -> Snapshot {
        Snapshot {
            version,
            counts: counts.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn sends_changes_only_and_never_goes_back() {
        let p = poll(Visibility::Live);
        let mut last = LastSent::default();
        assert_eq!(
            last.message(&p, &snap(0, &[]), Timestamp(1)).as_deref(),
            Some(r#"{"results":{"a":0,"b":0}}"#)
        );
        assert_eq!(last.message(&p, &snap(0, &[]), Timestamp(1)), None);
        assert_eq!(
            last.message(&p, &snap(3, &[1, 2]), Timestamp(1)).as_deref(),
            Some(r#"{"results":{"a":1,"b":2}}"#)
        );
        assert_eq!(
            last.message(&p, &snap(4, &[1, 2]), Timestamp(1)),
            None,
            "same counts"
        );
        assert_eq!(
            last.message(&p, &snap(2, &[1, 3]), Timestamp(1)),
            None,
            "older version"
        );
        assert_eq!(
            last.message(&p, &snap(5, &[1, 1]), Timestamp(1)),
            None,
            "lower total"
        );
        assert_eq!(
            last.message(&p, &snap(6, &[2, 2]), Timestamp(1)).as_deref(),
            Some(r#"{"results":{"a":2,"b":2}}"#)
        );
    }

    #[test]
    fn reads_a_vote_message_or_says_what_is_wrong() {
        let p = poll(Visibility::Live);
        let read = |text: &str, poll: Option<&Poll>| {
            read_vote(text, poll)
                .map(|(_, option)| option)
                .map_err(|e| {
                    let answer = reply(Err(e));
                    (
                        answer["status"].as_u64().unwrap(),
                        answer["error"].as_str().unwrap().to_owned(),
                    )
                })
        };
        assert_eq!(read(r#"{"choice": "b"}"#, Some(&p)), Ok(1));
        assert_eq!(
            read(r#"{"choice": " a "}"#, Some(&p)),
            Ok(0),
            "labels are trimmed"
        );
        let (status, error) = read(r#"{"choice": "c"}"#, Some(&p)).unwrap_err();
        assert_eq!(status, 400);
        assert!(error.starts_with("choice: "), "{error}");
        assert_eq!(
            read("{}", Some(&p)),
            Err((400, "choice: This field is required.".to_owned()))
        );
        assert_eq!(read(r#"{"choice": 1}"#, Some(&p)).unwrap_err().0, 400);
        assert_eq!(read("[1]", Some(&p)).unwrap_err().0, 400);
        assert_eq!(read("{", Some(&p)).unwrap_err().0, 400);
        assert_eq!(
            read("{", None).unwrap_err().0,
            400,
            "the body is judged before the poll"
        );
        assert_eq!(read(r#"{"choice": "a"}"#, None).unwrap_err().0, 404);
        assert_eq!(reply(Ok("a".into())), json!({"vote": {"choice": "a"}}));
    }

    #[test]
    fn hidden_polls_say_so_once_then_show_results_when_public() {
        let mut p = poll(Visibility::OnReveal);
        let mut last = LastSent::default();
        let m = last.message(&p, &snap(1, &[1, 0]), Timestamp(1)).unwrap();
        assert!(m.contains(r#""hidden":true"#), "{m}");
        assert_eq!(last.message(&p, &snap(2, &[2, 0]), Timestamp(1)), None);
        p.revealed = true;
        assert_eq!(
            last.message(&p, &snap(2, &[2, 0]), Timestamp(1)).as_deref(),
            Some(r#"{"results":{"a":2,"b":0}}"#)
        );
    }
}
