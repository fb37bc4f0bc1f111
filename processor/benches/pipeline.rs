//! `cargo bench -p processor`: the hot path's cost, measured as ratios within one run so a noisy
//! machine does not matter: the hand-written Avro vote codec against `apache-avro` (the baseline),
//! and votes per second through dedupe + counting + windows, and partials through the merge.

use apache_avro::Schema;
use processor::{PartitionCounter, WindowConfig};
use results::PollResults;
use schemas::vote::decode_vote;
use schemas::{Offset, Partition, PollRules, Timestamp, Vote};
use std::hint::black_box;
use std::time::Instant;

const N: usize = 300_000;

fn votes() -> Vec<Vote> {
    (0..N)
        .map(|i| Vote {
            vote_id: format!("3f2a9c1d5e6b7a80-{i}"),
            poll_id: 1 + (i % 10) as i64,
            // 20% duplicates: every fifth vote repeats an earlier voter.
            voter_id: format!("voter-{}", if i % 5 == 4 { i / 2 } else { i }),
            options: vec![(i % 4) as u32],
            accepted_at: Timestamp(1_795_000_000_000_000 + i as i64 * 20),
            source: "web".into(),
        })
        .collect()
}

fn timed(label: &str, n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{label:<44} {:>12.0} /s  ({:.1} ns each)",
        n as f64 / secs,
        secs * 1e9 / n as f64
    );
    secs
}

fn main() {
    let votes = votes();
    let schema = Schema::parse_str(schemas::VOTE_AVSC).unwrap();
    println!("{N} votes, 10 polls, 4 options, 20% duplicates\n");

    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(N);
    let ours_enc = timed("encode: hand-written Avro", N, || {
        for v in &votes {
            let mut b = Vec::with_capacity(64);
            v.encode(&mut b);
            encoded.push(b);
        }
    });
    let base_enc = timed("encode: apache-avro (baseline)", N, || {
        for v in &votes {
            black_box(apache_avro::to_avro_datum(&schema, v.to_avro_value()).unwrap());
        }
    });
    let ours_dec = timed("decode: hand-written, zero-copy", N, || {
        for b in &encoded {
            black_box(decode_vote(b).unwrap());
        }
    });
    let base_dec = timed("decode: apache-avro (baseline)", N, || {
        for b in &encoded {
            black_box(apache_avro::from_avro_datum(&schema, &mut &b[..], None).unwrap());
        }
    });

    let rules = PollRules {
        options: 4,
        max_choices: 1,
        open_at: Some(Timestamp(0)),
        close_at: None,
    };
    let mut counter = PartitionCounter::new(Partition(0), WindowConfig::default());
    timed("count: decode + judge + dedupe + window", N, || {
        for (offset, b) in encoded.iter().enumerate() {
            let v = decode_vote(b).unwrap();
            black_box(counter.apply(Offset(offset as i64), &v, Some(&rules)));
        }
    });
    let partials = counter.take_partials(Timestamp(0));
    let mut results = PollResults::default();
    let rounds = 100_000;
    timed(
        "merge: apply a partial (latest offset wins)",
        rounds,
        || {
            for i in 0..rounds {
                let mut t = partials[i % partials.len()].clone();
                t.offset = Offset(t.offset.0 + i as i64);
                t.partition = Partition((i % 8) as i32);
                black_box(results.apply(t));
            }
        },
    );
    println!(
        "\nhand-written codec vs apache-avro: encode {:.1}x faster, decode {:.1}x faster",
        base_enc / ours_enc,
        base_dec / ours_dec
    );
}
