//! The embedded log: one append-only stream per topic holding every partition's records
//! interleaved, in segment files of `segment_bytes` (`<dir>/<topic>.log`, then
//! `<dir>/<topic>.<start>.log`: `embedded_log/segments.rs`), with an in-memory index per partition
//! (offset → position in the stream, 8 bytes a record: a frame's length is read from its header).
//!
//! Frame: `[u32 body length][u32 CRC-32 of body][body: u32 partition, i64 timestamp µs,
//! u32 key length, key, value]` (little endian). One writer thread ([`crate::group_commit`])
//! takes every append request waiting in its queue, drops those whose deadline has passed (so a caller that gave up never has
//! its record written), writes the group with one `pwrite` per topic and makes it durable with one
//! `fdatasync` per topic, and only then makes the records visible to readers and answers the
//! callers: group commit, many records per fsync however many partitions they touch. (One file per
//! partition was measured at 3.5× fewer votes/s on this machine: one fsync per partition per group.)
//! Between groups the writer keeps about a mebibyte of zeros written past each topic's end, so a
//! group's fsync flushes data, not the file's size too (`Segments::zero_ahead`).
//! On open, the segments are scanned and the last one cut at its first torn or corrupt frame (a
//! crash mid-write; damage in an earlier segment is refused, since votes follow it), unless all
//! that follows is zeros: `embedded_log/topic_file.rs`, with the frame format and each
//! partition's index.
//!
//! Retention (`retire_released`): once the consumer of every partition has released the records
//! before an offset ([`Log::release`]: its state up to there is in a snapshot), the segments wholly
//! before all of them are deleted, off the writer's thread.

use crate::group_commit::{self, Commit};
use crate::log::{AppendBatch, Fetched, Log, LogError, Position, Topic};
use async_trait::async_trait;
use schemas::{Offset, Partition, Timestamp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use topic_file::{frame_len, open_topic, PartitionIndex, TopicFile, BODY_FIXED, HEADER};

mod segments;
mod topic_file;

#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    pub dir: PathBuf,
    pub votes_partitions: u32,
    pub tallies_partitions: u32,
    /// `fdatasync` before acknowledging (on by default; off only for throwaway benchmarks).
    pub fsync: bool,
    /// Append requests that may wait for the writer; past that, appends fail fast with `Overloaded`.
    pub queue_capacity: usize,
    /// Bytes the writer takes into one group commit at most.
    pub max_group_bytes: usize,
    /// Group commits begin at most this often (an fsync each): under load, appends that come
    /// sooner wait out the rest of it and share the next one.
    pub commit_interval: Duration,
    /// A topic's segment files hold about this many bytes each (a group commit is never split).
    pub segment_bytes: u64,
    /// Delete the segments whose every record its partition's consumer released (kept in its
    /// snapshot). Off: the log keeps every record (and `recount` can replay it all).
    pub retire_released: bool,
    /// Bytes of zeros the writer keeps written past a topic's last record, so a group's fsync
    /// flushes data only (`embedded_log/segments.rs`, `zero_ahead`); 0 for none. Only with `fsync`.
    pub zero_ahead_bytes: u64,
}

impl EmbeddedLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            votes_partitions: 8,
            tallies_partitions: 1,
            fsync: true,
            queue_capacity: 65_536,
            max_group_bytes: 8 << 20,
            commit_interval: Duration::ZERO,
            segment_bytes: 256 << 20,
            retire_released: false,
            zero_ahead_bytes: 1 << 20,
        }
    }
}

/// Queued appends of this many bytes (about 35 single votes) are a group worth committing
/// without waiting out the rest of `commit_interval`.
const COMMIT_AT_ONCE_BYTES: usize = 4 << 10;

/// What a fetch reads past its last frame's header in the same read (a single vote's frame is
/// about 120 bytes): most fetches of a partition that keeps up with its votes hold one or two
/// frames, and a second read for the last one's rest was half of the log's reads a vote.
const LAST_FRAME_GUESS: usize = 512;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LogMetrics {
    pub records_appended: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub group_commits: AtomicU64,
    pub fsyncs: AtomicU64,
    pub appends_expired: AtomicU64,
    pub appends_rejected_full: AtomicU64,
    /// Segment files deleted by retention, and the bytes they held.
    pub segments_retired: AtomicU64,
    pub bytes_retired: AtomicU64,
}

type Reply = oneshot::Sender<Result<Vec<Position>, LogError>>;

struct AppendRequest {
    topic: Topic,
    batch: AppendBatch,
    deadline: Instant,
    reply: Reply,
}

pub struct EmbeddedLog {
    topics: Arc<Vec<TopicFile>>,
    queue: Option<(mpsc::Sender<AppendRequest>, Arc<group_commit::Backlog>)>,
    pub metrics: Arc<LogMetrics>,
    retire_released: bool,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Meta {
    votes_partitions: u32,
    tallies_partitions: u32,
}

impl EmbeddedLog {
    /// Opens (or creates) the log for reading and writing; starts the writer thread.
    pub fn open(config: EmbeddedLogConfig) -> Result<Self, LogError> {
        let meta = Self::check_meta(&config)?;
        let topics = Arc::new(Self::open_topics(&config.dir, &meta, true)?);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let metrics = Arc::new(LogMetrics::default());
        let writer = Writer {
            pending: topics
                .iter()
                .map(|t| Pending {
                    new: vec![Vec::new(); t.partitions.len()],
                    base: vec![0; t.partitions.len()],
                    ..Default::default()
                })
                .collect(),
            topics: topics.clone(),
            fsync: config.fsync,
            segment_bytes: config.segment_bytes,
            zero_ahead_bytes: if config.fsync {
                config.zero_ahead_bytes
            } else {
                0
            },
            metrics: metrics.clone(),
        };
        let backlog = group_commit::Backlog::new(COMMIT_AT_ONCE_BYTES);
        let grouping = group_commit::Grouping {
            max_bytes: config.max_group_bytes,
            min_interval: config.commit_interval,
            backlog: Some(backlog.clone()),
        };
        group_commit::spawn("log-writer", writer, rx, grouping)
            .map_err(|e| LogError::io("starting the log writer thread", e))?;
        Ok(Self {
            topics,
            queue: Some((tx, backlog)),
            metrics,
            retire_released: config.retire_released,
        })
    }

    /// Opens an existing log for reading only, without cutting anything (for `recount` beside a
    /// running server). Records written after opening are not seen.
    pub fn open_read_only(dir: &Path) -> Result<Self, LogError> {
        let meta: Meta = read_meta(dir)?.ok_or_else(|| {
            LogError::Config(format!(
                "no log in {} (meta.json missing): is this the server's data directory?",
                dir.display()
            ))
        })?;
        // A retirement beside us may delete a file between listing and opening: look again.
        let mut tries = 0;
        let topics = loop {
            match Self::open_topics(dir, &meta, false) {
                Err(_) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => break Arc::new(result?),
            }
        };
        Ok(Self {
            topics,
            queue: None,
            metrics: Default::default(),
            retire_released: false,
        })
    }

    fn check_meta(config: &EmbeddedLogConfig) -> Result<Meta, LogError> {
        let want = Meta {
            votes_partitions: config.votes_partitions,
            tallies_partitions: config.tallies_partitions,
        };
        if want.votes_partitions == 0 || want.tallies_partitions == 0 {
            return Err(LogError::Config(
                "partition counts must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        match read_meta(&config.dir)? {
            Some(have) if have != want => Err(LogError::Config(format!(
                "the log in {} has {} votes and {} tallies partitions but the configuration asks for {} and {}; \
                 partition counts cannot change once votes are written (votes are placed by hash(poll, voter) mod partitions)",
                config.dir.display(), have.votes_partitions, have.tallies_partitions, want.votes_partitions, want.tallies_partitions
            ))),
            Some(have) => Ok(have),
            None => {
                let tmp = config.dir.join("meta.json.tmp");
                std::fs::write(&tmp, serde_json::to_vec_pretty(&want).unwrap()).map_err(io)?;
                std::fs::rename(&tmp, config.dir.join("meta.json")).map_err(io)?;
                Ok(want)
            }
        }
    }

    fn open_topics(dir: &Path, meta: &Meta, writable: bool) -> Result<Vec<TopicFile>, LogError> {
        Topic::ALL
            .iter()
            .map(|&topic| {
                let n = match topic {
                    Topic::Votes => meta.votes_partitions,
                    Topic::Tallies => meta.tallies_partitions,
                };
                open_topic(dir, topic.name(), n, writable)
            })
            .collect()
    }

    fn partition(
        &self,
        topic: Topic,
        partition: Partition,
    ) -> Result<(&TopicFile, &PartitionIndex), LogError> {
        let t = &self.topics[topic.index()];
        let p = t
            .partitions
            .get(partition.index())
            .ok_or(LogError::NoSuchPartition(partition))?;
        Ok((t, p))
    }
}

fn read_meta(dir: &Path) -> Result<Option<Meta>, LogError> {
    match std::fs::read(dir.join("meta.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LogError::Config(format!("meta.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Retires `topic`'s released segments, again as long as releases came meanwhile (so none waits
/// for the next release: a quiet topic's last release is acted on too). The caller set
/// `retiring`; it is cleared however this ends (a panic too), so retention never stops for good.
fn retire_until_settled(
    file: &TopicFile,
    topic: Topic,
    metrics: &LogMetrics,
) -> Result<(), LogError> {
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    for _ in 0..MAX_RETIRE_ROUNDS {
        let done = Done(&file.retiring);
        // A swap, not a store: reading a release's `true` makes its `released` visible here.
        file.retire_again.swap(false, Ordering::SeqCst);
        retire(file, topic, metrics)?;
        drop(done);
        // A release after `retire_again` was cleared either sees `retiring` cleared and starts
        // its own retirement, or set it again before this looks: then this one goes on.
        if !file.retire_again.load(Ordering::SeqCst) || file.retiring.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
    }
    // Releases kept coming: the caller has waited long enough, and the next release goes on.
    file.retiring.store(false, Ordering::SeqCst);
    Ok(())
}

/// How many retirements of one topic a release's caller waits for at most.
const MAX_RETIRE_ROUNDS: usize = 4;

/// Deletes the segments of `topic` wholly before what every partition's consumer released.
fn retire(file: &TopicFile, topic: Topic, metrics: &LogMetrics) -> Result<(), LogError> {
    // `end` first: every record before it is indexed, every later one lies after it.
    let end = file.end.load(Ordering::Acquire);
    let floor = file
        .partitions
        .iter()
        .map(|part| {
            let released = part.released.load(Ordering::Relaxed);
            let records = part.records.read();
            let i = released.saturating_sub(records.first) as usize;
            records.positions.get(i).copied().unwrap_or(end).min(end)
        })
        .min()
        .unwrap_or(end);
    let Some(start) = file.segments.retirable(floor) else {
        return Ok(());
    };
    let first_offsets = file
        .partitions
        .iter()
        .map(|part| {
            let records = part.records.read();
            records.first + records.positions.partition_point(|&pos| pos < start) as u64
        })
        .collect();
    let before = file.segments.start();
    let retired = segments::Retired {
        start,
        first_offsets,
    };
    // The marker first (durable), then the index (a fetch below is refused), then the files.
    file.segments.write_retired(&retired)?;
    for (part, &first) in file.partitions.iter().zip(&retired.first_offsets) {
        let mut records = part.records.write();
        let n = (first - records.first) as usize;
        records.positions.drain(..n);
        records.positions.shrink_to_fit();
        records.first = first;
    }
    let deleted = file.segments.delete_before(start)?;
    metrics
        .segments_retired
        .fetch_add(deleted as u64, Ordering::Relaxed);
    metrics
        .bytes_retired
        .fetch_add(start - before, Ordering::Relaxed);
    tracing::info!(
        topic = topic.name(),
        segments = deleted,
        bytes = start - before,
        start,
        "retired log segments every consumer released"
    );
    Ok(())
}

fn io(e: std::io::Error) -> LogError {
    LogError::io("the log's files", e)
}

struct Writer {
    topics: Arc<Vec<TopicFile>>,
    fsync: bool,
    segment_bytes: u64,
    zero_ahead_bytes: u64,
    metrics: Arc<LogMetrics>,
    /// Per topic, the group being written (kept between groups to reuse the buffers).
    pending: Vec<Pending>,
}

/// One topic's share of a group commit.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Per partition: the position of each new record, in order.
    new: Vec<Vec<u64>>,
    /// Per partition: records already durable when the group began (the first new offset).
    base: Vec<u64>,
}

impl Commit for Writer {
    type Request = AppendRequest;

    fn size(request: &AppendRequest) -> usize {
        request.batch.bytes()
    }

    fn commit(&mut self, group: &mut Vec<AppendRequest>) {
        // Taken out for the group so `write_group` can borrow the rest of the writer (no copy).
        let mut pending = std::mem::take(&mut self.pending);
        self.write_group(group, &mut pending);
        self.pending = pending;
    }
}

impl Writer {
    fn write_group(&self, group: &mut Vec<AppendRequest>, pending: &mut [Pending]) {
        let now = Instant::now();
        // One index lock per partition per group, not per record.
        for (topic, pend) in self.topics.iter().zip(pending.iter_mut()) {
            for (base, part) in pend.base.iter_mut().zip(&topic.partitions) {
                *base = part.records.read().end();
            }
        }
        let mut answered: Vec<(Reply, Result<Vec<Position>, LogError>)> =
            Vec::with_capacity(group.len());
        for req in group.drain(..) {
            let t = req.topic.index();
            let topic = &self.topics[t];
            if req.deadline <= now {
                self.metrics.appends_expired.fetch_add(1, Ordering::Relaxed);
                answered.push((req.reply, Err(LogError::Timeout)));
                continue;
            }
            if let Some((p, ..)) = req
                .batch
                .iter()
                .find(|(p, ..)| p.index() >= topic.partitions.len())
            {
                answered.push((req.reply, Err(LogError::NoSuchPartition(p))));
                continue;
            }
            let pend = &mut pending[t];
            let end = topic.end.load(Ordering::Relaxed);
            let mut positions = Vec::with_capacity(req.batch.len());
            for (p, ts, key, value) in req.batch.iter() {
                let offset =
                    Offset::from_count(pend.base[p.index()] + pend.new[p.index()].len() as u64);
                let at = pend.buf.len();
                let body_len = BODY_FIXED + key.len() + value.len();
                pend.buf.extend_from_slice(&(body_len as u32).to_le_bytes());
                pend.buf.extend_from_slice(&[0; 4]);
                pend.buf.extend_from_slice(&(p.0 as u32).to_le_bytes());
                pend.buf.extend_from_slice(&ts.micros().to_le_bytes());
                pend.buf
                    .extend_from_slice(&(key.len() as u32).to_le_bytes());
                pend.buf.extend_from_slice(key);
                pend.buf.extend_from_slice(value);
                let crc = crc32fast::hash(&pend.buf[at + HEADER..]);
                pend.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                pend.new[p.index()].push(end + at as u64);
                positions.push(Position {
                    partition: p,
                    offset,
                });
            }
            answered.push((req.reply, Ok(positions)));
        }

        let written = self.write_and_sync(pending);
        let (mut records, mut bytes) = (0u64, 0u64);
        // The topics this group wrote to, by index (there are two).
        let mut touched = 0u32;
        for (t, (topic, pend)) in self.topics.iter().zip(pending.iter_mut()).enumerate() {
            if pend.buf.is_empty() {
                continue;
            }
            touched |= 1 << t;
            if written.is_ok() {
                bytes += pend.buf.len() as u64;
                // One index lock per touched partition, then wake its readers.
                for (part, new) in topic.partitions.iter().zip(pend.new.iter_mut()) {
                    if new.is_empty() {
                        continue;
                    }
                    records += new.len() as u64;
                    let hw = {
                        let mut idx = part.records.write();
                        idx.positions.extend_from_slice(new);
                        idx.end()
                    };
                    part.high_watermark.send_replace(hw);
                    new.clear();
                }
                // After the index: every record before a loaded `end` is indexed (retention).
                topic
                    .end
                    .fetch_add(pend.buf.len() as u64, Ordering::Release);
            } else {
                // Undo a partial write so the file ends at the last acknowledged record.
                let _ = topic.segments.truncate(topic.end.load(Ordering::Relaxed));
                pend.new.iter_mut().for_each(Vec::clear);
            }
            pend.buf.clear();
        }
        self.metrics
            .records_appended
            .fetch_add(records, Ordering::Relaxed);
        self.metrics
            .bytes_appended
            .fetch_add(bytes, Ordering::Relaxed);
        self.metrics.group_commits.fetch_add(1, Ordering::Relaxed);
        for (reply, result) in answered {
            let result = match (&written, result) {
                (Err(e), Ok(_)) => Err(e.clone()),
                (_, r) => r,
            };
            let _ = reply.send(result);
        }
        // Between groups, the callers answered: zeros ahead of the next groups.
        if written.is_ok() {
            for (t, topic) in self.topics.iter().enumerate() {
                if touched & (1 << t) == 0 {
                    continue;
                }
                let end = topic.end.load(Ordering::Relaxed);
                let zeroed =
                    (topic.segments).zero_ahead(end, self.zero_ahead_bytes, self.segment_bytes);
                if let Ok(true) = zeroed {
                    self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = zeroed {
                    tracing::warn!(topic = Topic::ALL[t].name(), error = %e, "could not write zeros ahead of the log's end; appends go on, each fsync flushing the file's size too");
                }
            }
        }
    }

    fn write_and_sync(&self, pending: &[Pending]) -> Result<(), LogError> {
        for (topic, pend) in self.topics.iter().zip(pending) {
            if pend.buf.is_empty() {
                continue;
            }
            let end = topic.end.load(Ordering::Relaxed);
            (topic.segments)
                .append(&pend.buf, end, self.segment_bytes, self.fsync)
                .map_err(io)?;
            if self.fsync {
                self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    fn partitions(&self, topic: Topic) -> u32 {
        self.topics[topic.index()].partitions.len() as u32
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
        let (queue, backlog) = self.queue.as_ref().ok_or(LogError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let bytes = batch.bytes();
        queue
            .try_send(AppendRequest {
                topic,
                batch,
                deadline,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics
                        .appends_rejected_full
                        .fetch_add(1, Ordering::Relaxed);
                    LogError::Overloaded
                }
                mpsc::error::TrySendError::Closed(_) => LogError::Closed,
            })?;
        backlog.add(bytes);
        // The writer answers every request it takes, expired ones with Timeout, so waiting for the
        // answer (rather than for the deadline) is what keeps "503 means not written" true.
        answer.await.map_err(|_| LogError::Closed)?
    }

    async fn fetch(
        &self,
        topic: Topic,
        partition: Partition,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        let (file, part) = self.partition(topic, partition)?;
        let offset_count = offset.count();
        let mut hw_rx = part.high_watermark.subscribe();
        let give_up = tokio::time::Instant::now() + max_wait;
        let hw = loop {
            let hw = *hw_rx.borrow_and_update();
            if offset_count < hw {
                break hw;
            }
            match tokio::time::timeout_at(give_up, hw_rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_) => {
                    return Ok(Fetched {
                        partition,
                        first_offset: Offset::from_count(offset_count),
                        high_watermark: Offset::from_count(hw),
                        ..Default::default()
                    })
                }
            }
        };
        // The records of one partition are interleaved with the others': read the span from the
        // first wanted record to the end of the last one that keeps it under `max_bytes` (always
        // at least one). The index holds positions only, so the span is read up to the last
        // candidate's header, then to that frame's end; a frame past the limit is dropped again.
        let (frames, limit) = {
            let idx = part.records.read();
            if offset_count < idx.first {
                return Err(LogError::Retired {
                    topic: topic.name(),
                    partition,
                    offset,
                    first: Offset::from_count(idx.first),
                });
            }
            let wanted =
                &idx.positions[(offset_count - idx.first) as usize..(hw - idx.first) as usize];
            let limit = wanted[0] + max_bytes.max(1) as u64;
            let smallest = (HEADER + BODY_FIXED) as u64;
            let n = wanted
                .partition_point(|&pos| pos + smallest <= limit)
                .max(1);
            (wanted[..n].to_vec(), limit)
        };
        let mut frames = frames;
        let start = frames[0];
        let last = (frames[frames.len() - 1] - start) as usize;
        // Read with the span, in the same read, what the last frame is likely to take (a single
        // vote's frame fits): a second read for that frame's rest is only for a longer one.
        let through_last_header = last + HEADER;
        // Read into the buffer's spare room, never zeroed: not by a write (about 660 of a single
        // vote's 37,000 instructions; BENCHMARKS.md "2026-12-07 (fourth session)"), nor by
        // `vec![0; n]` (jemalloc zeroes a large `calloc` block by giving its pages back, and the
        // read then faults every page in again; "2026-12-06 (fourth session)").
        let mut data = Vec::new();
        let retired = |e: std::io::Error| match e.kind() {
            // Retired between the index read and this one.
            std::io::ErrorKind::NotFound => LogError::Retired {
                topic: topic.name(),
                partition,
                offset,
                first: Offset::from_count(part.records.read().first),
            },
            _ => io(e),
        };
        let read = (file.segments)
            .read_at_least(
                &mut data,
                through_last_header + LAST_FRAME_GUESS,
                start,
                through_last_header,
            )
            .map_err(retired)?;
        let last_end = last + frame_len(&data[last..]);
        if frames.len() > 1 && start + last_end as u64 > limit {
            // Only the last candidate can end past the limit (each earlier one ends before the
            // next begins): it is left for the next fetch.
            frames.pop();
            data.truncate(last);
        } else if last_end <= read {
            data.truncate(last_end);
        } else {
            (file.segments)
                .read_exact_at(&mut data, last_end - read, start + read as u64)
                .map_err(retired)?;
        }
        let mut records = Vec::with_capacity(frames.len());
        for &pos in &frames {
            let at = (pos - start) as usize;
            let frame_end = at + frame_len(&data[at..]);
            if !records.is_empty() && start + frame_end as u64 > limit {
                break;
            }
            let body = at + HEADER;
            let ts = Timestamp(i64::from_le_bytes(
                data[body + 4..body + 12].try_into().unwrap(),
            ));
            let key_len =
                u32::from_le_bytes(data[body + 12..body + 16].try_into().unwrap()) as usize;
            let key_start = body + BODY_FIXED;
            let value_start = key_start + key_len;
            records.push((ts, key_start as u32, value_start as u32, frame_end as u32));
        }
        let kept_end = records.last().map_or(0, |r| r.3 as usize);
        data.truncate(kept_end);
        Ok(Fetched {
            partition,
            first_offset: Offset::from_count(offset_count),
            high_watermark: Offset::from_count(hw),
            data,
            records,
        })
    }

    async fn high_watermark(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        let records = *self.partition(topic, partition)?.1.high_watermark.borrow();
        Ok(Offset::from_count(records))
    }

    async fn log_start(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        let first = self.partition(topic, partition)?.1.records.read().first;
        Ok(Offset::from_count(first))
    }

    async fn release(
        &self,
        topic: Topic,
        partition: Partition,
        below: Offset,
    ) -> Result<(), LogError> {
        let part = self.partition(topic, partition)?.1;
        // The consumer's latest word, not the highest: one that starts over releases its start.
        part.released.store(below.count(), Ordering::Relaxed);
        if !self.retire_released {
            return Ok(());
        }
        let file = &self.topics[topic.index()];
        file.retire_again.store(true, Ordering::SeqCst);
        if file.retiring.swap(true, Ordering::SeqCst) {
            return Ok(()); // the running retirement of this topic looks again when it is done
        }
        let (topics, metrics) = (self.topics.clone(), self.metrics.clone());
        let work = move || retire_until_settled(&topics[topic.index()], topic, &metrics);
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| LogError::io("retiring segments", e.to_string()))?
    }
}

#[cfg(test)]
mod tests;
