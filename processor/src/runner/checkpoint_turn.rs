//! One partition of a node takes its snapshot at a time.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// Lets one partition task of a node encode and store its snapshot at a time
/// (`PartitionTask::checkpoint`). An even load fills the partitions alike, so they fall due
/// together, and each one's encoding holds a runtime thread (tens of milliseconds at half a
/// million voters): all at once, they kept the requests from every thread and the node shed votes
/// (BENCHMARKS.md, "2026-12-06 (sixth session)"). Clones share the turn.
#[derive(Clone)]
pub struct CheckpointTurn(pub(super) Arc<Semaphore>);

impl Default for CheckpointTurn {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(1)))
    }
}
