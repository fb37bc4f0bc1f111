//! Composing a process: `crowdtick serve` runs every service in one process (on the embedded log,
//! or on Kafka, PostgreSQL and Redis); `crowdtick ingest|processor|query|realtime` runs one service
//! of the distributed mode ([`Roles`]).
//!
//! [`start_roles`] opens the backends the roles need, then lets each service start itself
//! (`ingest::start`, `processor::start::start`, `query::start`, `realtime::start`,
//! `seed_api::try_router`): each registers its collector in the node's metrics and hands back its
//! routes; the node adds its own endpoints (`edge::node`). [`run_roles`] serves it on a listener
//! until `shutdown` resolves, then stops the background tasks and lets the processor publish its
//! last partials and leave the group.

use crate::backends::{open_cache, open_checkpoints, open_log, open_stores, LogBackend};
use crate::config::Config;
use anyhow::Context;
use axum::Router;
use edge::listener::{HttpMetrics, ReadGate};
use edge::memory::MemoryMetrics;
use edge::metrics::NodeMetrics;
use edge::readiness::Readiness;
use processor::runner::Pipeline;
use processor::start::{Ownership, Processor};
use processor::{LogProgress, ProcessorMetrics};
use results::board::{follow_tallies, ReadFrom};
use results::ResultsBoard;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use storage::{CheckpointStore, EdgeRejections, PollCatalog, ShutdownTrigger, Topic};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long the readiness check waits for the log to answer.
const LOG_READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Which services a process runs: all of them (`serve`), or one (`ingest`, `processor`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub processor: bool,
    pub query: bool,
    pub realtime: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingest: true,
        processor: true,
        query: true,
        realtime: true,
    };
    pub const NONE: Roles = Roles {
        ingest: false,
        processor: false,
        query: false,
        realtime: false,
    };

    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }

    fn names(&self) -> String {
        [
            (self.ingest, "ingest"),
            (self.processor, "processor"),
            (self.query, "query"),
            (self.realtime, "realtime"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("+")
    }
}

/// A started node: its router, what its listener needs, and its background tasks.
pub struct App {
    pub config: Arc<Config>,
    pub roles: Roles,
    /// The node's routes, without the layer `edge::listener::serve` puts around them
    /// (`edge::node::NodeLayer`: the body read timeout, every error answer as JSON).
    pub router: Router,
    pub board: Arc<ResultsBoard>,
    /// The accept loop's counters (registered in the node's metrics).
    pub http_metrics: Arc<HttpMetrics>,
    /// The ingest edge's read gate, when this node takes votes and pauses reads.
    read_gate: Option<Arc<ReadGate>>,
    /// The realtime service's viewers' runtime, when this node serves viewers.
    event_streams: Option<tokio::runtime::Handle>,
    /// The realtime service, told of the stop (its WebSocket viewers are let go).
    realtime: Option<Arc<realtime::Realtime>>,
    shutdown: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
    processor: Option<Processor>,
}

/// Every service in one process (`crowdtick serve`).
pub async fn start(config: Config) -> anyhow::Result<App> {
    start_roles(config, Roles::ALL).await
}

pub async fn start_roles(config: Config, roles: Roles) -> anyhow::Result<App> {
    let backends = config.backends()?;
    if !roles.is_all() {
        anyhow::ensure!(
            backends.on_kafka() && backends.shares_polls(),
            "`crowdtick {}` runs one service of the distributed mode, which shares Kafka and PostgreSQL \
             with the other services: give --kafka BROKERS and --postgres URL (and --redis URL for the \
             results cache), or run `crowdtick serve` for every service in one process",
            roles.names()
        );
        // (A process running one service is on Kafka and PostgreSQL: it keeps nothing on disk.)
    } else {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    if roles.ingest {
        config.ingest.warn_of_development_keys(&config.listen);
    }
    let mut metrics = NodeMetrics::default();
    let http_metrics = Arc::new(HttpMetrics::default());
    http_metrics.register_metrics(&mut metrics.registry);

    let log = match roles.ingest || roles.processor || roles.realtime {
        true => {
            let opened = open_log(&backends.log).await?;
            if let Some(m) = &opened.embedded {
                m.register_metrics(&mut metrics.registry);
            }
            if let Some(m) = &opened.registry {
                m.register_metrics(&mut metrics.registry);
            }
            Some(opened.log)
        }
        false => None,
    };
    let (poll_store, tally_store) = open_stores(&backends.polls, &backends.tallies).await?;
    let cache = open_cache(&backends.cache).await?;
    let catalog = PollCatalog::load(poll_store).await?;
    let partitions = log
        .as_ref()
        .map_or(config.log.partitions, |l| l.partitions(Topic::Votes));
    let board = Arc::new(ResultsBoard::new(partitions));
    board.register_metrics(&mut metrics.registry);
    let (shutdown, shutdown_rx) = ShutdownTrigger::new();
    let processor_metrics = Arc::new(ProcessorMetrics::default());
    let mut tasks = Vec::new();
    let mut readiness = Readiness::default();

    // Every node, whatever its roles: a burst's freed buffers go back to the system once it is over.
    let memory_metrics = Arc::new(MemoryMetrics::default());
    memory_metrics.register_metrics(&mut metrics.registry);
    tasks.push(tokio::spawn(edge::memory::trim_when_quiet(
        memory_metrics,
        shutdown_rx.clone(),
    )));

    if catalog.is_shared() {
        let every = Duration::from_millis(config.polls.refresh_ms);
        tasks.push(tokio::spawn(catalog.clone().follow(
            cache.clone(),
            every,
            shutdown_rx.clone(),
        )));
    }
    // The votes log, for the services that write or read it (realtime reads only the tallies,
    // which its own check covers).
    if let (Some(log), true) = (&log, roles.ingest || roles.processor) {
        let answers = log.clone();
        readiness = readiness.check("log", move || {
            let log = answers.clone();
            async move { storage::log::readiness(&*log, LOG_READINESS_TIMEOUT).await }
        });
        let progress = LogProgress::new(
            log.clone(),
            roles.processor.then(|| processor_metrics.clone()),
        );
        progress.register_metrics(&mut metrics.registry);
        metrics.before_scrape(move || {
            let progress = progress.clone();
            async move { progress.refresh().await }
        });
    }
    if catalog.is_shared() {
        // An edge refuses votes past half the close lead; other nodes tolerate a few missed re-reads.
        let max_age = match config.ingest_config().catalog_max_age {
            Some(edge_max) if roles.ingest => edge_max,
            _ => Duration::from_millis((config.polls.refresh_ms * 20).max(5_000)),
        };
        let catalog = catalog.clone();
        readiness = readiness.check("poll_catalog", move || {
            std::future::ready(catalog.freshness(max_age))
        });
    }

    // The query node of the distributed mode reads results from Redis and PostgreSQL; every other
    // process that shows results follows the tallies topic itself.
    let shared_results = match (&tally_store, roles.query && !roles.realtime) {
        (Some(tallies), true) => Some(Arc::new(query::shared::SharedResults {
            cache: cache.clone(),
            tallies: tallies.clone(),
        })),
        _ => None,
    };

    // The results board is filled before the processor starts: it resumes from what the board
    // says was published.
    if let (Some(log), None, true) = (&log, &shared_results, roles.query || roles.realtime) {
        let mut saving = None;
        let from = match (&backends.log, &tally_store) {
            (LogBackend::Kafka { .. }, Some(store)) => {
                // What the tallies topic's retention may have deleted (see `load_stored`).
                let n = results::board::load_stored(&board, &**store)
                    .await
                    .context("reading the stored partials from the tally store")?;
                tracing::info!(partials = n, "results board filled from the tally store");
                ReadFrom::Oldest
            }
            (LogBackend::Kafka { .. }, None) => ReadFrom::Oldest,
            (LogBackend::Embedded(embedded), _) => {
                let snapshots: Arc<dyn CheckpointStore> =
                    Arc::new(storage::CheckpointFiles::open_named(
                        embedded.dir.join("snapshots"),
                        results::saved::NAME,
                    )?);
                saving = Some(snapshots.clone());
                results::saved::restore(&board, &*snapshots).await?
            }
        };
        tasks.push(
            follow_tallies(log.clone(), board.clone(), &from, shutdown_rx.clone())
                .await
                .context("reading the tallies topic into the results board")?,
        );
        // Once the board is filled: a snapshot of it holds every tallies partition's position.
        if let (Some(snapshots), Some(every)) =
            (saving, config.processor_config().checkpoint_interval)
        {
            tasks.push(results::saved::keep_saving(
                board.clone(),
                log.clone(),
                snapshots,
                every,
                &from,
                shutdown_rx.clone(),
            ));
        }
        let board = board.clone();
        readiness = readiness.check("tallies", move || std::future::ready(board.following()));
    }

    let processor = match (roles.processor, &log) {
        (true, Some(log)) => {
            let pipeline = Pipeline {
                log: log.clone(),
                catalog: catalog.clone(),
                tally_store: tally_store.clone(),
                checkpoints: open_checkpoints(&backends.log, &tally_store)?,
                cache: cache.clone(),
                config: config.processor_config(),
                metrics: processor_metrics.clone(),
                checkpoint_turn: Default::default(),
            };
            let group = config.group_config();
            let ownership = match &backends.log {
                LogBackend::Kafka { kafka, .. } => Ownership::Group {
                    kafka,
                    group: &group,
                },
                LogBackend::Embedded(_) => Ownership::Every {
                    partitions,
                    published: &board,
                },
            };
            let owned = processor_metrics.clone();
            readiness =
                readiness.check("partitions", move || std::future::ready(owned.readiness()));
            Some(processor::start::start(
                pipeline,
                ownership,
                shutdown_rx.clone(),
                &mut metrics.registry,
            )?)
        }
        _ => None,
    };
    let edge_rejections = Arc::new(EdgeRejections::default());
    let keys = edge::access::OperatorKeys::new(config.operator_keys.clone());
    let mut router = Router::new();
    let ingest = match (roles.ingest, &log) {
        (true, Some(log)) => {
            let (ingest, routes) = ingest::start(
                log.clone(),
                catalog.clone(),
                config.ingest_config(),
                edge_rejections.clone(),
                &mut metrics.registry,
            )
            .context("the ingest settings cannot be used")?;
            router = router.merge(routes);
            Some(ingest)
        }
        _ => None,
    };
    let realtime = match roles.realtime {
        false => None,
        true => {
            let origins = realtime::origin::OriginPolicy::new(
                &config.realtime.allowed_origins,
                &config.public_url,
            );
            let (realtime, routes) = realtime::start(
                catalog.clone(),
                board.clone(),
                keys.clone(),
                origins,
                config.realtime.settings(),
                &mut metrics.registry,
            )
            .context("starting the realtime service's fan-out runtime")?;
            router = router.merge(routes);
            Some(realtime)
        }
    };
    // Event streams are written where WebSocket viewers are, below the vote path's priority.
    let event_streams = realtime.as_ref().map(|rt| rt.fanout.handle().clone());
    let viewers = realtime.clone();
    if roles.query {
        router = router.merge(query::start(query::QueryState {
            catalog: catalog.clone(),
            board: board.clone(),
            keys,
            edge_rejections,
            public_url: config.public_url.clone(),
            shared: shared_results,
            close_lead_us: config.close_lead_us(),
        }));
    }
    if roles.is_all() {
        router = router.merge(seed_api::try_router(seed_api::SeedContext {
            catalog,
            board: board.clone(),
            ingest: ingest.clone(),
            realtime,
            data_dir: config.data_dir.clone(),
            public_url: config.public_url.clone(),
            limits: config.seed.clone(),
        })?);
    }
    let not_found = if roles.is_all() {
        "no such endpoint; the API is described at /openapi.json".to_owned()
    } else {
        format!(
            "no such endpoint on this {} node; the API is described at /openapi.json of a query node",
            roles.names()
        )
    };
    let router = edge::node::node_router(router, readiness, metrics, not_found);
    Ok(App {
        config: Arc::new(config),
        roles,
        router,
        board,
        http_metrics,
        read_gate: ingest
            .map(|i| i.admission.read_gate.clone())
            .filter(|g| g.enabled()),
        event_streams,
        realtime: viewers,
        shutdown,
        tasks,
        processor,
    })
}

/// Serves until `shutdown` resolves; prints `listening on http://ADDR` first (tests read it).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_roles(listener, config, Roles::ALL, shutdown).await
}

/// Serves the given services until `shutdown` resolves.
pub async fn run_roles(
    listener: TcpListener,
    config: Config,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = start_roles(config, roles).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    if roles.is_all() {
        tracing::info!(%addr, data_dir = %app.config.data_dir.display(), partitions = app.board.partitions(), "CrowdTick is serving: operator console at /, API under /v1");
    } else {
        tracing::info!(%addr, services = %roles.names(), "CrowdTick node is serving");
    }
    edge::listener::serve(
        listener,
        app.router.clone(),
        &app.config.http,
        app.http_metrics.clone(),
        edge::listener::Options {
            stamp_arrivals: roles.ingest,
            read_gate: app.read_gate.clone(),
            event_streams: app.event_streams.clone(),
        },
        shutdown,
    )
    .await;
    app.stop().await;
    Ok(())
}

impl App {
    /// Lets the WebSocket viewers go and stops the background tasks; processors publish what
    /// they hold first.
    pub async fn stop(self) {
        if let Some(realtime) = &self.realtime {
            realtime.stop().await;
        }
        self.shutdown.fire();
        for t in self.tasks {
            let _ = t.await;
        }
        // The processor's partitions are flushed, then it leaves the group so they move at once.
        if let Some(processor) = self.processor {
            processor.stop().await;
        }
    }
}
