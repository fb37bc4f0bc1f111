//! CrowdTick's durable parts, each behind a small trait so the pipeline never knows where it runs.
//!
//! - [`log`]: the [`Log`] trait — topics, partitions, offsets, consumer-held positions (Kafka's model).
//! - [`embedded_log`]: [`EmbeddedLog`], a stream per topic in segment files (its partitions
//!   interleaved; an in-memory index of 8 bytes a record), group commit (many records per fsync),
//!   CRC-framed records, zeros written ahead of each topic's end (so an fsync flushes data, not
//!   the file's size), torn tails cut on open, segments every consumer released retired (an
//!   opt-in retention). What `crowdtick serve` runs on by default.
//! - [`checkpoint_files`]: [`CheckpointFiles`], the embedded mode's per-partition snapshots.
//! - [`group_commit`]: the writer thread behind the embedded log and the old API's files: every
//!   request waiting at that moment written together, one fsync for them all.
//! - [`kafka`]: [`KafkaLog`], the log on Kafka for the distributed mode (rdkafka, idempotent
//!   producer), split by concern (settings, producer, topics, reader), and [`GroupMember`], the
//!   processors' consumer group (who owns which votes partition).
//! - [`registry_log`]: [`RegistryLog`], the Confluent wire format (magic byte, schema id, datum) on
//!   the Kafka topics when a schema registry is configured.
//! - [`metrics`]: the logs' collectors for `/metrics` (`crowdtick_log_*`,
//!   `crowdtick_schema_registry_*`), and the tables every crate's collector renders; [`latency`]:
//!   the histogram they keep of how long things waited.
//! - [`redis_cache`]: [`RedisCache`], the distributed mode's results cache and change notices.
//! - [`redact`]: PostgreSQL, Redis and schema-registry URLs with their passwords hidden, for
//!   messages, logs and `crowdtick config`.
//! - [`polls`]: [`PollCatalog`], the in-memory view of every poll that the edge and
//!   the processor consult per vote, over a [`PollStore`] ([`FilePollStore`] when embedded).
//! - [`poll_journal`]: [`FilePollStore`], poll definitions as an append-only journal of JSON lines
//!   (one fsynced line per change; torn tail cut, compacted and migrated at open).
//! - [`edge_stats`]: [`EdgeRejections`], per-poll counts of the votes the edge refused.
//! - `test_broker` (feature `test-broker`, for tests only): a tansu (Kafka-protocol) broker on a
//!   loopback port.
//! - [`settings`]: the backends' sections of the configuration file (`[log]`, `[kafka]`,
//!   `[postgres]`, `[redis]`, `[schema_registry]`, `[scylla]`, `[polls]`), as written.
//! - [`shutdown`]: the [`Shutdown`] signal every background task of a node stops on.
//! - [`tally_store`]: [`TallyStore`], the latest partial tally per (poll, partition) with its offset;
//!   a partial older than the stored one is never written ([`MemoryTallyStore`] in memory); and
//!   [`CheckpointStore`], where each votes partition's snapshot is kept (every tally store, or
//!   [`CheckpointFiles`]).
//! - [`scylla`]: [`ScyllaTallyStore`], partials, windows and checkpoints on ScyllaDB (writes
//!   `USING TIMESTAMP` of the offset they reflect: last-write-wins keeps the newest).
//! - [`postgres`]: the distributed mode's PostgreSQL side: [`postgres::connect`], [`postgres::migrate`],
//!   [`PgPollStore`] and [`PgTallyStore`].

pub mod checkpoint_files;
pub mod edge_stats;
pub mod embedded_log;
pub mod group_commit;
pub mod kafka;
pub mod latency;
pub mod log;
pub mod metrics;
pub mod poll_journal;
pub mod polls;
pub mod postgres;
pub mod redact;
pub mod redis_cache;
pub mod registry_log;
pub mod scylla;
pub mod settings;
pub mod shutdown;
pub mod tally_store;
#[cfg(any(test, feature = "test-broker"))]
pub mod test_broker;

pub use checkpoint_files::CheckpointFiles;
pub use edge_stats::{EdgeCounts, EdgeReason, EdgeRejections};
pub use embedded_log::{EmbeddedLog, EmbeddedLogConfig};
pub use kafka::{GroupConfig, GroupEvent, GroupMember, KafkaConfig, KafkaLog};
pub use log::{AppendBatch, BoxError, ErrorSource, Fetched, Log, LogError, Position, Topic};
pub use polls::{FilePollStore, PollCatalog, PollStore, Polls, StoreError};
pub use postgres::{PgPollStore, PgTallyStore};
pub use redis_cache::{Notice, RedisCache};
pub use registry_log::{RegistryConfig, RegistryLog, RegistryMetrics};
pub use scylla::{ScyllaConfig, ScyllaTallyStore};
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use tally_store::{CheckpointStore, MemoryTallyStore, TallyStore, TallyStoreError};
