//! CrowdTick's read model: what the query and realtime services show, built from the partial
//! tallies the processor publishes. Neither reader depends on the processor; both depend on this.
//!
//! - [`merge`] (pure): [`PollResults`] merges partials (the newer partial per partition wins, as
//!   [`schemas::Freshness`] defines; idempotent, order-free) into a poll's totals, a version that
//!   never decreases, and its timeline.
//! - [`board`]: [`ResultsBoard`], the merged live results every reader of a node shares, fed by
//!   tailing the tallies topic; subscribers get the latest [`Snapshot`] per poll, never a queue.
//! - [`metrics`]: the board's collector for `/metrics` (`crowdtick_results_*`): the tallies'
//!   way through the log to it.
//! - [`views`]: the JSON shapes of a poll and of its results (the same for a `GET` and a pushed
//!   update), including the embargo rule.
//! - [`saved`]: the board's snapshot in the embedded mode, so a start reads only the tallies after
//!   it and the tallies topic can be retired behind it.

pub mod board;
pub mod merge;
pub mod metrics;
pub mod saved;
pub mod views;

pub use board::{Published, ResultsBoard, Snapshot};
pub use merge::PollResults;
