//! [`CheckpointFiles`]: the embedded mode's snapshots, two generations per votes partition
//! (`<dir>/votes-<partition>.checkpoint` and the one before it, `…previous.checkpoint`), so a
//! restart restores each partition's counting state and reads only the log after it (and
//! retention can delete the log before the older one: the processor releases only that). The
//! results board's snapshot is kept the same way, under another name
//! ([`CheckpointFiles::open_named`]: `results-0.checkpoint`).
//!
//! File: `[8 bytes "CTCKPT01"][u64 next offset][u32 CRC-32 of the state][state]` (little endian).
//! Written whole to a temporary file, fsynced, renamed over the old one, then the directory
//! fsynced: a crash leaves the old snapshot or the new one, never a mix. The newest is renamed to
//! the previous generation first. A newest that fails its check (or is missing after a crash
//! between the renames) gives way to the previous one; when neither is usable the partition
//! replays, or, when retention deleted the log's start, the processor refuses and says so.

use crate::tally_store::{CheckpointStore, TallyStoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use schemas::{Offset, Partition};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"CTCKPT01";
const HEADER: usize = 8 + 8 + 4;

pub struct CheckpointFiles {
    dir: PathBuf,
    /// What the snapshots are of: the start of their file names (`votes`, `results`).
    name: &'static str,
    /// The offset of each partition's stored snapshot, once known (saves reading it to compare).
    stored: Arc<Mutex<HashMap<Partition, Offset>>>,
}

impl CheckpointFiles {
    /// Keeps the votes partitions' snapshots in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, TallyStoreError> {
        Self::open_named(dir, "votes")
    }

    /// Keeps snapshots of `name` (`<name>-<partition>.checkpoint`) in `dir` (created if missing).
    pub fn open_named(
        dir: impl Into<PathBuf>,
        name: &'static str,
    ) -> Result<Self, TallyStoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| TallyStoreError::io(format!("creating {}", dir.display()), e))?;
        Ok(Self {
            dir,
            name,
            stored: Default::default(),
        })
    }

    fn path(dir: &Path, name: &str, partition: Partition) -> PathBuf {
        dir.join(format!("{name}-{}.checkpoint", partition.0))
    }

    fn previous_path(dir: &Path, name: &str, partition: Partition) -> PathBuf {
        dir.join(format!("{name}-{}.previous.checkpoint", partition.0))
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
        doing: String,
    ) -> Result<T, TallyStoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || work(&dir))
            .await
            .map_err(|e| TallyStoreError::io(doing.clone(), e.to_string()))?
            .map_err(|e| TallyStoreError::io(doing, e))
    }
}

/// The snapshot in `path`: `Ok(None)` when there is none, `Err` (InvalidData) when it fails its
/// check.
fn read(path: &Path) -> std::io::Result<Option<(Offset, Vec<u8>)>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(invalid("not a CrowdTick snapshot (bad header)"));
    }
    let offset = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let state = &bytes[HEADER..];
    if crc32fast::hash(state) != crc {
        return Err(invalid("its CRC does not match (a damaged file)"));
    }
    Ok(Some((Offset::from_count(offset), state.to_vec())))
}

/// Writes a new newest snapshot; the newest so far becomes the previous generation.
fn write(
    dir: &Path,
    name: &str,
    partition: Partition,
    offset: Offset,
    state: &[u8],
) -> std::io::Result<()> {
    let path = CheckpointFiles::path(dir, name, partition);
    let tmp = path.with_extension("checkpoint.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(MAGIC)?;
    file.write_all(&offset.count().to_le_bytes())?;
    file.write_all(&crc32fast::hash(state).to_le_bytes())?;
    file.write_all(state)?;
    file.sync_all()?;
    match std::fs::rename(&path, CheckpointFiles::previous_path(dir, name, partition)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

#[async_trait]
impl CheckpointStore for CheckpointFiles {
    async fn put_checkpoint(
        &self,
        partition: Partition,
        next_offset: Offset,
        state: Vec<u8>,
    ) -> Result<bool, TallyStoreError> {
        let known = self.stored.lock().get(&partition).copied();
        let held = match known {
            Some(held) => Some(held),
            None => self.load_checkpoint(partition).await?.map(|(o, _)| o),
        };
        if held.is_some_and(|held| held >= next_offset) {
            return Ok(false);
        }
        let name = self.name;
        let stored = self.stored.clone();
        self.blocking(
            move |dir| {
                write(dir, name, partition, next_offset, &state)?;
                stored.lock().insert(partition, next_offset);
                Ok(())
            },
            format!("writing the snapshot {name}-{partition}"),
        )
        .await?;
        Ok(true)
    }

    async fn load_checkpoint(
        &self,
        partition: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, TallyStoreError> {
        let name = self.name;
        let found = self
            .blocking(
                move |dir| {
                    for path in [
                        Self::path(dir, name, partition),
                        Self::previous_path(dir, name, partition),
                    ] {
                        match read(&path) {
                            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                                // Set aside, so the next snapshot does not push the good previous
                                // generation out for it.
                                let aside = path.with_extension("checkpoint.damaged");
                                tracing::error!(path = %path.display(), aside = %aside.display(), error = %e, "setting a damaged snapshot aside");
                                std::fs::rename(&path, &aside)?;
                            }
                            Ok(None) => {}
                            found => return found,
                        }
                    }
                    Ok(None)
                },
                format!("reading the snapshot {name}-{partition}"),
            )
            .await?;
        let mut stored = self.stored.lock();
        match &found {
            Some((offset, _)) => stored.insert(partition, *offset),
            None => stored.remove(&partition),
        };
        Ok(found)
    }

    async fn clear_checkpoint(&self, partition: Partition) -> Result<(), TallyStoreError> {
        let name = self.name;
        self.blocking(
            move |dir| {
                for path in [
                    Self::path(dir, name, partition),
                    Self::previous_path(dir, name, partition),
                ] {
                    match std::fs::remove_file(path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            },
            format!("deleting the snapshot {name}-{partition}"),
        )
        .await?;
        self.stored.lock().remove(&partition);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshot_files_keep_the_furthest_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let files = CheckpointFiles::open(dir.path()).unwrap();
        crate::tally_store::tests::checkpoint_contract(&files).await;
        // Another process (a restart) reads what was stored, and refuses an older one too.
        let again = CheckpointFiles::open(dir.path()).unwrap();
        assert_eq!(
            again.load_checkpoint(Partition(1001)).await.unwrap(),
            Some((Offset(3), b"three".to_vec()))
        );
        let fresh = CheckpointFiles::open(dir.path()).unwrap();
        assert!(!fresh
            .put_checkpoint(Partition(1001), Offset(2), b"two".to_vec())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_damaged_newest_snapshot_gives_way_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = CheckpointFiles::open(dir.path()).unwrap();
        for (offset, state) in [(40, &b"state at forty"[..]), (50, b"state at fifty")] {
            assert!(files
                .put_checkpoint(Partition(0), Offset(offset), state.to_vec())
                .await
                .unwrap());
        }
        let newest = CheckpointFiles::path(dir.path(), "votes", Partition(0));
        let damage = |path: &Path| {
            let mut bytes = std::fs::read(path).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            std::fs::write(path, bytes).unwrap();
        };
        damage(&newest);
        let files = CheckpointFiles::open(dir.path()).unwrap();
        assert_eq!(
            files.load_checkpoint(Partition(0)).await.unwrap(),
            Some((Offset(40), b"state at forty".to_vec()))
        );
        // The damaged one is set aside: the next snapshot keeps forty as its previous generation.
        assert!(files
            .put_checkpoint(Partition(0), Offset(60), b"state at sixty".to_vec())
            .await
            .unwrap());
        damage(&newest);
        let files = CheckpointFiles::open(dir.path()).unwrap();
        assert_eq!(
            files.load_checkpoint(Partition(0)).await.unwrap(),
            Some((Offset(40), b"state at forty".to_vec()))
        );
        // Neither generation usable: none (the partition replays, or its processor refuses).
        damage(&CheckpointFiles::previous_path(
            dir.path(),
            "votes",
            Partition(0),
        ));
        let files = CheckpointFiles::open(dir.path()).unwrap();
        assert_eq!(files.load_checkpoint(Partition(0)).await.unwrap(), None);
        // Then any snapshot may be stored again.
        assert!(files
            .put_checkpoint(Partition(0), Offset(7), b"replayed".to_vec())
            .await
            .unwrap());
        std::fs::write(&newest, b"CTCK").unwrap();
        assert_eq!(files.load_checkpoint(Partition(0)).await.unwrap(), None);
    }
}
