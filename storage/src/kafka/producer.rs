//! The producer of the Kafka log: its context, and when it is replaced.

use super::settings::{client_config, producer_settings, KafkaConfig};
use crate::log::LogError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schemas::Partition;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The producer's client context: notes when the connection to the brokers is lost, and wakes
/// the watcher (see [`Producers::watch`]).
#[derive(Clone)]
pub(super) struct ProducerContext {
    /// Set when the brokers were unreachable; the next append replaces the producer.
    pub(super) lost_brokers: Arc<AtomicBool>,
    /// Set with `lost_brokers` when no broker at all is reachable (not on one lost connection).
    pub(super) all_brokers_down: Arc<AtomicBool>,
    pub(super) wake: std::sync::mpsc::SyncSender<()>,
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

pub(super) type Producer_ = FutureProducer<ProducerContext>;

/// The broker's raw produce rate, the baseline for benchmarks: a bare rdkafka producer with the
/// settings the edge's producer uses ([`producer_settings`], with a queue large enough to hold
/// every record) queues `records` (partition, key, value) to `topic` as fast as it can and waits
/// for every delivery report. Returns how many were delivered and how long it all took.
pub async fn raw_produce(
    config: &KafkaConfig,
    topic: &str,
    records: &[(Partition, Vec<u8>, Vec<u8>)],
) -> Result<(usize, Duration), LogError> {
    let producer: FutureProducer = client_config(&producer_settings(&KafkaConfig {
        deadline: Duration::from_secs(60),
        ..config.clone()
    }))
    .set("queue.buffering.max.messages", "2000000")
    .set("queue.buffering.max.kbytes", "1048575")
    .create()
    .map_err(|e| LogError::io("creating the baseline producer", e))?;
    let started = Instant::now();
    let mut reports = Vec::with_capacity(records.len());
    for (partition, key, value) in records {
        let record = FutureRecord::to(topic)
            .partition(partition.0)
            .key(key)
            .payload(value);
        let report = producer
            .send_result(record)
            .map_err(|(e, _)| LogError::io("queueing a baseline record", e))?;
        reports.push(report);
    }
    let delivered = futures::future::join_all(reports)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    Ok((delivered, started.elapsed()))
}

/// The producer of a [`KafkaLog`] and what decides when to replace it.
pub(super) struct Producers {
    pub(super) config: KafkaConfig,
    /// The context every producer gets (shared flag and watcher wake-up).
    pub(super) context: ProducerContext,
    /// The producer and its generation; replaced when the broker keeps refusing it (see
    /// [`Producers::note_delivery`]) or was lost (see [`Producers::watch`]).
    pub(super) producer: parking_lot::RwLock<(u64, Producer_)>,
    /// When the producer was last replaced.
    pub(super) replaced_at: parking_lot::Mutex<Instant>,
    /// Broker-side refusals in a row of the current producer.
    pub(super) broker_refusals: std::sync::atomic::AtomicU64,
    /// Since when every append has failed (None after a success).
    pub(super) failing_since: parking_lot::Mutex<Option<Instant>>,
}

impl Producers {
    /// The watcher thread: when every broker is lost while the producer has records in flight, it
    /// replaces the producer at once and purges them (their appends answer 503; the clients retry
    /// with the same vote_id, which dedupe absorbs). Otherwise the old producer would send them
    /// again the moment the broker returns, under its old producer id — which is what trips the
    /// tansu restart panic described at [`Producers::note_delivery`]. Ends with the log.
    pub(super) fn watch(
        producers: std::sync::Weak<Producers>,
        woken: std::sync::mpsc::Receiver<()>,
    ) {
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
    pub(super) fn note_delivery(
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
    pub(super) fn current_producer(&self) -> (u64, Producer_) {
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

    pub(super) fn replace_producer(&self, generation: u64, why: &str) {
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
