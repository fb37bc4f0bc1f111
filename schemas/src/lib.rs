//! CrowdTick's data contracts.
//!
//! - [`vote`]: the vote record of the `votes` topic, its Avro codec (hand-rolled for the hot path,
//!   checked byte for byte against `apache-avro`) and the partitioner (`hash(poll, voter)`).
//! - [`tally`]: the absolute partial tally of the `tallies` topic (Avro written and read by hand,
//!   checked byte for byte against `apache-avro`).
//! - [`voter`]: voter ids with their namespace (device, verified, old-API account, aggregator), so
//!   no door can name another's voter.
//! - [`position`]: [`Partition`], [`Offset`] and [`Timestamp`], the one type of each that every
//!   interface uses.
//! - [`poll`]: a poll's definition and lifecycle rules (open, close, visibility).
//! - [`cql`]: the data statements of the ScyllaDB tally store (its tables: `cql/tallies.cql`).
//! - [`rejection`]: why a vote or a poll definition is refused ([`VoteRejection`],
//!   [`PollRejection`]); domain reasons only, their HTTP status is chosen by the `edge` crate.
//! - `avro/*.avsc`, `sql/polls.sql`, `cql/tallies.cql`: the schema files themselves, embedded below.

pub mod cql;
pub mod poll;
pub mod position;
pub mod rejection;
pub mod tally;
pub mod vote;
pub mod voter;

pub use poll::{Poll, PollId, PollRules, Visibility, Voters};
pub use position::{Offset, Partition, Timestamp};
pub use rejection::{PollRejection, VoteRejection};
pub use tally::{Freshness, PartialTally, Rejections, WindowCount};
pub use vote::{partition_for, Vote, VoteRef};
pub use voter::{QualifiedVoter, VoterNamespace};

/// Avro schema of a vote (`io.crowdtick.Vote`).
pub const VOTE_AVSC: &str = include_str!("../avro/vote.avsc");
/// Avro schema of a partial tally (`io.crowdtick.PartialTally`).
pub const TALLY_AVSC: &str = include_str!("../avro/tally.avsc");
/// PostgreSQL schema: polls and partial tallies.
pub const POSTGRES_SQL: &str = include_str!("../sql/polls.sql");
/// ScyllaDB schema: partials, windows and checkpoints (`{keyspace}`, `{replication}` filled in).
pub const SCYLLA_CQL: &str = include_str!("../cql/tallies.cql");

/// Errors decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated")]
    Truncated,
    #[error("malformed varint")]
    BadVarint,
    #[error("invalid UTF-8 in a string field")]
    Utf8,
    #[error("negative length")]
    NegativeLength,
    #[error("avro: {0}")]
    Avro(String),
}
