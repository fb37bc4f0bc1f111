//! Which backend each part of a process runs on, chosen once from the configuration
//! ([`Backends::of`]: nothing else asks which settings are empty), and opening them.
//!
//! - [`LogBackend`]: the embedded log in the data directory, or Kafka (with a schema registry
//!   framing its records when one is set).
//! - [`PollBackend`]: the poll journal in the data directory, or PostgreSQL (shared by every node).
//! - [`TallyBackend`]: none besides the tallies topic (embedded), PostgreSQL, or ScyllaDB.
//! - [`CacheBackend`]: none, or Redis.

use crate::config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage::embedded_log::LogMetrics;
use storage::{
    EmbeddedLog, EmbeddedLogConfig, FilePollStore, KafkaConfig, KafkaLog, Log, LogError,
    PgPollStore, PgTallyStore, PollStore, RedisCache, RegistryConfig, ScyllaConfig, TallyStore,
};

/// Where votes and tallies are logged.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// A file per partition in the data directory (`crowdtick serve`'s default).
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

impl PollBackend {
    /// PostgreSQL when `postgres.url` is set, else the journal in the data directory.
    pub fn of(config: &Config) -> Self {
        if config.postgres.url.is_empty() {
            PollBackend::File(config.polls_file())
        } else {
            PollBackend::Postgres {
                url: config.postgres.url.clone(),
                schema: config.postgres.schema.clone(),
            }
        }
    }
}

/// Where partial tallies and partition checkpoints are kept besides the tallies topic.
#[derive(Debug, Clone)]
pub enum TallyBackend {
    /// Nowhere else: the tallies topic is the record (embedded).
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
    /// The backends `config` asks for, or why they cannot go together.
    pub fn of(config: &Config) -> anyhow::Result<Self> {
        let log = if config.kafka.brokers.is_empty() {
            anyhow::ensure!(
                config.schema_registry.url.is_empty(),
                "schema_registry.url is set but Kafka is not (--kafka or CROWDTICK_KAFKA__BROKERS): \
                 the registry frames the records of the Kafka topics; the embedded log has none for \
                 other readers. Set Kafka, or unset schema_registry.url"
            );
            LogBackend::Embedded(EmbeddedLogConfig {
                votes_partitions: config.log.partitions,
                fsync: config.log.fsync,
                queue_capacity: config.log.queue_capacity,
                ..EmbeddedLogConfig::new(config.log_dir())
            })
        } else {
            LogBackend::Kafka {
                kafka: kafka_config(config),
                registry: (!config.schema_registry.url.is_empty()).then(|| RegistryConfig {
                    url: config.schema_registry.url.clone(),
                    auto_register: config.schema_registry.auto_register,
                    timeout: Duration::from_millis(config.schema_registry.timeout_ms),
                }),
            }
        };
        let polls = PollBackend::of(config);
        anyhow::ensure!(
            config.scylla.hosts.is_empty() || polls != PollBackend::File(config.polls_file()),
            "scylla.hosts is set but postgres.url is not: ScyllaDB keeps the tallies, PostgreSQL \
             the polls (--postgres or CROWDTICK_POSTGRES__URL)"
        );
        let tallies = match (&polls, config.scylla.hosts.is_empty()) {
            (PollBackend::File(_), _) => TallyBackend::TopicOnly,
            (PollBackend::Postgres { .. }, true) => TallyBackend::Postgres,
            (PollBackend::Postgres { .. }, false) => TallyBackend::Scylla(config.scylla_config()),
        };
        let cache = if config.redis.url.is_empty() {
            CacheBackend::None
        } else {
            CacheBackend::Redis {
                url: config.redis.url.clone(),
                key_prefix: config.redis.key_prefix.clone(),
            }
        };
        Ok(Self {
            log,
            polls,
            tallies,
            cache,
        })
    }

    pub fn on_kafka(&self) -> bool {
        matches!(self.log, LogBackend::Kafka { .. })
    }

    /// Whether polls live in PostgreSQL, shared with other processes.
    pub fn shares_polls(&self) -> bool {
        matches!(self.polls, PollBackend::Postgres { .. })
    }
}

/// The Kafka side of the configuration.
pub fn kafka_config(config: &Config) -> KafkaConfig {
    let k = &config.kafka;
    let mut kafka = KafkaConfig::new(&k.brokers);
    kafka.votes_topic = format!("{}votes", k.topic_prefix);
    kafka.tallies_topic = format!("{}tallies", k.topic_prefix);
    kafka.votes_partitions = config.log.partitions;
    kafka.replication_factor = k.replication_factor;
    kafka.deadline = Duration::from_millis(config.ingest.deadline_ms);
    kafka.extra = k.settings.clone();
    kafka
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
    let pool = storage::postgres::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--postgres or CROWDTICK_POSTGRES__URL)"))?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL: {e}"))?;
    storage::postgres::migrate(&mut client, schema).await?;
    drop(client);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    #[test]
    fn the_default_is_embedded_with_nothing_shared() {
        let b = Backends::of(&Config::default()).unwrap();
        assert!(matches!(b.log, LogBackend::Embedded(_)));
        assert!(matches!(b.polls, PollBackend::File(_)));
        assert!(matches!(b.tallies, TallyBackend::TopicOnly));
        assert_eq!(b.cache, CacheBackend::None);
        assert!(!b.on_kafka() && !b.shares_polls());
    }

    #[test]
    fn each_setting_chooses_its_backend() {
        let b = Backends::of(&config(|c| {
            c.kafka.brokers = "k:9092".into();
            c.postgres.url = "postgres://p/db".into();
            c.redis.url = "redis://r".into();
        }))
        .unwrap();
        assert!(
            matches!(&b.log, LogBackend::Kafka { kafka, registry: None } if kafka.brokers == "k:9092")
        );
        assert!(matches!(&b.polls, PollBackend::Postgres { url, .. } if url == "postgres://p/db"));
        assert!(matches!(b.tallies, TallyBackend::Postgres));
        assert!(matches!(&b.cache, CacheBackend::Redis { url, .. } if url == "redis://r"));
        assert!(b.on_kafka() && b.shares_polls());

        let b = Backends::of(&config(|c| {
            c.kafka.brokers = "k:9092".into();
            c.schema_registry.url = "http://sr:8081".into();
            c.postgres.url = "postgres://p/db".into();
            c.scylla.hosts = "s:9042".into();
        }))
        .unwrap();
        assert!(
            matches!(&b.log, LogBackend::Kafka { registry: Some(r), .. } if r.url == "http://sr:8081")
        );
        assert!(matches!(&b.tallies, TallyBackend::Scylla(s) if s.hosts == "s:9042"));
    }

    #[test]
    fn backends_that_need_another_are_refused_with_the_reason() {
        let e = Backends::of(&config(|c| c.schema_registry.url = "http://sr:8081".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("schema_registry.url is set but Kafka is not"),
            "{e}"
        );
        let e = Backends::of(&config(|c| c.scylla.hosts = "s:9042".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scylla.hosts is set but postgres.url is not"),
            "{e}"
        );
    }
}
