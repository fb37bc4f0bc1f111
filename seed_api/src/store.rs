//! The adapter's own files: JSON lines, appended through the log's group-commit writer
//! ([`storage::group_commit`]), one writer thread per file.
//!
//! [`Appender::append`] hands a line to the file's thread and waits for it. The thread writes every
//! line waiting at that moment in one `write`, then (if any of them asked to be durable) one
//! `fdatasync`, then answers them all: concurrent registrations share an fsync. Lines are only read
//! at start ([`load`]); a torn last line (a crash mid-write) is skipped, and the next append starts
//! on a fresh line.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use storage::group_commit::{self, Commit};
use tokio::sync::{mpsc, oneshot};

struct Line {
    bytes: Vec<u8>,
    durable: bool,
    done: oneshot::Sender<Result<(), String>>,
}

/// Appends JSON lines to one file from a dedicated thread (the thread ends when this is dropped).
pub struct Appender {
    /// Unbounded: a line is queued the moment `append` is called, so it is written even if the
    /// caller stops waiting (the account or session is already in memory by then). The old API's
    /// writes are bounded by its own rate limits.
    queue: mpsc::UnboundedSender<Line>,
}

/// The most bytes written in one go.
const MAX_GROUP_BYTES: usize = 1 << 20;

impl Appender {
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // A torn last line stays alone on its line: the next record starts after a newline.
        let len = file.metadata()?.len();
        let mut needs_newline = false;
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            needs_newline = last[0] != b'\n';
        }
        let (queue, lines) = mpsc::unbounded_channel();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let writer = LinesFile {
            file,
            needs_newline,
            buf: Vec::new(),
        };
        group_commit::spawn(
            &format!("seed-{name}"),
            writer,
            lines,
            group_commit::Grouping {
                max_bytes: MAX_GROUP_BYTES,
                min_interval: std::time::Duration::ZERO,
                backlog: None,
            },
        )?;
        Ok(Self { queue })
    }

    /// Appends one record; returns once it is written (and on disk, if `durable`).
    pub async fn append(&self, record: &impl Serialize, durable: bool) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let (done, wait) = oneshot::channel();
        let line = Line {
            bytes,
            durable,
            done,
        };
        let stopped = || io::Error::other("the writer thread has stopped");
        self.queue.send(line).map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?.map_err(io::Error::other)
    }
}

/// One JSON-lines file as the group-commit writer sees it.
struct LinesFile {
    file: File,
    /// After a torn or failed write the file may end mid-line.
    needs_newline: bool,
    buf: Vec<u8>,
}

impl Commit for LinesFile {
    type Request = Line;

    fn size(line: &Line) -> usize {
        line.bytes.len()
    }

    fn commit(&mut self, group: &mut Vec<Line>) {
        self.buf.clear();
        if self.needs_newline {
            self.buf.push(b'\n');
        }
        for line in group.iter() {
            self.buf.extend_from_slice(&line.bytes);
        }
        let mut result = self.file.write_all(&self.buf);
        if result.is_ok() && group.iter().any(|line| line.durable) {
            result = self.file.sync_data();
        }
        self.needs_newline = result.is_err();
        let answer = result.map_err(|e| e.to_string());
        for line in group.drain(..) {
            let _ = line.done.send(answer.clone());
        }
    }
}

/// Reads every record of a JSON-lines file (none if it does not exist). Lines that do not parse
/// (a torn last line after a crash) are skipped with a warning.
pub fn load<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping an unreadable line")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct R {
        n: u32,
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        assert!(load::<R>(&path).unwrap().is_empty());
        {
            let a = Appender::open(&path).unwrap();
            let writes = (0..50).map(|n| {
                let a = &a;
                async move { a.append(&R { n }, n % 2 == 0).await.unwrap() }
            });
            futures::future::join_all(writes).await;
        }
        // A crash mid-line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\": 9")
            .unwrap();
        let a = Appender::open(&path).unwrap();
        a.append(&R { n: 100 }, true).await.unwrap();
        let mut got: Vec<u32> = load::<R>(&path).unwrap().into_iter().map(|r| r.n).collect();
        got.sort();
        let mut want: Vec<u32> = (0..50).collect();
        want.push(100);
        assert_eq!(got, want);
    }
}
