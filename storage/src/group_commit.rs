//! Group commit: one writer thread takes every request waiting at that moment, writes them
//! together (one write and at most one fsync per file), then answers them all, so concurrent
//! writers share an fsync instead of queueing for one each.
//!
//! Under load a writer can also commit at most once per [`Grouping::min_interval`]: a request that
//! comes sooner waits out the rest of it, so groups grow and the commits per second stay bounded
//! (each costs the node a write, an fsync and the wake-ups of its callers, about the same CPU
//! whatever it holds), at a cost of at most that interval to a request's latency. The wait ends
//! early once the [`Backlog`] holds enough bytes for a group (with many callers the groups then
//! come as fast as they fill), or after a quiet spell of a sixteenth of the interval in which no
//! request came (the callers are all waiting on this group). A few callers with one request in
//! flight each still pay about a spell per round trip: a setup like that wants no interval.
//!
//! The embedded log ([`crate::embedded_log`]) and the old API's account, session and vote files
//! (`seed_api::store`) both write through [`spawn`]; each says in its [`Commit`] what a group is.

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a writer does with one group of requests.
pub trait Commit: Send + 'static {
    type Request: Send + 'static;

    /// How much a request adds to a group (its bytes): a group stops growing at the bound
    /// [`spawn`] was given.
    fn size(request: &Self::Request) -> usize;

    /// Writes every request of `group` and answers each one (leaving `group` empty).
    fn commit(&mut self, group: &mut Vec<Self::Request>);
}

/// The queue a writer takes its requests from: tokio's bounded channel (a full queue is the
/// caller's to refuse: the embedded log answers 503) or its unbounded one (a request is queued the
/// moment it is made, so a caller that stops waiting still has it written: the old API's files).
pub trait Queue<T>: Send + 'static {
    /// The next request, waiting for one; `None` once every sender is gone.
    fn next_blocking(&mut self) -> Option<T>;
    /// The next request if one is waiting.
    fn next_waiting(&mut self) -> Option<T>;
}

impl<T: Send + 'static> Queue<T> for mpsc::Receiver<T> {
    fn next_blocking(&mut self) -> Option<T> {
        self.blocking_recv()
    }
    fn next_waiting(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T: Send + 'static> Queue<T> for mpsc::UnboundedReceiver<T> {
    fn next_blocking(&mut self) -> Option<T> {
        self.blocking_recv()
    }
    fn next_waiting(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// How a writer forms its groups.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// A group stops growing at this many bytes ([`Commit::size`]).
    pub max_bytes: usize,
    /// Groups are committed at most this often: a request that comes sooner after the last
    /// commit began waits out the rest of the interval, and the requests that come meanwhile join
    /// its group (zero: commit as soon as a request waits).
    pub min_interval: Duration,
    /// What the senders have queued, which ends that wait early (none: the interval alone).
    pub backlog: Option<Arc<Backlog>>,
}

/// The bytes queued for a writer with a commit interval, kept by its senders, and the writer to
/// wake once they are enough for a group: a sender calls [`Backlog::add`] once it has queued a
/// request; the writer takes off what it takes (the count may dip below zero for a moment, when
/// the writer takes a request before its sender adds it).
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicIsize,
    enough: isize,
    writer: OnceLock<Thread>,
}

impl Backlog {
    /// A backlog whose writer commits without waiting out its interval once `enough` bytes wait.
    pub fn new(enough: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicIsize::new(0),
            enough: isize::try_from(enough).unwrap_or(isize::MAX),
            writer: OnceLock::new(),
        })
    }

    /// A request of `bytes` was queued: wakes a waiting writer if that makes enough.
    pub fn add(&self, bytes: usize) {
        let bytes = bytes as isize;
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before < self.enough && before + bytes >= self.enough {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// The writer took a request of `bytes` from the queue.
    fn take(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes as isize, Ordering::AcqRel);
    }

    fn queued(&self) -> isize {
        self.bytes.load(Ordering::Acquire)
    }

    fn is_enough(&self) -> bool {
        self.queued() >= self.enough
    }
}

/// A wait for the commit interval ends once no request has come for this part of it.
const QUIET_PARTS: u32 = 16;

/// Starts the writer thread `name`: it gathers the requests waiting on `queue` (at least one, up
/// to `grouping.max_bytes`, no sooner than `grouping.min_interval` after the last group began)
/// and hands them to `writer` as one group, until every sender is dropped.
pub fn spawn<C: Commit>(
    name: &str,
    mut writer: C,
    mut queue: impl Queue<C::Request>,
    grouping: Grouping,
) -> std::io::Result<()> {
    let thread = name.to_owned();
    let Grouping {
        max_bytes,
        min_interval,
        backlog,
    } = grouping;
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(move || {
            if let Some(backlog) = &backlog {
                let _ = backlog.writer.set(std::thread::current());
            }
            let taken = |request: &C::Request| {
                let size = C::size(request);
                if let Some(backlog) = &backlog {
                    backlog.take(size);
                }
                size
            };
            let mut group = Vec::new();
            let mut last_began: Option<Instant> = None;
            while let Some(first) = queue.next_blocking() {
                if let Some(due) = last_began.and_then(|began| began.checked_add(min_interval)) {
                    // `first` still counts in the backlog: a big request alone is enough.
                    wait_until(due, backlog.as_deref(), min_interval / QUIET_PARTS);
                }
                last_began = Some(Instant::now());
                let mut size = taken(&first);
                group.push(first);
                while size < max_bytes {
                    let Some(request) = queue.next_waiting() else {
                        break;
                    };
                    size += taken(&request);
                    group.push(request);
                }
                writer.commit(&mut group);
                group.clear();
            }
            tracing::debug!(writer = thread, "writer stopped: every sender is gone");
        })?;
    Ok(())
}

/// Sleeps until `due`, or until the backlog holds enough for a group, or until a quiet spell of
/// `quiet` in which no request came: the callers are all waiting on this group (a few busy
/// connections, or a slow trickle), so waiting longer only delays it.
fn wait_until(due: Instant, backlog: Option<&Backlog>, quiet: Duration) {
    let Some(backlog) = backlog else {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        return;
    };
    let mut seen = backlog.queued();
    let mut spell_ends = Instant::now() + quiet;
    loop {
        let now = Instant::now();
        if now >= due || backlog.is_enough() {
            return;
        }
        if now >= spell_ends {
            let queued = backlog.queued();
            if queued == seen {
                return;
            }
            seen = queued;
            spell_ends = now + quiet;
        }
        // Woken early by `Backlog::add`; a spurious wake-up just looks again.
        std::thread::park_timeout(due.min(spell_ends) - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the size of each group it is given.
    struct Groups(Arc<Mutex<Vec<usize>>>);

    impl Commit for Groups {
        type Request = (usize, tokio::sync::oneshot::Sender<()>);
        fn size(request: &Self::Request) -> usize {
            request.0
        }
        fn commit(&mut self, group: &mut Vec<Self::Request>) {
            self.0.lock().unwrap().push(group.len());
            for (_, done) in group.drain(..) {
                let _ = done.send(());
            }
        }
    }

    #[tokio::test]
    async fn waiting_requests_form_one_group_up_to_the_bound() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(64);
        // Queue ten requests of 10 bytes before the writer starts: with a 35-byte bound they
        // form groups of 4, 4 and 2 (a group takes requests until it reaches the bound).
        let mut answers = Vec::new();
        for _ in 0..10 {
            let (done, answer) = tokio::sync::oneshot::channel();
            tx.send((10, done)).await.unwrap();
            answers.push(answer);
        }
        let grouping = Grouping {
            max_bytes: 35,
            min_interval: Duration::ZERO,
            backlog: None,
        };
        spawn("test-writer", Groups(seen.clone()), rx, grouping).unwrap();
        for answer in answers {
            answer.await.unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![4, 4, 2]);
        drop(tx);
    }

    /// A writer with a commit interval, started on `Groups`; `send` queues a request of `bytes`
    /// as `EmbeddedLog::append` does (counted in the backlog, if there is one, once queued).
    struct Interval {
        seen: Arc<Mutex<Vec<usize>>>,
        tx: mpsc::Sender<(usize, tokio::sync::oneshot::Sender<()>)>,
        backlog: Option<Arc<Backlog>>,
    }

    impl Interval {
        fn start(min_interval: Duration, backlog: Option<Arc<Backlog>>) -> Self {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = mpsc::channel(64);
            let grouping = Grouping {
                max_bytes: 1 << 20,
                min_interval,
                backlog: backlog.clone(),
            };
            spawn("test-writer", Groups(seen.clone()), rx, grouping).unwrap();
            Self { seen, tx, backlog }
        }

        fn send(&self, bytes: usize) -> tokio::sync::oneshot::Receiver<()> {
            let (done, answer) = tokio::sync::oneshot::channel();
            self.tx.try_send((bytes, done)).unwrap();
            if let Some(backlog) = &self.backlog {
                backlog.add(bytes);
            }
            answer
        }

        fn groups(&self) -> Vec<usize> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn under_load_a_group_waits_out_the_interval() {
        let interval = Duration::from_millis(300);
        let writer = Interval::start(interval, None);
        // The first request after a quiet spell is committed at once.
        let began = Instant::now();
        writer.send(10).await.unwrap();
        assert!(began.elapsed() < interval, "no wait after a quiet spell");
        // Five that come within the interval wait for it to end, and share one group.
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(writer.send(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for answer in answers {
            answer.await.unwrap();
        }
        assert!(began.elapsed() >= interval, "the second group waited");
        assert_eq!(writer.groups(), vec![1, 5]);
    }

    #[tokio::test]
    async fn enough_queued_ends_the_wait_early() {
        let writer = Interval::start(Duration::from_secs(30), Some(Backlog::new(30)));
        writer.send(10).await.unwrap();
        // The next group waits for its interval (30 s) or for 30 bytes queued.
        let began = Instant::now();
        let mut answers = vec![writer.send(10), writer.send(10)];
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(writer.groups().len(), 1, "20 bytes are not enough");
        answers.push(writer.send(10));
        for answer in answers {
            answer.await.unwrap();
        }
        assert_eq!(writer.groups(), vec![1, 3]);
        // One request big enough alone does not wait either.
        writer.send(40).await.unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "woken by the backlog"
        );
        assert_eq!(writer.groups(), vec![1, 3, 1]);
    }

    #[tokio::test]
    async fn a_quiet_spell_ends_the_wait_early() {
        let interval = Duration::from_secs(4);
        let writer = Interval::start(interval, Some(Backlog::new(1 << 20)));
        writer.send(10).await.unwrap();
        // Nobody else comes: the second request is committed after a quiet spell (a sixteenth
        // of the interval), not after the interval.
        let began = Instant::now();
        writer.send(10).await.unwrap();
        let waited = began.elapsed();
        assert!(waited >= interval / QUIET_PARTS, "waited {waited:?}");
        assert!(waited < interval / 2, "waited {waited:?}");
        assert_eq!(writer.groups(), vec![1, 1]);
    }
}
