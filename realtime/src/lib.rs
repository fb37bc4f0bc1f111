//! CrowdTick's realtime service: live results per poll over WebSocket and Server-Sent Events.
//!
//! - [`feed`]: one task per watched poll renders its messages once per render interval and
//!   publishes the latest; each viewer is sent what it has not been sent of the latest frame (a
//!   slow viewer gets the newest state, never a queue), about once a coalescing interval, in
//!   sweeps or through its [`Subscription`]. The viewer count is news at most once a second, and
//!   only when it changed.
//! - [`pacing`]: how a poll's shards of viewers take turns over the coalescing interval, so each
//!   sweep writes a fresh frame (pure).
//! - [`frame`]: what is sent (pure): the results for each audience and the viewer count, each
//!   encoded once per poll for both transports.
//! - [`audience`]: a poll's viewers seated in shards, and each shard's turn queueing its sweep.
//! - [`broadcast`]: a poll's WebSocket viewers and event streams, in shards written to in sweeps,
//!   in turn as [`pacing`] allows (one non-blocking write of the shared frame per viewer, no task
//!   woken); a viewer whose socket is full is parked and caught up by its own task.
//! - [`websocket`]: the WebSocket handshake and frames (tungstenite's codec), pure but for the
//!   upgrade.
//! - [`routes`]: `GET /v1/polls/{id}/ws` and `GET /v1/polls/{id}/sse` (the deadline a client has
//!   to take each message is [`broadcast`]'s).
//! - [`start`]: the service starting itself (fan-out runtime, metrics, routes);
//!   [`Realtime::stop`]: its WebSocket viewers told the node is going away, and waited for.
//! - [`fanout`]: the runtime WebSocket viewers and event streams are served on, at a lower
//!   priority than votes.
//! - [`metrics`]: the service's collector for `/metrics` (`crowdtick_realtime_*`).
//! - [`settings`]: the [`RealtimeSection`], `[realtime]` settings as written, and the
//!   [`Settings`] they become.
//! - [`origin`]: which web pages may open a WebSocket (the `Origin` allow-list).
//! - [`LiveSocket`] (from `edge::listener`): what a live connection shares with the listener (a
//!   small kernel send buffer; whether its writes wait for room, so an event stream takes its next
//!   frame only once the socket takes writes again). Handlers find it in the request's
//!   [`ConnectionContext`], also from `edge::listener`.
//!
//! Embargo: a connection that is not an operator's (key header or session cookie) and holds no
//! screen token for the poll gets `hidden: true` and no counts, version or offsets until the
//! poll's results are public (same rule as the query API, via [`results::views`]).

pub mod audience;
pub mod broadcast;
pub mod fanout;
pub mod feed;
pub mod frame;
pub mod metrics;
pub mod origin;
pub mod pacing;
pub mod routes;
pub mod settings;
pub mod websocket;

pub use settings::RealtimeSection;

/// The largest message a client may send on a live socket (a vote on the old API's socket is a
/// few dozen bytes; the /v1 socket takes none). Larger ones close the connection.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4096;

use edge::access::OperatorKeys;
pub use edge::listener::{ConnectionContext, LiveSocket};
use feed::Feed;
pub use feed::Subscription;
use parking_lot::Mutex;
use results::{ResultsBoard, Snapshot};
use schemas::{Poll, PollId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::latency::{LatencyHistogram, BUCKETS_SECONDS, SCREEN_BUCKETS_SECONDS};
use storage::PollCatalog;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use routes::router;

/// How the realtime service serves its viewers (`[realtime]` settings).
#[derive(Debug, Clone)]
pub struct Settings {
    /// At most one results update per viewer per this long (with a large audience:
    /// [`Self::coalesce_for`]).
    pub coalesce: Duration,
    /// The shortest interval between a viewer's updates (with a small audience) and between a
    /// poll's renders; `coalesce` when above it.
    pub min_coalesce: Duration,
    /// Frames per second the node aims to send across all its viewers (0: no budget, always
    /// `coalesce`).
    pub frame_budget: u64,
    /// A client must take each message within this, or it is disconnected ([`routes`]).
    pub send_timeout: Duration,
    /// The kernel send buffer asked for each live socket (0: the kernel's own).
    pub socket_send_buffer: u32,
    /// Threads of the viewers' runtime ([`fanout`]); 0: serve viewers on the caller's runtime.
    pub fanout_threads: usize,
    /// How much lower their priority is (Linux nice levels).
    pub fanout_nice: i32,
    /// An event stream quiet for this long gets a comment line ([`feed`]); zero: none.
    pub sse_keep_alive: Duration,
}

impl Settings {
    /// The interval between a viewer's results updates while the node serves `viewers`: the one
    /// that keeps its frames per second within `frame_budget` (every viewer gets at most one
    /// frame per interval; a poll with several shards of viewers is rendered for their turns
    /// within it), between `min_coalesce` and `coalesce`. A studio screen alone on a
    /// node sees a vote a flush after it is counted; a hundred thousand viewers get `coalesce`.
    pub fn coalesce_for(&self, viewers: u64) -> Duration {
        if self.frame_budget == 0 {
            return self.coalesce;
        }
        let micros = viewers
            .saturating_mul(1_000_000)
            .div_ceil(self.frame_budget);
        Duration::from_micros(micros).clamp(self.shortest_interval(), self.coalesce)
    }

    /// The shortest interval between a poll's updates to a viewer, and between its renders:
    /// `min_coalesce`, or `coalesce` when it is below it.
    pub fn shortest_interval(&self) -> Duration {
        self.min_coalesce.min(self.coalesce)
    }
}

/// The realtime service's shared state.
pub struct Realtime {
    pub catalog: PollCatalog,
    pub board: Arc<ResultsBoard>,
    pub keys: OperatorKeys,
    /// Which web pages may open a WebSocket.
    pub origins: origin::OriginPolicy,
    pub settings: Settings,
    /// Where live viewers are served.
    pub fanout: fanout::Fanout,
    /// The feeds of the polls being watched.
    feeds: Mutex<HashMap<PollId, Arc<Feed>>>,
    pub connections: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Clients disconnected for not taking a message within `settings.send_timeout`.
    pub slow_consumers_dropped: AtomicU64,
    /// Per viewer a sweep gave results of a newer tally: their age when the sweep ended, from
    /// this node's board taking the tally; about the node's part of that viewer's lag (up to
    /// the sweep's length more for a viewer written early in it).
    pub results_age: LatencyHistogram,
    /// How long each sweep of a shard of viewers took.
    pub sweep_duration: LatencyHistogram,
    /// Raised by [`Realtime::stop`]: WebSocket viewers are told the node is going away.
    stopping: watch::Sender<bool>,
    /// The WebSocket viewers being served, waited for by [`Realtime::stop`].
    websockets: TaskTracker,
}

/// How long [`Realtime::stop`] waits for WebSocket viewers to take their close frame and close.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One thing to tell a live client, as values.
#[derive(Debug, Clone)]
pub enum Update {
    Results(Arc<Poll>, Arc<Snapshot>),
    Viewers(u64),
}

/// Starts the realtime service: its fan-out runtime, its collector in `registry`. Returns the
/// state (the old API's socket streams through it too) and its routes. Must be called within a
/// tokio runtime.
pub fn start(
    catalog: PollCatalog,
    board: Arc<ResultsBoard>,
    keys: OperatorKeys,
    origins: origin::OriginPolicy,
    settings: Settings,
    registry: &mut prometheus_client::registry::Registry,
) -> std::io::Result<(Arc<Realtime>, axum::Router)> {
    let realtime = Realtime::new(catalog, board, keys, origins, settings)?;
    realtime.register_metrics(registry);
    Ok((realtime.clone(), routes::router(realtime)))
}

impl Realtime {
    /// Must be called within a tokio runtime.
    pub fn new(
        catalog: PollCatalog,
        board: Arc<ResultsBoard>,
        keys: OperatorKeys,
        origins: origin::OriginPolicy,
        settings: Settings,
    ) -> std::io::Result<Arc<Self>> {
        let fanout = match settings.fanout_threads {
            0 => fanout::Fanout::current(),
            n => fanout::Fanout::new(n, settings.fanout_nice)?,
        };
        Ok(Arc::new(Self {
            catalog,
            board,
            keys,
            origins,
            settings,
            fanout,
            feeds: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            slow_consumers_dropped: AtomicU64::new(0),
            results_age: LatencyHistogram::new(&SCREEN_BUCKETS_SECONDS),
            sweep_duration: LatencyHistogram::new(&BUCKETS_SECONDS),
            stopping: watch::channel(false).0,
            websockets: TaskTracker::new(),
        }))
    }

    /// Serves a WebSocket viewer on the fan-out runtime until it leaves or the node stops.
    pub(crate) fn serve_websocket(
        self: &Arc<Self>,
        sub: Subscription,
        conn: edge::listener::LiveConnection,
        operator: bool,
        early: bytes::Bytes,
    ) {
        // Its socket registered there too: its readiness is that runtime's to report, not the
        // votes' runtime's, where hyper accepted it.
        let conn = match self.fanout.separate() {
            None => conn,
            Some(there) => match conn.move_to(there) {
                Ok(moved) => moved,
                // Only when the viewers' runtime is shutting down, or out of memory.
                Err(e) => {
                    return tracing::warn!(error = %e, "a WebSocket viewer's socket could not move to the viewers' runtime; it was closed")
                }
            },
        };
        let client = broadcast::Client::WebSocket {
            early,
            stopping: self.stopping.subscribe(),
        };
        let viewer = broadcast::serve(self.clone(), sub, conn, operator, client);
        self.fanout.spawn(self.websockets.track_future(viewer));
    }

    /// The service's stop signal, raised by [`Realtime::stop`], for a live socket served
    /// elsewhere (the old API's, in `seed_api`), which then says goodbye as these viewers do.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Counts `socket` (a live socket served elsewhere: the old API's) among the WebSocket
    /// viewers [`Realtime::stop`] waits for.
    pub fn track_socket<F: std::future::Future>(
        &self,
        socket: F,
    ) -> impl std::future::Future<Output = F::Output> {
        self.websockets.track_future(socket)
    }

    /// Tells every WebSocket viewer the node is going away (close code 1001, so its client
    /// can reconnect elsewhere at once) and waits for them to close, at most [`STOP_GRACE`]; a
    /// viewer whose upgrade completes later is told at once, and not waited for. The node calls
    /// it once its listener has stopped (event streams end with the listener). The old API's
    /// socket (`seed_api`) hears the same signal ([`Realtime::stopping`]) and is waited for too.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        self.websockets.close();
        if tokio::time::timeout(STOP_GRACE, self.websockets.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.websockets.len(),
                "WebSocket viewers still open after the stop's grace period; they close with the node"
            );
        }
    }

    /// Counts a client dropped for not taking a message in time.
    pub fn dropped_slow_consumer(&self, poll_id: PollId, transport: &'static str) {
        self.slow_consumers_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(poll_id, transport, timeout = ?self.settings.send_timeout, "slow live client dropped");
    }

    /// Starts following a poll (counted as one viewer until dropped); `operator`: sees embargoed
    /// counts. `None` if the poll is unknown.
    pub fn subscribe(self: &Arc<Self>, poll_id: PollId, operator: bool) -> Option<Subscription> {
        let feed = {
            let mut feeds = self.feeds.lock();
            let feed = match feeds.get(&poll_id) {
                Some(feed) => feed.clone(),
                None => {
                    let poll = self.catalog.get(poll_id)?;
                    let feed = Feed::start(self, poll);
                    feeds.insert(poll_id, feed.clone());
                    feed
                }
            };
            // Under the lock, so the feed task cannot retire the feed in between.
            feed.viewers.fetch_add(1, Ordering::Relaxed);
            feed
        };
        self.connections.fetch_add(1, Ordering::Relaxed);
        Some(feed.subscribe(self, operator))
    }

    /// Removes `feed` if it has no viewers (under the lock new viewers take); whether it did.
    pub(crate) fn retire(&self, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.feeds.lock();
        if feed.viewers.load(Ordering::Relaxed) != 0 {
            return false;
        }
        if feeds
            .get(&feed.poll_id)
            .is_some_and(|f| Arc::ptr_eq(f, feed))
        {
            feeds.remove(&feed.poll_id);
        }
        true
    }

    /// Viewers of a poll right now.
    pub fn viewers(&self, poll_id: PollId) -> u64 {
        self.feeds
            .lock()
            .get(&poll_id)
            .map(|f| f.viewers.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Polls being watched (each has one feed task).
    pub fn feeds(&self) -> usize {
        self.feeds.lock().len()
    }
}
