//! The live results every reader shares: partials from the tallies topic, merged per poll.
//!
//! [`follow_tallies`] reads every tallies partition from where the board's snapshot left it (the
//! start, without one: `saved.rs`) and applies each partial to the [`ResultsBoard`]; each poll has
//! a `watch` channel holding its latest [`Snapshot`], so a slow subscriber always gets the newest
//! state and never a queue.

use crate::merge::PollResults;
use parking_lot::RwLock;
use schemas::{
    Freshness, Offset, PartialTally, Partition, PollId, Rejections, Timestamp, WindowCount,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use storage::latency::{LatencyHistogram, SCREEN_BUCKETS_SECONDS};
use storage::{Log, LogError, Shutdown, TallyStore, TallyStoreError, Topic};
use tokio::sync::watch;

/// How fresh the partial a votes partition has published is, per poll (what a processor resumes
/// from without re-emitting).
pub type Published = HashMap<PollId, Freshness>;

/// A poll's merged results at one version.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub poll_id: PollId,
    pub version: i64,
    pub counts: Vec<i64>,
    pub voters: i64,
    pub rejected: Rejections,
    pub late_for_window: i64,
    /// Every partition has counted everything accepted up to here (None until all have reported).
    pub complete_until: Option<Timestamp>,
    /// Per votes partition, how many records the counts reflect: a vote whose receipt says
    /// (partition p, offset o) is included once `offsets[p] > o`.
    pub offsets: Vec<Offset>,
    pub updated_at: Timestamp,
}

impl Snapshot {
    /// Final: the poll has closed and every partition has counted everything accepted by then.
    pub fn is_final(&self, close_time: Option<Timestamp>) -> bool {
        matches!((close_time, self.complete_until), (Some(c), Some(done)) if done >= c)
    }

    pub fn total_votes(&self) -> i64 {
        self.counts.iter().sum()
    }
}

struct Entry {
    results: PollResults,
    tx: watch::Sender<Arc<Snapshot>>,
}

/// Merged results of every poll, shared by the query API and the realtime fan-out.
pub struct ResultsBoard {
    polls: RwLock<HashMap<PollId, Entry>>,
    /// Votes-topic partitions: a poll is complete when this many partitions have reported.
    partitions: u32,
    /// Tallies partitions whose last read by [`tail_tallies`] failed (readiness).
    tail_failing: std::sync::atomic::AtomicU32,
    /// Per tallies partition, the offset up to which every partial is applied.
    read_up_to: parking_lot::Mutex<Vec<Offset>>,
    /// Why the board lacks partials the tallies topic no longer holds, if it does (readiness).
    short: parking_lot::Mutex<Option<String>>,
    /// From a processor emitting a partial (its clock) to the board taking it from the tallies
    /// topic as it follows it (this node's clock): the tally's way through the log, per partial.
    pub tally_delay: LatencyHistogram,
}

impl ResultsBoard {
    pub fn new(partitions: u32) -> Self {
        Self {
            polls: RwLock::new(HashMap::new()),
            partitions,
            tail_failing: Default::default(),
            read_up_to: Default::default(),
            short: Default::default(),
            tally_delay: LatencyHistogram::new(&SCREEN_BUCKETS_SECONDS),
        }
    }

    /// Readiness of a node that follows the tallies topic: `Err` when reading it fails, or when
    /// partials it needed were retired before a snapshot of the board held them.
    pub fn following(&self) -> Result<String, String> {
        if let Some(why) = &*self.short.lock() {
            return Err(why.clone());
        }
        match self.tail_failing.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Ok("following the tallies topic".into()),
            n => Err(format!(
                "reading {n} partition(s) of the tallies topic fails (see the log)"
            )),
        }
    }

    /// Merges a partial; subscribers of its poll are woken if anything changed.
    pub fn apply(&self, tally: PartialTally) {
        let mut polls = self.polls.write();
        let poll_id = tally.poll_id;
        let entry = polls.entry(poll_id).or_insert_with(|| Entry {
            results: PollResults::default(),
            tx: watch::channel(Arc::new(Snapshot {
                poll_id,
                ..Default::default()
            }))
            .0,
        });
        if entry.results.apply(tally) {
            let snap = self.snapshot_of(poll_id, &entry.results);
            entry.tx.send_replace(Arc::new(snap));
        }
    }

    fn snapshot_of(&self, poll_id: PollId, r: &PollResults) -> Snapshot {
        Snapshot {
            poll_id,
            version: r.version(),
            counts: r.counts(0),
            voters: r.voters(),
            rejected: r.rejected(),
            late_for_window: r.late_for_window(),
            complete_until: r.complete_until(self.partitions),
            offsets: {
                let mut o = vec![Offset::ZERO; self.partitions as usize];
                for (p, off) in r.offsets() {
                    if let Some(slot) = o.get_mut(p.index()) {
                        *slot = off;
                    }
                }
                o
            },
            updated_at: Timestamp::now(),
        }
    }

    /// The latest snapshot of a poll (empty, version 0, if nothing was counted yet).
    pub fn snapshot(&self, poll_id: PollId) -> Arc<Snapshot> {
        self.polls
            .read()
            .get(&poll_id)
            .map(|e| e.tx.borrow().clone())
            .unwrap_or_else(|| {
                Arc::new(Snapshot {
                    poll_id,
                    ..Default::default()
                })
            })
    }

    /// A receiver that always holds the poll's latest snapshot.
    pub fn subscribe(&self, poll_id: PollId) -> watch::Receiver<Arc<Snapshot>> {
        if let Some(e) = self.polls.read().get(&poll_id) {
            return e.tx.subscribe();
        }
        let mut polls = self.polls.write();
        polls
            .entry(poll_id)
            .or_insert_with(|| Entry {
                results: PollResults::default(),
                tx: watch::channel(Arc::new(Snapshot {
                    poll_id,
                    ..Default::default()
                }))
                .0,
            })
            .tx
            .subscribe()
    }

    pub fn timeline(&self, poll_id: PollId) -> Vec<WindowCount> {
        self.polls
            .read()
            .get(&poll_id)
            .map(|e| e.results.timeline())
            .unwrap_or_default()
    }

    /// What has been published for one votes partition, per poll (to resume without re-emitting).
    pub fn published(&self, partition: Partition) -> Published {
        self.polls
            .read()
            .iter()
            .filter_map(|(&poll, e)| e.results.partial(partition).map(|t| (poll, t.freshness())))
            .collect()
    }

    /// Whether the board lacks partials the tallies topic no longer holds (see [`load_tallies`]).
    pub fn is_short(&self) -> bool {
        self.short.lock().is_some()
    }

    /// Per tallies partition, the offset before which every partial is applied.
    pub fn read_up_to(&self) -> Vec<Offset> {
        self.read_up_to.lock().clone()
    }

    fn set_read_up_to(&self, partition: Partition, next: Offset) {
        let mut read = self.read_up_to.lock();
        if read.len() <= partition.index() {
            read.resize(partition.index() + 1, Offset::ZERO);
        }
        read[partition.index()] = next;
    }

    /// Every poll's results as partials (`PollResults::to_partials`), one poll locked at a time:
    /// what a snapshot of the board stores.
    pub fn to_partials(&self) -> Vec<PartialTally> {
        let polls: Vec<PollId> = self.polls.read().keys().copied().collect();
        let mut out = Vec::new();
        for poll in polls {
            if let Some(e) = self.polls.read().get(&poll) {
                out.extend(e.results.to_partials());
            }
        }
        out
    }

    /// Every poll's merged partials (for `recount`).
    pub fn all_results(&self) -> HashMap<PollId, PollResults> {
        self.polls
            .read()
            .iter()
            .map(|(&id, e)| (id, e.results.clone()))
            .collect()
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// Applies to the board the latest partial of every (poll, partition) the tally store keeps; how
/// many it held. A node following a Kafka tallies topic needs it at start: the topic's retention
/// deletes the partials of polls that have been quiet longer than it, and no processor publishes
/// them again (they are not newer than what the store holds), so the topic alone would show such
/// a poll short of the partitions whose partials were deleted.
pub async fn load_stored(
    board: &ResultsBoard,
    store: &dyn TallyStore,
) -> Result<usize, TallyStoreError> {
    let stored = store.load_all().await?;
    let n = stored.len();
    for t in stored {
        board.apply(t);
    }
    Ok(n)
}

/// Where a node starts reading the tallies topic.
#[derive(Debug, Clone)]
pub enum ReadFrom {
    /// Whatever the topic still holds: on Kafka, whose retention deletes what the tally store
    /// keeps ([`load_stored`]).
    Oldest,
    /// These positions per tallies partition (a snapshot's of the board; the start without one):
    /// partials retention deleted after them are missing from the board, which says so
    /// ([`ResultsBoard::following`]) and reads on from the log's start.
    Positions(Vec<Offset>),
}

/// Reads every tallies partition from `from` up to its current end into the board; returns the
/// positions reached. Used at start-up, before the processors resume.
pub async fn load_tallies(
    log: &dyn Log,
    board: &ResultsBoard,
    from: &ReadFrom,
) -> Result<Vec<Offset>, LogError> {
    let mut positions = Vec::new();
    for p in Partition::all(log.partitions(Topic::Tallies)) {
        let end = log.high_watermark(Topic::Tallies, p).await?;
        let mut next = Offset::ZERO;
        if let ReadFrom::Positions(from) = from {
            next = from.get(p.index()).copied().unwrap_or(Offset::ZERO);
            let start = log.log_start(Topic::Tallies, p).await?;
            if start > next {
                let why = format!(
                    "the results are short: tallies partition {p} was retired up to offset \
                     {start}, past what a snapshot of the results holds ({next}): the results \
                     snapshot ({}) is missing or damaged",
                    crate::saved::WHERE
                );
                tracing::error!("{why}");
                *board.short.lock() = Some(why);
                next = start;
            }
        }
        while next < end {
            let f = log
                .fetch(Topic::Tallies, p, next, 4 << 20, Duration::ZERO)
                .await?;
            apply_fetched(board, &f, None);
            next = f.next_offset();
        }
        board.set_read_up_to(p, next);
        positions.push(next);
    }
    Ok(positions)
}

/// Fills `board` with what the tallies topic holds from `from` (see [`load_tallies`]), then
/// follows it until `shutdown`: the read model of a node that shows results starting itself.
/// Returns once the board is filled.
pub async fn follow_tallies(
    log: Arc<dyn Log>,
    board: Arc<ResultsBoard>,
    from: &ReadFrom,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, LogError> {
    let positions = load_tallies(&*log, &board, from).await?;
    Ok(tokio::spawn(tail_tallies(log, board, positions, shutdown)))
}

/// Follows the tallies topic from `positions` until shutdown.
pub async fn tail_tallies(
    log: Arc<dyn Log>,
    board: Arc<ResultsBoard>,
    positions: Vec<Offset>,
    shutdown: Shutdown,
) {
    let since = Timestamp::now();
    let tasks: Vec<_> = positions
        .into_iter()
        .enumerate()
        .map(|(p, mut next)| {
            let p = Partition::at(p);
            let (log, board, mut shutdown) = (log.clone(), board.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut failing = false;
                let failing_count = &board.tail_failing;
                loop {
                    let f = tokio::select! {
                        r = log.fetch(Topic::Tallies, p, next, 4 << 20, Duration::from_secs(1)) => r,
                        _ = shutdown.signalled() => return,
                    };
                    match f {
                        Ok(f) => {
                            apply_fetched(&board, &f, Some(since));
                            next = f.next_offset();
                            board.set_read_up_to(p, next);
                            if std::mem::take(&mut failing) {
                                failing_count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut failing, true) {
                                failing_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            tracing::warn!(partition = p.0, error = %e, "reading the tallies topic failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Applies what a fetch of the tallies topic holds; following it `since` a moment (not filling
/// the board at start), also times the way from its processor of each partial emitted since
/// then ([`ResultsBoard::tally_delay`]): one emitted before, read late, is the start's catch-up.
fn apply_fetched(board: &ResultsBoard, f: &storage::Fetched, since: Option<Timestamp>) {
    let now = since.map(|since| (since, Timestamp::now()));
    for (offset, _, _, value) in f.iter() {
        match PartialTally::from_avro(value) {
            Ok(t) => {
                if let Some((since, now)) = now {
                    if t.emitted_at >= since {
                        board.tally_delay.observe(now.since(t.emitted_at), 1);
                    }
                }
                board.apply(t)
            }
            Err(e) => {
                tracing::warn!(partition = f.partition.0, offset = offset.0, error = %e, "undecodable partial tally; skipped")
            }
        }
    }
}
