//! Which lane carries each submission of the open loop.
//!
//! A lane is one connection with one request in flight, so a submission handed to a busy lane
//! waits for that lane's answer even while other lanes are idle. Spread over 128 lanes by a hash
//! of their pair, 50,000 votes/s kept each lane busy about 0.8 of the time, and most of a vote's
//! latency from its due time was that wait, not the server's answer (BENCHMARKS.md, "2026-12-05
//! (eighth session)"): a wait no voter has, each on a connection of their own.
//!
//! So a fresh pair goes to an idle lane, as a pool of connections would send it: the first of up
//! to [`LOOK_AT`] lanes, round robin, with nothing outstanding, else the one of them with the
//! least. Every later submission of that pair (a duplicate, a retry) goes to the lane its first
//! one went to, so a pair's submissions are still sent in plan order, one after the other, and no
//! two lanes' expectations share a pair (`verify.rs`). Where the pairs went is kept beside the
//! plan's own memory of the pairs and submissions it may hand out again ([`Recall`]), so it is
//! bounded as that is. The closed loop keeps every lane busy and places by the pair's hash
//! (`plan::lane_of`).

use crate::plan::{Origin, Recall};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// A fresh pair's lane is chosen among this many, round robin.
pub const LOOK_AT: usize = 16;

/// A lane whose server stopped answering counts as holding this many more: it gives the open
/// loop's due submissions up at once, so it would look idle, and fresh pairs go to lanes that
/// answer while any does.
const FAILING: usize = 1 << 20;

/// Submissions handed to one lane and not yet final (answered, refused or given up), on a cache
/// line of its own: the dispatcher reads every lane's while each lane writes its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Outstanding {
    held: AtomicUsize,
    failing: AtomicBool,
}

impl Outstanding {
    /// One per lane.
    pub fn per_lane(lanes: usize) -> Arc<[Outstanding]> {
        (0..lanes).map(|_| Outstanding::default()).collect()
    }

    /// `n` submissions of the lane are final; `failing`: its server stopped answering it.
    pub fn done(&self, n: usize, failing: bool) {
        self.held.fetch_sub(n, Relaxed);
        self.failing.store(failing, Relaxed);
    }

    /// What the lane holds, and [`FAILING`] more while its server does not answer it.
    fn load(&self) -> usize {
        let failing = if self.failing.load(Relaxed) {
            FAILING
        } else {
            0
        };
        self.held.load(Relaxed) + failing
    }
}

/// The open loop's dispatcher's side: places each submission as the plan hands it out.
pub struct Placer {
    outstanding: Arc<[Outstanding]>,
    /// Where the round robin looks first.
    next: usize,
    /// The lane of the pair in each slot of the plan's recent pairs.
    pair_lane: Vec<u32>,
    /// The lane of the submission in each slot of the plan's recent submissions.
    sub_lane: Vec<u32>,
}

impl Placer {
    pub fn new(outstanding: Arc<[Outstanding]>) -> Self {
        assert!(!outstanding.is_empty(), "at least one lane");
        Self {
            outstanding,
            next: 0,
            pair_lane: Vec::new(),
            sub_lane: Vec::new(),
        }
    }

    /// The lane of the submission the plan handed out last (`recall`: [`crate::plan::Plan::recall`]),
    /// counted as outstanding there.
    pub fn place(&mut self, recall: Recall) -> usize {
        let known = match recall.origin {
            Origin::Fresh(_) => None,
            Origin::Duplicate(slot) => self.pair_lane.get(slot),
            Origin::Retry(slot) => self.sub_lane.get(slot),
        };
        // (A pair not placed before is one whose first submission the plan handed out after the
        // run's end: it may go anywhere.)
        let lane = match known {
            Some(&lane) => lane as usize,
            None => self.idle_lane(),
        };
        if let Origin::Fresh(slot) = recall.origin {
            keep(&mut self.pair_lane, slot, lane);
        }
        keep(&mut self.sub_lane, recall.sub, lane);
        self.outstanding[lane].held.fetch_add(1, Relaxed);
        lane
    }

    /// The first lane with nothing outstanding among the next [`LOOK_AT`], else the least busy.
    fn idle_lane(&mut self) -> usize {
        let lanes = self.outstanding.len();
        let (mut least, mut lane) = (usize::MAX, self.next);
        for k in 0..LOOK_AT.min(lanes) {
            let at = (self.next + k) % lanes;
            let n = self.outstanding[at].load();
            if n < least {
                (least, lane) = (n, at);
                if n == 0 {
                    break;
                }
            }
        }
        self.next = (lane + 1) % lanes;
        lane
    }
}

/// Notes `lane` in `table[slot]`, growing the table as the plan's memory grows.
fn keep(table: &mut Vec<u32>, slot: usize, lane: usize) {
    if slot >= table.len() {
        table.resize(slot + 1, 0);
    }
    table[slot] = lane as u32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, PlanConfig};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn fresh(slot: usize) -> Recall {
        Recall {
            origin: Origin::Fresh(slot),
            sub: slot,
        }
    }

    #[test]
    fn a_fresh_pair_goes_to_an_idle_lane_else_to_the_least_busy() {
        let outstanding = Outstanding::per_lane(4);
        let mut placer = Placer::new(outstanding.clone());
        // Each lane idle in turn.
        let first: Vec<_> = (0..4).map(|i| placer.place(fresh(i))).collect();
        assert_eq!(first, vec![0, 1, 2, 3]);
        // Lane 2 answers: it is the only idle one.
        outstanding[2].done(1, false);
        assert_eq!(placer.place(fresh(4)), 2);
        // None idle (1, 1, 1, 3 outstanding), the round robin at lane 3: the least busy after
        // it, lane 0.
        outstanding[3].held.fetch_add(2, Relaxed);
        assert_eq!(placer.place(fresh(5)), 0);
        assert_eq!(outstanding[0].load(), 2);
    }

    #[test]
    fn duplicates_and_retries_follow_their_pair_even_to_a_busy_lane() {
        let outstanding = Outstanding::per_lane(8);
        let mut placer = Placer::new(outstanding.clone());
        let lane = placer.place(fresh(0));
        for _ in 0..3 {
            placer.place(Recall {
                origin: Origin::Fresh(1),
                sub: 1,
            });
        }
        let dup = placer.place(Recall {
            origin: Origin::Duplicate(0),
            sub: 2,
        });
        let retry = placer.place(Recall {
            origin: Origin::Retry(2),
            sub: 3,
        });
        assert_eq!((dup, retry), (lane, lane));
        assert_eq!(
            outstanding[lane].load(),
            3,
            "the pair's lane holds all three"
        );
    }

    #[test]
    fn a_lane_whose_server_stopped_answering_gets_no_fresh_pairs_while_another_answers() {
        let outstanding = Outstanding::per_lane(3);
        let mut placer = Placer::new(outstanding.clone());
        let first: Vec<_> = (0..3).map(|i| placer.place(fresh(i))).collect();
        assert_eq!(first, vec![0, 1, 2]);
        // Lane 0 gave its submission up (failing), lanes 1 and 2 still wait for answers.
        outstanding[0].done(1, true);
        let next: Vec<_> = (3..7).map(|i| placer.place(fresh(i))).collect();
        assert!(!next.contains(&0), "{next:?}");
        // Once it answers again it is idle like any other.
        outstanding[0].done(0, false);
        assert_eq!(placer.place(fresh(7)), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// However busy the lanes are when each submission comes, every submission of a pair
        /// goes to one lane, and no lane is handed a fresh pair while a lane it looked at was
        /// idle.
        #[test]
        fn a_pairs_submissions_share_one_lane(
            seed in any::<u64>(),
            voters in 1u32..2_000,
            polls in 1usize..4,
            dup in 0.0f64..0.5,
            retry in 0.0f64..0.3,
            lanes in 1usize..40,
            answers in proptest::collection::vec(0usize..40, 0..3_000),
        ) {
            let mut plan = Plan::new(PlanConfig {
                seed, voters, options: vec![3; polls], duplicate_share: dup,
                retry_share: retry, total: Some(answers.len() as u64),
            });
            let outstanding = Outstanding::per_lane(lanes);
            let mut placer = Placer::new(outstanding.clone());
            let mut lane_of_pair: HashMap<(u32, u32), usize> = HashMap::new();
            for &answered in &answers {
                // A lane answers one of its submissions before the next is placed.
                let l = answered % lanes;
                if outstanding[l].load() > 0 {
                    outstanding[l].done(1, false);
                }
                let s = plan.next().expect("as long as the answers");
                let idle_before = (0..lanes).filter(|&l| outstanding[l].load() == 0).count();
                let lane = placer.place(plan.recall());
                let first = *lane_of_pair.entry((s.poll, s.voter)).or_insert(lane);
                prop_assert_eq!(first, lane, "pair {:?} moved lanes", (s.poll, s.voter));
                if s.kind == crate::plan::Kind::Fresh && lanes <= LOOK_AT && idle_before > 0 {
                    prop_assert_eq!(outstanding[lane].load(), 1, "a fresh pair went to a busy lane");
                }
            }
        }
    }
}
