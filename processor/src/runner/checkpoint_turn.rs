//! One partition of a node takes its snapshot at a time.

use schemas::Partition;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Lets one partition task of a node encode and store its snapshot at a time
/// (`PartitionTask::checkpoint`). An even load fills the partitions alike, so they fall due
/// together, and each one's encoding holds a runtime thread (tens of milliseconds at half a
/// million voters): all at once, they kept the requests from every thread and the node shed votes
/// (BENCHMARKS.md, "2026-12-06 (sixth session)"). A write that takes longer than `held_at_most`
/// (a store that hangs: PostgreSQL's write has no statement timeout) lets the turn go, so it
/// holds back only its own partition (whose task waits for the write). Clones share the turn.
#[derive(Clone)]
pub struct CheckpointTurn {
    pub(super) permits: Arc<Semaphore>,
    held_at_most: Duration,
}

impl Default for CheckpointTurn {
    /// A write may hold the turn for 10 s: a snapshot of a million voters (tens of MB) is written
    /// to its files in well under a second, and sent to a tally store in a few.
    fn default() -> Self {
        Self::with_limit(Duration::from_secs(10))
    }
}

impl CheckpointTurn {
    /// A turn that a write holds for at most `held_at_most`.
    pub fn with_limit(held_at_most: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(1)),
            held_at_most,
        }
    }

    /// The turn: waited for when `wait` (a partition that stops), else only if it is free now
    /// (`None`: a due partition stays due and tries at its next flush).
    pub(super) async fn take(&self, wait: bool) -> Option<SemaphorePermit<'_>> {
        match wait {
            true => Some((self.permits.acquire().await).expect("the turn is never closed")),
            false => self.permits.try_acquire().ok(),
        }
    }

    /// Awaits `partition`'s snapshot `write` holding the turn (`permit`), and lets the turn go if
    /// the write takes longer than the limit; the write itself is awaited to its end either way
    /// (so a partition never has two writes of its own in flight).
    pub(super) async fn hold_while<T>(
        &self,
        permit: SemaphorePermit<'_>,
        partition: Partition,
        write: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(write);
        tokio::select! {
            done = &mut write => done,
            () = tokio::time::sleep(self.held_at_most) => {
                drop(permit);
                tracing::warn!(
                    partition = partition.0,
                    waited = ?self.held_at_most,
                    "writing the partition's snapshot is taking long; the node's other partitions \
                     take their turns meanwhile (is the checkpoint store answering?)"
                );
                write.await
            }
        }
    }
}
