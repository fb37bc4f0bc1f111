//! The logs' collectors for `/metrics`: the embedded log's group commits ([`LogMetrics`],
//! `crowdtick_log_*`) and the schema registry's framing ([`RegistryMetrics`],
//! `crowdtick_schema_registry_*`). Each renders its atomics when scraped; nothing on the append
//! path changes. [`counters`], [`gauges`] and [`histograms`] render the tables every crate's
//! collector keeps.

use crate::embedded_log::LogMetrics;
use crate::latency::LatencyHistogram;
use crate::registry_log::RegistryMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Renders counters (`name` without `_total`; the encoder adds it) from their atomics: every
/// crate's collector renders its tables with this and [`gauges`].
pub fn counters(
    encoder: &mut DescriptorEncoder,
    table: &[(&str, &str, &AtomicU64)],
) -> fmt::Result {
    for (name, help, value) in table {
        ConstCounter::new(value.load(Relaxed)).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    Ok(())
}

/// Renders gauges read at the scrape.
pub fn gauges(encoder: &mut DescriptorEncoder, table: &[(&str, &str, i64)]) -> fmt::Result {
    for (name, help, value) in table {
        ConstGauge::new(*value).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Gauge,
        )?)?;
    }
    Ok(())
}

/// Renders histograms ([`LatencyHistogram`]s, each name with its unit: `_seconds`).
pub fn histograms(
    encoder: &mut DescriptorEncoder,
    table: &[(&str, &str, &LatencyHistogram)],
) -> fmt::Result {
    for (name, help, histogram) in table {
        histogram.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)?;
    }
    Ok(())
}

/// Registers `collector` (an `Arc` of a part's counters) in `registry`.
pub fn register<C: Collector>(registry: &mut Registry, collector: C) {
    registry.register_collector(Box::new(collector));
}

impl LogMetrics {
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, self.clone());
    }
}

impl Collector for LogMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        counters(
            &mut encoder,
            &[
                (
                    "crowdtick_log_records_appended",
                    "Records made durable in the embedded log.",
                    &self.records_appended,
                ),
                (
                    "crowdtick_log_bytes_appended",
                    "Bytes made durable in the embedded log.",
                    &self.bytes_appended,
                ),
                (
                    "crowdtick_log_group_commits",
                    "Group commits (one write + fsync round).",
                    &self.group_commits,
                ),
                ("crowdtick_log_fsyncs", "fdatasync calls.", &self.fsyncs),
                (
                    "crowdtick_log_appends_expired",
                    "Append requests dropped unwritten because their deadline passed.",
                    &self.appends_expired,
                ),
                (
                    "crowdtick_log_appends_rejected_full",
                    "Append requests refused because the queue was full.",
                    &self.appends_rejected_full,
                ),
                (
                    "crowdtick_log_segments_retired",
                    "Segment files deleted by retention (log.retire_after_snapshot).",
                    &self.segments_retired,
                ),
                (
                    "crowdtick_log_bytes_retired",
                    "Bytes of the segment files deleted by retention.",
                    &self.bytes_retired,
                ),
            ],
        )
    }
}

impl RegistryMetrics {
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, self.clone());
    }
}

impl Collector for RegistryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        counters(
            &mut encoder,
            &[
                (
                    "crowdtick_schema_registry_records_framed",
                    "Records appended to Kafka in the Confluent wire format (magic byte, schema id, datum).",
                    &self.records_framed,
                ),
                (
                    "crowdtick_schema_registry_records_bare",
                    "Records read without the wire-format header (written before the registry was on).",
                    &self.records_bare,
                ),
                (
                    "crowdtick_schema_registry_records_transcoded",
                    "Records read that another schema version wrote, decoded by its id and resolved to CrowdTick's.",
                    &self.records_transcoded,
                ),
                (
                    "crowdtick_schema_registry_records_unreadable",
                    "Records read that no schema could turn into CrowdTick's (handed on empty, never counted).",
                    &self.records_unreadable,
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_total_suffix() {
        let log = Arc::new(LogMetrics::default());
        log.fsyncs.store(4, Relaxed);
        let mut registry = Registry::default();
        log.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "# TYPE crowdtick_log_fsyncs_total counter\ncrowdtick_log_fsyncs_total 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\ncrowdtick_log_appends_rejected_full_total 0\n"),
            "{text}"
        );
    }
}
