//! `marketplace bench read`: what the served GraphQL API answers per second,
//! over real HTTP, on a seeded catalogue.
//!
//! The catalogue is written by `marketplace seed` (the real command path)
//! into a database of its own, `marketplace_bench_read_<N>` for N listings,
//! kept between runs: a later run reuses it when its log holds the listings,
//! orders and accounts the plan asks for (`--fresh` seeds it again). A seed
//! is written to `…_seeding` and renamed only once it has finished, so an
//! interrupted seed is never mistaken for a whole one.
//!
//! The API then runs in this process (`Application::build`, port 0, rate
//! limits lifted) and, once every read model has caught up with the log
//! head, each query shape is driven on its own by `--concurrency` clients,
//! each holding one keep-alive connection, for `--seconds`. Client and
//! server share the machine, as they share the process: compare shapes as
//! ratios to `{ __typename }`, the ceiling measured in the same run.
//!
//! May depend on the seed use case, the application and the read models'
//! public views (`rm_listings`, `rm_orders`, `rm_reviews`, `rm_accounts`),
//! which it reads only to pick ids.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use marketplace_domain::account::AccountRegistered;
use marketplace_domain::listing::ListingCreated;
use marketplace_domain::order::OrderPlaced;
use marketplace_domain::DomainEvent;
use marketplace_projections::ProjectionState;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;

use crate::seed::{self, SeedArgs, DEFAULT_PASSWORD};
use marketplace_api::application::Application;
use marketplace_api::config::Settings;
use marketplace_api::ratelimit::RateLimits;

/// Listings of `--large`.
pub const LARGE_LISTINGS: usize = 100_000;
/// How long the read models may make no progress at all before the bench
/// gives up waiting for them.
const STALL: Duration = Duration::from_secs(120);
/// How often the catch-up wait looks at the checkpoints.
const POLL: Duration = Duration::from_millis(100);
/// Listings whose pages `listing(id:)` cycles through.
const LISTING_IDS: i64 = 1_000;
/// Listings whose reviews `reviews(listingId:)` cycles through.
const REVIEWED_LISTINGS: i64 = 200;
/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `marketplace bench read`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Listings in the catalogue, seeded as N/100 sellers (at least one)
    /// with an equal share each, so N must split evenly: 10000 and 100000
    /// do. About 85% are published, the rest drafts or delisted, as
    /// `marketplace seed` plans them.
    #[arg(long, default_value_t = ReadArgs::DEFAULT_LISTINGS, conflicts_with = "large")]
    pub listings: usize,
    /// The large catalogue: 100,000 listings (--listings 100000).
    #[arg(long)]
    pub large: bool,
    /// Orders the seed places (about 8 events each), spread over the buyers:
    /// `myOrders` is measured as the buyer with the most.
    #[arg(long, default_value_t = ReadArgs::DEFAULT_ORDERS)]
    pub orders: usize,
    /// Buyer accounts the seed opens and funds.
    #[arg(long, default_value_t = ReadArgs::DEFAULT_BUYERS)]
    pub buyers: usize,
    /// Seed the catalogue again even if its database
    /// (marketplace_bench_read_<listings>) already holds this plan. Without
    /// it, a database holding the same listings, orders and accounts is
    /// reused as it is, and any other is dropped and seeded again.
    #[arg(long)]
    pub fresh: bool,
    /// Concurrent clients, each with one keep-alive HTTP/1.1 connection and
    /// one request in flight.
    #[arg(long, default_value_t = ReadArgs::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Seconds each shape is measured for (fractions allowed, e.g. 0.5 for a
    /// smoke run).
    #[arg(long, default_value_t = ReadArgs::DEFAULT_SECONDS, value_parser = seconds)]
    pub seconds: f64,
    /// Seconds each shape runs unmeasured first (connections opened, caches
    /// and query plans warm). 0 skips it.
    #[arg(long, default_value_t = ReadArgs::DEFAULT_WARMUP, value_parser = non_negative_seconds)]
    pub warmup: f64,
    /// Only these shapes, comma-separated, in the usual order: typename,
    /// newest, price-asc, price-desc, rating, search, category, facets,
    /// listing, my-orders, reviews. Default: all of them.
    #[arg(long, value_delimiter = ',', value_parser = shape_key)]
    pub only: Vec<String>,
    /// The word searched for in the `search` shape (full text over titles,
    /// tags and descriptions; the seed's titles use it).
    #[arg(long, default_value = ReadArgs::DEFAULT_SEARCH)]
    pub search: String,
    /// The category filtered on in the `category` shape (one of the seed's
    /// ten: electronics, books, home, garden, fashion, toys, sports, music,
    /// art, software).
    #[arg(long, default_value = ReadArgs::DEFAULT_CATEGORY)]
    pub category: String,
}

impl ReadArgs {
    const DEFAULT_LISTINGS: usize = 10_000;
    const DEFAULT_ORDERS: usize = 2_000;
    const DEFAULT_BUYERS: usize = 100;
    const DEFAULT_CONCURRENCY: u16 = 16;
    const DEFAULT_SECONDS: f64 = 10.0;
    const DEFAULT_WARMUP: f64 = 1.0;
    const DEFAULT_SEARCH: &'static str = "vintage";
    const DEFAULT_CATEGORY: &'static str = "books";

    /// Listings in the catalogue, `--large` included.
    pub fn listing_count(&self) -> usize {
        if self.large {
            LARGE_LISTINGS
        } else {
            self.listings
        }
    }
}

impl Default for ReadArgs {
    fn default() -> Self {
        Self {
            listings: Self::DEFAULT_LISTINGS,
            large: false,
            orders: Self::DEFAULT_ORDERS,
            buyers: Self::DEFAULT_BUYERS,
            fresh: false,
            concurrency: Self::DEFAULT_CONCURRENCY,
            seconds: Self::DEFAULT_SECONDS,
            warmup: Self::DEFAULT_WARMUP,
            only: Vec::new(),
            search: Self::DEFAULT_SEARCH.to_owned(),
            category: Self::DEFAULT_CATEGORY.to_owned(),
        }
    }
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 86400")),
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    match non_negative_seconds(s)? {
        v if v >= 0.001 => Ok(v),
        _ => Err(format!("`{s}`: measure each shape for at least 0.001 s")),
    }
}

fn shape_key(s: &str) -> Result<String, String> {
    let key = s.trim().to_ascii_lowercase();
    if SHAPE_KEYS.contains(&key.as_str()) {
        Ok(key)
    } else {
        Err(format!(
            "unknown shape `{s}`; shapes: {}",
            SHAPE_KEYS.join(", ")
        ))
    }
}

const SHAPE_KEYS: [&str; 11] = [
    "typename",
    "newest",
    "price-asc",
    "price-desc",
    "rating",
    "search",
    "category",
    "facets",
    "listing",
    "my-orders",
    "reviews",
];

/// The `marketplace seed` plan of a catalogue of `listings` listings.
pub fn seed_plan(listings: usize, orders: usize, buyers: usize) -> anyhow::Result<SeedArgs> {
    if listings == 0 {
        anyhow::bail!("--listings must be at least 1");
    }
    let sellers = (listings / 100).max(1);
    if listings % sellers != 0 {
        anyhow::bail!(
            "--listings {listings} does not split over {sellers} sellers (one per 100 listings): \
             pass a multiple of {sellers}, e.g. {}",
            listings - listings % sellers
        );
    }
    Ok(SeedArgs {
        sellers,
        listings_per_seller: listings / sellers,
        buyers,
        orders,
        ..SeedArgs::default()
    })
}

/// Seeds (or reuses) the catalogue on the server at `server_url`, measures
/// it, prints the figures, and fails if any shape had errors.
pub async fn run(
    server_url: &str,
    master: &marketplace_keys::MasterKey,
    args: &ReadArgs,
) -> anyhow::Result<()> {
    let database_url = prepare(server_url, master, args).await?;
    let report = measure(&database_url, master, args).await?;
    report.print(args);
    report.check()
}

// ---------------------------------------------------------------------------
// The catalogue's database.

/// What the log of a seeded catalogue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seeded {
    listings: i64,
    orders: i64,
    accounts: i64,
}

impl Seeded {
    fn of(plan: &SeedArgs) -> Self {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            listings: n(plan.sellers * plan.listings_per_seller),
            orders: n(plan.orders),
            // Sellers, buyers and the admin.
            accounts: n(plan.sellers + plan.buyers + 1),
        }
    }

    async fn read(database_url: &str) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(database_url).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, count(*) FROM events WHERE event_type = ANY($1) GROUP BY event_type",
        )
        .bind(vec![
            ListingCreated::NAME,
            OrderPlaced::NAME,
            AccountRegistered::NAME,
        ])
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        let count = |name: &str| rows.iter().find(|(t, _)| t == name).map_or(0, |(_, n)| *n);
        Ok(Self {
            listings: count(ListingCreated::NAME),
            orders: count(OrderPlaced::NAME),
            accounts: count(AccountRegistered::NAME),
        })
    }
}

impl std::fmt::Display for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} listings, {} orders, {} accounts",
            self.listings, self.orders, self.accounts
        )
    }
}

/// The URL of the catalogue's database, seeded now unless a whole seed of
/// the same plan is there already.
async fn prepare(
    server_url: &str,
    master: &marketplace_keys::MasterKey,
    args: &ReadArgs,
) -> anyhow::Result<String> {
    let listings = args.listing_count();
    let plan = seed_plan(listings, args.orders, args.buyers)?;
    let expected = Seeded::of(&plan);
    let name = format!("marketplace_bench_read_{listings}");
    let seeding = format!("{name}_seeding");
    let url = with_database(server_url, &name);
    let mut admin = PgConnection::connect(server_url)
        .await
        .context("could not connect")?;
    if exists(&mut admin, &name).await? {
        if args.fresh {
            println!("--fresh: seeding {name} again");
        } else {
            match Seeded::read(&url).await {
                Ok(found) if found == expected => {
                    println!("reusing database {name} ({found}; --fresh seeds it again)");
                    admin.close().await?;
                    return Ok(url);
                }
                Ok(found) => println!(
                    "database {name} holds {found}, the plan is {expected}: seeding it again"
                ),
                Err(e) => println!("could not read database {name} ({e:#}): seeding it again"),
            }
        }
    }
    for db in [&name, &seeding] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    sqlx::query(&format!("CREATE DATABASE {seeding}"))
        .execute(&mut admin)
        .await?;
    println!("seeding database {name}: {expected}");
    let report = seed::run(&with_database(server_url, &seeding), master, &plan).await?;
    println!("{report}");
    // Seeding has finished: anything still connected is a leftover of it.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&seeding)
    .execute(&mut admin)
    .await?;
    sqlx::query(&format!("ALTER DATABASE {seeding} RENAME TO {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("could not rename {seeding} to {name}"))?;
    admin.close().await?;
    Ok(url)
}

async fn exists(admin: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(admin)
            .await?,
    )
}

/// `url` with its database (path) replaced, query string kept.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = base.find("://").map_or(0, |at| at + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |at| authority + at);
    format!("{}/{database}{query}", &base[..path])
}

// ---------------------------------------------------------------------------
// Measuring.

/// One shape's figures.
#[derive(Debug, Clone)]
pub struct ShapeFigures {
    /// Its `--only` key.
    pub key: &'static str,
    /// What it asks, for the tables.
    pub label: String,
    /// Answers received in the measured window.
    pub requests: u64,
    /// Of which errors: a status other than 200, `errors` in the body, or
    /// no answer at all.
    pub errors: u64,
    /// The first error seen.
    pub error_sample: Option<String>,
    /// Answers per second.
    pub per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Rows in the checked part of the first answer (edges, or 1 for a
    /// single object); 0 means the shape answered no data.
    pub rows: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct ReadReport {
    /// Listings in the catalogue, and of which published.
    pub listings: (i64, i64),
    /// Each shape, in the order run.
    pub shapes: Vec<ShapeFigures>,
    /// Shapes that answered less data than they should.
    pub warnings: Vec<String>,
}

/// One GraphQL query, with the request bodies it cycles through.
struct Shape {
    key: &'static str,
    label: String,
    /// JSON pointer to what must be non-empty in an answer.
    check: &'static str,
    /// Rows a full answer has (fewer is worth a warning).
    full: usize,
    bearer: Option<String>,
    bodies: Vec<String>,
}

const PAGE: &str =
    "totalCount edges { node { id title price { amount currencyCode } seller { displayName } } }";
const SORTS: [(&str, &str); 4] = [
    ("newest", "NEWEST"),
    ("price-asc", "PRICE_ASC"),
    ("price-desc", "PRICE_DESC"),
    ("rating", "RATING"),
];

fn body(query: &str, variables: Value) -> String {
    json!({ "query": query, "variables": variables }).to_string()
}

fn page_shape(key: &'static str, label: String, arguments: &str, extra: &str) -> Shape {
    let query = format!("{{ listings(first: 20, {arguments}) {{ {PAGE}{extra} }} }}");
    Shape {
        key,
        label,
        check: "/data/listings/edges",
        full: 20,
        bearer: None,
        bodies: vec![body(&query, json!({}))],
    }
}

/// Serves the catalogue at `database_url` in this process, waits for the
/// read models, and drives every selected shape.
pub async fn measure(
    database_url: &str,
    master: &marketplace_keys::MasterKey,
    args: &ReadArgs,
) -> anyhow::Result<ReadReport> {
    let settings = Settings {
        rate_limits: RateLimits::DISABLED,
        master_key: master.clone(),
        ..Settings::for_database(database_url)
    };
    let app = Application::build(settings).await?;
    let addr = app.local_addr().context("the API did not bind")?;
    let pool = app.state().pool.clone();
    let store = app.state().handler.store().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let result = async {
        catch_up(&pool, store.as_ref()).await?;
        // Measure the steady state: statistics as autovacuum would have
        // them after a while, not those of freshly filled tables.
        sqlx::query("ANALYZE").execute(&pool).await?;
        let endpoint = format!("http://{addr}/graphql");
        let shapes = shapes(&pool, &endpoint, args).await?;
        let listings: (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'PUBLISHED') FROM rm_listings",
        )
        .fetch_one(&pool)
        .await?;
        println!(
            "catalogue: {} listings ({} published); {} clients, {} s per shape after {} s of warm-up",
            listings.0, listings.1, args.concurrency, args.seconds, args.warmup
        );
        let mut figures = Vec::new();
        let mut warnings = Vec::new();
        for shape in &shapes {
            // An error here shows again, counted, in the measured run.
            let probed = probe(&endpoint, shape).await;
            match probed {
                Ok(0) => warnings.push(format!("{}: the answer has no data", shape.label)),
                Ok(rows) if rows < shape.full => warnings.push(format!(
                    "{}: {rows} rows where a full page has {}",
                    shape.label, shape.full
                )),
                Ok(_) | Err(_) => {}
            }
            let mut f = drive(&endpoint, shape, args).await?;
            match probed {
                Ok(rows) => f.rows = rows,
                Err(e) => {
                    f.requests += 1;
                    f.errors += 1;
                    f.error_sample.get_or_insert(e);
                }
            }
            println!(
                "{:>10}: {:>9.0} req/s   p50 {:>8}   p99 {:>8}   {} errors",
                f.key,
                f.per_sec,
                millis(f.p50),
                millis(f.p99),
                f.errors
            );
            figures.push(f);
        }
        Ok::<_, anyhow::Error>(ReadReport {
            listings,
            shapes: figures,
            warnings,
        })
    }
    .await;
    let _ = stop.send(());
    let served = server.await;
    // The store's listener uses the pool: stop it first.
    drop(store);
    pool.close().await;
    let report = result?;
    served.context("the API task panicked")??;
    Ok(report)
}

/// Waits until every read model's live build is this binary's version, has
/// folded the log up to its head and has no rebuild in progress.
async fn catch_up(pool: &PgPool, store: &dyn marketplace_store::EventStore) -> anyhow::Result<()> {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix("catch-up");
    let versions: Vec<(&str, i32)> = marketplace_projections::all()
        .iter()
        .map(|p| (p.name(), p.version()))
        .collect();
    let mut last_move = (Instant::now(), 0u64);
    loop {
        let status = marketplace_projections::status::status(pool, store).await?;
        let mut slowest = u64::MAX;
        let mut head = 0;
        let mut waiting = Vec::new();
        for (name, version) in &versions {
            let Some(s) = status.iter().find(|s| s.name == *name) else {
                waiting.push(format!("{name} (no build)"));
                slowest = 0;
                continue;
            };
            if s.state == ProjectionState::Failed
                || s.rebuild
                    .as_ref()
                    .is_some_and(|r| r.state == ProjectionState::Failed)
            {
                pb.abandon();
                anyhow::bail!(
                    "projection {name} failed: {}",
                    s.last_error
                        .as_deref()
                        .or(s.rebuild.as_ref().and_then(|r| r.last_error.as_deref()))
                        .unwrap_or("(no error recorded)")
                );
            }
            head = s.head.0;
            if s.schema.is_none() {
                waiting.push(format!("{name} (starting)"));
                slowest = 0;
                continue;
            }
            // A rebuild's progress is what moves while the live build waits.
            let at = s.rebuild.as_ref().map_or(s.position.0, |r| r.position.0);
            slowest = slowest.min(at);
            if s.version != *version || s.rebuild.is_some() {
                waiting.push(format!("{name} (rebuilding v{version})"));
            } else if s.lag_events > 0 {
                waiting.push((*name).to_owned());
            }
        }
        pb.set_length(head);
        pb.set_position(slowest.min(head));
        pb.set_message(waiting.join(", "));
        if waiting.is_empty() {
            pb.finish_and_clear();
            return Ok(());
        }
        if slowest != last_move.1 {
            last_move = (Instant::now(), slowest);
        } else if last_move.0.elapsed() > STALL {
            pb.abandon();
            anyhow::bail!(
                "the read models made no progress for {}s (waiting for {})",
                STALL.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The selected shapes, with ids picked from the read models.
async fn shapes(pool: &PgPool, endpoint: &str, args: &ReadArgs) -> anyhow::Result<Vec<Shape>> {
    let wanted = |key: &str| args.only.is_empty() || args.only.iter().any(|k| k == key);
    let mut shapes = Vec::new();
    if wanted("typename") {
        shapes.push(Shape {
            key: "typename",
            label: "{ __typename }".into(),
            check: "/data/__typename",
            full: 1,
            bearer: None,
            bodies: vec![body("{ __typename }", json!({}))],
        });
    }
    for (key, sort) in SORTS {
        if wanted(key) {
            shapes.push(page_shape(
                key,
                format!("listings(first: 20, sort: {sort})"),
                &format!("sort: {sort}"),
                "",
            ));
        }
    }
    // Filter values go in as literals so that every shape is one constant
    // document; serde_json's string escaping is valid GraphQL.
    let search = Value::from(args.search.as_str()).to_string();
    let category = Value::from(args.category.as_str()).to_string();
    if wanted("search") {
        shapes.push(page_shape(
            "search",
            format!("listings, search {search}, RELEVANCE"),
            &format!("filter: {{ search: {search} }}, sort: RELEVANCE"),
            "",
        ));
    }
    if wanted("category") {
        shapes.push(page_shape(
            "category",
            format!("listings, category {category}, PRICE_DESC"),
            &format!("filter: {{ category: {category} }}, sort: PRICE_DESC"),
            "",
        ));
    }
    if wanted("facets") {
        let mut shape = page_shape(
            "facets",
            "listings, PRICE_DESC, with facets".into(),
            "sort: PRICE_DESC",
            " facets { categories { value count } tags { value count } }",
        );
        shape.check = "/data/listings/facets/categories";
        shape.full = 1;
        shapes.push(shape);
    }
    if wanted("listing") {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT listing_id FROM rm_listings WHERE status = 'PUBLISHED' ORDER BY random() LIMIT $1",
        )
        .bind(LISTING_IDS)
        .fetch_all(pool)
        .await?;
        let query = "query($id: ID!) { listing(id: $id) { id title description category tags \
                     price { amount currencyCode } availableQuantity averageRating reviewCount \
                     seller { displayName } } }";
        shapes.push(Shape {
            key: "listing",
            label: format!("listing(id:), {} random ids", ids.len()),
            check: "/data/listing",
            full: 1,
            bearer: None,
            bodies: ids
                .iter()
                .map(|id| body(query, json!({ "id": id })))
                .collect(),
        });
    }
    if wanted("my-orders") {
        let buyer: Option<(String, i64)> = sqlx::query_as(
            "SELECT a.email, count(*) FROM rm_orders o JOIN rm_accounts a ON a.account_id = o.buyer_id \
             GROUP BY a.email ORDER BY count(*) DESC, a.email LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let (email, orders) = buyer.unwrap_or_else(|| (seed::buyer_email(1), 0));
        let token = login(endpoint, &email).await?;
        let query =
            "{ myOrders(first: 20) { edges { node { id status total { amount currencyCode } \
                     lines { quantity listing { title seller { displayName } } } } } } }";
        shapes.push(Shape {
            key: "my-orders",
            label: format!("myOrders(first: 20), a buyer of {orders} orders"),
            check: "/data/myOrders/edges",
            full: 20,
            bearer: Some(token),
            bodies: vec![body(query, json!({}))],
        });
    }
    if wanted("reviews") {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT listing_id FROM rm_reviews WHERE status = 'APPROVED' \
             GROUP BY listing_id ORDER BY count(*) DESC, listing_id LIMIT $1",
        )
        .bind(REVIEWED_LISTINGS)
        .fetch_all(pool)
        .await?;
        let query =
            "query($id: ID!) { reviews(listingId: $id, first: 20) { edges { node { rating comment \
                     author { displayName } } } } }";
        let bodies: Vec<String> = ids
            .iter()
            .map(|id| body(query, json!({ "id": id })))
            .collect();
        shapes.push(Shape {
            key: "reviews",
            label: format!("reviews(listingId:, first: 20), {} listings", ids.len()),
            check: "/data/reviews/edges",
            full: 1,
            bearer: None,
            // Without a reviewed listing, a listing without reviews: the
            // shape still runs and its warning says why it is empty.
            bodies: if bodies.is_empty() {
                vec![body(query, json!({ "id": uuid::Uuid::nil() }))]
            } else {
                bodies
            },
        });
    }
    Ok(shapes)
}

async fn login(endpoint: &str, email: &str) -> anyhow::Result<String> {
    let answer: Value = reqwest::Client::new()
        .post(endpoint)
        .json(&json!({
            "query": "mutation($email: String!, $password: String!) { login(email: $email, password: $password) { token } }",
            "variables": { "email": email, "password": DEFAULT_PASSWORD },
        }))
        .send()
        .await?
        .json()
        .await?;
    answer
        .pointer("/data/login/token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("could not log in as {email}: {answer}"))
}

fn request(
    client: &reqwest::Client,
    endpoint: &str,
    bearer: Option<&str>,
    body: String,
) -> reqwest::RequestBuilder {
    let r = client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    match bearer {
        Some(token) => r.bearer_auth(token),
        None => r,
    }
}

/// Rows in the checked part of the shape's first answer, or its error.
async fn probe(endpoint: &str, shape: &Shape) -> Result<usize, String> {
    let Some(first) = shape.bodies.first() else {
        return Ok(0);
    };
    let response = request(
        &reqwest::Client::new(),
        endpoint,
        shape.bearer.as_deref(),
        first.clone(),
    )
    .send()
    .await
    .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("HTTP {status}, body unreadable: {e}"))?;
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status != reqwest::StatusCode::OK || answer.get("errors").is_some() || answer.is_null() {
        return Err(format!("HTTP {status}: {}", clip(&text)));
    }
    Ok(match answer.pointer(shape.check) {
        Some(Value::Array(rows)) => rows.len(),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    })
}

fn clip(s: &str) -> String {
    const MAX: usize = 600;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    error_sample: Option<String>,
}

/// Runs `shape` with `--concurrency` clients: a warm-up, then the measured
/// window. An answer counts when it arrives inside the window.
async fn drive(endpoint: &str, shape: &Shape, args: &ReadArgs) -> anyhow::Result<ShapeFigures> {
    let window = Duration::from_secs_f64(args.seconds);
    let warm = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warm + window;
    let done = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(shape.bodies.clone());
    let concurrency = args.concurrency;
    let mut clients = Vec::new();
    for n in 0..usize::from(concurrency) {
        // One client each, so each holds its own keep-alive connection.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let (endpoint, done, bodies) = (endpoint.to_owned(), done.clone(), bodies.clone());
        let bearer = shape.bearer.clone();
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Clients start spread over the bodies.
            let mut next = n * bodies.len() / usize::from(concurrency);
            loop {
                let started = Instant::now();
                if started >= end {
                    return tally;
                }
                next = (next + 1) % bodies.len();
                let r = request(&client, &endpoint, bearer.as_deref(), bodies[next].clone());
                let outcome = match r.send().await {
                    Ok(response) => {
                        let status = response.status();
                        match response.bytes().await {
                            Ok(b) if status == reqwest::StatusCode::OK && !has_errors(&b) => Ok(()),
                            Ok(b) => Err(format!(
                                "HTTP {status}: {}",
                                clip(&String::from_utf8_lossy(&b))
                            )),
                            Err(e) => Err(format!("HTTP {status}, body unreadable: {e}")),
                        }
                    }
                    Err(e) => Err(format!("no answer: {e}")),
                };
                let finished = Instant::now();
                if finished < warm || finished >= end {
                    continue;
                }
                done.fetch_add(1, Ordering::Relaxed);
                let us = finished.duration_since(started).as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                if let Err(e) = outcome {
                    tally.errors += 1;
                    tally.error_sample.get_or_insert(e);
                }
            }
        }));
    }
    let pb = ProgressBar::new(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(shape.key);
    let mut all = std::pin::pin!(futures::future::join_all(clients));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let joined = loop {
        tokio::select! {
            joined = &mut all => break joined,
            _ = tick.tick() => {
                let now = Instant::now();
                if now < warm {
                    pb.set_message("warming up");
                } else {
                    let elapsed = now.duration_since(warm).min(window);
                    pb.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(0));
                    let n = done.load(Ordering::Relaxed);
                    pb.set_message(format!(
                        "{n} requests, {:.0} req/s",
                        n as f64 / elapsed.as_secs_f64().max(1e-3)
                    ));
                }
            }
        }
    };
    pb.finish_and_clear();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut error_sample = None;
    for tally in joined {
        let tally = tally.context("a client task panicked")?;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
        if error_sample.is_none() {
            error_sample = tally.error_sample;
        }
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        let at = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        Duration::from_micros(latencies.get(at).copied().map_or(0, u64::from))
    };
    Ok(ShapeFigures {
        key: shape.key,
        label: shape.label.clone(),
        requests: latencies.len() as u64,
        errors,
        error_sample,
        per_sec: latencies.len() as f64 / window.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        rows: 0,
    })
}

/// Whether a GraphQL answer carries errors: the serialised response is
/// compact, and inside a string the quotes would be escaped.
fn has_errors(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"errors\":";
    body.windows(KEY.len()).any(|w| w == KEY)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `12345.6` as `12,346`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl ReadReport {
    fn ceiling(&self) -> Option<f64> {
        self.shapes
            .iter()
            .find(|s| s.key == "typename")
            .map(|s| s.per_sec)
            .filter(|v| *v > 0.0)
    }

    /// The aligned table, the warnings, and the Markdown table.
    pub fn print(&self, args: &ReadArgs) {
        let width = self
            .shapes
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let ceiling = self.ceiling();
        let share = |v: f64| ceiling.map_or_else(String::new, |c| format!("{:.1}%", 100.0 * v / c));
        println!();
        println!(
            "{:<width$}  {:>9}  {:>10}  {:>10}  {:>7}  {:>9}  {:>6}",
            "shape", "req/s", "p50", "p99", "errors", "requests", "vs ceil"
        );
        for s in &self.shapes {
            println!(
                "{:<width$}  {:>9}  {:>10}  {:>10}  {:>7}  {:>9}  {:>7}",
                s.label,
                thousands(s.per_sec),
                millis(s.p50),
                millis(s.p99),
                s.errors,
                s.requests,
                share(s.per_sec)
            );
        }
        for w in &self.warnings {
            println!("warning: {w}");
        }
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n{} listings ({} published), {} clients, {} s per shape ({} s warm-up):\n",
            thousands(self.listings.0 as f64),
            thousands(self.listings.1 as f64),
            args.concurrency,
            args.seconds,
            args.warmup
        );
        let _ = writeln!(md, "| Shape | req/s | p50 | p99 | of `{{ __typename }}` |");
        let _ = writeln!(md, "|-------|------:|----:|----:|------:|");
        for s in &self.shapes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                s.label.replace('|', "\\|"),
                thousands(s.per_sec),
                millis(s.p50),
                millis(s.p99),
                share(s.per_sec)
            );
        }
        print!("{md}");
    }

    /// Fails if a shape had errors, showing one of each.
    pub fn check(&self) -> anyhow::Result<()> {
        let failed: Vec<&ShapeFigures> = self.shapes.iter().filter(|s| s.errors > 0).collect();
        if failed.is_empty() {
            return Ok(());
        }
        for s in &failed {
            println!(
                "{}: {} errors of {} requests; for example: {}",
                s.label,
                s.errors,
                s.requests,
                s.error_sample.as_deref().unwrap_or("?")
            );
        }
        anyhow::bail!(
            "{} of {} shapes answered errors",
            failed.len(),
            self.shapes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalogue_is_split_into_sellers_of_a_hundred_listings() {
        let plan = seed_plan(10_000, 2_000, 100).expect("plan");
        assert_eq!((plan.sellers, plan.listings_per_seller), (100, 100));
        let plan = seed_plan(100_000, 2_000, 100).expect("plan");
        assert_eq!((plan.sellers, plan.listings_per_seller), (1_000, 100));
        let plan = seed_plan(20, 30, 6).expect("plan");
        assert_eq!((plan.sellers, plan.listings_per_seller), (1, 20));
        assert!(seed_plan(10_050, 2_000, 100).is_err());
        assert!(seed_plan(0, 0, 0).is_err());
    }

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_options_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/marketplace?sslmode=disable", "b"),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "b"), "postgres://h/b");
    }

    #[test]
    fn errors_are_found_in_a_compact_answer_and_not_in_a_string() {
        assert!(has_errors(br#"{"data":null,"errors":[{"message":"x"}]}"#));
        assert!(!has_errors(br#"{"data":{"title":"\"errors\": none"}}"#));
    }

    #[test]
    fn large_numbers_get_thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.2), "0");
    }
}
