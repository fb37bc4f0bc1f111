//! The Kafka log (distributed mode): [`KafkaLog`] implements [`Log`] with rdkafka (librdkafka).
//!
//! - **Topics.** [`KafkaLog::connect`] creates the votes and tallies topics when missing, with the
//!   configured partition counts, and refuses to start when a topic exists with another count: votes
//!   are placed by `hash(poll, voter) mod partitions`, so a different count would send a voter's
//!   later votes to another partition, where the dedupe cannot see the earlier ones.
//! - **Writes.** One idempotent producer (`enable.idempotence=true`, `acks=all`, lz4, `linger.ms=5`),
//!   with a bounded queue (100k messages / 64 MiB, not librdkafka's 1 GiB) and `message.timeout.ms`
//!   no longer than the edge deadline. [`Log::append`] sends every record to its explicit partition
//!   (Kafka key = record key) and resolves when *every* delivery report of the batch says
//!   persisted, with the positions in batch order. A full queue is [`LogError::Overloaded`]; a
//!   failed or late delivery, or the deadline passing first, is [`LogError::Timeout`].
//!
//!   **Unlike the embedded log, a timed-out or refused append may still be written**: a message
//!   already handed to the broker cannot be called back (and when the queue fills in the middle of a
//!   batch, the records before it stay queued). The edge answers 503, the client retries with the
//!   same `vote_id`, and the processor's dedupe by (poll, voter) keeps the count exact; the vote is
//!   counted once whether the first or the retried copy is the one that landed.
//! - **Reads.** Positions are the caller's, never Kafka's committed offsets: no group is joined
//!   (librdkafka wants a `group.id` for `assign`, nothing more), nothing is committed or stored.
//!   Each (topic, partition) gets its own consumer, made on first use, `assign`ed at an explicit offset and
//!   re-assigned whenever a fetch asks for another offset than the one it stands at.
//!   `auto.offset.reset=earliest`, so an offset that retention removed resumes at the oldest record
//!   (the [`Fetched`] then starts later than asked), never at the end.
//! - **High watermarks.** [`Fetched::high_watermark`] is either one this reader saw earlier that is
//!   still beyond the records returned (so the caller knows it is not caught up), or one asked of
//!   the broker after the fetch began: "caught up" (`next_offset() >= high_watermark`) always means
//!   caught up with everything written before the fetch. The broker's ListOffsets answer is checked
//!   against the high watermark of librdkafka's latest fetch response, and when that cannot settle
//!   it, the last record is read: tansu's memory engine (the test broker) answers ListOffsets with
//!   the last record batch's base offset + 1, short of the end when the batch holds several records.
//! - **Broker quirks.** Asked to fetch from inside a record batch, tansu's memory engine answers
//!   with the batches *after* it (or nothing). So when a newly positioned reader gets a later
//!   offset than asked, or nothing for a second although records exist, it reads once more from
//!   up to 10,000 records earlier (librdkafka's `batch.num.messages`) and drops what precedes the
//!   asked offset. A real gap (records removed by retention) then shows as a [`Fetched`] that
//!   starts later than asked. With Kafka itself neither case arises in normal operation.
//! - **Timestamps.** Kafka keeps milliseconds: a record's µs timestamp is stored as whole
//!   milliseconds and read back as `ms * 1000`. (Timestamp 0 means "now" to librdkafka.) Votes and
//!   tallies carry their exact times in their values.
//! - **Settings.** [`validate`] refuses librdkafka settings that would break an invariant (see
//!   `design.md`, "Risky defaults to override"); [`KafkaConfig::extra`] overrides apply to every
//!   client (librdkafka warns about and ignores a producer setting given to a consumer, and back).
//!
//! Where each part lives:
//! - `settings.rs`: [`KafkaConfig`], the librdkafka settings of each client, and [`validate`].
//! - `producer.rs`: the producer, its context, and when it is replaced (a lost broker, refusals in
//!   a row); [`raw_produce`], the benchmarks' baseline.
//! - `topics.rs`: creating the topics and checking their partition counts.
//! - `reader.rs`: one partition's consumer, where it stands, and the broker workarounds.
//! - `log.rs`: [`KafkaLog`], the [`crate::Log`] that puts them together.
//! - [`group`]: consumer-group membership (which processor owns which votes partition).

pub mod group;
mod log;
mod producer;
mod reader;
mod settings;
mod topics;

pub use group::{committed_offsets, GroupConfig, GroupEvent, GroupMember};
pub use log::KafkaLog;
pub use producer::raw_produce;
pub use settings::{consumer_settings, producer_settings, validate, KafkaConfig};
