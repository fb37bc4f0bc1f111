//! The partition tasks: each owns one votes partition, replays it from the start to rebuild its
//! exact state (deterministic, so the rebuilt state equals the lost one), then keeps consuming and
//! emits the absolute partials of changed polls to the tallies topic every flush interval.
//!
//! Positions are held here, not in the log: the consumer decides where it reads from. A partial is
//! only written when it is newer than the one already published for its (poll, partition), so a
//! replay after a crash re-emits nothing stale.

use crate::pipeline::{Outcome, PartitionCounter, WindowConfig};
use parking_lot::Mutex;
use schemas::poll::PollState;
use schemas::vote::decode_vote;
use schemas::{now_micros, PartialTally, PollId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{AppendBatch, GroupEvent, Log, LogError, PollCatalog, RedisCache, TallyStore, Topic};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// How often changed polls' partials are emitted.
    pub flush_interval: Duration,
    pub windows: WindowConfig,
    pub max_fetch_bytes: usize,
    /// The edge's deadline for making a vote durable. A record that was not written within it never
    /// will be, so once caught up at time t, everything accepted before t − deadline is counted.
    pub ingest_deadline: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(50),
            windows: WindowConfig::default(),
            max_fetch_bytes: 1 << 20,
            ingest_deadline: Duration::from_secs(2),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ProcessorMetrics {
    pub records_read: AtomicU64,
    pub votes_counted: AtomicU64,
    pub votes_counted_late_for_window: AtomicU64,
    pub votes_duplicate: AtomicU64,
    pub votes_rejected: AtomicU64,
    pub records_undecodable: AtomicU64,
    pub partials_emitted: AtomicU64,
    pub restarts: AtomicU64,
    pub catalog_rereads: AtomicU64,
    pub cache_write_failures: AtomicU64,
    /// Next offset to read, per owned votes partition (lag = high watermark − this).
    pub positions: Arc<Mutex<BTreeMap<u32, u64>>>,
}

/// What a partition has already published per poll: (offset, complete_until).
pub type Published = HashMap<PollId, (i64, i64)>;

/// What the partition tasks read from and write to.
#[derive(Clone)]
pub struct Pipeline {
    pub log: Arc<dyn Log>,
    pub catalog: PollCatalog,
    /// Where partials are kept besides the tallies topic (PostgreSQL in the distributed mode).
    pub tally_store: Option<Arc<dyn TallyStore>>,
    /// Distributed mode: the results cache the query nodes read (a cache: failures are retried
    /// at the next flush and never stop counting).
    pub cache: Option<RedisCache>,
    pub config: ProcessorConfig,
    pub metrics: Arc<ProcessorMetrics>,
}

/// Runs one partition until shutdown, restarting it (replay from the start) after an error.
pub async fn run_partition_supervised(
    pipeline: Pipeline,
    partition: u32,
    published: Published,
    shutdown: watch::Receiver<bool>,
) {
    let mut published = published;
    loop {
        match run_partition(&pipeline, partition, &mut published, shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => {
                pipeline.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition, error = %e, "partition task failed; replaying it from the start in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// One pass of a partition task: replay, then follow the log until shutdown or an error.
pub async fn run_partition(
    pipeline: &Pipeline,
    partition: u32,
    published: &mut Published,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LogError> {
    let Pipeline {
        log,
        catalog,
        tally_store,
        cache,
        config,
        metrics,
    } = pipeline;
    let tally_store = tally_store.as_deref();
    let mut cache_pending = Vec::new();
    let mut counter = PartitionCounter::new(partition, config.windows);
    let replay_to = log.high_watermark(Topic::Votes, partition).await?;
    let started = Instant::now();
    let mut replaying = replay_to > 0;
    let mut last_flush = Instant::now();
    loop {
        let fetch_wall = now_micros();
        let fetched = tokio::select! {
            r = log.fetch(Topic::Votes, partition, counter.next_offset(), config.max_fetch_bytes, config.flush_interval) => r?,
            _ = shutdown.changed() => break,
        };
        let mut polls = catalog.snapshot();
        if catalog.is_shared() && needs_reread(&polls, &fetched) {
            // A poll created, opened or closed on another node since our last re-read: judge
            // these votes by the definitions the edge had when it accepted them.
            metrics.catalog_rereads.fetch_add(1, Ordering::Relaxed);
            catalog
                .refresh()
                .await
                .map_err(|e| LogError::Io(format!("re-reading the poll catalog: {e}")))?;
            polls = catalog.snapshot();
        }
        let (mut counted, mut late_window, mut dup, mut rejected, mut bad) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for (offset, _ts, _key, value) in fetched.iter() {
            match decode_vote(value) {
                Ok(vote) => {
                    let rules = polls.get(&vote.poll_id).map(|p| p.rules());
                    match counter.apply(offset, &vote, rules.as_ref()) {
                        Outcome::Counted => counted += 1,
                        Outcome::CountedLate => {
                            counted += 1;
                            late_window += 1
                        }
                        Outcome::Duplicate => dup += 1,
                        Outcome::Late | Outcome::Closed | Outcome::Invalid => rejected += 1,
                    }
                }
                Err(e) => {
                    bad += 1;
                    tracing::warn!(partition, offset, error = %e, "undecodable record in the votes topic; skipped");
                    counter.skip(offset);
                }
            }
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
            .insert(partition, counter.next_offset());

        if counter.next_offset() >= fetched.high_watermark {
            // Caught up with everything written before this fetch began.
            let margin = (config.ingest_deadline + Duration::from_secs(1)).as_micros() as i64;
            let closing = polls
                .values()
                .filter_map(|p| p.close_time().map(|c| (p.id, c)));
            counter.mark_complete(fetch_wall - margin, closing);
            if replaying {
                replaying = false;
                tracing::info!(
                    partition,
                    records = replay_to,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "partition state rebuilt from the log"
                );
            }
        }
        if !replaying && last_flush.elapsed() >= config.flush_interval {
            flush(
                &**log,
                tally_store,
                cache.as_ref(),
                &mut cache_pending,
                &mut counter,
                published,
                metrics,
            )
            .await?;
            last_flush = Instant::now();
        }
    }
    flush(
        &**log,
        tally_store,
        cache.as_ref(),
        &mut cache_pending,
        &mut counter,
        published,
        metrics,
    )
    .await
}

/// Whether a fetched vote names a poll the catalog does not know, or one it would not count as
/// open when the edge accepted it: then the catalog is re-read before judging (edges refuse such
/// votes themselves, so this is rare and means the catalog here is behind).
fn needs_reread(polls: &HashMap<PollId, Arc<schemas::Poll>>, fetched: &storage::Fetched) -> bool {
    fetched
        .iter()
        .any(|(_, _, _, value)| match decode_vote(value) {
            Ok(vote) => match polls.get(&vote.poll_id) {
                None => true,
                Some(p) => p.state_at(vote.accepted_at_us) != PollState::Open,
            },
            Err(_) => false,
        })
}

/// Publishes the changed polls' partials: to the tallies topic, then to the tally store if there is
/// one (both writes are idempotent: an older offset never replaces a newer one).
async fn flush(
    log: &dyn Log,
    tally_store: Option<&dyn TallyStore>,
    cache: Option<&RedisCache>,
    cache_pending: &mut Vec<PartialTally>,
    counter: &mut PartitionCounter,
    published: &mut Published,
    metrics: &ProcessorMetrics,
) -> Result<(), LogError> {
    let partials: Vec<PartialTally> = counter
        .take_partials(now_micros())
        .into_iter()
        .filter(|t| match published.get(&t.poll_id) {
            Some(&(offset, complete)) => {
                t.offset > offset || (t.offset == offset && t.complete_until > complete)
            }
            None => true,
        })
        .collect();
    if partials.is_empty() {
        return Ok(());
    }
    let tally_partitions = log.partitions(Topic::Tallies);
    let mut batch = AppendBatch::with_capacity(partials.len(), partials.len() * 128);
    for t in &partials {
        let p = (t.poll_id.rem_euclid(tally_partitions as i64)) as u32;
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
            .map_err(|e| LogError::Io(format!("tally store: {e}")))?;
    }
    if let Some(cache) = cache {
        cache_pending.extend(partials.iter().cloned());
        match cache.put_partials(cache_pending).await {
            Ok(_) => cache_pending.clear(),
            Err(e) => {
                metrics.cache_write_failures.fetch_add(1, Ordering::Relaxed);
                // Keep only the newest per poll for the retry at the next flush.
                let mut newest: HashMap<PollId, PartialTally> = HashMap::new();
                for t in cache_pending.drain(..) {
                    match newest.get(&t.poll_id) {
                        Some(held) if !storage::tally_store::supersedes(&t, held) => {}
                        _ => {
                            newest.insert(t.poll_id, t);
                        }
                    }
                }
                cache_pending.extend(newest.into_values());
                tracing::warn!(error = %e, "writing the results cache failed; retrying at the next flush");
            }
        }
    }
    metrics
        .partials_emitted
        .fetch_add(partials.len() as u64, Ordering::Relaxed);
    for t in partials {
        published.insert(t.poll_id, (t.offset, t.complete_until));
    }
    Ok(())
}

/// Runs the partitions the consumer group gives this process until shutdown.
///
/// On assignment, a partition's task restores what was already published from the tally store (so
/// nothing stale is re-emitted) and rebuilds its exact state by replaying the partition; on
/// revocation, the task stops and flushes before the group may hand the partition on.
pub async fn run_group(
    pipeline: Pipeline,
    mut events: mpsc::UnboundedReceiver<GroupEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<u32, (watch::Sender<bool>, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => None,
        };
        match event {
            Some(GroupEvent::Assigned(parts)) => {
                for p in parts {
                    if running.contains_key(&p) {
                        continue;
                    }
                    let (stop, stop_rx) = watch::channel(false);
                    let handle = tokio::spawn(run_owned_partition(pipeline.clone(), p, stop_rx));
                    running.insert(p, (stop, handle));
                }
            }
            Some(GroupEvent::Revoked(parts, ack)) => {
                stop_partitions(&pipeline, &mut running, &parts).await;
                let _ = ack.send(());
            }
            None => break,
        }
    }
    // Leaving the group revokes everything: nobody will acknowledge, so nobody must wait.
    drop(events);
    let all: Vec<u32> = running.keys().copied().collect();
    stop_partitions(&pipeline, &mut running, &all).await;
}

async fn stop_partitions(
    pipeline: &Pipeline,
    running: &mut BTreeMap<u32, (watch::Sender<bool>, JoinHandle<()>)>,
    parts: &[u32],
) {
    let mut stopping = Vec::new();
    for p in parts {
        if let Some((stop, handle)) = running.remove(p) {
            let _ = stop.send(true);
            stopping.push(handle);
        }
    }
    for h in stopping {
        let _ = h.await;
    }
    let mut positions = pipeline.metrics.positions.lock();
    for p in parts {
        positions.remove(p);
    }
}

/// One owned partition: restore what was published, then run until revoked.
async fn run_owned_partition(pipeline: Pipeline, partition: u32, mut stop: watch::Receiver<bool>) {
    let published = match &pipeline.tally_store {
        None => Published::new(),
        Some(store) => loop {
            match store.load_partition(partition as i32).await {
                Ok(partials) => {
                    break partials
                        .into_iter()
                        .map(|t| (t.poll_id, (t.offset, t.complete_until)))
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "restoring a partition from the tally store failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        },
    };
    run_partition_supervised(pipeline, partition, published, stop).await;
}
