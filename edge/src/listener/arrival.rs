//! When a request's bytes reached this machine, as the kernel stamped them on receipt.
//!
//! A vote that arrives while the node has no core free waits in its socket's receive queue until
//! the connection's task runs: that wait is invisible to the handler's own clock, and it is where
//! an overloaded edge spends its time (thousands of requests waiting for a core, not for the log).
//! The node's listener asks the kernel for receive timestamps and records, per connection, the
//! receipt time of the latest bytes it read; handlers find it in the request's
//! [`ConnectionContext`](super::ConnectionContext) and judge the request by how long it waited
//! (`ingest::admission::WaitJudge`). The stamp becomes a monotonic instant when it is read, and
//! each stamp is taken by one request only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The process's reference for arrivals (monotonic: a step of the wall clock after a read does
/// not change a wait).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// Arrivals are kept as µs since `EPOCH` plus this, so bytes that arrived before the epoch was
/// taken (up to 12 days before) still have a place.
const OFFSET_US: u64 = 1 << 40;

/// µs since `EPOCH`, plus `OFFSET_US`.
fn now_us() -> u64 {
    Instant::now().saturating_duration_since(*EPOCH).as_micros() as u64 + OFFSET_US
}

/// When the latest bytes read on a connection reached the kernel, not yet taken by a request
/// (shared by the socket's owner, which records it, and the connection's requests, which take
/// it).
#[derive(Debug, Clone, Default)]
pub struct Arrival(Arc<AtomicU64>);

impl Arrival {
    /// Records bytes the kernel received at `unix_micros` (its wall clock), read now: kept as the
    /// monotonic instant that is that long ago.
    pub fn record(&self, unix_micros: u64) {
        let now = now_us();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let age = wall.saturating_sub(unix_micros).min(OFFSET_US - 1);
        self.0.store(now - age, Ordering::Relaxed);
    }

    /// How long ago the latest bytes arrived, once: a request that no new read brought in (one
    /// pipelined behind another, already in the server's buffer) finds `None` and is not judged
    /// by a wait that was not its own. `None` too when nothing was stamped.
    pub fn waited(&self) -> Option<Duration> {
        if self.0.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let at = self.0.swap(0, Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        Some(Duration::from_micros(now_us().saturating_sub(at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_micros(at: SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
    }

    #[test]
    fn the_wait_counts_from_the_recorded_receipt_and_is_taken_once() {
        let arrival = Arrival::default();
        assert_eq!(arrival.waited(), None);
        arrival.record(unix_micros(SystemTime::now() - Duration::from_millis(250)));
        let waited = arrival.waited().unwrap();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // The next request on the connection came in with no new read: no wait of its own.
        assert_eq!(arrival.waited(), None);
        // A stamp ahead of this clock (clocks are not perfectly ordered) is no wait, not a panic.
        arrival.record(unix_micros(SystemTime::now() + Duration::from_secs(60)));
        assert!(arrival.waited().unwrap() < Duration::from_secs(1));
    }
}
