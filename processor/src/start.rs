//! Starting the processor: which partitions it counts, and the tasks that count them.

use crate::runner::{run_group, run_partition_supervised, Pipeline};
use results::ResultsBoard;
use schemas::Partition;
use std::sync::atomic::Ordering;
use storage::{GroupConfig, GroupMember, KafkaConfig, LogError, Shutdown};
use tokio::task::JoinHandle;

/// Which votes partitions this processor counts.
pub enum Ownership<'a> {
    /// Every partition of the log (the embedded mode: one processor), resuming from what the
    /// results board says was published.
    Every {
        partitions: u32,
        published: &'a ResultsBoard,
    },
    /// Those the Kafka consumer group assigns it, as the group changes.
    Group {
        kafka: &'a KafkaConfig,
        group: &'a GroupConfig,
    },
}

/// A started processor: its tasks, and its group membership on Kafka.
pub struct Processor {
    pub tasks: Vec<JoinHandle<()>>,
    /// Left (after the tasks have flushed) by [`Processor::stop`].
    group: Option<GroupMember>,
}

/// Starts counting: a task per partition, or a member of the consumer group that starts and stops
/// them as partitions are assigned and revoked. `shutdown` set to true stops every task after
/// its last flush.
pub fn start(
    pipeline: Pipeline,
    ownership: Ownership<'_>,
    shutdown: Shutdown,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Processor, LogError> {
    pipeline.metrics.register_metrics(registry);
    match ownership {
        Ownership::Group { kafka, group } => {
            let (member, events) =
                GroupMember::join(kafka, group, pipeline.metrics.positions.clone())?;
            Ok(Processor {
                tasks: vec![tokio::spawn(run_group(pipeline, events, shutdown))],
                group: Some(member),
            })
        }
        Ownership::Every {
            partitions,
            published,
        } => {
            // Every partition is catching up until its task has read to the end of the log.
            let metrics = &pipeline.metrics;
            metrics
                .catching_up
                .lock()
                .extend(Partition::all(partitions));
            metrics.owns_partitions.store(true, Ordering::Relaxed);
            let tasks = Partition::all(partitions)
                .map(|p| {
                    tokio::spawn(run_partition_supervised(
                        pipeline.clone(),
                        p,
                        published.published(p),
                        shutdown.clone(),
                    ))
                })
                .collect();
            Ok(Processor { tasks, group: None })
        }
    }
}

impl Processor {
    /// Waits for the tasks (stopped by the shutdown signal) to publish what they hold, then leaves
    /// the group, so the partitions move at once.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(group) = self.group {
            let _ = tokio::task::spawn_blocking(move || group.leave()).await;
        }
    }
}
