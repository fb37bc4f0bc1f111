//! How a poll's shards of viewers ([`crate::broadcast`]) share its coalescing interval (pure).
//!
//! A poll with thousands of viewers is rendered more often than each viewer is written to: its
//! shards are swept in turn, about `shards / interval` a second, each with the newest frame
//! then, and none twice within an interval. So sweeps still write each viewer at most one frame
//! an interval (the node's frame budget holds), but the frame it gets is as fresh as the last
//! render, not as old as its place in one sweep of the whole audience. Sweeping every shard at
//! each render instead would write the shards late in a long sweep a frame rendered most of an
//! interval ago.
//!
//! The [`Pacer`] gives the shards their turns at `shards` per interval, in order, skipping those
//! with nothing new: under a steady flow of renders each shard's turn comes once an interval,
//! spread evenly, and a change after a quiet spell reaches the first shard at once and the last
//! within the interval, in the same order (no burst of every shard at once, after which their
//! turns would come all together again). A pass later than asked for (a busy machine) owes its
//! lateness to the shards left behind, which then take their turns sooner, each still an
//! interval after its last.

use std::time::Duration;
use tokio::time::Instant;

/// One poll's allowance of shard sweeps, and where its last pass stopped.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Sweeps that may start now (fractions accrue between passes).
    allowance: f64,
    /// When the allowance was last topped up (`None`: never).
    at: Option<Instant>,
    /// The shard after the last one swept: the next pass starts there.
    cursor: usize,
    /// The last pass left shards behind (for want of allowance, or at one whose interval is not
    /// out): the time since is owed to them.
    waiting: bool,
}

impl Pacer {
    pub(crate) fn new() -> Self {
        Self {
            allowance: 0.0,
            at: None,
            cursor: 0,
            waiting: false,
        }
    }

    /// One pass over `shards` shards at `now`. `behind(i)` is `None` for a shard with nothing
    /// new, else when it was last swept (`Some(None)`: never). Starting where the last pass
    /// stopped, calls `sweep(i)` for each shard behind, in order, while the allowance lasts
    /// (`shards` per `interval`; with none left behind, at most one in hand, so the shards'
    /// turns stay spread over the interval) and until one that was swept less than an
    /// `interval` ago. Returns how long to wait before the next pass when some are left
    /// behind, `None` when none is.
    pub(crate) fn pass(
        &mut self,
        now: Instant,
        interval: Duration,
        shards: usize,
        mut behind: impl FnMut(usize) -> Option<Option<Instant>>,
        mut sweep: impl FnMut(usize),
    ) -> Option<Duration> {
        if shards == 0 {
            self.waiting = false;
            return None;
        }
        let round = shards as f64;
        let accrued = match self.at {
            None => 1.0,
            Some(_) if interval.is_zero() => round,
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                round * elapsed / interval.as_secs_f64()
            }
        };
        // A pass later than asked for owes the shards left behind the time it was late (no
        // shard is swept sooner for it: each waits out its interval); with none left behind
        // for want of allowance, no more than one turn is saved up.
        let most = if self.waiting { round } else { 1.0 };
        self.allowance = (self.allowance + accrued).min(most.max(self.allowance));
        self.at = Some(now);
        let start = self.cursor;
        // The pass stopped for want of allowance, or at a shard swept too recently (the turns
        // keep their order): when that one may go.
        let (mut short, mut ready) = (false, None::<Instant>);
        for step in 0..shards {
            let i = (start + step) % shards;
            let Some(last) = behind(i) else { continue };
            if let Some(at) = last.map(|last| last + interval).filter(|at| *at > now) {
                ready = Some(at);
                break;
            }
            // (Within a rounding error of a whole turn: a pass at the wait asked for.)
            if self.allowance < 1.0 - 1e-9 {
                short = true;
                break;
            }
            self.allowance -= 1.0;
            self.cursor = i + 1;
            sweep(i);
        }
        self.waiting = short || ready.is_some();
        // The next turn, at `shards` per interval, or when the shard it stopped at may go (at
        // least a millisecond away).
        let wait = match ready {
            Some(at) => Some(at - now),
            None => short.then(|| interval.mul_f64((1.0 - self.allowance).max(0.0) / round)),
        };
        wait.map(|wait| wait.max(Duration::from_millis(1)))
    }
}

/// How often a poll with `shards` shards is rendered while it changes: often enough that each
/// paced sweep writes a fresh frame (`interval / shards`), but no more often than `fastest`,
/// nor less often than `interval` (one shard: once an interval, as each viewer is written).
pub(crate) fn render_interval(interval: Duration, fastest: Duration, shards: usize) -> Duration {
    let per_shard = interval / u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    per_shard.max(fastest).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs a pacer as the feed does: a render every `render` until `renders_until` (each
    /// leaving every shard behind), a pass at each render and whenever a pass asks for one, late
    /// by the next of `late` (a busy machine's timers), until no pass is asked for. Each
    /// shard's sweep times, and the last render's time.
    fn simulate(
        shards: usize,
        interval: Duration,
        render: Duration,
        renders_until: Duration,
        late: &[Duration],
    ) -> (Vec<Vec<Duration>>, Duration) {
        let t0 = Instant::now();
        let mut pacer = Pacer::new();
        let swept_render = vec![std::cell::Cell::new(0u64); shards];
        let mut sweeps = vec![Vec::<Duration>::new(); shards];
        let (mut next_render, mut next_pass) = (Some(Duration::ZERO), None::<Duration>);
        let (mut rendered, mut last_render) = (0u64, Duration::ZERO);
        let mut late = late.iter().cycle();
        loop {
            let now = match (next_render, next_pass) {
                (Some(r), Some(p)) => r.min(p),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => return (sweeps, last_render),
            };
            if next_render == Some(now) {
                rendered += 1;
                last_render = now;
                next_render = Some(now + render).filter(|t| *t <= renders_until);
            }
            let last: Vec<Option<Instant>> =
                sweeps.iter().map(|s| s.last().map(|at| t0 + *at)).collect();
            let wait = pacer.pass(
                t0 + now,
                interval,
                shards,
                |i| (swept_render[i].get() < rendered).then_some(last[i]),
                |i| {
                    swept_render[i].set(rendered);
                    sweeps[i].push(now);
                },
            );
            next_pass = wait.map(|w| now + w + *late.next().unwrap());
        }
    }

    #[test]
    fn shards_take_turns_once_an_interval_skipping_those_with_nothing_new() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new();
        let mut last: [Option<Instant>; 4] = [None; 4];
        let mut swept = Vec::new();
        let mut pass = |at: Duration, new: &dyn Fn(usize) -> bool| {
            let now = t0 + at;
            let before = swept.len();
            let wait = pacer.pass(
                now,
                200 * MS,
                4,
                |i| new(i).then_some(last[i]),
                |i| swept.push(i),
            );
            for &i in &swept[before..] {
                last[i] = Some(now);
            }
            (swept.clone(), wait)
        };
        let all = |_: usize| true;
        // Four shards behind: the first at once, the next a quarter of the interval later.
        assert_eq!(pass(Duration::ZERO, &all), (vec![0], Some(50 * MS)));
        assert_eq!(pass(20 * MS, &all), (vec![0], Some(30 * MS)));
        assert_eq!(pass(50 * MS, &all), (vec![0, 1], Some(50 * MS)));
        // Shards with nothing new cost no turn: shard 2 is current, so 3 is swept; then shard 0,
        // whose interval runs until 200 ms: the turns keep their order and wait for it.
        assert_eq!(pass(100 * MS, &|i| i != 2), (vec![0, 1, 3], Some(100 * MS)));
        assert_eq!(pass(200 * MS, &all), (vec![0, 1, 3, 0], Some(50 * MS)));
        // A pass late by a quarter of an interval owes it: shard 1, then 2 (never swept) too,
        // and shard 3 when its interval is out.
        assert_eq!(
            pass(275 * MS, &all),
            (vec![0, 1, 3, 0, 1, 2], Some(25 * MS))
        );
        // None behind: no pass is asked for. After a quiet spell one turn is in hand, not four.
        assert_eq!(pass(280 * MS, &|_| false).1, None);
        assert_eq!(
            pass(1_000 * MS, &all),
            (vec![0, 1, 3, 0, 1, 2, 3], Some(50 * MS))
        );
    }

    #[test]
    fn renders_are_as_frequent_as_the_shards_turns_within_their_bounds() {
        assert_eq!(render_interval(200 * MS, 25 * MS, 1), 200 * MS);
        assert_eq!(render_interval(200 * MS, 25 * MS, 0), 200 * MS);
        assert_eq!(render_interval(200 * MS, 25 * MS, 4), 50 * MS);
        assert_eq!(render_interval(200 * MS, 25 * MS, 30), 25 * MS);
        // A fastest above the interval: the interval.
        assert_eq!(render_interval(20 * MS, 25 * MS, 30), 20 * MS);
    }

    proptest! {
        /// Under a steady flow of renders, with timers late by up to 2 ms: each shard's first
        /// turn comes within the first interval, in order; no shard is swept twice within an
        /// interval (so sweeps write each viewer at most one frame an interval) nor waits much
        /// more than an interval and a render; the sweeps in all stay within the budget; and once
        /// the renders stop, every shard has the last one within about an interval.
        #[test]
        fn each_shard_is_swept_about_once_an_interval_and_gets_the_last_render(
            shards in 1usize..64,
            interval_ms in 10u64..1_000,
            per_interval in 1u32..40,
            late_us in proptest::collection::vec(0u64..2_000, 1..16),
        ) {
            let interval = Duration::from_millis(interval_ms);
            let render = (interval / per_interval).max(MS);
            let span = interval * 12;
            let late: Vec<Duration> = late_us.into_iter().map(Duration::from_micros).collect();
            let (sweeps, last_render) = simulate(shards, interval, render, span, &late);
            // A pass's lateness, and a millisecond's rounding of its wait.
            let slack = 3 * MS;
            for (shard, times) in sweeps.iter().enumerate() {
                prop_assert!(times[0] <= interval * shard as u32 / shards as u32 + slack);
                for pair in times.windows(2) {
                    let gap = pair[1] - pair[0];
                    prop_assert!(gap >= interval, "swept {:?} apart, interval {:?}", gap, interval);
                    prop_assert!(gap <= interval + render + slack,
                        "swept {:?} apart (interval {:?}, render {:?})", gap, interval, render);
                }
                let last = *times.last().unwrap();
                prop_assert!(last >= last_render && last <= last_render + interval + slack,
                    "last swept at {:?}, last render at {:?}", last, last_render);
            }
            let total: usize = sweeps.iter().map(Vec::len).sum();
            let allowed = shards as f64 * (span.as_secs_f64() / interval.as_secs_f64() + 1.0);
            prop_assert!(total as f64 <= allowed + 1e-6, "{} sweeps, {} allowed", total, allowed);
        }
    }
}
