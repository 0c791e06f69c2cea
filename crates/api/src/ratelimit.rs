//! Per-client rate limiting: an in-process token bucket per client.
//!
//! A client is the authenticated account (the Bearer token's subject) or,
//! for anonymous calls, the peer IP address (IPv6 addresses by their /64,
//! which is what one host usually gets). The peer is the TCP peer: behind a
//! proxy or load balancer every anonymous caller shares the proxy's bucket,
//! since forwarded headers are not trusted.
//!
//! Each bucket holds up to `burst` tokens and refills at `per_sec` tokens per
//! second; a request takes one token or is refused with the time until the
//! next token. A `per_sec` of 0 disables that limit. Limits are per process:
//! with N API processes a client gets up to N times the rate.
//!
//! Memory is bounded: a bucket that has refilled completely is the same as no
//! bucket, so such buckets are swept out once a minute, and when the table
//! still reaches [`MAX_CLIENTS`] the least recently seen half is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Most clients tracked at once.
pub const MAX_CLIENTS: usize = 100_000;

/// How often full (idle) buckets are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One limit: a burst and a sustained rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Bucket capacity: requests allowed at once after a quiet period.
    pub burst: u32,
    /// Tokens added per second; 0 disables the limit.
    pub per_sec: f64,
}

impl Limit {
    /// No limit.
    pub const DISABLED: Limit = Limit {
        burst: 1,
        per_sec: 0.0,
    };

    fn enabled(&self) -> bool {
        self.per_sec > 0.0 && self.per_sec.is_finite()
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// The limits for authenticated accounts and for anonymous IPs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Per account (Bearer token subject).
    pub account: Limit,
    /// Per anonymous peer IP.
    pub anonymous: Limit,
}

impl RateLimits {
    /// No limits at all (tests and embedding; see `Settings::for_database`).
    pub const DISABLED: RateLimits = RateLimits {
        account: Limit::DISABLED,
        anonymous: Limit::DISABLED,
    };
}

impl Default for RateLimits {
    /// Accounts: burst 100, 50/s. Anonymous: burst 30, 10/s.
    fn default() -> Self {
        Self {
            account: Limit {
                burst: 100,
                per_sec: 50.0,
            },
            anonymous: Limit {
                burst: 30,
                per_sec: 10.0,
            },
        }
    }
}

/// Who a request is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated account.
    Account(Uuid),
    /// An anonymous caller's address (IPv6 masked to its /64).
    Ip(IpAddr),
}

impl ClientKey {
    /// The key of an anonymous caller at `ip`.
    pub fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey::Ip(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::Ip(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey::Ip(IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<ClientKey, Bucket>,
    last_sweep: Instant,
}

/// The token buckets of every client seen recently.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    max_clients: usize,
    table: Mutex<Table>,
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self::with_capacity(limits, MAX_CLIENTS)
    }

    fn with_capacity(limits: RateLimits, max_clients: usize) -> Self {
        Self {
            limits,
            max_clients: max_clients.max(2),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes a token for `key`; `Err` carries the wait until one is available.
    pub fn check(&self, key: ClientKey) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn limit(&self, key: &ClientKey) -> Limit {
        match key {
            ClientKey::Account(_) => self.limits.account,
            ClientKey::Ip(_) => self.limits.anonymous,
        }
    }

    fn check_at(&self, key: ClientKey, now: Instant) -> Result<(), Duration> {
        let limit = self.limit(&key);
        if !limit.enabled() {
            return Ok(());
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY
            || (table.buckets.len() >= self.max_clients && !table.buckets.contains_key(&key))
        {
            self.sweep(&mut table, now);
        }
        let bucket = table.buckets.entry(key).or_insert(Bucket {
            tokens: limit.capacity(),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_sec).min(limit.capacity());
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limit.per_sec,
            ))
        }
    }

    /// Drops full buckets; if the table is still at capacity, drops the least
    /// recently seen half.
    fn sweep(&self, table: &mut Table, now: Instant) {
        table.last_sweep = now;
        let limits = self.limits;
        table.buckets.retain(|key, b| {
            let limit = match key {
                ClientKey::Account(_) => limits.account,
                ClientKey::Ip(_) => limits.anonymous,
            };
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * limit.per_sec < limit.capacity()
        });
        if table.buckets.len() >= self.max_clients {
            let mut seen: Vec<Instant> = table.buckets.values().map(|b| b.last).collect();
            let mid = seen.len() / 2;
            let (_, cutoff, _) = seen.select_nth_unstable(mid);
            let cutoff = *cutoff;
            table.buckets.retain(|_, b| b.last > cutoff);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }
}

/// The retry hint for a wait: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(burst: u32, per_sec: f64) -> RateLimits {
        RateLimits {
            account: Limit { burst, per_sec },
            anonymous: Limit { burst, per_sec },
        }
    }

    #[test]
    fn a_burst_then_refusal_then_refill() {
        let rl = RateLimiter::new(limits(3, 2.0));
        let key = ClientKey::ip("10.0.0.1".parse().expect("ip"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at(key, t0).is_ok());
        }
        let wait = rl.check_at(key, t0).expect_err("limited");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(rl.check_at(key, t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.check_at(key, t0 + Duration::from_millis(500)).is_err());
        // Other clients are not affected.
        assert!(rl.check_at(ClientKey::Account(Uuid::now_v7()), t0).is_ok());
    }

    #[test]
    fn zero_per_sec_disables() {
        let rl = RateLimiter::new(RateLimits {
            account: Limit::DISABLED,
            anonymous: Limit {
                burst: 1,
                per_sec: 1.0,
            },
        });
        let acc = ClientKey::Account(Uuid::now_v7());
        for _ in 0..1000 {
            assert!(rl.check(acc).is_ok());
        }
        assert_eq!(rl.len(), 0, "disabled limits keep no state");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = ClientKey::ip("2001:db8:1:2::1".parse().expect("ip"));
        let b = ClientKey::ip("2001:db8:1:2:ffff::9".parse().expect("ip"));
        assert_eq!(a, b);
        let mapped = ClientKey::ip("::ffff:10.0.0.1".parse().expect("ip"));
        assert_eq!(mapped, ClientKey::ip("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn memory_is_bounded() {
        let rl = RateLimiter::with_capacity(limits(5, 0.001), 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let key = ClientKey::ip(IpAddr::from(i.to_be_bytes()));
            let _ = rl.check_at(key, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(rl.len() <= 100, "{} buckets", rl.len());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let rl = RateLimiter::new(limits(2, 10.0));
        let t0 = Instant::now();
        for i in 0..50u32 {
            let _ = rl.check_at(ClientKey::ip(IpAddr::from(i.to_be_bytes())), t0);
        }
        assert_eq!(rl.len(), 50);
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        let _ = rl.check_at(ClientKey::ip("192.0.2.1".parse().expect("ip")), later);
        assert_eq!(rl.len(), 1);
    }
}
