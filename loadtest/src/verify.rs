//! Expected tallies and their comparison with what the server publishes (`--verify`,
//! `--verify-only`).
//!
//! The rule: the server counts each (poll, voter) once, with the first of its votes in the log.
//! The lanes send a pair's submissions in plan order, each only after the previous one got its
//! final answer, so the log holds them in plan order too, and the expected option of a pair is
//! the option of its **first acknowledged submission in plan order** (later ones are duplicates;
//! a retry with the same vote id is the same vote).
//!
//! One thing can blur that: a submission whose fate is unknown — given up after a connection
//! broke or timed out mid-request (the server may have written it), or refused with a 4xx after
//! such an attempt. It is recorded as *uncertain*. A pair whose first acknowledged submission
//! has uncertain ones before it counts exactly once, for one of their options; a pair with only
//! uncertain submissions counts at most once. Such pairs make the check an interval check
//! instead of an equality; a run without uncertain submissions (the normal case, even across a
//! server restart) is checked for exact equality.
//!
//! [`Expectation`] is pure and incremental: each lane keeps its own (a pair belongs to one lane)
//! and they are merged at the end, so a long run keeps one small entry per pair, not every
//! submission.

use crate::client::Conn;
use crate::polls::{self, PollInfo};
use hyper::header::HeaderValue;
use serde::Serialize;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;
use tokio::time::Instant;

/// The final fate of a submission that matters for the tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 202 (or accepted in a batch): in the log.
    Acked,
    /// Maybe in the log, maybe not.
    Uncertain,
}

/// A cheap hasher for the integer pair keys (they are not attacker-controlled).
#[derive(Default)]
pub struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        crate::plan::mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).rotate_left(5);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ n as u64;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

/// A pair's state: the options it may count for and whether it surely counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PairState {
    /// Bit `o`: option `o` is a candidate (options are 0..64).
    mask: u64,
    /// An acknowledged submission was seen: the pair counts exactly once; later ones change nothing.
    closed: bool,
}

type Pairs = HashMap<(u32, u32), PairState, BuildHasherDefault<PairHasher>>;

/// The expected tallies, built from submissions' outcomes in plan order (per pair).
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// The pairs observed here.
    pairs: Pairs,
    /// Other lanes' pairs, merged in as they were (lanes own disjoint pairs).
    merged: Vec<Pairs>,
}

impl Expectation {
    /// An expectation with room for `pairs` pairs, so it does not grow (rehashing every pair
    /// it holds) while the run is under way.
    pub fn with_capacity(pairs: usize) -> Self {
        Self {
            pairs: HashMap::with_capacity_and_hasher(pairs, Default::default()),
            merged: Vec::new(),
        }
    }

    /// Notes the final outcome of a submission of (poll index, voter) with `option`. A pair's
    /// submissions must be observed in plan order.
    pub fn observe(&mut self, poll: u32, voter: u32, option: u16, outcome: Outcome) {
        debug_assert!(option < 64);
        let s = self.pairs.entry((poll, voter)).or_default();
        if s.closed {
            return;
        }
        s.mask |= 1u64 << option;
        s.closed = outcome == Outcome::Acked;
    }

    /// Adds another lane's expectation (lanes own disjoint pairs: `plan::lane_of`,
    /// `placement.rs`). Its pairs are kept as they are, not inserted again one by one.
    pub fn merge(&mut self, other: Expectation) {
        for pairs in std::iter::once(other.pairs).chain(other.merged) {
            if self.pairs.is_empty() {
                self.pairs = pairs;
            } else if !pairs.is_empty() {
                self.merged.push(pairs);
            }
        }
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len() + self.merged.iter().map(HashMap::len).sum::<usize>()
    }

    fn all_pairs(&self) -> impl Iterator<Item = (&(u32, u32), &PairState)> {
        self.pairs.iter().chain(self.merged.iter().flatten())
    }

    /// The expected tallies of every poll (index order of `polls`), baselines included.
    pub fn tallies(&self, polls: &[PollInfo]) -> Vec<PollExpectation> {
        let mut out: Vec<PollExpectation> = polls
            .iter()
            .map(|p| PollExpectation {
                poll_id: p.id,
                definite: p.baseline.clone(),
                exactly_one: Vec::new(),
                at_most_one: Vec::new(),
            })
            .collect();
        for (&(poll, _), s) in self.all_pairs() {
            let Some(e) = out.get_mut(poll as usize) else {
                continue;
            };
            if s.closed && s.mask.count_ones() == 1 {
                let o = s.mask.trailing_zeros() as usize;
                if o >= e.definite.len() {
                    e.definite.resize(o + 1, 0);
                }
                e.definite[o] += 1;
            } else if s.closed {
                e.exactly_one.push(s.mask);
            } else if s.mask != 0 {
                e.at_most_one.push(s.mask);
            }
        }
        out
    }
}

/// What one poll's counts must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PollExpectation {
    pub poll_id: i64,
    /// Counts per option that are certain (baseline included).
    pub definite: Vec<u64>,
    /// Pairs that count exactly once, for one of the options in the mask.
    pub exactly_one: Vec<u64>,
    /// Pairs that count at most once, for one of the options in the mask.
    pub at_most_one: Vec<u64>,
}

/// The verdict on one poll's published counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Exactly the expected counts (no uncertainty).
    Equal,
    /// Within what the uncertain submissions allow.
    Consistent,
    Mismatch(String),
}

impl PollExpectation {
    pub fn uncertain(&self) -> usize {
        self.exactly_one.len() + self.at_most_one.len()
    }

    /// Largest count option `o` may reach.
    pub fn upper(&self, o: usize) -> u64 {
        let bit = 1u64 << o;
        self.definite.get(o).copied().unwrap_or(0)
            + self
                .exactly_one
                .iter()
                .chain(&self.at_most_one)
                .filter(|m| *m & bit != 0)
                .count() as u64
    }

    pub fn check(&self, published: &[u64]) -> Check {
        let n = published.len().max(self.definite.len());
        let get = |v: &[u64], o: usize| v.get(o).copied().unwrap_or(0);
        if self.uncertain() == 0 {
            return if (0..n).all(|o| get(published, o) == get(&self.definite, o)) {
                Check::Equal
            } else {
                let diffs: Vec<String> = (0..n)
                    .filter(|&o| get(published, o) != get(&self.definite, o))
                    .map(|o| {
                        format!(
                            "option {o}: {} published, {} expected",
                            get(published, o),
                            get(&self.definite, o)
                        )
                    })
                    .collect();
                Check::Mismatch(diffs.join("; "))
            };
        }
        for o in 0..n {
            let (p, lo, hi) = (get(published, o), get(&self.definite, o), self.upper(o));
            if p < lo || p > hi {
                return Check::Mismatch(format!("option {o}: {p} published, expected {lo}..={hi}"));
            }
        }
        // Every option is at least its certain count (checked above), so this does not underflow.
        let extra = (0..n)
            .map(|o| get(published, o) - get(&self.definite, o))
            .sum::<u64>();
        let (lo, hi) = (
            self.exactly_one.len() as u64,
            (self.exactly_one.len() + self.at_most_one.len()) as u64,
        );
        if extra < lo || extra > hi {
            return Check::Mismatch(format!(
                "{extra} votes beyond the certain ones, expected {lo}..={hi}"
            ));
        }
        let extras: Vec<u64> = (0..n)
            .map(|o| get(published, o) - get(&self.definite, o))
            .collect();
        if assignable(&extras, &self.exactly_one, &self.at_most_one) {
            Check::Consistent
        } else {
            Check::Mismatch(format!(
                "the counts beyond the certain ones {extras:?} cannot come from the uncertain voters"
            ))
        }
    }
}

/// Whether the votes beyond the certain ones (`extra[o]` for option `o`) can be explained by the
/// uncertain pairs: each `exactly_one` pair counted once and each `at_most_one` pair at most once,
/// each for an option in its mask. A flow problem: source → pair class (by mask) → option → sink
/// (capacity `extra[o]`). Augmenting paths never lower the flow leaving the source, so a max flow
/// over the exactly-one classes first, then the others added, tells whether every exactly-one pair
/// is used and every extra vote is covered.
pub fn assignable(extra: &[u64], exactly_one: &[u64], at_most_one: &[u64]) -> bool {
    let classes = |masks: &[u64]| {
        let mut m: HashMap<u64, u64> = HashMap::new();
        for &mask in masks {
            *m.entry(mask).or_default() += 1;
        }
        let mut v: Vec<(u64, u64)> = m.into_iter().collect();
        v.sort_unstable();
        v
    };
    let exact = classes(exactly_one);
    let maybe = classes(at_most_one);
    let options = extra.len().max(64);
    // Nodes: 0 source, 1 sink, options 2.., then the classes.
    let mut g = Flow::new(2 + options + exact.len() + maybe.len());
    for (o, &x) in extra.iter().enumerate() {
        if x > 0 {
            g.edge(2 + o, 1, x);
        }
    }
    let add_class = |g: &mut Flow, node: usize, (mask, count): (u64, u64)| {
        g.edge(0, node, count);
        for o in 0..64 {
            if mask & (1u64 << o) != 0 && o < extra.len() {
                g.edge(node, 2 + o, count);
            }
        }
    };
    for (i, &c) in exact.iter().enumerate() {
        add_class(&mut g, 2 + options + i, c);
    }
    let need_exact: u64 = exact.iter().map(|c| c.1).sum();
    if g.max_flow(0, 1) != need_exact {
        return false;
    }
    for (i, &c) in maybe.iter().enumerate() {
        add_class(&mut g, 2 + options + exact.len() + i, c);
    }
    let total = need_exact + g.max_flow(0, 1);
    total == extra.iter().sum::<u64>()
}

/// A small Edmonds–Karp max flow (the graphs here have a few dozen to a few thousand nodes).
struct Flow {
    /// Per edge: (to, residual capacity); edge `i ^ 1` is the reverse of edge `i`.
    edges: Vec<(usize, u64)>,
    adj: Vec<Vec<usize>>,
}

impl Flow {
    fn new(nodes: usize) -> Self {
        Self {
            edges: Vec::new(),
            adj: vec![Vec::new(); nodes],
        }
    }

    fn edge(&mut self, from: usize, to: usize, cap: u64) {
        self.adj[from].push(self.edges.len());
        self.edges.push((to, cap));
        self.adj[to].push(self.edges.len());
        self.edges.push((from, 0));
    }

    /// Pushes as much more flow from `s` to `t` as possible; returns the amount added.
    fn max_flow(&mut self, s: usize, t: usize) -> u64 {
        let mut total = 0;
        loop {
            let mut via: Vec<Option<usize>> = vec![None; self.adj.len()];
            let mut queue = std::collections::VecDeque::from([s]);
            let mut reached = false;
            while let Some(u) = queue.pop_front() {
                for &e in &self.adj[u] {
                    let (v, cap) = self.edges[e];
                    if cap > 0 && v != s && via[v].is_none() {
                        via[v] = Some(e);
                        if v == t {
                            reached = true;
                            break;
                        }
                        queue.push_back(v);
                    }
                }
                if reached {
                    break;
                }
            }
            if !reached {
                return total;
            }
            let mut push = u64::MAX;
            let mut v = t;
            while let Some(e) = via[v] {
                push = push.min(self.edges[e].1);
                v = self.edges[e ^ 1].0;
            }
            let mut v = t;
            while let Some(e) = via[v] {
                self.edges[e].1 -= push;
                self.edges[e ^ 1].1 += push;
                v = self.edges[e ^ 1].0;
            }
            total += push;
        }
    }
}

/// One poll's line of the verification report.
#[derive(Debug, Clone, Serialize)]
pub struct PollVerdict {
    pub poll_id: i64,
    pub expected: Vec<u64>,
    /// Upper bounds per option when some submissions are uncertain (else equal to `expected`).
    pub expected_max: Vec<u64>,
    pub uncertain_voters: usize,
    pub published: Option<Vec<u64>>,
    pub version: i64,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub waited_secs: f64,
    pub polls: Vec<PollVerdict>,
}

/// Polls the results of every poll until each matches its expectation or `timeout` passes.
pub async fn verify(
    conn: &mut Conn,
    auth: &HeaderValue,
    expected: &[PollExpectation],
    timeout: Duration,
) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut fetch_errors = 0u32;
    loop {
        let mut verdicts = Vec::with_capacity(expected.len());
        for e in expected {
            let published = match polls::results(conn, auth, e.poll_id).await {
                Ok(p) => p,
                Err(err) => {
                    fetch_errors += 1;
                    if fetch_errors % 20 == 1 {
                        eprintln!("verify: {err} (retrying)");
                    }
                    polls::Published::default()
                }
            };
            let (ok, detail) = match &published.counts {
                None => (
                    false,
                    format!("no counts published (status {})", published.status),
                ),
                Some(c) => match e.check(c) {
                    Check::Equal => (true, "equal".to_owned()),
                    Check::Consistent => (
                        true,
                        format!("consistent with {} uncertain voters", e.uncertain()),
                    ),
                    Check::Mismatch(m) => (false, m),
                },
            };
            let n = e.definite.len();
            verdicts.push(PollVerdict {
                poll_id: e.poll_id,
                expected: e.definite.clone(),
                expected_max: (0..n).map(|o| e.upper(o)).collect(),
                uncertain_voters: e.uncertain(),
                published: published.counts,
                version: published.version,
                ok,
                detail,
            });
        }
        let ok = verdicts.iter().all(|v| v.ok);
        if ok || Instant::now() >= deadline {
            return Ok(Verification {
                ok,
                waited_secs: started.elapsed().as_secs_f64(),
                polls: verdicts,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The table of expected vs published counts.
pub fn print_table(v: &Verification, labels: impl Fn(usize) -> String) {
    println!();
    println!(
        "== verify: {} ({} polls, waited {:.1} s)",
        if v.ok { "OK" } else { "MISMATCH" },
        v.polls.len(),
        v.waited_secs
    );
    for p in &v.polls {
        println!(
            "poll {}: {}{} (results version {})",
            p.poll_id,
            if p.ok { "ok, " } else { "MISMATCH: " },
            p.detail,
            p.version
        );
        println!(
            "  {:<8} {:>12} {:>12} {:>8}",
            "option", "expected", "published", "diff"
        );
        let n = p
            .expected
            .len()
            .max(p.published.as_ref().map_or(0, |c| c.len()));
        let mut te = 0u64;
        let mut tm = 0u64;
        let mut tp = 0u64;
        for o in 0..n {
            let e = p.expected.get(o).copied().unwrap_or(0);
            let m = p.expected_max.get(o).copied().unwrap_or(e);
            let pub_ = p.published.as_ref().and_then(|c| c.get(o).copied());
            te += e;
            tm += m;
            tp += pub_.unwrap_or(0);
            print_row(&labels(o), e, m, pub_);
        }
        // The total's upper bound: every uncertain voter counts once at most.
        let tmax = (te + p.uncertain_voters as u64).min(tm);
        print_row("total", te, tmax, p.published.as_ref().map(|_| tp));
    }
}

fn print_row(label: &str, e: u64, max: u64, published: Option<u64>) {
    let expected = if max > e {
        format!("{e}..{max}")
    } else {
        e.to_string()
    };
    let (p, d) = match published {
        Some(p) => (p.to_string(), format!("{:+}", p as i64 - e as i64)),
        None => ("-".to_owned(), String::new()),
    };
    println!("  {label:<8} {expected:>12} {p:>12} {d:>8}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn poll(id: i64, options: u16) -> PollInfo {
        PollInfo {
            id,
            options,
            baseline: vec![0; options as usize],
        }
    }

    #[test]
    fn first_acknowledged_counts() {
        let mut e = Expectation::default();
        e.observe(0, 1, 2, Outcome::Acked);
        e.observe(0, 1, 0, Outcome::Acked); // duplicate
        e.observe(0, 2, 0, Outcome::Acked);
        e.observe(1, 1, 1, Outcome::Acked);
        e.observe(1, 1, 1, Outcome::Acked); // retry
        e.observe(0, 3, 2, Outcome::Acked);
        let t = e.tallies(&[poll(10, 3), poll(11, 2)]);
        assert_eq!(t[0].definite, vec![1, 0, 2]);
        assert_eq!(t[1].definite, vec![0, 1]);
        assert_eq!(t[0].check(&[1, 0, 2]), Check::Equal);
        assert!(matches!(t[0].check(&[1, 1, 1]), Check::Mismatch(_)));
        assert!(matches!(t[0].check(&[1, 0, 3]), Check::Mismatch(_)));
    }

    #[test]
    fn baseline_is_added() {
        let mut e = Expectation::default();
        e.observe(0, 1, 1, Outcome::Acked);
        let t = e.tallies(&[PollInfo {
            id: 5,
            options: 2,
            baseline: vec![7, 3],
        }]);
        assert_eq!(t[0].definite, vec![7, 4]);
    }

    #[test]
    fn uncertainty_widens_the_check() {
        let mut e = Expectation::default();
        // Pair 1: uncertain A, then acknowledged B: counts once, A or B.
        e.observe(0, 1, 0, Outcome::Uncertain);
        e.observe(0, 1, 1, Outcome::Acked);
        // Pair 2: only uncertain C: counts zero or one time.
        e.observe(0, 2, 2, Outcome::Uncertain);
        // Pair 3: acknowledged, then uncertain duplicate: certain.
        e.observe(0, 3, 0, Outcome::Acked);
        e.observe(0, 3, 2, Outcome::Uncertain);
        let t = &e.tallies(&[poll(1, 3)])[0];
        assert_eq!(t.definite, vec![1, 0, 0]);
        assert_eq!(t.exactly_one, vec![0b011]);
        assert_eq!(t.at_most_one, vec![0b100]);
        for ok in [[2, 0, 0], [1, 1, 0], [2, 0, 1], [1, 1, 1]] {
            assert_eq!(t.check(&ok), Check::Consistent, "{ok:?}");
        }
        for bad in [
            [1, 0, 0],
            [0, 1, 0],
            [3, 0, 0],
            [1, 1, 2],
            [2, 1, 0],
            [1, 0, 1],
        ] {
            assert!(matches!(t.check(&bad), Check::Mismatch(_)), "{bad:?}");
        }
    }

    /// A model of the server: the log holds a pair's submissions in plan order (acknowledged
    /// ones always, uncertain ones or not, refused ones never) and counts the first of each pair.
    fn server_counts(events: &[(u32, u16, u8)], in_log: &[bool], options: u16) -> Vec<u64> {
        let mut counts = vec![0u64; options as usize];
        let mut counted = std::collections::HashSet::new();
        for (&(voter, option, _), &logged) in events.iter().zip(in_log) {
            if logged && counted.insert(voter) {
                counts[option as usize] += 1;
            }
        }
        counts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the server did with the uncertain submissions, its counts pass the check;
        /// without uncertain submissions the check is exact equality.
        #[test]
        fn model_server_always_passes(
            options in 2u16..6,
            // (voter, option, fate: 0 acked, 1 refused, 2 uncertain-in-log, 3 uncertain-not)
            events in proptest::collection::vec((0u32..20, 0u16..6, 0u8..4), 0..120),
        ) {
            let events: Vec<_> = events.into_iter().map(|(v, o, f)| (v, o % options, f)).collect();
            let in_log: Vec<bool> = events.iter().map(|e| e.2 == 0 || e.2 == 2).collect();
            let mut exp = Expectation::default();
            for &(voter, option, fate) in &events {
                match fate {
                    0 => exp.observe(0, voter, option, Outcome::Acked),
                    2 | 3 => exp.observe(0, voter, option, Outcome::Uncertain),
                    _ => {}
                }
            }
            let t = &exp.tallies(&[poll(1, options)])[0];
            let counts = server_counts(&events, &in_log, options);
            let verdict = t.check(&counts);
            prop_assert!(verdict == Check::Equal || verdict == Check::Consistent, "{:?} {:?} {:?}", verdict, counts, t);
            if !events.iter().any(|e| e.2 >= 2) {
                prop_assert_eq!(verdict, Check::Equal);
                // And one vote moved or lost is caught.
                if let Some(o) = counts.iter().position(|&c| c > 0) {
                    let mut lost = counts.clone();
                    lost[o] -= 1;
                    prop_assert!(matches!(t.check(&lost), Check::Mismatch(_)));
                    let mut moved = lost.clone();
                    moved[(o + 1) % options as usize] += 1;
                    prop_assert!(matches!(t.check(&moved), Check::Mismatch(_)));
                }
            }
        }

        /// The flow check agrees with trying every assignment.
        #[test]
        fn assignable_matches_brute_force(
            extra in proptest::collection::vec(0u64..3, 1..4),
            exact in proptest::collection::vec(1u64..16, 0..4),
            maybe in proptest::collection::vec(1u64..16, 0..3),
        ) {
            let n = extra.len();
            let exact: Vec<u64> = exact.into_iter().map(|m| m & ((1 << n) - 1)).filter(|&m| m != 0).collect();
            let maybe: Vec<u64> = maybe.into_iter().map(|m| m & ((1 << n) - 1)).filter(|&m| m != 0).collect();
            // Choices: an option of the mask; for at-most-one groups also "none" (= n).
            fn brute(extra: &mut [u64], groups: &[(u64, bool)]) -> bool {
                let Some((&(mask, optional), rest)) = groups.split_first() else {
                    return extra.iter().all(|&x| x == 0);
                };
                if optional && brute(extra, rest) {
                    return true;
                }
                for o in 0..extra.len() {
                    if mask & (1 << o) != 0 && extra[o] > 0 {
                        extra[o] -= 1;
                        let ok = brute(extra, rest);
                        extra[o] += 1;
                        if ok {
                            return true;
                        }
                    }
                }
                false
            }
            let groups: Vec<(u64, bool)> = exact.iter().map(|&m| (m, false)).chain(maybe.iter().map(|&m| (m, true))).collect();
            let mut e = extra.clone();
            prop_assert_eq!(assignable(&extra, &exact, &maybe), brute(&mut e, &groups));
        }

        /// Per-lane expectations merged equal one built over everything.
        #[test]
        fn merging_lanes_is_lossless(
            events in proptest::collection::vec((0u32..3, 0u32..50, 0u16..4, any::<bool>()), 0..200),
            lanes in 1usize..5,
        ) {
            let mut whole = Expectation::default();
            let mut parts = vec![Expectation::default(); lanes];
            for &(p, v, o, acked) in &events {
                let outcome = if acked { Outcome::Acked } else { Outcome::Uncertain };
                whole.observe(p, v, o, outcome);
                parts[crate::plan::lane_of(p, v, lanes)].observe(p, v, o, outcome);
            }
            let mut merged = Expectation::default();
            for part in parts {
                merged.merge(part);
            }
            let polls = [poll(1, 4), poll(2, 4), poll(3, 4)];
            let norm = |mut t: Vec<PollExpectation>| {
                for e in &mut t { e.exactly_one.sort(); e.at_most_one.sort(); }
                t
            };
            prop_assert_eq!(norm(whole.tallies(&polls)), norm(merged.tallies(&polls)));
        }
    }
}
