//! Work in progress before new work: while the edge holds many votes between admission and their
//! answer, the node's listener stops reading new requests.
//!
//! On a saturated node a vote's handler, woken when the log has made its vote durable, waits for a
//! core behind every connection with a new request to read (tokio runs freshly readable
//! connections first; a wake from the log's writer thread goes to the global queue). Pausing the
//! reads lets the handlers answer; the requests wait in the kernel meanwhile, their receipt stamped,
//! and once reading resumes the ones that waited too long are shed cheaply
//! ([`crate::admission::WaitJudge`]).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};

pub struct ReadGate {
    /// Close at this many vote requests in flight (a batch is one; 0: never); open again at half.
    pause_at: usize,
    in_flight: AtomicUsize,
    closed: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
    /// Times the gate closed.
    pub pauses: AtomicU64,
}

impl ReadGate {
    pub fn new(pause_at: usize) -> Self {
        Self {
            pause_at,
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
            pauses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.pause_at > 0
    }

    /// Ready while reads may go on; otherwise the read waits for the gate to open.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.closed.load(Relaxed) {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.lock();
        if !self.closed.load(Relaxed) {
            return Poll::Ready(());
        }
        waiting.push(cx.waker().clone());
        Poll::Pending
    }

    /// A vote request was admitted.
    pub fn enter(&self) {
        if self.pause_at > 0 {
            self.update(self.in_flight.fetch_add(1, Relaxed) + 1);
        }
    }

    /// An admitted vote request was answered.
    pub fn leave(&self) {
        if self.pause_at > 0 {
            self.update(self.in_flight.fetch_sub(1, Relaxed).saturating_sub(1));
        }
    }

    /// The requests in flight changed to `in_flight`.
    fn update(&self, in_flight: usize) {
        if self.pause_at == 0 {
            return;
        }
        let closed = self.closed.load(Relaxed);
        if !closed && in_flight >= self.pause_at {
            self.closed.store(true, Relaxed);
            self.pauses.fetch_add(1, Relaxed);
        } else if closed && in_flight <= self.pause_at / 2 {
            let woken = {
                let mut waiting = self.waiting.lock();
                self.closed.store(false, Relaxed);
                std::mem::take(&mut *waiting)
            };
            for waker in woken {
                waker.wake();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn reads_pause_at_the_bound_and_resume_at_half() {
        let gate = ReadGate::new(100);
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..99 {
            gate.enter();
        }
        assert!(gate.poll_open(&mut cx).is_ready());
        gate.enter();
        assert!(gate.poll_open(&mut cx).is_pending());
        assert!(gate.poll_open(&mut cx).is_pending());
        for _ in 0..49 {
            gate.leave();
        }
        assert!(gate.is_closed(), "open again only at half");
        assert_eq!(woken.0.load(Relaxed), 0);
        gate.leave();
        assert!(!gate.is_closed());
        assert_eq!(woken.0.load(Relaxed), 2, "every waiting read is woken");
        assert!(gate.poll_open(&mut cx).is_ready());
        assert_eq!(gate.pauses.load(Relaxed), 1);
    }

    #[test]
    fn a_zero_bound_never_pauses() {
        let gate = ReadGate::new(0);
        for _ in 0..1_000 {
            gate.enter();
        }
        assert!(!gate.is_closed());
    }
}
