//! Admission control: the edge sheds votes early (503 + `Retry-After`) instead of growing a queue.
//!
//! Four checks, all lock-free:
//! - how long the request waited for this node before its handler ran ([`WaitJudge`]): on an
//!   overloaded node the time goes to waiting for a core, not for the log, so the request's own
//!   wait (from the kernel's receipt of its bytes, [`crate::arrival`]) is the signal that sees it.
//!   This is the adaptive CoDel of request queues: while some request of the last interval waited
//!   less than the target, a request is shed only if it waited a whole interval; once none has
//!   for an interval (a queue stands), every request that waited more than the target is shed.
//!   A batch is shed only past a whole interval, and starts no run ([`WaitJudge::judge_batch`]).
//!   Clients told to retry later (`Retry-After`) go quiet and the queue before the handlers
//!   shortens. (It bounds the wait before a vote's handler, not the wait after its append for the
//!   handler to run again: BENCHMARKS.md, "shedding by the wait for a core".);
//! - a bound on votes in flight (accepted by the edge, not yet durable or refused), so memory and
//!   the log's queue stay bounded whatever the number of clients;
//! - a CoDel-style check on the log's queueing delay: every acknowledged append reports how long it
//!   waited; when even the *shortest* wait of a whole interval stayed above the target, the log has
//!   a standing queue, and new votes are shed until an interval's shortest wait is back under it.
//!   A burst that the log absorbs within an interval never sheds; only a queue that stands does.
//!   While shedding, the few appends still in flight keep reporting; if none report for two
//!   intervals, shedding ends (the queue has drained).
//! - off by default, a bound on the backlog once the node has shown it may be past its capacity:
//!   a read pause ([`edge::listener::read_gate`]) means the node held more appends than it
//!   answers promptly; from then on, votes are shed while `backlog_at` appends are in flight,
//!   until none was shed for `backlog_quiet`. Every vote a node past capacity accepts then waits
//!   behind few others, and the clients it sheds go quiet. But a burst within capacity on many
//!   connections pauses reads too, and the bound is near where such a node runs, so the rule can
//!   keep shedding what the node would carry (BENCHMARKS.md, "2026-12-06"): an operator's choice.
//!
//! Shed answers' `Retry-After` take 1, 2, … `retry_after_max_secs` seconds in turn
//! ([`Admission::retry_after_secs`]), so the clients shed together come back in smaller cohorts;
//! within the second, clients spread themselves (the web UI and the load generator wait
//! `Retry-After` times 1 to 2).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Admission settings (`[ingest]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Most votes in flight at once (0: no bound).
    pub max_in_flight_votes: usize,
    /// Target queueing delay of the log (0: no CoDel check).
    pub target_delay: Duration,
    /// The window over which the shortest delay must stay above the target to shed.
    pub interval: Duration,
    /// Target wait of a request for this node, from its bytes' receipt to its handler (0: not
    /// judged).
    pub wait_target: Duration,
    /// How long no request may have met `wait_target` before the node counts as overloaded; also
    /// the longest a request may wait when it is not.
    pub wait_interval: Duration,
    /// Stop reading new requests at this many appends in flight (a batch is one), until half are
    /// answered (0: never; [`crate::read_gate`]).
    pub pause_reads_at: usize,
    /// Once reads have paused, shed votes while this many appends are in flight, until none was
    /// shed for `backlog_quiet` (0: never; needs `pause_reads_at`, which counts the appends and
    /// pauses, and must be below it; see [`Admission::admit`]).
    pub backlog_at: usize,
    pub backlog_quiet: Duration,
    /// Shed answers' `Retry-After` spread evenly over 1..=this many seconds.
    pub retry_after_max_secs: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight_votes: 200_000,
            // A quarter of the default 2 s deadline: a queue that stands this long for a whole
            // second is one the edge should stop growing.
            target_delay: Duration::from_millis(500),
            interval: Duration::from_millis(1_000),
            wait_target: Duration::from_millis(10),
            wait_interval: Duration::from_millis(100),
            pause_reads_at: 1_000,
            // Off: measured to meet its aim at twice capacity, and to cost throughput near
            // capacity on many connections (BENCHMARKS.md, "2026-12-06").
            backlog_at: 0,
            backlog_quiet: Duration::from_millis(1_000),
            retry_after_max_secs: 3,
        }
    }
}

/// Why votes were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Too many votes in flight.
    InFlight,
    /// The log's queueing delay stood above its target for a whole interval.
    QueueDelay,
    /// The request waited too long for this node (see [`WaitJudge`]).
    Waited,
    /// After a read pause, `backlog_at` appends or more were in flight.
    Backlog,
}

pub struct Admission {
    config: AdmissionConfig,
    epoch: Instant,
    in_flight: AtomicUsize,
    shedding: AtomicBool,
    /// Start of the current interval, µs since `epoch`.
    interval_start: AtomicU64,
    /// Shortest wait seen in the current interval, µs (u64::MAX: none yet).
    interval_min: AtomicU64,
    /// When the last append reported, µs since `epoch`.
    last_report: AtomicU64,
    pub shed_in_flight: AtomicU64,
    pub shed_delay: AtomicU64,
    /// Read pauses seen by the backlog rule.
    backlog_pauses_seen: AtomicU64,
    /// While the backlog rule is on (from a read pause until none was shed for a quiet while):
    /// when it last shed or came on, µs since `epoch` (at least 1); 0 while it is off. One word,
    /// so turning it off cannot undo a pause or a shed noted meanwhile.
    backlog_last: AtomicU64,
    pub shed_backlog: AtomicU64,
    /// Shed answers so far, to spread their `Retry-After`.
    sheds: AtomicU64,
    pub wait: WaitJudge,
    pub read_gate: std::sync::Arc<edge::listener::ReadGate>,
}

/// Votes admitted; dropping it releases their places.
pub struct Permit<'a> {
    admission: &'a Admission,
    votes: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(self.votes, Relaxed);
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            shedding: AtomicBool::new(false),
            interval_start: AtomicU64::new(0),
            interval_min: AtomicU64::new(u64::MAX),
            last_report: AtomicU64::new(0),
            shed_in_flight: AtomicU64::new(0),
            shed_delay: AtomicU64::new(0),
            backlog_pauses_seen: AtomicU64::new(0),
            backlog_last: AtomicU64::new(0),
            shed_backlog: AtomicU64::new(0),
            sheds: AtomicU64::new(0),
            wait: WaitJudge::new(config.wait_target, config.wait_interval),
            read_gate: std::sync::Arc::new(edge::listener::ReadGate::new(config.pause_reads_at)),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Admits `votes`, or says why not.
    pub fn admit(&self, votes: usize, now: Instant) -> Result<Permit<'_>, Shed> {
        if self.shedding.load(Relaxed) {
            let idle = self
                .micros(now)
                .saturating_sub(self.last_report.load(Relaxed));
            if idle > 2 * self.config.interval.as_micros() as u64 {
                self.shedding.store(false, Relaxed);
            } else {
                self.shed_delay.fetch_add(votes as u64, Relaxed);
                return Err(Shed::QueueDelay);
            }
        }
        if self.backlog_stands(now) {
            self.shed_backlog.fetch_add(votes as u64, Relaxed);
            return Err(Shed::Backlog);
        }
        let before = self.in_flight.fetch_add(votes, Relaxed);
        let max = self.config.max_in_flight_votes;
        // A single request larger than the bound is still admitted when nothing else is in flight.
        if max > 0 && before > 0 && before + votes > max {
            self.in_flight.fetch_sub(votes, Relaxed);
            self.shed_in_flight.fetch_add(votes as u64, Relaxed);
            return Err(Shed::InFlight);
        }
        Ok(Permit {
            admission: self,
            votes,
        })
    }

    /// The backlog rule: a read pause means the node holds more appends than it answers promptly.
    /// From then on, votes are shed while `backlog_at` appends or more are in flight, until none
    /// was shed for `backlog_quiet`. Nothing when `backlog_at` is 0; otherwise a few relaxed loads
    /// per request, and a store only when the state changes (or once a millisecond while shedding).
    fn backlog_stands(&self, now: Instant) -> bool {
        let at = self.config.backlog_at;
        if at == 0 {
            return false;
        }
        let now_us = self.micros(now).max(1);
        let pauses = self.read_gate.pauses.load(Relaxed);
        if pauses != self.backlog_pauses_seen.load(Relaxed) {
            self.backlog_pauses_seen.store(pauses, Relaxed);
            self.backlog_last.store(now_us, Relaxed);
        }
        let last = self.backlog_last.load(Relaxed);
        if last == 0 {
            return false;
        }
        if self.read_gate.in_flight() >= at {
            if now_us > last + 1_000 {
                self.backlog_last.store(now_us, Relaxed);
            }
            return true;
        }
        if now_us.saturating_sub(last) > self.config.backlog_quiet.as_micros() as u64 {
            // Off, unless a pause or a shed was noted since `last` was read.
            let _ = self
                .backlog_last
                .compare_exchange(last, 0, Relaxed, Relaxed);
        }
        false
    }

    /// Whether the backlog rule is on at `now` (it goes off once none was shed for a quiet while,
    /// whether or not a vote came since).
    pub fn is_shedding_backlog(&self, now: Instant) -> bool {
        let last = self.backlog_last.load(Relaxed);
        last != 0
            && self.micros(now).saturating_sub(last) <= self.config.backlog_quiet.as_micros() as u64
    }

    /// The `Retry-After` of the next shed answer: 1, 2, … `retry_after_max_secs`, in turn, so the
    /// clients shed together do not all come back in the same second.
    pub fn retry_after_secs(&self) -> u32 {
        let max = self.config.retry_after_max_secs.max(1) as u64;
        1 + (self.sheds.fetch_add(1, Relaxed) % max) as u32
    }

    /// Reports how long an append waited for the log.
    pub fn observe(&self, waited: Duration, now: Instant) {
        if self.config.target_delay.is_zero() {
            return;
        }
        let now_us = self.micros(now);
        self.last_report.store(now_us, Relaxed);
        self.interval_min
            .fetch_min(waited.as_micros() as u64, Relaxed);
        let start = self.interval_start.load(Relaxed);
        if now_us.saturating_sub(start) < self.config.interval.as_micros() as u64 {
            return;
        }
        // One reporter closes the interval and judges it.
        if self
            .interval_start
            .compare_exchange(start, now_us, Relaxed, Relaxed)
            .is_ok()
        {
            let min = self.interval_min.swap(u64::MAX, Relaxed);
            let standing = min != u64::MAX && min > self.config.target_delay.as_micros() as u64;
            self.shedding.store(standing, Relaxed);
        }
    }

    pub fn is_shedding(&self) -> bool {
        self.shedding.load(Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }
}

/// Judges requests by how long they waited for this node (the adaptive CoDel of request queues:
/// Maurer, "Fail at Scale", ACM Queue 13(8), 2015).
pub struct WaitJudge {
    target_us: u64,
    interval_us: u64,
    epoch: Instant,
    /// When the current run of requests that waited past the target began, µs since `epoch`
    /// (0: the latest request met the target).
    first_long: AtomicU64,
    /// When a request last waited past the target, µs since `epoch` (kept to the millisecond).
    last_long: AtomicU64,
    /// Requests shed for their wait.
    pub shed: AtomicU64,
}

impl WaitJudge {
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target_us: target.as_micros() as u64,
            interval_us: interval.as_micros().max(1) as u64,
            epoch: Instant::now(),
            first_long: AtomicU64::new(0),
            last_long: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// Whether requests are judged at all.
    pub fn enabled(&self) -> bool {
        self.target_us > 0
    }

    fn micros(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_micros() as u64).max(1)
    }

    /// Judges a request that waited `waited` for the node, at `now`: `Err(Shed::Waited)` to
    /// shed it. Shared writes happen only when the state changes (or once a millisecond while
    /// requests wait long), not once per request.
    pub fn judge(&self, waited: Duration, now: Instant) -> Result<(), Shed> {
        if !self.enabled() {
            return Ok(());
        }
        if waited.as_micros() as u64 <= self.target_us {
            if self.first_long.load(Relaxed) != 0 {
                self.first_long.store(0, Relaxed);
            }
            return Ok(());
        }
        let now_us = self.micros(now);
        let last_long = self.last_long.load(Relaxed);
        if now_us > last_long + 1_000 {
            self.last_long.store(now_us, Relaxed);
        }
        let mut first = self.first_long.load(Relaxed);
        // A run of long waits starts here, or starts again after a quiet interval.
        if first == 0 || now_us.saturating_sub(last_long) > self.interval_us {
            self.first_long.store(now_us, Relaxed);
            first = now_us;
        }
        let standing = now_us.saturating_sub(first) > self.interval_us;
        let limit = if standing {
            self.target_us
        } else {
            self.interval_us
        };
        if waited.as_micros() as u64 > limit {
            self.shed.fetch_add(1, Relaxed);
            return Err(Shed::Waited);
        }
        Ok(())
    }

    /// Judges a batch request (up to thousands of votes, from an aggregator's few connections)
    /// that waited `waited`: shed only past a whole interval, and left out of the run of long
    /// waits that single votes are judged by. A node whose cores are all busy (a batch load keeps
    /// them so, by design) has batches waiting tens of milliseconds for a thread; under the
    /// single votes' target they were shed while their few connections formed no queue that could
    /// grow, and their clients waited out `Retry-After` with the node idle (BENCHMARKS.md,
    /// "2026-12-06 (seventh session)"). Batches are still bounded by the votes in flight and the
    /// log's queue delay, and a node that holds a batch a whole interval sheds it.
    pub fn judge_batch(&self, waited: Duration) -> Result<(), Shed> {
        if self.enabled() && waited.as_micros() as u64 > self.interval_us {
            self.shed.fetch_add(1, Relaxed);
            return Err(Shed::Waited);
        }
        Ok(())
    }

    /// Whether every request of the last interval waited past the target (a queue stands).
    pub fn is_overloaded(&self, now: Instant) -> bool {
        let now_us = self.micros(now);
        let first = self.first_long.load(Relaxed);
        self.enabled()
            && first != 0
            && now_us.saturating_sub(first) > self.interval_us
            && now_us.saturating_sub(self.last_long.load(Relaxed)) <= self.interval_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize) -> Admission {
        Admission::new(AdmissionConfig {
            max_in_flight_votes: max,
            target_delay: Duration::from_millis(10),
            interval: Duration::from_millis(100),
            wait_target: Duration::ZERO,
            wait_interval: Duration::from_millis(100),
            pause_reads_at: 0,
            backlog_at: 0,
            backlog_quiet: Duration::from_millis(100),
            retry_after_max_secs: 1,
        })
    }

    #[test]
    fn a_request_is_shed_for_its_wait_only_once_a_queue_stands() {
        let judge = WaitJudge::new(Duration::from_millis(10), Duration::from_millis(100));
        let t = judge.epoch;
        let ms = |n| Duration::from_millis(n);
        // A quiet node: the first long wait after a long idle time is not a standing queue.
        assert!(judge.judge(ms(60), t + ms(1_000)).is_ok());
        // Not overloaded: short waits pass, a long one passes up to the interval.
        assert!(judge.judge(ms(2), t + ms(1_005)).is_ok());
        assert!(judge.judge(ms(60), t + ms(1_010)).is_ok());
        assert_eq!(judge.judge(ms(150), t + ms(1_020)), Err(Shed::Waited));
        assert!(!judge.is_overloaded(t + ms(1_050)));
        // No request met the target for a whole interval: past the target is shed.
        assert!(judge.judge(ms(60), t + ms(1_090)).is_ok());
        assert!(judge.is_overloaded(t + ms(1_120)));
        assert_eq!(judge.judge(ms(11), t + ms(1_120)), Err(Shed::Waited));
        assert_eq!(judge.judge(ms(40), t + ms(1_130)), Err(Shed::Waited));
        // A request that met the target ends it.
        assert!(judge.judge(ms(3), t + ms(1_140)).is_ok());
        assert!(!judge.is_overloaded(t + ms(1_141)));
        assert!(judge.judge(ms(40), t + ms(1_150)).is_ok());
        // Quiet for longer than an interval: a new run of long waits starts over.
        assert!(judge.judge(ms(40), t + ms(1_160)).is_ok());
        assert!(judge.judge(ms(40), t + ms(1_400)).is_ok());
        assert!(!judge.is_overloaded(t + ms(1_401)));
        assert_eq!(judge.shed.load(Relaxed), 3);
    }

    #[test]
    fn a_batch_is_shed_for_its_wait_only_past_an_interval_and_starts_no_run() {
        let judge = WaitJudge::new(Duration::from_millis(10), Duration::from_millis(100));
        let t = judge.epoch;
        let ms = |n| Duration::from_millis(n);
        // Batches that waited long, for longer than an interval: none shed, no queue stands.
        for at in (1_000..1_300).step_by(20) {
            assert!(judge.judge_batch(ms(60)).is_ok());
            assert!(!judge.is_overloaded(t + ms(at)));
        }
        // So a single vote after them is judged as on a node with no run of long waits.
        assert!(judge.judge(ms(60), t + ms(1_300)).is_ok());
        // A standing queue of single votes sheds theirs past the target, a batch only past the
        // interval.
        assert!(judge.judge(ms(60), t + ms(1_390)).is_ok());
        assert!(judge.is_overloaded(t + ms(1_420)));
        assert_eq!(judge.judge(ms(40), t + ms(1_420)), Err(Shed::Waited));
        assert!(judge.judge_batch(ms(40)).is_ok());
        assert!(judge.judge_batch(ms(100)).is_ok());
        assert_eq!(judge.judge_batch(ms(101)), Err(Shed::Waited));
        assert_eq!(judge.shed.load(Relaxed), 2);
        let off = WaitJudge::new(Duration::ZERO, Duration::from_millis(100));
        assert!(off.judge_batch(Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn a_zero_target_judges_nothing() {
        let judge = WaitJudge::new(Duration::ZERO, Duration::from_millis(100));
        let t = judge.epoch;
        assert!(judge
            .judge(Duration::from_secs(30), t + Duration::from_secs(60))
            .is_ok());
        assert!(!judge.is_overloaded(t + Duration::from_secs(60)));
    }

    #[test]
    fn in_flight_votes_are_bounded_and_released() {
        let a = admission(100);
        let t = Instant::now();
        let p1 = a.admit(60, t).unwrap();
        assert_eq!(a.admit(50, t).err(), Some(Shed::InFlight));
        let p2 = a.admit(40, t).unwrap();
        assert_eq!(a.in_flight(), 100);
        drop(p1);
        drop(p2);
        assert_eq!(a.in_flight(), 0);
        let _big = a
            .admit(500, t)
            .expect("one oversized request alone is admitted");
    }

    #[test]
    fn a_standing_queue_sheds_and_a_burst_does_not() {
        let a = admission(0);
        let t = a.epoch;
        let ms = |n| Duration::from_millis(n);
        // A burst: long waits, but one short wait in the interval: no standing queue.
        a.observe(ms(50), t + ms(10));
        a.observe(ms(2), t + ms(50));
        a.observe(ms(80), t + ms(101));
        assert!(!a.is_shedding());
        assert!(a.admit(1, t + ms(102)).is_ok());
        // A standing queue: every wait of an interval above the target.
        for i in 0..10 {
            a.observe(ms(30 + i), t + ms(110 + i * 10));
        }
        a.observe(ms(40), t + ms(210));
        assert!(a.is_shedding());
        assert_eq!(a.admit(1, t + ms(211)).err(), Some(Shed::QueueDelay));
        // The queue drains: an interval with a short wait ends the shedding.
        a.observe(ms(1), t + ms(250));
        a.observe(ms(1), t + ms(320));
        assert!(!a.is_shedding());
        assert!(a.admit(1, t + ms(321)).is_ok());
    }

    #[test]
    fn shedding_ends_when_nothing_reports() {
        let a = admission(0);
        let t = a.epoch;
        let ms = |n| Duration::from_millis(n);
        a.observe(ms(50), t + ms(10));
        a.observe(ms(50), t + ms(110));
        assert!(a.is_shedding());
        assert!(a.admit(1, t + ms(150)).is_err());
        assert!(
            a.admit(1, t + ms(400)).is_ok(),
            "no reports for two intervals"
        );
    }

    #[test]
    fn after_a_read_pause_votes_are_shed_while_the_backlog_stands_until_a_quiet_while() {
        let a = Admission::new(AdmissionConfig {
            pause_reads_at: 8,
            backlog_at: 2,
            backlog_quiet: Duration::from_millis(100),
            retry_after_max_secs: 3,
            ..admission(0).config
        });
        let t = a.epoch;
        let ms = |n| Duration::from_millis(n);
        // Many appends in flight, but reads never paused: nothing is shed.
        let mut held: Vec<_> = (0..7).map(|_| a.read_gate.hold().unwrap()).collect();
        assert!(a.admit(1, t + ms(10)).is_ok());
        // A read pause: from now on, shed while 2 or more appends are in flight.
        held.push(a.read_gate.hold().unwrap());
        assert_eq!(a.read_gate.pauses.load(Relaxed), 1);
        assert_eq!(a.admit(1, t + ms(20)).err(), Some(Shed::Backlog));
        assert!(a.is_shedding_backlog(t + ms(20)));
        held.truncate(2);
        assert_eq!(a.admit(1, t + ms(60)).err(), Some(Shed::Backlog));
        // Below the bound: admitted, but the rule stays on until a quiet while has passed.
        held.truncate(1);
        assert!(a.admit(1, t + ms(100)).is_ok());
        assert!(a.is_shedding_backlog(t + ms(100)));
        held.push(a.read_gate.hold().unwrap());
        assert_eq!(a.admit(1, t + ms(150)).err(), Some(Shed::Backlog));
        held.truncate(1);
        assert!(a.admit(1, t + ms(200)).is_ok());
        assert!(
            !a.is_shedding_backlog(t + ms(251)),
            "none shed for 100 ms, no vote since"
        );
        assert!(a.admit(1, t + ms(251)).is_ok());
        assert!(!a.is_shedding_backlog(t + ms(252)));
        held.push(a.read_gate.hold().unwrap());
        assert!(
            a.admit(1, t + ms(260)).is_ok(),
            "off until the next read pause"
        );
        assert_eq!(a.shed_backlog.load(Relaxed), 3);
        // Shed answers' Retry-After take 1, 2, 3 s in turn.
        let secs: Vec<u32> = (0..6).map(|_| a.retry_after_secs()).collect();
        assert_eq!(secs, [1, 2, 3, 1, 2, 3]);
    }
}
