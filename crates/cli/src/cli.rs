//! The `marketplace` command line: one place that parses and dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::bench::{self, BenchCommand};
use crate::projections::{self, ProjectionsCommand};
use crate::seed::SeedArgs;
use marketplace_api::application::{shutdown_signal, Application};
use marketplace_api::config::{AnchorSchedule, EventStoreChoice, Secret, ServeRole, Settings};
use marketplace_api::database::{connect, migrate, Database};
use marketplace_api::proxy::{Cidr, TrustedProxies};
use marketplace_api::ratelimit::{Limit, RateLimits};
use marketplace_keys::{AnchorKey, MasterKey};

/// An event-sourced marketplace: GraphQL API, event store, projectors.
///
/// With no subcommand, `marketplace` serves everything on one machine. When
/// DATABASE_URL is unset it starts (or reuses) a private PostgreSQL cluster
/// under --data-dir from the system's PostgreSQL binaries, and stops it on
/// exit.
///
/// Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set (an OTLP/HTTP collector's
/// base URL), spans are exported to `<endpoint>/v1/traces` under
/// OTEL_SERVICE_NAME (default `marketplace`); a W3C `traceparent` on a
/// request continues the caller's trace, and events carry it on.
#[derive(Debug, Parser)]
#[command(name = "marketplace", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Where the data lives.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL for the event store and read models. Unset: embedded cluster.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded cluster (used when DATABASE_URL is unset).
    #[arg(
        long,
        env = "MARKETPLACE_DATA_DIR",
        default_value = ".marketplace",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Where the event log lives: `postgres` (the events table in the
    /// database above), or a KurrentDB connection string such as
    /// `kurrentdb://127.0.0.1:2113?tls=false` or `esdb://…` (the client's
    /// format; TLS is on unless `tls=false`). Read models stay in Postgres.
    #[arg(
        long,
        env = "MARKETPLACE_EVENT_STORE",
        default_value = "postgres",
        global = true,
        hide_env_values = true,
        value_parser = EventStoreChoice::parse
    )]
    pub event_store: EventStoreChoice,
    /// The master key that wraps every account's data key: 64 hex
    /// characters (`openssl rand -hex 32`), the same for every process of
    /// one marketplace. Unset: a development key kept in
    /// `<data-dir>/master.key`, generated on first use. Without the key no
    /// personal data can be read.
    #[arg(
        long,
        env = "MARKETPLACE_MASTER_KEY",
        global = true,
        hide_env_values = true
    )]
    pub master_key: Option<String>,
    /// The Ed25519 key (its 32-byte secret seed, 64 hex characters) that
    /// signs head anchors (`audit anchor`, `serve --anchor-every`) and
    /// whose public half `audit verify --anchor` checks them with.
    #[arg(
        long,
        env = "MARKETPLACE_ANCHOR_KEY",
        global = true,
        hide_env_values = true
    )]
    pub anchor_key: Option<String>,
}

impl DbArgs {
    /// The master key: configured, or the development key file.
    pub fn master(&self) -> anyhow::Result<MasterKey> {
        marketplace_api::config::master_key(self.master_key.as_deref(), &self.data_dir)
    }

    /// The anchor key, if configured.
    pub fn anchor(&self) -> anyhow::Result<Option<AnchorKey>> {
        self.anchor_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                AnchorKey::from_hex(k).map_err(|e| anyhow::anyhow!("MARKETPLACE_ANCHOR_KEY: {e}"))
            })
            .transpose()
    }
}

/// Options of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MARKETPLACE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Which parts to run: api, projector, or all. A projector serves only
    /// /healthz, /readyz and /metrics on --listen (for probes and scraping).
    #[arg(long, value_enum, default_value = "all")]
    role: ServeRole,
    /// Key that signs login tokens: at least 32 bytes, and not a placeholder
    /// (generate one with `openssl rand -hex 32`). Every API replica must
    /// share the same key. Unset: a random key, so tokens do not survive a
    /// restart (development only).
    #[arg(long, env = "MARKETPLACE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// How long login tokens stay valid, in hours.
    #[arg(long, default_value_t = 24)]
    token_ttl_hours: u64,
    /// Longest wait, in milliseconds, for read models to reach an
    /// X-Consistency-Token.
    #[arg(long, default_value_t = 5_000)]
    consistency_wait_ms: u64,
    /// A Postgres hot standby (streaming replica) of DATABASE_URL that
    /// answers GraphQL queries reading the read models (listings, orders,
    /// reviews, accounts, notifications); repeat it, or give a
    /// comma-separated list, to spread reads round robin. Writes,
    /// subscriptions, checkpoints and projections stay on the primary. A
    /// query with X-Consistency-Token goes to a replica only once it has
    /// replayed past the token's read-model commit (else, after
    /// --replica-wait-ms, the primary answers); a replica that is down is
    /// skipped. Unset: the primary answers every read.
    #[arg(
        long = "read-database-url",
        value_name = "URL",
        env = "READ_DATABASE_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    read_database_urls: Vec<String>,
    /// Longest wait, in milliseconds, for a read replica to replay past a
    /// query's X-Consistency-Token before the primary answers it instead.
    #[arg(long, env = "MARKETPLACE_REPLICA_WAIT_MS", default_value_t = 200)]
    replica_wait_ms: u64,
    /// How often, in milliseconds, a read replica's replay location is
    /// checked during that wait.
    #[arg(long, env = "MARKETPLACE_REPLICA_POLL_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    replica_poll_ms: u64,
    /// Marketplace fee taken from each delivered order, in basis points
    /// (500 = 5%), paid to the marketplace's fee account.
    #[arg(long, env = "MARKETPLACE_FEE_BPS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    fee_bps: u32,
    /// Check orders out through the checkout saga (PENDING, then CONFIRMED
    /// or REJECTED a moment later) even on the Postgres event store, which
    /// otherwise decides each order in its placement's own atomic append
    /// and answers `placeOrder` CONFIRMED or REJECTED. KurrentDB always
    /// uses the saga.
    #[arg(long, env = "MARKETPLACE_CHECKOUT_IN_SAGA")]
    checkout_in_saga: bool,
    /// Aggregates (accounts, listings, orders, ...) kept in memory by the
    /// command handler, least recently used out first; 0 keeps none, so
    /// every command reads its streams. The largest share of the server's
    /// memory under load; a busy aggregate is snapshotted, so a miss costs
    /// a snapshot plus its tail.
    #[arg(long, env = "MARKETPLACE_AGGREGATE_CACHE",
          default_value_t = marketplace_commands::DEFAULT_CACHE_CAPACITY)]
    aggregate_cache: usize,
    /// Rate limit per signed-in account: requests to /graphql allowed in a
    /// burst (the token bucket's capacity).
    #[arg(long, env = "MARKETPLACE_RATE_LIMIT_ACCOUNT_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_account_burst: u32,
    /// Rate limit per signed-in account: sustained requests per second (the
    /// bucket's refill rate). 0 disables the per-account limit. Over the
    /// limit, requests get HTTP 429, RATE_LIMITED and a Retry-After header.
    #[arg(long, env = "MARKETPLACE_RATE_LIMIT_ACCOUNT_PER_SEC", default_value_t = 50.0,
          value_parser = non_negative_rate)]
    rate_limit_account_per_sec: f64,
    /// Rate limit per client IP for anonymous calls (no or an invalid bearer
    /// token): requests allowed in a burst.
    #[arg(long, env = "MARKETPLACE_RATE_LIMIT_ANON_BURST", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_anon_burst: u32,
    /// Rate limit per client IP for anonymous calls: sustained requests per
    /// second. 0 disables the anonymous limit. The IP is the TCP peer, so
    /// behind a proxy all anonymous callers share one bucket unless the
    /// proxy is a --trusted-proxy.
    #[arg(long, env = "MARKETPLACE_RATE_LIMIT_ANON_PER_SEC", default_value_t = 10.0,
          value_parser = non_negative_rate)]
    rate_limit_anon_per_sec: f64,
    /// Failed-login throttle per target email: attempts allowed in a burst
    /// (a successful login gives its attempt back).
    #[arg(long, env = "MARKETPLACE_LOGIN_PER_EMAIL_BURST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    login_per_email_burst: u32,
    /// Failed-login throttle per target email: attempts regained per second.
    /// 0 disables it. Over it, `login` answers RATE_LIMITED with
    /// retryAfterSeconds, whatever address the guesses come from.
    #[arg(long, env = "MARKETPLACE_LOGIN_PER_EMAIL_PER_SEC", default_value_t = 0.1,
          value_parser = non_negative_rate)]
    login_per_email_per_sec: f64,
    /// Failed-login throttle per client (account or IP): attempts allowed in
    /// a burst.
    #[arg(long, env = "MARKETPLACE_LOGIN_PER_CLIENT_BURST", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    login_per_client_burst: u32,
    /// Failed-login throttle per client: attempts regained per second. 0
    /// disables it.
    #[arg(long, env = "MARKETPLACE_LOGIN_PER_CLIENT_PER_SEC", default_value_t = 0.2,
          value_parser = non_negative_rate)]
    login_per_client_per_sec: f64,
    /// A load balancer or ingress whose X-Forwarded-For is believed, as a
    /// CIDR (10.0.0.0/8, fd00::/8, or one address); repeat it, or give a
    /// comma-separated list. A request from one of them is keyed (for the
    /// anonymous rate limit and the login throttle) by the right-most
    /// X-Forwarded-For address that is not itself a trusted proxy; from any
    /// other peer the header is ignored, so clients cannot spoof it. Unset:
    /// the TCP peer is the client.
    #[arg(long = "trusted-proxy", visible_alias = "trusted-proxies", value_name = "CIDR",
          env = "MARKETPLACE_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = Cidr::parse)]
    trusted_proxies: Vec<Cidr>,
    /// Sign the log's head this often (e.g. `10m`, `1h`, `30s`) and append
    /// the anchor to --anchor-file; needs MARKETPLACE_ANCHOR_KEY.
    #[arg(long, env = "MARKETPLACE_ANCHOR_EVERY", value_parser = parse_every)]
    anchor_every: Option<Duration>,
    /// The file `--anchor-every` appends anchors to (keep it, or a copy,
    /// away from the database: it is what proves nothing was cut).
    #[arg(long, env = "MARKETPLACE_ANCHOR_FILE", default_value = "anchors.jsonl")]
    anchor_file: PathBuf,
    /// The payment provider's base URL (the JSON protocol documented in
    /// `marketplace_api::payments`). Unset: deposits are captured by the
    /// built-in simulated gateway.
    #[arg(long, env = "MARKETPLACE_PAYMENTS_URL")]
    payments_url: Option<String>,
    /// The API key sent to the payment provider (`Authorization: Bearer`).
    #[arg(long, env = "MARKETPLACE_PAYMENTS_API_KEY", hide_env_values = true)]
    payments_api_key: Option<String>,
    /// The secret the provider's callbacks to `POST /payments/callback`
    /// must carry (`Authorization: Bearer`). Unset: callbacks are refused.
    #[arg(
        long,
        env = "MARKETPLACE_PAYMENTS_CALLBACK_SECRET",
        hide_env_values = true
    )]
    payments_callback_secret: Option<String>,
    /// This server's callback URL as the provider reaches it, sent with
    /// each charge.
    #[arg(long, env = "MARKETPLACE_PAYMENTS_CALLBACK_URL")]
    payments_callback_url: Option<String>,
    /// Each charge attempt's timeout, in milliseconds.
    #[arg(long, env = "MARKETPLACE_PAYMENTS_TIMEOUT_MS", default_value_t = 5_000)]
    payments_timeout_ms: u64,
    /// A charge is retried (exponential backoff, jitter) until this many
    /// milliseconds have passed, then the intent fails as unconfirmed.
    #[arg(
        long,
        env = "MARKETPLACE_PAYMENTS_DEADLINE_MS",
        default_value_t = 20_000
    )]
    payments_deadline_ms: u64,
    /// How long the payment gateway's circuit breaker stays open before a
    /// probe, in seconds.
    #[arg(
        long,
        env = "MARKETPLACE_PAYMENTS_BREAKER_COOL_DOWN_SECS",
        default_value_t = 15
    )]
    payments_breaker_cool_down_secs: u64,
    /// Where digital assets' files are stored: `s3://bucket[/prefix]`
    /// (S3-compatible; region, endpoint and credentials from the usual
    /// AWS_* variables) or a local directory. Unset: `<data-dir>/assets`.
    #[arg(long, env = "MARKETPLACE_ASSETS_URL")]
    assets_url: Option<String>,
    /// The largest asset upload, in bytes.
    #[arg(long, env = "MARKETPLACE_ASSETS_MAX_BYTES",
          default_value_t = marketplace_api::assets::DEFAULT_MAX_BYTES)]
    assets_max_bytes: u64,
    /// On SIGTERM, keep serving this long (e.g. `5s`) with /readyz failing,
    /// `Connection: close` on every response and WebSockets closed with
    /// 1012, so a load balancer moves clients elsewhere before the listener
    /// closes. 0 (the default) stops accepting at once; behind a load
    /// balancer use a few seconds (the Kubernetes manifests use 5s).
    #[arg(long, env = "MARKETPLACE_SHUTDOWN_DRAIN", default_value = "0s",
          value_parser = parse_duration)]
    shutdown_drain: Duration,
    /// Once the listener is closed, how long requests in flight may take to
    /// finish (e.g. `30s`); whatever still runs then is cut, and logged.
    /// Projectors and process managers stop after that and hand their
    /// locks to a standby.
    #[arg(long, env = "MARKETPLACE_SHUTDOWN_GRACE", default_value = "30s",
          value_parser = parse_duration)]
    shutdown_grace: Duration,
}

/// Parses `0s`, `5s`, `10m`, `1h` (or bare seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 10m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// [`parse_duration`], above zero (an interval).
fn parse_every(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("the anchor interval must be above zero".into()),
        every => Ok(every),
    }
}

fn payments_settings(args: &ServeArgs) -> marketplace_api::config::PaymentsSettings {
    use marketplace_api::config::{PaymentProvider, PaymentsSettings, Secret};
    use marketplace_commands::payments::{BreakerConfig, RetryPolicy};
    let defaults = PaymentsSettings::default();
    PaymentsSettings {
        provider: match &args.payments_url {
            Some(url) => PaymentProvider::Http {
                url: url.clone(),
                api_key: args.payments_api_key.clone().map(Secret::new),
            },
            None => PaymentProvider::Simulated,
        },
        callback_secret: args.payments_callback_secret.clone().map(Secret::new),
        callback_url: args.payments_callback_url.clone(),
        breaker: BreakerConfig {
            cool_down: Duration::from_secs(args.payments_breaker_cool_down_secs.max(1)),
            ..BreakerConfig::default()
        },
        retry: RetryPolicy {
            attempt_timeout: Duration::from_millis(args.payments_timeout_ms.max(1)),
            deadline: Duration::from_millis(args.payments_deadline_ms),
            ..RetryPolicy::default()
        },
        settle_wait: defaults.settle_wait,
    }
}

fn non_negative_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a non-negative number of requests per second"
        )),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the GraphQL API and run the projectors (the default).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Measure throughput; prints figures for BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Fill the database with a realistic marketplace through the real
    /// command path: sellers, listings, funded buyers, orders in every state,
    /// reviews. Refuses a database that was seeded before.
    Seed(SeedArgs),
    /// Manage accounts from the operator's side.
    Accounts {
        #[command(subcommand)]
        which: AccountsCommand,
    },
    /// Read the event log itself: verify its hash chains, show a stream's
    /// history.
    Audit {
        #[command(subcommand)]
        which: crate::audit::AuditCommand,
    },
    /// The key table: rotate the master key.
    Keys {
        #[command(subcommand)]
        which: KeysCommand,
    },
    /// Inspect, rebuild and verify the read models (projections). `serve`
    /// rebuilds a projection whose version changed on start-up by itself,
    /// without downtime.
    Projections {
        #[command(subcommand)]
        which: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Re-wrap every data key (and the email index key) under a new master
    /// key, in one transaction; no event is touched. Then configure the
    /// new key as MARKETPLACE_MASTER_KEY everywhere (with the development
    /// key file, the file is replaced).
    Rotate {
        /// The new master key, 64 hex characters. Prefer the environment
        /// variable, which keeps it out of shell history.
        #[arg(long, env = "MARKETPLACE_NEW_MASTER_KEY", hide_env_values = true)]
        new_master_key: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an ADMIN account (the only way ADMIN is granted).
    CreateAdmin {
        /// The admin's email (must not belong to another account).
        #[arg(long)]
        email: String,
        /// The admin's password, 8 to 128 characters. Prefer the
        /// MARKETPLACE_ADMIN_PASSWORD environment variable, which keeps it
        /// out of shell history and process lists.
        #[arg(long, env = "MARKETPLACE_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        /// Public name.
        #[arg(long, default_value = "Administrator")]
        display_name: String,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.db, cli.serve).await,
        Some(Command::Serve(args)) => serve(cli.db, *args).await,
        Some(Command::Migrate) => {
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let pool = connect(&db.url, 4).await?;
            migrate(&pool).await?;
            pool.close().await;
            println!("migrations applied");
            db.shutdown().await
        }
        Some(Command::Schema) => {
            println!("{}", marketplace_api::graphql::sdl());
            Ok(())
        }
        Some(Command::Accounts {
            which:
                AccountsCommand::CreateAdmin {
                    email,
                    password,
                    display_name,
                },
        }) => {
            let master = cli.db.master()?;
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = marketplace_api::admin::create_admin_in(
                &db.url,
                &cli.db.event_store,
                &master,
                &email,
                &password,
                &display_name,
            )
            .await;
            db.shutdown().await?;
            let id = result?;
            println!(
                "admin account {id} created for {}",
                email.trim().to_lowercase()
            );
            Ok(())
        }
        Some(Command::Seed(args)) => {
            postgres_only(&cli.db.event_store, "seed")?;
            let external = cli
                .db
                .database_url
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty());
            let master = cli.db.master()?;
            let mut args = args;
            // The files go where `serve` looks by default.
            if args.assets_dir.is_none() {
                args.assets_dir = Some(cli.db.data_dir.join("assets"));
            }
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = tokio::select! {
                r = crate::seed::run(&db.url, &master, &args) => r,
                () = shutdown_signal() => Err(anyhow::anyhow!("interrupted: the database is partly seeded")),
            };
            db.shutdown().await?;
            let report = result?;
            println!("{report}");
            if external {
                println!("serve it: marketplace (same DATABASE_URL), then open http://127.0.0.1:8080/graphql");
            } else {
                println!(
                    "serve it: marketplace --data-dir {}, then open http://127.0.0.1:8080/graphql",
                    cli.db.data_dir.display()
                );
            }
            Ok(())
        }
        Some(Command::Audit { which }) => {
            let keys = crate::audit::Keys {
                master: cli.db.master()?,
                anchor: cli.db.anchor()?,
            };
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = crate::audit::run(&db.url, &cli.db.event_store, &keys, which).await;
            db.shutdown().await?;
            result
        }
        Some(Command::Keys {
            which: KeysCommand::Rotate { new_master_key },
        }) => {
            let master = cli.db.master()?;
            let new = MasterKey::from_hex(&new_master_key)
                .map_err(|e| anyhow::anyhow!("MARKETPLACE_NEW_MASTER_KEY: {e}"))?;
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = rotate(&db.url, master, &new).await;
            db.shutdown().await?;
            let rotation = result?;
            let dev_file = cli
                .db
                .master_key
                .as_deref()
                .is_none_or(|k| k.trim().is_empty())
                .then(|| {
                    cli.db
                        .data_dir
                        .join(marketplace_api::config::DEV_MASTER_KEY_FILE)
                });
            if let Some(path) = dev_file {
                std::fs::write(&path, new.to_hex())?;
                println!(
                    "the development master key in {} is replaced",
                    path.display()
                );
            }
            println!(
                "rotated: {} key(s) re-wrapped under master key {} ({} already were); no event was touched. Configure the new key as MARKETPLACE_MASTER_KEY everywhere.",
                rotation.rewrapped,
                new.id(),
                rotation.already
            );
            Ok(())
        }
        Some(Command::Projections { which }) => {
            let master = cli.db.master()?;
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = projections::run(&db.url, &cli.db.event_store, &master, which).await;
            db.shutdown().await?;
            result
        }
        Some(Command::Bench { which }) => {
            postgres_only(&cli.db.event_store, "bench")?;
            let master = cli.db.master()?;
            let db = Database::acquire(cli.db.database_url, &cli.db.data_dir).await?;
            let result = bench::run(&db.url, &master, which).await;
            db.shutdown().await?;
            result
        }
    }
}

/// `keys rotate`: re-wraps the key table under `new`.
async fn rotate(
    url: &str,
    master: MasterKey,
    new: &MasterKey,
) -> anyhow::Result<marketplace_keys::Rotation> {
    let pool = connect(url, 2).await?;
    migrate(&pool).await?;
    let rotation = marketplace_keys::Keyring::new(pool.clone(), master)
        .rotate(new)
        .await;
    pool.close().await;
    Ok(rotation?)
}

/// `seed` and `bench` measure and count the Postgres events table itself.
fn postgres_only(choice: &EventStoreChoice, command: &str) -> anyhow::Result<()> {
    match choice {
        EventStoreChoice::Postgres => Ok(()),
        EventStoreChoice::KurrentDb(_) => {
            anyhow::bail!("`{command}` works on the Postgres event store only; drop --event-store")
        }
    }
}

async fn serve(db_args: DbArgs, args: ServeArgs) -> anyhow::Result<()> {
    let payments = payments_settings(&args);
    // Refuse a weak key before anything starts.
    let configured = args
        .jwt_secret
        .filter(|s| !s.is_empty())
        .map(|s| Secret::for_jwt(s).map_err(anyhow::Error::msg))
        .transpose()?;
    let master_key = db_args.master()?;
    let anchors = match (args.anchor_every, db_args.anchor()?) {
        (None, _) => None,
        (Some(every), Some(key)) => Some(AnchorSchedule {
            key,
            every,
            file: args.anchor_file.clone(),
        }),
        (Some(_), None) => {
            anyhow::bail!("--anchor-every needs MARKETPLACE_ANCHOR_KEY (or --anchor-key)")
        }
    };
    let db = Database::acquire(db_args.database_url, &db_args.data_dir).await?;
    let jwt_secret = match configured {
        Some(s) => s,
        None => {
            tracing::warn!("MARKETPLACE_JWT_SECRET is unset: using a random key; tokens will not survive a restart");
            Secret::random()
        }
    };
    let assets = {
        use marketplace_api::assets::{AssetLocation, AssetsSettings};
        let mut assets = AssetsSettings::local(db_args.data_dir.join("assets"));
        match args.assets_url.as_deref() {
            Some(url) if url.starts_with("s3://") => {
                assets.location = AssetLocation::S3(url.to_owned());
            }
            Some(dir) => assets.location = AssetLocation::Local(dir.into()),
            None => {}
        }
        assets.max_bytes = args.assets_max_bytes;
        assets
    };
    let settings = Settings {
        listen: args.listen,
        database_url: db.url.clone(),
        event_store: db_args.event_store,
        jwt_secret,
        token_ttl: Duration::from_secs(args.token_ttl_hours.saturating_mul(3600)),
        consistency_wait: Duration::from_millis(args.consistency_wait_ms),
        role: args.role,
        fee: marketplace_domain::values::FeeRate::from_basis_points(args.fee_bps)?,
        checkout_in_saga: args.checkout_in_saga,
        aggregate_cache: args.aggregate_cache,
        rate_limits: RateLimits {
            account: Limit {
                burst: args.rate_limit_account_burst,
                per_sec: args.rate_limit_account_per_sec,
            },
            anonymous: Limit {
                burst: args.rate_limit_anon_burst,
                per_sec: args.rate_limit_anon_per_sec,
            },
            login_per_email: Limit {
                burst: args.login_per_email_burst,
                per_sec: args.login_per_email_per_sec,
            },
            login_per_client: Limit {
                burst: args.login_per_client_burst,
                per_sec: args.login_per_client_per_sec,
            },
        },
        trusted_proxies: TrustedProxies::new(args.trusted_proxies),
        master_key,
        anchors,
        payments,
        assets,
        shutdown: marketplace_api::shutdown::ShutdownSettings {
            drain: args.shutdown_drain,
            grace: args.shutdown_grace,
        },
        replicas: marketplace_api::replicas::ReplicaSettings {
            urls: args
                .read_database_urls
                .iter()
                .map(|u| u.trim())
                .filter(|u| !u.is_empty())
                .map(Secret::new)
                .collect(),
            wait: Duration::from_millis(args.replica_wait_ms),
            poll: Duration::from_millis(args.replica_poll_ms),
        },
    };
    let result = async {
        let app = Application::build(settings).await?;
        match (app.local_addr(), args.role) {
            (Some(addr), ServeRole::Projector) => println!(
                "marketplace projector running (no API in this process); /healthz, /readyz and /metrics on http://{addr}"
            ),
            (Some(addr), ServeRole::Api | ServeRole::All) => {
                println!("marketplace listening on http://{addr}/graphql (open it in a browser for GraphiQL)");
            }
            (None, _) => println!("marketplace running"),
        }
        app.run_until_stopped(shutdown_signal()).await
    }
    .await;
    db.shutdown().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(argv: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Some(Command::Serve(args)) => Ok(*args),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn trusted_proxies_are_repeatable_and_comma_separated() {
        let args = serve_args(&[
            "marketplace",
            "serve",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxies",
            "fd00::/8,192.0.2.1",
        ])
        .expect("parses");
        let shown: Vec<String> = args.trusted_proxies.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]);
        let none = serve_args(&["marketplace", "serve"]).expect("parses");
        assert!(none.trusted_proxies.is_empty(), "none by default");
    }

    #[test]
    fn read_database_urls_are_repeatable_and_comma_separated() {
        let args = serve_args(&[
            "marketplace",
            "serve",
            "--read-database-url",
            "postgres://r1/db",
            "--read-database-url",
            "postgres://r2/db,postgres://r3/db",
            "--replica-wait-ms",
            "50",
        ])
        .expect("parses");
        assert_eq!(
            args.read_database_urls,
            ["postgres://r1/db", "postgres://r2/db", "postgres://r3/db"]
        );
        assert_eq!(args.replica_wait_ms, 50);
        let none = serve_args(&["marketplace", "serve"]).expect("parses");
        assert!(none.read_database_urls.is_empty(), "none by default");
        assert_eq!(none.replica_wait_ms, 200);
        assert_eq!(none.replica_poll_ms, 10);
        assert!(serve_args(&["marketplace", "serve", "--replica-poll-ms", "0"]).is_err());
    }

    #[test]
    fn a_malformed_trusted_proxy_is_refused() {
        let err = serve_args(&["marketplace", "serve", "--trusted-proxy", "10.1.2.3/8"])
            .expect_err("host bits set");
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn the_anchor_interval_takes_seconds_minutes_or_hours() {
        let args = serve_args(&["marketplace", "serve", "--anchor-every", "10m"]).expect("parses");
        assert_eq!(args.anchor_every, Some(Duration::from_secs(600)));
        assert_eq!(parse_every("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_every("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_every("0s").is_err());
        assert!(parse_every("5d").is_err());
        assert!(serve_args(&["marketplace", "serve", "--anchor-every", "soon"]).is_err());
    }

    #[test]
    fn a_stop_drains_for_nothing_and_finishes_within_30_s_unless_told_otherwise() {
        let args = serve_args(&["marketplace", "serve"]).expect("parses");
        assert_eq!(
            (args.shutdown_drain, args.shutdown_grace),
            (Duration::ZERO, Duration::from_secs(30))
        );
        let args = serve_args(&[
            "marketplace",
            "serve",
            "--shutdown-drain",
            "5s",
            "--shutdown-grace",
            "2m",
        ])
        .expect("parses");
        assert_eq!(
            (args.shutdown_drain, args.shutdown_grace),
            (Duration::from_secs(5), Duration::from_secs(120))
        );
        assert!(serve_args(&["marketplace", "serve", "--shutdown-grace", "-1"]).is_err());
    }
}
