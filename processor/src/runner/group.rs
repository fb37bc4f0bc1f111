//! The partitions a consumer group gives a processor: a task each, started on assignment and
//! stopped (flushed and checkpointed) on revocation.

use super::{run_partition_supervised, write_cache, Pipeline, Published};
use schemas::Partition;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use storage::{GroupEvent, Shutdown, ShutdownTrigger};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Runs the partitions the consumer group gives this process until shutdown.
///
/// On assignment, a partition's task restores what was already published from the tally store (so
/// nothing stale is re-emitted) and its exact state from the partition's checkpoint (or by
/// replaying the partition without one); on revocation, the task stops, flushes and checkpoints
/// before the group may hand the partition on.
pub async fn run_group(
    pipeline: Pipeline,
    mut events: mpsc::UnboundedReceiver<GroupEvent>,
    mut shutdown: Shutdown,
) {
    let mut running: BTreeMap<Partition, (ShutdownTrigger, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.signalled() => None,
        };
        match event {
            Some(GroupEvent::Assigned(parts)) => {
                // Catching up from now: the task first loads what was published, then restores.
                pipeline
                    .metrics
                    .catching_up
                    .lock()
                    .extend(parts.iter().filter(|p| !running.contains_key(p)));
                pipeline
                    .metrics
                    .owns_partitions
                    .store(true, Ordering::Relaxed);
                for p in parts {
                    if running.contains_key(&p) {
                        continue;
                    }
                    let (stop, stop_rx) = ShutdownTrigger::new();
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
    let all: Vec<Partition> = running.keys().copied().collect();
    stop_partitions(&pipeline, &mut running, &all).await;
}

async fn stop_partitions(
    pipeline: &Pipeline,
    running: &mut BTreeMap<Partition, (ShutdownTrigger, JoinHandle<()>)>,
    parts: &[Partition],
) {
    let mut stopping = Vec::new();
    for p in parts {
        if let Some((stop, handle)) = running.remove(p) {
            stop.fire();
            stopping.push(handle);
        }
    }
    for h in stopping {
        let _ = h.await;
    }
    let mut positions = pipeline.metrics.positions.lock();
    let mut catching_up = pipeline.metrics.catching_up.lock();
    let mut failures = pipeline.metrics.failures.lock();
    for p in parts {
        positions.remove(p);
        catching_up.remove(p);
        failures.remove(p);
    }
}

/// One owned partition: restore what was published (and make sure the results cache has it), then
/// run until revoked.
pub(super) async fn run_owned_partition(
    pipeline: Pipeline,
    partition: Partition,
    mut stop: Shutdown,
) {
    let published = match &pipeline.tally_store {
        None => Published::new(),
        Some(store) => loop {
            match store.load_partition(partition).await {
                Ok(partials) => {
                    if let Some(cache) = &pipeline.cache {
                        // A previous owner may have died between the store and the cache write:
                        // the cache takes only what is newer than what it holds.
                        let mut pending = partials.clone();
                        write_cache(cache, &mut pending, &pipeline.metrics).await;
                    }
                    break partials
                        .into_iter()
                        .map(|t| (t.poll_id, t.freshness()))
                        .collect();
                }
                Err(e) => {
                    // Readiness says why until the partition reads its log (`run_partition`).
                    let why = format!("restoring what it published from the tally store: {e}");
                    pipeline.metrics.failures.lock().insert(partition, why);
                    pipeline.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(partition = partition.0, error = %e, "restoring a partition from the tally store failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.signalled() => return,
                    }
                }
            }
        },
    };
    run_partition_supervised(pipeline, partition, published, stop).await;
}
