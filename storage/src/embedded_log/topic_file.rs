//! One topic's frames: the frame format, the in-memory index of each partition (offset →
//! position, 8 bytes a record), and opening a topic (a scan of its segment files that rebuilds the
//! index and cuts a torn or corrupt tail, or keeps the writer's zeros ahead). Appending is the
//! writer's (`embedded_log.rs`), reading is `fetch`'s, the files are `segments.rs`'.

use super::io;
use super::segments::{Retired, Segment, Segments};
use crate::log::LogError;
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use tokio::sync::watch;

/// A frame's header: `[u32 body length][u32 CRC-32 of body]`.
pub(super) const HEADER: usize = 8;
/// A body's fixed part: `[u32 partition][i64 timestamp µs][u32 key length]`.
pub(super) const BODY_FIXED: usize = 16;

/// The records of one partition that the topic still holds.
pub(super) struct Records {
    /// The offset of `positions[0]` (records before it were retired).
    pub(super) first: u64,
    /// The topic position of every record held, by offset (its length is in its frame's header).
    pub(super) positions: Vec<u64>,
}

impl Records {
    /// The offset after the last record.
    pub(super) fn end(&self) -> u64 {
        self.first + self.positions.len() as u64
    }
}

/// Where each record of one partition sits in its topic.
pub(super) struct PartitionIndex {
    pub(super) records: RwLock<Records>,
    pub(super) high_watermark: watch::Sender<u64>,
    /// What the partition's consumer released: it needs no record before this offset.
    pub(super) released: AtomicU64,
}

pub(super) struct TopicFile {
    pub(super) segments: Segments,
    /// End of the last durable frame (the writer appends here). Stored after the new records are
    /// in the index, so every record before a loaded `end` is indexed.
    pub(super) end: AtomicU64,
    pub(super) partitions: Vec<PartitionIndex>,
    /// Set while a retirement of this topic runs (one at a time per topic).
    pub(super) retiring: AtomicBool,
    /// A release came since the running retirement read what was released: it looks again.
    pub(super) retire_again: AtomicBool,
}

/// The length of the frame whose header starts `frame` (written by us, or CRC-checked on open).
pub(super) fn frame_len(frame: &[u8]) -> usize {
    HEADER + u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize
}

/// Opens a topic's segments, building each partition's index and cutting a torn or corrupt tail
/// of the last one (a tail of zeros is kept: the writer's zeros ahead); damage in an earlier one is
/// refused (votes follow it). Segments a retirement left behind are deleted (when writable).
pub(super) fn open_topic(
    dir: &Path,
    topic: &'static str,
    partitions: u32,
    writable: bool,
) -> Result<TopicFile, LogError> {
    let retired = Segments::read_retired(dir, topic)?.unwrap_or_else(|| Retired {
        start: 0,
        first_offsets: vec![0; partitions as usize],
    });
    if retired.first_offsets.len() != partitions as usize {
        return Err(LogError::Config(format!(
            "{}: {} partitions, but the log has {partitions}",
            Segments::retired_path(dir, topic).display(),
            retired.first_offsets.len()
        )));
    }
    let mut files = Segments::list_files(dir, topic)?;
    // Check before deleting anything: the file the marker names must be there.
    let kept = files.iter().position(|(start, _)| *start >= retired.start);
    if kept.is_some_and(|i| files[i].0 != retired.start) {
        return Err(LogError::Config(format!(
            "the {topic} log starts at position {} ({}), but no segment file begins there",
            retired.start,
            Segments::retired_path(dir, topic).display()
        )));
    }
    // Left by a crash during a retirement (the marker was written, not every file deleted).
    for (_, path) in files.iter().filter(|(start, _)| *start < retired.start) {
        if writable {
            std::fs::remove_file(path).map_err(io)?;
        }
    }
    files.retain(|(start, _)| *start >= retired.start);
    let mut index: Vec<Vec<u64>> = vec![Vec::new(); partitions as usize];
    let mut list = Vec::with_capacity(files.len());
    let mut pos = retired.start;
    let mut zeroed_to = retired.start;
    let nexts: Vec<Option<u64>> = files
        .iter()
        .skip(1)
        .map(|f| Some(f.0))
        .chain([None])
        .collect();
    for ((start, path), next) in files.into_iter().zip(nexts) {
        let file = open_file(&path, writable)?;
        let len = file.metadata().map_err(io)?.len();
        // A segment's share of the stream ends where the next one starts (names are the truth).
        let share = next.map_or(len, |next| next - start);
        let valid = scan(&file, start, share.min(len), &mut index)?;
        if valid < share && next.is_some() {
            // Whole frames end short of the next segment: the damage is not a crash's torn tail
            // (the writer only starts a segment at a durable end), and votes follow it.
            return Err(LogError::Config(format!(
                "{} is damaged at byte {valid} of {share} (a record fails its check) and later \
                 segments follow it: cutting the log there would lose acknowledged votes. Restore \
                 the file from a backup, or move it and every later {topic} segment away to cut \
                 the log at that point",
                path.display()
            )));
        }
        // Only zeros past the records: the writer's zeros ahead (`segments.rs`), or a group none
        // of whose bytes reached the disk. (Read-only opens do not look.)
        let zeros = valid < len && writable && all_zeros(&file, valid, len)?;
        if zeros && next.is_none() {
            // Kept for the next appends.
            zeroed_to = start + len;
        } else if valid < len {
            // The torn tail of the last segment, bytes of a failed group past a segment's share,
            // or zeros past it (`log.segment_mb` made smaller between runs).
            cut(&path, &file, valid, len, writable, zeros)?;
        }
        pos = start + valid;
        list.push(Segment {
            start,
            file: file.into(),
        });
    }
    if list.is_empty() && writable {
        let path = Segments::path(dir, topic, retired.start);
        list.push(Segment {
            start: retired.start,
            file: open_file(&path, true)?.into(),
        });
    }
    let partitions = index
        .into_iter()
        .zip(&retired.first_offsets)
        .map(|(positions, &first)| {
            let records = Records { first, positions };
            PartitionIndex {
                high_watermark: watch::channel(records.end()).0,
                released: AtomicU64::new(first),
                records: RwLock::new(records),
            }
        })
        .collect();
    Ok(TopicFile {
        segments: Segments::new(dir, topic, list, zeroed_to.max(pos)),
        end: AtomicU64::new(pos),
        partitions,
        retiring: AtomicBool::new(false),
        retire_again: AtomicBool::new(false),
    })
}

fn open_file(path: &Path, writable: bool) -> Result<File, LogError> {
    if writable {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)
    } else {
        File::open(path).map_err(io)
    }
}

/// Scans one segment file from its start, adding each whole frame to its partition's index;
/// returns the length of the whole frames.
fn scan(file: &File, start: u64, len: u64, index: &mut [Vec<u64>]) -> Result<u64, LogError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut header = [0u8; HEADER];
    let mut body = Vec::new();
    loop {
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let body_len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        if body_len < BODY_FIXED || pos + (HEADER + body_len) as u64 > len {
            break;
        }
        body.resize(body_len, 0);
        if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        let partition = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
        if partition >= index.len() {
            break;
        }
        index[partition].push(start + pos);
        pos += (HEADER + body_len) as u64;
    }
    Ok(pos)
}

/// Whether the bytes of `file` in `from..to` are all zero.
fn all_zeros(file: &File, from: u64, to: u64) -> Result<bool, LogError> {
    let mut buf = vec![0u8; (64 << 10).min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at).map_err(io)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Cuts `file` back to `valid` (writable), saying why: `zeros` when the tail is only zeros (the
/// writer's zeros ahead, or a failed group's bytes that never reached the disk), which hold no
/// record and are no sign of damage.
fn cut(
    path: &Path,
    file: &File,
    valid: u64,
    len: u64,
    writable: bool,
    zeros: bool,
) -> Result<(), LogError> {
    if writable {
        if zeros {
            let why = "cutting zeros past the segment's last record (they hold none)";
            tracing::info!(path = %path.display(), valid, len, "{why}");
        } else {
            tracing::warn!(path = %path.display(), valid, len, "cutting a torn or corrupt tail left by a crash");
        }
        file.set_len(valid).map_err(io)?;
        file.sync_all().map_err(io)?;
    } else {
        tracing::info!(path = %path.display(), valid, len, "reading up to the last whole record");
    }
    Ok(())
}
