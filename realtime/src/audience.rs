//! A poll's viewers seated in shards of at most [`SHARD`], and the shards' sweeps: each shard's
//! turn ([`Audience::pace`], as [`crate::pacing`] allows) queues one sweep of it on the fan-out
//! runtime, which writes every viewer seated there the newest frame ([`Viewer::offer`]). A
//! shard remembers the frame of its last sweep, which a viewer parked during it catches up with
//! ([`Seat::swept_frame`]). Seating is generic so its tests need no sockets.

use crate::broadcast::Viewer;
use crate::feed::Feed;
use crate::frame::Frame;
use crate::pacing::Pacer;
use crate::Realtime;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Viewers per shard: a sweep writes to about this many sockets in turn. Two sweeps of one shard
/// may overlap (its next turn during a long sweep); a viewer's own lock and its sequence numbers
/// keep its messages whole, in order and never older than the last.
pub const SHARD: usize = 512;

/// The live viewers of one poll (`T`: a [`Viewer`]; anything, in the tests of seating).
pub(crate) struct Audience<T = Viewer> {
    shards: Mutex<Vec<Arc<Shard<T>>>>,
}

struct Shard<T> {
    slots: Mutex<Slots<T>>,
    /// Viewers seated in `slots` or about to be (raised under the audience's lock; read without
    /// `slots`' lock, to find a shard with room or one to retire).
    len: AtomicUsize,
    /// A sweep is queued and has not yet read the newest frame.
    scheduled: AtomicBool,
    /// The feed's render this shard was last swept with, or is queued to be ([`Audience::pace`]).
    swept: AtomicU64,
    /// When its last turn began.
    turn: Mutex<Option<Instant>>,
    /// The frame of its last sweep: what a viewer parked while it ran catches up with.
    frame: Mutex<Option<Arc<Frame>>>,
}

struct Slots<T> {
    viewers: Vec<Option<Arc<T>>>,
    free: Vec<usize>,
}

/// A viewer's place in its shard; leaving when dropped.
pub(crate) struct Seat<T = Viewer> {
    shard: Arc<Shard<T>>,
    slot: usize,
}

impl<T> Drop for Seat<T> {
    fn drop(&mut self) {
        let mut slots = self.shard.slots.lock();
        slots.viewers[self.slot] = None;
        slots.free.push(self.slot);
        self.shard.len.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Default for Audience<T> {
    fn default() -> Self {
        Self {
            shards: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Audience<T> {
    /// Seats `viewer` in a shard with room (or a new one). Its place is counted while the
    /// audience's lock is held, so a sweep cannot retire the shard between the choice and the
    /// seating.
    pub(crate) fn join(&self, viewer: Arc<T>) -> Seat<T> {
        let shard = {
            let mut shards = self.shards.lock();
            let shard = match shards
                .iter()
                .find(|s| s.len.load(Ordering::Relaxed) < SHARD)
            {
                Some(shard) => shard.clone(),
                None => {
                    let shard = Arc::new(Shard {
                        slots: Mutex::new(Slots {
                            viewers: Vec::new(),
                            free: Vec::new(),
                        }),
                        len: AtomicUsize::new(0),
                        scheduled: AtomicBool::new(false),
                        swept: AtomicU64::new(0),
                        turn: Mutex::new(None),
                        frame: Mutex::new(None),
                    });
                    shards.push(shard.clone());
                    shard
                }
            };
            shard.len.fetch_add(1, Ordering::Relaxed);
            shard
        };
        let mut slots = shard.slots.lock();
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.viewers[slot] = Some(viewer);
                slot
            }
            None => {
                slots.viewers.push(Some(viewer));
                slots.viewers.len() - 1
            }
        };
        drop(slots);
        Seat { shard, slot }
    }

    /// The shards to sweep: those with viewers (the ones left empty are retired now).
    fn occupied(&self) -> Vec<Arc<Shard<T>>> {
        let mut shards = self.shards.lock();
        shards.retain(|s| s.len.load(Ordering::Relaxed) > 0);
        shards.clone()
    }

    /// How many shards the viewers sit in.
    pub(crate) fn shards(&self) -> usize {
        let shards = self.shards.lock();
        shards
            .iter()
            .filter(|s| s.len.load(Ordering::Relaxed) > 0)
            .count()
    }
}

impl<T> Seat<T> {
    /// The frame its shard was last swept with (`None` before its first sweep).
    pub(crate) fn swept_frame(&self) -> Option<Arc<Frame>> {
        self.shard.frame.lock().clone()
    }
}

impl Audience<Viewer> {
    /// Sweeps, as `pacer` allows ([`crate::pacing`]: the shards in turn, about all of them an
    /// `interval`, none twice within one), the shards not yet swept with the feed's newest
    /// render. How long until the next pass, when some are left behind.
    pub(crate) fn pace(
        &self,
        rt: &Arc<Realtime>,
        feed: &Arc<Feed>,
        pacer: &mut Pacer,
        interval: Duration,
    ) -> Option<Duration> {
        let shards = self.occupied();
        let (newest, now) = (feed.renders.load(Ordering::Acquire), Instant::now());
        pacer.pass(
            now,
            interval,
            shards.len(),
            |i| (shards[i].swept.load(Ordering::Relaxed) < newest).then(|| *shards[i].turn.lock()),
            |i| {
                shards[i].swept.fetch_max(newest, Ordering::Relaxed);
                *shards[i].turn.lock() = Some(now);
                Self::schedule(rt, feed, &shards[i]);
            },
        )
    }

    /// Queues a sweep of `shard` with the feed's newest frame when it runs, unless one is queued
    /// already (that one reads the newest frame).
    fn schedule(rt: &Arc<Realtime>, feed: &Arc<Feed>, shard: &Arc<Shard<Viewer>>) {
        if shard.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (rt2, feed, shard) = (rt.clone(), feed.clone(), shard.clone());
        rt.fanout.spawn(async move {
            shard.scheduled.store(false, Ordering::Release);
            // Read under the shard's frame lock, so an overlapping sweep's older frame is never
            // kept after a newer one; the render read first is at most the frame's.
            let (frame, counted_before) = {
                let mut kept = shard.frame.lock();
                let render = feed.renders.load(Ordering::Acquire);
                let frame = feed.latest();
                let before = kept.as_ref().map_or(0, |f| f.snapshot.version);
                *kept = Some(frame.clone());
                shard.swept.fetch_max(render, Ordering::Relaxed);
                (frame, before)
            };
            // The shard's lock is held to list its viewers, not for their writes: a viewer
            // joining or leaving never waits for a sweep.
            let began = Instant::now();
            let viewers = shard.seated();
            let (mut sent, mut given_results) = (0, 0);
            for viewer in &viewers {
                let given = viewer.offer(&frame);
                sent += given.messages;
                given_results += u64::from(given.results);
            }
            rt2.messages_sent.fetch_add(sent, Ordering::Relaxed);
            rt2.sweep_duration.observe(began.elapsed(), 1);
            // Timed only when the shard is given a newer tally: results that move for the
            // poll's state alone (closed, revealed) are as old as the poll's last tally.
            if given_results > 0 && frame.snapshot.version > counted_before {
                rt2.results_age
                    .observe(frame.snapshot.updated_at.age(), given_results);
            }
        });
    }
}

impl<T> Shard<T> {
    /// The viewers seated now.
    fn seated(&self) -> Vec<Arc<T>> {
        let slots = self.slots.lock();
        let mut viewers = Vec::with_capacity(self.len.load(Ordering::Relaxed));
        viewers.extend(slots.viewers.iter().flatten().cloned());
        viewers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_fill_shards_in_turn_and_a_shard_left_empty_is_retired() {
        let audience = Audience::<usize>::default();
        let mut seats: Vec<_> = (0..SHARD + 1).map(|i| audience.join(Arc::new(i))).collect();
        let occupied = audience.occupied();
        assert_eq!(occupied.len(), 2);
        assert_eq!(occupied[0].seated().len(), SHARD);
        assert_eq!(*occupied[1].seated()[0], SHARD);
        // A place freed in the first shard is taken before the second grows.
        seats.swap_remove(3);
        let again = audience.join(Arc::new(SHARD + 1));
        assert_eq!(occupied[0].seated().len(), SHARD);
        assert_eq!(occupied[1].seated().len(), 1);
        // The seat moved into place 3 is the second shard's only one.
        drop(seats.swap_remove(3));
        assert_eq!(audience.occupied().len(), 1, "the second shard is empty");
        drop((seats, again));
        assert!(audience.occupied().is_empty());
        let _late = audience.join(Arc::new(0));
        assert_eq!(audience.occupied().len(), 1, "a new shard");
    }
}
