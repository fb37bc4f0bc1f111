//! The report: throughput, latency percentiles from an HdrHistogram (microsecond resolution, three
//! significant digits), status and error counts; printed for people and, with `--json-report`,
//! written as JSON. Also the one-line progress format.

use crate::verify::Verification;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Latencies are recorded in microseconds, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub url: String,
    /// Prefix of the voter and vote ids of this run.
    pub prefix: String,
    pub seed: u64,
    /// "open" (fixed schedule, latency from the intended send time) or "closed".
    pub mode: String,
    pub target_rate: Option<f64>,
    pub connections: usize,
    /// Votes per request (1: single votes through POST /v1/votes).
    pub batch: usize,
    pub poll_ids: Vec<i64>,
    pub voters: u32,
    pub duplicate_share: f64,
    pub retry_share: f64,
    /// From the first scheduled send to the last answer (acknowledged_per_sec uses this).
    pub elapsed_secs: f64,
    /// From the first scheduled send to the end of the run, give-ups included.
    pub wall_secs: f64,
    /// Submissions taken from the plan and handed to a lane.
    pub submissions: u64,
    /// Submissions that reached a final state (acknowledged, refused or given up).
    pub completed: u64,
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Submissions acknowledged (202, or accepted in a batch).
    pub acknowledged: u64,
    pub acknowledged_per_sec: f64,
    /// Submissions refused with a 4xx (by code in `rejections`).
    pub rejected: u64,
    /// Submissions abandoned after --give-up-secs without an answer.
    pub given_up: u64,
    /// Of those, how many may still have been written by the server (uncertain).
    pub given_up_uncertain: u64,
    /// Refused submissions with an earlier attempt of unknown fate (also uncertain).
    pub rejected_uncertain: u64,
    /// Submissions still queued when the run stopped (duration over, or interrupted).
    pub not_sent: u64,
    /// Latency of acknowledged submissions: answer − intended send time (open loop) or
    /// answer − first send (closed loop), retries included.
    pub latency: Latency,
    /// HTTP status of every answer (retried ones included).
    pub status_counts: BTreeMap<String, u64>,
    /// Attempts without an answer: connect, broken, timeout.
    pub errors: BTreeMap<String, u64>,
    /// Final refusals by error code.
    pub rejections: BTreeMap<String, u64>,
    pub connections_opened: u64,
    /// Accepted requests, from their own send to their answer (retries and schedule excluded):
    /// what queueing at the server cost the votes it took.
    pub answer_latency: Latency,
    /// Open loop: how late the load generator sent each acknowledged submission, from the later
    /// of its due time and its lane's previous answer to its first send: the generator's own
    /// delay before the send. It is a lower bound of the generator's share of `latency`: a late
    /// read of an answer counts in `answer_latency` (and in the wait of the lane's next vote).
    pub send_lateness: Option<Latency>,
    /// Each second of the run (`until_secs`): the submissions acknowledged in it, their p99 and
    /// max as `latency`'s, their p99 as `answer_latency`'s and their p99 as `send_lateness`'s.
    pub by_second: Vec<crate::seconds::Second>,
    /// Vote-to-screen latency (`--screen-latency`).
    pub screen_latency: Option<Latency>,
    pub screen_unseen: Option<u64>,
    /// With `--viewers`: what the live viewers measured.
    pub viewers: Option<crate::viewers::ViewerReport>,
    pub verify: Option<Verification>,
}

impl Report {
    pub fn print(&self) {
        println!();
        println!(
            "== loadgen report: {} loop{}, {} connections, {}",
            self.mode,
            self.target_rate
                .map(|r| format!(" at {r} votes/s"))
                .unwrap_or_default(),
            self.connections,
            if self.batch > 1 {
                format!("batches of {} votes", self.batch)
            } else {
                "single votes".to_owned()
            }
        );
        println!(
            "polls {:?}, {} voters, id prefix {}, seed {}",
            self.poll_ids, self.voters, self.prefix, self.seed
        );
        println!(
            "elapsed {:.2} s (run {:.2} s): {} submissions, {} requests, {} acknowledged ({:.0} votes/s)",
            self.elapsed_secs,
            self.wall_secs,
            self.submissions,
            self.requests,
            self.acknowledged,
            self.acknowledged_per_sec
        );
        println!(
            "rejected {} {:?}; given up {} ({} uncertain); uncertain refusals {}; not sent {}",
            self.rejected,
            self.rejections,
            self.given_up,
            self.given_up_uncertain,
            self.rejected_uncertain,
            self.not_sent
        );
        let l = &self.latency;
        println!(
            "latency ({}): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  mean {:.2} ms  (n={})",
            if self.mode == "open" {
                "from the intended send time"
            } else {
                "from the send time"
            },
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            l.mean_ms,
            l.count
        );
        println!(
            "status {:?}; errors {:?}; connections opened {}",
            self.status_counts, self.errors, self.connections_opened
        );
        let a = &self.answer_latency;
        println!(
            "accepted requests, send to answer: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (n={})",
            a.p50_ms, a.p99_ms, a.max_ms, a.count
        );
        if let Some(l) = &self.send_lateness {
            println!(
                "sent late by the generator (from the later of the due time and the lane's previous answer): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        if let Some(w) = crate::seconds::Second::worst(&self.by_second) {
            println!(
                "worst second (the one ending at {:.1} s): p99 {:.1} ms, send to answer p99 {:.1} ms, sent late p99 {:.1} ms, {} acknowledged",
                w.until_secs, w.p99_ms, w.answer_p99_ms, w.send_late_p99_ms, w.acknowledged
            );
        }
        if let Some(s) = &self.screen_latency {
            println!(
                "vote-to-screen: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={}, never seen {})",
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms,
                s.count,
                self.screen_unseen.unwrap_or(0)
            );
        }
        if let Some(v) = &self.viewers {
            v.print();
        }
    }
}

/// Formats a duration in microseconds for the progress line.
pub fn fmt_us(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.0}s", us as f64 / 1e6)
    } else if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else {
        format!("{:.1}ms", us as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_us(1500), "1.5ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
        assert_eq!(fmt_us(12_000_000), "12s");
    }
}
