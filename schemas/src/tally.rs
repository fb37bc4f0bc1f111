//! The partial tally record of the `tallies` topic (schema `avro/tally.avsc`).

use crate::vote::{read_long, write_long};
use crate::{DecodeError, Offset, Partition, PollId, Timestamp};
use serde::{Deserialize, Serialize};

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

/// An Avro array as one block: its length, the items, then 0 (an empty array is the 0 alone).
fn write_array<T>(out: &mut Vec<u8>, items: &[T], item: impl Fn(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        write_long(out, items.len() as i64);
        for i in items {
            item(out, i);
        }
    }
    write_long(out, 0);
}

/// An Avro array in any number of blocks (a negative count is followed by the block's size in
/// bytes, which is not needed here).
fn read_array<T>(
    b: &mut &[u8],
    item: impl Fn(&mut &[u8]) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut items = Vec::new();
    loop {
        let mut n = read_long(b)?;
        if n == 0 {
            return Ok(items);
        }
        if n < 0 {
            n = n.checked_neg().ok_or(DecodeError::BadVarint)?;
            read_long(b)?;
        }
        // Every item takes at least a byte: a count beyond what is left is garbage, not a
        // reason to reserve memory.
        if n as u64 > b.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        items.reserve(n as usize);
        for _ in 0..n {
            items.push(item(b)?);
        }
    }
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

    /// Avro binary datum (no container, no registry header), written by hand in the schema's
    /// field order (`avro/tally.avsc`); a test checks it byte for byte against apache-avro's
    /// generic writer, which costs ~80,000 instructions a partial.
    pub fn to_avro(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + 10 * (self.counts.len() + 2 * self.windows.len()));
        write_long(&mut out, self.poll_id);
        write_long(&mut out, i64::from(self.partition.0));
        write_long(&mut out, self.offset.0);
        write_array(&mut out, &self.counts, |out, &c| write_long(out, c));
        write_long(&mut out, self.voters);
        let r = &self.rejected;
        for n in [
            r.duplicate,
            r.late,
            r.closed,
            r.invalid,
            self.late_for_window,
        ] {
            write_long(&mut out, n);
        }
        write_array(&mut out, &self.windows, |out, w| {
            write_long(out, w.start_ms);
            write_long(out, w.votes);
        });
        write_long(&mut out, self.complete_until.micros());
        write_long(&mut out, self.emitted_at.micros());
        out
    }

    /// Reads a datum of `avro/tally.avsc` (any block layout of its arrays, as any Avro writer may
    /// use); bytes after it are left alone.
    pub fn from_avro(mut bytes: &[u8]) -> Result<Self, DecodeError> {
        let b = &mut bytes;
        let poll_id = read_long(b)?;
        let partition = i32::try_from(read_long(b)?)
            .map_err(|_| DecodeError::Avro("partition is not an int".into()))?;
        let offset = Offset(read_long(b)?);
        let counts = read_array(b, read_long)?;
        let voters = read_long(b)?;
        let rejected = Rejections {
            duplicate: read_long(b)?,
            late: read_long(b)?,
            closed: read_long(b)?,
            invalid: read_long(b)?,
        };
        let late_for_window = read_long(b)?;
        let windows = read_array(b, |b| {
            Ok(WindowCount {
                start_ms: read_long(b)?,
                votes: read_long(b)?,
            })
        })?;
        Ok(PartialTally {
            poll_id,
            partition: Partition(partition),
            offset,
            counts,
            voters,
            rejected,
            late_for_window,
            windows,
            complete_until: Timestamp(read_long(b)?),
            emitted_at: Timestamp(read_long(b)?),
        })
    }

    /// The record key in the tallies topic.
    pub fn key(&self) -> [u8; 8] {
        self.poll_id.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// apache-avro's generic writer and reader, the reference the hand-written codec is held to.
    fn generic_schema() -> apache_avro::Schema {
        apache_avro::Schema::parse_str(crate::TALLY_AVSC).unwrap()
    }

    fn generic_encode(t: &PartialTally) -> Vec<u8> {
        let schema = generic_schema();
        let value = apache_avro::to_value(t).unwrap().resolve(&schema).unwrap();
        apache_avro::to_avro_datum(&schema, value).unwrap()
    }

    fn arb_tally() -> impl Strategy<Value = PartialTally> {
        (
            (any::<i64>(), any::<i32>(), any::<i64>(), any::<i64>()),
            proptest::collection::vec(any::<i64>(), 0..10),
            proptest::collection::vec((any::<i64>(), any::<i64>()), 0..5),
            [any::<i64>(); 5],
            (any::<i64>(), any::<i64>()),
        )
            .prop_map(
                |((poll_id, partition, offset, voters), counts, windows, r, (c, e))| PartialTally {
                    poll_id,
                    partition: Partition(partition),
                    offset: Offset(offset),
                    counts,
                    voters,
                    rejected: Rejections {
                        duplicate: r[0],
                        late: r[1],
                        closed: r[2],
                        invalid: r[3],
                    },
                    late_for_window: r[4],
                    windows: windows
                        .into_iter()
                        .map(|(start_ms, votes)| WindowCount { start_ms, votes })
                        .collect(),
                    complete_until: Timestamp(c),
                    emitted_at: Timestamp(e),
                },
            )
    }

    proptest! {
        /// The same bytes as apache-avro's writer, and back to the same partial through both
        /// readers.
        #[test]
        fn matches_apache_avro(t in arb_tally()) {
            let bytes = t.to_avro();
            prop_assert_eq!(&bytes, &generic_encode(&t));
            prop_assert_eq!(&PartialTally::from_avro(&bytes).unwrap(), &t);
            let generic = apache_avro::from_avro_datum(&generic_schema(), &mut &bytes[..], None);
            prop_assert!(generic.is_ok(), "{:?}", generic);
        }

        /// Any prefix of a datum is an error, never a panic or a partial.
        #[test]
        fn truncated_datums_are_errors(t in arb_tally(), cut in 0usize..200) {
            let bytes = t.to_avro();
            let cut = cut % bytes.len();
            prop_assert!(PartialTally::from_avro(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn arrays_in_several_blocks_with_byte_sizes_are_read() {
        let t = PartialTally {
            poll_id: 7,
            counts: vec![1, 2, 3],
            windows: vec![WindowCount {
                start_ms: 1_000,
                votes: 4,
            }],
            ..Default::default()
        };
        // The counts as two blocks: [1] plainly, then [2, 3] with a negative count and its size.
        let mut out = Vec::new();
        for n in [7, 0, 0] {
            write_long(&mut out, n); // poll_id, partition, offset
        }
        for n in [1, 1, -2, 2, 2, 3, 0] {
            write_long(&mut out, n);
        }
        let rest = t.to_avro();
        let after_counts = {
            let mut b = &rest[..];
            for _ in 0..3 {
                read_long(&mut b).unwrap();
            }
            read_array(&mut b, read_long).unwrap();
            rest.len() - b.len()
        };
        out.extend_from_slice(&rest[after_counts..]);
        assert_eq!(PartialTally::from_avro(&out).unwrap(), t);
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
