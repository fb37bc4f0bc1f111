//! Per-address token buckets, sharded so two cores rarely meet on one lock; one check per request.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

const SHARDS: usize = 16;
/// Past this many tracked addresses in a shard, full (idle) buckets are forgotten.
const SHARD_SOFT_CAP: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    exempt_loopback: bool,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32, exempt_loopback: bool) -> Self {
        Self {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
            exempt_loopback,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token for `addr`; on refusal, the seconds until one is available.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u32> {
        if self.per_sec <= 0.0 || (self.exempt_loopback && addr.is_loopback()) {
            return Ok(());
        }
        let shard = &self.shards[shard_of(&addr)];
        let mut map = shard.lock();
        if map.len() > SHARD_SOFT_CAP {
            let (per_sec, burst) = (self.per_sec, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let b = map.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.per_sec).ceil().max(1.0) as u32)
        }
    }
}

fn shard_of(addr: &IpAddr) -> usize {
    let h = match addr {
        IpAddr::V4(a) => u32::from(*a) as u64,
        IpAddr::V6(a) => (u128::from(*a) ^ (u128::from(*a) >> 64)) as u64,
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(10, 3, true);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let t = Instant::now();
        assert!(rl.check(a, t).is_ok());
        assert!(rl.check(a, t).is_ok());
        assert!(rl.check(a, t).is_ok());
        assert_eq!(rl.check(a, t), Err(1));
        assert!(
            rl.check(a, t + Duration::from_millis(150)).is_ok(),
            "refilled at 10/s"
        );
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(rl.check(other, t).is_ok(), "buckets are per address");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            (0..100).all(|_| rl.check(local, t).is_ok()),
            "loopback exempt"
        );
    }
}
