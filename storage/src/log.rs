//! The log abstraction: Kafka's model (topics of partitions of offset-numbered records, positions
//! held by the consumer), small enough for an embedded file log and for Kafka to implement.

use async_trait::async_trait;
use schemas::{Offset, Partition, Timestamp};
use std::time::{Duration, Instant};

/// The two topics of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Votes, keyed by (poll, voter).
    Votes,
    /// Absolute partial tallies, keyed by poll.
    Tallies,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Votes, Topic::Tallies];
    pub fn name(self) -> &'static str {
        match self {
            Topic::Votes => "votes",
            Topic::Tallies => "tallies",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: Partition,
    pub offset: Offset,
}

/// The cause a store's I/O error keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The cause a log's I/O error keeps (shared, so the error stays cheap to clone to the many
/// waiters of one group commit).
pub type ErrorSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The record could not be made durable before the caller's deadline; it was not written.
    #[error("the log could not persist the record before the deadline")]
    Timeout,
    /// The write queue is full; nothing was written.
    #[error("the log's write queue is full")]
    Overloaded,
    /// The log's storage failed: what was being done, and the error that stopped it.
    #[error("log I/O: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: ErrorSource,
    },
    #[error("partition {0} does not exist")]
    NoSuchPartition(Partition),
    #[error("the log is shut down")]
    Closed,
    /// The records before `first` were deleted by retention: the embedded log's once every
    /// snapshot holds them, a Kafka topic's by its `retention.ms` or `retention.bytes` whether or
    /// not they were read.
    #[error(
        "offset {offset} of {topic} partition {partition} was retired: the log starts at {first} \
         there (log.retire_after_snapshot in the embedded mode deletes what every snapshot holds; \
         on Kafka the topic's retention.ms or retention.bytes deleted it)"
    )]
    Retired {
        topic: &'static str,
        partition: Partition,
        offset: Offset,
        first: Offset,
    },
    #[error("log configuration: {0}")]
    Config(String),
}

impl LogError {
    /// An I/O failure: what was being done, and the error (or the reason, as text) that stopped it.
    pub fn io(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        LogError::Io {
            context: context.into(),
            source: source.into().into(),
        }
    }
}

/// Equal when of the same kind with the same text (a source compares by its message).
impl PartialEq for LogError {
    fn eq(&self, other: &Self) -> bool {
        use LogError::*;
        match (self, other) {
            (Timeout, Timeout) | (Overloaded, Overloaded) | (Closed, Closed) => true,
            (NoSuchPartition(a), NoSuchPartition(b)) => a == b,
            (Config(a), Config(b)) => a == b,
            (Retired { .. }, Retired { .. }) => self.to_string() == other.to_string(),
            (Io { .. }, Io { .. }) => self.to_string() == other.to_string(),
            _ => false,
        }
    }
}

impl Eq for LogError {}

/// Records to append in one call: one buffer, one reply, however many records.
#[derive(Debug, Default, Clone)]
pub struct AppendBatch {
    pub(crate) data: Vec<u8>,
    pub(crate) entries: Vec<BatchEntry>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchEntry {
    pub partition: Partition,
    pub timestamp: Timestamp,
    pub key_start: u32,
    pub value_start: u32,
    pub end: u32,
}

impl AppendBatch {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(records),
        }
    }

    /// Adds a record whose key and value are written straight into the batch buffer.
    pub fn push_with(
        &mut self,
        partition: Partition,
        timestamp: Timestamp,
        write_key: impl FnOnce(&mut Vec<u8>),
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let key_start = self.data.len() as u32;
        write_key(&mut self.data);
        let value_start = self.data.len() as u32;
        write_value(&mut self.data);
        self.entries.push(BatchEntry {
            partition,
            timestamp,
            key_start,
            value_start,
            end: self.data.len() as u32,
        });
    }

    pub fn push(&mut self, partition: Partition, timestamp: Timestamp, key: &[u8], value: &[u8]) {
        self.push_with(
            partition,
            timestamp,
            |b| b.extend_from_slice(key),
            |b| b.extend_from_slice(value),
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The same records with `prefix` before every value (one new buffer; the entries are reused).
    pub fn with_value_prefix(self, prefix: &[u8]) -> AppendBatch {
        let AppendBatch { data, mut entries } = self;
        let mut framed = Vec::with_capacity(data.len() + prefix.len() * entries.len());
        for e in &mut entries {
            let key_start = framed.len() as u32;
            framed.extend_from_slice(&data[e.key_start as usize..e.value_start as usize]);
            let value_start = framed.len() as u32;
            framed.extend_from_slice(prefix);
            framed.extend_from_slice(&data[e.value_start as usize..e.end as usize]);
            (e.key_start, e.value_start, e.end) = (key_start, value_start, framed.len() as u32);
        }
        AppendBatch {
            data: framed,
            entries,
        }
    }

    /// The records in order: (partition, timestamp, key, value).
    pub fn iter(&self) -> impl Iterator<Item = (Partition, Timestamp, &[u8], &[u8])> {
        self.entries.iter().map(|e| {
            (
                e.partition,
                e.timestamp,
                &self.data[e.key_start as usize..e.value_start as usize],
                &self.data[e.value_start as usize..e.end as usize],
            )
        })
    }
}

/// Records read from one partition: one buffer, parsed views into it.
#[derive(Debug, Default)]
pub struct Fetched {
    pub partition: Partition,
    /// Offset of the first record.
    pub first_offset: Offset,
    /// The partition's end (next offset to be written) when the fetch was served.
    pub high_watermark: Offset,
    pub(crate) data: Vec<u8>,
    /// (timestamp, key range, value range) per record.
    pub(crate) records: Vec<(Timestamp, u32, u32, u32)>,
}

impl Fetched {
    pub fn from_records(
        partition: Partition,
        first_offset: Offset,
        high_watermark: Offset,
        recs: &[(Timestamp, &[u8], &[u8])],
    ) -> Self {
        let mut f = Fetched {
            partition,
            first_offset,
            high_watermark,
            ..Default::default()
        };
        for (ts, k, v) in recs {
            let ks = f.data.len() as u32;
            f.data.extend_from_slice(k);
            let vs = f.data.len() as u32;
            f.data.extend_from_slice(v);
            f.records.push((*ts, ks, vs, f.data.len() as u32));
        }
        f
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// This fetch, if its records start at `asked` (or there are none). Records that start
    /// later mean the ones in between are gone, deleted by retention before they were read: a
    /// consumer that went on would never count them, so that is [`LogError::Retired`].
    pub fn starting_at(self, topic: Topic, asked: Offset) -> Result<Self, LogError> {
        match self.retired_before(asked) {
            None => Ok(self),
            Some(first) => Err(LogError::Retired {
                topic: topic.name(),
                partition: self.partition,
                offset: asked,
                first,
            }),
        }
    }
    /// Where this fetch's records start, if that is past `asked`: the records in between were
    /// deleted before they were read.
    pub fn retired_before(&self, asked: Offset) -> Option<Offset> {
        (!self.is_empty() && self.first_offset > asked).then_some(self.first_offset)
    }
    /// The offset after the last record (where the next fetch starts).
    pub fn next_offset(&self) -> Offset {
        self.first_offset.plus(self.records.len() as u64)
    }
    /// (offset, timestamp, key, value) per record.
    pub fn iter(&self) -> impl Iterator<Item = (Offset, Timestamp, &[u8], &[u8])> {
        self.records
            .iter()
            .enumerate()
            .map(move |(i, &(ts, ks, vs, end))| {
                (
                    self.first_offset.plus(i as u64),
                    ts,
                    &self.data[ks as usize..vs as usize],
                    &self.data[vs as usize..end as usize],
                )
            })
    }
}

/// A partitioned, offset-addressed, durable log.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    fn partitions(&self, topic: Topic) -> u32;

    /// Appends the batch and resolves once every record is durable, with each record's position in
    /// batch order. If that cannot happen before `deadline`, nothing is written and the answer is
    /// [`LogError::Timeout`] (so a caller that answered 503 never sees its vote counted).
    async fn append(
        &self,
        topic: Topic,
        batch: AppendBatch,
        deadline: Instant,
    ) -> Result<Vec<Position>, LogError>;

    /// Reads records from `offset` on, at most about `max_bytes` (at least one record if any),
    /// waiting up to `max_wait` for the first one.
    async fn fetch(
        &self,
        topic: Topic,
        partition: Partition,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError>;

    /// The next offset to be written in a partition.
    async fn high_watermark(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError>;

    /// The offset of the first record a partition still holds (above 0 once retention deleted
    /// some: a replay from the start is then impossible).
    async fn log_start(&self, _topic: Topic, _partition: Partition) -> Result<Offset, LogError> {
        Ok(Offset::ZERO)
    }

    /// Tells the log that the consumer of a partition needs no record before `below` any more
    /// (its state up to there is in a snapshot); a consumer that starts over says so by releasing
    /// its start again (the latest call counts, not the highest). A log with retention may delete
    /// what every partition released (the embedded log with `retire_released`); Kafka keeps its
    /// own retention, and the default does nothing.
    async fn release(
        &self,
        _topic: Topic,
        _partition: Partition,
        _below: Offset,
    ) -> Result<(), LogError> {
        Ok(())
    }

    /// Whether the log answers at all, as cheaply as it can tell (readiness). The embedded log
    /// is in this process: always.
    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }
}

/// Readiness of a log: `Err` says why it does not answer (within `timeout`).
pub async fn readiness(log: &dyn Log, timeout: std::time::Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, log.ping()).await {
        Ok(Ok(_)) => Ok("the votes log answers".into()),
        Ok(Err(e)) => Err(format!("the votes log does not answer: {e}")),
        Err(_) => Err(format!(
            "the votes log did not answer within {} s (is the Kafka broker reachable?)",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_what_failed_and_keeps_its_cause() {
        let disk = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e = LogError::io("appending to votes/3", disk);
        assert_eq!(
            e.to_string(),
            "log I/O: appending to votes/3: no space left"
        );
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(cause.to_string(), "no space left");
        // Clones (one per waiter of a group commit) share the cause and compare equal.
        assert_eq!(e.clone(), e);
        assert_ne!(e, LogError::io("appending to votes/3", "another cause"));
    }

    #[test]
    fn a_fetch_that_starts_later_than_asked_is_a_gap_retention_made() {
        let rec: &[(Timestamp, &[u8], &[u8])] = &[(Timestamp(1), b"k", b"v")];
        let fetched = |first| Fetched::from_records(Partition(2), Offset(first), Offset(9), rec);
        for asked in [5, 6] {
            let f = fetched(5).starting_at(Topic::Votes, Offset(asked)).unwrap();
            assert_eq!(f.first_offset, Offset(5));
        }
        let empty = Fetched::from_records(Partition(2), Offset(8), Offset(9), &[]);
        assert!(empty.starting_at(Topic::Votes, Offset(3)).is_ok());
        let gap = fetched(5).starting_at(Topic::Votes, Offset(3)).unwrap_err();
        assert_eq!(
            gap,
            LogError::Retired {
                topic: "votes",
                partition: Partition(2),
                offset: Offset(3),
                first: Offset(5),
            }
        );
        assert!(gap.to_string().contains("retention.ms"), "{gap}");
    }
}
