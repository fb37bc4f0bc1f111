//! One poll's live feed: a task per watched poll that renders its [`Frame`] once per coalescing
//! interval, and the [`Subscription`] each viewer reads it through.
//!
//! - The feed task wakes when the poll's results or the poll itself change, waits out the rest of
//!   the coalescing interval ([`crate::Settings::coalesce_for`]: from `realtime.min_coalesce_ms`
//!   with a small audience on the node to `realtime.coalesce_ms` with a large one, so the node's
//!   frames per second stay within `realtime.frame_budget`), renders the frame once and publishes it in
//!   a `watch` channel, which keeps only the latest: a viewer that is still sending an older frame
//!   skips straight to the newest one when it is done. A slow viewer gets the latest state, never
//!   a queue. The poll's WebSocket viewers are then written to in sweeps ([`crate::broadcast`]);
//!   event streams and the old API's socket read the channel through their [`Subscription`].
//! - Once a second the task looks at the viewer count (an atomic the subscriptions move) and
//!   publishes it only when it changed; it also re-renders then, so a state that moves with the
//!   clock (a scheduled close) is shown within a second. With no viewers left the task retires
//!   its feed.
//! - A viewer costs its connection, one `watch` receiver and two sequence numbers: no buffer and
//!   no encoding of its own.

use crate::broadcast::Audience;
use crate::frame::{render, Encoded, Frame};
use crate::{Realtime, Update};
use bytes::Bytes;
use results::Snapshot;
use schemas::{Poll, PollId, Timestamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the viewer count is looked at (and published when it changed).
pub const VIEWER_COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// The shared state of one watched poll.
pub struct Feed {
    pub poll_id: PollId,
    /// Subscriptions open on this feed.
    pub viewers: AtomicU64,
    frames: watch::Sender<Arc<Frame>>,
    /// Its WebSocket viewers, written to in sweeps ([`crate::broadcast`]).
    pub(crate) ws: Audience,
}

impl Feed {
    /// A feed for `poll`, its first frame rendered now (counting its first viewer), and its task
    /// started.
    pub(crate) fn start(rt: &Arc<Realtime>, poll: Arc<Poll>) -> Arc<Feed> {
        // Watch first, then read: a change that lands in between is seen by the task, not lost.
        let polls = rt.catalog.changes();
        let mut results = rt.board.subscribe(poll.id);
        let poll = rt.catalog.get(poll.id).unwrap_or(poll);
        let snapshot = results.borrow_and_update().clone();
        let first = render(None, poll.clone(), snapshot, 1, Timestamp::now());
        let feed = Arc::new(Feed {
            poll_id: poll.id,
            viewers: AtomicU64::new(0),
            frames: watch::channel(Arc::new(first)).0,
            ws: Audience::default(),
        });
        tokio::spawn(run(rt.clone(), feed.clone(), results, polls));
        feed
    }

    pub(crate) fn subscribe(self: &Arc<Self>, rt: &Arc<Realtime>, operator: bool) -> Subscription {
        Subscription {
            rt: rt.clone(),
            frames: self.frames.subscribe(),
            feed: self.clone(),
            operator,
            results_sent: 0,
            viewers_sent: 0,
            sent_results_last: false,
        }
    }

    pub fn latest(&self) -> Arc<Frame> {
        self.frames.borrow().clone()
    }
}

/// The feed task (see the module doc).
async fn run(
    rt: Arc<Realtime>,
    feed: Arc<Feed>,
    mut results: watch::Receiver<Arc<Snapshot>>,
    mut polls: watch::Receiver<u64>,
) {
    let mut tick = tokio::time::interval_at(
        Instant::now() + VIEWER_COUNT_INTERVAL,
        VIEWER_COUNT_INTERVAL,
    );
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_publish = Instant::now();
    loop {
        let viewers = tokio::select! {
            changed = results.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                None
            }
            changed = polls.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                None
            }
            _ = tick.tick() => {
                let n = feed.viewers.load(Ordering::Relaxed);
                if n == 0 && rt.retire(&feed) {
                    return;
                }
                Some(n)
            }
        };
        if viewers.is_none() {
            let audience = rt.connections.load(Ordering::Relaxed);
            tokio::time::sleep_until(last_publish + rt.settings.coalesce_for(audience)).await;
        }
        last_publish = Instant::now();
        polls.mark_unchanged();
        let snapshot = results.borrow_and_update().clone();
        let prev = feed.latest();
        let poll = rt
            .catalog
            .get(feed.poll_id)
            .unwrap_or_else(|| prev.poll.clone());
        let next = render(
            Some(&prev),
            poll,
            snapshot,
            viewers.unwrap_or(prev.viewers),
            Timestamp::now(),
        );
        let moved = next.public.seq != prev.public.seq
            || next.operator.seq != prev.operator.seq
            || next.viewers_message.seq != prev.viewers_message.seq;
        if moved {
            feed.frames.send_replace(Arc::new(next));
            feed.ws.sweep(&rt, &feed);
        }
    }
}

/// What changed for a viewer.
enum Change {
    Results(Arc<Frame>),
    Viewers(Arc<Frame>),
}

/// A live client's view of one poll: counted as a viewer until dropped.
pub struct Subscription {
    rt: Arc<Realtime>,
    feed: Arc<Feed>,
    frames: watch::Receiver<Arc<Frame>>,
    /// Sees embargoed counts.
    operator: bool,
    results_sent: u64,
    viewers_sent: u64,
    /// The last message sent was results (a new count then goes first, so a viewer that is
    /// always behind on results still hears the count).
    sent_results_last: bool,
}

impl Subscription {
    pub fn poll(&self) -> Arc<Poll> {
        self.frames.borrow().poll.clone()
    }

    pub fn poll_id(&self) -> PollId {
        self.feed.poll_id
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The next message this viewer has not been sent: the results at once on the first call,
    /// then the viewer count, then whatever the feed publishes next (results first, unless the
    /// count changed and results went last). Cancel-safe: a call dropped before it returns loses
    /// nothing.
    async fn next_change(&mut self) -> Change {
        loop {
            let frame = self.frames.borrow_and_update().clone();
            let results = frame.results(self.operator).seq != self.results_sent;
            let viewers = frame.viewers_message.seq != self.viewers_sent;
            if results && !(viewers && self.sent_results_last) {
                self.results_sent = frame.results(self.operator).seq;
                self.sent_results_last = true;
                return Change::Results(frame);
            }
            if viewers {
                self.viewers_sent = frame.viewers_message.seq;
                self.sent_results_last = false;
                return Change::Viewers(frame);
            }
            if self.frames.changed().await.is_err() {
                // The feed outlives its subscriptions; this is never reached.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn next_message(&mut self) -> Encoded {
        let operator = self.operator;
        let message = match self.next_change().await {
            Change::Results(f) => f.results(operator).message.clone(),
            Change::Viewers(f) => f.viewers_message.message.clone(),
        };
        self.rt.messages_sent.fetch_add(1, Ordering::Relaxed);
        message
    }

    /// The next Server-Sent Event, encoded (cancel-safe).
    pub async fn next_sse(&mut self) -> Bytes {
        self.next_message().await.sse()
    }

    /// The next update as values, for clients that speak another format (the old API's socket).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Update {
        let update = match self.next_change().await {
            Change::Results(f) => Update::Results(f.poll.clone(), f.snapshot.clone()),
            Change::Viewers(f) => Update::Viewers(f.viewers),
        };
        self.rt.messages_sent.fetch_add(1, Ordering::Relaxed);
        update
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.viewers.fetch_sub(1, Ordering::Relaxed);
        self.rt.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
