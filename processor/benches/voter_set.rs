//! `cargo bench -p processor --bench voter_set`: what the exact dedupe costs per voter in memory,
//! measured as the process's RSS growth while one poll's set takes `VOTERS` (default 10,000,000)
//! distinct voters shaped as the load generator names them (`agg:dev:lg1a2b3c4d-<n>`), against the
//! `HashSet<Box<str>>` it replaced (the baseline, in the same run), with inserts per second of each
//! and the longest insert (where `HashSet` grows its table it rehashes every voter in one insert;
//! `VoterSet` grows in steps: BENCHMARKS.md "2026-12-05 (eighth session)"). Timing each insert
//! slows the inserts/s a little. Sets between two sizes where a growth is under way hold both
//! tables, so `VOTERS` of 1,000,000 (a growth from 917,504) reads about 6 bytes per voter more
//! than the same count grown at once.

use processor::voter_set::VoterSet;
use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// RSS growth per voter, inserts per second and the longest insert (ms) while `insert` takes
/// every voter.
fn measure(voters: usize, mut insert: impl FnMut(&str) -> bool) -> (f64, f64, f64) {
    let mut id = String::with_capacity(64);
    let before = rss_bytes();
    let t = Instant::now();
    let mut longest = std::time::Duration::ZERO;
    for i in 0..voters {
        use std::fmt::Write;
        id.clear();
        write!(id, "agg:dev:lg1a2b3c4d-{i}").unwrap();
        let one = Instant::now();
        assert!(insert(black_box(&id)));
        longest = longest.max(one.elapsed());
    }
    let secs = t.elapsed().as_secs_f64();
    let per_voter = (rss_bytes() - before) as f64 / voters as f64;
    (per_voter, voters as f64 / secs, longest.as_secs_f64() * 1e3)
}

fn main() {
    let voters: usize = std::env::var("VOTERS").map_or(10_000_000, |v| v.parse().expect("VOTERS"));
    let mut set = VoterSet::default();
    let (cand_bytes, cand_rate, cand_longest) = measure(voters, |v| set.insert(v));
    assert_eq!(set.len(), voters);
    drop(set);
    let mut base = HashSet::<Box<str>>::new();
    let (base_bytes, base_rate, base_longest) = measure(voters, |v| base.insert(v.into()));
    assert_eq!(base.len(), voters);
    println!(
        "{voters} voters in one poll's set (RSS growth per voter, inserts/s, the longest insert):"
    );
    println!(
        "  HashSet<Box<str>> (baseline) {base_bytes:6.1} bytes  {base_rate:>12.0}/s  {base_longest:7.1} ms"
    );
    println!(
        "  VoterSet (arena)             {cand_bytes:6.1} bytes  {cand_rate:>12.0}/s  {cand_longest:7.1} ms  \
         ({:.2} of the baseline's memory, {:.2} of its rate)",
        cand_bytes / base_bytes,
        cand_rate / base_rate
    );
}
