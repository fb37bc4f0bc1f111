//! The Kafka log (distributed mode): [`KafkaLog`] implements [`Log`] with rdkafka (librdkafka).
//!
//! - **Topics.** [`KafkaLog::connect`] creates the votes and tallies topics when missing, with the
//!   configured partition counts, and refuses to start when a topic exists with another count: votes
//!   are placed by `hash(poll, voter) mod partitions`, so a different count would send a voter's
//!   later votes to another partition, where the dedupe cannot see the earlier ones.
//! - **Writes.** One idempotent producer (`enable.idempotence=true`, `acks=all`, lz4, `linger.ms=5`),
//!   with a bounded queue (100k messages / 64 MiB, not librdkafka's 1 GiB) and `message.timeout.ms`
//!   no longer than the edge deadline. [`Log::append`] sends every record to its explicit partition
//!   (Kafka key = record key) and resolves when *every* delivery report of the batch says
//!   persisted, with the positions in batch order. A full queue is [`LogError::Overloaded`]; a
//!   failed or late delivery, or the deadline passing first, is [`LogError::Timeout`].
//!
//!   **Unlike the embedded log, a timed-out or refused append may still be written**: a message
//!   already handed to the broker cannot be called back (and when the queue fills in the middle of a
//!   batch, the records before it stay queued). The edge answers 503, the client retries with the
//!   same `vote_id`, and the processor's dedupe by (poll, voter) keeps the count exact; the vote is
//!   counted once whether the first or the retried copy is the one that landed.
//! - **Reads.** Positions are the caller's, never Kafka's committed offsets: no group is joined
//!   (librdkafka wants a `group.id` for `assign`, nothing more), nothing is committed or stored.
//!   Each (topic, partition) gets its own consumer, made on first use, `assign`ed at an explicit offset and
//!   re-assigned whenever a fetch asks for another offset than the one it stands at.
//!   `auto.offset.reset=earliest`, so an offset that retention removed resumes at the oldest record
//!   (the [`Fetched`] then starts later than asked), never at the end.
//! - **High watermarks.** [`Fetched::high_watermark`] is either one this reader saw earlier that is
//!   still beyond the records returned (so the caller knows it is not caught up), or one asked of
//!   the broker after the fetch began: "caught up" (`next_offset() >= high_watermark`) always means
//!   caught up with everything written before the fetch. The broker's ListOffsets answer is checked
//!   against the high watermark of librdkafka's latest fetch response, and when that cannot settle
//!   it, the last record is read: tansu's memory engine (the test broker) answers ListOffsets with
//!   the last record batch's base offset + 1, short of the end when the batch holds several records.
//! - **Broker quirks.** Asked to fetch from inside a record batch, tansu's memory engine answers
//!   with the batches *after* it (or nothing). So when a newly positioned reader gets a later
//!   offset than asked, or nothing for a second although records exist, it reads once more from
//!   up to 10,000 records earlier (librdkafka's `batch.num.messages`) and drops what precedes the
//!   asked offset. A real gap (records removed by retention) then shows as a [`Fetched`] that
//!   starts later than asked. With Kafka itself neither case arises in normal operation.
//! - **Timestamps.** Kafka keeps milliseconds: a record's µs timestamp is stored as whole
//!   milliseconds and read back as `ms * 1000`. (Timestamp 0 means "now" to librdkafka.) Votes and
//!   tallies carry their exact times in their values.
//! - **Settings.** [`validate`] refuses librdkafka settings that would break an invariant (see
//!   `design.md`, "Risky defaults to override"); [`KafkaConfig::extra`] overrides apply to every
//!   client (librdkafka warns about and ignores a producer setting given to a consumer, and back).

use crate::log::{AppendBatch, Fetched, Log, LogError, Position, Topic};
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

/// The producer's client context: notes when the connection to the brokers is lost, and wakes
/// the watcher (see [`Producers::watch`]).
#[derive(Clone)]
pub(crate) struct ProducerContext {
    /// Set when the brokers were unreachable; the next append replaces the producer.
    lost_brokers: Arc<AtomicBool>,
    /// Set with `lost_brokers` when no broker at all is reachable (not on one lost connection).
    all_brokers_down: Arc<AtomicBool>,
    wake: std::sync::mpsc::SyncSender<()>,
}

impl rdkafka::ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::Global(
                RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
            )
        ) {
            self.lost_brokers.store(true, AtomicOrdering::Relaxed);
            if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
                self.all_brokers_down.store(true, AtomicOrdering::Relaxed);
                let _ = self.wake.try_send(());
            }
        }
        tracing::debug!(error = %error, reason, "Kafka producer");
    }
}

impl rdkafka::producer::ProducerContext for ProducerContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

type Producer_ = FutureProducer<ProducerContext>;
use std::time::{Duration, Instant};

/// How long topic creation and metadata look-ups may take at start-up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch waits for records the broker says exist before it reports an error.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How long a newly assigned reader waits for records the broker says exist before re-reading
/// from [`STEP_BACK`] records earlier.
const PROBE: Duration = Duration::from_secs(1);
/// How far back a newly assigned reader re-reads when the asked offset yields nothing or a later
/// one: librdkafka's `batch.num.messages` default, so the record batch holding the asked offset
/// starts within reach.
const STEP_BACK: u64 = 10_000;
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

    fn topic_name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Votes => &self.votes_topic,
            Topic::Tallies => &self.tallies_topic,
        }
    }

    fn partitions(&self, topic: Topic) -> u32 {
        match topic {
            Topic::Votes => self.votes_partitions,
            Topic::Tallies => self.tallies_partitions,
        }
    }

    fn deadline_ms(&self) -> u64 {
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

fn with_extra(mut s: BTreeMap<String, String>, config: &KafkaConfig) -> BTreeMap<String, String> {
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

/// The broker's raw produce rate, the baseline for benchmarks: a bare rdkafka producer with the
/// settings the edge's producer uses ([`producer_settings`], with a queue large enough to hold
/// every record) queues `records` (partition, key, value) to `topic` as fast as it can and waits
/// for every delivery report. Returns how many were delivered and how long it all took.
pub async fn raw_produce(
    config: &KafkaConfig,
    topic: &str,
    records: &[(i32, Vec<u8>, Vec<u8>)],
) -> Result<(usize, Duration), LogError> {
    let producer: FutureProducer = client_config(&producer_settings(&KafkaConfig {
        deadline: Duration::from_secs(60),
        ..config.clone()
    }))
    .set("queue.buffering.max.messages", "2000000")
    .set("queue.buffering.max.kbytes", "1048575")
    .create()
    .map_err(|e| LogError::Io(format!("creating the baseline producer: {e}")))?;
    let started = Instant::now();
    let mut reports = Vec::with_capacity(records.len());
    for (partition, key, value) in records {
        let record = FutureRecord::to(topic)
            .partition(*partition)
            .key(key)
            .payload(value);
        let report = producer
            .send_result(record)
            .map_err(|(e, _)| LogError::Io(format!("queueing a baseline record: {e}")))?;
        reports.push(report);
    }
    let delivered = futures::future::join_all(reports)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    Ok((delivered, started.elapsed()))
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

/// The [`Log`] on Kafka. See the module documentation.
pub struct KafkaLog {
    config: KafkaConfig,
    producers: Arc<Producers>,
    /// One reader per partition per topic (indexed by [`Topic::index`]), made on first fetch.
    readers: [Vec<tokio::sync::Mutex<Option<Reader>>>; 2],
}

impl KafkaLog {
    /// Validates the configuration, creates the topics when missing and checks their partition
    /// counts, and starts the producer.
    pub async fn connect(config: KafkaConfig) -> Result<Self, LogError> {
        validate(&config)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let context = ProducerContext {
            lost_brokers: Arc::new(AtomicBool::new(false)),
            all_brokers_down: Arc::new(AtomicBool::new(false)),
            wake,
        };
        let producer: Producer_ = client_config(&producer_settings(&config))
            .create_with_context(context.clone())
            .map_err(|e| LogError::Config(format!("Kafka producer settings: {e}")))?;
        let mut admin_settings = BTreeMap::new();
        admin_settings.insert("bootstrap.servers".to_owned(), config.brokers.clone());
        admin_settings.insert("client.id".to_owned(), "crowdtick-admin".to_owned());
        let admin: AdminClient<DefaultClientContext> =
            client_config(&with_extra(admin_settings, &config))
                .create()
                .map_err(|e| LogError::Config(format!("Kafka admin client settings: {e}")))?;
        for topic in Topic::ALL {
            ensure_topic(&admin, &producer, &config, topic).await?;
        }
        let readers = Topic::ALL.map(|t| {
            (0..config.partitions(t))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect()
        });
        let producers = Arc::new(Producers {
            config: config.clone(),
            context,
            producer: parking_lot::RwLock::new((0, producer)),
            broker_refusals: std::sync::atomic::AtomicU64::new(0),
            failing_since: parking_lot::Mutex::new(None),
            replaced_at: parking_lot::Mutex::new(Instant::now()),
        });
        let watched = Arc::downgrade(&producers);
        std::thread::Builder::new()
            .name("kafka-producer-watch".into())
            .spawn(move || Producers::watch(watched, woken))
            .map_err(|e| LogError::Io(format!("starting the producer watcher: {e}")))?;
        Ok(Self {
            config,
            producers,
            readers,
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn check_partition(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        if partition < self.config.partitions(topic) {
            Ok(())
        } else {
            Err(LogError::NoSuchPartition(partition))
        }
    }

    /// Asks the broker for a partition's high watermark (a blocking call, run off the runtime).
    async fn query_high_watermark(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        let producer = self.producers.producer.read().1.clone();
        let name = self.config.topic_name(topic).to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&name, partition as i32, WATERMARK_TIMEOUT)
                .map(|(_low, high)| high.max(0) as u64)
                .map_err(|e| {
                    LogError::Io(format!(
                        "high watermark of {name}/{partition} from Kafka: {e}"
                    ))
                })
        })
        .await
        .map_err(|e| LogError::Io(e.to_string()))?
    }

    /// A high watermark asked for after this call began that is either above `beyond` or exact.
    ///
    /// The broker's ListOffsets answer is combined with the high watermark of the latest fetch
    /// response, because tansu's memory engine answers ListOffsets with the base offset of the last
    /// record batch + 1 (short of the end when that batch holds several records). A batch written
    /// after a fetch response starts at or above that response's high watermark, so: if the listed
    /// value is not above the fetched one, nothing was written since, and the fetched one is exact;
    /// if the reader has not had a response yet, it reads the last record to get one.
    async fn high_watermark_for(
        &self,
        topic: Topic,
        partition: u32,
        reader: &mut Reader,
        beyond: u64,
        resume: Option<u64>,
    ) -> Result<u64, LogError> {
        let name = self.config.topic_name(topic);
        let listed = self.query_high_watermark(topic, partition).await?;
        let fetched = reader.fetched_high_watermark(name, partition);
        let lower = listed.max(fetched.unwrap_or(0));
        if lower > beyond || fetched.is_some_and(|f| f >= listed) || listed == 0 {
            return Ok(lower);
        }
        let probed = reader.probe(name, partition, listed - 1, resume).await?;
        Ok(lower.max(probed))
    }

    fn new_reader(&self, topic: Topic, partition: u32) -> Result<Reader, LogError> {
        let mut settings = consumer_settings(&self.config);
        settings
            .entry("client.id".to_owned())
            .and_modify(|id| *id = format!("{id}-{}-{partition}", topic.name()));
        let consumer: StreamConsumer = client_config(&settings)
            .create()
            .map_err(|e| LogError::Config(format!("Kafka consumer settings: {e}")))?;
        Ok(Reader {
            consumer,
            at: None,
            held: None,
            known_high_watermark: 0,
            fresh: false,
            stepped_back: false,
        })
    }
}

/// The producer of a [`KafkaLog`] and what decides when to replace it.
struct Producers {
    config: KafkaConfig,
    /// The context every producer gets (shared flag and watcher wake-up).
    context: ProducerContext,
    /// The producer and its generation; replaced when the broker keeps refusing it (see
    /// [`Producers::note_delivery`]) or was lost (see [`Producers::watch`]).
    producer: parking_lot::RwLock<(u64, Producer_)>,
    /// When the producer was last replaced.
    replaced_at: parking_lot::Mutex<Instant>,
    /// Broker-side refusals in a row of the current producer.
    broker_refusals: std::sync::atomic::AtomicU64,
    /// Since when every append has failed (None after a success).
    failing_since: parking_lot::Mutex<Option<Instant>>,
}

impl Producers {
    /// The watcher thread: when every broker is lost while the producer has records in flight, it
    /// replaces the producer at once and purges them (their appends answer 503; the clients retry
    /// with the same vote_id, which dedupe absorbs). Otherwise the old producer would send them
    /// again the moment the broker returns, under its old producer id — which is what trips the
    /// tansu restart panic described at [`Producers::note_delivery`]. Ends with the log.
    fn watch(producers: std::sync::Weak<Producers>, woken: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            match woken.recv_timeout(Duration::from_millis(250)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(producers) = producers.upgrade() else {
                return;
            };
            let all_down = &producers.context.all_brokers_down;
            if !all_down.load(AtomicOrdering::Relaxed) {
                continue;
            }
            let (generation, producer) = producers.producer.read().clone();
            if producer.in_flight_count() > 0
                && producers.replaced_at.lock().elapsed() >= Duration::from_millis(250)
            {
                all_down.store(false, AtomicOrdering::Relaxed);
                producers
                    .context
                    .lost_brokers
                    .store(false, AtomicOrdering::Relaxed);
                producers
                    .replace_producer(generation, "the brokers were lost with records in flight");
            }
        }
    }

    /// Tracks failed appends. A producer that is in a fatal state, that the broker refused
    /// several times in a row, or whose appends have all failed for longer than two deadlines (the
    /// broker is gone) is replaced by a new one, with its queue purged so that nothing it held is
    /// sent after the answer was a 503. Votes that failed come back with the same vote_id, which
    /// dedupe absorbs; the cost on a healthy broker is a new producer id.
    ///
    /// Why: a broker may lose the idempotent producer's state. tansu 0.6 with SQLite storage, after a
    /// restart, panics in its storage task on the first produce of a producer from before the restart
    /// and serves nothing afterwards; a producer created during the outage never trips it.
    fn note_delivery(
        &self,
        generation: u64,
        producer: &Producer_,
        failure: Option<Option<&KafkaError>>,
    ) {
        use std::sync::atomic::Ordering;
        let Some(error) = failure else {
            self.broker_refusals.store(0, Ordering::Relaxed);
            *self.failing_since.lock() = None;
            return;
        };
        let by_broker =
            matches!(error, Some(KafkaError::MessageProduction(code)) if (*code as i32) >= -1);
        let refusals = if by_broker {
            self.broker_refusals.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let failing_for = {
            let mut since = self.failing_since.lock();
            since.get_or_insert_with(Instant::now).elapsed()
        };
        let fatal = producer.client().fatal_error();
        let gone = failing_for > 2 * self.config.deadline.max(Duration::from_millis(500));
        if fatal.is_none() && refusals < 3 && !gone {
            return;
        }
        self.replace_producer(
            generation,
            &format!("{fatal:?}, {refusals} refusals, failing for {failing_for:?}"),
        );
    }

    /// The producer to append with: a new one if the brokers were unreachable since the last
    /// replacement (at most one replacement a second).
    fn current_producer(&self) -> (u64, Producer_) {
        let current = self.producer.read().clone();
        if self.context.lost_brokers.load(AtomicOrdering::Relaxed)
            && self.replaced_at.lock().elapsed() >= Duration::from_secs(1)
        {
            self.context
                .lost_brokers
                .store(false, AtomicOrdering::Relaxed);
            self.replace_producer(current.0, "the brokers were unreachable");
            return self.producer.read().clone();
        }
        current
    }

    fn replace_producer(&self, generation: u64, why: &str) {
        use std::sync::atomic::Ordering;
        let mut current = self.producer.write();
        if current.0 != generation {
            return; // already replaced
        }
        match client_config(&producer_settings(&self.config))
            .create_with_context::<_, Producer_>(self.context.clone())
        {
            Ok(fresh) => {
                tracing::warn!(why, "replacing the Kafka producer (its queue is purged)");
                *self.replaced_at.lock() = Instant::now();
                let old = std::mem::replace(&mut *current, (generation + 1, fresh));
                self.broker_refusals.store(0, Ordering::Relaxed);
                *self.failing_since.lock() = None;
                old.1
                    .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                // Dropping a producer waits for its queue: not on the runtime, not under the lock.
                std::thread::spawn(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "could not create a new producer"),
        }
    }
}

/// Creates the topic if missing; refuses one whose partition count differs from the configuration.
async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    producer: &Producer_,
    config: &KafkaConfig,
    topic: Topic,
) -> Result<(), LogError> {
    let name = config.topic_name(topic);
    let wanted = config.partitions(topic);
    let new = NewTopic::new(
        name,
        wanted as i32,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|e| {
        LogError::Io(format!(
            "creating topic '{name}' on Kafka at {}: {e}",
            config.brokers
        ))
    })?;
    match results.first() {
        Some(Ok(_)) => tracing::info!(topic = name, partitions = wanted, "created Kafka topic"),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => {
            return Err(LogError::Io(format!(
                "creating topic '{name}' on Kafka at {}: {code}",
                config.brokers
            )))
        }
        None => {
            return Err(LogError::Io(format!(
                "creating topic '{name}': Kafka gave no answer"
            )))
        }
    }
    let found = partition_count(producer, name).await?;
    if found != wanted {
        let placement = match topic {
            Topic::Votes => {
                "votes are placed by hash(poll, voter) mod partitions, so another count would send \
                 a voter's later votes to another partition, where the dedupe cannot see the \
                 earlier ones"
            }
            Topic::Tallies => {
                "partial tallies are placed by poll mod partitions, so another count would split a \
                 poll's partials over partitions and readers could merge them out of order"
            }
        };
        let field = match topic {
            Topic::Votes => "votes_partitions",
            Topic::Tallies => "tallies_partitions",
        };
        return Err(LogError::Config(format!(
            "Kafka topic '{name}' exists with {found} partitions but {field} = {wanted}; refusing \
             to start: {placement}. Set {field} = {found}, or use a new topic"
        )));
    }
    Ok(())
}

/// Waits until the broker's metadata shows the topic, and returns its partition count.
async fn partition_count(producer: &Producer_, name: &str) -> Result<u32, LogError> {
    let give_up = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let p = producer.clone();
        let n = name.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let md = p.client().fetch_metadata(Some(&n), WATERMARK_TIMEOUT)?;
            Ok::<_, KafkaError>(
                md.topics()
                    .iter()
                    .find(|t| t.name() == n && t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.partitions().len() as u32),
            )
        })
        .await
        .map_err(|e| LogError::Io(e.to_string()))?;
        match found {
            Ok(Some(count)) => return Ok(count),
            Ok(None) | Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(None) => {
                return Err(LogError::Io(format!(
                    "Kafka topic '{name}' did not appear in the metadata within {ADMIN_TIMEOUT:?}"
                )))
            }
            Err(e) => return Err(LogError::Io(format!("metadata of topic '{name}': {e}"))),
        }
    }
}

/// One partition's consumer and where it stands.
struct Reader {
    consumer: StreamConsumer,
    /// The offset the consumer's stream continues from (`None` until first assigned, and while a
    /// fetch is under way).
    at: Option<u64>,
    /// A record taken from the consumer but not returned yet (over `max_bytes`, or after a gap).
    held: Option<OwnedMessage>,
    /// The highest high watermark this reader has seen.
    known_high_watermark: u64,
    /// Set by `assign` until the first record comes from the new position.
    fresh: bool,
    /// Whether this position was already re-read from further back.
    stepped_back: bool,
}

impl Reader {
    fn assign(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
            .map_err(|e| LogError::Io(format!("{topic}/{partition} at {offset}: {e}")))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| LogError::Io(format!("assigning {topic}/{partition} at {offset}: {e}")))?;
        self.at = Some(offset);
        self.held = None;
        self.fresh = true;
        self.stepped_back = false;
        Ok(())
    }

    /// Whether a fresh position that yields nothing, or yields a later offset than asked, may be
    /// re-read from further back (see [`STEP_BACK`]).
    fn may_step_back(&self, offset: u64) -> bool {
        self.fresh && !self.stepped_back && offset > 0
    }

    /// Re-reads from [`STEP_BACK`] records before `offset`; the caller drops the records before it.
    fn step_back(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        tracing::debug!(
            topic,
            partition,
            offset,
            "no record at the asked offset yet; reading from further back"
        );
        self.assign(topic, partition, offset.saturating_sub(STEP_BACK))?;
        self.stepped_back = true;
        Ok(())
    }

    /// Reads the record at `last` to get a fetch response's high watermark, then stands at `resume`
    /// (or nowhere known).
    async fn probe(
        &mut self,
        topic: &str,
        partition: u32,
        last: u64,
        resume: Option<u64>,
    ) -> Result<u64, LogError> {
        self.assign(topic, partition, last)?;
        let give_up = tokio::time::Instant::now() + STALL_LIMIT;
        let read = loop {
            match tokio::time::timeout_at(give_up, self.consumer.recv()).await {
                Ok(Ok(m)) if m.offset() >= last as i64 => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        let hw = self.fetched_high_watermark(topic, partition);
        match resume {
            Some(at) => self.assign(topic, partition, at)?,
            None => self.at = None,
        }
        match hw {
            Some(hw) if read => Ok(hw),
            _ => Err(LogError::Io(format!(
                "{topic}/{partition}: could not read offset {last} within {STALL_LIMIT:?} to \
                 learn the high watermark"
            ))),
        }
    }

    /// The high watermark of the latest fetch response librdkafka received for this partition.
    fn fetched_high_watermark(&self, topic: &str, partition: u32) -> Option<u64> {
        let topic = CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the handle lives as long as `self.consumer`, `topic` is a NUL-terminated string
        // that outlives the call, and the out-pointers point at live locals. librdkafka only reads
        // its cached partition state under its own lock.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition as i32,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high as u64)
    }
}

/// The records of one fetch, built straight into a [`Fetched`].
struct Collect(Fetched);

impl Collect {
    fn new(partition: u32, offset: u64) -> Self {
        Self(Fetched {
            partition,
            first_offset: offset,
            ..Default::default()
        })
    }

    /// The offset the next record must have to follow on without a gap.
    fn expected(&self) -> u64 {
        self.0.next_offset()
    }

    /// Whether `m` goes into this fetch: `Some(true)` yes, `Some(false)` keep it for the next one,
    /// `None` drop it (before the wanted offset).
    fn takes(&self, m: &impl Message, max_bytes: usize) -> Option<bool> {
        let offset = m.offset().max(0) as u64;
        if offset < self.expected() {
            return None;
        }
        if self.0.is_empty() {
            return Some(true);
        }
        let size = m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
        Some(offset == self.expected() && self.0.data.len() + size <= max_bytes)
    }

    fn push(&mut self, m: &impl Message) {
        let f = &mut self.0;
        if f.records.is_empty() {
            // Records before it are gone (retention): start where the log does.
            f.first_offset = m.offset().max(0) as u64;
        }
        let ts = m.timestamp().to_millis().unwrap_or(0).saturating_mul(1000);
        let ks = f.data.len() as u32;
        f.data.extend_from_slice(m.key().unwrap_or_default());
        let vs = f.data.len() as u32;
        f.data.extend_from_slice(m.payload().unwrap_or_default());
        f.records.push((ts, ks, vs, f.data.len() as u32));
    }
}

#[async_trait]
impl Log for KafkaLog {
    fn partitions(&self, topic: Topic) -> u32 {
        self.config.partitions(topic)
    }

    async fn append(
        &self,
        topic: Topic,
        batch: AppendBatch,
        deadline: Instant,
    ) -> Result<Vec<Position>, LogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for (partition, ..) in batch.iter() {
            self.check_partition(topic, partition)?;
        }
        if Instant::now() >= deadline {
            return Err(LogError::Timeout);
        }
        let name = self.config.topic_name(topic);
        let producers = &self.producers;
        let (generation, producer) = producers.current_producer();
        let mut deliveries = Vec::with_capacity(batch.len());
        for (partition, timestamp_us, key, value) in batch.iter() {
            let record = FutureRecord::to(name)
                .partition(partition as i32)
                .timestamp(timestamp_us / 1000)
                .key(key)
                .payload(value);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(LogError::Overloaded)
                }
                Err((e, _)) => {
                    tracing::warn!(topic = name, partition, error = %e, "Kafka refused a record");
                    return Err(LogError::Timeout);
                }
            }
        }
        let reports =
            tokio::time::timeout_at(deadline.into(), futures::future::join_all(deliveries))
                .await
                .map_err(|_| {
                    producers.note_delivery(generation, &producer, Some(None));
                    LogError::Timeout
                })?;
        let positions: Result<Vec<Position>, LogError> = reports
            .into_iter()
            .map(|r| match r {
                Ok(Ok(d)) => Ok(Position {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Ok(Err((e, _))) => {
                    tracing::warn!(topic = name, error = %e, "Kafka did not persist a record");
                    producers.note_delivery(generation, &producer, Some(Some(&e)));
                    Err(LogError::Timeout)
                }
                Err(_canceled) => Err(LogError::Closed),
            })
            .collect();
        if positions.is_ok() {
            producers.note_delivery(generation, &producer, None);
        }
        positions
    }

    async fn fetch(
        &self,
        topic: Topic,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        self.check_partition(topic, partition)?;
        let name = self.config.topic_name(topic);
        let mut slot = self.readers[topic.index()][partition as usize].lock().await;
        if slot.is_none() {
            *slot = Some(self.new_reader(topic, partition)?);
        }
        let reader = slot.as_mut().expect("made above");
        if reader.at != Some(offset) {
            reader.assign(name, partition, offset)?;
        }
        // Unknown until this fetch completes: if it is cancelled after taking records from the
        // consumer, the next fetch re-assigns instead of missing them.
        reader.at = None;
        let started = tokio::time::Instant::now();
        let soft = started + max_wait;
        let hard = started + max_wait.max(STALL_LIMIT);
        // Records below a known high watermark exist: wait for them even past `max_wait`.
        let mut records_exist = offset < reader.known_high_watermark;
        let mut out = Collect::new(partition, offset);
        if let Some(m) = reader.held.take() {
            if out.takes(&m, max_bytes).is_some() {
                out.push(&m);
            }
        }
        loop {
            let next = if out.0.is_empty() {
                let until = match records_exist {
                    false => soft,
                    true if reader.may_step_back(offset) => {
                        hard.min(tokio::time::Instant::now() + PROBE)
                    }
                    true => hard,
                };
                match tokio::time::timeout_at(until, reader.consumer.recv()).await {
                    Ok(r) => r,
                    Err(_) if !records_exist => {
                        let hw = self
                            .high_watermark_for(topic, partition, reader, offset, Some(offset))
                            .await?;
                        reader.known_high_watermark = reader.known_high_watermark.max(hw);
                        if hw <= offset {
                            reader.at = Some(offset);
                            out.0.high_watermark = hw;
                            return Ok(out.0);
                        }
                        records_exist = true;
                        continue;
                    }
                    Err(_) if reader.may_step_back(offset) => {
                        reader.step_back(name, partition, offset)?;
                        continue;
                    }
                    Err(_) => {
                        return Err(LogError::Io(format!(
                            "{name}/{partition}: records from offset {offset} exist (high \
                             watermark {}) but did not arrive within {:?}",
                            reader.known_high_watermark,
                            hard - started
                        )))
                    }
                }
            } else {
                match reader.consumer.recv().now_or_never() {
                    Some(r) => r,
                    None => break,
                }
            };
            let m = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = name, partition, error = %e, "Kafka consumer error");
                    if out.0.is_empty() {
                        continue;
                    }
                    break;
                }
            };
            match out.takes(&m, max_bytes) {
                None => continue,
                Some(true) => {
                    if out.0.is_empty()
                        && m.offset() as u64 > offset
                        && reader.may_step_back(offset)
                    {
                        // Either the records before it are gone, or the broker answered a fetch
                        // from inside a record batch with the next batch (tansu's memory
                        // engine does): read again from further back to tell which.
                        drop(m);
                        reader.step_back(name, partition, offset)?;
                        continue;
                    }
                    out.push(&m);
                    reader.fresh = false;
                }
                Some(false) => {
                    reader.held = Some(m.detach());
                    break;
                }
            }
            if out.0.data.len() >= max_bytes {
                break;
            }
        }
        let next_offset = out.expected();
        let hw = if next_offset < reader.known_high_watermark {
            reader.known_high_watermark
        } else {
            self.high_watermark_for(topic, partition, reader, next_offset, Some(next_offset))
                .await?
        };
        reader.at = Some(next_offset);
        reader.known_high_watermark = reader.known_high_watermark.max(hw).max(next_offset);
        out.0.high_watermark = hw.max(next_offset);
        Ok(out.0)
    }

    /// One ListOffsets request on the producer's connection: no reader, nothing held.
    async fn ping(&self) -> Result<(), LogError> {
        self.query_high_watermark(Topic::Votes, 0).await.map(|_| ())
    }

    async fn high_watermark(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check_partition(topic, partition)?;
        let mut slot = self.readers[topic.index()][partition as usize].lock().await;
        if slot.is_none() {
            *slot = Some(self.new_reader(topic, partition)?);
        }
        let reader = slot.as_mut().expect("made above");
        let hw = self
            .high_watermark_for(topic, partition, reader, u64::MAX, reader.at)
            .await?;
        reader.known_high_watermark = reader.known_high_watermark.max(hw);
        Ok(hw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::test_broker::TansuBroker as Tansu;

    trait TopicsForTest {
        fn config(&self, votes: u32, tallies: u32) -> KafkaConfig;
    }

    impl TopicsForTest for Tansu {
        /// A configuration with topic names no other test uses.
        fn config(&self, votes: u32, tallies: u32) -> KafkaConfig {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let id = std::process::id();
            KafkaConfig {
                votes_topic: format!("votes-{id}-{n}"),
                tallies_topic: format!("tallies-{id}-{n}"),
                votes_partitions: votes,
                tallies_partitions: tallies,
                replication_factor: 1,
                deadline: Duration::from_secs(5),
                ..KafkaConfig::new(self.addr().to_owned())
            }
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A realistic µs timestamp (whole milliseconds: Kafka keeps ms), distinct per `i`.
    fn ts(i: u64) -> i64 {
        1_700_000_000_000_000 + i as i64 * 1000
    }

    type Rec = (u64, i64, Vec<u8>, Vec<u8>);

    fn records(f: &Fetched) -> Vec<Rec> {
        f.iter()
            .map(|(o, t, k, v)| (o, t, k.to_vec(), v.to_vec()))
            .collect()
    }

    /// Everything in the partition from `from` up to `end`, fetched in pieces of `max_bytes`.
    async fn read_range(
        log: &KafkaLog,
        topic: Topic,
        p: u32,
        from: u64,
        end: u64,
        max_bytes: usize,
    ) -> Vec<Rec> {
        let mut out = Vec::new();
        let mut next = from;
        while next < end {
            let f = log
                .fetch(topic, p, next, max_bytes, Duration::ZERO)
                .await
                .unwrap();
            assert!(
                !f.is_empty(),
                "a zero-wait fetch below the high watermark returned nothing"
            );
            assert_eq!(f.first_offset, next);
            out.extend(records(&f));
            next = f.next_offset();
        }
        out
    }

    async fn append_n(log: &KafkaLog, p: u32, range: std::ops::Range<u64>) -> Vec<Position> {
        let mut b = AppendBatch::default();
        for i in range {
            b.push(
                p,
                ts(i),
                format!("k{i}").as_bytes(),
                format!("value {i}").as_bytes(),
            );
        }
        log.append(Topic::Votes, b, soon()).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_get_dense_offsets_per_partition_in_batch_order() {
        let broker = Tansu::start();
        let log = KafkaLog::connect(broker.config(3, 1)).await.unwrap();
        assert_eq!(log.partitions(Topic::Votes), 3);
        let mut b = AppendBatch::default();
        for (i, p) in [0u32, 1, 0, 2, 0, 1].into_iter().enumerate() {
            b.push(
                p,
                ts(i as u64),
                format!("k{i}").as_bytes(),
                format!("v{i}").as_bytes(),
            );
        }
        let pos = log.append(Topic::Votes, b, soon()).await.unwrap();
        let pairs: Vec<_> = pos.iter().map(|p| (p.partition, p.offset)).collect();
        assert_eq!(pairs, vec![(0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1)]);
        let pos = append_n(&log, 0, 6..7).await;
        assert_eq!(
            pos,
            vec![Position {
                partition: 0,
                offset: 3
            }]
        );

        let p0 = read_range(&log, Topic::Votes, 0, 0, 4, 1 << 20).await;
        let want: Vec<Rec> = [(0, 0), (1, 2), (2, 4), (3, 6)]
            .into_iter()
            .map(|(o, i)| {
                (
                    o,
                    ts(i),
                    format!("k{i}").into_bytes(),
                    format!("{}{i}", if i == 6 { "value " } else { "v" }).into_bytes(),
                )
            })
            .collect();
        assert_eq!(p0, want);
        let p2 = read_range(&log, Topic::Votes, 2, 0, 1, 1 << 20).await;
        assert_eq!(p2, vec![(0, ts(3), b"k3".to_vec(), b"v3".to_vec())]);
        // The tallies topic is separate.
        assert_eq!(log.high_watermark(Topic::Tallies, 0).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_from_an_offset_returns_exactly_the_records_from_there() {
        let broker = Tansu::start();
        let log = KafkaLog::connect(broker.config(2, 1)).await.unwrap();
        append_n(&log, 1, 0..10).await;
        let all = read_range(&log, Topic::Votes, 1, 0, 10, 1 << 20).await;
        assert_eq!(all.len(), 10);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, r)| r.0 == i as u64 && r.2 == format!("k{i}").as_bytes()));
        // Forward, backward, and again where the reader already stands.
        for from in [4u64, 2, 7, 0, 9] {
            let got = read_range(&log, Topic::Votes, 1, from, 10, 1 << 20).await;
            assert_eq!(got, all[from as usize..], "from {from}");
        }
        // Small fetches: at least one record each, no gap, no repeat.
        let got = read_range(&log, Topic::Votes, 1, 3, 10, 20).await;
        assert_eq!(got, all[3..]);
        let one = log
            .fetch(Topic::Votes, 1, 5, 1, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(records(&one), all[5..6]);
        assert_eq!(one.high_watermark, 10);
        // The other partition is untouched.
        assert_eq!(log.high_watermark(Topic::Votes, 0).await.unwrap(), 0);
        assert!(matches!(
            log.fetch(Topic::Votes, 2, 0, 100, Duration::ZERO).await,
            Err(LogError::NoSuchPartition(2))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_waits_up_to_max_wait_for_new_records() {
        let broker = Tansu::start();
        let log = std::sync::Arc::new(KafkaLog::connect(broker.config(1, 1)).await.unwrap());
        // Nothing comes: empty after about max_wait, with the high watermark.
        let started = Instant::now();
        let f = log
            .fetch(Topic::Votes, 0, 0, 1 << 20, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(f.is_empty());
        assert_eq!(
            (f.first_offset, f.high_watermark, f.next_offset()),
            (0, 0, 0)
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        // A record arrives while waiting: the fetch returns it well before max_wait.
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let f = log
                    .fetch(Topic::Votes, 0, 0, 1 << 20, Duration::from_secs(20))
                    .await;
                (f, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut b = AppendBatch::default();
        b.push(0, ts(1), b"k", b"hello");
        log.append(Topic::Votes, b, soon()).await.unwrap();
        let (f, waited) = reader.await.unwrap();
        let f = f.unwrap();
        assert_eq!(
            records(&f),
            vec![(0, ts(1), b"k".to_vec(), b"hello".to_vec())]
        );
        assert_eq!(f.high_watermark, 1);
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn high_watermarks_follow_the_appends() {
        let broker = Tansu::start();
        let log = KafkaLog::connect(broker.config(2, 2)).await.unwrap();
        for p in 0..2 {
            assert_eq!(log.high_watermark(Topic::Votes, p).await.unwrap(), 0);
        }
        append_n(&log, 0, 0..5).await;
        append_n(&log, 1, 0..2).await;
        append_n(&log, 0, 5..7).await;
        assert_eq!(log.high_watermark(Topic::Votes, 0).await.unwrap(), 7);
        assert_eq!(log.high_watermark(Topic::Votes, 1).await.unwrap(), 2);
        // Several records per producer batch, asked through a fresh log too (tansu's memory engine
        // answers ListOffsets with the last batch's base + 1; the fetch response has the truth).
        for (a, b) in [(7, 8), (8, 11), (11, 12), (12, 40)] {
            append_n(&log, 0, a..b).await;
            assert_eq!(log.high_watermark(Topic::Votes, 0).await.unwrap(), b);
        }
        let fresh = KafkaLog::connect(log.config().clone()).await.unwrap();
        assert_eq!(fresh.high_watermark(Topic::Votes, 0).await.unwrap(), 40);
        let f = fresh
            .fetch(Topic::Votes, 0, 39, 1 << 20, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((f.first_offset, f.len(), f.high_watermark), (39, 1, 40));
        let f = log
            .fetch(Topic::Votes, 0, 40, 1 << 20, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((f.len(), f.high_watermark), (0, 40));
        let mut b = AppendBatch::default();
        b.push(1, ts(0), b"poll", b"partial");
        let pos = log.append(Topic::Tallies, b, soon()).await.unwrap();
        assert_eq!(
            pos,
            vec![Position {
                partition: 1,
                offset: 0
            }]
        );
        assert_eq!(log.high_watermark(Topic::Tallies, 1).await.unwrap(), 1);
        assert_eq!(log.high_watermark(Topic::Tallies, 0).await.unwrap(), 0);
        let f = log
            .fetch(Topic::Votes, 0, 2, 1 << 20, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(f.high_watermark, 40);
        assert!(matches!(
            log.high_watermark(Topic::Votes, 2).await,
            Err(LogError::NoSuchPartition(2))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_log_reads_what_the_first_wrote() {
        let broker = Tansu::start();
        let config = broker.config(2, 1);
        let first = KafkaLog::connect(config.clone()).await.unwrap();
        append_n(&first, 0, 0..20).await;
        append_n(&first, 1, 0..3).await;
        let written = read_range(&first, Topic::Votes, 0, 0, 20, 1 << 20).await;
        drop(first);

        // What a new process does: connect (topics exist, same counts), read from its own positions.
        let second = KafkaLog::connect(config).await.unwrap();
        let end = second.high_watermark(Topic::Votes, 0).await.unwrap();
        assert_eq!(end, 20);
        assert_eq!(
            read_range(&second, Topic::Votes, 0, 0, end, 1 << 20).await,
            written
        );
        assert_eq!(
            read_range(&second, Topic::Votes, 1, 1, 3, 1 << 20)
                .await
                .len(),
            2
        );
        // And it appends after them.
        assert_eq!(append_n(&second, 0, 20..21).await[0].offset, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_with_another_partition_count_is_refused_with_the_reason() {
        let broker = Tansu::start();
        let config = broker.config(3, 1);
        drop(KafkaLog::connect(config.clone()).await.unwrap());
        let err = KafkaLog::connect(KafkaConfig {
            votes_partitions: 4,
            ..config.clone()
        })
        .await
        .err()
        .expect("a different partition count must be refused");
        let msg = err.to_string();
        assert!(matches!(err, LogError::Config(_)), "{msg}");
        assert!(
            msg.contains(&config.votes_topic) && msg.contains("3 partitions"),
            "{msg}"
        );
        assert!(msg.contains("hash(poll, voter) mod partitions"), "{msg}");
        let err = KafkaLog::connect(KafkaConfig {
            tallies_partitions: 2,
            ..config
        })
        .await
        .err()
        .expect("a different tallies partition count must be refused");
        assert!(err.to_string().contains("tallies_partitions"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_full_and_misaddressed_appends_are_refused() {
        let broker = Tansu::start();
        let mut config = broker.config(1, 1);
        config
            .extra
            .insert("queue.buffering.max.messages".into(), "10".into());
        let log = KafkaLog::connect(config).await.unwrap();
        let mut b = AppendBatch::default();
        b.push(0, ts(0), b"k", b"v");
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            log.append(Topic::Votes, b.clone(), past).await,
            Err(LogError::Timeout)
        );
        let mut big = AppendBatch::default();
        for i in 0..50 {
            big.push(0, ts(i), b"k", b"v");
        }
        assert_eq!(
            log.append(Topic::Votes, big, soon()).await,
            Err(LogError::Overloaded)
        );
        let mut wrong = AppendBatch::default();
        wrong.push(1, ts(0), b"k", b"v");
        assert_eq!(
            log.append(Topic::Votes, wrong, soon()).await,
            Err(LogError::NoSuchPartition(1))
        );
        // Once the queue drains, appends go through again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(log.append(Topic::Votes, b, soon()).await.is_ok());
    }

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

    #[tokio::test]
    async fn connect_refuses_a_risky_setting_before_touching_the_network() {
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.extra.insert("enable.auto.commit".into(), "true".into());
        let err = KafkaLog::connect(c).await.err().unwrap();
        assert!(err.to_string().contains("enable.auto.commit=true"), "{err}");
    }

    /// Append throughput against tansu: `cargo test -p storage --release kafka_log::tests::append_throughput -- --ignored --nocapture`
    /// (`TANSU_STORAGE=sqlite://data/tansu.db` for the durable engine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn append_throughput() {
        let broker = Tansu::start();
        let log = std::sync::Arc::new(KafkaLog::connect(broker.config(8, 1)).await.unwrap());
        let value = vec![b'x'; 100];
        let secs = 5;
        // Like the edge: one vote per append, many in flight.
        for concurrency in [64usize, 512] {
            let stop = Instant::now() + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (log, value) = (log.clone(), value.clone());
                    tokio::spawn(async move {
                        let (mut ok, mut refused) = (0u64, 0u64);
                        let mut i = t as u64;
                        while Instant::now() < stop {
                            let mut b = AppendBatch::default();
                            b.push((i % 8) as u32, ts(i), format!("k{i}").as_bytes(), &value);
                            match log
                                .append(Topic::Votes, b, Instant::now() + Duration::from_secs(2))
                                .await
                            {
                                Ok(_) => ok += 1,
                                Err(_) => refused += 1,
                            }
                            i += concurrency as u64;
                        }
                        (ok, refused)
                    })
                })
                .collect();
            let (mut ok, mut refused) = (0, 0);
            for t in tasks {
                let (o, r) = t.await.unwrap();
                ok += o;
                refused += r;
            }
            eprintln!(
                "single-record appends, {concurrency} in flight: {} acknowledged/s ({refused} refused)",
                ok / secs
            );
        }
        // Batched: 1000 records per append, 8 in flight.
        let started = Instant::now();
        let stop = started + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let (log, value) = (log.clone(), value.clone());
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    while Instant::now() < stop {
                        let mut b = AppendBatch::default();
                        for i in 0..1000u64 {
                            b.push(
                                ((t + i) % 8) as u32,
                                ts(i),
                                format!("k{i}").as_bytes(),
                                &value,
                            );
                        }
                        if log
                            .append(Topic::Votes, b, Instant::now() + Duration::from_secs(5))
                            .await
                            .is_ok()
                        {
                            ok += 1000;
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        eprintln!(
            "1000-record batches, 8 in flight: {} records/s",
            ok * 1000 / started.elapsed().as_millis() as u64
        );
        // The raw rate beside it: a bare rdkafka producer with the same settings.
        let records: Vec<_> = (0..400_000u64)
            .map(|i| ((i % 8) as i32, format!("k{i}").into_bytes(), value.clone()))
            .collect();
        let (delivered, took) = raw_produce(log.config(), &log.config().votes_topic, &records)
            .await
            .unwrap();
        eprintln!(
            "raw rdkafka producer: {} records/s ({delivered} delivered)",
            delivered as u128 * 1000 / took.as_millis().max(1)
        );
        // Reading them back.
        let started = Instant::now();
        let mut read = 0;
        for p in 0..8 {
            let end = log.high_watermark(Topic::Votes, p).await.unwrap();
            read += read_range(&log, Topic::Votes, p, 0, end, 1 << 20)
                .await
                .len();
        }
        eprintln!(
            "fetch: {read} records in {:?} ({} records/s)",
            started.elapsed(),
            read as u128 * 1000 / started.elapsed().as_millis().max(1)
        );
    }
}
