//! Any bytes through the vote decoder (`schemas::vote::decode_vote`), as the processor reads a
//! record of the votes topic: never a panic; what decodes re-encodes to the same vote; and the
//! hand-written decoder agrees with `apache-avro` on every record it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::vote::{decode_vote, Vote};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = decode_vote(data) else { return };
    let options: Vec<i64> = v.options().collect();
    assert_eq!(options.len(), v.option_count, "options() yields option_count items");
    if options.iter().any(|&o| !(0..=i32::MAX as i64).contains(&o)) {
        // Outside the schema's `int`: the processor judges such a vote invalid (no such option).
        return;
    }
    let owned = v.to_owned();
    assert_eq!(
        owned.options,
        options.iter().map(|&o| o as u32).collect::<Vec<_>>()
    );

    // decode(encode(v)) == v
    let mut again = Vec::new();
    owned.encode(&mut again);
    let back = decode_vote(&again).expect("a re-encoded vote decodes").to_owned();
    assert_eq!(back, owned);

    // The reference decoder reads the same vote (the record may carry trailing bytes; the log's
    // framing gives each record its exact length, and both decoders stop at the vote's end).
    let schema = apache_avro::Schema::parse_str(schemas::VOTE_AVSC).expect("vote.avsc parses");
    let mut reader = data;
    let reference = apache_avro::from_avro_datum(&schema, &mut reader, None)
        .unwrap_or_else(|e| panic!("apache-avro refuses a record we accept ({owned:?}): {e}"));
    assert_eq!(reference, Vote::to_avro_value(&owned).resolve(&schema).unwrap());
});
