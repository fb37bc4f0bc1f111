//! Which backend each part of a process runs on, and opening them. They are chosen once, from the
//! configuration (`Config::backends` in `src/config.rs`): nothing else asks which settings are
//! empty.
//!
//! - [`LogBackend`]: the embedded log in the data directory, or Kafka (with a schema registry
//!   framing its records when one is set).
//! - [`PollBackend`]: the poll journal in the data directory, or PostgreSQL (shared by every node).
//! - [`TallyBackend`]: none besides the tallies topic (embedded), PostgreSQL, or ScyllaDB.
//! - [`CacheBackend`]: none, or Redis.

use std::path::PathBuf;
use std::sync::Arc;

use storage::embedded_log::LogMetrics;
use storage::{
    CheckpointStore, EmbeddedLog, EmbeddedLogConfig, FilePollStore, KafkaConfig, KafkaLog, Log,
    LogError, PgPollStore, PgTallyStore, PollStore, RedisCache, RegistryConfig, ScyllaConfig,
    TallyStore,
};

/// Where votes and tallies are logged.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// Segment files per topic in the data directory (`crowdtick serve`'s default).
    Embedded(EmbeddedLogConfig),
    /// Kafka (`kafka.brokers`); a schema registry frames its records when `schema_registry.url`
    /// is set.
    Kafka {
        kafka: KafkaConfig,
        registry: Option<RegistryConfig>,
    },
}

/// Where poll definitions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollBackend {
    /// The poll journal in the data directory (one process).
    File(PathBuf),
    /// PostgreSQL (`postgres.url`), shared by every node, which re-read it.
    Postgres { url: String, schema: String },
}

/// Where partial tallies and partition checkpoints are kept besides the tallies topic.
#[derive(Debug, Clone)]
pub enum TallyBackend {
    /// Nowhere else: the tallies topic is the record (embedded; snapshots are files beside the log,
    /// `open_checkpoints`).
    TopicOnly,
    /// PostgreSQL, beside the polls.
    Postgres,
    /// ScyllaDB (`scylla.hosts`); the polls stay in PostgreSQL.
    Scylla(ScyllaConfig),
}

/// The results cache the query nodes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheBackend {
    None,
    Redis { url: String, key_prefix: String },
}

/// Every backend of a process.
#[derive(Debug, Clone)]
pub struct Backends {
    pub log: LogBackend,
    pub polls: PollBackend,
    pub tallies: TallyBackend,
    pub cache: CacheBackend,
}

impl Backends {
    pub fn on_kafka(&self) -> bool {
        matches!(self.log, LogBackend::Kafka { .. })
    }

    /// Whether polls live in PostgreSQL, shared with other processes.
    pub fn shares_polls(&self) -> bool {
        matches!(self.polls, PollBackend::Postgres { .. })
    }
}

/// The log a process runs on, with the counters of its kind.
pub struct OpenedLog {
    pub log: Arc<dyn Log>,
    /// The embedded log's (None on Kafka).
    pub embedded: Option<Arc<LogMetrics>>,
    /// The schema registry's (with `schema_registry.url`).
    pub registry: Option<Arc<storage::RegistryMetrics>>,
}

/// Opens the votes and tallies log.
pub async fn open_log(backend: &LogBackend) -> anyhow::Result<OpenedLog> {
    let (kafka, registry) = match backend {
        LogBackend::Embedded(config) => {
            let log = EmbeddedLog::open(config.clone())?;
            return Ok(OpenedLog {
                embedded: Some(log.metrics.clone()),
                log: Arc::new(log),
                registry: None,
            });
        }
        LogBackend::Kafka { kafka, registry } => (kafka, registry),
    };
    let log = KafkaLog::connect(kafka.clone())
        .await
        .map_err(|e| match e {
            LogError::Config(_) => anyhow::anyhow!("Kafka at {}: {e}", kafka.brokers),
            _ => anyhow::anyhow!(
                "Kafka at {}: {e} (is the broker running? --kafka or CROWDTICK_KAFKA__BROKERS)",
                kafka.brokers
            ),
        })?;
    let log: Arc<dyn Log> = Arc::new(log);
    let Some(registry) = registry else {
        return Ok(OpenedLog {
            log,
            embedded: None,
            registry: None,
        });
    };
    let topics = (kafka.votes_topic.as_str(), kafka.tallies_topic.as_str());
    let log = storage::RegistryLog::connect(log, registry, topics)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}: {} (is the registry running? --schema-registry or CROWDTICK_SCHEMA_REGISTRY__URL)",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            )
        })?;
    Ok(OpenedLog {
        registry: Some(log.metrics.clone()),
        log: Arc::new(log),
        embedded: None,
    })
}

/// Opens the poll store and the tally store (PostgreSQL is migrated at start, and so is ScyllaDB).
pub async fn open_stores(
    polls: &PollBackend,
    tallies: &TallyBackend,
) -> anyhow::Result<(Arc<dyn PollStore>, Option<Arc<dyn TallyStore>>)> {
    let (url, schema) = match polls {
        PollBackend::File(path) => return Ok((Arc::new(FilePollStore::open(path.clone())?), None)),
        PollBackend::Postgres { url, schema } => (url, schema),
    };
    let pool = storage::postgres::connect_and_migrate(url, schema)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--postgres or CROWDTICK_POSTGRES__URL)"))?;
    let poll_store: Arc<dyn PollStore> = Arc::new(PgPollStore::new(pool.clone(), schema)?);
    let tally_store: Option<Arc<dyn TallyStore>> = match tallies {
        TallyBackend::TopicOnly => None,
        TallyBackend::Postgres => Some(Arc::new(PgTallyStore::new(pool, schema)?)),
        TallyBackend::Scylla(scylla) => {
            let session = storage::scylla::connect(scylla).await.map_err(|e| {
                anyhow::anyhow!("{e} (is it running? --scylla or CROWDTICK_SCYLLA__HOSTS)")
            })?;
            storage::scylla::migrate(&session, scylla).await?;
            let store = storage::ScyllaTallyStore::new(session, scylla).await?;
            tracing::info!(hosts = %scylla.hosts, keyspace = %scylla.keyspace, "tally store: ScyllaDB");
            Some(Arc::new(store))
        }
    };
    Ok((poll_store, tally_store))
}

/// Where the processors keep their snapshots: the tally store, else (on the embedded log) files in
/// `<log dir>/snapshots`, beside the log whose offsets they name.
pub fn open_checkpoints(
    log: &LogBackend,
    tally_store: &Option<Arc<dyn TallyStore>>,
) -> anyhow::Result<Option<Arc<dyn CheckpointStore>>> {
    Ok(match (tally_store, log) {
        (Some(store), _) => Some(store.clone()),
        (None, LogBackend::Embedded(log)) => Some(Arc::new(storage::CheckpointFiles::open(
            log.dir.join("snapshots"),
        )?)),
        (None, LogBackend::Kafka { .. }) => None,
    })
}

/// Opens the results cache.
pub async fn open_cache(backend: &CacheBackend) -> anyhow::Result<Option<RedisCache>> {
    let CacheBackend::Redis { url, key_prefix } = backend else {
        return Ok(None);
    };
    let cache = RedisCache::connect(url, key_prefix)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is Redis running? --redis or CROWDTICK_REDIS__URL)"))?;
    Ok(Some(cache))
}
