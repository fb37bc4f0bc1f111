//! One topic's file: its frame format, the in-memory index of each partition (offset →
//! position, 8 bytes a record), and opening it (a scan that rebuilds the index and cuts a torn or
//! corrupt tail). Appending is the writer's (`embedded_log.rs`), reading is `fetch`'s.

use super::io;
use crate::log::LogError;
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

/// A frame's header: `[u32 body length][u32 CRC-32 of body]`.
pub(super) const HEADER: usize = 8;
/// A body's fixed part: `[u32 partition][i64 timestamp µs][u32 key length]`.
pub(super) const BODY_FIXED: usize = 16;

/// Where each record of one partition sits in its topic's file.
pub(super) struct PartitionIndex {
    /// The position of every record, by offset (its length is in its frame's header).
    pub(super) records: RwLock<Vec<u64>>,
    pub(super) high_watermark: watch::Sender<u64>,
}

pub(super) struct TopicFile {
    pub(super) file: File,
    /// End of the last durable frame (the writer appends here).
    pub(super) end: AtomicU64,
    pub(super) partitions: Vec<PartitionIndex>,
}

/// The length of the frame whose header starts `frame` (written by us, or CRC-checked on open).
pub(super) fn frame_len(frame: &[u8]) -> usize {
    HEADER + u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize
}

/// Scans a topic file, building each partition's index and cutting a torn or corrupt tail.
pub(super) fn open_topic(
    path: &Path,
    partitions: u32,
    writable: bool,
) -> Result<TopicFile, LogError> {
    let file = if writable {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?
    } else {
        match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open("/dev/null").map_err(io)?
            }
            Err(e) => return Err(io(e)),
        }
    };
    let len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut index: Vec<Vec<u64>> = vec![Vec::new(); partitions as usize];
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
        index[partition].push(pos);
        pos += (HEADER + body_len) as u64;
    }
    if pos < len {
        if writable {
            tracing::warn!(path = %path.display(), valid = pos, len, "cutting a torn or corrupt tail left by a crash");
            file.set_len(pos).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else {
            tracing::info!(path = %path.display(), valid = pos, len, "reading up to the last whole record");
        }
    }
    let partitions = index
        .into_iter()
        .map(|records| {
            let hw = records.len() as u64;
            PartitionIndex {
                records: RwLock::new(records),
                high_watermark: watch::channel(hw).0,
            }
        })
        .collect();
    Ok(TopicFile {
        file,
        end: AtomicU64::new(pos),
        partitions,
    })
}
