//! Consumer-group membership for the distributed processor: which votes partitions this process owns.
//!
//! [`GroupMember`] joins a Kafka consumer group on the votes topic (cooperative-sticky assignment by
//! default; static membership when `group.instance.id` is given) and turns the group's rebalances into
//! [`GroupEvent`]s. It does not consume through the group: assigned partitions are paused at once, and
//! the processor reads each owned partition with [`crate::KafkaLog`]'s own readers from the position
//! its state was restored at. The group only decides ownership.
//!
//! - **Revocation** blocks the rebalance (on the group's own thread) until the processor has flushed
//!   what it owns and acknowledged, or until `revoke_timeout` passes; the next owner then resumes from
//!   the flushed partials. A stale owner that missed the revocation cannot overwrite newer partials:
//!   every store compares offsets on write.
//! - **Committed offsets** are only for lag tools (the partition tasks' positions, passed to
//!   [`GroupMember::join`]): they are committed every few seconds and never read back by
//!   CrowdTick ([`committed_offsets`] reads them as a lag tool would).

use super::settings::{client_config, consumer_settings, KafkaConfig};
use crate::LogError;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::{Offset as LogOffset, Partition};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A change of ownership.
#[derive(Debug)]
pub enum GroupEvent {
    /// These votes partitions are now this member's.
    Assigned(Vec<Partition>),
    /// These are being taken away: flush them, stop reading them, then send on the acknowledgement.
    Revoked(Vec<Partition>, std::sync::mpsc::SyncSender<()>),
}

/// How a processor takes part in the group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group_id: String,
    /// `group.instance.id` for static membership (a restarted member gets its partitions back
    /// without a rebalance, within `session.timeout.ms`); empty for dynamic membership.
    pub instance_id: String,
    /// `partition.assignment.strategy`.
    pub assignment_strategy: String,
    pub session_timeout: Duration,
    /// The longest a revocation waits for the processor's flush.
    pub revoke_timeout: Duration,
    /// How often positions are committed (for lag tools only).
    pub commit_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            group_id: "crowdtick-processors".into(),
            instance_id: String::new(),
            assignment_strategy: "cooperative-sticky".into(),
            session_timeout: Duration::from_secs(10),
            revoke_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(5),
        }
    }
}

/// The group member's librdkafka settings: the readers' (never auto-commit), then the group's.
pub fn group_settings(kafka: &KafkaConfig, group: &GroupConfig) -> BTreeMap<String, String> {
    let mut s = consumer_settings(kafka);
    s.insert("client.id".into(), "crowdtick-processor".into());
    s.insert("group.id".into(), group.group_id.clone());
    s.insert(
        "partition.assignment.strategy".into(),
        group.assignment_strategy.clone(),
    );
    s.insert(
        "session.timeout.ms".into(),
        group.session_timeout.as_millis().to_string(),
    );
    s.insert(
        "heartbeat.interval.ms".into(),
        (group.session_timeout.as_millis() / 5).max(100).to_string(),
    );
    if !group.instance_id.is_empty() {
        s.insert("group.instance.id".into(), group.instance_id.clone());
    }
    // Our own settings win over `extra` here: ownership must follow the group, and nothing is
    // consumed through it, so these are not tunables.
    s.insert("enable.auto.commit".into(), "false".into());
    s.insert("enable.auto.offset.store".into(), "false".into());
    s
}

struct Context {
    topic: String,
    events: mpsc::UnboundedSender<GroupEvent>,
    revoke_timeout: Duration,
    owned: Arc<Mutex<Vec<Partition>>>,
}

impl ClientContext for Context {}

impl Context {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<Partition> {
        let mut v: Vec<Partition> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| Partition(e.partition()))
            .collect();
        v.sort_unstable();
        v
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions(tpl);
            if parts.is_empty() {
                return;
            }
            tracing::info!(partitions = ?parts, "group revokes partitions; flushing them");
            let (ack, done) = std::sync::mpsc::sync_channel(1);
            if self
                .events
                .send(GroupEvent::Revoked(parts.clone(), ack))
                .is_ok()
                && done.recv_timeout(self.revoke_timeout).is_err()
            {
                tracing::warn!(partitions = ?parts, timeout = ?self.revoke_timeout,
                    "the processor did not finish flushing revoked partitions in time; the next owner resumes from what was flushed");
            }
            self.owned.lock().retain(|p| !parts.contains(p));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.partitions(tpl);
                // Nothing is read through the group: the processor reads with its own readers.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "pausing the group's assigned partitions failed");
                }
                // An empty assignment is news too: the member has joined (readiness).
                if !parts.is_empty() {
                    tracing::info!(partitions = ?parts, "group assigns partitions");
                    let mut owned = self.owned.lock();
                    owned.extend(&parts);
                    owned.sort_unstable();
                    owned.dedup();
                }
                let _ = self.events.send(GroupEvent::Assigned(parts));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance error"),
        }
    }
}

/// A member of the processors' consumer group; leaves the group when dropped.
pub struct GroupMember {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupMember {
    /// Joins the group; ownership changes arrive on the returned channel. `positions` (next offset
    /// to read per partition, kept by the partition tasks) is committed every
    /// [`GroupConfig::commit_interval`] for the owned partitions, for lag tools only.
    pub fn join(
        kafka: &KafkaConfig,
        group: &GroupConfig,
        positions: Arc<Mutex<BTreeMap<Partition, LogOffset>>>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<GroupEvent>), LogError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = Arc::new(Mutex::new(Vec::new()));
        let context = Context {
            topic: kafka.votes_topic.clone(),
            events: tx,
            revoke_timeout: group.revoke_timeout,
            owned: owned.clone(),
        };
        let consumer: BaseConsumer<Context> = client_config(&group_settings(kafka, group))
            .create_with_context(context)
            .map_err(|e| LogError::Config(format!("Kafka consumer group settings: {e}")))?;
        consumer
            .subscribe(&[&kafka.votes_topic])
            .map_err(|e| LogError::io(format!("joining group {}", group.group_id), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, positions, owned) = (stop.clone(), positions.clone(), owned.clone());
            let (topic, interval) = (kafka.votes_topic.clone(), group.commit_interval);
            std::thread::Builder::new()
                .name("crowdtick-group".into())
                .spawn(move || {
                    let mut last_commit = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        // Serves rebalances and heartbeats; partitions are paused, so no records.
                        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                            tracing::debug!(error = %e, "consumer group poll");
                        }
                        if last_commit.elapsed() >= interval {
                            last_commit = Instant::now();
                            commit_positions(&consumer, &topic, &positions, &owned);
                        }
                    }
                    commit_positions(&consumer, &topic, &positions, &owned);
                    consumer.unsubscribe();
                    // Serve the revocation that leaving causes (nobody waits for its acknowledgement).
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < deadline && !owned.lock().is_empty() {
                        let _ = consumer.poll(Duration::from_millis(50));
                    }
                })
                .map_err(|e| LogError::io("starting the group thread", e))?
        };
        Ok((
            Self {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Leaves the group (after the caller has flushed what it owns).
    pub fn leave(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The group's committed offset per votes partition (partitions with none are left out), as a lag
/// tool such as `kafka-consumer-groups --describe` reads them.
pub fn committed_offsets(
    kafka: &KafkaConfig,
    group: &GroupConfig,
) -> Result<BTreeMap<Partition, LogOffset>, LogError> {
    let consumer: BaseConsumer = client_config(&group_settings(kafka, group))
        .create()
        .map_err(|e| LogError::Config(format!("Kafka consumer settings: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for p in Partition::all(kafka.votes_partitions) {
        tpl.add_partition(&kafka.votes_topic, p.0);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| {
            LogError::io(
                format!("reading the committed offsets of {}", group.group_id),
                e,
            )
        })?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((Partition(e.partition()), LogOffset(o))),
            _ => None,
        })
        .collect())
}

fn commit_positions(
    consumer: &BaseConsumer<Context>,
    topic: &str,
    positions: &Mutex<BTreeMap<Partition, LogOffset>>,
    owned: &Mutex<Vec<Partition>>,
) {
    let owned = owned.lock().clone();
    let mut tpl = TopicPartitionList::new();
    for (&p, &offset) in positions.lock().iter() {
        if owned.contains(&p) {
            let _ = tpl.add_partition_offset(topic, p.0, Offset::Offset(offset.0));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing positions for lag metrics failed");
        }
    }
}
