//! The submission plan: a pure, seeded, lazily generated sequence of vote submissions.
//!
//! Submission `seq` (0, 1, 2, …) is one of three kinds:
//! - **fresh**: a (poll, voter) pair that has not voted yet, with a random option;
//! - **duplicate** (`--duplicate-share`): a pair that already voted votes again, with a new vote id
//!   and a random option (the server must count only the pair's first vote);
//! - **retry** (`--retry-share`): an earlier submission resent unchanged (same vote id, same
//!   option), as a client does that lost an answer.
//!
//! Fresh pairs are visited in a seeded pseudo-random order (an affine permutation of
//! `0..voters × polls`) without keeping a set; when they run out, fresh draws become duplicates.
//! Duplicates pick from the last [`RECENT_PAIRS`] pairs and retries from the last
//! [`RECENT_SUBMISSIONS`] submissions, so memory stays bounded on endless (`--duration`) runs.
//!
//! Nothing here does I/O or reads a clock: the same [`PlanConfig`] always yields the same plan,
//! whatever the machine (the generator is SplitMix64, written out here, not a library's RNG
//! whose stream could change between versions). Vote ids are plan numbers: a fresh or duplicate
//! submission's vote number is its own `seq`; a retry's is the number of the submission it resends.

/// Pairs remembered as duplicate targets.
pub const RECENT_PAIRS: usize = 1 << 16;
/// Submissions remembered as retry targets.
pub const RECENT_SUBMISSIONS: usize = 1 << 12;

/// SplitMix64: tiny, fast, and its stream is fixed forever by its definition.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for the sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The SplitMix64 finalizer: a good 64-bit mixing function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The closed loop's lane (connection) for every submission of the pair (poll index, voter): all
/// of a pair's submissions go through one lane, so they are sent in plan order, one after the
/// other (the open loop's lanes: `placement.rs`).
pub fn lane_of(poll: u32, voter: u32, lanes: usize) -> usize {
    (mix64(((poll as u64) << 32) | voter as u64 ^ 0x5851_F42D_4C95_7F2D) % lanes as u64) as usize
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fresh,
    Duplicate,
    Retry,
}

/// One planned submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    /// Position in the plan (0-based); the open loop sends it at `start + seq / rate`.
    pub seq: u64,
    /// Index into the run's poll list (not the server's poll id).
    pub poll: u32,
    /// Voter number (the voter id sent is `<run id>-<voter>`).
    pub voter: u32,
    /// Option id, `0..options of the poll`.
    pub option: u16,
    /// Vote number (the vote id sent is `<run id>-<vote>`).
    pub vote: u64,
    pub kind: Kind,
}

/// Where the plan keeps its last submission's pair and the submission itself, among what it may
/// hand out again ([`Plan::recall`]): slots of its recent pairs ([`RECENT_PAIRS`]) and recent
/// submissions ([`RECENT_SUBMISSIONS`]). A caller that keeps a table beside those slots can follow
/// every submission of a pair in bounded memory: the plan draws duplicates and retries from them
/// only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recall {
    /// What the submission's pair was found in.
    pub origin: Origin,
    /// The slot of the recent submissions the submission itself now holds.
    pub sub: usize,
}

/// Where a submission's pair comes from, in the plan's memory ([`Recall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A fresh pair, now in this slot of the recent pairs.
    Fresh(usize),
    /// A duplicate of the pair in this slot of the recent pairs.
    Duplicate(usize),
    /// A resend of the submission in this slot of the recent submissions.
    Retry(usize),
}

/// What the plan is made of.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub seed: u64,
    /// Distinct voters (`--voters`), at least 1.
    pub voters: u32,
    /// Number of options of each poll, by poll index (each at least 1).
    pub options: Vec<u16>,
    /// Share of submissions that are duplicates (new vote id, same pair).
    pub duplicate_share: f64,
    /// Share of submissions that resend an earlier submission unchanged.
    pub retry_share: f64,
    /// Total submissions; `None` for an endless plan.
    pub total: Option<u64>,
}

/// The plan as an iterator of [`Submission`]s.
#[derive(Debug, Clone)]
pub struct Plan {
    cfg: PlanConfig,
    rng: SplitMix64,
    seq: u64,
    /// Fresh pairs handed out so far, and how many exist.
    fresh_next: u64,
    fresh_total: u64,
    /// The affine permutation `k → (a·k + b) mod fresh_total`, `gcd(a, fresh_total) = 1`.
    perm_a: u64,
    perm_b: u64,
    recent_pairs: Vec<(u32, u32)>,
    recent_pairs_at: usize,
    recent_subs: Vec<Submission>,
    recent_subs_at: usize,
    recall: Recall,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Plan {
    pub fn new(cfg: PlanConfig) -> Self {
        assert!(cfg.voters > 0, "at least one voter");
        assert!(!cfg.options.is_empty(), "at least one poll");
        assert!(
            cfg.options.iter().all(|&o| o > 0),
            "every poll has an option"
        );
        let mut rng = SplitMix64::new(cfg.seed);
        let fresh_total = cfg.voters as u64 * cfg.options.len() as u64;
        let mut perm_a = rng.below(fresh_total).max(1);
        while gcd(perm_a, fresh_total) != 1 {
            perm_a = perm_a % fresh_total + 1;
        }
        let perm_b = rng.below(fresh_total);
        Self {
            cfg,
            rng,
            seq: 0,
            fresh_next: 0,
            fresh_total,
            perm_a,
            perm_b,
            recent_pairs: Vec::new(),
            recent_pairs_at: 0,
            recent_subs: Vec::new(),
            recent_subs_at: 0,
            recall: Recall {
                origin: Origin::Fresh(0),
                sub: 0,
            },
        }
    }

    /// Where the last submission handed out came from and is kept (see [`Recall`]).
    pub fn recall(&self) -> Recall {
        self.recall
    }

    pub fn config(&self) -> &PlanConfig {
        &self.cfg
    }

    /// The `seq` the next submission will have.
    pub fn position(&self) -> u64 {
        self.seq
    }

    fn random_option(&mut self, poll: u32) -> u16 {
        self.rng.below(self.cfg.options[poll as usize] as u64) as u16
    }

    /// The next fresh pair and the slot of the recent pairs it now holds.
    fn fresh_pair(&mut self) -> Option<((u32, u32), usize)> {
        if self.fresh_next >= self.fresh_total {
            return None;
        }
        let k = self.fresh_next;
        self.fresh_next += 1;
        let x = ((self.perm_a as u128 * k as u128 + self.perm_b as u128) % self.fresh_total as u128)
            as u64;
        let polls = self.cfg.options.len() as u64;
        let pair = ((x % polls) as u32, (x / polls) as u32);
        let slot = if self.recent_pairs.len() < RECENT_PAIRS {
            self.recent_pairs.push(pair);
            self.recent_pairs.len() - 1
        } else {
            let slot = self.recent_pairs_at;
            self.recent_pairs[slot] = pair;
            self.recent_pairs_at = (slot + 1) % RECENT_PAIRS;
            slot
        };
        Some((pair, slot))
    }

    /// Keeps `s` among the recent submissions; the slot it holds.
    fn remember(&mut self, s: Submission) -> usize {
        if self.recent_subs.len() < RECENT_SUBMISSIONS {
            self.recent_subs.push(s);
            self.recent_subs.len() - 1
        } else {
            let slot = self.recent_subs_at;
            self.recent_subs[slot] = s;
            self.recent_subs_at = (slot + 1) % RECENT_SUBMISSIONS;
            slot
        }
    }
}

impl Iterator for Plan {
    type Item = Submission;

    fn next(&mut self) -> Option<Submission> {
        if self.cfg.total.is_some_and(|t| self.seq >= t) {
            return None;
        }
        let seq = self.seq;
        self.seq += 1;
        let draw = self.rng.next_f64();
        let want_retry = draw < self.cfg.retry_share;
        let want_duplicate = !want_retry && draw < self.cfg.retry_share + self.cfg.duplicate_share;
        let (s, origin) = if want_retry && !self.recent_subs.is_empty() {
            let i = self.rng.below(self.recent_subs.len() as u64) as usize;
            let s = Submission {
                seq,
                kind: Kind::Retry,
                ..self.recent_subs[i]
            };
            (s, Origin::Retry(i))
        } else {
            let fresh = if want_duplicate {
                None
            } else {
                self.fresh_pair()
            };
            let ((poll, voter), kind, origin) = match fresh {
                Some((pair, slot)) => (pair, Kind::Fresh, Origin::Fresh(slot)),
                None if !self.recent_pairs.is_empty() => {
                    let i = self.rng.below(self.recent_pairs.len() as u64) as usize;
                    (self.recent_pairs[i], Kind::Duplicate, Origin::Duplicate(i))
                }
                // A duplicate (or retry) drawn before any pair voted: make it fresh.
                None => {
                    let (pair, slot) = self.fresh_pair().expect("fresh pairs remain at start");
                    (pair, Kind::Fresh, Origin::Fresh(slot))
                }
            };
            let s = Submission {
                seq,
                poll,
                voter,
                option: self.random_option(poll),
                vote: seq,
                kind,
            };
            (s, origin)
        };
        let sub = self.remember(s);
        self.recall = Recall { origin, sub };
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn cfg(seed: u64, voters: u32, options: Vec<u16>, total: u64) -> PlanConfig {
        PlanConfig {
            seed,
            voters,
            options,
            duplicate_share: 0.2,
            retry_share: 0.05,
            total: Some(total),
        }
    }

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        let a: Vec<_> = Plan::new(cfg(7, 1000, vec![4, 4, 3], 5000)).collect();
        let b: Vec<_> = Plan::new(cfg(7, 1000, vec![4, 4, 3], 5000)).collect();
        let c: Vec<_> = Plan::new(cfg(8, 1000, vec![4, 4, 3], 5000)).collect();
        assert_eq!(a.len(), 5000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn shares_are_about_right() {
        let plan: Vec<_> = Plan::new(cfg(1, 100_000, vec![4; 4], 100_000)).collect();
        let count = |k| plan.iter().filter(|s| s.kind == k).count() as f64 / plan.len() as f64;
        assert!(
            (count(Kind::Duplicate) - 0.2).abs() < 0.01,
            "{}",
            count(Kind::Duplicate)
        );
        assert!(
            (count(Kind::Retry) - 0.05).abs() < 0.01,
            "{}",
            count(Kind::Retry)
        );
        assert!(
            (count(Kind::Fresh) - 0.75).abs() < 0.01,
            "{}",
            count(Kind::Fresh)
        );
    }

    #[test]
    fn fresh_pairs_cover_every_pair_once_then_duplicates() {
        let plan: Vec<_> = Plan::new(PlanConfig {
            seed: 3,
            voters: 50,
            options: vec![2, 3, 5],
            duplicate_share: 0.0,
            retry_share: 0.0,
            total: Some(400),
        })
        .collect();
        let fresh: Vec<_> = plan.iter().filter(|s| s.kind == Kind::Fresh).collect();
        assert_eq!(fresh.len(), 150);
        let pairs: HashSet<_> = fresh.iter().map(|s| (s.poll, s.voter)).collect();
        assert_eq!(pairs.len(), 150, "every (poll, voter) pair exactly once");
        assert!(plan[150..].iter().all(|s| s.kind == Kind::Duplicate));
    }

    #[test]
    fn lanes_spread_evenly() {
        let mut per_lane = [0u32; 64];
        for v in 0..64_000 {
            per_lane[lane_of(v % 3, v, 64)] += 1;
        }
        assert!(
            per_lane.iter().all(|&n| (800..1200).contains(&n)),
            "{per_lane:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every submission is well formed: a pair's first submission is fresh and is the only
        /// fresh one; a retry repeats an earlier submission of the same pair exactly; vote
        /// numbers of fresh and duplicate submissions are their own seq.
        #[test]
        fn plan_is_well_formed(
            seed in any::<u64>(),
            voters in 1u32..300,
            options in proptest::collection::vec(1u16..=64, 1..5),
            dup in 0.0f64..0.6,
            retry in 0.0f64..0.4,
            total in 0u64..2000,
        ) {
            let plan: Vec<_> = Plan::new(PlanConfig {
                seed, voters, options: options.clone(), duplicate_share: dup, retry_share: retry,
                total: Some(total),
            }).collect();
            prop_assert_eq!(plan.len() as u64, total);
            let mut seen: HashMap<(u32, u32), ()> = HashMap::new();
            let mut by_vote: HashMap<u64, Submission> = HashMap::new();
            for (i, s) in plan.iter().enumerate() {
                prop_assert_eq!(s.seq, i as u64);
                prop_assert!((s.poll as usize) < options.len());
                prop_assert!(s.voter < voters);
                prop_assert!(s.option < options[s.poll as usize]);
                let first = seen.insert((s.poll, s.voter), ()).is_none();
                prop_assert_eq!(first, s.kind == Kind::Fresh);
                match s.kind {
                    Kind::Fresh | Kind::Duplicate => {
                        prop_assert_eq!(s.vote, s.seq);
                        by_vote.insert(s.vote, *s);
                    }
                    Kind::Retry => {
                        let orig = by_vote[&s.vote];
                        prop_assert!(orig.seq < s.seq);
                        prop_assert_eq!((orig.poll, orig.voter, orig.option), (s.poll, s.voter, s.option));
                    }
                }
            }
        }
    }
}
