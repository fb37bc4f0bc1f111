//! The realtime service's figures on `/metrics` (`crowdtick_realtime_*`): open live connections,
//! watched polls, messages sent and slow viewers dropped, how old the results were that sweeps
//! wrote and how long the sweeps took, read when scraped.

use crate::Realtime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use storage::metrics::{counters, gauges, histograms, register};

impl Realtime {
    /// Registers the realtime service's collector.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, RealtimeCollector(self.clone()));
    }
}

struct RealtimeCollector(Arc<Realtime>);

impl fmt::Debug for RealtimeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RealtimeCollector")
    }
}

impl Collector for RealtimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let rt = &self.0;
        gauges(
            &mut encoder,
            &[
                ("crowdtick_realtime_connections", "Open WebSocket/SSE connections.", rt.connections.load(Relaxed) as i64),
                (
                    "crowdtick_realtime_feeds",
                    "Polls being watched (one feed each, rendered once per update for all its viewers).",
                    rt.feeds() as i64,
                ),
            ],
        )?;
        counters(
            &mut encoder,
            &[
                ("crowdtick_realtime_messages_sent", "Live messages sent.", &rt.messages_sent),
                (
                    "crowdtick_realtime_slow_consumers_dropped",
                    "Live clients disconnected for not taking a message within realtime.send_timeout_ms.",
                    &rt.slow_consumers_dropped,
                ),
            ],
        )?;
        histograms(
            &mut encoder,
            &[
                (
                    "crowdtick_realtime_results_age_seconds",
                    "Per viewer a sweep wrote the results of a newer tally to: how old they were when the sweep ended, from this node's results board taking the tally (about this node's part of the viewer's lag, up to the sweep's length more for a viewer written early in it; a viewer's own task, writing to a socket that was full, is not counted).",
                    &rt.results_age,
                ),
                (
                    "crowdtick_realtime_sweep_duration_seconds",
                    "How long each sweep of a shard of a poll's viewers took to write them.",
                    &rt.sweep_duration,
                ),
            ],
        )
    }
}
