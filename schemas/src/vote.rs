//! The vote record: Avro binary encoding (schema `avro/vote.avsc`) and the partitioner.
//!
//! The codec is written by hand because it runs once per vote on the edge and in the processor;
//! `tests::matches_apache_avro` proves it produces the same bytes as `apache-avro`.

use crate::voter::QualifiedVoter;
use crate::{DecodeError, Partition, PollId, Timestamp};

/// An owned vote, as a client of the log would build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub vote_id: String,
    pub poll_id: PollId,
    pub voter_id: String,
    pub options: Vec<u32>,
    pub accepted_at: Timestamp,
    pub source: String,
}

/// A vote borrowed from an encoded record: decoding allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct VoteRef<'a> {
    pub vote_id: &'a str,
    pub poll_id: PollId,
    pub voter_id: &'a str,
    options_raw: &'a [u8],
    pub option_count: usize,
    pub accepted_at: Timestamp,
    pub source: &'a str,
}

impl<'a> VoteRef<'a> {
    /// The chosen option indexes, decoded lazily from the record.
    pub fn options(&self) -> impl Iterator<Item = i64> + Clone + 'a {
        let mut rest = self.options_raw;
        (0..self.option_count).map(move |_| read_long(&mut rest).unwrap_or(-1))
    }

    pub fn to_owned(&self) -> Vote {
        Vote {
            vote_id: self.vote_id.to_owned(),
            poll_id: self.poll_id,
            voter_id: self.voter_id.to_owned(),
            options: self.options().map(|o| o as u32).collect(),
            accepted_at: self.accepted_at,
            source: self.source.to_owned(),
        }
    }
}

impl Vote {
    /// The vote as an `apache-avro` value: the reference encoding the hand-written codec is
    /// checked against (tests) and measured against (`cargo bench -p processor`).
    pub fn to_avro_value(&self) -> apache_avro::types::Value {
        use apache_avro::types::Value;
        Value::Record(vec![
            ("vote_id".into(), Value::String(self.vote_id.clone())),
            ("poll_id".into(), Value::Long(self.poll_id)),
            ("voter_id".into(), Value::String(self.voter_id.clone())),
            (
                "options".into(),
                Value::Array(self.options.iter().map(|&o| Value::Int(o as i32)).collect()),
            ),
            (
                "accepted_at".into(),
                Value::TimestampMicros(self.accepted_at.micros()),
            ),
            ("source".into(), Value::String(self.source.clone())),
        ])
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_vote(
            out,
            &self.vote_id,
            self.poll_id,
            QualifiedVoter::raw(&self.voter_id),
            &self.options,
            self.accepted_at,
            &self.source,
        )
    }
}

/// Appends the Avro binary encoding of a vote to `out` (the voter id is written whole: namespace
/// and id).
pub fn encode_vote(
    out: &mut Vec<u8>,
    vote_id: &str,
    poll_id: PollId,
    voter: QualifiedVoter<'_>,
    options: &[u32],
    accepted_at: Timestamp,
    source: &str,
) {
    write_str(out, vote_id);
    write_long(out, poll_id);
    write_long(out, voter.len() as i64);
    voter.write_to(out);
    if !options.is_empty() {
        write_long(out, options.len() as i64);
        for &o in options {
            write_long(out, o as i64);
        }
    }
    write_long(out, 0);
    write_long(out, accepted_at.micros());
    write_str(out, source);
}

/// Decodes a vote without copying its strings.
pub fn decode_vote(mut buf: &[u8]) -> Result<VoteRef<'_>, DecodeError> {
    let b = &mut buf;
    let vote_id = read_str(b)?;
    let poll_id = read_long(b)?;
    let voter_id = read_str(b)?;
    let (options_raw, option_count) = read_long_array(b)?;
    let accepted_at = Timestamp(read_long(b)?);
    let source = read_str(b)?;
    Ok(VoteRef {
        vote_id,
        poll_id,
        voter_id,
        options_raw,
        option_count,
        accepted_at,
        source,
    })
}

/// An Avro array of ints/longs written as one block (count, items, 0), as every writer of votes does.
fn read_long_array<'a>(b: &mut &'a [u8]) -> Result<(&'a [u8], usize), DecodeError> {
    let n = read_long(b)?;
    if n == 0 {
        return Ok((&[], 0));
    }
    if n < 0 {
        return Err(DecodeError::Avro(
            "array blocks with byte sizes are not supported".into(),
        ));
    }
    let items = *b;
    for _ in 0..n {
        read_long(b)?;
    }
    let raw = &items[..items.len() - b.len()];
    if read_long(b)? != 0 {
        return Err(DecodeError::Avro(
            "multi-block option arrays are not supported".into(),
        ));
    }
    Ok((raw, n as usize))
}

/// The key of a vote in the votes topic: poll id (big endian) then voter id (with its namespace).
pub fn vote_key<'a>(poll_id: PollId, voter: impl Into<QualifiedVoter<'a>>, out: &mut Vec<u8>) {
    out.extend_from_slice(&poll_id.to_be_bytes());
    voter.into().write_to(out);
}

/// The votes-topic partition of a (poll, voter): every vote of one voter in one poll lands in one
/// partition, so deduplication is local to a partition; one poll spreads over all partitions.
pub fn partition_for<'a>(
    poll_id: PollId,
    voter: impl Into<QualifiedVoter<'a>>,
    partitions: u32,
) -> Partition {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&poll_id.to_be_bytes());
    for piece in voter.into().pieces() {
        h.update(piece.as_bytes());
    }
    Partition::at((h.digest() % partitions.max(1) as u64) as usize)
}

pub(crate) fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn read_long(b: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut z: u64 = 0;
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = b.split_first().ok_or(DecodeError::Truncated)?;
        *b = rest;
        if shift >= 64 {
            return Err(DecodeError::BadVarint);
        }
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
}

fn read_str<'a>(b: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let len = read_long(b)?;
    if len < 0 {
        return Err(DecodeError::NegativeLength);
    }
    let len = len as usize;
    if b.len() < len {
        return Err(DecodeError::Truncated);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    std::str::from_utf8(s).map_err(|_| DecodeError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_bytes(v: &Vote) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(crate::VOTE_AVSC).unwrap();
        apache_avro::to_avro_datum(&schema, v.to_avro_value()).unwrap()
    }

    fn arb_vote() -> impl Strategy<Value = Vote> {
        (
            ".{0,40}",
            any::<i64>(),
            ".{0,40}",
            proptest::collection::vec(0u32..i32::MAX as u32, 0..6),
            any::<i64>(),
            "[a-z]{0,8}",
        )
            .prop_map(
                |(vote_id, poll_id, voter_id, options, accepted_at, source)| Vote {
                    vote_id,
                    poll_id,
                    voter_id,
                    options,
                    accepted_at: Timestamp(accepted_at),
                    source,
                },
            )
    }

    proptest! {
        #[test]
        fn matches_apache_avro(v in arb_vote()) {
            let mut ours = Vec::new();
            v.encode(&mut ours);
            prop_assert_eq!(&ours, &reference_bytes(&v));
        }

        #[test]
        fn roundtrips(v in arb_vote()) {
            let mut buf = Vec::new();
            v.encode(&mut buf);
            prop_assert_eq!(decode_vote(&buf).unwrap().to_owned(), v);
        }

        #[test]
        fn truncated_input_is_an_error_not_a_panic(v in arb_vote(), cut in 0usize..200) {
            let mut buf = Vec::new();
            v.encode(&mut buf);
            if cut < buf.len() {
                // Any prefix either fails to decode or decodes to something; it never panics.
                let _ = decode_vote(&buf[..cut]);
            }
        }

        #[test]
        fn partition_is_stable_and_in_range(poll in any::<i64>(), voter in ".{0,30}", n in 1u32..64) {
            let p = partition_for(poll, &voter, n);
            prop_assert!(p.index() < n as usize);
            prop_assert_eq!(p, partition_for(poll, &voter, n));
        }

        /// A namespaced voter is keyed, placed and encoded exactly as its whole id would be.
        #[test]
        fn qualified_voter_is_its_whole_id(poll in any::<i64>(), agg in "[a-z]{1,6}", id in ".{0,20}", n in 1u32..64) {
            use crate::voter::VoterNamespace;
            let q = QualifiedVoter::new(VoterNamespace::Aggregator(&agg), &id);
            let whole = format!("agg:{agg}:{id}");
            prop_assert_eq!(partition_for(poll, q, n), partition_for(poll, &whole, n));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            vote_key(poll, q, &mut a);
            vote_key(poll, &whole, &mut b);
            prop_assert_eq!(&a, &b);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_vote(&mut a, "v", poll, q, &[1], Timestamp(5), "batch");
            encode_vote(&mut b, "v", poll, QualifiedVoter::raw(&whole), &[1], Timestamp(5), "batch");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(decode_vote(&a).unwrap().voter_id, whole.as_str());
        }
    }

    #[test]
    fn one_poll_spreads_over_every_partition() {
        let mut seen = [0u32; 8];
        for i in 0..10_000 {
            seen[partition_for(7, &format!("voter-{i}"), 8).index()] += 1;
        }
        for n in seen {
            assert!(
                n > 1_000,
                "partition share {n} of 10000 is too uneven: {seen:?}"
            );
        }
    }
}
