//! Authentication: argon2 password hashes and JWT bearer tokens.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, SaltString};
use argon2::{Argon2, Block, Params, Version};
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

/// Argon2's working memory (19 MiB at the default cost), kept for the next
/// hash instead of freed: allocated and freed on whichever blocking thread
/// ran the hash, it stayed in that thread's allocator arena, and a burst of
/// logins left the process at 600 MB for 40 MB of live data. With
/// [`hashing`] bounding the hashes at once, at most one buffer per core
/// exists.
static WORKING_MEMORY: std::sync::Mutex<Vec<Vec<Block>>> = std::sync::Mutex::new(Vec::new());

/// Runs argon2 with `params` into `out`, on reused working memory.
fn argon2_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let mut memory = WORKING_MEMORY
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .unwrap_or_default();
    memory.resize(params.block_count(), Block::default());
    let result = argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..]);
    if let Ok(mut pool) = WORKING_MEMORY.lock() {
        pool.push(memory);
    }
    result
}

/// Hashes a password with argon2id (the crate's default parameters) and a
/// random salt, as a PHC string (CPU-heavy: call through [`hashing`]).
pub fn hash_password(password: &str) -> Result<PasswordHash, String> {
    use rand::Rng;
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    let params = Params::default();
    let argon2 = Argon2::new(argon2::Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon2, &params, password.as_bytes(), &salt_bytes, &mut out)
        .map_err(|e| e.to_string())?;
    let phc = argon2::PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    }
    .to_string();
    PasswordHash::from_phc(phc).map_err(|e| e.to_string())
}

/// Whether `password` matches `hash`, with the parameters the hash names
/// (CPU-heavy: call through [`hashing`]).
pub fn verify_password(password: &str, hash: &PasswordHash) -> bool {
    let check = || -> Option<bool> {
        let parsed = argon2::PasswordHash::new(hash.as_phc()).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = parsed
            .version
            .map_or(Some(Version::default()), |v| Version::try_from(v).ok())?;
        let params = Params::try_from(&parsed).ok()?;
        let (salt, expected) = (parsed.salt?, parsed.hash?);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).ok()?;
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        argon2_into(&argon2, &params, password.as_bytes(), salt_bytes, &mut out).ok()?;
        // `Output`'s equality is constant-time.
        Some(Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
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

/// Seconds past its expiry that a token is still taken (clock skew).
const LEEWAY_SECS: i64 = 5;

/// Tokens whose signature was checked, kept so that a client's next request
/// is not decoded and verified again.
const VERIFIED_TOKENS: usize = 10_000;

/// Signs and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    /// Tokens this key verified, with what they say: a hit is served while
    /// the token has not expired (the roles are still checked against the
    /// account on every request, by the caller). A token that fails is
    /// never kept.
    verified: Arc<Mutex<lru::LruCache<String, Claims>>>,
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
            verified: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(VERIFIED_TOKENS).unwrap_or(NonZeroUsize::MIN),
            ))),
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

    /// Checks a token's signature and expiry. A token this key verified
    /// before is not decoded again while it has not expired.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let now = Utc::now().timestamp();
        if let Ok(mut verified) = self.verified.lock() {
            if let Some(claims) = verified.get(token) {
                if unexpired(claims, now) {
                    return Some(claims.clone());
                }
                verified.pop(token);
                return None;
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS.unsigned_abs();
        let claims = decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        if let Ok(mut verified) = self.verified.lock() {
            verified.put(token.to_owned(), claims.clone());
        }
        Some(claims)
    }
}

/// Whether `claims` are still good at `now` (seconds since the epoch), with
/// the same leeway as the signature check.
fn unexpired(claims: &Claims, now: i64) -> bool {
    claims.exp.saturating_add(LEEWAY_SECS) >= now
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
    fn hashes_read_both_ways_with_the_stock_argon2_hasher() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Hashes stored before (the crate's own hasher) still verify...
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let stock = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        let stock = PasswordHash::from_phc(stock).expect("phc");
        assert!(verify_password("correct horse", &stock));
        assert!(!verify_password("correct horsf", &stock));
        // ...and ours are ordinary argon2id PHC strings.
        let ours = hash_password("correct horse").expect("hash");
        let parsed = argon2::PasswordHash::new(ours.as_phc()).expect("parse");
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(ours.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!verify_password(
            "correct horse",
            &PasswordHash::from_phc("$argon2id$junk".into()).expect("phc")
        ));
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

    #[test]
    fn a_verified_token_is_served_again_but_never_a_forged_one() {
        let tokens = Tokens::new(&Secret::new("k1"), Duration::from_secs(60));
        let id = Uuid::now_v7();
        let t = tokens.issue(id, vec![Role::Buyer]).expect("issue");
        let first = tokens.verify(&t).expect("verified");
        assert_eq!(tokens.verify(&t), Some(first.clone()), "from the cache");
        assert_eq!(tokens.verified.lock().expect("lock").len(), 1);
        // The same claims under another signature are not the cached token.
        let at = t.len() - 10;
        let swapped = if &t[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &t[..at], &t[at + 1..]);
        assert!(tokens.verify(&forged).is_none(), "a changed signature");
        let other = Tokens::new(&Secret::new("k2"), Duration::from_secs(60));
        assert!(other.verify(&t).is_none(), "another key's cache is its own");
        assert_eq!(
            tokens.verified.lock().expect("lock").len(),
            1,
            "refused tokens are not kept"
        );
    }

    #[test]
    fn a_kept_token_is_not_decoded_again_until_it_expires() {
        let tokens = Tokens::new(&Secret::new("k1"), Duration::from_secs(60));
        let now = Utc::now().timestamp();
        let kept = Claims {
            sub: Uuid::now_v7(),
            roles: vec![Role::Buyer],
            iat: now,
            exp: now + 60,
        };
        // Not a token at all: only the cache can answer for it.
        tokens
            .verified
            .lock()
            .expect("lock")
            .put("kept".to_owned(), kept.clone());
        assert_eq!(
            tokens.verify("kept"),
            Some(kept.clone()),
            "served from the cache"
        );
        let expired = Claims {
            exp: now - LEEWAY_SECS - 10,
            ..kept
        };
        tokens
            .verified
            .lock()
            .expect("lock")
            .put("kept".to_owned(), expired);
        assert!(
            tokens.verify("kept").is_none(),
            "an expired entry is refused"
        );
        assert!(
            tokens.verified.lock().expect("lock").is_empty(),
            "and dropped"
        );
    }

    #[test]
    fn a_cached_token_expires_with_the_signature_checks_leeway() {
        let claims = Claims {
            sub: Uuid::now_v7(),
            roles: vec![],
            iat: 0,
            exp: 1_000,
        };
        assert!(unexpired(&claims, 1_000));
        assert!(unexpired(&claims, 1_000 + LEEWAY_SECS));
        assert!(!unexpired(&claims, 1_001 + LEEWAY_SECS));
    }
}
