//! The run second by second: once a second the lanes' histograms of that second are merged into
//! one [`Second`], printed as the progress line (unless `--quiet`) and kept for the report
//! (`by_second`), so a run's tail can be placed in time: a crowd of viewers joining, the first
//! seconds of a spike, a stall of the server.

use crate::report::{fmt_us, new_histogram};
use crate::run::Stats;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Latency histograms of a shard of lanes in the current second, from the due time (open loop;
/// the first send in the closed loop), from each accepted request's own send to its answer (no
/// retries, no schedule: what the server's queue cost the votes it took) and, in the open loop,
/// each acknowledged submission's lateness: from the later of its due time and the moment its
/// lane was done with the submission before it, to its first send (how long the load generator
/// itself held it back). Once a second [`SecondsTask`] takes them and adds them to the run's
/// totals (a `LaneHist` too), so a vote is recorded once, not once a second and once for the run.
pub(crate) struct LaneHist {
    pub latency: Histogram<u64>,
    pub answered: Histogram<u64>,
    pub late: Histogram<u64>,
}

impl LaneHist {
    pub fn new() -> Self {
        Self {
            latency: new_histogram(),
            answered: new_histogram(),
            late: new_histogram(),
        }
    }

    /// Adds `other`'s values into these (the bounds are the same: nothing can fail).
    fn add(&mut self, other: &LaneHist) {
        self.latency.add(&other.latency).ok();
        self.answered.add(&other.answered).ok();
        self.late.add(&other.late).ok();
    }

    fn reset(&mut self) {
        self.latency.reset();
        self.answered.reset();
        self.late.reset();
    }
}

/// One second of the run: the submissions acknowledged in it and their latencies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Second {
    /// When it was taken, in seconds from the first scheduled send: a second's end, later if
    /// the generator was held up (a tick missed is not made up for), or the run's end for the
    /// last, shorter one.
    pub until_secs: f64,
    pub acknowledged: u64,
    /// From the due time (open loop) or the first send (closed loop), as the run's `latency`.
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From each accepted request's own send to its answer, as the run's `answer_latency`.
    pub answer_p99_ms: f64,
    /// How late the load generator sent them, as the run's `send_lateness` (0 in the closed
    /// loop).
    pub send_late_p99_ms: f64,
}

impl Second {
    fn of(
        until: Duration,
        latency: &Histogram<u64>,
        answered: &Histogram<u64>,
        late: &Histogram<u64>,
    ) -> Self {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Self {
            until_secs: until.as_secs_f64(),
            acknowledged: latency.len(),
            p99_ms: ms(latency, 0.99),
            max_ms: if latency.is_empty() {
                0.0
            } else {
                latency.max() as f64 / 1000.0
            },
            answer_p99_ms: ms(answered, 0.99),
            send_late_p99_ms: ms(late, 0.99),
        }
    }

    /// The second whose p99 from the due time was the highest, of those with at least
    /// [`Self::ENOUGH`] acknowledged: a p99 of fewer is their max (the run's last moments,
    /// or a few retries).
    pub fn worst(seconds: &[Second]) -> Option<&Second> {
        (seconds.iter())
            .filter(|s| s.acknowledged >= Self::ENOUGH)
            .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
    }

    /// The fewest acknowledged votes whose p99 [`Self::worst`] weighs.
    pub const ENOUGH: u64 = 100;
}

/// The task that takes each second's histograms from the lanes.
pub(crate) struct SecondsTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<(Vec<Second>, LaneHist)>,
}

impl SecondsTask {
    /// Starts taking the seconds from `start` on, printing a progress line each if `progress`.
    pub fn spawn(
        stats: Arc<Stats>,
        hists: Vec<Arc<Mutex<LaneHist>>>,
        start: Instant,
        progress: bool,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(take_seconds(stats, hists, start, progress, stopped));
        Self { stop, task }
    }

    /// Every second of the run, the last (partial) one included, and the run's histograms;
    /// called once the lanes are done. `None` if the task failed (it cannot: it only adds
    /// histograms and prints).
    pub async fn finish(self) -> Option<(Vec<Second>, LaneHist)> {
        let _ = self.stop.send(());
        self.task
            .await
            .inspect_err(|e| {
                eprintln!(
                    "warning: the run's seconds were not taken ({e}): the report has no by_second \
                     and no latencies"
                )
            })
            .ok()
    }
}

async fn take_seconds(
    stats: Arc<Stats>,
    hists: Vec<Arc<Mutex<LaneHist>>>,
    start: Instant,
    progress: bool,
    mut stopped: oneshot::Receiver<()>,
) -> (Vec<Second>, LaneHist) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    // A tick missed (the generator held up) is not made up for by a burst of short seconds.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seconds = Vec::new();
    let (mut run, mut this) = (LaneHist::new(), LaneHist::new());
    let mut before = Counts::default();
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stopped => true,
        };
        this.reset();
        for h in &hists {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            this.add(&h);
            h.reset();
        }
        run.add(&this);
        if !(last && this.latency.is_empty()) {
            seconds.push(Second::of(
                start.elapsed(),
                &this.latency,
                &this.answered,
                &this.late,
            ));
        }
        if last {
            return (seconds, run);
        }
        if progress {
            let now = Counts {
                requests: stats.requests.load(Relaxed),
                acked: stats.acked.load(Relaxed),
            };
            print_progress(&stats, start, now, before, &run.latency, &this.latency);
            before = now;
        }
    }
}

/// Requests sent and submissions acknowledged so far.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    acked: u64,
}

/// The progress line of a second: the counts `now` and a second `before`.
fn print_progress(
    stats: &Stats,
    start: Instant,
    now: Counts,
    before: Counts,
    total: &Histogram<u64>,
    second: &Histogram<u64>,
) {
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            "-".to_owned()
        } else {
            fmt_us(h.value_at_quantile(q))
        }
    };
    eprintln!(
        "[{:>6.1}s] requests {} ({}/s)  acked {} ({}/s)  rejected {}  gave up {}  errors: connect {} broken {} timeout {} 503 {} 429 {} 5xx {}  p99 {} (last 1s {}, max {})",
        start.elapsed().as_secs_f64(),
        now.requests,
        now.requests - before.requests,
        now.acked,
        now.acked - before.acked,
        stats.rejected.load(Relaxed),
        stats.given_up.load(Relaxed),
        stats.err_connect.load(Relaxed),
        stats.err_broken.load(Relaxed),
        stats.err_timeout.load(Relaxed),
        stats.status(503),
        stats.status(429),
        (500..600).filter(|&s| s != 503).map(|s| stats.status(s)).sum::<u64>(),
        q(total, 0.99),
        q(second, 0.99),
        if total.is_empty() { "-".to_owned() } else { fmt_us(total.max()) },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holds_its_own_percentiles_and_the_worst_is_the_highest_p99() {
        let (mut latency, mut answered, mut late) =
            (new_histogram(), new_histogram(), new_histogram());
        for ms in 1..=100u64 {
            latency.record(ms * 1000).unwrap();
            answered.record(ms * 100).unwrap();
            late.record(ms * 10).unwrap();
        }
        let s = Second::of(Duration::from_millis(2500), &latency, &answered, &late);
        assert_eq!(s.acknowledged, 100);
        assert_eq!(s.until_secs, 2.5);
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.answer_p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.send_late_p99_ms - 0.99).abs() < 0.001, "{s:?}");
        let none = new_histogram();
        let quiet = Second::of(Duration::from_secs(3), &none, &none, &none);
        assert_eq!((quiet.acknowledged, quiet.p99_ms), (0, 0.0));
        // A second of a few votes is not the worst, however slow they were.
        let mut few = new_histogram();
        few.record(5_000_000).unwrap();
        let tail = Second::of(Duration::from_secs(4), &few, &few, &none);
        let seconds = [quiet.clone(), s.clone(), quiet, tail];
        assert_eq!(Second::worst(&seconds), Some(&s));
        assert_eq!(Second::worst(&[]), None);
    }
}
