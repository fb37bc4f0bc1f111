//! Typed configuration: defaults < file (`--config`, or `crowdtick.toml` if present) <
//! `CROWDTICK_*` environment variables (nested keys with `__`, e.g. `CROWDTICK_INGEST__DEADLINE_MS`)
//! < command-line flags.

use crate::backends::{Backends, CacheBackend, LogBackend, PollBackend, TallyBackend};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use storage::settings::{
    KafkaSection, LogSection, PollsSection, PostgresSection, RedisSection, SchemaRegistrySection,
    ScyllaSection,
};
use storage::{EmbeddedLogConfig, KafkaConfig, RegistryConfig};

pub use ingest::{IngestSection, DEV_AGGREGATOR_KEY};
pub use processor::ProcessorSection;
pub use realtime::RealtimeSection;

/// The operator key of the default configuration, for a laptop (public, like
/// [`DEV_AGGREGATOR_KEY`]).
pub const DEV_OPERATOR_KEY: &str = "dev-operator-key";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Where the embedded log, polls and accounts live.
    pub data_dir: PathBuf,
    /// Operator API keys (management endpoints, embargoed results).
    pub operator_keys: Vec<String>,
    /// Public base URL for links and QR codes (empty: from the request's Host header).
    pub public_url: String,
    pub log: LogSection,
    pub ingest: IngestSection,
    pub processor: ProcessorSection,
    pub realtime: RealtimeSection,
    /// Distributed mode: Kafka instead of the embedded log (empty `brokers`: embedded).
    pub kafka: KafkaSection,
    /// Distributed mode: PostgreSQL for polls and partial tallies (empty `url`: files in data_dir).
    pub postgres: PostgresSection,
    /// Distributed mode: Redis for the results cache and change notices (empty `url`: none).
    pub redis: RedisSection,
    /// Distributed mode: a Confluent schema registry for the Kafka records (empty `url`: bare
    /// Avro datums, as before).
    pub schema_registry: SchemaRegistrySection,
    /// Distributed mode: ScyllaDB for partial tallies, windows and checkpoints (empty `hosts`:
    /// PostgreSQL keeps them; polls stay in PostgreSQL either way).
    pub scylla: ScyllaSection,
    /// Distributed mode: how poll changes reach the other nodes.
    pub polls: PollsSection,
    /// Limits on every HTTP connection of the node.
    pub http: edge::listener::HttpLimits,
    /// Rate limits of the seed (old Django) API.
    pub seed: seed_api::SeedLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            operator_keys: vec![DEV_OPERATOR_KEY.into()],
            public_url: String::new(),
            log: LogSection::default(),
            ingest: IngestSection::default(),
            processor: ProcessorSection::default(),
            realtime: RealtimeSection::default(),
            kafka: KafkaSection::default(),
            postgres: PostgresSection::default(),
            redis: RedisSection::default(),
            schema_registry: SchemaRegistrySection::default(),
            scylla: ScyllaSection::default(),
            polls: PollsSection::default(),
            http: edge::listener::HttpLimits::default(),
            seed: seed_api::SeedLimits::default(),
        }
    }
}

/// The top-level settings, as `CROWDTICK_<NAME>` (nested keys joined by `__`).
const SETTINGS: &[&str] = &[
    "listen",
    "data_dir",
    "operator_keys",
    "public_url",
    "log",
    "ingest",
    "processor",
    "realtime",
    "kafka",
    "postgres",
    "redis",
    "schema_registry",
    "scylla",
    "polls",
    "http",
    "seed",
];

/// `CROWDTICK_*` variables that are not settings: `CROWDTICK_CONFIG` (the file, read by the
/// command line), `CROWDTICK_OPERATOR_KEY` and `CROWDTICK_AGGREGATOR_KEY` (loadgen's and Locust's
/// keys), `CROWDTICK_ALLOW_REMOTE`
/// (Locust), and the switches of the test and benchmark harnesses (`CROWDTICK_TEST_*`,
/// `CROWDTICK_BENCH_*`).
const NOT_SETTINGS: &[&str] = &["config", "operator_key", "aggregator_key", "allow_remote"];
const NOT_SETTINGS_PREFIXES: &[&str] = &["test_", "bench_"];

/// Whether `name` (upper case) is a variable Kubernetes injects for a Service `S` (service
/// links): `S_SERVICE_HOST`, `S_SERVICE_PORT[_NAME]`, `S_PORT` or `S_PORT_<N>_<PROTO>[_PROTO|_PORT|
/// _ADDR]`, where `S_SERVICE_HOST` is set too. For a Service named `crowdtick` or `crowdtick-query`
/// these begin with `CROWDTICK_`; no setting has these shapes.
fn is_service_link(name: &str, services: &[&str]) -> bool {
    services.iter().any(|service| {
        let Some(rest) = name.strip_prefix(service).and_then(|r| r.strip_prefix('_')) else {
            return false;
        };
        if rest == "SERVICE_HOST" || rest == "SERVICE_PORT" || rest == "PORT" {
            return true;
        }
        if let Some(port_name) = rest.strip_prefix("SERVICE_PORT_") {
            return !port_name.is_empty() && !port_name.contains("__");
        }
        let Some(port) = rest.strip_prefix("PORT_") else {
            return false;
        };
        let mut parts = port.split('_');
        let number = parts.next().unwrap_or_default();
        let proto = parts.next().unwrap_or_default();
        let tail = parts.next();
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && matches!(proto, "TCP" | "UDP" | "SCTP")
            && matches!(tail, None | Some("PROTO" | "PORT" | "ADDR"))
            && parts.next().is_none()
    })
}

/// Refuses a `CROWDTICK_*` variable (in any case) that names no setting, so a misspelled one (say
/// `CROWDTICK_KAFKA_BROKERS` with one underscore) stops the start instead of being ignored.
/// Misspelled keys inside a section are refused when the configuration is read.
pub fn check_environment(names: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let names: Vec<String> = names.into_iter().collect();
    let upper: Vec<String> = names.iter().map(|n| n.to_ascii_uppercase()).collect();
    let services: Vec<&str> = upper
        .iter()
        .filter_map(|n| n.strip_suffix("_SERVICE_HOST"))
        .collect();
    let mut unknown = Vec::new();
    for (name, upper) in names.iter().zip(&upper) {
        let Some(key) = upper.strip_prefix("CROWDTICK_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let top = key.split("__").next().unwrap_or_default();
        let known = SETTINGS.contains(&top)
            || NOT_SETTINGS.contains(&key.as_str())
            || NOT_SETTINGS_PREFIXES.iter().any(|p| key.starts_with(p))
            || is_service_link(upper, &services);
        if !known {
            unknown.push(name.as_str());
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} {} not a CrowdTick setting. Settings are CROWDTICK_ followed by a key, with nested \
         keys joined by a double underscore (e.g. CROWDTICK_KAFKA__BROKERS); the keys are {} \
         (`crowdtick config` prints them all). Unset or correct {}.",
        unknown.join(", "),
        if unknown.len() == 1 { "is" } else { "are" },
        SETTINGS.join(", "),
        if unknown.len() == 1 { "it" } else { "them" },
    )
}

/// The names of this process's environment variables (lossily decoded: a variable that is not
/// UTF-8 is not ours, and must not stop the start).
pub fn environment_names() -> impl Iterator<Item = String> {
    std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned())
}

impl Config {
    /// Defaults, then the file (an explicit `--config` must exist), then `CROWDTICK_*`.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                anyhow::ensure!(
                    f.exists(),
                    "the configuration file {} does not exist",
                    f.display()
                );
                fig = fig.merge(Toml::file(f));
            }
            None => fig = fig.merge(Toml::file("crowdtick.toml")),
        }
        check_environment(environment_names())?;
        fig = fig.merge(Env::prefixed("CROWDTICK_").split("__").filter(|k| {
            let top = k.as_str().split('.').next().unwrap_or_default();
            SETTINGS.iter().any(|s| top.eq_ignore_ascii_case(s))
        }));
        let config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        // Each section says what it cannot run with.
        for check in [
            self.log.check(),
            self.ingest.check(),
            self.processor.check(),
            self.polls.check(),
            self.http.check(),
        ] {
            check.map_err(anyhow::Error::msg)?;
        }
        if let Some(setting) = self.redacted_secret() {
            anyhow::bail!(
                "{setting} holds {}, which is how `crowdtick config` prints a secret: give the \
                 secret itself (`crowdtick config --show-secrets` prints it)",
                secrets::REDACTED
            );
        }
        // Backends that need one another (a schema registry needs Kafka, ScyllaDB PostgreSQL).
        self.backends()?;
        anyhow::ensure!(
            self.log.commit_interval_us * 4 <= self.ingest.deadline_ms.saturating_mul(1000),
            "log.commit_interval_us ({} µs) leaves too little of ingest.deadline_ms ({} ms): a vote \
             may wait that long for its group commit. Keep the interval at most a quarter of the \
             deadline",
            self.log.commit_interval_us,
            self.ingest.deadline_ms
        );
        if self.log.retire_after_snapshot {
            anyhow::ensure!(
                self.kafka.brokers.is_empty(),
                "log.retire_after_snapshot is for the embedded log; Kafka keeps its own retention \
                 (retention.ms on the topics)"
            );
            anyhow::ensure!(
                self.postgres.url.is_empty(),
                "log.retire_after_snapshot needs the snapshots in data_dir/log/snapshots (two \
                 generations per partition); with postgres.url set they are in PostgreSQL, one per \
                 partition. Unset one of them"
            );
            anyhow::ensure!(
                self.processor.checkpoint_interval_ms > 0,
                "log.retire_after_snapshot needs snapshots: set processor.checkpoint_interval_ms \
                 above 0"
            );
        }
        if self.operator_keys.iter().all(|k| k.is_empty()) {
            anyhow::bail!("operator_keys is empty: set at least one key (CROWDTICK_OPERATOR_KEYS='[\"…\"]' or in the file)");
        }
        Ok(())
    }

    /// The backends this configuration asks for (the one place that looks at which settings are
    /// empty), or why they cannot go together.
    pub fn backends(&self) -> anyhow::Result<Backends> {
        let log = if self.kafka.brokers.is_empty() {
            anyhow::ensure!(
                self.schema_registry.url.is_empty(),
                "schema_registry.url is set but Kafka is not (--kafka or CROWDTICK_KAFKA__BROKERS): \
                 the registry frames the records of the Kafka topics; the embedded log has none for \
                 other readers. Set Kafka, or unset schema_registry.url"
            );
            LogBackend::Embedded(EmbeddedLogConfig {
                votes_partitions: self.log.partitions,
                fsync: self.log.fsync,
                queue_capacity: self.log.queue_capacity,
                commit_interval: Duration::from_micros(self.log.commit_interval_us),
                segment_bytes: self.log.segment_mb << 20,
                zero_ahead_bytes: self.log.zero_ahead_kb << 10,
                retire_released: self.log.retire_after_snapshot,
                ..EmbeddedLogConfig::new(self.log_dir())
            })
        } else {
            LogBackend::Kafka {
                kafka: self.kafka_config(),
                registry: (!self.schema_registry.url.is_empty()).then(|| RegistryConfig {
                    url: self.schema_registry.url.clone(),
                    auto_register: self.schema_registry.auto_register,
                    timeout: Duration::from_millis(self.schema_registry.timeout_ms),
                }),
            }
        };
        let polls = self.poll_backend();
        anyhow::ensure!(
            self.scylla.hosts.is_empty() || polls != PollBackend::File(self.polls_file()),
            "scylla.hosts is set but postgres.url is not: ScyllaDB keeps the tallies, PostgreSQL \
             the polls (--postgres or CROWDTICK_POSTGRES__URL)"
        );
        let tallies = match (&polls, self.scylla.hosts.is_empty()) {
            (PollBackend::File(_), _) => TallyBackend::TopicOnly,
            (PollBackend::Postgres { .. }, true) => TallyBackend::Postgres,
            (PollBackend::Postgres { .. }, false) => TallyBackend::Scylla(self.scylla_config()),
        };
        let cache = if self.redis.url.is_empty() {
            CacheBackend::None
        } else {
            CacheBackend::Redis {
                url: self.redis.url.clone(),
                key_prefix: self.redis.key_prefix.clone(),
            }
        };
        Ok(Backends {
            log,
            polls,
            tallies,
            cache,
        })
    }

    /// PostgreSQL when `postgres.url` is set, else the journal in the data directory.
    pub fn poll_backend(&self) -> PollBackend {
        if self.postgres.url.is_empty() {
            PollBackend::File(self.polls_file())
        } else {
            PollBackend::Postgres {
                url: self.postgres.url.clone(),
                schema: self.postgres.schema.clone(),
            }
        }
    }

    /// The Kafka side of the configuration.
    pub fn kafka_config(&self) -> KafkaConfig {
        let deadline = Duration::from_millis(self.ingest.deadline_ms);
        self.kafka.config(self.log.partitions, deadline)
    }

    /// The edge's settings; on a shared catalog, votes get 503 once it is older than half the
    /// close lead.
    pub fn ingest_config(&self) -> ingest::IngestConfig {
        let catalog_max_age = self
            .is_shared()
            .then(|| Duration::from_millis(self.polls.close_lead_ms / 2));
        let body_read_timeout = Duration::from_millis(self.http.body_read_timeout_ms);
        self.ingest.config(catalog_max_age, body_read_timeout)
    }

    pub fn processor_config(&self) -> processor::ProcessorConfig {
        self.processor
            .config(Duration::from_millis(self.ingest.deadline_ms))
    }

    pub fn group_config(&self) -> storage::GroupConfig {
        self.processor.group(&self.kafka.topic_prefix)
    }

    /// Whether polls live in PostgreSQL, shared with other processes.
    pub fn is_shared(&self) -> bool {
        matches!(self.poll_backend(), PollBackend::Postgres { .. })
    }

    /// How far in the future a manual close is set (0 when this process is the only edge).
    pub fn close_lead_us(&self) -> i64 {
        if self.is_shared() {
            self.polls.close_lead_ms as i64 * 1000
        } else {
            0
        }
    }

    pub fn scylla_config(&self) -> storage::ScyllaConfig {
        self.scylla.config()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }
    /// The poll journal (`storage::FilePollStore`; an earlier version's `polls.json` beside it
    /// is migrated at start).
    pub fn polls_file(&self) -> PathBuf {
        self.data_dir.join("polls.jsonl")
    }
}

mod secrets;
#[cfg(test)]
mod tests;
