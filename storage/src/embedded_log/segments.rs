//! A topic's segment files: the topic is one stream of frames, positions counted from its first
//! byte ever written, cut into files of about `segment_bytes` each. The segment starting at 0 is
//! `<topic>.log` (as when a topic was one file), a later one `<topic>.<start, 20 digits>.log`. Only
//! the last segment is written; the writer starts a new one when it is full, before a group, so a
//! frame never spans two files.
//!
//! Retiring: the segments wholly before a position every partition's consumer has released (its
//! state up to there is in a snapshot) can be deleted. `<topic>.retired.json` records first where
//! the topic now starts and each partition's first offset there (the offsets of what stays do not
//! change), then the files go; a crash in between leaves files the next open deletes.
//!
//! Zeros ahead (`zero_ahead`): the writer keeps about a mebibyte of written zeros past the last
//! record of the last segment, so a group overwrites blocks the file already has and its
//! `fdatasync` flushes data only. A group that extends the file must also flush its size, one
//! more write to the disk in each fsync (a journal commit on a journalled file system):
//! an fsync after an append into written zeros took half the time and CPU here, and less than
//! half the time on a journalled ext4 (BENCHMARKS.md, "2026-12-07 (sixth session)"). Correctness
//! never rests on the zeros: a frame of zeros ends the scan on open as the end of the file does.

use super::io;
use crate::log::LogError;
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(super) struct Segment {
    /// The topic position of the file's first byte.
    pub(super) start: u64,
    /// Shared, so the writer writes and syncs without holding the list's lock.
    pub(super) file: Arc<File>,
}

/// Where the topic starts after a retirement (`<topic>.retired.json`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, PartialEq)]
pub(super) struct Retired {
    /// The position of the first byte kept.
    pub(super) start: u64,
    /// Per partition, the offset of its first record kept.
    pub(super) first_offsets: Vec<u64>,
}

pub(super) struct Segments {
    dir: PathBuf,
    topic: &'static str,
    /// Sorted by start; never empty once opened for writing.
    list: RwLock<Vec<Segment>>,
    /// The topic position up to which the last segment's file is taken to hold zeros past its
    /// last record (written by the writer, or found on open; a failed write of them leaves the
    /// hint wrong, which costs speed only: nothing is read from it).
    zeroed_to: AtomicU64,
}

/// Zeros written in one piece by [`Segments::zero_ahead`].
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Segments {
    /// `zeroed_to`: where the zeros found past the last record of the last segment end.
    pub(super) fn new(dir: &Path, topic: &'static str, list: Vec<Segment>, zeroed_to: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            topic,
            list: RwLock::new(list),
            zeroed_to: AtomicU64::new(zeroed_to),
        }
    }

    pub(super) fn path(dir: &Path, topic: &str, start: u64) -> PathBuf {
        match start {
            0 => dir.join(format!("{topic}.log")),
            _ => dir.join(format!("{topic}.{start:020}.log")),
        }
    }

    pub(super) fn retired_path(dir: &Path, topic: &str) -> PathBuf {
        dir.join(format!("{topic}.retired.json"))
    }

    /// The segment files of a topic in `dir`, by start.
    pub(super) fn list_files(dir: &Path, topic: &str) -> Result<Vec<(u64, PathBuf)>, LogError> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(topic)) else {
                continue;
            };
            let start = match rest {
                ".log" => 0,
                _ => match rest
                    .strip_prefix('.')
                    .and_then(|r| r.strip_suffix(".log"))
                    .filter(|digits| digits.len() == 20)
                    .and_then(|digits| digits.parse::<u64>().ok())
                {
                    Some(start) => start,
                    None => continue,
                },
            };
            found.push((start, entry.path()));
        }
        found.sort();
        Ok(found)
    }

    pub(super) fn read_retired(dir: &Path, topic: &str) -> Result<Option<Retired>, LogError> {
        let path = Self::retired_path(dir, topic);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LogError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// The first position still held (0 until something is retired).
    pub(super) fn start(&self) -> u64 {
        self.list.read().first().map_or(0, |s| s.start)
    }

    /// Reads `len` bytes at topic position `pos`, across segment files, onto the end of `buf`. A
    /// position before the first segment (retired meanwhile) is `NotFound`.
    pub(super) fn read_exact_at(
        &self,
        buf: &mut Vec<u8>,
        len: usize,
        pos: u64,
    ) -> std::io::Result<()> {
        self.read_at_least(buf, len, pos, len).map(drop)
    }

    /// Reads at topic position `pos`, across segment files, onto the end of `buf`: at most `len`
    /// bytes and at least `min` (`UnexpectedEof` otherwise), as many as the segment holding the
    /// `min`th byte has (a read stops at the end of the file, or of that segment; past the last
    /// record it may return the writer's zeros ahead, which no index points at). Returns how many
    /// it read. The bytes land in `buf`'s spare room, not zeroed first. A position
    /// before the first segment (retired meanwhile) is `NotFound`.
    pub(super) fn read_at_least(
        &self,
        buf: &mut Vec<u8>,
        len: usize,
        pos: u64,
        min: usize,
    ) -> std::io::Result<usize> {
        buf.reserve(len);
        let list = self.list.read();
        let mut read = 0;
        while read < len {
            let at = pos + read as u64;
            let i = list.partition_point(|s| s.start <= at);
            if i == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("position {at} of {} was retired", self.topic),
                ));
            }
            let segment = &list[i - 1];
            let available = list.get(i).map_or(u64::MAX, |next| next.start) - at;
            let n = ((len - read) as u64).min(available) as usize;
            match read_onto(buf, n, &segment.file, at - segment.start) {
                Ok(0) => break,
                // Short: the end of what is written (no second read to hear it again).
                Ok(got) if got < n && read + got >= min => return Ok(read + got),
                Ok(got) => {
                    read += got;
                    // At a segment's end with what `min` asks for: the rest is the next
                    // segment's (no frame spans two), not worth a read of its own.
                    if read >= min && got as u64 == available {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if read < min {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} holds {read} of the {min} bytes wanted at {pos}",
                    self.topic
                ),
            ));
        }
        Ok(read)
    }

    /// Writes `buf` at `end` (the end of the last durable frame) in the last segment, first
    /// starting a new segment at `end` when the last one holds `segment_bytes` or more; durable
    /// when it returns if `fsync`.
    pub(super) fn append(
        &self,
        buf: &[u8],
        end: u64,
        segment_bytes: u64,
        fsync: bool,
    ) -> std::io::Result<()> {
        let full = self
            .list
            .read()
            .last()
            .is_none_or(|last| end - last.start >= segment_bytes.max(1) && end > last.start);
        if full {
            let path = Self::path(&self.dir, self.topic, end);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            // The new file's name must survive a crash as surely as the records written into it.
            sync_dir(&self.dir)?;
            let file = Arc::new(file);
            self.list.write().push(Segment { start: end, file });
            self.zeroed_to.store(end, Ordering::Relaxed);
        }
        let (start, file) = {
            let list = self.list.read();
            let last = list.last().expect("a segment was just ensured");
            (last.start, last.file.clone())
        };
        file.write_all_at(buf, end - start)?;
        if fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Keeps `ahead` bytes of durable zeros past `end` (the end of the last durable frame) in the
    /// last segment, up to where the writer starts the next one: once fewer than half are left,
    /// writes zeros from the end of those there are, then `fdatasync`s them. Returns whether it
    /// wrote (and synced) any. Called by the writer between groups: the next group waits for it
    /// (about 1 ms a mebibyte here, once every half of `ahead` appended). The zeros are a hint,
    /// so a failure only costs the next groups their speed.
    pub(super) fn zero_ahead(
        &self,
        end: u64,
        ahead: u64,
        segment_bytes: u64,
    ) -> std::io::Result<bool> {
        let zeroed = self.zeroed_to.load(Ordering::Relaxed);
        if ahead == 0 || zeroed >= end + ahead / 2 {
            return Ok(false);
        }
        let (start, file) = {
            let list = self.list.read();
            let Some(last) = list.last() else {
                return Ok(false);
            };
            (last.start, last.file.clone())
        };
        // `zeroed` is at least the last segment's start (set when it began, or on open).
        let from = zeroed.max(end);
        let to = (end + ahead).min(start + segment_bytes.max(1));
        if from >= to {
            return Ok(false);
        }
        // Tried once for these bytes, even when it fails (a full disk): the next try comes half
        // of `ahead` later, not after every group.
        self.zeroed_to.store(to, Ordering::Relaxed);
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(ZEROS.len());
            file.write_all_at(&ZEROS[..n], at - start)?;
            at += n as u64;
        }
        file.sync_data().map(|()| true)
    }

    /// Cuts the last segment back to `end` (after a failed write), durably: the failed group's
    /// frames must not come back after a crash, past where the next segment will start.
    pub(super) fn truncate(&self, end: u64) -> std::io::Result<()> {
        self.zeroed_to.store(end, Ordering::Relaxed);
        let list = self.list.read();
        match list.last() {
            Some(last) => {
                last.file.set_len(end.saturating_sub(last.start))?;
                last.file.sync_data()
            }
            None => Ok(()),
        }
    }

    /// Where the topic would start if every segment wholly before `floor` were retired (the last
    /// segment never is): `None` if none is.
    pub(super) fn retirable(&self, floor: u64) -> Option<u64> {
        let list = self.list.read();
        let kept = list
            .iter()
            .skip(1)
            .take_while(|next| next.start <= floor)
            .last()?;
        Some(kept.start)
    }

    /// Records durably that the topic starts at `retired.start` (before anything is deleted).
    pub(super) fn write_retired(&self, retired: &Retired) -> Result<(), LogError> {
        let path = Self::retired_path(&self.dir, self.topic);
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, serde_json::to_vec(retired).expect("plain data"))?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        };
        write().map_err(|e| LogError::io(format!("writing {}", path.display()), e))
    }

    /// Drops and deletes every segment before `start` (after [`Self::write_retired`]). Returns how
    /// many files were deleted.
    pub(super) fn delete_before(&self, start: u64) -> Result<usize, LogError> {
        let gone: Vec<Segment> = {
            let mut list = self.list.write();
            let n = list.partition_point(|s| s.start < start);
            list.drain(..n).collect()
        };
        for segment in &gone {
            let path = Self::path(&self.dir, self.topic, segment.start);
            std::fs::remove_file(&path)
                .map_err(|e| LogError::io(format!("deleting {}", path.display()), e))?;
        }
        Ok(gone.len())
    }
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads at most `n` bytes at `offset` of `file` into `buf`'s spare room (which holds `n`) and
/// makes them part of `buf`: a read into a slice (`FileExt::read_at`) would want the room zeroed
/// first, which the fetch of a busy partition paid on every byte it read.
fn read_onto(buf: &mut Vec<u8>, n: usize, file: &File, offset: u64) -> std::io::Result<usize> {
    let room = &mut buf.spare_capacity_mut()[..n];
    let got = rustix::io::pread(file, room, offset)?.0.len();
    // SAFETY: `pread` initialised the `got` bytes that follow `buf`'s length, and `got` is at
    // most `n`, which the spare room holds.
    unsafe { buf.set_len(buf.len() + got) };
    Ok(got)
}
