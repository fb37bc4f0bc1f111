//! The seed API's rate limits (governor's GCRA limiters), refused as DRF refuses a throttled
//! request: `429 {"detail": "Request was throttled. Expected available in N seconds."}` with
//! `Retry-After: N` ([`DrfError::throttled`]).
//!
//! - Poll creation: per user ([`SeedLimits::polls_per_user_per_minute`]) and for all users
//!   together ([`SeedLimits::polls_per_minute`]). The user's limit is checked first, so a user who
//!   is over it takes nothing from everyone's.
//! - Registrations and votes (HTTP and WebSocket): per client address (the connection's peer; IPv6
//!   by its /64, which one client usually holds whole), checked before the body is read. Loopback
//!   clients are exempt when [`SeedLimits::limits_exempt_loopback`] (local tools, a sidecar proxy,
//!   the Locust scenario).
//!
//! Every limit is off when its rate is 0. Idle keys are forgotten now and then, so the keyed
//! limiters hold only recent clients.

use super::auth::UserId;
use super::drf::DrfError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rate limits of the seed API (`[seed]` in the configuration); over one the answer is DRF's `429
/// {"detail": "Request was throttled. Expected available in N seconds."}` with `Retry-After`.
/// 0 turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SeedLimits {
    /// Polls one user may create per minute (also the burst).
    pub polls_per_user_per_minute: u32,
    /// Polls all users together may create per minute (also the burst). Sized so the old API's
    /// own Locust scenario at 1,000 users (about 50 creations/s) stays under it.
    pub polls_per_minute: u32,
    /// Registrations per client address per minute (also the burst).
    pub registrations_per_address_per_minute: u32,
    /// Votes (HTTP and WebSocket) per client address per second…
    pub votes_per_address_per_sec: u32,
    /// …with this burst.
    pub votes_per_address_burst: u32,
    /// Loopback clients (local tools, a sidecar proxy) are exempt from the per-address limits.
    pub limits_exempt_loopback: bool,
}

impl Default for SeedLimits {
    fn default() -> Self {
        Self {
            polls_per_user_per_minute: 10,
            polls_per_minute: 3_000,
            registrations_per_address_per_minute: 10,
            votes_per_address_per_sec: 20,
            votes_per_address_burst: 40,
            limits_exempt_loopback: true,
        }
    }
}

/// Every this many checks of a keyed limiter, its idle keys are dropped.
const PRUNE_EVERY: u64 = 4096;

/// The seed API's limiters (see the module docs).
pub struct Throttles {
    polls_per_user: Option<Keyed<UserId>>,
    polls: Option<DefaultDirectRateLimiter>,
    registrations: Option<Keyed<IpAddr>>,
    votes: Option<Keyed<IpAddr>>,
    exempt_loopback: bool,
    clock: DefaultClock,
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K, clock: &DefaultClock) -> Result<(), DrfError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| DrfError::throttled(not_until.wait_time_from(clock.now())))
    }
}

fn per_minute(n: u32) -> Option<Quota> {
    NonZeroU32::new(n).map(Quota::per_minute)
}

impl Throttles {
    pub fn new(config: &SeedLimits) -> Self {
        let votes = NonZeroU32::new(config.votes_per_address_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.votes_per_address_burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        Self {
            polls_per_user: per_minute(config.polls_per_user_per_minute).map(Keyed::new),
            polls: per_minute(config.polls_per_minute).map(RateLimiter::direct),
            registrations: per_minute(config.registrations_per_address_per_minute).map(Keyed::new),
            votes: votes.map(Keyed::new),
            exempt_loopback: config.limits_exempt_loopback,
            clock: DefaultClock::default(),
        }
    }

    /// One poll creation by `user`.
    pub fn poll_creation(&self, user: UserId) -> Result<(), DrfError> {
        if let Some(per_user) = &self.polls_per_user {
            per_user.check(&user, &self.clock)?;
        }
        if let Some(all) = &self.polls {
            all.check().map_err(|not_until| {
                DrfError::throttled(not_until.wait_time_from(self.clock.now()))
            })?;
        }
        Ok(())
    }

    /// One registration from `peer` (None: the address is not known; not limited).
    pub fn registration(&self, peer: Option<IpAddr>) -> Result<(), DrfError> {
        self.by_address(&self.registrations, peer)
    }

    /// One vote from `peer`.
    pub fn vote(&self, peer: Option<IpAddr>) -> Result<(), DrfError> {
        self.by_address(&self.votes, peer)
    }

    fn by_address(
        &self,
        limiter: &Option<Keyed<IpAddr>>,
        peer: Option<IpAddr>,
    ) -> Result<(), DrfError> {
        let (Some(limiter), Some(peer)) = (limiter, peer) else {
            return Ok(());
        };
        let key = client_key(peer);
        if self.exempt_loopback && key.is_loopback() {
            return Ok(());
        }
        limiter.check(&key, &self.clock)
    }
}

/// The key of a client address: IPv4 (also when mapped into IPv6) whole, IPv6 by its /64.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn config() -> SeedLimits {
        SeedLimits {
            polls_per_user_per_minute: 2,
            polls_per_minute: 3,
            registrations_per_address_per_minute: 1,
            votes_per_address_per_sec: 1,
            votes_per_address_burst: 2,
            limits_exempt_loopback: true,
        }
    }

    #[test]
    fn poll_creation_is_limited_per_user_then_for_everyone() {
        let t = Throttles::new(&config());
        assert!(t.poll_creation(1).is_ok());
        assert!(t.poll_creation(1).is_ok());
        let e = t.poll_creation(1).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(30));
        assert_eq!(
            e.body["detail"],
            "Request was throttled. Expected available in 30 seconds."
        );
        // User 1's refusal took nothing from the global budget (3): user 2 gets the third.
        assert!(t.poll_creation(2).is_ok());
        assert!(t.poll_creation(3).is_err(), "the global limit");
    }

    #[test]
    fn addresses_are_limited_apart_loopback_exempt_and_ipv6_by_its_64() {
        let t = Throttles::new(&config());
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        assert!(t.registration(Some(a)).is_ok());
        assert!(t.registration(Some(a)).is_err());
        assert!(t.registration(Some("203.0.113.6".parse().unwrap())).is_ok());
        assert!((0..10).all(|_| t.registration(Some("127.0.0.1".parse().unwrap())).is_ok()));
        assert!(t.registration(None).is_ok(), "unknown peer");
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        assert!(t.vote(Some(v6)).is_ok());
        assert!(t.vote(Some(v6)).is_ok());
        assert!(t
            .vote(Some("2001:db8:1:2:ffff::9".parse().unwrap()))
            .is_err());
        assert!(t.vote(Some("2001:db8:1:3::1".parse().unwrap())).is_ok());

        let strict = Throttles::new(&SeedLimits {
            limits_exempt_loopback: false,
            ..config()
        });
        let lo: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(strict.registration(Some(lo)).is_ok());
        assert!(strict.registration(Some(lo)).is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let t = Throttles::new(&SeedLimits {
            polls_per_user_per_minute: 0,
            polls_per_minute: 0,
            registrations_per_address_per_minute: 0,
            votes_per_address_per_sec: 0,
            ..config()
        });
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        assert!((0..100).all(|_| t.poll_creation(1).is_ok()
            && t.registration(Some(a)).is_ok()
            && t.vote(Some(a)).is_ok()));
    }
}
