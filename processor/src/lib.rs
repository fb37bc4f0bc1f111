//! CrowdTick's processor: from the votes topic to absolute partial tallies, and from partials to results.
//!
//! - [`pipeline`] (pure, no I/O): [`PartitionCounter`] judges and counts one partition's votes —
//!   exact dedupe per (poll, voter), absolute counts per option, 1-second event-time windows with a
//!   watermark and allowed lateness, rejection counts — and produces [`schemas::PartialTally`]s.
//! - [`merge`] (pure): [`PollResults`] merges partials (latest offset per partition wins; idempotent,
//!   order-free) into a poll's totals, a version that never decreases, and its timeline.
//! - [`runner`]: the partition tasks, a loop over fetch and flush tick against any [`storage::Log`].
//! - [`board`]: [`ResultsBoard`], the merged live results every reader shares, fed by tailing the
//!   tallies topic; subscribers get the latest snapshot per poll.
//! - [`recount`]: replays the log into fresh counters and checks every published partial against it.

pub mod board;
pub mod merge;
pub mod pipeline;
pub mod recount;
pub mod runner;

pub use board::{ResultsBoard, Snapshot};
pub use merge::PollResults;
pub use pipeline::{Outcome, PartitionCounter, WindowConfig};
pub use runner::{ProcessorConfig, ProcessorMetrics};
