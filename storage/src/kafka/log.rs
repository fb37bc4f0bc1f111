//! [`KafkaLog`]: the [`Log`] on Kafka (see the module documentation of `kafka`).

use super::producer::{ProducerContext, Producer_, Producers};
use super::reader::{Collect, Reader, PROBE, STALL_LIMIT, WATERMARK_TIMEOUT};
use super::settings::{
    client_config, consumer_settings, producer_settings, validate, with_extra, KafkaConfig,
};
use super::topics::ensure_topic;
use crate::log::{AppendBatch, Fetched, Log, LogError, Position, Topic};
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use schemas::{Offset, Partition};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            .map_err(|e| LogError::io("starting the producer watcher", e))?;
        Ok(Self {
            config,
            producers,
            readers,
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn check_partition(&self, topic: Topic, partition: Partition) -> Result<(), LogError> {
        if partition.index() < self.config.partitions(topic) as usize {
            Ok(())
        } else {
            Err(LogError::NoSuchPartition(partition))
        }
    }

    /// Asks the broker for a partition's low and high watermarks: its first offset still held
    /// and the next to be written (a blocking call, run off the runtime).
    async fn query_watermarks(
        &self,
        topic: Topic,
        partition: Partition,
    ) -> Result<(Offset, Offset), LogError> {
        let producer = self.producers.producer.read().1.clone();
        let name = self.config.topic_name(topic).to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&name, partition.0, WATERMARK_TIMEOUT)
                .map(|(low, high)| (Offset(low.max(0)), Offset(high.max(0))))
                .map_err(|e| {
                    LogError::io(format!("watermarks of {name}/{partition} from Kafka"), e)
                })
        })
        .await
        .map_err(|e| LogError::io("the watermarks task", e))?
    }

    /// The broker's high watermark of a partition (see [`Self::high_watermark_for`] for when it
    /// is exact).
    async fn query_high_watermark(
        &self,
        topic: Topic,
        partition: Partition,
    ) -> Result<Offset, LogError> {
        Ok(self.query_watermarks(topic, partition).await?.1)
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
        partition: Partition,
        reader: &mut Reader,
        beyond: Offset,
        resume: Option<Offset>,
    ) -> Result<Offset, LogError> {
        let name = self.config.topic_name(topic);
        let listed = self.query_high_watermark(topic, partition).await?;
        let fetched = reader.fetched_high_watermark(name, partition);
        let lower = listed.max(fetched.unwrap_or(Offset::ZERO));
        if lower > beyond || fetched.is_some_and(|f| f >= listed) || listed == Offset::ZERO {
            return Ok(lower);
        }
        let probed = reader
            .probe(name, partition, Offset(listed.0 - 1), resume)
            .await?;
        Ok(lower.max(probed))
    }

    fn new_reader(&self, topic: Topic, partition: Partition) -> Result<Reader, LogError> {
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
            known_high_watermark: Offset::ZERO,
            fresh: false,
            stepped_back: false,
        })
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
        for (partition, timestamp, key, value) in batch.iter() {
            let record = FutureRecord::to(name)
                .partition(partition.0)
                .timestamp(timestamp.micros() / 1000)
                .key(key)
                .payload(value);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(LogError::Overloaded)
                }
                Err((e, _)) => {
                    tracing::warn!(topic = name, partition = partition.0, error = %e, "Kafka refused a record");
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
                    partition: Partition(d.partition),
                    offset: Offset(d.offset),
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
        partition: Partition,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        self.check_partition(topic, partition)?;
        let name = self.config.topic_name(topic);
        let mut slot = self.readers[topic.index()][partition.index()].lock().await;
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
                        return Err(LogError::io(
                            format!("{name}/{partition}"),
                            format!(
                                "records from offset {offset} exist (high watermark {}) but did \
                                 not arrive within {:?}",
                                reader.known_high_watermark,
                                hard - started
                            ),
                        ))
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
                    tracing::warn!(topic = name, partition = partition.0, error = %e, "Kafka consumer error");
                    if out.0.is_empty() {
                        continue;
                    }
                    break;
                }
            };
            match out.takes(&m, max_bytes) {
                None => continue,
                Some(true) => {
                    if out.0.is_empty() && m.offset() > offset.0 && reader.may_step_back(offset) {
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
        self.query_high_watermark(Topic::Votes, Partition(0))
            .await
            .map(|_| ())
    }

    async fn high_watermark(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        self.check_partition(topic, partition)?;
        let mut slot = self.readers[topic.index()][partition.index()].lock().await;
        if slot.is_none() {
            *slot = Some(self.new_reader(topic, partition)?);
        }
        let reader = slot.as_mut().expect("made above");
        let hw = self
            .high_watermark_for(topic, partition, reader, Offset(i64::MAX), reader.at)
            .await?;
        reader.known_high_watermark = reader.known_high_watermark.max(hw);
        Ok(hw)
    }

    /// The low watermark: above 0 once the topic's retention (`retention.ms`, `retention.bytes`)
    /// or a deletion of records removed the partition's start, so a replay from 0 cannot rebuild
    /// its count (the processor then needs a snapshot at or after it, and says so).
    async fn log_start(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        self.check_partition(topic, partition)?;
        Ok(self.query_watermarks(topic, partition).await?.0)
    }
}

#[cfg(test)]
mod tests;
