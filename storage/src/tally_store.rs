//! Tallies: the [`TallyStore`] trait, where the latest absolute partial of each (poll, partition)
//! persists with the offset it reflects, and [`MemoryTallyStore`], the same rules in memory.
//!
//! The rules are those of the read model's merge (`results/src/merge.rs`) (so a store and a reader holding the same partials
//! agree), applied on write so a stale or zombie processor cannot overwrite a newer partial:
//!
//! - per (poll, partition), a partial is written only if its offset is higher than the stored one,
//!   or equal with a higher `complete_until`;
//! - windows merge on their own, per (poll, partition, start_ms): a window is written only with a
//!   higher offset than the stored one (a partial carries only the windows that changed, so the
//!   windows of a partial that lost can still be the newest of their own window).
//!
//! Reading gives back the latest partial of each (poll, partition) with *every* stored window of that
//! (poll, partition) in its `windows`, oldest first: enough to rebuild a poll's full results.

use crate::log::BoxError;
use crate::polls::StoreError;
use async_trait::async_trait;
use parking_lot::Mutex;
use schemas::{Freshness, Offset, PartialTally, Partition, PollId, WindowCount};
use std::collections::BTreeMap;

/// Where the latest partial tallies persist (PostgreSQL: [`crate::PgTallyStore`]).
/// Why a tally store could not do what was asked (distinct from the log's and the poll store's
/// errors: a processor that cannot flush says which part failed).
#[derive(Debug, thiserror::Error)]
pub enum TallyStoreError {
    /// The store could not be read or written: what was being done, and the error that stopped it.
    #[error("tally store I/O: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: BoxError,
    },
    /// A stored row that cannot be read back as a partial or a checkpoint.
    #[error("tally store data: {0}")]
    Data(String),
    /// A setting the store cannot work with (a keyspace name, a replication class).
    #[error("tally store configuration: {0}")]
    Config(String),
}

impl TallyStoreError {
    /// An I/O failure: what was being done, and the error (or the reason, as text) that stopped it.
    pub fn io(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StoreError::io(context, source).into()
    }
}

/// The PostgreSQL helpers are shared with the poll store: their errors become the tally store's.
impl From<StoreError> for TallyStoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { context, source } => TallyStoreError::Io { context, source },
            other => TallyStoreError::Data(other.to_string()),
        }
    }
}

/// Where the processors keep each votes partition's snapshot (its counting state after reading
/// every record before an offset): every [`TallyStore`], and the embedded mode's
/// [`crate::CheckpointFiles`].
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Stores a processor's checkpoint of one votes partition (its state after reading every record
    /// before `next_offset`), unless a checkpoint at a higher offset is stored. Returns whether it
    /// was written. `state` is handed over whole (tens of MB at a million voters), so a store that
    /// keeps or sends it need not copy it.
    async fn put_checkpoint(
        &self,
        partition: Partition,
        next_offset: Offset,
        state: Vec<u8>,
    ) -> Result<bool, TallyStoreError>;
    /// The stored checkpoint of one votes partition: (next_offset, state).
    async fn load_checkpoint(
        &self,
        partition: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, TallyStoreError>;
    /// Deletes the checkpoint of one votes partition (one that cannot be used).
    async fn clear_checkpoint(&self, partition: Partition) -> Result<(), TallyStoreError>;
}

#[async_trait]
pub trait TallyStore: CheckpointStore {
    /// Writes the partials that are newer than the stored ones (see the module docs) and the windows
    /// that are newer than their stored ones; durable when it returns. Returns how many partials
    /// were written (two of one (poll, partition) in one batch count once at most); a store that
    /// lets last-write-wins decide (ScyllaDB) cannot tell, and returns how many it sent.
    ///
    /// A store may keep a higher `complete_until` than the newest partial's own: the highest claim
    /// of a partial at or below its offset (ScyllaDB). Such a claim is true of the newest partial
    /// too: every vote accepted by then is in the log before that offset.
    async fn put(&self, partials: &[PartialTally]) -> Result<usize, TallyStoreError>;
    /// The latest partial of every (poll, partition), with all its stored windows.
    async fn load_all(&self) -> Result<Vec<PartialTally>, TallyStoreError>;
    /// The latest partial of every poll in one partition, with all its stored windows.
    async fn load_partition(
        &self,
        partition: Partition,
    ) -> Result<Vec<PartialTally>, TallyStoreError>;
    /// The latest partial of one poll in every partition, with all its stored windows.
    async fn load_poll(&self, poll_id: PollId) -> Result<Vec<PartialTally>, TallyStoreError> {
        let mut all = self.load_all().await?;
        all.retain(|t| t.poll_id == poll_id);
        Ok(all)
    }
}

/// A batch reduced to what one write needs: the newest partial per (poll, partition) (windows
/// stripped), and the newest window per (poll, partition, start_ms) as (offset, votes). Both are in
/// key order, so concurrent writers lock rows in the same order.
pub(crate) struct Batch<'a> {
    pub partials: BTreeMap<(PollId, Partition), &'a PartialTally>,
    pub windows: BTreeMap<(PollId, Partition, i64), (Offset, i64)>,
}

impl<'a> Batch<'a> {
    pub fn of(partials: &'a [PartialTally]) -> Self {
        let mut batch = Batch {
            partials: BTreeMap::new(),
            windows: BTreeMap::new(),
        };
        for t in partials {
            batch
                .partials
                .entry((t.poll_id, t.partition))
                .and_modify(|held| {
                    if t.supersedes(held) {
                        *held = t;
                    }
                })
                .or_insert(t);
            for w in &t.windows {
                batch
                    .windows
                    .entry((t.poll_id, t.partition, w.start_ms))
                    .and_modify(|held| {
                        if Freshness::window_supersedes(t.offset, held.0) {
                            *held = (t.offset, w.votes);
                        }
                    })
                    .or_insert((t.offset, w.votes));
            }
        }
        batch
    }
}

/// The [`TallyStore`] rules in memory (tests, and a reference for other implementations).
#[derive(Default)]
pub struct MemoryTallyStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    /// Latest partial per (poll, partition), windows stripped.
    partials: BTreeMap<(PollId, Partition), PartialTally>,
    /// (poll, partition, start_ms) → (offset, votes).
    windows: BTreeMap<(PollId, Partition, i64), (Offset, i64)>,
    checkpoints: BTreeMap<Partition, (Offset, Vec<u8>)>,
}

impl MemoryTallyStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn load(&self, partition: Option<Partition>) -> Vec<PartialTally> {
        let inner = self.inner.lock();
        inner
            .partials
            .iter()
            .filter(|(&(_, p), _)| partition.unwrap_or(p) == p)
            .map(|(&(poll, p), t)| {
                let mut t = t.clone();
                t.windows = inner
                    .windows
                    .range((poll, p, i64::MIN)..=(poll, p, i64::MAX))
                    .map(|(&(_, _, start_ms), &(_, votes))| WindowCount { start_ms, votes })
                    .collect();
                t
            })
            .collect()
    }
}

#[async_trait]
impl TallyStore for MemoryTallyStore {
    async fn put(&self, partials: &[PartialTally]) -> Result<usize, TallyStoreError> {
        let batch = Batch::of(partials);
        let mut inner = self.inner.lock();
        for (key, (offset, votes)) in batch.windows {
            let slot = inner.windows.entry(key).or_insert((Offset(-1), 0));
            if Freshness::window_supersedes(offset, slot.0) {
                *slot = (offset, votes);
            }
        }
        let mut written = 0;
        for (key, t) in batch.partials {
            let newer = match inner.partials.get(&key) {
                None => true,
                Some(held) => t.supersedes(held),
            };
            if newer {
                let mut t = t.clone();
                t.windows.clear();
                inner.partials.insert(key, t);
                written += 1;
            }
        }
        Ok(written)
    }

    async fn load_all(&self) -> Result<Vec<PartialTally>, TallyStoreError> {
        Ok(self.load(None))
    }

    async fn load_partition(
        &self,
        partition: Partition,
    ) -> Result<Vec<PartialTally>, TallyStoreError> {
        Ok(self.load(Some(partition)))
    }
}

#[async_trait]
impl CheckpointStore for MemoryTallyStore {
    async fn put_checkpoint(
        &self,
        partition: Partition,
        next_offset: Offset,
        state: Vec<u8>,
    ) -> Result<bool, TallyStoreError> {
        let mut inner = self.inner.lock();
        match inner.checkpoints.get(&partition) {
            Some((held, _)) if *held >= next_offset => Ok(false),
            _ => {
                inner.checkpoints.insert(partition, (next_offset, state));
                Ok(true)
            }
        }
    }

    async fn load_checkpoint(
        &self,
        partition: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, TallyStoreError> {
        Ok(self.inner.lock().checkpoints.get(&partition).cloned())
    }

    async fn clear_checkpoint(&self, partition: Partition) -> Result<(), TallyStoreError> {
        self.inner.lock().checkpoints.remove(&partition);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use schemas::Timestamp;

    fn partial(offset: i64, complete_until: i64, windows: &[(i64, i64)]) -> PartialTally {
        PartialTally {
            poll_id: 1,
            partition: Partition(0),
            offset: Offset(offset),
            counts: vec![offset, 1],
            voters: offset + 1,
            complete_until: Timestamp(complete_until),
            windows: windows
                .iter()
                .map(|&(start_ms, votes)| WindowCount { start_ms, votes })
                .collect(),
            ..Default::default()
        }
    }

    pub(crate) fn tally(
        poll_id: i64,
        partition: i32,
        offset: i64,
        claim: i64,
        windows: &[(i64, i64)],
    ) -> PartialTally {
        PartialTally {
            poll_id,
            partition: Partition(partition),
            ..partial(offset, claim, windows)
        }
    }

    /// What every [`TallyStore`] does with partials and windows; `store` is empty. The claims
    /// (`complete_until`) grow with the offsets here, as a processor's do: where they do not, a
    /// store may keep a higher claim than the newest partial's own (see [`TallyStore`]).
    pub(crate) async fn contract(store: &dyn TallyStore) {
        assert!(store.load_all().await.unwrap().is_empty());
        store.put(&[]).await.unwrap();
        store
            .put(&[tally(1, 0, 10, 100, &[(1000, 3), (2000, 4)])])
            .await
            .unwrap();
        // An older partial (a stale owner) loses, and so do its older windows.
        store
            .put(&[tally(1, 0, 9, 90, &[(2000, 1)])])
            .await
            .unwrap();
        // The same offset with a higher claim wins.
        store.put(&[tally(1, 0, 10, 200, &[])]).await.unwrap();
        assert_eq!(
            store.load_poll(1).await.unwrap(),
            vec![tally(1, 0, 10, 200, &[(1000, 3), (2000, 4)])]
        );
        // A batch: other keys, two partials of one key (the newer wins), windows by offset.
        store
            .put(&[
                tally(1, 1, 3, 0, &[(1000, 1)]),
                tally(2, 0, 7, 0, &[(5000, 2)]),
                tally(1, 1, 5, 1, &[(1000, 2), (3000, 1)]),
                tally(1, 0, 12, 300, &[(2000, 6)]),
            ])
            .await
            .unwrap();
        // A stale partial's window that is the newest of its own window is kept.
        store
            .put(&[tally(1, 0, 11, 250, &[(2000, 9), (4000, 1)])])
            .await
            .unwrap();
        let p1 = tally(1, 0, 12, 300, &[(1000, 3), (2000, 6), (4000, 1)]);
        let p2 = tally(1, 1, 5, 1, &[(1000, 2), (3000, 1)]);
        let p3 = tally(2, 0, 7, 0, &[(5000, 2)]);
        assert_eq!(
            store.load_all().await.unwrap(),
            vec![p1.clone(), p2.clone(), p3.clone()]
        );
        assert_eq!(
            store.load_poll(1).await.unwrap(),
            vec![p1.clone(), p2.clone()]
        );
        assert_eq!(
            store.load_partition(Partition(0)).await.unwrap(),
            vec![p1, p3]
        );
        assert_eq!(store.load_partition(Partition(1)).await.unwrap(), vec![p2]);
        assert!(store.load_partition(Partition(2)).await.unwrap().is_empty());
        assert!(store.load_poll(3).await.unwrap().is_empty());
    }

    /// Every combination of offsets and claims in 1..=3, in order.
    pub(crate) fn freshness_grid() -> Vec<Freshness> {
        (1..=3)
            .flat_map(|offset| {
                (1..=3).map(move |complete_until| Freshness {
                    offset: Offset(offset),
                    complete_until: Timestamp(complete_until),
                })
            })
            .collect()
    }

    /// Every pair (held, new) of freshness values, each in its own poll: what a store keeps is
    /// what [`schemas::Freshness`] says, for the partial and for its window. `claim_is_max`: the
    /// store keeps the highest claim seen whatever the offset (ScyllaDB, see [`TallyStore`]).
    pub(crate) async fn newest_wins_grid(store: &dyn TallyStore, claim_is_max: bool) {
        let values = freshness_grid();
        let pairs: Vec<(Freshness, Freshness)> = values
            .iter()
            .flat_map(|&held| values.iter().map(move |&new| (held, new)))
            .collect();
        // A window's count is a function of the offset (as the processor's are of the log): two
        // partials at one offset hold the same windows, whatever their claims (ScyllaDB breaks a
        // tie of write timestamps by value, so it need not keep the first).
        let window = |f: Freshness| 100 + 10 * f.offset.0;
        let of = |poll: usize, f: Freshness| {
            tally(
                poll as i64 + 1,
                0,
                f.offset.0,
                f.complete_until.micros(),
                &[(1000, window(f))],
            )
        };
        let held: Vec<_> = pairs.iter().enumerate().map(|(i, p)| of(i, p.0)).collect();
        let new: Vec<_> = pairs.iter().enumerate().map(|(i, p)| of(i, p.1)).collect();
        store.put(&held).await.unwrap();
        store.put(&new).await.unwrap();
        let stored = store.load_all().await.unwrap();
        assert_eq!(stored.len(), pairs.len());
        for (i, &(held, new)) in pairs.iter().enumerate() {
            let kept = if new.supersedes(held) { new } else { held };
            let window_from = if Freshness::window_supersedes(new.offset, held.offset) {
                new
            } else {
                held
            };
            let mut want = of(i, kept);
            want.windows[0].votes = window(window_from);
            if claim_is_max {
                want.complete_until = held.complete_until.max(new.complete_until);
            }
            assert_eq!(stored[i], want, "held {held:?}, then {new:?}");
        }
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        contract(&MemoryTallyStore::new()).await;
        newest_wins_grid(&MemoryTallyStore::new(), false).await;
    }

    #[tokio::test]
    async fn memory_store_keeps_the_newest() {
        let store = MemoryTallyStore::new();
        assert_eq!(store.put(&[partial(5, 0, &[(1000, 3)])]).await.unwrap(), 1);
        assert_eq!(store.put(&[partial(4, 9, &[(2000, 1)])]).await.unwrap(), 0);
        assert_eq!(store.put(&[partial(5, 0, &[])]).await.unwrap(), 0);
        assert_eq!(store.put(&[partial(5, 1, &[(1000, 9)])]).await.unwrap(), 1);
        let all = store.load_all().await.unwrap();
        assert_eq!(all, vec![partial(5, 1, &[(1000, 3), (2000, 1)])]);
        assert!(store.load_partition(Partition(1)).await.unwrap().is_empty());
    }

    /// What every [`TallyStore`] does with checkpoints; `store` holds none below offset 1000.
    pub(crate) async fn checkpoint_contract(store: &dyn CheckpointStore) {
        assert_eq!(store.load_checkpoint(Partition(1000)).await.unwrap(), None);
        assert!(store
            .put_checkpoint(Partition(1000), Offset(10), b"ten".to_vec())
            .await
            .unwrap());
        // A stale owner's older or equal checkpoint does not replace it.
        assert!(!store
            .put_checkpoint(Partition(1000), Offset(9), b"nine".to_vec())
            .await
            .unwrap());
        assert!(!store
            .put_checkpoint(Partition(1000), Offset(10), b"ten again".to_vec())
            .await
            .unwrap());
        assert!(store
            .put_checkpoint(Partition(1001), Offset(3), b"three".to_vec())
            .await
            .unwrap());
        assert_eq!(
            store.load_checkpoint(Partition(1000)).await.unwrap(),
            Some((Offset(10), b"ten".to_vec()))
        );
        assert!(store
            .put_checkpoint(Partition(1000), Offset(11), b"newer".to_vec())
            .await
            .unwrap());
        assert_eq!(
            store.load_checkpoint(Partition(1000)).await.unwrap(),
            Some((Offset(11), b"newer".to_vec()))
        );
        assert_eq!(
            store.load_checkpoint(Partition(1001)).await.unwrap(),
            Some((Offset(3), b"three".to_vec()))
        );
        // An unusable checkpoint is deleted; then any offset may be stored again.
        store.clear_checkpoint(Partition(1000)).await.unwrap();
        assert_eq!(store.load_checkpoint(Partition(1000)).await.unwrap(), None);
        assert!(store
            .put_checkpoint(Partition(1000), Offset(2), b"replayed".to_vec())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn memory_store_keeps_the_furthest_checkpoint() {
        checkpoint_contract(&MemoryTallyStore::new()).await;
    }
}
