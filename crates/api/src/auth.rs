//! Authentication: argon2 password hashes and JWT bearer tokens.

use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::Utc;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use marketplace_domain::values::{AccountId, Actor, PasswordHash, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Secret;

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Passwords longer than this are refused (hashing cost is bounded).
pub const MAX_PASSWORD_LEN: usize = 128;

/// Runs `f` (an argon2 hash or check) on a blocking thread, at most one per
/// core at a time. Each takes a core for tens of milliseconds and argon2's
/// 19 MiB of memory: unbounded, a burst of registrations or logins (64 at
/// once) took a gigabyte that the allocator then kept. Waiting callers
/// queue here, in order.
pub async fn hashing<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    static PERMITS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    let _permit = PERMITS.acquire().await;
    tokio::task::spawn_blocking(f).await
}

/// Hashes a password with argon2id and a random salt (CPU-heavy: call
/// through [`hashing`]).
pub fn hash_password(password: &str) -> Result<PasswordHash, String> {
    use rand::Rng;
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    let phc = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?
        .to_string();
    PasswordHash::from_phc(phc).map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (CPU-heavy: call through [`hashing`]).
pub fn verify_password(password: &str, hash: &PasswordHash) -> bool {
    argon2::password_hash::PasswordHash::new(hash.as_phc())
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: Uuid,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
}

impl Claims {
    /// The acting account, for commands.
    pub fn actor(&self) -> Actor {
        Actor {
            account_id: AccountId(self.sub),
            roles: self.roles.clone(),
        }
    }

    /// Whether the bearer holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Keys from a secret.
    pub fn new(secret: &Secret, ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            ttl,
        }
    }

    /// Issues a token for an account.
    pub fn issue(&self, account: Uuid, roles: Vec<Role>) -> Result<String, String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: account,
            roles,
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Checks a token's signature and expiry.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hashing_runs_at_most_one_per_core_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls: Vec<_> = (0..cores * 8)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(hashing(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let h = hash_password("correct horse").expect("hash");
                    running.fetch_sub(1, Ordering::SeqCst);
                    h
                }))
            })
            .collect();
        for call in calls {
            call.await.expect("task").expect("hashed");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=cores).contains(&most),
            "{most} hashes ran at once on {cores} cores"
        );
    }

    #[test]
    fn verifies_the_right_password_only() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.as_phc().starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
    }

    #[test]
    fn accepts_its_own_tokens_and_refuses_forged_or_expired_ones() {
        let tokens = Tokens::new(&Secret::new("k1"), Duration::from_secs(60));
        let id = Uuid::now_v7();
        let t = tokens.issue(id, vec![Role::Seller]).expect("issue");
        assert_eq!(tokens.verify(&t).map(|c| c.sub), Some(id));
        let other = Tokens::new(&Secret::new("k2"), Duration::from_secs(60));
        assert!(other.verify(&t).is_none(), "another key's token is refused");
        let expired = Tokens::new(&Secret::new("k1"), Duration::from_secs(0));
        let old = encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: id,
                roles: vec![],
                iat: 0,
                exp: 1,
            },
            &expired.encoding,
        )
        .expect("encode");
        assert!(tokens.verify(&old).is_none(), "an expired token is refused");
        assert!(tokens.verify("not a token").is_none());
    }
}
