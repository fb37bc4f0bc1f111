//! Composing a process: `crowdtick serve` runs every service in one process (on the embedded log, or
//! on Kafka, PostgreSQL and Redis); `crowdtick ingest|processor|query|realtime` runs one service of
//! the distributed mode ([`Roles`]).
//!
//! [`start_roles`] opens what the services need, restores the results board from the tallies topic
//! (query and realtime), starts the processor (one task per votes partition when embedded; a member
//! of the Kafka consumer group otherwise) and the tallies tailer, keeps a shared poll catalog in step
//! with PostgreSQL, and builds the router. [`run_roles`] serves it on a listener until `shutdown`
//! resolves, then lets the processors publish their last partials and leave the group.

use crate::app_state::AppState;
use crate::backends::{open_cache, open_log, open_stores, LogBackend};
use crate::config::Config;
use crate::metrics;
use crate::readiness::Readiness;
use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use edge::ApiError;
use processor::runner::Pipeline;
use processor::start::{Ownership, Processor};
use processor::ProcessorMetrics;
use results::board::follow_tallies;
use results::ResultsBoard;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use storage::{EdgeRejections, Log, PollCatalog, RedisCache, Topic};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// A started server: its router and its background tasks.
pub struct App {
    pub state: AppState,
    pub router: Router,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    processor: Option<Processor>,
}

/// Every service in one process (`crowdtick serve`).
pub async fn start(config: Config) -> anyhow::Result<App> {
    start_roles(config, Roles::ALL).await
}

pub async fn start_roles(config: Config, roles: Roles) -> anyhow::Result<App> {
    let backends = config.backends()?;
    let on_kafka = backends.on_kafka();
    if !roles.is_all() {
        anyhow::ensure!(
            on_kafka && backends.shares_polls(),
            "`crowdtick {}` runs one service of the distributed mode, which shares Kafka and PostgreSQL \
             with the other services: give --kafka BROKERS and --postgres URL (and --redis URL for the \
             results cache), or run `crowdtick serve` for every service in one process",
            roles.names()
        );
    }
    // (A process running one service is on Kafka and PostgreSQL: it keeps nothing on disk.)
    if roles.is_all() {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
    }
    let needs_log = roles.ingest || roles.processor || roles.realtime;
    let (log, log_metrics, registry_metrics) = if needs_log {
        let opened = open_log(&backends.log).await?;
        (Some(opened.log), opened.embedded, opened.registry)
    } else {
        (None, None, None)
    };
    let (poll_store, tally_store) = open_stores(&backends.polls, &backends.tallies).await?;
    let cache = open_cache(&backends.cache).await?;
    let catalog = PollCatalog::load(poll_store).await?;
    let partitions = log
        .as_ref()
        .map_or(config.log.partitions, |l| l.partitions(Topic::Votes));
    let board = Arc::new(ResultsBoard::new(partitions));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let processor_metrics = Arc::new(ProcessorMetrics::default());
    let mut tasks = Vec::new();

    if catalog.is_shared() {
        tasks.push(tokio::spawn(follow_catalog(
            catalog.clone(),
            cache.clone(),
            Duration::from_millis(config.polls.refresh_ms),
            shutdown_rx.clone(),
        )));
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
    if let (Some(log), None, true) = (&log, &shared_results, roles.query || roles.realtime) {
        tasks.push(follow_tallies(log.clone(), board.clone(), shutdown_rx.clone()).await?);
    }

    let processor = match (roles.processor, &log) {
        (true, Some(log)) => {
            let pipeline = Pipeline {
                log: log.clone(),
                catalog: catalog.clone(),
                tally_store: tally_store.clone(),
                cache: cache.clone(),
                config: config.processor_config(),
                metrics: processor_metrics.clone(),
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
            Some(processor::start::start(
                pipeline,
                ownership,
                shutdown_rx.clone(),
            )?)
        }
        _ => None,
    };

    let edge_rejections = Arc::new(EdgeRejections::default());
    let keys = edge::access::OperatorKeys::new(config.operator_keys.clone());
    let public_listener = !config
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if roles.ingest
        && public_listener
        && config
            .ingest
            .aggregators
            .iter()
            .any(|a| a.key == crate::config::DEV_AGGREGATOR_KEY)
    {
        tracing::warn!(
            listen = %config.listen,
            "an aggregator has the development key `dev-aggregator-key`, and this server listens beyond \
             loopback: anyone can post batches as it. Set ingest.aggregators with keys of your own \
             (CROWDTICK_INGEST__AGGREGATORS='[{{name=\"sms\", key=\"…\"}}]')"
        );
    }
    let ingest = match (roles.ingest, &log) {
        (true, Some(log)) => Some(
            ingest::Ingest::new(
                log.clone(),
                catalog.clone(),
                config.ingest_config(),
                edge_rejections.clone(),
            )
            .context("the ingest settings cannot be used")?,
        ),
        _ => None,
    };
    let realtime = match roles.realtime {
        false => None,
        true => Some(
            realtime::Realtime::new(
                catalog.clone(),
                board.clone(),
                keys.clone(),
                realtime::origin::OriginPolicy::new(
                    &config.realtime.allowed_origins,
                    &config.public_url,
                ),
                config.realtime.settings(),
            )
            .context("starting the realtime service's fan-out runtime")?,
        ),
    };
    let readiness = Arc::new(readiness_of(
        &config,
        roles,
        log.as_ref(),
        &catalog,
        &processor_metrics,
        (log.is_some() && shared_results.is_none()).then_some(&board),
    ));
    let query_state = query::QueryState {
        catalog: catalog.clone(),
        board: board.clone(),
        keys,
        edge_rejections,
        public_url: config.public_url.clone(),
        shared: shared_results,
        close_lead_us: config.close_lead_us(),
    };
    let state = AppState {
        config: Arc::new(config),
        log,
        log_metrics,
        registry_metrics,
        catalog,
        board,
        ingest: ingest.clone(),
        realtime: realtime.clone(),
        processor_metrics,
        http_metrics: Default::default(),
    };
    let mut router = Router::new();
    if let Some(ingest) = ingest {
        router = router.merge(ingest::router(ingest));
    }
    if roles.query {
        router = router
            .merge(query::router(query_state.clone()))
            .merge(query::ui::router(query_state));
    }
    if let Some(realtime) = realtime {
        router = router.merge(realtime::router(realtime));
    }
    if roles.is_all() {
        router = router.merge(seed_api::try_router(seed_api::SeedContext {
            catalog: state.catalog.clone(),
            board: state.board.clone(),
            ingest: state.ingest.clone(),
            realtime: state.realtime.clone(),
            data_dir: state.config.data_dir.clone(),
            public_url: state.config.public_url.clone(),
            limits: state.config.seed.clone(),
        })?);
    }
    let router = router
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(crate::readiness::readyz).with_state(readiness),
        )
        .route("/metrics", get(metrics::render).with_state(state.clone()))
        .fallback(move || async move {
            ApiError::not_found(
                "no_route",
                if roles.is_all() {
                    "no such endpoint; the API is described at /openapi.json".to_owned()
                } else {
                    format!(
                        "no such endpoint on this {} node; the API is described at /openapi.json of a query node",
                        roles.names()
                    )
                },
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::map_response(json_errors));
    let router = edge::listener::body_read_timeout(router, &state.config.http);
    Ok(App {
        state,
        router,
        shutdown,
        tasks,
        processor,
    })
}

/// The readiness checks of a node running `roles` (see [`crate::readiness`]). `board` is the
/// results board when this node keeps one by following the tallies topic.
fn readiness_of(
    config: &Config,
    roles: Roles,
    log: Option<&Arc<dyn Log>>,
    catalog: &PollCatalog,
    processor_metrics: &Arc<ProcessorMetrics>,
    board: Option<&Arc<ResultsBoard>>,
) -> Readiness {
    let mut readiness = Readiness::default();
    // The votes log, for the services that write or read it (realtime reads only the tallies,
    // which its own check covers).
    if let (Some(log), true) = (log, roles.ingest || roles.processor) {
        readiness = readiness.log(log.clone());
    }
    // An edge refuses votes past half the close lead; other nodes tolerate a few missed re-reads.
    let catalog_max_age = match config.ingest_config().catalog_max_age {
        Some(edge_max) if roles.ingest => edge_max,
        _ => Duration::from_millis((config.polls.refresh_ms * 20).max(5_000)),
    };
    readiness = readiness.catalog(catalog.clone(), catalog_max_age);
    if roles.processor {
        readiness = readiness.partitions(processor_metrics.clone());
    }
    if let (Some(board), true) = (board, roles.query || roles.realtime) {
        readiness = readiness.tallies(board.clone());
    }
    readiness
}

/// Keeps the catalog in step with PostgreSQL: a re-read every `every`, and at once on a notice.
async fn follow_catalog(
    catalog: PollCatalog,
    cache: Option<RedisCache>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let forward = cache.map(|c| tokio::spawn(c.forward_notices(tx, shutdown.clone())));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = notices.recv() => {}
            _ = shutdown.changed() => break,
        }
        match catalog.refresh().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the poll catalog is readable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "re-reading the poll catalog failed; edges refuse votes once it is too old");
            }
            Err(_) => {}
        }
    }
    if let Some(f) = forward {
        let _ = f.await;
    }
}

/// Every error answer is JSON: a framework rejection (a body over a route's limit, a bad header)
/// arrives as plain text and is rewrapped as `{"error": {"code", "message"}}` with its status.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut fixed = ApiError::new(
        status,
        code,
        if message.is_empty() {
            status.to_string()
        } else {
            message
        },
    )
    .into_response();
    if let Some(retry) = parts.headers.get(axum::http::header::RETRY_AFTER) {
        fixed
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, retry.clone());
    }
    fixed
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
        tracing::info!(%addr, data_dir = %app.state.config.data_dir.display(), partitions = app.state.board.partitions(), "CrowdTick is serving: operator console at /, API under /v1");
    } else {
        tracing::info!(%addr, services = %roles.names(), "CrowdTick node is serving");
    }
    edge::listener::serve(
        listener,
        app.router.clone(),
        &app.state.config.http,
        app.state.http_metrics.clone(),
        roles.ingest,
        app.state
            .ingest
            .as_ref()
            .map(|i| i.admission.read_gate.clone())
            .filter(|g| g.enabled()),
        shutdown,
    )
    .await;
    app.stop().await;
    Ok(())
}

impl App {
    /// Stops the background tasks; processors publish what they hold first.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The processor's partitions are flushed, then it leaves the group so they move at once.
        if let Some(processor) = self.processor {
            processor.stop().await;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
