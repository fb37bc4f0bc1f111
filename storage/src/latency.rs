//! [`LatencyHistogram`]: how long something waited, in fixed buckets (Prometheus' histogram:
//! cumulative `le` buckets, a sum and a count), for every crate's collector. Lock-free: one atomic
//! add per bucket hit; `n` things that waited together (a batch of votes, a shard of viewers) are
//! one observation of weight `n`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets for a vote's wait, in seconds (the last bucket, `+Inf`, is
/// implicit): what [`LatencyHistogram::default`] has.
pub const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets for what reaches a screen (a tally's way to a node's results, its
/// way to the viewers), finer between 50 ms and 1 s, where a coalescing interval falls.
pub const SCREEN_BUCKETS_SECONDS: [f64; 18] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    5.0, 10.0,
];

#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    /// Buckets for a vote's wait ([`BUCKETS_SECONDS`]).
    fn default() -> Self {
        Self::new(&BUCKETS_SECONDS)
    }
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (seconds, ascending) and `+Inf` after them.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records `n` things that each waited `waited`.
    pub fn observe(&self, waited: Duration, n: u64) {
        let secs = waited.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(waited.as_micros() as u64 * n, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative) by upper bound (the last is `+Inf`), the sum in
    /// seconds, and the count: what [`MetricEncoder::encode_histogram`] takes.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let le = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                (le, c.load(Ordering::Relaxed))
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let count = buckets.iter().map(|(_, n)| n).sum();
        (buckets, sum, count)
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let (buckets, sum, count) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_add_up() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(400), 1); // ≤ 0.5 ms
        h.observe(Duration::from_millis(3), 10); // ≤ 5 ms
        h.observe(Duration::from_secs(60), 2); // +Inf
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 13);
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[2], (0.0025, 0));
        assert_eq!(buckets[3], (0.005, 10));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
        assert!((sum - (0.0004 + 0.03 + 120.0)).abs() < 1e-9, "{sum}");
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_histogram_of_other_bounds_has_a_bucket_each_and_one_past_them() {
        let h = LatencyHistogram::new(&SCREEN_BUCKETS_SECONDS);
        h.observe(Duration::from_millis(180), 512); // ≤ 200 ms
        h.observe(Duration::from_millis(60), 3); // ≤ 75 ms
        let (buckets, _, count) = h.snapshot();
        assert_eq!(buckets.len(), SCREEN_BUCKETS_SECONDS.len() + 1);
        assert_eq!(count, 515);
        assert_eq!(buckets[8], (0.2, 512));
        assert_eq!(buckets[5], (0.075, 3));
        assert_eq!(buckets.iter().filter(|(_, n)| *n > 0).count(), 2);
    }
}
