//! A connection's wait for its next request's head, bounded by a watch of its own instead of a
//! timer for every request.
//!
//! hyper's `header_read_timeout` arms a boxed tokio timer each time a connection starts to read a
//! request's head, and drops it when the head has come: for a single vote on a kept-alive
//! connection, a clock read, an allocation, and the timer wheel's lock taken to register it and
//! again to deregister it (hyper also polls the connection's read once more after each head, to
//! start the next timer). Here the connection counts what it does ([`Activity`]: requests begun and
//! answered, writes, a write waiting for room), and one interval of its own, ticking every half
//! timeout, looks at the counts ([`IdleJudge`]). A connection with no request in flight and no
//! write waiting that began no request and wrote nothing through two whole ticks is closed: its
//! wait for a head (a client that says nothing, or sends its headers at a trickle, or a kept-alive
//! connection left idle) ends between one and one and a half timeouts after its last activity. A
//! request is in flight until its answer is made, or, for an answer written in pieces, until its
//! last piece (`http_connection.rs`, `AnsweredAtEnd`); it is bounded elsewhere (its body by the
//! body read timeout, its answer's writes by the write-stall timeout).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// What a connection has done, counted as it goes; read by its watch (wrapping counters: only
/// whether they changed matters).
#[derive(Default)]
pub(super) struct Activity {
    begun: AtomicU32,
    answered: AtomicU32,
    writes: AtomicU32,
    write_waiting: AtomicBool,
}

impl Activity {
    /// A request's head has come (the service is called with it).
    pub(super) fn request_begun(&self) {
        self.begun.fetch_add(1, Ordering::Relaxed);
    }

    /// The oldest request in flight has its whole answer (made, or its last piece given to hyper).
    pub(super) fn request_answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// A write ended: `moved` bytes or not (an error); none is waiting for room now.
    pub(super) fn write_ended(&self, moved: bool) {
        if moved {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        self.write_waiting.store(false, Ordering::Relaxed);
    }

    /// A write waits for the client to make room (bounded by the write-stall timeout, not here).
    pub(super) fn write_blocked(&self) {
        self.write_waiting.store(true, Ordering::Relaxed);
    }

    fn counts(&self) -> Counts {
        Counts {
            begun: self.begun.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            write_waiting: self.write_waiting.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    begun: u32,
    answered: u32,
    writes: u32,
    write_waiting: bool,
}

/// Whether a connection looked at every tick has been idle through two whole ticks (pure).
#[derive(Debug, Default)]
struct IdleJudge {
    last: Option<Counts>,
    quiet_ticks: u8,
}

impl IdleJudge {
    /// Looks at the counts of a tick; true once the connection has had no request in flight, no
    /// write waiting and nothing counted through the two ticks before this one and up to it.
    fn idle_through_two_ticks(&mut self, now: Counts) -> bool {
        let waiting = now.begun == now.answered && !now.write_waiting;
        if waiting && self.last == Some(now) {
            self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        } else {
            self.quiet_ticks = 0;
        }
        self.last = Some(now);
        self.quiet_ticks >= 2
    }
}

/// Returns once the connection counted by `activity` has waited for a request's head (with none
/// in flight) for at least `timeout`, and at most one and a half of it; never, while it is busy.
pub(super) async fn idle_past(activity: &Activity, timeout: Duration) {
    let period = timeout / 2;
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut judge = IdleJudge::default();
    judge.idle_through_two_ticks(activity.counts());
    loop {
        ticks.tick().await;
        if judge.idle_through_two_ticks(activity.counts()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(begun: u32, answered: u32, writes: u32) -> Counts {
        Counts {
            begun,
            answered,
            writes,
            write_waiting: false,
        }
    }

    #[test]
    fn a_connection_idle_through_two_ticks_is_idle_and_any_activity_starts_over() {
        let mut judge = IdleJudge::default();
        assert!(!judge.idle_through_two_ticks(counts(0, 0, 0)));
        assert!(!judge.idle_through_two_ticks(counts(0, 0, 0)));
        assert!(judge.idle_through_two_ticks(counts(0, 0, 0)));

        let mut judge = IdleJudge::default();
        for now in [
            counts(1, 1, 1),
            counts(1, 1, 1),
            counts(2, 2, 2),
            counts(2, 2, 2),
        ] {
            assert!(!judge.idle_through_two_ticks(now), "{now:?}");
        }
        assert!(judge.idle_through_two_ticks(counts(2, 2, 2)));
        // A write alone (a long answer drained slowly) is activity too.
        let mut judge = IdleJudge::default();
        for now in [
            counts(1, 1, 1),
            counts(1, 1, 1),
            counts(1, 1, 2),
            counts(1, 1, 2),
        ] {
            assert!(!judge.idle_through_two_ticks(now), "{now:?}");
        }
    }

    #[test]
    fn a_request_in_flight_or_a_write_waiting_is_never_idle() {
        let mut judge = IdleJudge::default();
        for _ in 0..10 {
            assert!(!judge.idle_through_two_ticks(counts(3, 2, 7)));
        }
        let blocked = Counts {
            write_waiting: true,
            ..counts(3, 3, 7)
        };
        for _ in 0..10 {
            assert!(!judge.idle_through_two_ticks(blocked));
        }
    }

    /// In the listener: a request in flight longer than the timeout is answered, an answer
    /// written in pieces with pauses longer than it is written whole, and the connection is
    /// closed once it has then waited a timeout for its next request (not before).
    #[tokio::test]
    async fn a_busy_connection_outlives_the_timeout_and_an_idle_one_does_not() {
        use crate::listener::tests::{start_within, Running};
        use crate::listener::{HttpLimits, Options};
        use axum::routing::get;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_millis(900)).await;
            "slow answer"
        }
        async fn trickle() -> axum::body::Body {
            // Pauses longer than the timeout: the answer is in flight until its last piece.
            let pieces = futures::stream::unfold(0, |i| async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                (i < 3).then(|| {
                    (
                        Ok::<_, std::convert::Infallible>(format!("piece {i};")),
                        i + 1,
                    )
                })
            });
            axum::body::Body::from_stream(pieces)
        }
        let router = axum::Router::new()
            .route("/slow", get(slow))
            .route("/trickle", get(trickle));
        let limits = HttpLimits {
            header_read_timeout_ms: 300,
            ..HttpLimits::default()
        };
        let Running {
            addr,
            metrics,
            stop: _stop,
            server,
        } = start_within(router, Options::default(), limits).await;

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for (request, last) in [
            ("/slow", "slow answer"),
            ("/trickle", "piece 2;\r\n0\r\n\r\n"),
        ] {
            let head = format!("GET {request} HTTP/1.1\r\nHost: x\r\n\r\n");
            client.write_all(head.as_bytes()).await.unwrap();
            got.clear();
            while !String::from_utf8_lossy(&got).contains(last) {
                let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                    .await
                    .expect("no answer")
                    .unwrap();
                assert!(
                    n > 0,
                    "closed while busy: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
        }
        let answered = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("an idle connection was never closed")
            .unwrap_or(0);
        let idle = answered.elapsed();
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
        assert!(
            idle >= Duration::from_millis(250) && idle < Duration::from_millis(1500),
            "closed {idle:?} after its last answer"
        );
        assert_eq!(metrics.header_timeouts.load(Ordering::Relaxed), 1);
        server.abort();
    }

    /// A head coming at a trickle does not hold a stopping node past the timeout: the watch runs
    /// on while the node lets a request in flight finish (without it, the node would wait for
    /// the request it has begun to read, up to the shutdown's grace period, 10 s).
    #[tokio::test]
    async fn a_stopping_node_does_not_wait_for_a_head_at_a_trickle() {
        use crate::listener::tests::{start_within, Running};
        use crate::listener::{HttpLimits, Options};
        use tokio::io::AsyncWriteExt;

        let limits = HttpLimits {
            header_read_timeout_ms: 1000,
            ..HttpLimits::default()
        };
        let Running {
            addr, stop, server, ..
        } = start_within(axum::Router::new(), Options::default(), limits).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stopping = Instant::now();
        stop.send(()).unwrap();
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            stopped = server => stopped.unwrap(),
            () = trickle => unreachable!(),
            () = tokio::time::sleep(Duration::from_secs(8)) => panic!("the node waited for the head"),
        }
        let took = stopping.elapsed();
        assert!(took < Duration::from_millis(1800), "stopped after {took:?}");
    }

    proptest! {
        /// Idle is said exactly when the last three looks saw the same counts with no request
        /// in flight and no write waiting.
        #[test]
        fn idle_is_three_equal_looks_with_nothing_in_flight(
            looks in proptest::collection::vec((0u32..3, 0u32..3, 0u32..2, proptest::bool::weighted(0.2)), 1..40)
        ) {
            let mut judge = IdleJudge::default();
            let looks: Vec<Counts> = looks
                .into_iter()
                .map(|(b, a, w, write_waiting)| Counts { write_waiting, ..counts(b, a, w) })
                .collect();
            for (i, &now) in looks.iter().enumerate() {
                let said = judge.idle_through_two_ticks(now);
                let expected = i >= 2
                    && looks[i - 2..=i].iter().all(|&c| c == now)
                    && now.begun == now.answered
                    && !now.write_waiting;
                prop_assert_eq!(said, expected, "look {} of {:?}", i, looks);
            }
        }
    }
}
