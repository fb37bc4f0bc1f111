//! CrowdTick's realtime service: live results per poll over WebSocket and Server-Sent Events.
//!
//! - [`Subscription`]: what every live connection reads — the snapshot on subscribe, then the latest
//!   results whenever they change, at most every `coalesce` (a slow client gets the newest state,
//!   never a queue: the board's `watch` channels keep only the latest), viewer counts, and poll
//!   changes (open, close, reveal, final).
//! - [`routes`]: `GET /v1/polls/{id}/ws` and `GET /v1/polls/{id}/sse`.
//! - [`origin`]: which web pages may open a WebSocket (the `Origin` allow-list).
//! - [`send`]: what one client is sent (embargoed polls: nothing that moves with the votes) and
//!   the deadline a slow client has to take it.
//!
//! Embargo: a connection that is not an operator's (key header or session cookie) and holds no
//! screen token for the poll gets `hidden: true` and no counts, version or offsets until the
//! poll's results are public (same rule as the query API, via [`query::views`]).

pub mod origin;
pub mod routes;
pub mod send;

/// The largest message a client may send on a live socket (a vote on the old API's socket is a
/// few dozen bytes; the /v1 socket takes none). Larger ones close the connection.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4096;

use parking_lot::Mutex;
use processor::{ResultsBoard, Snapshot};
use query::views::results_view;
use query::OperatorKeys;
use schemas::{now_micros, Poll, PollId};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::PollCatalog;
use tokio::sync::watch;
use tokio::time::Instant;

pub use routes::router;

/// The realtime service's shared state.
pub struct Realtime {
    pub catalog: PollCatalog,
    pub board: Arc<ResultsBoard>,
    pub keys: OperatorKeys,
    pub coalesce: Duration,
    /// Which web pages may open a WebSocket.
    pub origins: origin::OriginPolicy,
    /// A client must take each message within this, or it is disconnected ([`send`]).
    pub send_timeout: Duration,
    viewers: Mutex<HashMap<PollId, Arc<watch::Sender<u64>>>>,
    pub connections: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Clients disconnected for not taking a message within `send_timeout`.
    pub slow_consumers_dropped: AtomicU64,
}

/// One thing to tell a live client.
#[derive(Debug, Clone)]
pub enum Update {
    Results(Arc<Poll>, Arc<Snapshot>),
    Viewers(u64),
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

impl Update {
    /// The `/v1` JSON message: `{"type": "results", …}` or `{"type": "viewers", "count": n}`.
    pub fn to_json(&self, operator: bool) -> String {
        match self {
            Update::Results(poll, snap) => {
                let view = results_view(poll, snap, operator, now_micros());
                serde_json::to_string(&Tagged {
                    kind: "results",
                    body: &view,
                })
                .unwrap_or_default()
            }
            Update::Viewers(n) => format!(r#"{{"type":"viewers","count":{n}}}"#),
        }
    }

    pub fn event_name(&self) -> &'static str {
        match self {
            Update::Results(..) => "results",
            Update::Viewers(_) => "viewers",
        }
    }
}

impl Realtime {
    pub fn new(
        catalog: PollCatalog,
        board: Arc<ResultsBoard>,
        keys: OperatorKeys,
        coalesce: Duration,
        origins: origin::OriginPolicy,
        send_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            board,
            keys,
            coalesce,
            origins,
            send_timeout,
            viewers: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            slow_consumers_dropped: AtomicU64::new(0),
        })
    }

    /// Counts a client dropped for not taking a message in time.
    pub fn dropped_slow_consumer(&self, poll_id: PollId, transport: &'static str) {
        self.slow_consumers_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(poll_id, transport, timeout = ?self.send_timeout, "slow live client dropped");
    }

    /// Starts following a poll (counted as one viewer until dropped). `None` if the poll is unknown.
    pub fn subscribe(self: &Arc<Self>, poll_id: PollId) -> Option<Subscription> {
        let poll = self.catalog.get(poll_id)?;
        let viewers = self
            .viewers
            .lock()
            .entry(poll_id)
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone();
        viewers.send_modify(|n| *n += 1);
        self.connections.fetch_add(1, Ordering::Relaxed);
        Some(Subscription {
            rt: self.clone(),
            poll,
            results: self.board.subscribe(poll_id),
            polls: self.catalog.changes(),
            viewers_rx: viewers.subscribe(),
            viewers,
            last_sent: None,
            started: false,
            viewers_sent: false,
        })
    }

    pub fn viewers(&self, poll_id: PollId) -> u64 {
        self.viewers
            .lock()
            .get(&poll_id)
            .map(|v| *v.borrow())
            .unwrap_or(0)
    }
}

/// A live client's view of one poll.
pub struct Subscription {
    rt: Arc<Realtime>,
    poll: Arc<Poll>,
    results: watch::Receiver<Arc<Snapshot>>,
    polls: watch::Receiver<u64>,
    viewers: Arc<watch::Sender<u64>>,
    viewers_rx: watch::Receiver<u64>,
    last_sent: Option<Instant>,
    started: bool,
    /// The viewer count is sent right after the first results, then on change.
    viewers_sent: bool,
}

impl Subscription {
    pub fn poll(&self) -> &Arc<Poll> {
        &self.poll
    }

    /// The next update: the current results at once on the first call, then the latest results
    /// after a change (no sooner than `coalesce` after the previous message), or a viewer count.
    pub async fn next(&mut self) -> Update {
        if !self.started {
            self.started = true;
            self.results.mark_unchanged();
            self.last_sent = Some(Instant::now());
            return Update::Results(self.poll.clone(), self.results.borrow().clone());
        }
        if !self.viewers_sent {
            self.viewers_sent = true;
            return Update::Viewers(*self.viewers_rx.borrow_and_update());
        }
        let which = tokio::select! {
            r = self.results.changed() => { if r.is_err() { std::future::pending::<()>().await; } 0 }
            r = self.polls.changed() => { if r.is_err() { std::future::pending::<()>().await; } 1 }
            r = self.viewers_rx.changed() => { if r.is_err() { std::future::pending::<()>().await; } 2 }
        };
        if let Some(t) = self.last_sent {
            tokio::time::sleep_until(t + self.rt.coalesce).await;
        }
        self.last_sent = Some(Instant::now());
        self.rt.messages_sent.fetch_add(1, Ordering::Relaxed);
        if which == 2
            && !self.results.has_changed().unwrap_or(false)
            && !self.polls.has_changed().unwrap_or(false)
        {
            return Update::Viewers(*self.viewers_rx.borrow_and_update());
        }
        self.polls.mark_unchanged();
        if let Some(p) = self.rt.catalog.get(self.poll.id) {
            self.poll = p;
        }
        let snap = self.results.borrow_and_update().clone();
        Update::Results(self.poll.clone(), snap)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.viewers.send_modify(|n| *n = n.saturating_sub(1));
        self.rt.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
