//! The Kafka log's configuration, the librdkafka settings of each client, and the checks that
//! refuse a setting which would break an invariant.

use crate::log::{LogError, Topic};
use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// librdkafka's default producer queue (1 GiB, in KiB): as large as this is refused.
const RISKY_QUEUE_KBYTES: u64 = 1 << 20;
/// More queued messages than this are refused (40 s of backlog at 25k votes/s).
const MAX_QUEUE_MESSAGES: u64 = 1_000_000;

/// Where the Kafka log lives and how its clients are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    pub votes_topic: String,
    pub tallies_topic: String,
    pub votes_partitions: u32,
    pub tallies_partitions: u32,
    /// Replication factor for topics this log creates; `-1` takes the broker's default.
    pub replication_factor: i32,
    /// The edge's deadline for a vote to become durable; `message.timeout.ms` must not exceed it.
    pub deadline: Duration,
    /// librdkafka settings applied on top of ours to every client (checked by [`validate`]).
    pub extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            votes_topic: Topic::Votes.name().to_owned(),
            tallies_topic: Topic::Tallies.name().to_owned(),
            votes_partitions: 8,
            tallies_partitions: 1,
            replication_factor: -1,
            deadline: Duration::from_secs(2),
            extra: BTreeMap::new(),
        }
    }

    pub(super) fn topic_name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Votes => &self.votes_topic,
            Topic::Tallies => &self.tallies_topic,
        }
    }

    pub(super) fn partitions(&self, topic: Topic) -> u32 {
        match topic {
            Topic::Votes => self.votes_partitions,
            Topic::Tallies => self.tallies_partitions,
        }
    }

    pub(super) fn deadline_ms(&self) -> u64 {
        (self.deadline.as_millis() as u64).max(1)
    }
}

/// The producer's settings: ours, then [`KafkaConfig::extra`].
pub fn producer_settings(config: &KafkaConfig) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    let mut set = |k: &str, v: String| s.insert(k.to_owned(), v);
    set("bootstrap.servers", config.brokers.clone());
    set("client.id", "crowdtick-producer".into());
    set("enable.idempotence", "true".into());
    set("acks", "all".into());
    set("queue.buffering.max.messages", "100000".into());
    set("queue.buffering.max.kbytes", "65536".into());
    set("message.timeout.ms", config.deadline_ms().to_string());
    set("linger.ms", "5".into());
    set("compression.type", "lz4".into());
    with_extra(s, config)
}

/// A reader's settings: ours, then [`KafkaConfig::extra`]. librdkafka wants a `group.id` even for
/// `assign`; the group is never joined and nothing is committed to it.
pub fn consumer_settings(config: &KafkaConfig) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    let mut set = |k: &str, v: &str| s.insert(k.to_owned(), v.to_owned());
    set("bootstrap.servers", &config.brokers);
    set("client.id", "crowdtick-reader");
    set("group.id", "crowdtick-readers");
    set("enable.auto.commit", "false");
    set("enable.auto.offset.store", "false");
    set("auto.offset.reset", "earliest");
    set("enable.partition.eof", "false");
    // One consumer per partition: keep each one's read-ahead modest (librdkafka's is 64 MiB).
    set("queued.max.messages.kbytes", "16384");
    with_extra(s, config)
}

pub(super) fn with_extra(
    mut s: BTreeMap<String, String>,
    config: &KafkaConfig,
) -> BTreeMap<String, String> {
    for (k, v) in &config.extra {
        s.insert(k.clone(), v.clone());
    }
    s
}

pub(crate) fn client_config(settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

/// librdkafka's booleans: `true`/`t`/`1` and `false`/`f`/`0`, any case.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" => Some(true),
        "false" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// Refuses a configuration that would break an invariant, naming the setting and why. Pure: checks
/// the settings the clients would get (ours with [`KafkaConfig::extra`] on top).
pub fn validate(config: &KafkaConfig) -> Result<(), LogError> {
    let refuse = |msg: String| Err(LogError::Config(msg));
    if config.brokers.trim().is_empty() {
        return refuse("brokers is empty: give bootstrap servers as host:port[,host:port…]".into());
    }
    for (what, name) in [
        ("votes_topic", &config.votes_topic),
        ("tallies_topic", &config.tallies_topic),
    ] {
        if name.trim().is_empty() {
            return refuse(format!("{what} is empty"));
        }
    }
    if config.votes_topic == config.tallies_topic {
        return refuse(format!(
            "votes_topic and tallies_topic are both '{}': votes and tallies need their own topics",
            config.votes_topic
        ));
    }
    if config.votes_partitions == 0 || config.tallies_partitions == 0 {
        return refuse("votes_partitions and tallies_partitions must be at least 1".into());
    }
    if config.deadline.is_zero() {
        return refuse("deadline is zero: no vote could ever be acknowledged".into());
    }

    let producer = producer_settings(config);
    let readers = consumer_settings(config);
    if let Some(v) = producer.get("enable.idempotence") {
        if parse_bool(v) != Some(true) {
            return refuse(format!(
                "enable.idempotence={v}: the producer must be idempotent, or a retried send can \
                 write a vote twice or out of order within its partition"
            ));
        }
    }
    for key in ["acks", "request.required.acks"] {
        if let Some(v) = producer.get(key) {
            if !matches!(v.trim(), "all" | "-1") {
                return refuse(format!(
                    "{key}={v}: must be all (-1): with fewer acknowledgements a vote the edge \
                     acknowledged is lost when the partition leader fails"
                ));
            }
        }
    }
    for key in ["message.timeout.ms", "delivery.timeout.ms"] {
        if let Some(v) = producer.get(key) {
            let ms: u64 = v.trim().parse().map_err(|_| {
                LogError::Config(format!("{key}={v}: not a number of milliseconds"))
            })?;
            if ms == 0 {
                return refuse(format!(
                    "{key}=0 means never time out: a vote could be written minutes after the \
                     edge answered 503 (the edge deadline is {} ms)",
                    config.deadline_ms()
                ));
            }
            if ms > config.deadline_ms() {
                return refuse(format!(
                    "{key}={ms} is longer than the edge deadline ({} ms): votes would keep being \
                     sent long after the voter was told 503",
                    config.deadline_ms()
                ));
            }
        }
    }
    if let Some(v) = producer.get("queue.buffering.max.kbytes") {
        let kb: u64 = v.trim().parse().map_err(|_| {
            LogError::Config(format!("queue.buffering.max.kbytes={v}: not a number"))
        })?;
        if kb >= RISKY_QUEUE_KBYTES {
            return refuse(format!(
                "queue.buffering.max.kbytes={kb} ({} MiB): a producer queue as large as \
                 librdkafka's 1 GiB default lets votes pile up in memory instead of failing fast \
                 with 503; keep it well below {RISKY_QUEUE_KBYTES}",
                kb >> 10
            ));
        }
    }
    if let Some(v) = producer.get("queue.buffering.max.messages") {
        let n: u64 = v.trim().parse().map_err(|_| {
            LogError::Config(format!("queue.buffering.max.messages={v}: not a number"))
        })?;
        if n > MAX_QUEUE_MESSAGES {
            return refuse(format!(
                "queue.buffering.max.messages={n}: more than {MAX_QUEUE_MESSAGES} queued votes is \
                 far beyond what can be made durable within the edge deadline; fail fast with 503 \
                 instead"
            ));
        }
    }
    if let Some(v) = readers.get("auto.offset.reset") {
        if matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "largest" | "latest" | "end"
        ) {
            return refuse(format!(
                "auto.offset.reset={v} would make a new consumer skip every vote already written; \
                 use earliest"
            ));
        }
    }
    if let Some(v) = readers.get("enable.auto.offset.store") {
        if parse_bool(v) != Some(false) {
            return refuse(format!(
                "enable.auto.offset.store={v} stores offsets before the records are processed; \
                 positions belong to the processor's state, so it must be false"
            ));
        }
    }
    for key in ["enable.auto.commit", "auto.commit.enable"] {
        if let Some(v) = readers.get(key) {
            if parse_bool(v) != Some(false) {
                return refuse(format!(
                    "{key}={v} for the readers: Kafka's committed offsets are not the processor's \
                     positions (they live with its state), so readers must not commit; set false"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(extra: &[(&str, &str)]) -> String {
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        for (k, v) in extra {
            c.extra.insert((*k).into(), (*v).into());
        }
        match validate(&c) {
            Err(LogError::Config(msg)) => msg,
            other => panic!("{extra:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn safe_settings_pass_validation() {
        let c = KafkaConfig::new("127.0.0.1:9092");
        validate(&c).unwrap();
        let p = producer_settings(&c);
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["message.timeout.ms"], "2000");
        assert_eq!(p["compression.type"], "lz4");
        let r = consumer_settings(&c);
        assert_eq!(r["auto.offset.reset"], "earliest");
        assert_eq!(r["enable.auto.commit"], "false");
        let mut ok = c.clone();
        for (k, v) in [
            ("acks", "-1"),
            ("message.timeout.ms", "1500"),
            ("auto.offset.reset", "smallest"),
            ("queue.buffering.max.kbytes", "131072"),
            ("enable.idempotence", "True"),
            ("linger.ms", "10"),
        ] {
            ok.extra.insert(k.into(), v.into());
        }
        validate(&ok).unwrap();
    }

    #[test]
    fn risky_settings_are_refused_naming_the_setting_and_why() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (&[("enable.idempotence", "false")], &["enable.idempotence=false", "twice"]),
            (&[("acks", "1")], &["acks=1", "lost"]),
            (&[("request.required.acks", "0")], &["request.required.acks=0", "all"]),
            (
                &[("auto.offset.reset", "latest")],
                &["auto.offset.reset=latest would make a new consumer skip every vote already written"],
            ),
            (&[("auto.offset.reset", "largest")], &["auto.offset.reset=largest", "skip"]),
            (&[("auto.offset.reset", "end")], &["auto.offset.reset=end", "skip"]),
            (&[("enable.auto.offset.store", "true")], &["enable.auto.offset.store=true", "before"]),
            (&[("enable.auto.commit", "true")], &["enable.auto.commit=true", "readers"]),
            (&[("message.timeout.ms", "300000")], &["message.timeout.ms=300000", "deadline (2000 ms)"]),
            (&[("delivery.timeout.ms", "2001")], &["delivery.timeout.ms=2001", "deadline"]),
            (&[("message.timeout.ms", "0")], &["message.timeout.ms=0", "never"]),
            (&[("queue.buffering.max.kbytes", "1048576")], &["queue.buffering.max.kbytes=1048576", "1 GiB"]),
            (&[("queue.buffering.max.messages", "10000000")], &["queue.buffering.max.messages=10000000"]),
        ];
        for (extra, wants) in cases {
            let msg = refused(extra);
            for want in *wants {
                assert!(msg.contains(want), "{extra:?}: {msg:?} lacks {want:?}");
            }
        }
        // Shapes, too.
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.tallies_topic = c.votes_topic.clone();
        assert!(validate(&c).is_err());
        let mut c = KafkaConfig::new("");
        assert!(validate(&c).is_err());
        c = KafkaConfig::new("127.0.0.1:9092");
        c.votes_partitions = 0;
        assert!(validate(&c).is_err());
        // The deadline sets the default timeout: a shorter deadline lowers it, never fails.
        c = KafkaConfig::new("127.0.0.1:9092");
        c.deadline = Duration::from_millis(300);
        validate(&c).unwrap();
        assert_eq!(producer_settings(&c)["message.timeout.ms"], "300");
    }
}
