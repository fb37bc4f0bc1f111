//! [`FilePollStore`]: the embedded mode's poll definitions as an append-only journal of JSON lines.
//!
//! Each save appends one line, the whole [`Poll`] as JSON (the poll's version after the change),
//! and `fdatasync`s it before it returns, so a change costs one small write whatever the number of
//! polls. The write and the sync run on tokio's blocking pool, never on a runtime thread.
//!
//! At open:
//! - the last line of each poll id wins; a torn last line (a crash mid-append, no newline or not
//!   JSON) is cut off, so the next append starts on a clean line; a bad line before the last is
//!   corruption and stops the start;
//! - the journal is compacted (rewritten with one line per poll: temp file, fsync, rename, fsync of
//!   the directory) when it holds more than [`COMPACT_FACTOR`] lines per live poll and at least
//!   [`COMPACT_MIN_LINES`] lines;
//! - a data directory of an earlier version, with the whole catalog in one JSON array
//!   (`polls.json`, the journal's path with the extension `json`), is migrated: its polls become the
//!   journal (written the same atomic way), then the old file is renamed `polls.json.migrated`. If the
//!   journal exists already, a crash came between those two steps and the journal wins.
//!
//! Lines are read with serde defaults, so a field added to [`Poll`] later (with `#[serde(default)]`)
//! leaves every older line readable.

use crate::polls::{PollStore, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use schemas::{Poll, PollId};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compact at open when the journal holds more than this many lines per live poll…
pub const COMPACT_FACTOR: usize = 4;
/// …and at least this many lines.
pub const COMPACT_MIN_LINES: usize = 1024;

/// Poll definitions in an append-only journal of JSON lines (see the module docs).
pub struct FilePollStore {
    path: PathBuf,
    /// The latest version of every poll (what [`PollStore::load`] answers).
    polls: Mutex<BTreeMap<PollId, Poll>>,
    /// The open journal and its length (the end of its last whole line).
    file: Arc<Mutex<Journal>>,
}

struct Journal {
    file: File,
    len: u64,
}

/// What reading a journal found.
#[derive(Debug, Default)]
struct Contents {
    polls: BTreeMap<PollId, Poll>,
    lines: usize,
    /// Bytes up to the end of the last whole, readable line.
    good_len: u64,
}

impl FilePollStore {
    /// Opens (or creates) the journal at `path`, migrating `path.with_extension("json")` if that
    /// exists (see the module docs). Blocking: call it at start.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let io = |e: std::io::Error| StoreError::io(path.display().to_string(), e);
        let legacy = path.with_extension("json");
        if legacy != path && legacy.exists() {
            migrate(&legacy, &path)?;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let read =
            parse(&bytes).map_err(|e| StoreError::Data(format!("{}: {e}", path.display())))?;
        if read.good_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() as u64 - read.good_len,
                "the poll journal ends in a torn line; cutting it off"
            );
        }
        let needs_compaction = read.lines >= COMPACT_MIN_LINES
            && read.lines > COMPACT_FACTOR * read.polls.len().max(1);
        let len = if needs_compaction {
            tracing::info!(
                path = %path.display(),
                lines = read.lines,
                polls = read.polls.len(),
                "compacting the poll journal"
            );
            write_atomically(&path, read.polls.values())?
        } else {
            read.good_len
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != len {
            file.set_len(len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(Self {
            path,
            polls: Mutex::new(read.polls),
            file: Arc::new(Mutex::new(Journal { file, len })),
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl PollStore for FilePollStore {
    async fn load(&self) -> Result<Vec<Poll>, StoreError> {
        Ok(self.polls.lock().values().cloned().collect())
    }

    async fn save(&self, poll: &Poll) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(poll).map_err(|e| StoreError::Data(e.to_string()))?;
        line.push(b'\n');
        let journal = self.file.clone();
        let path = self.path.clone();
        // On the blocking pool: it finishes even if the request that asked is dropped meanwhile.
        tokio::task::spawn_blocking(move || append(&journal, &line))
            .await
            .map_err(|e| StoreError::io(format!("{}: the write task", path.display()), e))?
            .map_err(|e| StoreError::io(path.display().to_string(), e))?;
        self.polls.lock().insert(poll.id, poll.clone());
        Ok(())
    }
}

/// Appends one line and syncs it. A failed write is cut off again, so the journal never holds a
/// partial line before a later whole one.
fn append(journal: &Mutex<Journal>, line: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut j = journal.lock();
    let at = j.len;
    let written = (|| {
        j.file.seek(SeekFrom::Start(at))?;
        j.file.write_all(line)?;
        j.file.sync_data()
    })();
    match written {
        Ok(()) => {
            j.len = at + line.len() as u64;
            Ok(())
        }
        Err(e) => {
            let _ = j.file.set_len(at);
            Err(e)
        }
    }
}

/// Reads journal bytes: the latest version of each poll, the whole lines, and where they end.
fn parse(bytes: &[u8]) -> Result<Contents, String> {
    let mut read = Contents::default();
    let mut start = 0usize;
    while start < bytes.len() {
        let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') else {
            break; // a torn last line: no newline
        };
        let end = start + nl;
        let line = &bytes[start..end];
        let next = end + 1;
        if !line.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Poll>(line) {
                Ok(p) => {
                    read.polls.insert(p.id, p);
                    read.lines += 1;
                }
                // Only the last line may be torn (a crash can leave a newline of a later write
                // out of order only at the very end).
                Err(_) if bytes[next..].iter().all(u8::is_ascii_whitespace) => break,
                Err(e) => {
                    return Err(format!(
                        "line {} (byte {start}) is not a poll: {e}",
                        read.lines + 1
                    ))
                }
            }
        }
        start = next;
        read.good_len = next as u64;
    }
    Ok(read)
}

/// Writes `polls` as a fresh journal at `path` (temp file, fsync, rename, directory fsync); answers
/// its length.
fn write_atomically<'a>(
    path: &Path,
    polls: impl Iterator<Item = &'a Poll>,
) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::io(path.display().to_string(), e);
    let mut bytes = Vec::new();
    for p in polls {
        serde_json::to_writer(&mut bytes, p).map_err(|e| StoreError::Data(e.to_string()))?;
        bytes.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path);
    Ok(bytes.len() as u64)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
}

/// Moves the polls of an earlier version's `polls.json` (one JSON array) into the journal.
fn migrate(legacy: &Path, journal: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::io(legacy.display().to_string(), e);
    if !journal.exists() {
        let mut bytes = Vec::new();
        File::open(legacy)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let polls: Vec<Poll> = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Data(format!("{}: {e}", legacy.display())))?;
        let by_id: BTreeMap<PollId, Poll> = polls.into_iter().map(|p| (p.id, p)).collect();
        write_atomically(journal, by_id.values())?;
        tracing::info!(
            from = %legacy.display(),
            to = %journal.display(),
            polls = by_id.len(),
            "migrated the poll file to the poll journal"
        );
    }
    let mut aside = legacy.as_os_str().to_owned();
    aside.push(".migrated");
    std::fs::rename(legacy, &aside).map_err(io)?;
    sync_dir(legacy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polls::PollCatalog;
    use schemas::{Timestamp, Visibility};

    fn poll(id: PollId, slug: String) -> Poll {
        Poll {
            id,
            slug,
            title: "Who wins?".into(),
            options: vec!["A".into(), "B".into()],
            max_choices: 1,
            visibility: Visibility::Live,
            opens_at: None,
            closes_at: None,
            opened_at: None,
            closed_at: None,
            revealed: false,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        }
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).unwrap().lines().count()
    }

    #[tokio::test]
    async fn a_save_appends_one_line_and_the_last_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        let catalog = PollCatalog::load(Arc::new(FilePollStore::open(&path).unwrap()))
            .await
            .unwrap();
        for _ in 0..3 {
            catalog.create(poll).await.unwrap();
        }
        assert_eq!(lines(&path), 3);
        catalog
            .update(2, |p, now| {
                p.closed_at = Some(now);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            lines(&path),
            4,
            "a change appends one line, rewrites nothing"
        );
        let store = FilePollStore::open(&path).unwrap();
        let polls = store.load().await.unwrap();
        assert_eq!(polls.len(), 3);
        assert!(polls[1].closed_at.is_some() && polls[0].closed_at.is_none());
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        let store = FilePollStore::open(&path).unwrap();
        store.save(&poll(1, "aaaaaa".into())).await.unwrap();
        store.save(&poll(2, "bbbbbb".into())).await.unwrap();
        drop(store);
        // A crash mid-append: half of a third line, no newline.
        let whole = std::fs::read(&path).unwrap();
        let third = serde_json::to_vec(&poll(3, "cccccc".into())).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&third[..third.len() / 2]);
        std::fs::write(&path, &torn).unwrap();

        let store = FilePollStore::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn tail is cut");
        let ids: Vec<_> = store.load().await.unwrap().iter().map(|p| p.id).collect();
        assert_eq!(ids, [1, 2]);
        store.save(&poll(3, "cccccc".into())).await.unwrap();
        drop(store);
        let ids: Vec<_> = FilePollStore::open(&path)
            .unwrap()
            .load()
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);

        // A torn line with its newline (not JSON) at the end is cut too.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"id\": 4, \"slu\n");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            FilePollStore::open(&path)
                .unwrap()
                .load()
                .await
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn a_bad_line_before_the_last_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        let good = serde_json::to_string(&poll(1, "aaaaaa".into())).unwrap();
        std::fs::write(&path, format!("not json\n{good}\n")).unwrap();
        let err = FilePollStore::open(&path).err().expect("refused");
        assert!(
            matches!(err, StoreError::Data(ref m) if m.contains("line 1")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_old_polls_json_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("polls.json");
        let path = dir.path().join("polls.jsonl");
        // The earlier format: one pretty-printed array, without fields added since.
        std::fs::write(
            &legacy,
            r#"[
  {"id": 1, "slug": "aaaaaa", "title": "One", "options": ["A", "B"], "max_choices": 1,
   "opens_at": null, "closes_at": null, "opened_at": 5, "closed_at": null, "created_at": 1,
   "creator": null},
  {"id": 7, "slug": "bbbbbb", "title": "Seven", "options": ["A", "B", "C"], "max_choices": 2,
   "visibility": "on_reveal", "opens_at": null, "closes_at": null, "opened_at": 5,
   "closed_at": 9, "revealed": true, "created_at": 2, "creator": "user:3"}
]"#,
        )
        .unwrap();
        let store = FilePollStore::open(&path).unwrap();
        let polls = store.load().await.unwrap();
        assert_eq!(polls.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 7]);
        assert_eq!(polls[1].visibility, Visibility::OnReveal);
        assert_eq!(polls[1].creator.as_deref(), Some("user:3"));
        assert!(!legacy.exists(), "the old file is moved aside");
        assert!(dir.path().join("polls.json.migrated").exists());
        assert_eq!(lines(&path), 2);
        drop(store);

        // A crash after the journal was written but before the old file was moved: the journal
        // (which may have changed since) wins.
        let store = FilePollStore::open(&path).unwrap();
        store.save(&poll(8, "cccccc".into())).await.unwrap();
        drop(store);
        std::fs::copy(dir.path().join("polls.json.migrated"), &legacy).unwrap();
        let polls = FilePollStore::open(&path).unwrap().load().await.unwrap();
        assert_eq!(polls.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 7, 8]);
        assert!(!legacy.exists());
    }

    #[tokio::test]
    async fn a_grown_journal_is_compacted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        // Two polls changed over and over: many versions of each.
        let mut bytes = Vec::new();
        for i in 0..COMPACT_MIN_LINES as i64 {
            let mut p = poll(1 + i % 2, "aaaaaa".into());
            p.created_at = Timestamp(i);
            serde_json::to_writer(&mut bytes, &p).unwrap();
            bytes.push(b'\n');
        }
        let last_line = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        // One line short of the threshold: left as it is.
        std::fs::write(&path, &bytes[..last_line]).unwrap();
        drop(FilePollStore::open(&path).unwrap());
        assert_eq!(lines(&path), COMPACT_MIN_LINES - 1);
        std::fs::write(&path, &bytes).unwrap();
        let store = FilePollStore::open(&path).unwrap();
        assert_eq!(lines(&path), 2, "one line per live poll");
        let polls = store.load().await.unwrap();
        assert_eq!(polls[0].created_at.micros(), COMPACT_MIN_LINES as i64 - 2);
        assert_eq!(polls[1].created_at.micros(), COMPACT_MIN_LINES as i64 - 1);
        store.save(&poll(3, "dddddd".into())).await.unwrap();
        assert_eq!(lines(&path), 3);
    }
}
