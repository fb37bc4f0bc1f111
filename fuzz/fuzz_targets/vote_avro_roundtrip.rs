//! Any vote through the vote encoder (`schemas::Vote::encode`), as the edge writes it to the log:
//! decode(encode(v)) == v, the bytes are exactly `apache-avro`'s, and no strict prefix of them
//! decodes (a torn record is never read as a vote).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use schemas::vote::{decode_vote, Vote};

#[derive(Debug, Arbitrary)]
struct Input {
    vote_id: String,
    poll_id: i64,
    voter_id: String,
    options: Vec<u32>,
    accepted_at_us: i64,
    source: String,
    /// Where to cut the encoding for the prefix check.
    cut: usize,
}

fuzz_target!(|input: Input| {
    let vote = Vote {
        vote_id: input.vote_id,
        poll_id: input.poll_id,
        voter_id: input.voter_id,
        // The schema's options are Avro `int`s (an option index is below 64 on the edge).
        options: input.options.iter().map(|o| o & i32::MAX as u32).collect(),
        accepted_at: schemas::Timestamp(input.accepted_at_us),
        source: input.source,
    };
    let mut bytes = Vec::new();
    vote.encode(&mut bytes);

    let decoded = decode_vote(&bytes).expect("an encoded vote decodes");
    assert_eq!(decoded.to_owned(), vote);

    let schema = apache_avro::Schema::parse_str(schemas::VOTE_AVSC).expect("vote.avsc parses");
    let reference = apache_avro::to_avro_datum(&schema, vote.to_avro_value()).expect("encodes");
    assert_eq!(bytes, reference, "the hand-written codec writes apache-avro's bytes");

    let cut = input.cut % bytes.len();
    assert!(
        decode_vote(&bytes[..cut]).is_err(),
        "a prefix of {cut} of {} bytes decoded",
        bytes.len()
    );
});
