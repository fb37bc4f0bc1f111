//! One partition's consumer of the Kafka log, where it stands, and the broker workarounds.

use crate::log::{Fetched, LogError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use schemas::{Offset, Partition, Timestamp};
use std::ffi::CString;
use std::time::Duration;

/// How long one watermark query may take.
pub(super) const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch waits for records the broker says exist before it reports an error.
pub(super) const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How long a newly assigned reader waits for records the broker says exist before re-reading
/// from [`STEP_BACK`] records earlier.
pub(super) const PROBE: Duration = Duration::from_secs(1);
/// How far back a newly assigned reader re-reads when the asked offset yields nothing or a later
/// one: librdkafka's `batch.num.messages` default, so the record batch holding the asked offset
/// starts within reach.
pub(super) const STEP_BACK: i64 = 10_000;

/// One partition's consumer and where it stands.
pub(super) struct Reader {
    pub(super) consumer: StreamConsumer,
    /// The offset the consumer's stream continues from (`None` until first assigned, and while a
    /// fetch is under way).
    pub(super) at: Option<Offset>,
    /// A record taken from the consumer but not returned yet (over `max_bytes`, or after a gap).
    pub(super) held: Option<OwnedMessage>,
    /// The highest high watermark this reader has seen.
    pub(super) known_high_watermark: Offset,
    /// Set by `assign` until the first record comes from the new position.
    pub(super) fresh: bool,
    /// Whether this position was already re-read from further back.
    pub(super) stepped_back: bool,
}

impl Reader {
    pub(super) fn assign(
        &mut self,
        topic: &str,
        partition: Partition,
        offset: Offset,
    ) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        // (A negative offset would mean "end" or "beginning" to librdkafka: never ask for one.)
        tpl.add_partition_offset(topic, partition.0, KafkaOffset::Offset(offset.0.max(0)))
            .map_err(|e| LogError::io(format!("{topic}/{partition} at {offset}"), e))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| LogError::io(format!("assigning {topic}/{partition} at {offset}"), e))?;
        self.at = Some(offset);
        self.held = None;
        self.fresh = true;
        self.stepped_back = false;
        Ok(())
    }

    /// Whether a fresh position that yields nothing, or yields a later offset than asked, may be
    /// re-read from further back (see [`STEP_BACK`]).
    pub(super) fn may_step_back(&self, offset: Offset) -> bool {
        self.fresh && !self.stepped_back && offset > Offset::ZERO
    }

    /// Re-reads from [`STEP_BACK`] records before `offset`; the caller drops the records before it.
    pub(super) fn step_back(
        &mut self,
        topic: &str,
        partition: Partition,
        offset: Offset,
    ) -> Result<(), LogError> {
        tracing::debug!(
            topic,
            partition = partition.0,
            offset = offset.0,
            "no record at the asked offset yet; reading from further back"
        );
        let back = Offset(offset.0.saturating_sub(STEP_BACK).max(0));
        self.assign(topic, partition, back)?;
        self.stepped_back = true;
        Ok(())
    }

    /// Reads the record at `last` to get a fetch response's high watermark, then stands at `resume`
    /// (or nowhere known).
    pub(super) async fn probe(
        &mut self,
        topic: &str,
        partition: Partition,
        last: Offset,
        resume: Option<Offset>,
    ) -> Result<Offset, LogError> {
        self.assign(topic, partition, last)?;
        let give_up = tokio::time::Instant::now() + STALL_LIMIT;
        let read = loop {
            match tokio::time::timeout_at(give_up, self.consumer.recv()).await {
                Ok(Ok(m)) if m.offset() >= last.0 => break true,
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
            _ => Err(LogError::io(
                format!("{topic}/{partition}"),
                format!(
                    "could not read offset {last} within {STALL_LIMIT:?} to learn the high \
                     watermark"
                ),
            )),
        }
    }

    /// The high watermark of the latest fetch response librdkafka received for this partition.
    pub(super) fn fetched_high_watermark(
        &self,
        topic: &str,
        partition: Partition,
    ) -> Option<Offset> {
        let topic = CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the handle lives as long as `self.consumer`, `topic` is a NUL-terminated string
        // that outlives the call, and the out-pointers point at live locals. librdkafka only reads
        // its cached partition state under its own lock.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition.0,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(Offset(high))
    }
}

/// The records of one fetch, built straight into a [`Fetched`].
pub(super) struct Collect(pub(super) Fetched);

impl Collect {
    pub(super) fn new(partition: Partition, offset: Offset) -> Self {
        Self(Fetched {
            partition,
            first_offset: offset,
            ..Default::default()
        })
    }

    /// The offset the next record must have to follow on without a gap.
    pub(super) fn expected(&self) -> Offset {
        self.0.next_offset()
    }

    /// Whether `m` goes into this fetch: `Some(true)` yes, `Some(false)` keep it for the next one,
    /// `None` drop it (before the wanted offset).
    pub(super) fn takes(&self, m: &impl Message, max_bytes: usize) -> Option<bool> {
        let offset = Offset(m.offset().max(0));
        if offset < self.expected() {
            return None;
        }
        if self.0.is_empty() {
            return Some(true);
        }
        let size = m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
        Some(offset == self.expected() && self.0.data.len() + size <= max_bytes)
    }

    pub(super) fn push(&mut self, m: &impl Message) {
        let f = &mut self.0;
        if f.records.is_empty() {
            // Records before it are gone (retention): start where the log does.
            f.first_offset = Offset(m.offset().max(0));
        }
        let ts = Timestamp(m.timestamp().to_millis().unwrap_or(0).saturating_mul(1000));
        let ks = f.data.len() as u32;
        f.data.extend_from_slice(m.key().unwrap_or_default());
        let vs = f.data.len() as u32;
        f.data.extend_from_slice(m.payload().unwrap_or_default());
        f.records.push((ts, ks, vs, f.data.len() as u32));
    }
}
