//! Any bytes through the partial-tally decoder (`schemas::PartialTally::from_avro`), as every node
//! reads a record of the tallies topic: never a panic; what decodes re-encodes to the same
//! partial; and `apache-avro` reads the same datum from the bytes we accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::PartialTally;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = PartialTally::from_avro(data) else { return };
    let again = t.to_avro();
    assert_eq!(PartialTally::from_avro(&again).expect("a re-encoded partial decodes"), t);

    // The reference decoder reads the same datum (the bytes may carry trailing ones, and their
    // arrays any block layout: compared as values, not bytes).
    let schema = apache_avro::Schema::parse_str(schemas::TALLY_AVSC).expect("tally.avsc parses");
    let mut reader = data;
    let reference = apache_avro::from_avro_datum(&schema, &mut reader, None)
        .unwrap_or_else(|e| panic!("apache-avro refuses a partial we accept ({t:?}): {e}"));
    let ours = apache_avro::from_avro_datum(&schema, &mut &again[..], None).unwrap();
    assert_eq!(reference, ours);
});
