//! Group commit: one writer thread takes every request waiting at that moment, writes them
//! together (one write and at most one fsync per file), then answers them all, so concurrent
//! writers share an fsync instead of queueing for one each.
//!
//! The embedded log ([`crate::embedded_log`]) and the old API's account, session and vote files
//! (`seed_api::store`) both write through [`spawn`]; each says in its [`Commit`] what a group is.

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

/// Starts the writer thread `name`: it gathers the requests waiting on `queue` (at least one, up
/// to `max_group` bytes) and hands them to `writer` as one group, until every sender is dropped.
pub fn spawn<C: Commit>(
    name: &str,
    mut writer: C,
    mut queue: impl Queue<C::Request>,
    max_group: usize,
) -> std::io::Result<()> {
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(move || {
            let mut group = Vec::new();
            while let Some(first) = queue.next_blocking() {
                let mut size = C::size(&first);
                group.push(first);
                while size < max_group {
                    let Some(request) = queue.next_waiting() else {
                        break;
                    };
                    size += C::size(&request);
                    group.push(request);
                }
                writer.commit(&mut group);
                group.clear();
            }
            tracing::debug!(writer = thread, "writer stopped: every sender is gone");
        })?;
    Ok(())
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
        spawn("test-writer", Groups(seen.clone()), rx, 35).unwrap();
        for answer in answers {
            answer.await.unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![4, 4, 2]);
        drop(tx);
    }
}
