//! Rate limits that count votes, not requests (GCRA buckets from `governor`).
//!
//! - [`AddressLimiter`]: public votes per client address (a single vote costs one).
//! - [`VoteQuota`]: one aggregator's votes per second (a batch costs as many as it holds).

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why votes were refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the rate: retry after this many seconds (at least 1).
    RetryAfter(u32),
    /// More votes at once than the burst allows, ever: split them.
    LargerThanBurst { burst: u32 },
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let per_sec = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
    Some(Quota::per_second(per_sec).allow_burst(burst))
}

fn retry_after(wait: std::time::Duration) -> u32 {
    (wait.as_secs_f64().ceil() as u32).max(1)
}

/// Votes per second per client address, with a burst above it.
pub struct AddressLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    burst: u32,
    exempt_loopback: bool,
    checks: AtomicU64,
}

/// Past this many checks, buckets that are full again are forgotten (bounded memory under a spray
/// of addresses).
const FORGET_EVERY: u64 = 1 << 16;

impl AddressLimiter {
    /// `per_sec` 0: no limit.
    pub fn new(per_sec: u32, burst: u32, exempt_loopback: bool) -> Self {
        Self {
            limiter: quota(per_sec, burst).map(governor::RateLimiter::keyed),
            burst: burst.max(1),
            exempt_loopback,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes `votes` from `addr`'s bucket, or says when to come back.
    pub fn check(&self, addr: IpAddr, votes: u32) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if (self.exempt_loopback && addr.is_loopback()) || votes == 0 {
            return Ok(());
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(votes).expect("votes > 0");
        match limiter.check_key_n(&addr, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Refusal::RetryAfter(retry_after(
                not_until.wait_time_from(DefaultClock::default().now()),
            ))),
            Err(_) => Err(Refusal::LargerThanBurst { burst: self.burst }),
        }
    }
}

/// One caller's votes per second (an aggregator's quota).
pub struct VoteQuota {
    limiter: Option<DefaultDirectRateLimiter>,
    burst: u32,
}

impl VoteQuota {
    /// `per_sec` 0: unlimited.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            limiter: quota(per_sec, burst).map(governor::RateLimiter::direct),
            burst: burst.max(1),
        }
    }

    pub fn check(&self, votes: u32) -> Result<(), Refusal> {
        let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(votes)) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Refusal::RetryAfter(retry_after(
                not_until.wait_time_from(DefaultClock::default().now()),
            ))),
            Err(_) => Err(Refusal::LargerThanBurst { burst: self.burst }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_spends_votes_not_requests() {
        let rl = AddressLimiter::new(1, 10, true);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(rl.check(a, 6).is_ok());
        assert!(rl.check(a, 4).is_ok());
        assert!(matches!(rl.check(a, 1), Err(Refusal::RetryAfter(n)) if n >= 1));
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(rl.check(other, 1).is_ok(), "buckets are per address");
        assert_eq!(
            rl.check(other, 11),
            Err(Refusal::LargerThanBurst { burst: 10 })
        );
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            (0..100).all(|_| rl.check(local, 1).is_ok()),
            "loopback exempt"
        );
        let strict = AddressLimiter::new(1, 1, false);
        assert!(strict.check(local, 1).is_ok());
        assert!(strict.check(local, 1).is_err(), "exemption is a setting");
        let off = AddressLimiter::new(0, 1, false);
        assert!((0..100).all(|_| off.check(a, 5).is_ok()), "0 turns it off");
    }

    #[test]
    fn a_quota_counts_every_vote_of_a_batch() {
        let q = VoteQuota::new(100, 1_000);
        assert!(q.check(600).is_ok());
        assert!(q.check(400).is_ok());
        assert!(matches!(q.check(50), Err(Refusal::RetryAfter(1))));
        assert_eq!(
            q.check(1_001),
            Err(Refusal::LargerThanBurst { burst: 1_000 })
        );
        assert!(VoteQuota::new(0, 0).check(1_000_000).is_ok());
    }
}
