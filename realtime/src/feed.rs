//! One poll's live feed: a task per watched poll that renders its [`Frame`] once per render
//! interval, and the [`Subscription`] each viewer reads it through.
//!
//! - The feed task wakes when the poll's results or the poll itself change, waits out the rest of
//!   its render interval (`pacing::render_interval`: the coalescing interval shared among its
//!   shards of viewers, no shorter than `realtime.min_coalesce_ms`; the coalescing interval,
//!   [`crate::Settings::coalesce_for`], is from `realtime.min_coalesce_ms` with a small audience
//!   on the node to `realtime.coalesce_ms` with a large one, so the node's frames per second stay
//!   within `realtime.frame_budget`), renders the frame once and publishes it in a `watch`
//!   channel, which keeps only the latest: a viewer that is still sending an older frame skips
//!   straight to the newest one when it is done. A slow viewer gets the latest state, never a
//!   queue. The poll's WebSocket viewers and event streams are written to in sweeps of their
//!   shards, in turn, each about once a coalescing interval with the newest frame then
//!   ([`crate::broadcast`], paced by `Pacer`); an event stream whose body is written instead (on
//!   HTTP/1.0, a `GET` with a body, a router served by another server) and the old API's socket
//!   read the channel through their [`Subscription`], which sends results about once a
//!   coalescing interval too.
//! - Once a second the task looks at the viewer count (an atomic the subscriptions move) and
//!   publishes it only when it changed; it also re-renders then, so a state that moves with the
//!   clock (a scheduled close) is shown within a second. With no viewers left the task retires
//!   its feed.
//! - Every half `realtime.sse_keep_alive_secs` the task moves the frame's keep-alive clock
//!   ([`Frame::beat`]) and sweeps (as after a render), whatever the poll does: an event stream
//!   that has sent nothing for two of its beats sends a comment, so proxies keep it open. One
//!   clock per poll instead of a timer per viewer reset by every event; and since it runs on the
//!   clock, not on the poll's activity, an embargoed stream's comments say nothing about how
//!   busy the poll is.
//! - A viewer written to in sweeps costs its connection, its place in its shard, three sequence
//!   numbers and its place in the counts; one read through its [`Subscription`] also a `watch`
//!   receiver and the time of its last results. No encoding of its own, and no buffer or timer
//!   but while its socket is full (its own task then holds the rest of a frame and waits for
//!   room, [`crate::broadcast`]) or a [`Subscription`] waits for its results' turn.

use crate::audience::Audience;
use crate::frame::{render, Frame};
use crate::pacing::{self, Pacer};
use crate::{Realtime, Update};
use bytes::Bytes;
use results::Snapshot;
use schemas::{Poll, PollId, Timestamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often the viewer count is looked at (and published when it changed).
pub const VIEWER_COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// A shard's turn waits for a render due within this, to write it.
const RENDER_FIRST: Duration = Duration::from_millis(1);

/// A [`Subscription`]'s results come a coalescing interval apart, less this (its reader's own
/// wake-up is no reason to miss a render).
const RESULTS_EARLY: Duration = Duration::from_millis(2);

/// An event stream's keep-alive: an SSE comment line.
const KEEP_ALIVE_COMMENT: &[u8] = b":\n\n";

/// The shared state of one watched poll.
pub struct Feed {
    pub poll_id: PollId,
    /// Subscriptions open on this feed.
    pub viewers: AtomicU64,
    frames: watch::Sender<Arc<Frame>>,
    /// Frames published (renders and keep-alive beats), raised after each: a shard swept (or
    /// queued to be) with a lower number is behind ([`crate::pacing`]).
    pub(crate) renders: AtomicU64,
    /// Its viewers written to in sweeps ([`crate::broadcast`]): WebSockets, and event streams
    /// whose sockets the listener handed over.
    pub(crate) audience: Audience,
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
            renders: AtomicU64::new(0),
            audience: Audience::default(),
        });
        tokio::spawn(run(rt.clone(), feed.clone(), results, polls));
        feed
    }

    pub(crate) fn subscribe(self: &Arc<Self>, rt: &Arc<Realtime>, operator: bool) -> Subscription {
        Subscription {
            counted: Counted {
                rt: rt.clone(),
                feed: self.clone(),
            },
            frames: self.frames.subscribe(),
            operator,
            results_sent: 0,
            viewers_sent: 0,
            beat: self.frames.borrow().beat,
            sent_results_last: false,
            results_at: None,
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
    // The keep-alive clock beats on its own interval, from the feed's start: nothing the poll
    // does moves it, nor holds it up (it goes first, and a change's coalescing wait is a branch
    // here too).
    let mut beats = (!rt.settings.sse_keep_alive.is_zero()).then(|| {
        let half = rt.settings.sse_keep_alive / 2;
        let mut beats = tokio::time::interval_at(Instant::now() + half, half);
        beats.set_missed_tick_behavior(MissedTickBehavior::Skip);
        beats
    });
    let mut last_publish = Instant::now();
    // A change seen, to be rendered at the end of its wait.
    let mut due: Option<Instant> = None;
    // The shards' turns, and when those left behind are next.
    let (mut pacer, mut next_pass) = (Pacer::new(), None);
    loop {
        let viewers = tokio::select! {
            biased;
            _ = next_beat(&mut beats) => {
                let mut next = Frame::clone(&feed.latest());
                next.beat += 1;
                // Swept as a render is: the shards in turn, none twice within an interval.
                next_pass = feed.publish(&rt, &mut pacer, next);
                continue;
            }
            // Before the changes: a poll that never stops changing still has its count looked
            // at, and its feed retired with its last viewer.
            _ = tick.tick(), if due.is_none() => {
                let n = feed.viewers.load(Ordering::Relaxed);
                if n == 0 && rt.retire(&feed) {
                    return;
                }
                Some(n)
            }
            // Before a turn: one due with a render gets it.
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => None,
            _ = tokio::time::sleep_until(next_pass.unwrap_or_else(Instant::now)), if next_pass.is_some() => {
                // A render due within a millisecond goes first, so this turn writes it.
                next_pass = match due.filter(|at| *at <= Instant::now() + RENDER_FIRST) {
                    Some(at) => Some(at),
                    None => pace(&rt, &feed, &mut pacer),
                };
                continue;
            }
            _ = either_changed(&mut results, &mut polls), if due.is_none() => {
                let audience = rt.connections.load(Ordering::Relaxed);
                let wait = pacing::render_interval(
                    rt.settings.coalesce_for(audience),
                    rt.settings.shortest_interval(),
                    feed.audience.shards(),
                );
                due = Some(last_publish + wait);
                continue;
            }
        };
        due = None;
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
            next_pass = feed.publish(&rt, &mut pacer, next);
        }
    }
}

impl Feed {
    /// Publishes `frame` and gives the shards their turns with it; when the next pass is due.
    fn publish(
        self: &Arc<Self>,
        rt: &Arc<Realtime>,
        pacer: &mut Pacer,
        frame: Frame,
    ) -> Option<Instant> {
        self.frames.send_replace(Arc::new(frame));
        self.renders.fetch_add(1, Ordering::Release);
        pace(rt, self, pacer)
    }
}

/// Sweeps the shards of `feed`'s viewers that `pacer` allows now (those behind its newest
/// frame); when the next pass is due, if some are left behind.
fn pace(rt: &Arc<Realtime>, feed: &Arc<Feed>, pacer: &mut Pacer) -> Option<Instant> {
    let interval = rt
        .settings
        .coalesce_for(rt.connections.load(Ordering::Relaxed));
    let wait = feed.audience.pace(rt, feed, pacer, interval)?;
    Some(Instant::now() + wait)
}

/// The poll's results or its catalog entry changed; never, once either sender is gone (the node
/// is stopping).
async fn either_changed(
    results: &mut watch::Receiver<Arc<Snapshot>>,
    polls: &mut watch::Receiver<u64>,
) {
    let changed = tokio::select! {
        biased;
        changed = results.changed() => changed,
        changed = polls.changed() => changed,
    };
    if changed.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The keep-alive clock's next beat; never, without one.
async fn next_beat(beats: &mut Option<Interval>) {
    match beats {
        Some(beats) => drop(beats.tick().await),
        None => std::future::pending().await,
    }
}

/// What changed for a viewer.
enum Change {
    Results(Arc<Frame>),
    Viewers(Arc<Frame>),
    /// Two beats of the feed's keep-alive clock without a message.
    KeepAlive,
}

/// A live client's view of one poll: counted as a viewer until dropped.
pub struct Subscription {
    counted: Counted,
    frames: watch::Receiver<Arc<Frame>>,
    /// Sees embargoed counts.
    operator: bool,
    results_sent: u64,
    viewers_sent: u64,
    /// The keep-alive clock's beat when this viewer was last sent something.
    beat: u64,
    /// The last message sent was results (a new count then goes first, so a viewer that is
    /// always behind on results still hears the count).
    sent_results_last: bool,
    /// When results were last sent: the next wait a coalescing interval, as a swept viewer's
    /// do, though the feed renders more often for its shards' turns.
    results_at: Option<Instant>,
}

impl Subscription {
    pub fn poll(&self) -> Arc<Poll> {
        self.frames.borrow().poll.clone()
    }

    pub fn poll_id(&self) -> PollId {
        self.counted.feed.poll_id
    }

    /// What a viewer written to in sweeps keeps of its subscription: its place in the counts
    /// (the frames it is sent are its shard's, [`crate::broadcast`]).
    pub(crate) fn into_counted(self) -> Counted {
        self.counted
    }

    /// The next message this viewer has not been sent: the results at once on the first call,
    /// then the viewer count, then whatever the feed publishes next (results first, unless the
    /// count changed and results went last; results about once a coalescing interval); with
    /// `keep_alive`, a keep-alive once the feed's clock has beaten twice since the last.
    /// Cancel-safe: a call dropped before it returns loses nothing.
    async fn next_change(&mut self, keep_alive: bool) -> Change {
        loop {
            let frame = self.frames.borrow_and_update().clone();
            let results = frame.results(self.operator).seq != self.results_sent;
            let viewers = frame.viewers_message.seq != self.viewers_sent;
            let rt = &self.counted.rt;
            let interval = rt
                .settings
                .coalesce_for(rt.connections.load(Ordering::Relaxed));
            let results_from = self
                .results_at
                .map(|at| at + interval.saturating_sub(RESULTS_EARLY));
            let results_later = results_from.filter(|from| results && Instant::now() < *from);
            if results && results_later.is_none() && !(viewers && self.sent_results_last) {
                self.results_sent = frame.results(self.operator).seq;
                self.sent_results_last = true;
                self.beat = frame.beat;
                self.results_at = Some(Instant::now());
                return Change::Results(frame);
            }
            if viewers {
                self.viewers_sent = frame.viewers_message.seq;
                self.sent_results_last = false;
                self.beat = frame.beat;
                return Change::Viewers(frame);
            }
            if keep_alive && frame.beat >= self.beat + 2 {
                self.beat = frame.beat;
                return Change::KeepAlive;
            }
            // Results not yet due wait for their time, or for a count or a beat before it.
            let until = results_later.unwrap_or_else(Instant::now);
            tokio::select! {
                changed = self.frames.changed() => if changed.is_err() {
                    // The feed outlives its subscriptions; this is never reached.
                    std::future::pending::<()>().await;
                },
                _ = tokio::time::sleep_until(until), if results_later.is_some() => {}
            }
        }
    }

    /// The next Server-Sent Event, encoded, or a keep-alive comment (cancel-safe).
    pub async fn next_sse(&mut self) -> Bytes {
        let event = match self.next_change(true).await {
            Change::Results(f) => f.results(self.operator).message.sse(),
            Change::Viewers(f) => f.viewers_message.message.sse(),
            Change::KeepAlive => return Bytes::from_static(KEEP_ALIVE_COMMENT),
        };
        self.counted
            .rt
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        event
    }

    /// The next update as values, for clients that speak another format (the old API's socket).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Update {
        let update = loop {
            match self.next_change(false).await {
                Change::Results(f) => break Update::Results(f.poll.clone(), f.snapshot.clone()),
                Change::Viewers(f) => break Update::Viewers(f.viewers),
                Change::KeepAlive => {}
            }
        };
        self.counted
            .rt
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        update
    }
}

/// A viewer counted on its poll's feed and on the node, until dropped.
pub(crate) struct Counted {
    rt: Arc<Realtime>,
    feed: Arc<Feed>,
}

impl Counted {
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.feed.viewers.fetch_sub(1, Ordering::Relaxed);
        self.rt.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
