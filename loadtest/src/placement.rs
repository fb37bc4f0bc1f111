//! Which lane carries each submission of the open loop.
//!
//! A lane is one connection with one request in flight, so a submission handed to a busy lane
//! waits for that lane's answer even while other lanes are idle. Spread over 128 lanes by a hash
//! of their pair, 50,000 votes/s kept each lane busy about 0.8 of the time, and by estimate most
//! of a vote's latency from its due time was that wait, not the server's answer (BENCHMARKS.md,
//! "2026-12-05 (eighth session)"): a wait no voter has, each on a connection of their own.
//!
//! So a fresh (poll, voter) pair goes to an idle lane, as a pool of connections would send it:
//! the first of up to [`LOOK_AT`] lanes, round robin, with nothing outstanding, else the one of
//! them with the least. Every later submission of that pair (a duplicate, a retry) goes to the
//! lane its first one went to, so a pair's submissions are still sent in plan order, one after
//! the other, and no two lanes' expectations share a pair (`verify.rs`). Where the pairs went is
//! kept beside the plan's own memory of the pairs and submissions it may hand out again
//! ([`Recall`]), so it is bounded as that is. The closed loop keeps every lane busy and places by
//! the pair's hash (`plan::lane_of`).

use crate::plan::{Origin, Recall};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A fresh pair's lane is chosen among this many, round robin.
pub const LOOK_AT: usize = 16;

/// A lane whose server stopped answering gives the open loop's due submissions up at once until
/// its next probe (once a second), so it would look idle. Until that probe is due it counts as
/// holding this many more, so a fresh pair goes to another of the lanes looked at, one that
/// answers; once it is due, the next fresh pair to reach it is its probe.
const FAILING: usize = 1 << 20;

/// Submissions handed to one lane and not yet final (answered, refused or given up), and when its
/// failing server is next probed, on a cache line of its own: the dispatcher reads every lane's
/// while each lane writes its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Outstanding {
    held: AtomicUsize,
    /// [`micros`] of the next probe while the lane's server does not answer it; 0 while it does.
    probe_due: AtomicU64,
}

impl Outstanding {
    /// One per lane.
    pub fn per_lane(lanes: usize) -> Arc<[Outstanding]> {
        (0..lanes).map(|_| Outstanding::default()).collect()
    }

    /// `n` submissions of the lane are final; `probe_due`: its server stopped answering it, and
    /// it probes again then.
    pub fn done(&self, n: usize, probe_due: Option<Instant>) {
        self.held.fetch_sub(n, Relaxed);
        self.probe_due.store(probe_due.map_or(0, micros), Relaxed);
    }

    /// What the lane holds at `now` ([`micros`]), and [`FAILING`] more until its probe is due.
    fn load(&self, now: u64) -> usize {
        let failing = match self.probe_due.load(Relaxed) > now {
            true => FAILING,
            false => 0,
        };
        self.held.load(Relaxed) + failing
    }
}

/// Microseconds from this clock's first reading to `at`, at least 1 (0 stands for none).
fn micros(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_micros() as u64 + 1
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

    /// The lane of the submission the plan handed out last (`recall`:
    /// [`crate::plan::Plan::recall`]), counted as outstanding there. Every submission the plan
    /// hands out must be placed, in order.
    pub fn place(&mut self, recall: Recall) -> usize {
        let placed =
            "the plan draws again only from slots of submissions it handed out, all placed";
        let lane = match recall.origin {
            Origin::Fresh(_) => self.idle_lane(),
            Origin::Duplicate(slot) => *self.pair_lane.get(slot).expect(placed) as usize,
            Origin::Retry(slot) => *self.sub_lane.get(slot).expect(placed) as usize,
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
        let now = micros(Instant::now());
        let (mut least, mut lane) = (usize::MAX, self.next);
        for k in 0..LOOK_AT.min(lanes) {
            let at = (self.next + k) % lanes;
            let n = self.outstanding[at].load(now);
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
        outstanding[2].done(1, None);
        assert_eq!(placer.place(fresh(4)), 2);
        // None idle (1, 1, 1, 3 outstanding), the round robin at lane 3: the least busy after
        // it, lane 0.
        outstanding[3].held.fetch_add(2, Relaxed);
        assert_eq!(placer.place(fresh(5)), 0);
        assert_eq!(outstanding[0].load(0), 2);
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
            outstanding[lane].load(0),
            3,
            "the pair's lane holds all three"
        );
    }

    #[test]
    fn a_failing_lane_gets_no_fresh_pairs_until_its_probe_is_due() {
        let outstanding = Outstanding::per_lane(3);
        let mut placer = Placer::new(outstanding.clone());
        let first: Vec<_> = (0..3).map(|i| placer.place(fresh(i))).collect();
        assert_eq!(first, vec![0, 1, 2]);
        // Lane 0 gave its submission up and probes in an hour; lanes 1 and 2 still wait for
        // answers.
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        outstanding[0].done(1, Some(later));
        let next: Vec<_> = (3..7).map(|i| placer.place(fresh(i))).collect();
        assert!(!next.contains(&0), "{next:?}");
        // Once its probe is due it is idle like any other: the next fresh pair probes.
        outstanding[0].done(0, Some(Instant::now()));
        assert_eq!(placer.place(fresh(7)), 0);
    }

    /// Far more submissions than the plan remembers (4,096), and more fresh pairs (about 70,000)
    /// than its recent pairs (65,536): the tables beside its memory are overwritten as it is, and
    /// every pair keeps its lane.
    #[test]
    fn pairs_keep_their_lane_after_the_plans_memory_wraps() {
        let total = 100_000;
        let mut plan = Plan::new(PlanConfig {
            seed: 11,
            voters: 1_000_000,
            options: vec![3],
            duplicate_share: 0.2,
            retry_share: 0.1,
            total: Some(total),
        });
        let outstanding = Outstanding::per_lane(32);
        let mut placer = Placer::new(outstanding.clone());
        let mut answers = crate::plan::SplitMix64::new(5);
        let mut lane_of_pair: HashMap<(u32, u32), usize> = HashMap::new();
        let mut wrapped = false;
        while let Some(s) = plan.next() {
            for _ in 0..2 {
                let l = answers.below(32) as usize;
                if outstanding[l].load(0) > 0 {
                    outstanding[l].done(1, None);
                }
            }
            let recall = plan.recall();
            wrapped |= matches!(recall.origin, Origin::Fresh(slot) if slot == 0 && s.seq > 0);
            let lane = placer.place(recall);
            let first = *lane_of_pair.entry((s.poll, s.voter)).or_insert(lane);
            assert_eq!(
                first,
                lane,
                "pair {:?} moved lanes at {}",
                (s.poll, s.voter),
                s.seq
            );
        }
        assert!(wrapped, "the recent pairs wrapped");
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
                if outstanding[l].load(0) > 0 {
                    outstanding[l].done(1, None);
                }
                let s = plan.next().expect("as long as the answers");
                let idle_before = (0..lanes).filter(|&l| outstanding[l].load(0) == 0).count();
                let lane = placer.place(plan.recall());
                let first = *lane_of_pair.entry((s.poll, s.voter)).or_insert(lane);
                prop_assert_eq!(first, lane, "pair {:?} moved lanes", (s.poll, s.voter));
                if s.kind == crate::plan::Kind::Fresh && lanes <= LOOK_AT && idle_before > 0 {
                    let held = outstanding[lane].load(0);
                    prop_assert_eq!(held, 1, "a fresh pair went to a busy lane");
                }
            }
        }
    }
}
