//! The partition tasks: each owns one votes partition. It restores the partition's counting state
//! from the last checkpoint in its checkpoint store (the tally store, or snapshot files beside the
//! embedded log) and reads on from the checkpoint's offset, or, with no checkpoint, replays the
//! partition from the start (deterministic, so the rebuilt state equals the lost one; refused when
//! retention deleted the start). Then it keeps consuming and emits the absolute partials of changed polls to the
//! tallies topic every flush interval, and checkpoints its state every checkpoint interval.
//!
//! Positions are held here, not in the log: the consumer decides where it reads from. A partial is
//! only written when it is newer than the one already published for its (poll, partition), so a
//! replay after a crash re-emits nothing stale.

use crate::lost_votes::{self, AcceptedLosses};
use crate::metrics::ProcessorMetrics;
use crate::pipeline::{Outcome, PartitionCounter, WindowConfig};
use schemas::poll::PollState;
use schemas::vote::decode_vote;
use schemas::{Offset, PartialTally, Partition, PollId, Timestamp};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{
    AppendBatch, CheckpointStore, Log, LogError, PollCatalog, RedisCache, Shutdown, StoreError,
    TallyStore, TallyStoreError, Topic,
};

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// How often changed polls' partials are emitted.
    pub flush_interval: Duration,
    pub windows: WindowConfig,
    pub max_fetch_bytes: usize,
    /// The edge's deadline for making a vote durable. A record that was not written within it never
    /// will be, so once caught up at time t, everything accepted before t − deadline is counted.
    pub ingest_deadline: Duration,
    /// How often a partition's state is checkpointed to the tally store (when there is one); a new
    /// owner restores the checkpoint and reads on from its offset. `None`: never (always replay).
    pub checkpoint_interval: Option<Duration>,
    /// Partitions that may count on without votes deleted before they were counted
    /// (`processor.accept_lost_votes`).
    pub accepted_losses: AcceptedLosses,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(25),
            windows: WindowConfig::default(),
            max_fetch_bytes: 1 << 20,
            ingest_deadline: Duration::from_secs(2),
            checkpoint_interval: Some(Duration::from_secs(5)),
            accepted_losses: AcceptedLosses::default(),
        }
    }
}

mod checkpoint_turn;
mod flush_grid;
mod group;
pub use checkpoint_turn::CheckpointTurn;
use flush_grid::{following_flush, next_flush_time, next_read};
pub use group::run_group;
pub use results::Published;

/// What the partition tasks read from and write to.
#[derive(Clone)]
pub struct Pipeline {
    pub log: Arc<dyn Log>,
    pub catalog: PollCatalog,
    /// Where partials are kept besides the tallies topic (PostgreSQL in the distributed mode).
    pub tally_store: Option<Arc<dyn TallyStore>>,
    /// Where each partition's snapshot is kept: the tally store, or files beside the embedded log.
    /// After each snapshot the log is told the records before it are no longer needed.
    pub checkpoints: Option<Arc<dyn CheckpointStore>>,
    /// Distributed mode: the results cache the query nodes read (a cache: failures are retried
    /// at the next flush and never stop counting).
    pub cache: Option<RedisCache>,
    pub config: ProcessorConfig,
    pub metrics: Arc<ProcessorMetrics>,
    /// Whose turn it is to take a snapshot (one partition at a time).
    pub checkpoint_turn: CheckpointTurn,
}

/// Why a partition task stopped (its supervisor restarts it): which part failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// Re-reading the poll catalog (to judge votes for polls changed on another node).
    #[error("re-reading the poll catalog: {0}")]
    Catalog(#[source] StoreError),
    /// The log before `start` was deleted by retention, and no usable snapshot covers it (nothing
    /// is cleared or replayed: the operator must restore the snapshot).
    #[error(
        "votes partition {partition} cannot be rebuilt: the log before offset {start} was retired \
         (log.retire_after_snapshot in the embedded mode; on Kafka the votes topic's retention.ms \
         or retention.bytes) and {why}. Restore the partition's snapshot (data_dir/log/snapshots, \
         or the tally store) from a backup, or undo the change that made it unusable. Votes \
         deleted before any snapshot held them cannot be counted any more: the partition stays \
         stopped rather than publish counts without them. {hint}",
        hint = lost_votes::how_to_accept(*.partition, *.start)
    )]
    CannotRebuild {
        partition: Partition,
        start: schemas::Offset,
        why: String,
    },
    /// Records deleted while the partition was behind them (a fetch from `counted_to` began at
    /// `start`).
    #[error(
        "votes partition {partition} lost votes: the records from offset {counted_to} to {start} \
         were deleted before they were counted (on Kafka the votes topic's retention.ms or \
         retention.bytes; log.retire_after_snapshot in the embedded mode). The partition stays \
         stopped rather than publish counts without them. {hint}",
        hint = lost_votes::how_to_accept(*.partition, *.start)
    )]
    VotesDeleted {
        partition: Partition,
        counted_to: schemas::Offset,
        start: schemas::Offset,
    },
    /// Reading or deleting the partition's checkpoint, or writing its partials (`doing` says
    /// which).
    #[error("{doing}: {source}")]
    TallyStore {
        doing: &'static str,
        #[source]
        source: TallyStoreError,
    },
}

/// Why a partition's state cannot be rebuilt when its log no longer starts at 0.
fn cannot_replay(
    partition: Partition,
    start: schemas::Offset,
    why: String,
) -> Result<PartitionCounter, PartitionError> {
    Err(PartitionError::CannotRebuild {
        partition,
        start,
        why,
    })
}

fn tally_store_failed(doing: &'static str) -> impl FnOnce(TallyStoreError) -> PartitionError {
    move |source| PartitionError::TallyStore { doing, source }
}

/// Runs one partition until shutdown, restarting it (from its checkpoint, or by replaying it from
/// the start) after an error.
pub async fn run_partition_supervised(
    pipeline: Pipeline,
    partition: Partition,
    published: Published,
    shutdown: Shutdown,
) {
    let mut published = published;
    loop {
        match run_partition(&pipeline, partition, &mut published, shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => {
                // Not ready again until the restarted task has caught up.
                pipeline.metrics.catching_up.lock().insert(partition);
                pipeline
                    .metrics
                    .failures
                    .lock()
                    .insert(partition, e.to_string());
                pipeline.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition = partition.0, error = %e, "partition task failed; restarting it in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if shutdown.is_signalled() {
                    return;
                }
            }
        }
    }
}

/// One pass of a partition task: restore or replay, then follow the log until shutdown or an
/// error.
pub async fn run_partition(
    pipeline: &Pipeline,
    partition: Partition,
    published: &mut Published,
    mut shutdown: Shutdown,
) -> Result<(), PartitionError> {
    let Pipeline {
        log,
        catalog,
        config,
        metrics,
        ..
    } = pipeline;
    // The checkpoint first, then the end: a checkpoint written in between is then never taken
    // for one beyond the end.
    metrics.catching_up.lock().insert(partition);
    let counter = restore_checkpoint(pipeline, partition).await?;
    let replay_to = log.high_watermark(Topic::Votes, partition).await?;
    let mut task = PartitionTask {
        pipeline,
        checkpointed: counter.next_offset(),
        counter,
        published,
        cache_pending: Vec::new(),
        last_checkpoint: Instant::now(),
        last_record: Instant::now(),
    };
    let started = Instant::now();
    let replay_from = task.counter.next_offset();
    let mut replaying = replay_from < replay_to;
    // `caught_up`: a fetch reached the end of the log; `ready`: and a flush published since.
    let (mut caught_up, mut ready) = (false, false);
    let mut next_flush = next_flush_time(config.flush_interval);
    // Nothing read, nothing published and no voter moved between voter-set tables (see
    // `SETTLED_PER_FLUSH`) at the last flush: then the task wakes only every
    // `QUIET_FLUSHES` intervals (to close windows, and for the quiet partition's snapshot), and a
    // record wakes it at once, to be published then.
    let mut quiet = false;
    let mut failed_before = metrics.failures.lock().contains_key(&partition);
    // Caught up and not quiet: the next fetch waits (`next_read`), so what the log's group commits
    // add between two flushes is read in about two fetches, not one each.
    let mut linger = false;
    // Signalled to stop, its replay done: the task reads on, without waiting, what was written
    // before the signal (a node stops its ingest before its processor), so its last flush
    // publishes the votes acknowledged before the stop, not only those it had read; for at most
    // `LAST_READS`, and a failure ends these reads (`last_reads_cut`).
    let mut stopping: Option<LastReads> = None;
    loop {
        if std::mem::take(&mut linger) && stopping.is_none() {
            let until = next_read(next_flush, config.flush_interval, Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = shutdown.signalled() => {}
            }
        }
        if stopping.is_none() && shutdown.is_signalled() {
            if replaying {
                break;
            }
            let until = Instant::now() + LAST_READS;
            let end = log.high_watermark(Topic::Votes, partition);
            match tokio::time::timeout_at(until.into(), end).await {
                Ok(Ok(end)) => stopping = Some(LastReads { until, end }),
                Ok(Err(e)) => break last_reads_cut(partition, &e),
                Err(_) => break last_reads_cut(partition, &"the log's end not known in time"),
            }
        }
        if let Some(last) = &stopping {
            if task.counter.next_offset() >= last.end {
                break;
            }
            if Instant::now() >= last.until {
                break last_reads_cut(partition, &"out of time");
            }
        }
        let (fetch_wall, fetch_began) = (Timestamp::now(), Instant::now());
        let wake = match quiet {
            true => next_flush.max(next_flush_time(config.flush_interval * QUIET_FLUSHES)),
            false => next_flush,
        };
        let wait = wake.saturating_duration_since(Instant::now());
        let asked = task.counter.next_offset();
        let max_bytes = config.max_fetch_bytes;
        let fetched = match stopping {
            None => tokio::select! {
                r = log.fetch(Topic::Votes, partition, asked, max_bytes, wait) => r,
                _ = shutdown.signalled() => continue,
            },
            Some(LastReads { until, .. }) => {
                let read = log.fetch(Topic::Votes, partition, asked, max_bytes, Duration::ZERO);
                match tokio::time::timeout_at(until.into(), read).await {
                    Ok(Ok(fetched)) => Ok(fetched),
                    Ok(Err(e)) => break last_reads_cut(partition, &e),
                    Err(_) => break last_reads_cut(partition, &"out of time"),
                }
            }
        };
        // Records deleted before they were counted (a Kafka topic's retention outran this
        // partition: its fetch starts later; the embedded log refuses the fetch): stop rather
        // than count on without them, unless the operator accepted the loss. The restarted task
        // refuses too, unless a snapshot covers what was deleted.
        let retired = match &fetched {
            Ok(f) => f.retired_before(asked),
            Err(LogError::Retired { first, .. }) => Some(*first),
            Err(_) => None,
        };
        // (A refusal that names no later start is an error like any other.)
        if let Some(start) = retired.filter(|&start| start > asked) {
            if stopping.is_some() {
                break last_reads_cut(partition, &"records deleted before they were counted");
            }
            if !config.accepted_losses.accepts(partition, start) {
                return Err(PartitionError::VotesDeleted {
                    partition,
                    counted_to: asked,
                    start,
                });
            }
            lost_votes::take(metrics, partition, asked, start);
            if fetched.is_err() {
                task.counter.skip_lost(start);
                continue;
            }
        }
        let fetched = fetched?;
        if std::mem::take(&mut failed_before) {
            // Restored and reading again: what stopped the last attempt is past.
            metrics.failures.lock().remove(&partition);
        }
        let mut polls = catalog.snapshot();
        let mut votes = Vec::with_capacity(fetched.len());
        let mut stale_catalog = false;
        let mut bad = 0u64;
        for (offset, _ts, _key, value) in fetched.iter() {
            match decode_vote(value) {
                Ok(vote) => {
                    stale_catalog |= catalog.is_shared() && !judged_by(&polls, &vote);
                    votes.push((offset, Some(vote)));
                }
                Err(e) => {
                    bad += 1;
                    tracing::warn!(partition = partition.0, offset = offset.0, error = %e, "undecodable record in the votes topic; skipped");
                    votes.push((offset, None));
                }
            }
        }
        if stale_catalog {
            // A poll created, opened or closed on another node since our last re-read: judge
            // these votes by the definitions the edge had when it accepted them.
            metrics.catalog_rereads.fetch_add(1, Ordering::Relaxed);
            let refreshed = match &stopping {
                None => Ok(catalog.refresh().await),
                Some(last) => tokio::time::timeout_at(last.until.into(), catalog.refresh()).await,
            };
            match refreshed {
                Ok(Ok(())) => polls = catalog.snapshot(),
                // Stopping: these votes are not counted yet.
                Ok(Err(e)) if stopping.is_some() => break last_reads_cut(partition, &e),
                Ok(Err(e)) => return Err(PartitionError::Catalog(e)),
                Err(_) => break last_reads_cut(partition, &"out of time"),
            }
        }
        let (mut counted, mut late_window, mut dup, mut rejected) = (0u64, 0u64, 0u64, 0u64);
        for (offset, vote) in votes {
            let Some(vote) = vote else {
                task.counter.skip(offset);
                continue;
            };
            let rules = polls.get(&vote.poll_id).map(|p| p.rules());
            match task.counter.apply(offset, &vote, rules.as_ref()) {
                Outcome::Counted => counted += 1,
                Outcome::CountedLate => {
                    counted += 1;
                    late_window += 1
                }
                Outcome::Duplicate => dup += 1,
                Outcome::Late | Outcome::Closed | Outcome::Invalid => rejected += 1,
            }
        }
        if !fetched.is_empty() {
            task.last_record = Instant::now();
        }
        metrics
            .records_read
            .fetch_add(fetched.len() as u64, Ordering::Relaxed);
        metrics.votes_counted.fetch_add(counted, Ordering::Relaxed);
        metrics
            .votes_counted_late_for_window
            .fetch_add(late_window, Ordering::Relaxed);
        metrics.votes_duplicate.fetch_add(dup, Ordering::Relaxed);
        metrics
            .votes_rejected
            .fetch_add(rejected, Ordering::Relaxed);
        metrics
            .records_undecodable
            .fetch_add(bad, Ordering::Relaxed);
        metrics
            .positions
            .lock()
            .insert(partition, task.counter.next_offset());

        let reached_end = task.counter.next_offset() >= fetched.high_watermark;
        if reached_end {
            // Caught up with everything written before this fetch began.
            caught_up = true;
            let margin = (config.ingest_deadline + Duration::from_secs(1)).as_micros() as i64;
            let closing = polls
                .values()
                .filter_map(|p| p.close_time().map(|c| (p.id, c)));
            task.counter
                .mark_complete(fetch_wall.add_micros(-margin), closing);
            if replaying {
                replaying = false;
                tracing::info!(
                    partition = partition.0,
                    from = replay_from.0,
                    to = replay_to.0,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "partition state rebuilt from the log"
                );
            }
        }
        if stopping.is_some() {
            match fetched.is_empty() {
                true => {
                    break last_reads_cut(partition, &"the log gave nothing more before its end")
                }
                false => continue,
            }
        }
        // A record ends a quiet spell (the task reads on at the pace of a busy one); a flush
        // follows a read begun when it was due, or one that waited for it in vain, so it holds
        // everything written before it was due.
        quiet &= fetched.is_empty();
        let read_for_flush = fetch_began >= next_flush || fetched.is_empty();
        if !replaying && Instant::now() >= next_flush && read_for_flush {
            let published = task.flush().await?;
            let settling = task.counter.settle_voter_sets(SETTLED_PER_FLUSH) > 0;
            quiet = fetched.is_empty() && !published && !settling;
            next_flush = following_flush(next_flush, config.flush_interval);
            // Ready once caught up and what it counted is published.
            if caught_up && !ready {
                ready = true;
                metrics.catching_up.lock().remove(&partition);
            }
        }
        linger = reached_end && !replaying && !quiet;
    }
    task.flush().await?;
    task.checkpoint(true).await;
    Ok(())
}

/// A partition task signalled to stop reads on, before its last flush, to the end its partition
/// had at the signal, for at most [`LAST_READS`] (see [`run_partition`]).
struct LastReads {
    until: Instant,
    end: Offset,
}

/// How long a partition task signalled to stop reads on (see [`LastReads`]).
const LAST_READS: Duration = Duration::from_millis(500);

/// Says why a stopping partition task ends its last reads before the end it had at the signal:
/// the restart, or the partition's next owner, counts the rest from the last checkpoint.
fn last_reads_cut(partition: Partition, why: &dyn std::fmt::Display) {
    tracing::warn!(partition = partition.0, %why, "stopping before every vote acknowledged before the stop was read; the restart or the partition's next owner counts the rest");
}

/// A quiet partition task wakes every this many flush intervals (see [`run_partition`]).
const QUIET_FLUSHES: u32 = 10;

/// At each flush a partition task's voter sets have moved at least this many voters, in all,
/// from their full tables into the tables that replaced them, while that many remain to move
/// (`PartitionCounter::settle_voter_sets` tops up what the inserts moved; about a quarter of a
/// millisecond when it all falls to it, by the bench's cost of a growth). A poll whose votes stop
/// in the middle of a move inserts no more: at this pace, the task keeping its flush interval
/// while it moves voters (not quiet), a move of n voters ends within n / 2,048 flushes (917,504
/// in about 11 s at the default 25 ms) unless other sets' inserts take the whole budget, and the
/// node holds one table per set at rest. Small, because the partitions' sets grow together:
/// eight topping up 8,192 a flush each (until BENCHMARKS.md's "2026-12-06 (sixth session)") is
/// 2,600,000 moves a second, about a third of a core, under a load too light to move as many.
const SETTLED_PER_FLUSH: usize = 2_048;

/// The counter of one partition, restored from its checkpoint store's checkpoint when there is a
/// usable one, else new (to replay the partition from the start). An unusable checkpoint is
/// deleted, so that the checkpoints of the replay replace it, unless retention deleted the log's
/// start: then nothing is deleted and the task refuses (`CannotRebuild`). An accepted loss
/// (`processor.accept_lost_votes`) lets it go on without a snapshot, or from a usable one older
/// than the log's start (the partition task takes the loss), never past an unusable one. An
/// error reading the store is returned (the supervisor retries): a passing failure must not cost
/// a full replay.
async fn restore_checkpoint(
    pipeline: &Pipeline,
    partition: Partition,
) -> Result<PartitionCounter, PartitionError> {
    let windows = pipeline.config.windows;
    let fresh = PartitionCounter::new(partition, windows);
    // Above 0 once retention deleted records: then only a snapshot at or after it can rebuild,
    // unless the operator accepted the loss (the partition task then counts it and reads on).
    let start = pipeline.log.log_start(Topic::Votes, partition).await?;
    let unaccepted_loss =
        start > schemas::Offset::ZERO && !pipeline.config.accepted_losses.accepts(partition, start);
    // This task may need everything the log holds until its own snapshots are stored.
    release(pipeline, partition, start).await;
    let (Some(store), Some(_)) = (&pipeline.checkpoints, pipeline.config.checkpoint_interval)
    else {
        if unaccepted_loss {
            let why = match pipeline.checkpoints {
                None => "no snapshot store is configured (on Kafka, snapshots are kept in the tally store: --postgres)",
                Some(_) => "snapshots are off (processor.checkpoint_interval_ms = 0)",
            };
            return cannot_replay(partition, start, why.into());
        }
        return Ok(fresh);
    };
    let started = Instant::now();
    let Some((offset, bytes)) = store
        .load_checkpoint(partition)
        .await
        .map_err(tally_store_failed("reading the partition's checkpoint"))?
    else {
        if unaccepted_loss {
            let why = "no snapshot of it is stored (or the stored one is damaged)";
            return cannot_replay(partition, start, why.into());
        }
        return Ok(fresh);
    };
    let end = pipeline.log.high_watermark(Topic::Votes, partition).await?;
    let unusable = if offset < start && unaccepted_loss {
        format!("the snapshot at offset {offset} is older than the log's start")
    } else if offset > end {
        format!(
            "the checkpoint at offset {offset} is beyond the end of the votes partition ({end}): \
             was the topic recreated?"
        )
    } else {
        match PartitionCounter::restore(partition, windows, &bytes) {
            Ok(counter) if counter.next_offset() == offset => {
                pipeline
                    .metrics
                    .checkpoints_restored
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    partition = partition.0,
                    offset = offset.0,
                    bytes = bytes.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "partition state restored from its checkpoint"
                );
                return Ok(counter);
            }
            Ok(counter) => format!(
                "the checkpoint is stored at offset {offset} but holds the state at {}",
                counter.next_offset()
            ),
            Err(e) => e.to_string(),
        }
    };
    if start > schemas::Offset::ZERO {
        // The snapshot is the only record of what was retired: kept for the operator, whatever
        // loss was accepted (it may hold votes counted before the one accepted).
        return cannot_replay(
            partition,
            start,
            format!("its snapshot is unusable: {unusable}"),
        );
    }
    tracing::error!(
        partition = partition.0,
        why = unusable,
        "deleting the partition's checkpoint and replaying the partition from the start"
    );
    store
        .clear_checkpoint(partition)
        .await
        .map_err(tally_store_failed("deleting the partition's checkpoint"))?;
    Ok(fresh)
}

/// Whether the catalog judges this vote as the edge did: it knows the poll and has it open when
/// the vote was accepted (edges refuse other votes themselves, so a miss means this catalog is
/// behind another node's).
fn judged_by(polls: &storage::Polls, vote: &schemas::VoteRef<'_>) -> bool {
    polls
        .get(&vote.poll_id)
        .is_some_and(|p| p.state_at(vote.accepted_at) == PollState::Open)
}

/// One partition task's state between flushes.
struct PartitionTask<'a> {
    pipeline: &'a Pipeline,
    counter: PartitionCounter,
    /// What was already published per poll (never re-emitted).
    published: &'a mut Published,
    /// Partials the results cache has not taken yet (retried at the next flush).
    cache_pending: Vec<PartialTally>,
    last_checkpoint: Instant,
    /// When the last fetch brought records (a quiet partition checkpoints what it has).
    last_record: Instant,
    /// The offset of the last checkpoint written (or restored).
    checkpointed: Offset,
}

impl PartitionTask<'_> {
    /// Publishes the changed polls' partials: to the tallies topic, then to the tally store if there
    /// is one (both writes are idempotent: an older offset never replaces a newer one), then to the
    /// results cache; then checkpoints the partition if it is time. Returns whether there were
    /// any partials.
    async fn flush(&mut self) -> Result<bool, PartitionError> {
        let Pipeline {
            log,
            tally_store,
            cache,
            metrics,
            ..
        } = self.pipeline;
        let published = &mut *self.published;
        let partials: Vec<PartialTally> = self
            .counter
            .take_partials(Timestamp::now())
            .into_iter()
            .filter(|t| match published.get(&t.poll_id) {
                Some(&published) => t.freshness().supersedes(published),
                None => true,
            })
            .collect();
        let published_any = !partials.is_empty();
        if published_any {
            let tally_partitions = log.partitions(Topic::Tallies);
            let mut batch = AppendBatch::with_capacity(partials.len(), partials.len() * 128);
            for t in &partials {
                let p = Partition::at(t.poll_id.rem_euclid(tally_partitions as i64) as usize);
                batch.push(p, t.emitted_at, &t.key(), &t.to_avro());
            }
            log.append(
                Topic::Tallies,
                batch,
                Instant::now() + Duration::from_secs(10),
            )
            .await?;
            if let Some(store) = tally_store {
                store
                    .put(&partials)
                    .await
                    .map_err(tally_store_failed("writing partials"))?;
            }
            if let Some(cache) = cache {
                self.cache_pending.extend(partials.iter().cloned());
                write_cache(cache, &mut self.cache_pending, metrics).await;
            }
            metrics
                .partials_emitted
                .fetch_add(partials.len() as u64, Ordering::Relaxed);
            for t in partials {
                published.insert(t.poll_id, t.freshness());
            }
        } else if let (Some(cache), false) = (cache, self.cache_pending.is_empty()) {
            write_cache(cache, &mut self.cache_pending, metrics).await;
        }
        self.checkpoint(false).await;
        Ok(published_any)
    }

    /// Writes the partition's checkpoint when one is due (below) or `now`, if it has moved on. A
    /// failure only costs a longer replay for the next owner: logged, counted, retried later.
    async fn checkpoint(&mut self, now: bool) {
        let (Some(store), Some(interval)) = (
            &self.pipeline.checkpoints,
            self.pipeline.config.checkpoint_interval,
        ) else {
            return;
        };
        let offset = self.counter.next_offset();
        // A checkpoint is rewritten whole (every voter), a replay costs the records since the last
        // one: one is due once the interval has passed and either those records number the
        // voters at least or the partition has been quiet for an interval. So checkpoints never
        // cost more than the log they save replaying (while new voters pour in, about twice the
        // final state in all), a restart replays at most about max(voters, one interval's)
        // records (and what came while the partition waited for its turn), and once the votes
        // stop the rest is checkpointed.
        let since = offset.count().saturating_sub(self.checkpointed.count()) as usize;
        let quiet = self.last_record.elapsed() >= interval;
        let due =
            self.last_checkpoint.elapsed() >= interval && (quiet || since >= self.counter.voters());
        if offset <= self.checkpointed || !(now || due) {
            return;
        }
        // One partition at a time (`CheckpointTurn`): one not given the turn stays due and tries
        // at its next flush; one that stops waits for it.
        let turn = &self.pipeline.checkpoint_turn;
        let Some(permit) = turn.take(now).await else {
            return;
        };
        self.last_checkpoint = Instant::now();
        let bytes = self.counter.checkpoint();
        let (partition, size) = (self.counter.partition(), bytes.len() as u64);
        let write = store.put_checkpoint(partition, offset, bytes);
        let stored = turn.hold_while(permit, partition, write).await;
        match stored {
            Ok(written) => {
                // The snapshot before this one is now a generation back: the log may let go of
                // what both hold (so a damaged newest snapshot still has one to fall back on).
                let older = std::mem::replace(&mut self.checkpointed, offset);
                if written {
                    let m = &self.pipeline.metrics;
                    m.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    m.checkpoint_bytes.fetch_add(size, Ordering::Relaxed);
                } else {
                    // Another owner (a zombie, or a new owner ahead of us) stored a later one.
                    tracing::debug!(
                        partition = partition.0,
                        offset = offset.0,
                        "a later checkpoint is stored"
                    );
                }
                release(self.pipeline, partition, older).await;
            }
            Err(e) => {
                self.pipeline
                    .metrics
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition = partition.0, error = %e, "writing the partition's checkpoint failed; trying again at the next interval");
            }
        }
    }
}

/// Tells the log that the partition's records before `offset` are in the two newest stored
/// snapshots (a log with retention may delete them). A failure only keeps them longer: logged,
/// tried at the next one.
async fn release(pipeline: &Pipeline, partition: Partition, offset: schemas::Offset) {
    if let Err(e) = pipeline.log.release(Topic::Votes, partition, offset).await {
        tracing::warn!(partition = partition.0, error = %e, "retiring the log before the snapshot failed; trying again after the next one");
    }
}

/// Writes pending partials to the results cache; on failure keeps only the newest per poll for the
/// retry at the next flush (a cache: a failure never stops counting).
async fn write_cache(
    cache: &RedisCache,
    pending: &mut Vec<PartialTally>,
    metrics: &ProcessorMetrics,
) {
    match cache.put_partials(pending).await {
        Ok(_) => pending.clear(),
        Err(e) => {
            metrics.cache_write_failures.fetch_add(1, Ordering::Relaxed);
            let mut newest: HashMap<PollId, PartialTally> = HashMap::new();
            for t in pending.drain(..) {
                match newest.get(&t.poll_id) {
                    Some(held) if !t.supersedes(held) => {}
                    _ => {
                        newest.insert(t.poll_id, t);
                    }
                }
            }
            pending.extend(newest.into_values());
            tracing::warn!(error = %e, "writing the results cache failed; retrying at the next flush");
        }
    }
}

#[cfg(test)]
mod tests;
