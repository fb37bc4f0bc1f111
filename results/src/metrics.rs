//! The results board's figures on `/metrics` (`crowdtick_results_*`): how long the partial
//! tallies took to reach it, read when scraped.

use crate::ResultsBoard;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;
use storage::metrics::{histograms, register};

impl ResultsBoard {
    /// Registers the board's collector.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        register(registry, BoardCollector(self.clone()));
    }
}

struct BoardCollector(Arc<ResultsBoard>);

impl fmt::Debug for BoardCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoardCollector")
    }
}

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        histograms(
            &mut encoder,
            &[(
                "crowdtick_results_tally_delay_seconds",
                "Partial tallies, from a processor emitting one (its clock) to this node's results board taking it from the tallies topic (this node's clock): the tallies' way through the log. Only partials emitted after the node began following the topic, not the start's catch-up.",
                &self.0.tally_delay,
            )],
        )
    }
}
