//! CrowdTick's durable parts, each behind a small trait so the pipeline never knows where it runs.
//!
//! - [`log`]: the [`Log`] trait — topics, partitions, offsets, consumer-held positions (Kafka's model).
//! - [`embedded_log`]: [`EmbeddedLog`], a file per partition, group commit (many records per fsync),
//!   CRC-framed records, torn tails cut on open. What `crowdtick serve` runs on by default.
//! - [`polls`]: [`PollCatalog`], the in-memory view of every poll that the edge and
//!   the processor consult per vote, over a [`PollStore`] ([`FilePollStore`] when embedded).
//! - [`edge_stats`]: [`EdgeRejections`], per-poll counts of the votes the edge refused.

pub mod edge_stats;
pub mod embedded_log;
pub mod log;
pub mod polls;

pub use edge_stats::{EdgeCounts, EdgeReason, EdgeRejections};
pub use embedded_log::{EmbeddedLog, EmbeddedLogConfig};
pub use log::{AppendBatch, Fetched, Log, LogError, Position, Topic};
pub use polls::{FilePollStore, PollCatalog, PollStore, StoreError};
