//! The partial tally record of the `tallies` topic (schema `avro/tally.avsc`).

use crate::{DecodeError, Offset, Partition, PollId, Timestamp};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Votes a partition refused to count for a poll, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejections {
    /// The voter was already counted in this poll (a retry with the same `vote_id` is one too).
    pub duplicate: i64,
    /// Accepted after the poll's close time (can only happen when an edge learned of a close late).
    pub late: i64,
    /// The poll was not open when the vote was accepted.
    pub closed: i64,
    /// The choice does not fit the poll (unknown option, too many choices, unknown poll).
    pub invalid: i64,
}

impl Rejections {
    pub fn add(&mut self, other: &Rejections) {
        self.duplicate += other.duplicate;
        self.late += other.late;
        self.closed += other.closed;
        self.invalid += other.invalid;
    }
}

/// The absolute count of one 1-second window in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCount {
    pub start_ms: i64,
    pub votes: i64,
}

/// Absolute counts of one poll in one partition as of `offset` records of that partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialTally {
    pub poll_id: PollId,
    pub partition: Partition,
    pub offset: Offset,
    pub counts: Vec<i64>,
    pub voters: i64,
    pub rejected: Rejections,
    pub late_for_window: i64,
    pub windows: Vec<WindowCount>,
    pub complete_until: Timestamp,
    pub emitted_at: Timestamp,
}

/// How new a partial is: the offset it reflects, then how much it knows about completeness.
///
/// This is the one definition of "a newer partial wins", used by merging, the processor and the
/// stores. Per (poll, partition) a partial replaces the held one only if its offset is higher, or
/// equal with a higher `complete_until`; a window's count replaces the held one only if its offset is
/// higher ([`Freshness::window_supersedes`]). The PostgreSQL statement and the Redis script spell the
/// same rule in their own language and are tested against this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Freshness {
    pub offset: Offset,
    pub complete_until: Timestamp,
}

impl Freshness {
    /// Whether a partial this fresh replaces one `held` for the same (poll, partition).
    pub fn supersedes(self, held: Freshness) -> bool {
        self > held
    }

    /// Whether a window count at `offset` replaces one held at `held_offset` (same window).
    pub fn window_supersedes(offset: Offset, held_offset: Offset) -> bool {
        offset > held_offset
    }
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse_str(crate::TALLY_AVSC).expect("tally.avsc is valid"))
}

impl PartialTally {
    pub fn freshness(&self) -> Freshness {
        Freshness {
            offset: self.offset,
            complete_until: self.complete_until,
        }
    }

    /// Whether this partial replaces `held` for the same (poll, partition) (see [`Freshness`]).
    pub fn supersedes(&self, held: &PartialTally) -> bool {
        self.freshness().supersedes(held.freshness())
    }

    /// Avro binary datum (no container, no registry header).
    pub fn to_avro(&self) -> Vec<u8> {
        let value = apache_avro::to_value(self)
            .and_then(|v| v.resolve(schema()))
            .expect("a PartialTally always fits its schema");
        apache_avro::to_avro_datum(schema(), value).expect("a resolved value always encodes")
    }

    pub fn from_avro(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        let value = apache_avro::from_avro_datum(schema(), &mut bytes, None)
            .map_err(|e| DecodeError::Avro(e.to_string()))?;
        let value = match value {
            apache_avro::types::Value::Record(fields) => apache_avro::types::Value::Record(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, plain_longs(v)))
                    .collect(),
            ),
            other => other,
        };
        apache_avro::from_value(&value).map_err(|e| DecodeError::Avro(e.to_string()))
    }

    /// The record key in the tallies topic.
    pub fn key(&self) -> [u8; 8] {
        self.poll_id.to_be_bytes()
    }
}

/// Logical timestamps decode as their own variants; the Rust type holds plain microseconds.
fn plain_longs(v: apache_avro::types::Value) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    match v {
        Value::TimestampMicros(n) => Value::Long(n),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn avro_roundtrip(poll_id in any::<i64>(), partition in 0i32..1000, offset in 0i64..i64::MAX,
                          counts in proptest::collection::vec(0i64..1_000_000, 0..10),
                          windows in proptest::collection::vec((any::<i64>(), 0i64..1000), 0..5),
                          dup in 0i64..100, complete_until in any::<i64>()) {
            let t = PartialTally {
                poll_id, partition: Partition(partition), offset: Offset(offset), voters: counts.iter().sum(), counts,
                rejected: Rejections { duplicate: dup, late: 1, closed: 2, invalid: 3 },
                late_for_window: 4,
                windows: windows.into_iter().map(|(start_ms, votes)| WindowCount { start_ms, votes }).collect(),
                complete_until: Timestamp(complete_until), emitted_at: Timestamp(5),
            };
            prop_assert_eq!(PartialTally::from_avro(&t.to_avro()).unwrap(), t);
        }
    }

    proptest! {
        /// The rule spelled out: a higher offset wins; at an equal offset, a higher claim.
        #[test]
        fn newer_partial_wins(o1 in 0i64..4, c1 in 0i64..4, o2 in 0i64..4, c2 in 0i64..4) {
            let new = Freshness { offset: Offset(o1), complete_until: Timestamp(c1) };
            let held = Freshness { offset: Offset(o2), complete_until: Timestamp(c2) };
            prop_assert_eq!(new.supersedes(held), o1 > o2 || (o1 == o2 && c1 > c2));
            // Never both ways, and a partial never replaces itself (writes are idempotent).
            prop_assert!(!(new.supersedes(held) && held.supersedes(new)));
            prop_assert!(!new.supersedes(new));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(PartialTally::from_avro(&[0xff, 0xff, 0xff]).is_err());
    }
}
