//! `crowdtick serve`: every service in one process on the embedded log.
//!
//! [`start`] opens the data directory, restores the results board from the tallies topic, starts one
//! processor task per votes partition (each replays its partition to rebuild its exact state) and
//! the tallies tailer, and builds the router. [`run`] serves it on a listener until `shutdown`
//! resolves, then lets the processors publish their last partials.

use crate::config::Config;
use crate::metrics;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use processor::board::{load_tallies, tail_tallies};
use processor::runner::{run_partition_supervised, Pipeline};
use processor::{ProcessorMetrics, ResultsBoard};
use schemas::ApiError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use storage::embedded_log::LogMetrics;
use storage::{
    EdgeRejections, EmbeddedLog, EmbeddedLogConfig, FilePollStore, KafkaConfig, KafkaLog, Log,
    LogError, PgPollStore, PgTallyStore, PollCatalog, PollStore, TallyStore, Topic,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Everything a running server shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub log: Arc<dyn Log>,
    /// The embedded log's counters (None on Kafka).
    pub log_metrics: Option<Arc<LogMetrics>>,
    pub catalog: PollCatalog,
    pub board: Arc<ResultsBoard>,
    pub ingest: Arc<ingest::Ingest>,
    pub realtime: Arc<realtime::Realtime>,
    pub processor_metrics: Arc<ProcessorMetrics>,
}

/// A started server: its router and its background tasks.
pub struct App {
    pub state: AppState,
    pub router: Router,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn start(config: Config) -> anyhow::Result<App> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let (dyn_log, log_metrics) = open_log(&config).await?;
    let (poll_store, tally_store) = open_stores(&config).await?;
    let log = dyn_log.clone();
    let catalog = PollCatalog::load(poll_store).await?;
    let partitions = log.partitions(Topic::Votes);
    let board = Arc::new(ResultsBoard::new(partitions));
    let positions = load_tallies(&*log, &board).await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let processor_metrics = Arc::new(ProcessorMetrics::default());
    let mut tasks = vec![tokio::spawn(tail_tallies(
        dyn_log.clone(),
        board.clone(),
        positions,
        shutdown_rx.clone(),
    ))];
    let pipeline = Pipeline {
        log: dyn_log.clone(),
        catalog: catalog.clone(),
        tally_store,
        config: config.processor_config(),
        metrics: processor_metrics.clone(),
    };
    for p in 0..partitions {
        tasks.push(tokio::spawn(run_partition_supervised(
            pipeline.clone(),
            p,
            board.published(p),
            shutdown_rx.clone(),
        )));
    }

    let edge_rejections = Arc::new(EdgeRejections::default());
    let ingest = ingest::Ingest::new(
        dyn_log.clone(),
        catalog.clone(),
        config.ingest_config(),
        edge_rejections.clone(),
    );
    let keys = query::OperatorKeys::new(config.operator_keys.clone());
    let query_state = query::QueryState {
        catalog: catalog.clone(),
        board: board.clone(),
        keys: keys.clone(),
        edge_rejections,
        public_url: config.public_url.clone(),
    };
    let realtime = realtime::Realtime::new(
        catalog.clone(),
        board.clone(),
        keys,
        std::time::Duration::from_millis(config.realtime.coalesce_ms),
    );
    let state = AppState {
        config: Arc::new(config),
        log,
        log_metrics,
        catalog,
        board,
        ingest: ingest.clone(),
        realtime: realtime.clone(),
        processor_metrics,
    };
    let router = Router::new()
        .merge(ingest::router(ingest))
        .merge(query::router(query_state.clone()))
        .merge(query::ui::router(query_state))
        .merge(realtime::router(realtime))
        .merge(crate::seed::try_router(state.clone())?)
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::render).with_state(state.clone()))
        .fallback(|| async {
            ApiError::not_found(
                "no_route",
                "no such endpoint; the API is described at /openapi.json",
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
    Ok(App {
        state,
        router,
        shutdown,
        tasks,
    })
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

/// The votes and tallies log: Kafka when `kafka.brokers` is set, else the embedded log in data_dir.
pub(crate) async fn open_log(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Log>, Option<Arc<LogMetrics>>)> {
    if config.kafka.brokers.is_empty() {
        let log = EmbeddedLog::open(EmbeddedLogConfig {
            votes_partitions: config.log.partitions,
            fsync: config.log.fsync,
            queue_capacity: config.log.queue_capacity,
            ..EmbeddedLogConfig::new(config.log_dir())
        })?;
        let metrics = log.metrics.clone();
        return Ok((Arc::new(log), Some(metrics)));
    }
    let k = &config.kafka;
    let mut kafka = KafkaConfig::new(&k.brokers);
    kafka.votes_topic = format!("{}votes", k.topic_prefix);
    kafka.tallies_topic = format!("{}tallies", k.topic_prefix);
    kafka.votes_partitions = config.log.partitions;
    kafka.replication_factor = k.replication_factor;
    kafka.deadline = std::time::Duration::from_millis(config.ingest.deadline_ms);
    kafka.extra = k.settings.clone();
    let log = KafkaLog::connect(kafka).await.map_err(|e| match e {
        LogError::Config(_) => anyhow::anyhow!("Kafka at {}: {e}", k.brokers),
        _ => anyhow::anyhow!(
            "Kafka at {}: {e} (is the broker running? --kafka or CROWDTICK_KAFKA__BROKERS)",
            k.brokers
        ),
    })?;
    Ok((Arc::new(log), None))
}

/// Poll and tally stores: PostgreSQL (migrated at start) when `postgres.url` is set, else the
/// poll file in data_dir and no separate tally store (the tallies topic is the record).
pub(crate) async fn open_stores(
    config: &Config,
) -> anyhow::Result<(Arc<dyn PollStore>, Option<Arc<dyn TallyStore>>)> {
    if config.postgres.url.is_empty() {
        return Ok((Arc::new(FilePollStore::open(config.polls_file())?), None));
    }
    let pg = &config.postgres;
    let pool = storage::postgres::connect(&pg.url)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--postgres or CROWDTICK_POSTGRES__URL)"))?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL: {e}"))?;
    storage::postgres::migrate(&mut client, &pg.schema).await?;
    drop(client);
    Ok((
        Arc::new(PgPollStore::new(pool.clone(), &pg.schema)?),
        Some(Arc::new(PgTallyStore::new(pool, &pg.schema)?)),
    ))
}

/// Serves until `shutdown` resolves; prints `listening on http://ADDR` first (tests read it).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = start(config).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, data_dir = %app.state.config.data_dir.display(), partitions = app.state.log.partitions(Topic::Votes), "CrowdTick is serving: operator console at /, API under /v1");
    axum::serve(
        listener,
        app.router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
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
