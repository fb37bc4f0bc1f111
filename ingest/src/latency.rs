//! [`LatencyHistogram`]: how long acknowledged votes waited to become durable, in fixed buckets
//! (Prometheus' histogram: cumulative `le` buckets, a sum and a count). Lock-free: one atomic add
//! per bucket hit, a batch of votes that waited together is one observation of weight `n`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last bucket, `+Inf`, is implicit).
pub const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS_SECONDS.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records `n` votes that each waited `waited`.
    pub fn observe(&self, waited: Duration, n: u64) {
        let secs = waited.as_secs_f64();
        let bucket = BUCKETS_SECONDS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS_SECONDS.len());
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
                let le = BUCKETS_SECONDS.get(i).copied().unwrap_or(f64::INFINITY);
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
}
