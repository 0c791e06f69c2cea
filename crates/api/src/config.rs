//! Settings, layered: defaults, then environment, then command-line flags
//! (clap reads both). Secrets are wrapped so they never print.

use std::net::SocketAddr;
use std::path::PathBuf;

use marketplace_commands::payments::{BreakerConfig, RetryPolicy};
use marketplace_domain::values::FeeRate;
use marketplace_keys::{AnchorKey, MasterKey};

use crate::proxy::TrustedProxies;
use crate::ratelimit::RateLimits;
use std::time::Duration;

/// A secret string: its `Debug` and `Display` are redacted.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A JWT signing key from configuration: refused (with what to do) if it
    /// is shorter than [`MIN_JWT_SECRET_BYTES`] or a well-known placeholder,
    /// since anyone who knows the key can sign an ADMIN's token.
    pub fn for_jwt(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let advice = "set MARKETPLACE_JWT_SECRET (or --jwt-secret) to a random key of at least \
                      32 bytes, e.g. the output of `openssl rand -hex 32`, shared by every API replica";
        if s.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "the JWT secret is {} bytes long, shorter than {MIN_JWT_SECRET_BYTES}: {advice}",
                s.len()
            ));
        }
        let folded: String = s
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let distinct = s.chars().collect::<std::collections::BTreeSet<_>>().len();
        if PLACEHOLDERS.iter().any(|p| folded.contains(p)) || distinct < 8 {
            return Err(format!(
                "the JWT secret is a well-known placeholder, not a key: {advice}"
            ));
        }
        Ok(Self(s))
    }

    /// A random secret (for development, when none is configured).
    pub fn random() -> Self {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Shortest JWT signing key accepted (HS256 wants at least 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Words that mark a key copied from an example rather than generated
/// (compared with letters and digits only, lower-cased).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "replaceme",
    "yoursecret",
    "mysecret",
    "secretkey",
    "jwtsecret",
    "placeholder",
    "example",
    "password",
    "insecure",
    "notasecret",
];

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which parts of the system this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// The GraphQL API only (stateless; scale out behind a load balancer).
    Api,
    /// The projectors and process managers only; it serves `/healthz`,
    /// `/readyz` and `/metrics` (no GraphQL).
    Projector,
    /// Everything in one process.
    All,
}

/// Which event store holds the log (read models always live in Postgres).
#[derive(Clone, Debug, Default)]
pub enum EventStoreChoice {
    /// The `events` table in the same Postgres database (the default).
    #[default]
    Postgres,
    /// A KurrentDB node or cluster, by the `kurrentdb` client's connection
    /// string (`kurrentdb://…`, `esdb://…`; it may carry credentials).
    KurrentDb(Secret),
}

impl EventStoreChoice {
    /// Parses `postgres`, or a KurrentDB connection string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("postgres") {
            Ok(Self::Postgres)
        } else if marketplace_store::kurrentdb::is_connection_string(s) {
            Ok(Self::KurrentDb(Secret::new(s)))
        } else {
            Err(format!(
                "expected `postgres` or a KurrentDB connection string (kurrentdb://host:2113?tls=false, esdb://…), got {s:?}"
            ))
        }
    }
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Postgres for the read models (and the event store, by default).
    pub database_url: String,
    /// Where the event log lives.
    pub event_store: EventStoreChoice,
    /// JWT signing key.
    pub jwt_secret: Secret,
    /// How long issued tokens stay valid.
    pub token_ttl: Duration,
    /// Longest wait for projections to reach a consistency token.
    pub consistency_wait: Duration,
    /// Which parts to run.
    pub role: ServeRole,
    /// The marketplace fee taken on delivery.
    pub fee: FeeRate,
    /// Check orders out through the checkout saga even where the event
    /// store could decide them in the placement's own append (the
    /// default there: `placeOrder` answers CONFIRMED or REJECTED).
    pub checkout_in_saga: bool,
    /// Aggregates the command handler keeps in memory (least recently
    /// used first out; 0: none, every command reads its streams). The
    /// largest share of the server's memory under load: a few KB each.
    pub aggregate_cache: usize,
    /// Per-client rate limits on `/graphql` (per account, and per IP for
    /// anonymous calls); a `per_sec` of 0 disables a limit.
    pub rate_limits: RateLimits,
    /// Load balancers and ingresses whose `X-Forwarded-For` is believed
    /// (empty: anonymous callers are keyed by the TCP peer).
    pub trusted_proxies: TrustedProxies,
    /// The master key that wraps every data key (see [`master_key`]).
    pub master_key: MasterKey,
    /// Periodic signed head anchors (`serve --anchor-every`), if any.
    pub anchors: Option<AnchorSchedule>,
    /// The payment gateway deposits are charged through.
    pub payments: PaymentsSettings,
    /// Where digital assets' files are stored, and what is accepted.
    pub assets: crate::assets::AssetsSettings,
    /// How a stop drains and finishes (see [`crate::shutdown`]).
    pub shutdown: crate::shutdown::ShutdownSettings,
    /// Read replicas of `database_url` for GraphQL reads (none by default).
    pub replicas: crate::replicas::ReplicaSettings,
}

/// Where and how often `serve` writes signed head anchors.
#[derive(Clone, Debug)]
pub struct AnchorSchedule {
    /// The signing key.
    pub key: AnchorKey,
    /// How often.
    pub every: Duration,
    /// The anchor file lines are appended to.
    pub file: PathBuf,
}

/// The file a development master key is kept in, under the data directory.
pub const DEV_MASTER_KEY_FILE: &str = "master.key";

/// The master key: the configured one (`MARKETPLACE_MASTER_KEY`, 64 hex
/// characters), or else the development key kept in
/// `<data_dir>/master.key`, generated (mode 0600) on first use. Losing the
/// master key makes every personal field unreadable, as if erased: a
/// production deployment configures it from its secret store.
pub fn master_key(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<MasterKey> {
    use anyhow::Context;
    if let Some(k) = configured.filter(|k| !k.trim().is_empty()) {
        return MasterKey::from_hex(k).context("MARKETPLACE_MASTER_KEY");
    }
    let path = data_dir.join(DEV_MASTER_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return MasterKey::from_hex(&text).with_context(|| format!("{}", path.display()));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create {}", data_dir.display()))?;
    let key = MasterKey::generate();
    write_private(&path, &key.to_hex())?;
    tracing::warn!(
        file = %path.display(),
        "MARKETPLACE_MASTER_KEY is unset: generated a development master key; keep the file, \
         without it no personal data can be read"
    );
    Ok(key)
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))
}

/// Which payment provider deposits are charged at.
#[derive(Clone, Debug, Default)]
pub enum PaymentProvider {
    /// Captures at once, in process (the default: no provider needed).
    #[default]
    Simulated,
    /// A provider speaking the JSON protocol of [`crate::payments`] at this
    /// base URL (`--payments-url`).
    Http {
        /// Base URL, e.g. `https://pay.example.com/`.
        url: String,
        /// Sent as `Authorization: Bearer …`, if set.
        api_key: Option<Secret>,
    },
}

/// How deposits reach the payment provider.
#[derive(Clone, Debug)]
pub struct PaymentsSettings {
    /// Which provider.
    pub provider: PaymentProvider,
    /// The shared secret the provider's callbacks carry
    /// (`Authorization: Bearer …` on `POST /payments/callback`); without
    /// one, callbacks are refused.
    pub callback_secret: Option<Secret>,
    /// The callback URL sent with each charge (this server's
    /// `/payments/callback` as the provider reaches it), if any.
    pub callback_url: Option<String>,
    /// When the circuit breaker opens and for how long.
    pub breaker: BreakerConfig,
    /// Each charge's timeout, backoff and deadline.
    pub retry: RetryPolicy,
    /// How long `depositFunds` waits for the intent to settle before it
    /// answers PENDING (the client then follows the intent).
    pub settle_wait: Duration,
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        Self {
            provider: PaymentProvider::Simulated,
            callback_secret: None,
            callback_url: None,
            breaker: BreakerConfig::default(),
            retry: RetryPolicy::default(),
            settle_wait: Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// Settings for tests and embedding: everything on, random port, no rate
    /// limits (load tests from one address would trip them; `serve` uses
    /// [`RateLimits::default`], and a test can set its own).
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            event_store: EventStoreChoice::Postgres,
            jwt_secret: Secret::random(),
            token_ttl: Duration::from_secs(24 * 3600),
            consistency_wait: Duration::from_secs(5),
            role: ServeRole::All,
            fee: FeeRate::DEFAULT,
            checkout_in_saga: false,
            aggregate_cache: marketplace_commands::DEFAULT_CACHE_CAPACITY,
            rate_limits: RateLimits::DISABLED,
            trusted_proxies: TrustedProxies::default(),
            master_key: MasterKey::generate(),
            anchors: None,
            payments: PaymentsSettings::default(),
            // A fresh directory per application: tests never share files.
            assets: crate::assets::AssetsSettings::local(
                std::env::temp_dir().join(format!("marketplace-assets-{}", uuid::Uuid::now_v7())),
            ),
            shutdown: crate::shutdown::ShutdownSettings::default(),
            replicas: crate::replicas::ReplicaSettings::default(),
        }
    }
}

/// Where the embedded cluster lives by default.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".marketplace")
}
