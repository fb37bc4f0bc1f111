//! The backends' sections of the configuration file, as written: `[log]` (the embedded log),
//! `[kafka]`, `[postgres]`, `[redis]`, `[schema_registry]`, `[scylla]` and `[polls]` (how poll
//! changes reach the other nodes). An empty address keeps the embedded part; the binary chooses
//! the backends from them once (`Config::backends`).

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
            schema: crate::postgres::DEFAULT_SCHEMA.into(),
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
    /// The embedded log commits (writes and fsyncs) a group of appends at most once per this many
    /// microseconds: under load, votes that come sooner wait out the rest of it and share the
    /// next fsync, unless about 35 votes (4 KiB) already wait or none came for a sixteenth of it.
    /// Fewer, larger groups leave more CPU to the votes; a client with few connections and one
    /// vote in flight on each gets fewer votes through. 0 commits at once.
    pub commit_interval_us: u64,
    /// Each topic's segment files hold about this many MiB.
    pub segment_mb: u64,
    /// With `fsync`, the embedded log keeps about this many KiB of written zeros past each
    /// topic's last record, so a group's fsync flushes its data and not the file's new size too
    /// (half an fsync's time on ext4; BENCHMARKS.md "2026-12-07 (sixth session)"). 0: none, for
    /// copy-on-write file systems (btrfs, ZFS), where overwriting zeros saves nothing. Each refill
    /// writes about half of it (all of it when a segment starts or after an open) on the writer's
    /// thread between groups, which the next group waits for (about 1 ms a MiB on the VM of that
    /// section); never past a segment's end. 0 to 16384.
    pub zero_ahead_kb: u64,
    /// Delete the votes log's segments that every partition's snapshot already holds (the
    /// processor snapshots every `processor.checkpoint_interval_ms`), and the tallies topic's
    /// that the results board's snapshot holds. The log stays bounded on a long run; `recount`
    /// audits only a log kept whole and refuses otherwise, and the snapshots become the only copy
    /// of what was deleted, so it is off by default.
    pub retire_after_snapshot: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            partitions: 8,
            fsync: true,
            queue_capacity: 65_536,
            commit_interval_us: 2_000,
            segment_mb: 256,
            zero_ahead_kb: 1024,
            retire_after_snapshot: false,
        }
    }
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: "crowdtick.".into(),
            replication_factor: -1,
            settings: Default::default(),
        }
    }
}

impl LogSection {
    /// Why these settings cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.commit_interval_us > 100_000 {
            return Err(
                "log.commit_interval_us must be at most 100000 (0.1 s): every vote may wait that long for its fsync"
                    .into(),
            );
        }
        if self.zero_ahead_kb > 16_384 {
            return Err(
                "log.zero_ahead_kb must be at most 16384 (16 MiB: each refill holds the next \
                 group up for about half of it); 0 turns it off"
                    .into(),
            );
        }
        match (self.partitions, self.segment_mb) {
            (1..=1024, 1..=65_536) => Ok(()),
            (1..=1024, _) => Err("log.segment_mb must be 1 to 65536".into()),
            _ => Err("log.partitions must be 1 to 1024".into()),
        }
    }
}

impl PollsSection {
    /// Why these settings cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.refresh_ms >= 10 && self.refresh_ms * 4 <= self.close_lead_ms {
            return Ok(());
        }
        Err(
            "polls.refresh_ms must be at least 10 and at most a quarter of polls.close_lead_ms \
             (edges must re-read the catalog several times before a close applies)"
                .into(),
        )
    }
}

impl KafkaSection {
    /// The Kafka log's settings: topics named under `topic_prefix`, the votes topic with
    /// `votes_partitions`, and appends given up (503) after `deadline`.
    pub fn config(
        &self,
        votes_partitions: u32,
        deadline: std::time::Duration,
    ) -> crate::KafkaConfig {
        let mut kafka = crate::KafkaConfig::new(&self.brokers);
        kafka.votes_topic = format!("{}votes", self.topic_prefix);
        kafka.tallies_topic = format!("{}tallies", self.topic_prefix);
        kafka.votes_partitions = votes_partitions;
        kafka.replication_factor = self.replication_factor;
        kafka.deadline = deadline;
        kafka.extra = self.settings.clone();
        kafka
    }
}

impl ScyllaSection {
    pub fn config(&self) -> crate::ScyllaConfig {
        crate::ScyllaConfig {
            hosts: self.hosts.clone(),
            keyspace: self.keyspace.clone(),
            replication_class: self.replication_class.clone(),
            replication_factor: self.replication_factor,
            max_concurrent_writes: self.max_concurrent_writes,
        }
    }
}
