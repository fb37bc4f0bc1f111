//! [`AppState`]: what a running node shares between its routes, `/metrics` and the old API.

use crate::config::Config;
use processor::ProcessorMetrics;
use results::ResultsBoard;
use std::sync::Arc;
use storage::embedded_log::LogMetrics;
use storage::{Log, PollCatalog};

/// Everything a running server shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The votes and tallies log (None in a query-only process, which reads the stores).
    pub log: Option<Arc<dyn Log>>,
    /// The embedded log's counters (None on Kafka).
    pub log_metrics: Option<Arc<LogMetrics>>,
    /// The schema registry's counters (with `schema_registry.url` only).
    pub registry_metrics: Option<Arc<storage::RegistryMetrics>>,
    pub catalog: PollCatalog,
    pub board: Arc<ResultsBoard>,
    pub ingest: Option<Arc<ingest::Ingest>>,
    pub realtime: Option<Arc<realtime::Realtime>>,
    pub processor_metrics: Arc<ProcessorMetrics>,
    /// The accept loop's counters ([`edge::listener`]).
    pub http_metrics: Arc<edge::listener::HttpMetrics>,
}
