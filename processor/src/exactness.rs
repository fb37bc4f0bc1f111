//! Counting and merging together (property tests): the partials of this crate's counters, merged
//! by `results::PollResults` in any order and with repetition, give the exact count.

use crate::pipeline::{PartitionCounter, WindowConfig};
use proptest::prelude::*;
use results::PollResults;
use schemas::vote::decode_vote;
use schemas::PartialTally;
use schemas::{partition_for, Offset, Partition, PollRules, Timestamp, Vote};
use std::collections::HashMap;

const PARTITIONS: u32 = 3;

fn rules() -> PollRules {
    PollRules {
        options: 3,
        max_choices: 1,
        open_at: Some(Timestamp(0)),
        close_at: None,
    }
}

/// Runs votes (voter, option) through per-partition counters, taking partials at the given
/// cut points; returns every partial emitted, in emission order.
fn emit_all(votes: &[(u8, u8)], cuts: &[usize]) -> Vec<PartialTally> {
    let mut counters: Vec<_> = Partition::all(PARTITIONS)
        .map(|p| PartitionCounter::new(p, WindowConfig::default()))
        .collect();
    let mut offsets = vec![Offset::ZERO; PARTITIONS as usize];
    let mut out = Vec::new();
    for (i, &(voter, option)) in votes.iter().enumerate() {
        let voter = format!("v{voter}");
        let p = partition_for(1, &voter, PARTITIONS).index();
        let mut buf = Vec::new();
        Vote {
            vote_id: format!("{i}"),
            poll_id: 1,
            voter_id: voter,
            options: vec![option as u32 % 4],
            accepted_at: Timestamp(1_000 + i as i64 * 10_000),
            source: "t".into(),
        }
        .encode(&mut buf);
        counters[p].apply(offsets[p], &decode_vote(&buf).unwrap(), Some(&rules()));
        offsets[p] = offsets[p].next();
        if cuts.contains(&i) {
            for c in counters.iter_mut() {
                out.extend(c.take_partials(Timestamp(0)));
            }
        }
    }
    for c in counters.iter_mut() {
        out.extend(c.take_partials(Timestamp(0)));
    }
    out
}

/// The reference: a voter's first valid vote counts (option 3 is invalid for 3 options).
fn expected(votes: &[(u8, u8)]) -> Vec<i64> {
    let mut first: HashMap<u8, u8> = HashMap::new();
    for &(voter, option) in votes {
        if option % 4 < 3 {
            first.entry(voter).or_insert(option % 4);
        }
    }
    let mut counts = vec![0i64; 3];
    for o in first.values() {
        counts[*o as usize] += 1;
    }
    counts
}

proptest! {
    #[test]
    fn any_order_and_repetition_of_partials_gives_the_exact_count(
        votes in proptest::collection::vec((0u8..40, 0u8..4), 1..200),
        cuts in proptest::collection::vec(0usize..200, 0..10),
        shuffle_seed in any::<u64>(),
        repeat in 1usize..3,
    ) {
        let partials = emit_all(&votes, &cuts);
        // Deliver every partial `repeat` times in a scrambled order (zombies, redelivery).
        let mut delivered: Vec<PartialTally> = (0..repeat).flat_map(|_| partials.clone()).collect();
        let mut s = shuffle_seed | 1;
        for i in (1..delivered.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            delivered.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut results = PollResults::default();
        let mut last_version = 0;
        let mut last_total = 0;
        for t in delivered {
            results.apply(t);
            prop_assert!(results.version() >= last_version, "version went back");
            last_version = results.version();
            let total: i64 = results.counts(3).iter().sum();
            prop_assert!(total >= last_total, "total went back");
            last_total = total;
        }
        prop_assert_eq!(results.counts(3), expected(&votes));
        prop_assert_eq!(results.version(), votes.len() as i64);
        // Timeline agrees with the counted votes that were on time.
        let windowed: i64 = results.timeline().iter().map(|w| w.votes).sum();
        prop_assert_eq!(windowed + results.late_for_window(), results.counts(3).iter().sum::<i64>());
    }

    #[test]
    fn replay_is_deterministic(votes in proptest::collection::vec((0u8..40, 0u8..4), 1..150), cuts in proptest::collection::vec(0usize..150, 0..5)) {
        let strip = |v: Vec<PartialTally>| v.into_iter().map(|mut t| { t.windows.clear(); t }).collect::<Vec<_>>();
        // The final partial of each partition does not depend on where the flushes happened.
        let a = strip(emit_all(&votes, &cuts));
        let b = strip(emit_all(&votes, &[]));
        let last = |v: &[PartialTally], p: Partition| v.iter().rev().find(|t| t.partition == p).cloned();
        for p in Partition::all(PARTITIONS) {
            prop_assert_eq!(last(&a, p), last(&b, p));
        }
    }
}
