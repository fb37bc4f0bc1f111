//! What the processor shows of itself: [`ProcessorMetrics`] (counters, the partitions it owns
//! and their positions, readiness) and the collectors that render them on `/metrics`:
//! `crowdtick_processor_*`, and [`LogProgress`], each votes partition's high watermark
//! (`crowdtick_log_high_watermark`) and this processor's lag behind it
//! (`crowdtick_processor_lag_records`).

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use schemas::{Offset, Partition};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use storage::{Log, Topic};

/// The processor's counters and what it owns.
#[derive(Debug, Default)]
pub struct ProcessorMetrics {
    pub records_read: AtomicU64,
    pub votes_counted: AtomicU64,
    pub votes_counted_late_for_window: AtomicU64,
    pub votes_duplicate: AtomicU64,
    pub votes_rejected: AtomicU64,
    pub records_undecodable: AtomicU64,
    /// Votes-topic records deleted before they were counted, skipped as the operator accepted.
    pub votes_lost: AtomicU64,
    pub partials_emitted: AtomicU64,
    pub restarts: AtomicU64,
    pub catalog_rereads: AtomicU64,
    pub cache_write_failures: AtomicU64,
    pub checkpoints_written: AtomicU64,
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub checkpoints_restored: AtomicU64,
    /// Next offset to read, per owned votes partition (lag = high watermark − this).
    pub positions: Arc<Mutex<BTreeMap<Partition, Offset>>>,
    /// Whether this processor knows which partitions it owns (the consumer group has assigned
    /// them, possibly none; always for the embedded log, which owns every partition).
    pub owns_partitions: AtomicBool,
    /// Owned partitions not yet caught up: assigned but not started, restoring, replaying, or
    /// restarting after a failure, until a fetch reaches the end of the log. Empty and
    /// `owns_partitions`: the processor is ready.
    pub catching_up: Mutex<BTreeSet<Partition>>,
    /// Why each partition task that failed did so, until its restarted task reads the log again:
    /// readiness says it.
    pub failures: Mutex<BTreeMap<Partition, String>>,
}

impl ProcessorMetrics {
    /// Readiness of the processor: `Err` says why it is not ready.
    pub fn readiness(&self) -> Result<String, String> {
        if !self.owns_partitions.load(Ordering::Relaxed) {
            return Err("waiting for the consumer group to assign partitions".into());
        }
        // One lock at a time (stop_partitions takes positions, then catching_up).
        let catching_up = self.catching_up.lock().clone();
        let failures = self.failures.lock().clone();
        if !failures.is_empty() {
            let why: Vec<String> = failures
                .iter()
                .map(|(p, e)| format!("partition {p} failed ({e}); restarting it every second"))
                .collect();
            return Err(why.join("; "));
        }
        if !catching_up.is_empty() {
            return Err(format!(
                "partitions {catching_up:?} are restoring or replaying the votes log"
            ));
        }
        let owned: Vec<Partition> = self.positions.lock().keys().copied().collect();
        Ok(format!("owns partitions {owned:?}, caught up"))
    }
}

impl ProcessorMetrics {
    /// Registers the processor's counters (`crowdtick_processor_*`).
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        storage::metrics::register(registry, self.clone());
    }
}

impl Collector for ProcessorMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "crowdtick_processor_records_read",
                "Votes-topic records read (replays included).",
                &self.records_read,
            ),
            (
                "crowdtick_processor_votes_counted",
                "Votes counted.",
                &self.votes_counted,
            ),
            (
                "crowdtick_processor_votes_counted_late_for_window",
                "Votes counted after their window closed.",
                &self.votes_counted_late_for_window,
            ),
            (
                "crowdtick_processor_votes_duplicate",
                "Votes not counted: voter already counted.",
                &self.votes_duplicate,
            ),
            (
                "crowdtick_processor_votes_rejected",
                "Votes not counted: late, closed or invalid.",
                &self.votes_rejected,
            ),
            (
                "crowdtick_processor_records_undecodable",
                "Records that were not decodable votes.",
                &self.records_undecodable,
            ),
            (
                "crowdtick_processor_votes_lost",
                "Votes-topic records deleted by retention before they were counted, skipped as \
                 processor.accept_lost_votes allowed (a restart before the partition's next \
                 snapshot takes, and counts, the same loss again).",
                &self.votes_lost,
            ),
            (
                "crowdtick_processor_partials_emitted",
                "Partial tallies published.",
                &self.partials_emitted,
            ),
            (
                "crowdtick_processor_restarts",
                "Partition task restarts after an error (retries of a restore from the tally store included).",
                &self.restarts,
            ),
            (
                "crowdtick_processor_catalog_rereads",
                "Poll catalog re-reads because a vote named a poll changed elsewhere.",
                &self.catalog_rereads,
            ),
            (
                "crowdtick_processor_cache_write_failures",
                "Flushes whose results-cache write failed (retried at the next flush).",
                &self.cache_write_failures,
            ),
            (
                "crowdtick_processor_checkpoints_written",
                "Partition checkpoints written to the tally store.",
                &self.checkpoints_written,
            ),
            (
                "crowdtick_processor_checkpoint_bytes",
                "Bytes of partition checkpoints written.",
                &self.checkpoint_bytes,
            ),
            (
                "crowdtick_processor_checkpoint_failures",
                "Checkpoint writes that failed (retried at the next interval).",
                &self.checkpoint_failures,
            ),
            (
                "crowdtick_processor_checkpoints_restored",
                "Partitions whose state was restored from a checkpoint instead of replayed.",
                &self.checkpoints_restored,
            ),
        ];
        storage::metrics::counters(&mut encoder, &counters)
    }
}

/// Each votes partition's high watermark and, where this process counts it, the lag behind it.
/// Reading a watermark is I/O (a broker round trip on Kafka), so [`LogProgress::refresh`] reads
/// them before a scrape is rendered; the collector renders what the last refresh saw.
pub struct LogProgress {
    log: Arc<dyn Log>,
    /// The processor's positions, when this process runs one.
    processor: Option<Arc<ProcessorMetrics>>,
    /// (partition, high watermark, lag) as of the last refresh.
    seen: Mutex<Vec<(Partition, Offset, Option<u64>)>>,
}

impl fmt::Debug for LogProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogProgress")
            .field("seen", &self.seen)
            .finish()
    }
}

impl LogProgress {
    pub fn new(log: Arc<dyn Log>, processor: Option<Arc<ProcessorMetrics>>) -> Arc<Self> {
        Arc::new(Self {
            log,
            processor,
            seen: Mutex::new(Vec::new()),
        })
    }

    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        storage::metrics::register(registry, self.clone());
    }

    /// Reads every votes partition's high watermark (a failed read shows as 0).
    pub async fn refresh(&self) {
        let positions = self
            .processor
            .as_ref()
            .map(|p| p.positions.lock().clone())
            .unwrap_or_default();
        let mut seen = Vec::new();
        for part in Partition::all(self.log.partitions(Topic::Votes)) {
            let hw = self
                .log
                .high_watermark(Topic::Votes, part)
                .await
                .unwrap_or(Offset::ZERO);
            let lag = positions.get(&part).map(|&pos| hw.since(pos));
            seen.push((part, hw, lag));
        }
        *self.seen.lock() = seen;
    }
}

impl Collector for LogProgress {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let seen = self.seen.lock().clone();
        let mut watermarks = encoder.encode_descriptor(
            "crowdtick_log_high_watermark",
            "Records in each votes partition.",
            None,
            MetricType::Gauge,
        )?;
        for &(part, hw, _) in &seen {
            let partition = part.to_string();
            ConstGauge::new(hw.0).encode(
                watermarks
                    .encode_family(&[("topic", "votes"), ("partition", partition.as_str())])?,
            )?;
        }
        let mut lags = encoder.encode_descriptor(
            "crowdtick_processor_lag_records",
            "Records of an owned votes partition not yet processed here.",
            None,
            MetricType::Gauge,
        )?;
        for &(part, _, lag) in &seen {
            if let Some(lag) = lag {
                let partition = part.to_string();
                ConstGauge::new(lag as i64)
                    .encode(lags.encode_family(&[("partition", partition.as_str())])?)?;
            }
        }
        Ok(())
    }
}
