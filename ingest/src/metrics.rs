//! The edge's figures on `/metrics` (`crowdtick_ingest_*`): [`IngestMetrics`], counted on the vote
//! path with one relaxed atomic add per request or batch, and the collector that renders them with
//! the admission's state when scraped.

use crate::Ingest;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use storage::latency::LatencyHistogram;

/// Counters of the vote path.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub requests: AtomicU64,
    pub batch_requests: AtomicU64,
    pub votes_accepted: AtomicU64,
    pub votes_rejected: AtomicU64,
    pub votes_unavailable: AtomicU64,
    /// Sum of append waits in microseconds (with `votes_accepted`, the mean durable latency).
    pub append_wait_us: AtomicU64,
    /// The same waits as a histogram, per acknowledged vote.
    pub durable_latency: LatencyHistogram,
    /// Single votes acknowledged: from the kernel's receipt of the request to the 202 (when the
    /// listener stamps arrivals): what the node's own queues cost the votes it took.
    pub sojourn_latency: LatencyHistogram,
}

impl Ingest {
    /// Registers the edge's collector (`crowdtick_ingest_*`).
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        storage::metrics::register(registry, IngestCollector(self.clone()));
    }
}

struct IngestCollector(Arc<Ingest>);

impl fmt::Debug for IngestCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IngestCollector")
            .field(&self.0.metrics)
            .finish()
    }
}

impl Collector for IngestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (i, a) = (&self.0.metrics, &self.0.admission);
        let counters: [(&str, &str, &AtomicU64); 12] = [
            ("crowdtick_ingest_requests", "Single-vote requests.", &i.requests),
            ("crowdtick_ingest_batch_requests", "Batch requests.", &i.batch_requests),
            ("crowdtick_ingest_votes_accepted", "Votes acknowledged (durable).", &i.votes_accepted),
            ("crowdtick_ingest_votes_rejected", "Votes refused with a 4xx.", &i.votes_rejected),
            ("crowdtick_ingest_votes_unavailable", "Votes answered 503 (not written).", &i.votes_unavailable),
            (
                "crowdtick_ingest_append_wait_microseconds",
                "Time votes waited to become durable.",
                &i.append_wait_us,
            ),
            (
                "crowdtick_ingest_votes_shed_in_flight",
                "Votes shed (503) because the edge held as many votes in flight as it may.",
                &a.shed_in_flight,
            ),
            (
                "crowdtick_ingest_votes_shed_queue_delay",
                "Votes shed (503) because the log's queueing delay stood above its target.",
                &a.shed_delay,
            ),
            (
                "crowdtick_ingest_requests_shed_wait",
                "Vote requests shed (503) because they waited too long for this node (from the kernel's receipt of their bytes).",
                &a.wait.shed,
            ),
            (
                "crowdtick_ingest_votes_shed_backlog",
                "Votes shed (503) after a read pause while ingest.shed_backlog_appends appends were in flight.",
                &a.shed_backlog,
            ),
            (
                "crowdtick_ingest_read_pauses",
                "Times this node stopped reading new requests to answer the vote requests it held (ingest.pause_reads_in_flight).",
                &a.read_gate.pauses,
            ),
            (
                "crowdtick_ingest_read_pauses_cut_short",
                "Read pauses ended by their 250 ms limit before half the vote appends were answered (a slow log).",
                &a.read_gate.pauses_cut_short,
            ),
        ];
        storage::metrics::counters(&mut encoder, &counters)?;
        storage::metrics::histograms(
            &mut encoder,
            &[
                (
                    "crowdtick_ingest_vote_duration_seconds",
                    "Time acknowledged votes waited to become durable (append to acknowledgement).",
                    &i.durable_latency,
                ),
                (
                    "crowdtick_ingest_vote_sojourn_seconds",
                    "Single votes acknowledged: from the kernel's receipt of the request to the 202 (what this node's queues cost them).",
                    &i.sojourn_latency,
                ),
            ],
        )?;
        storage::metrics::gauges(
            &mut encoder,
            &[
            (
                "crowdtick_ingest_reads_paused",
                "1 while this node reads no new requests until half the vote requests it holds are answered.",
                a.read_gate.is_closed() as i64,
            ),
            (
                "crowdtick_ingest_overloaded",
                "1 while no single vote request has met ingest.shed_wait_target_ms for ingest.shed_wait_interval_ms (requests past the target are shed; batches are judged against the interval only).",
                a.wait.is_overloaded(Instant::now()) as i64,
            ),
            (
                "crowdtick_ingest_votes_in_flight",
                "Votes accepted by the edge and not yet durable or refused.",
                a.in_flight() as i64,
            ),
            (
                "crowdtick_ingest_shedding",
                "1 while the edge sheds votes because the log has a standing queue.",
                a.is_shedding() as i64,
            ),
            (
                "crowdtick_ingest_shedding_backlog",
                "1 from a read pause until no vote was shed for ingest.shed_backlog_quiet_ms (votes are shed while ingest.shed_backlog_appends appends are in flight).",
                a.is_shedding_backlog(Instant::now()) as i64,
            ),
            ],
        )
    }
}
