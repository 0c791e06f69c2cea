//! Per-client rate limiting: in-process token buckets.
//!
//! A client is the authenticated account (the Bearer token's subject) or,
//! for anonymous calls, the peer IP address (IPv6 addresses by their /64,
//! which is what one host usually gets). The peer is the TCP peer, unless it
//! is one of the `--trusted-proxy` networks: then it is the client the
//! proxy forwards for ([`crate::proxy`]). Without trusted proxies, behind a
//! load balancer every anonymous caller shares the balancer's bucket.
//!
//! Each bucket holds up to `burst` tokens and refills at `per_sec` tokens per
//! second. Every GraphQL operation takes tokens, on HTTP and over the
//! WebSocket alike ([`crate::graphql::admission`]): a query one, a mutation
//! one per root field, so aliasing does not multiply what one token buys.
//! A refused operation learns the time until enough tokens are back. A
//! `per_sec` of 0 disables that limit. Limits are per process: with N API
//! processes a client gets up to N times the rate.
//!
//! Failed logins have buckets of their own ([`LoginThrottle`]): one per
//! target email (keyed by a hash, never the address) and one per client, so
//! guessing one account's password from many addresses is slowed as much as
//! guessing from one. A login attempt takes a token from both before the
//! password is checked, and a successful one gives them back.
//!
//! Memory is bounded: a bucket that has refilled completely is the same as no
//! bucket, so such buckets are swept out once a minute, and when a table
//! still reaches [`MAX_CLIENTS`] the least recently seen half is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Most clients tracked at once, per table.
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

/// Every limit the API applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Operations per account (Bearer token subject).
    pub account: Limit,
    /// Operations per anonymous peer IP.
    pub anonymous: Limit,
    /// Login attempts per target email (successful ones are given back).
    pub login_per_email: Limit,
    /// Login attempts per client (account or IP; successful ones are given
    /// back).
    pub login_per_client: Limit,
}

impl RateLimits {
    /// No limits at all (tests and embedding; see `Settings::for_database`).
    pub const DISABLED: RateLimits = RateLimits {
        account: Limit::DISABLED,
        anonymous: Limit::DISABLED,
        login_per_email: Limit::DISABLED,
        login_per_client: Limit::DISABLED,
    };
}

impl Default for RateLimits {
    /// Accounts: burst 100, 50/s. Anonymous: burst 30, 10/s. Failed logins:
    /// 10 per email then one every 10 s, 20 per client then one every 5 s.
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
            login_per_email: Limit {
                burst: 10,
                per_sec: 0.1,
            },
            login_per_client: Limit {
                burst: 20,
                per_sec: 0.2,
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
struct Table<K> {
    buckets: HashMap<K, Bucket>,
    last_sweep: Instant,
}

/// Token buckets under one limit, one per key seen recently.
#[derive(Debug)]
pub struct Buckets<K> {
    limit: Limit,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    /// Buckets under `limit`, at most [`MAX_CLIENTS`] at once.
    pub fn new(limit: Limit) -> Self {
        Self::with_capacity(limit, MAX_CLIENTS)
    }

    fn with_capacity(limit: Limit, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys: max_keys.max(2),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes `cost` tokens for `key` (a cost above the burst takes a full
    /// bucket); `Err` carries the wait until enough are back.
    pub fn take(&self, key: K, cost: u32, now: Instant) -> Result<(), Duration> {
        if !self.limit.enabled() {
            return Ok(());
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.refilled(&mut table, key, now);
        let cost = f64::from(cost.max(1)).min(self.limit.capacity());
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (cost - bucket.tokens) / self.limit.per_sec,
            ))
        }
    }

    /// Gives back one token taken from `key` (capped at the burst).
    pub fn give_back(&self, key: K, now: Instant) {
        if !self.limit.enabled() {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let capacity = self.limit.capacity();
        let bucket = self.refilled(&mut table, key, now);
        bucket.tokens = (bucket.tokens + 1.0).min(capacity);
    }

    /// The bucket of `key`, refilled up to `now` (created full).
    fn refilled<'t>(&self, table: &'t mut Table<K>, key: K, now: Instant) -> &'t mut Bucket {
        if now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY
            || (table.buckets.len() >= self.max_keys && !table.buckets.contains_key(&key))
        {
            self.sweep(table, now);
        }
        let limit = self.limit;
        let bucket = table.buckets.entry(key).or_insert(Bucket {
            tokens: limit.capacity(),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_sec).min(limit.capacity());
        bucket.last = now;
        bucket
    }

    /// Drops full buckets; if the table is still at capacity, drops the least
    /// recently seen half.
    fn sweep(&self, table: &mut Table<K>, now: Instant) {
        table.last_sweep = now;
        let limit = self.limit;
        table.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * limit.per_sec < limit.capacity()
        });
        if table.buckets.len() >= self.max_keys {
            let mut seen: Vec<Instant> = table.buckets.values().map(|b| b.last).collect();
            let mid = seen.len() / 2;
            let (_, cutoff, _) = seen.select_nth_unstable(mid);
            let cutoff = *cutoff;
            table.buckets.retain(|_, b| b.last > cutoff);
        }
    }

    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }
}

/// The operation buckets of every client seen recently, and the login
/// throttle.
#[derive(Debug)]
pub struct RateLimiter {
    accounts: Buckets<Uuid>,
    anonymous: Buckets<IpAddr>,
    /// Failed-login throttling.
    pub logins: LoginThrottle,
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            accounts: Buckets::new(limits.account),
            anonymous: Buckets::new(limits.anonymous),
            logins: LoginThrottle {
                per_email: Buckets::new(limits.login_per_email),
                per_client: Buckets::new(limits.login_per_client),
            },
        }
    }

    /// Takes one token for `key`; `Err` carries the wait until one is available.
    pub fn check(&self, key: ClientKey) -> Result<(), Duration> {
        self.take(key, 1)
    }

    /// Takes `cost` tokens for `key` (one per operation, one per root field
    /// of a mutation).
    pub fn take(&self, key: ClientKey, cost: u32) -> Result<(), Duration> {
        self.take_at(key, cost, Instant::now())
    }

    fn take_at(&self, key: ClientKey, cost: u32, now: Instant) -> Result<(), Duration> {
        match key {
            ClientKey::Account(id) => self.accounts.take(id, cost, now),
            ClientKey::Ip(ip) => self.anonymous.take(ip, cost, now),
        }
    }

    /// Clients tracked, across the operation tables.
    pub fn tracked(&self) -> usize {
        self.accounts.len() + self.anonymous.len()
    }
}

/// The hash a login's target email is throttled under: the normalised
/// address is never kept in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmailKey([u8; 16]);

impl EmailKey {
    /// The key of `raw` (trimmed and lower-cased, as accounts store it).
    pub fn of(raw: &str) -> Self {
        let digest = Sha256::digest(raw.trim().to_lowercase().as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// Failed logins, throttled per target email and per client.
#[derive(Debug)]
pub struct LoginThrottle {
    per_email: Buckets<EmailKey>,
    per_client: Buckets<ClientKey>,
}

impl LoginThrottle {
    /// Takes a login attempt's tokens before its password is checked, or
    /// the wait until the email and the client may try again. A client
    /// that is refused takes nothing from the email's bucket.
    pub fn attempt(&self, email: EmailKey, client: Option<ClientKey>) -> Result<(), Duration> {
        let now = Instant::now();
        if let Some(client) = client {
            self.per_client.take(client, 1, now)?;
        }
        if let Err(wait) = self.per_email.take(email, 1, now) {
            if let Some(client) = client {
                self.per_client.give_back(client, now);
            }
            return Err(wait);
        }
        Ok(())
    }

    /// Gives back the tokens of an attempt that succeeded: only failures
    /// count.
    pub fn succeeded(&self, email: EmailKey, client: Option<ClientKey>) {
        let now = Instant::now();
        self.per_email.give_back(email, now);
        if let Some(client) = client {
            self.per_client.give_back(client, now);
        }
    }
}

/// The retry hint for a wait: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(burst: u32, per_sec: f64) -> Limit {
        Limit { burst, per_sec }
    }

    fn limits(burst: u32, per_sec: f64) -> RateLimits {
        RateLimits {
            account: limit(burst, per_sec),
            anonymous: limit(burst, per_sec),
            ..RateLimits::DISABLED
        }
    }

    #[test]
    fn a_burst_then_refusal_then_refill() {
        let rl = RateLimiter::new(limits(3, 2.0));
        let key = ClientKey::ip("10.0.0.1".parse().expect("ip"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.take_at(key, 1, t0).is_ok());
        }
        let wait = rl.take_at(key, 1, t0).expect_err("limited");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
        assert!(rl.take_at(key, 1, t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.take_at(key, 1, t0 + Duration::from_millis(500)).is_err());
        // Other clients are not affected.
        assert!(rl
            .take_at(ClientKey::Account(Uuid::now_v7()), 1, t0)
            .is_ok());
    }

    #[test]
    fn an_operation_with_several_fields_takes_as_many_tokens() {
        let rl = RateLimiter::new(limits(10, 1.0));
        let key = ClientKey::Account(Uuid::now_v7());
        let t0 = Instant::now();
        assert!(rl.take_at(key, 7, t0).is_ok());
        let wait = rl.take_at(key, 4, t0).expect_err("3 left, 4 asked");
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert!(rl.take_at(key, 3, t0).is_ok());
        // More than a whole burst takes the whole (full) bucket.
        let later = t0 + Duration::from_secs(10);
        assert!(rl.take_at(key, 500, later).is_ok());
        assert!(rl.take_at(key, 1, later).is_err());
    }

    #[test]
    fn zero_per_sec_disables() {
        let rl = RateLimiter::new(RateLimits {
            anonymous: limit(1, 1.0),
            ..RateLimits::DISABLED
        });
        let acc = ClientKey::Account(Uuid::now_v7());
        for _ in 0..1000 {
            assert!(rl.check(acc).is_ok());
        }
        assert_eq!(rl.tracked(), 0, "disabled limits keep no state");
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
        let buckets = Buckets::with_capacity(limit(5, 0.001), 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let _ = buckets.take(i, 1, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(buckets.len() <= 100, "{} buckets", buckets.len());
    }

    #[test]
    fn the_login_throttle_stays_bounded_under_many_emails_and_clients() {
        let throttle = LoginThrottle {
            per_email: Buckets::with_capacity(limit(2, 0.001), 64),
            per_client: Buckets::with_capacity(limit(2, 0.001), 64),
        };
        for i in 0..5_000u32 {
            let email = EmailKey::of(&format!("victim-{i}@example.com"));
            let client = ClientKey::ip(IpAddr::from(i.to_be_bytes()));
            let _ = throttle.attempt(email, Some(client));
        }
        assert!(
            throttle.per_email.len() <= 64,
            "{}",
            throttle.per_email.len()
        );
        assert!(
            throttle.per_client.len() <= 64,
            "{}",
            throttle.per_client.len()
        );
    }

    #[test]
    fn idle_buckets_are_swept() {
        let buckets = Buckets::new(limit(2, 10.0));
        let t0 = Instant::now();
        for i in 0..50u32 {
            let _ = buckets.take(i, 1, t0);
        }
        assert_eq!(buckets.len(), 50);
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        let _ = buckets.take(9_999, 1, later);
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn failed_logins_are_throttled_per_email_across_clients_and_successes_are_given_back() {
        let throttle = LoginThrottle {
            per_email: Buckets::new(limit(3, 0.001)),
            per_client: Buckets::new(limit(100, 0.001)),
        };
        let victim = EmailKey::of(" Victim@Example.com");
        assert_eq!(victim, EmailKey::of("victim@example.com"));
        // Three guesses from three addresses use up the victim's bucket…
        for i in 1..=3u8 {
            let from = ClientKey::ip(IpAddr::from([10, 0, 0, i]));
            assert!(throttle.attempt(victim, Some(from)).is_ok());
        }
        let fourth = ClientKey::ip(IpAddr::from([10, 0, 0, 4]));
        assert!(throttle.attempt(victim, Some(fourth)).is_err());
        // …but not another account's.
        let other = EmailKey::of("other@example.com");
        assert!(throttle.attempt(other, Some(fourth)).is_ok());
        // A success gives its token back: the owner is not locked out by
        // their own correct logins.
        throttle.succeeded(other, Some(fourth));
        for _ in 0..2 {
            assert!(throttle.attempt(other, Some(fourth)).is_ok());
            throttle.succeeded(other, Some(fourth));
        }
        assert!(throttle.attempt(other, Some(fourth)).is_ok());
    }

    #[test]
    fn failed_logins_are_throttled_per_client_across_emails() {
        let throttle = LoginThrottle {
            per_email: Buckets::new(limit(100, 0.001)),
            per_client: Buckets::new(limit(2, 0.001)),
        };
        let guesser = ClientKey::ip(IpAddr::from([10, 9, 9, 9]));
        for i in 0..2 {
            let email = EmailKey::of(&format!("user-{i}@example.com"));
            assert!(throttle.attempt(email, Some(guesser)).is_ok());
        }
        let email = EmailKey::of("user-3@example.com");
        assert!(throttle.attempt(email, Some(guesser)).is_err());
        // The refused client took nothing from that email's bucket.
        for i in 0..100u8 {
            let elsewhere = ClientKey::ip(IpAddr::from([172, 16, 0, i]));
            if throttle.attempt(email, Some(elsewhere)).is_err() {
                panic!("the email's bucket was drained by a refused client");
            }
        }
    }
}
