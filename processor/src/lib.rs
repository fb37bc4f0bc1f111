//! CrowdTick's processor: from the votes topic to absolute partial tallies.
//!
//! - [`pipeline`] (pure, no I/O): [`PartitionCounter`] judges and counts one partition's votes —
//!   exact dedupe per (poll, voter), absolute counts per option, 1-second event-time windows with a
//!   watermark and allowed lateness, rejection counts — and produces [`schemas::PartialTally`]s.
//! - [`voter_set`] (pure): [`voter_set::VoterSet`], the exact set of a poll's counted voters in one
//!   partition, packed in an arena (no allocation per voter).
//! - [`metrics`]: the counters in [`ProcessorMetrics`] (counters, owned partitions and their positions, readiness)
//!   and the collectors for `/metrics`: `crowdtick_processor_*`, and [`LogProgress`] (each votes
//!   partition's high watermark and this processor's lag behind it).
//! - [`runner`]: the partition tasks, a loop over fetch and flush tick against any [`storage::Log`]
//!   (`runner/group.rs` runs one for each partition the consumer group assigns).
//! - [`settings`]: the [`ProcessorSection`], `[processor]` settings as written, and the
//!   [`ProcessorConfig`] and consumer group they become.
//! - [`start`]: [`start::start`], the processor starting itself: every partition (embedded) or a
//!   member of the Kafka consumer group; [`start::Processor::stop`] flushes, then leaves the group.
//! - [`lost_votes`]: votes deleted by retention before they were counted, and the operator's
//!   [`lost_votes::AcceptedLosses`] (`processor.accept_lost_votes`) that lets a partition count on.
//! - [`recount`]: replays the log into fresh counters and checks every published partial against it.
//! - `exactness` (tests): counters' partials, merged by the read model (`results`) in any order and
//!   with repetition, give the exact count.
//!
//! Merging partials into results, and the board readers share, are the read model: the `results`
//! crate.

pub mod lost_votes;
pub mod metrics;
pub mod pipeline;
pub mod recount;
pub mod runner;
pub mod settings;
pub mod start;
pub mod voter_set;

#[cfg(test)]
mod exactness;

pub use metrics::{LogProgress, ProcessorMetrics};
pub use pipeline::{Outcome, PartitionCounter, WindowConfig};
pub use runner::ProcessorConfig;
pub use settings::ProcessorSection;
