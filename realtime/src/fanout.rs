//! Where viewers are served: a runtime of its own, on threads of lower scheduling priority, so
//! the fan-out to thousands of viewers never starves the vote path.
//!
//! When a poll's feed publishes, every viewer of it has a frame to be written at once: on the
//! node's main runtime that is thousands of writes queued ahead of the next vote's request. Here
//! the sweeps that write them ([`crate::broadcast`]), each viewer's own task and each event
//! stream the listener serves (`edge::listener::Options::event_streams`: with or without hyper) run on
//! `realtime.fanout_threads` threads of their own, each lowered by `realtime.fanout_nice` (Linux
//! nice levels), so the kernel gives the vote path the cores first and the viewers what is left.
//! When what is left is not enough, viewers skip states (each sweep writes the newest frame), so
//! they fall behind by frames, never by a queue.

use std::future::Future;
use tokio::runtime::{Handle, Runtime};

/// The name of the viewers' runtime's threads (what `/proc/PID/task/*/comm` shows).
pub const THREAD_NAME: &str = "fanout";

/// The viewers' runtime; shut down (without waiting) when dropped.
pub struct Fanout {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Fanout {
    /// A runtime of `threads` worker threads, each at `nice` (0: the process's own priority).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(THREAD_NAME)
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Serves viewers on the caller's runtime (tests, tools).
    pub fn current() -> Self {
        Self {
            runtime: None,
            handle: Handle::current(),
        }
    }

    /// The runtime of its own, if it has one (not [`Fanout::current`]): where a viewer's socket
    /// is registered.
    pub fn separate(&self) -> Option<&Handle> {
        self.runtime.as_ref().map(|_| &self.handle)
    }

    /// The runtime, for work spawned from elsewhere (the listener's event streams).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn spawn<F>(&self, viewer: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(viewer));
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority by `nice` levels (Linux: each thread has its own).
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: getpriority and setpriority take plain integers and touch no memory of ours;
    // `who` 0 is the calling thread on Linux.
    let rc = unsafe {
        let own = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (own + nice).min(19))
    };
    if rc != 0 {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "cannot lower the fan-out threads' priority; viewers compete with votes for the cores"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_threads_run_at_the_lower_priority() {
        let fanout = Fanout::new(1, 7).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        fanout.spawn(async move {
            // SAFETY: getpriority reads the calling thread's nice value.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            tx.send(nice).unwrap();
        });
        // SAFETY: as above.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            (own + 7).min(19)
        );
    }

    /// Viewers' sockets move only to a runtime of its own: on the caller's there is nothing to
    /// move them from.
    #[tokio::test]
    async fn only_a_runtime_of_its_own_is_where_sockets_move() {
        let own = Fanout::new(1, 0).unwrap();
        let there = own.separate().expect("a runtime of its own");
        assert_eq!(there.id(), own.handle().id());
        assert_ne!(there.id(), Handle::current().id());
        assert!(Fanout::current().separate().is_none());
        // Dropped off the caller's runtime, which a runtime's drop must not block.
        tokio::task::spawn_blocking(move || drop(own))
            .await
            .unwrap();
    }
}
