//! Work in progress before new work: while the edge holds many votes waiting for the log, the
//! node's listener reads no new request.
//!
//! On a saturated node a vote's handler, woken when the log has made its vote durable, waits for a
//! core behind every connection with a new request to read (tokio runs freshly readable
//! connections first; a wake from the log's writer thread goes to the global queue). Pausing the
//! reads that start requests lets the handlers answer; the new requests wait in the kernel
//! meanwhile, their receipt stamped, and once reading resumes the ones that waited too long are
//! shed cheaply (`ingest::admission::WaitJudge`).
//!
//! Only appends count ([`ReadGate::hold`]), and a pause never lasts longer than the listener lets
//! it ([`ReadGate::expire`]): a stalled log cannot stop a node from answering its probes.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub struct ReadGate {
    /// Close at this many appends in flight (0: never); open again at half.
    pause_at: usize,
    in_flight: AtomicUsize,
    closed: AtomicBool,
    epoch: Instant,
    /// When the gate last closed (µs since `epoch`).
    closed_at: AtomicU64,
    /// Counts openings: a connection registers its waker once per closing.
    generation: AtomicU64,
    waiting: Mutex<Vec<Waker>>,
    /// Times the gate closed.
    pub pauses: AtomicU64,
    /// Times a pause ran out before half the appends were answered.
    pub pauses_cut_short: AtomicU64,
}

/// An append in flight; dropping it counts it answered.
pub struct Hold<'a>(&'a ReadGate);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl ReadGate {
    pub fn new(pause_at: usize) -> Self {
        Self {
            pause_at,
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            closed_at: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            pauses: AtomicU64::new(0),
            pauses_cut_short: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.pause_at > 0
    }

    /// Ready while requests may be read; otherwise the read waits for the gate to open.
    /// `registered` is the connection's own slot: its waker is kept once per closing, however
    /// often the read is polled meanwhile.
    pub fn poll_open(&self, cx: &mut Context<'_>, registered: &mut u64) -> Poll<()> {
        if !self.closed.load(SeqCst) {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.lock();
        // Opening happens under the same lock: a waker kept here is one it wakes.
        if !self.closed.load(SeqCst) {
            return Poll::Ready(());
        }
        let closing = self.generation.load(SeqCst) + 1;
        if *registered != closing {
            waiting.push(cx.waker().clone());
            *registered = closing;
        }
        Poll::Pending
    }

    /// Counts an append in flight until the returned guard drops.
    pub fn hold(&self) -> Option<Hold<'_>> {
        if self.pause_at == 0 {
            return None;
        }
        if self.in_flight.fetch_add(1, SeqCst) + 1 >= self.pause_at && !self.closed.load(SeqCst) {
            self.close();
        }
        Some(Hold(self))
    }

    fn leave(&self) {
        let now = self.in_flight.fetch_sub(1, SeqCst).saturating_sub(1);
        if now <= self.pause_at / 2 && self.closed.load(SeqCst) {
            self.open(false);
        }
    }

    fn close(&self) {
        {
            let _transition = self.waiting.lock();
            if self.closed.load(SeqCst) {
                return;
            }
            self.closed_at
                .store(self.epoch.elapsed().as_micros() as u64, SeqCst);
            self.closed.store(true, SeqCst);
            self.pauses.fetch_add(1, Relaxed);
        }
        // The answers may all have come while this closed (a leave that read `closed` before the
        // store did not open): look again after the store, so the gate is never left closed with
        // nothing in flight to open it (SeqCst on both sides: one of the two sees the other).
        if self.in_flight.load(SeqCst) <= self.pause_at / 2 {
            self.open(false);
        }
    }

    fn open(&self, force: bool) {
        let woken = {
            let mut waiting = self.waiting.lock();
            if !self.closed.load(SeqCst)
                || (!force && self.in_flight.load(SeqCst) > self.pause_at / 2)
            {
                return;
            }
            self.closed.store(false, SeqCst);
            self.generation.fetch_add(1, SeqCst);
            std::mem::take(&mut *waiting)
        };
        for waker in woken {
            waker.wake();
        }
    }

    /// Opens a gate that has been closed longer than `max` (the listener calls it on a tick).
    pub fn expire(&self, max: Duration) {
        if self.closed.load(SeqCst)
            && (self.epoch.elapsed().as_micros() as u64).saturating_sub(self.closed_at.load(SeqCst))
                > max.as_micros() as u64
        {
            self.pauses_cut_short.fetch_add(1, Relaxed);
            self.open(true);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Appends counted in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn reads_pause_at_the_bound_and_resume_at_half() {
        let gate = ReadGate::new(100);
        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut slot = 0;
        let mut held: Vec<_> = (0..99).map(|_| gate.hold().unwrap()).collect();
        assert!(gate.poll_open(&mut cx, &mut slot).is_ready());
        held.push(gate.hold().unwrap());
        assert!(gate.poll_open(&mut cx, &mut slot).is_pending());
        // Polled again while closed: the waker is kept once.
        assert!(gate.poll_open(&mut cx, &mut slot).is_pending());
        held.truncate(51);
        assert!(gate.is_closed(), "open again only at half");
        assert_eq!(woken.0.load(Relaxed), 0);
        held.pop();
        assert!(!gate.is_closed());
        assert_eq!(woken.0.load(Relaxed), 1, "the waiting read is woken, once");
        assert!(gate.poll_open(&mut cx, &mut slot).is_ready());
        assert_eq!(gate.pauses.load(Relaxed), 1);
        // The next closing keeps the waker again.
        held.extend((0..50).map(|_| gate.hold().unwrap()));
        assert!(gate.poll_open(&mut cx, &mut slot).is_pending());
        drop(held);
        assert_eq!(woken.0.load(Relaxed), 2);
    }

    #[test]
    fn a_pause_never_outlasts_its_limit() {
        let gate = ReadGate::new(1);
        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut slot = 0;
        let held = gate.hold().unwrap();
        assert!(gate.poll_open(&mut cx, &mut slot).is_pending());
        gate.expire(Duration::from_secs(60));
        assert!(gate.is_closed(), "not yet");
        std::thread::sleep(Duration::from_millis(20));
        gate.expire(Duration::from_millis(10));
        assert!(
            !gate.is_closed(),
            "the append still holds, but the pause ran out"
        );
        assert_eq!(woken.0.load(Relaxed), 1);
        assert_eq!(gate.pauses_cut_short.load(Relaxed), 1);
        drop(held);
        assert!(!gate.is_closed());
    }

    /// Appends starting and ending on many threads at once: when all are answered, the gate is
    /// open (never left closed with nothing in flight to open it).
    #[test]
    fn the_gate_is_open_once_everything_is_answered() {
        let mut paused = 0;
        for _ in 0..50 {
            let gate = Arc::new(ReadGate::new(2));
            // All four hold at once first (over the bound of 2: the gate closes), then race.
            let together = Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (gate, together) = (gate.clone(), together.clone());
                    std::thread::spawn(move || {
                        let first = gate.hold();
                        together.wait();
                        drop(first);
                        for _ in 0..2_000 {
                            drop(gate.hold());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!gate.is_closed());
            paused += gate.pauses.load(Relaxed);
        }
        assert!(paused > 0, "the gate closed and opened along the way");
    }

    #[test]
    fn a_zero_bound_never_pauses() {
        let gate = ReadGate::new(0);
        assert!(gate.hold().is_none());
        assert!(!gate.is_closed());
    }
}
