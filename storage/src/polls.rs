//! Polls: the [`PollStore`] trait (where definitions persist) and the [`PollCatalog`] every stage
//! reads per vote.
//!
//! Close-time safety: the edge stamps a vote's `accepted_at` and reads the poll under one read lock
//! ([`PollCatalog::stamp_and_get`]); a manual close computes its `closed_at` under the write lock. So
//! every vote the edge accepts as open has `accepted_at <= closed_at`, and the processor and `recount`
//! (which judge by the stored close time) count exactly the votes the edge acknowledged.

use crate::log::BoxError;
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use schemas::{Poll, PollId, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

pub use crate::poll_journal::FilePollStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The poll store (or the cache) could not be read or written: what was being done, and the
    /// error that stopped it.
    #[error("store I/O: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: BoxError,
    },
    #[error("store data: {0}")]
    Data(String),
    #[error("no poll with id {0}")]
    NotFound(PollId),
    #[error("{0}")]
    Rejected(String),
}

impl StoreError {
    /// An I/O failure: what was being done, and the error (or the reason, as text) that stopped it.
    pub fn io(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StoreError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Where poll definitions persist.
#[async_trait]
pub trait PollStore: Send + Sync + 'static {
    async fn load(&self) -> Result<Vec<Poll>, StoreError>;
    /// Inserts or replaces a poll; durable when it returns.
    async fn save(&self, poll: &Poll) -> Result<(), StoreError>;
    /// A new poll id above `highest_known`, unique among every writer of this store (PostgreSQL
    /// hands them out from a sequence, so several query nodes can create polls).
    async fn next_id(&self, highest_known: PollId) -> Result<PollId, StoreError> {
        Ok(highest_known + 1)
    }
    /// Whether other processes write this store too (then the catalog re-reads before changes).
    fn shared(&self) -> bool {
        false
    }
}

/// Every poll by id, looked up once per vote on the edge and in the processor (a fast hasher: the
/// ids are the catalog's own).
pub type Polls = HashMap<PollId, Arc<Poll>, foldhash::fast::RandomState>;

type PollMap = Arc<Polls>;

/// Every poll, in memory; cheap to read per vote, changed rarely.
#[derive(Clone)]
pub struct PollCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    polls: RwLock<PollMap>,
    /// Every poll id, ascending (for pages of the list); changed after `polls`, so an id read
    /// here is always in a later read of `polls`.
    ids: RwLock<Arc<Vec<PollId>>>,
    store: Arc<dyn PollStore>,
    writers: tokio::sync::Mutex<()>,
    generation: watch::Sender<u64>,
    refreshed_at: Mutex<std::time::Instant>,
}

impl PollCatalog {
    pub async fn load(store: Arc<dyn PollStore>) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let polls = store.load().await?;
        let map: Polls = polls.into_iter().map(|p| (p.id, Arc::new(p))).collect();
        let ids = sorted_ids(&map);
        Ok(Self {
            inner: Arc::new(Inner {
                polls: RwLock::new(Arc::new(map)),
                ids: RwLock::new(ids),
                store,
                writers: tokio::sync::Mutex::new(()),
                generation: watch::channel(0).0,
                refreshed_at: Mutex::new(started),
            }),
        })
    }

    pub fn get(&self, id: PollId) -> Option<Arc<Poll>> {
        self.inner.polls.read().get(&id).cloned()
    }

    /// Stamps the current time and reads the poll in one critical section (see the module docs).
    pub fn stamp_and_get(&self, id: PollId) -> (Timestamp, Option<Arc<Poll>>) {
        let polls = self.inner.polls.read();
        (Timestamp::now(), polls.get(&id).cloned())
    }

    /// Stamps the current time and takes the whole catalog: one lock for a batch of votes.
    pub fn stamp_and_snapshot(&self) -> (Timestamp, PollMap) {
        let polls = self.inner.polls.read();
        (Timestamp::now(), polls.clone())
    }

    pub fn snapshot(&self) -> PollMap {
        self.inner.polls.read().clone()
    }

    pub fn by_slug(&self, slug: &str) -> Option<Arc<Poll>> {
        self.inner
            .polls
            .read()
            .values()
            .find(|p| p.slug == slug)
            .cloned()
    }

    /// All polls, newest first.
    pub fn list(&self) -> Vec<Arc<Poll>> {
        self.page(None, usize::MAX).0
    }

    /// Up to `limit` polls, newest (highest id) first, starting after the poll `after` in that
    /// order (so with ids below it), and whether more follow. Ids only grow, so a page never
    /// shifts when polls are created meanwhile. Costs a binary search and `limit` lookups.
    pub fn page(&self, after: Option<PollId>, limit: usize) -> (Vec<Arc<Poll>>, bool) {
        let ids = self.inner.ids.read().clone();
        let polls = self.snapshot();
        let end = after.map_or(ids.len(), |a| ids.partition_point(|&id| id < a));
        let mut page = Vec::with_capacity(limit.min(end));
        for id in ids[..end].iter().rev() {
            if page.len() == limit {
                return (page, true);
            }
            if let Some(p) = polls.get(id) {
                page.push(p.clone());
            }
        }
        (page, false)
    }

    /// A counter that moves on every change (subscribe to learn of opens, closes, reveals).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Creates a poll: `build` gets the new id and a fresh unique slug.
    pub async fn create(
        &self,
        build: impl FnOnce(PollId, String) -> Poll,
    ) -> Result<Arc<Poll>, StoreError> {
        let _w = self.inner.writers.lock().await;
        if self.inner.store.shared() {
            self.reload().await?;
        }
        let highest = self.inner.polls.read().keys().max().copied().unwrap_or(0);
        let id = self.inner.store.next_id(highest).await?;
        let slug = {
            let polls = self.inner.polls.read();
            let mut slug = new_slug();
            while polls.values().any(|p| p.slug == slug) {
                slug = new_slug();
            }
            slug
        };
        let poll = build(id, slug);
        self.inner.store.save(&poll).await?;
        Ok(self.install(poll))
    }

    /// Changes a poll. `change` runs under the write lock with the current time, so a close it
    /// records is ordered with every vote the edge stamps; then the poll is persisted.
    pub async fn update(
        &self,
        id: PollId,
        change: impl FnOnce(&mut Poll, Timestamp) -> Result<(), String>,
    ) -> Result<Arc<Poll>, StoreError> {
        let _w = self.inner.writers.lock().await;
        if self.inner.store.shared() {
            // Another node may have changed this poll: change the stored version, not ours.
            self.reload().await?;
        }
        let updated = {
            let mut polls = self.inner.polls.write();
            let mut poll = (**polls.get(&id).ok_or(StoreError::NotFound(id))?).clone();
            change(&mut poll, Timestamp::now()).map_err(StoreError::Rejected)?;
            let poll = Arc::new(poll);
            let mut map = (**polls).clone();
            map.insert(id, poll.clone());
            *polls = Arc::new(map);
            poll
        };
        self.inner.generation.send_modify(|g| *g += 1);
        // The in-memory close is already in force (the safe direction); persisting it can still fail,
        // and then the operator is told and may repeat the action.
        self.inner.store.save(&updated).await?;
        Ok(updated)
    }

    /// Whether other processes change the polls too (see [`PollStore::shared`]).
    pub fn is_shared(&self) -> bool {
        self.inner.store.shared()
    }

    /// When the catalog last matched the store (load or [`refresh`](Self::refresh)).
    pub fn refreshed_at(&self) -> std::time::Instant {
        *self.inner.refreshed_at.lock()
    }

    /// Re-reads the store (for services that share PostgreSQL with other writers).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        // Ordered with this node's own changes, so a re-read never undoes a newer local change.
        let _w = self.inner.writers.lock().await;
        self.reload().await
    }

    /// Re-reads the store unless a re-read that began at `since` or later is installed by the
    /// time this one's turn comes: many callers waiting for the same news cost one read.
    pub async fn refresh_since(&self, since: std::time::Instant) -> Result<(), StoreError> {
        let _w = self.inner.writers.lock().await;
        if self.refreshed_at() >= since {
            return Ok(());
        }
        self.reload().await
    }

    /// Readiness of a shared catalog: `Err` says why it is too old to trust (for an edge, the age
    /// past which it answers 503 itself).
    pub fn freshness(&self, max_age: std::time::Duration) -> Result<String, String> {
        let age = self.refreshed_at().elapsed();
        if age <= max_age {
            Ok(format!("re-read {} ms ago", age.as_millis()))
        } else {
            Err(format!(
                "the poll catalog was last read from PostgreSQL {} ms ago (at most {} ms allowed): \
                 is PostgreSQL reachable?",
                age.as_millis(),
                max_age.as_millis()
            ))
        }
    }

    /// Keeps a shared catalog in step with its store until `shutdown`: a re-read every `every`,
    /// and at once on a change notice from the results cache (Redis), when there is one.
    pub async fn follow(
        self,
        cache: Option<crate::RedisCache>,
        every: std::time::Duration,
        mut shutdown: crate::Shutdown,
    ) {
        let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
        let forward = cache.map(|c| tokio::spawn(c.forward_notices(tx, shutdown.clone())));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(_) = notices.recv() => {}
                _ = shutdown.signalled() => break,
            }
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the poll catalog is readable again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "re-reading the poll catalog failed; edges refuse votes once it is too old");
                }
                Err(_) => {}
            }
        }
        if let Some(f) = forward {
            let _ = f.await;
        }
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let polls = self.inner.store.load().await?;
        let map: Polls = polls.into_iter().map(|p| (p.id, Arc::new(p))).collect();
        let ids = sorted_ids(&map);
        *self.inner.polls.write() = Arc::new(map);
        *self.inner.ids.write() = ids;
        {
            // After the install: a re-read said to have begun by a time is also in use.
            let mut at = self.inner.refreshed_at.lock();
            *at = (*at).max(started);
        }
        self.inner.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    fn install(&self, poll: Poll) -> Arc<Poll> {
        let poll = Arc::new(poll);
        {
            let mut polls = self.inner.polls.write();
            let mut map = (**polls).clone();
            map.insert(poll.id, poll.clone());
            *polls = Arc::new(map);
        }
        {
            let mut ids = self.inner.ids.write();
            if let Err(at) = ids.binary_search(&poll.id) {
                Arc::make_mut(&mut *ids).insert(at, poll.id);
            }
        }
        self.inner.generation.send_modify(|g| *g += 1);
        poll
    }
}

fn sorted_ids(map: &Polls) -> Arc<Vec<PollId>> {
    let mut ids: Vec<PollId> = map.keys().copied().collect();
    ids.sort_unstable();
    Arc::new(ids)
}

fn new_slug() -> String {
    // Unambiguous characters for a code read off a TV screen.
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut x = Timestamp::now().micros() as u64
        ^ (std::process::id() as u64).rotate_left(32)
        ^ COUNTER.fetch_add(0x9E37_79B9, std::sync::atomic::Ordering::Relaxed);
    (0..6)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x1234_5678);

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Visibility;

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

    #[tokio::test]
    async fn polls_persist_and_closes_are_ordered_after_earlier_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        let catalog = PollCatalog::load(Arc::new(FilePollStore::open(&path).unwrap()))
            .await
            .unwrap();
        let a = catalog.create(poll).await.unwrap();
        let b = catalog.create(poll).await.unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_ne!(a.slug, b.slug);
        let (stamp, _) = catalog.stamp_and_get(1);
        let closed = catalog
            .update(1, |p, now| {
                p.closed_at = Some(now);
                Ok(())
            })
            .await
            .unwrap();
        assert!(closed.closed_at.unwrap() >= stamp);
        let err = catalog
            .update(1, |_, _| Err("already closed".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)));

        let again = PollCatalog::load(Arc::new(FilePollStore::open(&path).unwrap()))
            .await
            .unwrap();
        assert_eq!(again.get(1).unwrap().closed_at, closed.closed_at);
        assert_eq!(again.by_slug(&b.slug).unwrap().id, 2);
        assert_eq!(again.list().len(), 2);
    }

    #[tokio::test]
    async fn pages_go_newest_first_and_do_not_shift_when_polls_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polls.jsonl");
        let catalog = PollCatalog::load(Arc::new(FilePollStore::open(&path).unwrap()))
            .await
            .unwrap();
        for _ in 0..5 {
            catalog.create(poll).await.unwrap();
        }
        let ids = |page: &[Arc<Poll>]| page.iter().map(|p| p.id).collect::<Vec<_>>();
        let (first, more) = catalog.page(None, 2);
        assert_eq!((ids(&first), more), (vec![5, 4], true));
        catalog.create(poll).await.unwrap();
        let (second, more) = catalog.page(Some(4), 2);
        assert_eq!((ids(&second), more), (vec![3, 2], true));
        let (last, more) = catalog.page(Some(2), 2);
        assert_eq!((ids(&last), more), (vec![1], false));
        let (exact, more) = catalog.page(Some(3), 2);
        assert_eq!(
            (ids(&exact), more),
            (vec![2, 1], false),
            "no empty page after a full one"
        );
        assert_eq!(ids(&catalog.page(Some(1), 2).0), Vec::<PollId>::new());
        assert_eq!(ids(&catalog.page(Some(100), 1).0), vec![6]);
        assert_eq!(ids(&catalog.list()), vec![6, 5, 4, 3, 2, 1]);
    }
}
