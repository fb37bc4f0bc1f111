//! Typed configuration: defaults < file (`--config`, or `crowdtick.toml` if present) <
//! `CROWDTICK_*` environment variables (nested keys with `__`, e.g. `CROWDTICK_INGEST__DEADLINE_MS`)
//! < command-line flags.

use crate::backends::{Backends, CacheBackend, LogBackend, PollBackend, TallyBackend};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use storage::{EmbeddedLogConfig, KafkaConfig, RegistryConfig};

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port[/db]`; empty: no cache (query nodes read PostgreSQL), no notices.
    pub url: String,
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "crowdtick:".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistrySection {
    /// `http://registry:8081` (several: comma separated). When set, every record value on the
    /// votes and tallies topics is framed as magic byte 0, schema id, Avro datum, under the
    /// subjects `<topic>-value`.
    pub url: String,
    /// Register CrowdTick's schemas at start; when false, only check that the registry holds
    /// them (a registry where schemas are managed by a pipeline of their own).
    pub auto_register: bool,
    /// Timeout of each call to the registry.
    pub timeout_ms: u64,
}

impl Default for SchemaRegistrySection {
    fn default() -> Self {
        Self {
            url: String::new(),
            auto_register: true,
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaSection {
    /// `host:port[,host:port…]` of ScyllaDB (or Cassandra) nodes; empty keeps tallies in PostgreSQL.
    pub hosts: String,
    /// Keyspace of the tally tables (created by `crowdtick migrate` and at start).
    pub keyspace: String,
    /// Replication strategy of a keyspace CrowdTick creates: `NetworkTopologyStrategy` or
    /// `SimpleStrategy`.
    pub replication_class: String,
    /// Replication factor of a keyspace CrowdTick creates (per data centre with
    /// NetworkTopologyStrategy).
    pub replication_factor: u32,
    /// Writes in flight at once per flush (each a batch of one poll's rows).
    pub max_concurrent_writes: usize,
}

impl Default for ScyllaSection {
    fn default() -> Self {
        Self {
            hosts: String::new(),
            keyspace: "crowdtick".into(),
            replication_class: "NetworkTopologyStrategy".into(),
            replication_factor: 3,
            max_concurrent_writes: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PollsSection {
    /// Every node re-reads the poll catalog from PostgreSQL this often (and at once on a notice).
    pub refresh_ms: u64,
    /// A manual close takes effect this long after the request, so every ingest edge knows of it
    /// before it applies. Edges refuse votes (503) while their catalog is older than half of it.
    pub close_lead_ms: u64,
}

impl Default for PollsSection {
    fn default() -> Self {
        Self {
            refresh_ms: 250,
            close_lead_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port[,host:port…]`; empty keeps the embedded log.
    pub brokers: String,
    /// Prefix of the topic names (`<prefix>votes`, `<prefix>tallies`).
    pub topic_prefix: String,
    /// Replication factor of topics CrowdTick creates (-1: the broker's default).
    pub replication_factor: i32,
    /// librdkafka settings applied on top of CrowdTick's (e.g. `"linger.ms" = "10"`). Settings that
    /// could lose or skip votes (`enable.idempotence=false`, `acks=1`, `auto.offset.reset=latest`, …)
    /// are refused at start-up with the reason.
    pub settings: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSection {
    /// `postgres://user[:password]@host:port/database`; empty keeps polls in data_dir/polls.jsonl.
    pub url: String,
    /// Schema holding CrowdTick's tables (created and migrated at start).
    pub schema: String,
}

impl Default for PostgresSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            schema: storage::postgres::DEFAULT_SCHEMA.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Partitions of the votes topic (fixed once votes are written).
    pub partitions: u32,
    /// fdatasync before acknowledging a vote. Turning it off loses acknowledged votes on power loss.
    pub fsync: bool,
    /// Append requests that may wait for the log writer before votes get 503.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// How long a vote may wait to become durable before the answer is 503.
    pub deadline_ms: u64,
    pub max_batch_votes: usize,
    /// Public votes (`POST /v1/votes`) per second per client address; 0 turns the limit off.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub rate_limit_exempt_loopback: bool,
    /// Most votes in flight on this edge (accepted, not yet durable); past it, 503. 0: no bound.
    pub max_in_flight_votes: usize,
    /// Shed votes (503) once the log's shortest queueing delay over `shed_interval_ms` stays above
    /// this (CoDel-style); 0 turns it off.
    pub shed_target_ms: u64,
    pub shed_interval_ms: u64,
    /// Shed a vote request (503) that waited longer than this for the node (from the kernel's
    /// receipt of its bytes to its handler) once no request has waited less for
    /// `shed_wait_interval_ms`; before that, only one that waited a whole interval. 0 turns it off.
    pub shed_wait_target_ms: u64,
    pub shed_wait_interval_ms: u64,
    /// Stop reading new requests while this many appends of votes (a batch is one) wait for the
    /// log, until half are answered, for at most 250 ms: work in progress before new work. 0:
    /// never. Measured on the embedded log (1,000); a node on Kafka holds about rate × append
    /// latency, so set it above that (the Helm chart sets 4,096).
    pub pause_reads_in_flight: usize,
    /// The aggregators that may post batches, each with its own key, voter namespace and quota:
    /// `[[ingest.aggregators]] name = "sms-uk", key = "…", votes_per_sec = 20000`.
    pub aggregators: Vec<ingest::identity::AggregatorConfig>,
    /// Voter tokens of the broadcaster's identity service (for polls with `voters: verified`).
    pub voter_tokens: ingest::identity::VoterTokenConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorSection {
    /// How often changed tallies are published.
    pub flush_interval_ms: u64,
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    /// Distributed mode: the processors' Kafka consumer group.
    pub group_id: String,
    /// `group.instance.id` for static membership (unique per processor); empty: dynamic.
    pub instance_id: String,
    /// `partition.assignment.strategy` (`cooperative-sticky`, or `range`/`roundrobin` for eager).
    pub assignment_strategy: String,
    /// How long the group waits for a silent processor before moving its partitions.
    pub session_timeout_ms: u64,
    /// Distributed mode: how often each partition's counting state is checkpointed to the tally
    /// store, so its next owner reads on from there instead of replaying the partition. 0: never.
    pub checkpoint_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSection {
    /// At most one results update per poll per this many milliseconds (rendered once, shared by
    /// every viewer of the poll).
    pub coalesce_ms: u64,
    /// Web origins (`https://partner.example.com`) whose pages may open WebSockets besides the
    /// server's own and `public_url`'s; `["*"]`: any. Clients that send no Origin are not pages.
    pub allowed_origins: Vec<String>,
    /// A WebSocket client that does not take a message within this is disconnected (counted in
    /// `crowdtick_realtime_slow_consumers_dropped_total`); every connection, SSE included, also
    /// meets `http.write_stall_timeout_ms`.
    pub send_timeout_ms: u64,
    /// The kernel send buffer of each live socket (SO_SNDBUF; Linux doubles it): small, so a
    /// slow viewer is behind by little more than one frame; 0: the kernel's own (autotuned).
    pub socket_send_buffer_bytes: u32,
    /// Threads that serve WebSocket viewers, apart from the vote path (0: share its runtime).
    pub fanout_threads: usize,
    /// How many nice levels lower the fan-out threads run than the rest of the node, so votes
    /// get the cores first and viewers skip frames when there is not enough left (0: the same).
    pub fanout_nice: i32,
}

impl RealtimeSection {
    pub fn settings(&self) -> realtime::Settings {
        realtime::Settings {
            coalesce: std::time::Duration::from_millis(self.coalesce_ms),
            send_timeout: std::time::Duration::from_millis(self.send_timeout_ms.max(1)),
            socket_send_buffer: self.socket_send_buffer_bytes,
            fanout_threads: self.fanout_threads,
            fanout_nice: self.fanout_nice,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "data".into(),
            operator_keys: vec!["dev-operator-key".into()],
            public_url: String::new(),
            log: LogSection::default(),
            ingest: IngestSection::default(),
            processor: ProcessorSection::default(),
            realtime: RealtimeSection::default(),
            kafka: KafkaSection {
                replication_factor: -1,
                topic_prefix: "crowdtick.".into(),
                ..Default::default()
            },
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

impl Default for LogSection {
    fn default() -> Self {
        Self {
            partitions: 8,
            fsync: true,
            queue_capacity: 65_536,
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        let d = ingest::IngestConfig::default();
        Self {
            deadline_ms: d.deadline.as_millis() as u64,
            max_batch_votes: d.max_batch_votes,
            rate_limit_per_sec: d.rate_limit_per_sec,
            rate_limit_burst: d.rate_limit_burst,
            rate_limit_exempt_loopback: d.rate_limit_exempt_loopback,
            max_in_flight_votes: d.admission.max_in_flight_votes,
            shed_target_ms: d.admission.target_delay.as_millis() as u64,
            shed_interval_ms: d.admission.interval.as_millis() as u64,
            shed_wait_target_ms: d.admission.wait_target.as_millis() as u64,
            shed_wait_interval_ms: d.admission.wait_interval.as_millis() as u64,
            pause_reads_in_flight: d.admission.pause_reads_at,
            aggregators: vec![ingest::identity::AggregatorConfig {
                name: "dev".into(),
                key: DEV_AGGREGATOR_KEY.into(),
                votes_per_sec: 0,
                burst: 0,
            }],
            voter_tokens: Default::default(),
        }
    }
}

/// The key of the `dev` aggregator of the default configuration (like `dev-operator-key`, for a
/// laptop; a deployment sets `ingest.aggregators` of its own).
pub const DEV_AGGREGATOR_KEY: &str = "dev-aggregator-key";

impl Default for ProcessorSection {
    fn default() -> Self {
        Self {
            flush_interval_ms: 50,
            window_ms: 1_000,
            allowed_lateness_ms: 2_000,
            group_id: "crowdtick-processors".into(),
            instance_id: String::new(),
            assignment_strategy: "cooperative-sticky".into(),
            session_timeout_ms: 10_000,
            checkpoint_interval_ms: 5_000,
        }
    }
}

impl Default for RealtimeSection {
    fn default() -> Self {
        Self {
            coalesce_ms: 100,
            allowed_origins: Vec::new(),
            send_timeout_ms: 5_000,
            socket_send_buffer_bytes: 8_192,
            fanout_threads: 1,
            fanout_nice: 10,
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
        anyhow::ensure!(
            self.log.partitions >= 1 && self.log.partitions <= 1024,
            "log.partitions must be 1 to 1024"
        );
        anyhow::ensure!(
            self.ingest.deadline_ms >= 10,
            "ingest.deadline_ms must be at least 10"
        );
        anyhow::ensure!(
            self.processor.window_ms >= 10,
            "processor.window_ms must be at least 10"
        );
        anyhow::ensure!(
            self.processor.flush_interval_ms >= 1,
            "processor.flush_interval_ms must be at least 1"
        );
        anyhow::ensure!(
            self.polls.refresh_ms >= 10 && self.polls.refresh_ms * 4 <= self.polls.close_lead_ms,
            "polls.refresh_ms must be at least 10 and at most a quarter of polls.close_lead_ms \
             (edges must re-read the catalog several times before a close applies)"
        );
        anyhow::ensure!(
            self.http.header_read_timeout_ms >= 100 && self.http.body_read_timeout_ms >= 100,
            "http.header_read_timeout_ms and http.body_read_timeout_ms must be at least 100"
        );
        // Backends that need one another (a schema registry needs Kafka, ScyllaDB PostgreSQL).
        self.backends()?;
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
        let k = &self.kafka;
        let mut kafka = KafkaConfig::new(&k.brokers);
        kafka.votes_topic = format!("{}votes", k.topic_prefix);
        kafka.tallies_topic = format!("{}tallies", k.topic_prefix);
        kafka.votes_partitions = self.log.partitions;
        kafka.replication_factor = k.replication_factor;
        kafka.deadline = Duration::from_millis(self.ingest.deadline_ms);
        kafka.extra = k.settings.clone();
        kafka
    }

    pub fn ingest_config(&self) -> ingest::IngestConfig {
        ingest::IngestConfig {
            deadline: Duration::from_millis(self.ingest.deadline_ms),
            max_batch_votes: self.ingest.max_batch_votes,
            rate_limit_per_sec: self.ingest.rate_limit_per_sec,
            rate_limit_burst: self.ingest.rate_limit_burst,
            rate_limit_exempt_loopback: self.ingest.rate_limit_exempt_loopback,
            catalog_max_age: self
                .is_shared()
                .then(|| Duration::from_millis(self.polls.close_lead_ms / 2)),
            body_read_timeout: Duration::from_millis(self.http.body_read_timeout_ms),
            aggregators: self.ingest.aggregators.clone(),
            voter_tokens: self.ingest.voter_tokens.clone(),
            admission: ingest::admission::AdmissionConfig {
                max_in_flight_votes: self.ingest.max_in_flight_votes,
                target_delay: Duration::from_millis(self.ingest.shed_target_ms),
                interval: Duration::from_millis(self.ingest.shed_interval_ms.max(1)),
                wait_target: Duration::from_millis(self.ingest.shed_wait_target_ms),
                wait_interval: Duration::from_millis(self.ingest.shed_wait_interval_ms.max(1)),
                pause_reads_at: self.ingest.pause_reads_in_flight,
            },
            ..Default::default()
        }
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

    pub fn group_config(&self) -> storage::GroupConfig {
        storage::GroupConfig {
            group_id: format!("{}{}", self.kafka.topic_prefix, self.processor.group_id),
            instance_id: self.processor.instance_id.clone(),
            assignment_strategy: self.processor.assignment_strategy.clone(),
            session_timeout: Duration::from_millis(self.processor.session_timeout_ms),
            ..Default::default()
        }
    }

    pub fn processor_config(&self) -> processor::ProcessorConfig {
        processor::ProcessorConfig {
            flush_interval: Duration::from_millis(self.processor.flush_interval_ms),
            windows: processor::WindowConfig {
                window_ms: self.processor.window_ms,
                allowed_lateness_ms: self.processor.allowed_lateness_ms,
            },
            ingest_deadline: Duration::from_millis(self.ingest.deadline_ms),
            checkpoint_interval: (self.processor.checkpoint_interval_ms > 0)
                .then(|| Duration::from_millis(self.processor.checkpoint_interval_ms)),
            ..Default::default()
        }
    }

    pub fn scylla_config(&self) -> storage::ScyllaConfig {
        let s = &self.scylla;
        storage::ScyllaConfig {
            hosts: s.hosts.clone(),
            keyspace: s.keyspace.clone(),
            replication_class: s.replication_class.clone(),
            replication_factor: s.replication_factor,
            max_concurrent_writes: s.max_concurrent_writes,
        }
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

#[cfg(test)]
mod tests;
