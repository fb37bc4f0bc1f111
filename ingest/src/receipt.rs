//! A durable vote's receipt, and its JSON.
//!
//! Every single vote's 202 carries one, so [`Receipt::to_json`] writes its bytes straight into
//! the response body: the keys as constants, the numbers with `itoa`, the time by
//! [`Timestamp::write_rfc3339_micros`] into the same buffer, and the vote id as is unless it
//! needs escaping (then by `serde_json`). It writes what `serde_json::to_vec` writes for the
//! derived `Serialize`, which a property test checks, and a vote costs about 1,800 fewer
//! instructions than with axum's `Json` (BENCHMARKS.md, "2026-12-07 (second session)"), and
//! about 500 fewer again with the time written without `fmt` ("2026-12-07 (fifth session)").

use schemas::{Offset, Partition, PollId, Timestamp};
use serde::{Serialize, Serializer};

/// A durable vote's receipt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Receipt {
    pub vote_id: String,
    pub poll_id: PollId,
    pub partition: Partition,
    pub offset: Offset,
    /// When the node stamped the vote; RFC 3339 in UTC with microseconds in JSON.
    #[serde(serialize_with = "rfc3339_micros")]
    pub accepted_at: Timestamp,
}

impl Receipt {
    /// The receipt as JSON: the same bytes as `serde_json::to_vec(self)`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.vote_id.len());
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(b"{\"vote_id\":");
        write_json_str(&mut out, &self.vote_id);
        out.extend_from_slice(b",\"poll_id\":");
        out.extend_from_slice(numbers.format(self.poll_id).as_bytes());
        out.extend_from_slice(b",\"partition\":");
        out.extend_from_slice(numbers.format(self.partition.0).as_bytes());
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(numbers.format(self.offset.0).as_bytes());
        out.extend_from_slice(b",\"accepted_at\":\"");
        // Digits, dashes, colons, a dot and letters: nothing to escape.
        self.accepted_at.write_rfc3339_micros(&mut out);
        out.extend_from_slice(b"\"}");
        out
    }
}

/// `s` as a JSON string: copied between quotes when nothing in it needs escaping (the server's
/// own ids, and most clients'), else escaped by `serde_json`.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // A Vec takes every write, and a str always serializes.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn rfc3339_micros<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&at.rfc3339_micros_display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn receipt(vote_id: String, poll_id: i64, partition: i32, offset: i64, at: i64) -> Receipt {
        Receipt {
            vote_id,
            poll_id,
            partition: Partition(partition),
            offset: Offset(offset),
            accepted_at: Timestamp(at),
        }
    }

    #[test]
    fn a_receipt_reads_as_its_fields() {
        let r = receipt("a1-7".into(), 12, 3, 40, 1_700_000_000_123_456);
        assert_eq!(
            String::from_utf8(r.to_json()).unwrap(),
            r#"{"vote_id":"a1-7","poll_id":12,"partition":3,"offset":40,"accepted_at":"2023-11-14T22:13:20.123456Z"}"#
        );
    }

    proptest! {
        /// Any vote id (quotes, backslashes, control characters, any Unicode), any numbers and any
        /// time up to the year 9999 (before the epoch shows as the epoch): the same bytes as
        /// serde_json writes for the derived `Serialize`.
        #[test]
        fn to_json_writes_what_serde_json_writes(
            vote_id in any::<String>(),
            poll_id in any::<i64>(),
            partition in any::<i32>(),
            offset in any::<i64>(),
            at in prop_oneof![i64::MIN..0, 0..253_402_300_800_000_000i64],
        ) {
            let r = receipt(vote_id, poll_id, partition, offset, at);
            prop_assert_eq!(r.to_json(), serde_json::to_vec(&r).unwrap());
        }
    }
}
