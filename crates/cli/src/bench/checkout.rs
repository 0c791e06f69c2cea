//! `marketplace bench checkout`: orders per second through the served API,
//! from `placeOrder` over real HTTP to a final status, in the four shapes of
//! a flash sale.
//!
//! Each case runs in a fresh scratch database of its own
//! (`marketplace_bench_checkout_<run>_<case>`) with the API, the projectors
//! and the process managers in this process (`Application::build`, port 0,
//! rate limits lifted), as `serve` runs them:
//!
//! - **a**: one hot listing with deep stock;
//! - **b**: 1,000 listings, each order for one of them;
//! - **c**: the hot listing of (a) with `--past-orders` orders in its past
//!   (appended to its stream before the run: reserved, then committed);
//! - **d**: demand 10× the stock: exactly the stock must sell, every other
//!   order must be REJECTED.
//!
//! The sale starts on a server that is open and settled, as a storefront
//! is when a sale begins:
//!
//! - every deposit credited;
//! - a warm-up (`--warm-up`, on by default): every buyer places one order
//!   on another listing, all at once, and each is final before the sale.
//!   A fresh process's first orders pay for new connections, statements
//!   prepared on each pooled connection and code run for the first time;
//!   their figures are printed on their own line, not folded into the
//!   sale's;
//! - the read models at the head and the log still;
//! - the setup's pages written out by a `CHECKPOINT` (case c's long past
//!   above all), as a real listing's past was written long before its
//!   sale: otherwise the checkpointer wrote them back while the sale's
//!   commits waited on the same disk;
//! - a quiet disk (`--disk-quiet-secs`, 3 by default): commits are flushed
//!   one at a time until none has taken 20 ms or more for that long. An
//!   earlier run's dropped databases held one flush for 45–56 ms about
//!   1.5–2 s after that run ended, every time (BENCHMARKS.md), and a sale
//!   started back to back met it in one run of three. The wait moves the
//!   sale past such a stall, and a probe that meets one starts the quiet
//!   period again. The wait is printed with the case.
//!
//! Without these waits the first placements raced the deposit saga and the
//! projections still folding the setup, and that first wave alone could
//! set the p99 of a short case.
//!
//! Nothing is dropped while a run measures: its databases are dropped
//! together when it ends, and a scratch database left by an earlier run
//! that did not finish (and that nobody is connected to) when the next one
//! starts. Dropping a database frees its files, and on a file system that
//! discards freed blocks (ext4 mounted with `discard`, as on the machine of
//! BENCHMARKS.md) the TRIM is issued in the background for seconds after
//! the next journal commits, and a WAL flush that meets it waits:
//! `fdatasync` stalled for up to 106 ms there after 600 MB were freed, even
//! after a `sync`. A finished case's database is instead made inert: its
//! tables leave autovacuum (which otherwise vacuumed them during the next
//! case), and a `CHECKPOINT` writes its dirty pages out before the next
//! case starts. Per-case names also keep two runs against one server apart.
//!
//! `--concurrency` buyers, each with its own token and keep-alive
//! connection, place one-unit orders until `--orders` are placed. The bench
//! prints placements/s with p50/p99, then orders/s reaching a final status
//! (CONFIRMED or REJECTED), measured from the first placement until the
//! last order is final. It checks the books — units sold never above the
//! stock, every buyer's balance plus escrow equal to what they deposited —
//! and prints this process's peak resident memory (client and server share
//! it; the peak is reset before each case). When the server runs on this
//! machine, it also prints the longest stall of the disk under its data
//! directory while the orders were placed, and how late a thread could be
//! woken (see [`super::disk`]): one slow flush holds every buyer in
//! flight, and so can set a short case's p99.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use marketplace_api::application::Application;
use marketplace_api::config::Settings;
use marketplace_api::ratelimit::RateLimits;
use marketplace_api::state::READ_MODELS;
use marketplace_commands::CommandHandler;
use marketplace_domain::account::Account;
use marketplace_domain::listing::{Listing, ListingEvent, ReservationCommitted, StockReserved};
use marketplace_domain::values::{ListingId, OrderId, Quantity};
use marketplace_domain::Aggregate;
use marketplace_projections::Progress;
use marketplace_store::{ExpectedRevision, Position, StreamId};
use serde_json::{json, Value};
use sqlx::Connection as _;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::disk::{self, checkpoint, quiet_disk, DiskFigures, DiskWatch, Quiet};
use super::{eur, event, ScratchDatabases};

/// The price of every listing, in cents.
const PRICE: i64 = 100;
/// How long orders may make no progress towards a final status before the
/// bench gives up.
const STALL: Duration = Duration::from_secs(120);

/// One shape of a flash sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Case {
    /// One hot listing with deep stock.
    A,
    /// 1,000 listings.
    B,
    /// One hot listing with a long past.
    C,
    /// Demand ten times the stock.
    D,
}

impl Case {
    fn describe(self) -> &'static str {
        match self {
            Case::A => "(a) one hot listing",
            Case::B => "(b) 1,000 listings",
            Case::C => "(c) a hot listing with a long past",
            Case::D => "(d) demand 10x the stock",
        }
    }
}

/// Options of `marketplace bench checkout`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckoutArgs {
    /// Cases to run, comma-separated: a (one hot listing), b (1,000
    /// listings), c (a hot listing with --past-orders past orders), d
    /// (demand 10x the stock).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b,c,d")]
    pub cases: Vec<Case>,
    /// Concurrent buyers, each with its own token and connection.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Orders placed in each case (in d, the demand; the stock is a tenth).
    #[arg(long, default_value_t = 4_000)]
    pub orders: usize,
    /// Past orders on the hot listing of case c.
    #[arg(long, default_value_t = 100_000)]
    pub past_orders: usize,
    /// Check orders out through the checkout saga (as `serve
    /// --checkout-in-saga` does) instead of in the placement's own atomic
    /// append, to compare the two.
    #[arg(long)]
    pub checkout_in_saga: bool,
    /// Before the sale, every buyer places one order on another listing,
    /// as a storefront open before the sale has (each connection, prepared
    /// statement and code path used once); its figures are printed apart.
    /// `--warm-up false` starts the sale on a server that has never taken
    /// an order.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_up: bool,
    /// Before the sale, wait until the server's commits have flushed for
    /// this many seconds without one taking 20 ms or more (at most 30 s,
    /// then the sale starts anyway and says so). What was freed or written
    /// just before (an earlier run's dropped databases above all) holds a
    /// flush for tens of milliseconds a second or two later. 0 starts the
    /// sale at once.
    #[arg(long, default_value_t = 3)]
    pub disk_quiet_secs: u64,
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct CaseFigures {
    /// Which case.
    pub case: Case,
    /// Orders acknowledged by `placeOrder`.
    pub placed: usize,
    /// Placements that failed.
    pub failed: usize,
    /// Placements per second.
    pub placed_per_sec: f64,
    /// Placement latency, median.
    pub p50: Duration,
    /// Placement latency, 99th percentile.
    pub p99: Duration,
    /// Orders final per second, first placement to last verdict.
    pub final_per_sec: f64,
    /// First placement to last verdict.
    pub until_final: Duration,
    /// Orders CONFIRMED.
    pub confirmed: u64,
    /// Orders REJECTED.
    pub rejected: u64,
    /// Peak resident memory of this process during the case, in bytes.
    pub peak_rss: u64,
    /// The flushes and stalls of the disk under the server's data directory while
    /// the orders were placed, when the server is local and the kernel
    /// reports them.
    pub disk: Option<DiskFigures>,
    /// How long the sale waited for a quiet disk, and whether it was quiet
    /// when the sale began (see [`CheckoutArgs::disk_quiet_secs`]).
    pub quiet: Quiet,
}

/// Runs every case of `args` against the PostgreSQL at `url` and prints
/// each one's figures.
pub async fn run(url: &str, args: &CheckoutArgs) -> anyhow::Result<()> {
    measure_each(url, args, |f| {
        println!(
            "{}: {} orders by {} buyers: placed {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {} failed); \
             final {:.0} orders/s ({} in {:.2} s: {} confirmed, {} rejected); books balanced; \
             peak RSS {} MB",
            f.case.describe(),
            f.placed,
            args.concurrency,
            f.placed_per_sec,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.failed,
            f.final_per_sec,
            f.placed,
            f.until_final.as_secs_f64(),
            f.confirmed,
            f.rejected,
            f.peak_rss / (1024 * 1024)
        );
        if args.disk_quiet_secs > 0 {
            println!(
                "  before the sale: {}",
                f.quiet.describe(args.disk_quiet_secs)
            );
        }
        if let Some(d) = f.disk {
            println!("  disk while placing: {}", d.describe());
        }
    })
    .await
    .map(drop)
}

/// Runs every case of `args` against the PostgreSQL at `url`, in case
/// order, and returns what each measured. A case whose books do not
/// balance is an error.
pub async fn measure(url: &str, args: &CheckoutArgs) -> anyhow::Result<Vec<CaseFigures>> {
    measure_each(url, args, |_| {}).await
}

async fn measure_each(
    url: &str,
    args: &CheckoutArgs,
    mut each: impl FnMut(&CaseFigures),
) -> anyhow::Result<Vec<CaseFigures>> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.orders > 0, "--orders must be at least 1");
    let mut cases = args.cases.clone();
    cases.sort();
    cases.dedup();
    let mut scratch = ScratchDatabases::open(url, "checkout").await?;
    let mut all = Vec::with_capacity(cases.len());
    let measured = async {
        for case in cases {
            let database = scratch.create(&format!("{case:?}").to_lowercase()).await?;
            let f = run_case(&database, case, args).await?;
            retire(&database).await?;
            each(&f);
            all.push(f);
        }
        anyhow::Ok(())
    }
    .await;
    let dropped = scratch.drop_all().await;
    measured?;
    dropped?;
    Ok(all)
}

/// Makes a finished case's database inert for the rest of the run: no
/// autovacuum on its tables, and its dirty pages written out by a
/// checkpoint (skipped where the role may not run one).
async fn retire(database: &str) -> anyhow::Result<()> {
    let mut db = sqlx::PgConnection::connect(database)
        .await
        .context("could not connect")?;
    sqlx::query(
        "DO $$ DECLARE t regclass; BEGIN
           FOR t IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           LOOP
             EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)', t);
           END LOOP;
         END $$",
    )
    .execute(&mut db)
    .await
    .context("could not turn autovacuum off in a finished case's database")?;
    checkpoint(&mut db).await?;
    db.close().await?;
    Ok(())
}

async fn run_case(database: &str, case: Case, args: &CheckoutArgs) -> anyhow::Result<CaseFigures> {
    let settings = Settings {
        rate_limits: RateLimits::DISABLED,
        checkout_in_saga: args.checkout_in_saga,
        ..Settings::for_database(database.to_owned())
    };
    let app = Application::build(settings).await?;
    println!(
        "  checkout: {}",
        if app.state().checkout_at_placement {
            "at placement (one atomic append across the order, listing and wallet streams)"
        } else {
            "by the checkout saga"
        }
    );
    let addr = app.local_addr().context("the API did not bind")?;
    let pool = app.state().pool.clone();
    let handler = app.state().handler.clone();
    let progress = app.state().progress.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let result = Bench {
        endpoint: format!("http://{addr}/graphql"),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency.max(16))
            .timeout(Duration::from_secs(60))
            .build()?,
        handler,
        pool: pool.clone(),
        progress,
    }
    .case(case, args)
    .await;
    let _ = stop.send(());
    let served = server.await;
    pool.close().await;
    let figures = result?;
    served.context("the API task panicked")??;
    Ok(figures)
}

struct Bench {
    endpoint: String,
    http: reqwest::Client,
    handler: CommandHandler,
    pool: sqlx::PgPool,
    progress: Progress,
}

struct Buyer {
    token: String,
    account: Uuid,
    deposit: i64,
}

impl Bench {
    async fn gql(
        &self,
        query: &str,
        variables: Value,
        token: Option<&str>,
    ) -> anyhow::Result<Value> {
        gql(&self.http, &self.endpoint, query, variables, token).await
    }

    async fn register(&self, email: &str, role: &str) -> anyhow::Result<(String, Uuid)> {
        let r = self
            .gql(
                "mutation($input: RegisterInput!) { register(input: $input) { token account { id } } }",
                json!({ "input": { "email": email, "password": "correct horse battery",
                        "displayName": "Bench", "roles": [role] } }),
                None,
            )
            .await?;
        let token = r
            .pointer("/data/register/token")
            .and_then(Value::as_str)
            .context("no token")?
            .to_owned();
        let id = r
            .pointer("/data/register/account/id")
            .and_then(Value::as_str)
            .context("no account id")?
            .parse()?;
        Ok((token, id))
    }

    async fn listing(&self, seller: &str, n: usize, stock: usize) -> anyhow::Result<String> {
        let r = self
            .gql(
                "mutation($input: CreateListingInput!) { createListing(input: $input) { listing { id } } }",
                json!({ "input": {
                    "kind": "PHYSICAL", "title": format!("Flash lamp {n}"),
                    "description": "For the sale", "category": "home", "tags": ["sale"],
                    "price": { "amount": format!("{}.{:02}", PRICE / 100, PRICE % 100), "currencyCode": "EUR" },
                    "quantity": stock
                } }),
                Some(seller),
            )
            .await?;
        let id = r
            .pointer("/data/createListing/listing/id")
            .and_then(Value::as_str)
            .context("no listing id")?
            .to_owned();
        self.gql(
            "mutation($id: ID!) { publishListing(id: $id) { listing { status } } }",
            json!({ "id": id }),
            Some(seller),
        )
        .await?;
        Ok(id)
    }

    async fn case(&self, case: Case, args: &CheckoutArgs) -> anyhow::Result<CaseFigures> {
        let orders = args.orders;
        let (listings, stock) = match case {
            Case::A | Case::C => (1, orders + 10),
            Case::B => (1_000, orders / 1_000 + 10),
            Case::D => (1, (orders / 10).max(1)),
        };
        let past = if case == Case::C { args.past_orders } else { 0 };
        let (seller, _) = self.register("seller@bench.example", "SELLER").await?;
        let mut ids = Vec::with_capacity(listings);
        for chunk in (0..listings).collect::<Vec<_>>().chunks(16) {
            let made = futures::future::join_all(
                chunk
                    .iter()
                    .map(|&n| self.listing(&seller, n, stock + past)),
            )
            .await;
            for id in made {
                ids.push(id?);
            }
        }
        // Where the warm-up orders go: not a listing the case counts.
        let warm_listing = self.listing(&seller, listings, args.concurrency).await?;
        if past > 0 {
            self.past_orders(&ids[0], past).await?;
            self.snapshot_after_the_past(&ids[0]).await?;
        }
        // Twice a fair share (faster clients place more than their share),
        // and the warm-up order.
        let per_buyer = 2 * orders.div_ceil(args.concurrency) as i64 + 2;
        let mut buyers = Vec::with_capacity(args.concurrency);
        for chunk in (0..args.concurrency).collect::<Vec<_>>().chunks(16) {
            let made = futures::future::join_all(chunk.iter().map(|&i| async move {
                let (token, account) = self
                    .register(&format!("buyer{i}@bench.example"), "BUYER")
                    .await?;
                let deposit = per_buyer * PRICE;
                self.gql(
                    "mutation($amount: MoneyInput!) { depositFunds(amount: $amount) { consistencyToken } }",
                    json!({ "amount": { "amount": format!("{}.{:02}", deposit / 100, deposit % 100), "currencyCode": "EUR" } }),
                    Some(&token),
                )
                .await?;
                Ok::<_, anyhow::Error>(Buyer {
                    token,
                    account,
                    deposit,
                })
            }))
            .await;
            for b in made {
                buyers.push(b?);
            }
        }
        self.credited(&buyers).await?;
        if args.warm_up {
            self.warm_up(&buyers, &warm_listing).await?;
        }
        self.quiesce().await?;
        // The setup's pages (case c's long past above all) are written out
        // before the sale, as a real listing's past would have been long
        // ago; the sale's own pages are written back during it as usual.
        checkpoint(&mut *self.pool.acquire().await?).await?;
        let quiet = quiet_disk(
            &mut *self.pool.acquire().await?,
            Duration::from_secs(args.disk_quiet_secs),
        )
        .await?;
        let start = self.handler.store().head().await?;
        reset_peak_rss();

        // Place.
        let ids = Arc::new(ids);
        let watch = disk::local_data_directory(&self.pool)
            .await
            .and_then(|d| DiskWatch::start(&d));
        let began = Instant::now();
        let results = self.place(&buyers, &ids, orders, usize::MAX).await?;
        let placing = began.elapsed();
        let disk = watch.map(DiskWatch::finish);
        let mut latencies: Vec<Duration> = Vec::with_capacity(orders);
        let mut failed = 0;
        for (l, f) in results {
            latencies.extend(l);
            failed += f;
        }
        latencies.sort_unstable();
        let placed = latencies.len();

        // Wait until every acknowledged order is final.
        let (confirmed, rejected) = self.settle(start, placed as u64).await?;
        let until_final = began.elapsed();
        let peak_rss = peak_rss();

        // The books.
        let sold = confirmed;
        anyhow::ensure!(
            sold <= (stock * listings) as u64,
            "oversold: {sold} confirmed, stock {}",
            stock * listings
        );
        if case == Case::D {
            anyhow::ensure!(
                sold == stock as u64,
                "exactly the stock must sell: {sold} of {stock}"
            );
            let out_of_stock: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE position > $1 AND event_type = 'order.rejected' \
                 AND data->>'reason' = 'out of stock'",
            )
            .bind(i64::try_from(start.0)?)
            .fetch_one(&self.pool)
            .await?;
            anyhow::ensure!(
                out_of_stock == rejected as i64,
                "every other order is rejected as out of stock: {out_of_stock} of {rejected}"
            );
        }
        self.check_money(&buyers).await?;
        let pct = |q: f64| latencies[((placed as f64 * q) as usize).min(placed.saturating_sub(1))];
        anyhow::ensure!(placed > 0, "no order was placed ({failed} failed)");
        Ok(CaseFigures {
            case,
            placed,
            failed,
            placed_per_sec: placed as f64 / placing.as_secs_f64(),
            p50: pct(0.50),
            p99: pct(0.99),
            final_per_sec: placed as f64 / until_final.as_secs_f64(),
            until_final,
            confirmed,
            rejected,
            peak_rss,
            disk,
            quiet,
        })
    }

    /// Appends `n` past orders to the listing's stream: each reserved one
    /// unit, then committed it as sold.
    async fn past_orders(&self, listing: &str, n: usize) -> anyhow::Result<()> {
        let listing_id = ListingId(listing.parse()?);
        let stream = StreamId::new(Listing::CATEGORY, listing_id.0)?;
        let now = chrono::Utc::now();
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(500);
            let mut events = Vec::with_capacity(batch * 2);
            for _ in 0..batch {
                let order_id = OrderId(Uuid::now_v7());
                events.push(event(ListingEvent::StockReserved(StockReserved {
                    listing_id,
                    order_id,
                    quantity: Quantity(1),
                    reserved_at: now,
                }))?);
                events.push(event(ListingEvent::ReservationCommitted(
                    ReservationCommitted {
                        listing_id,
                        order_id,
                        quantity: Quantity(1),
                        committed_at: now,
                    },
                ))?);
            }
            self.handler
                .store()
                .append(&stream, ExpectedRevision::Any, events)
                .await?;
            done += batch;
        }
        Ok(())
    }

    /// The past orders went to the log directly, not through a handler,
    /// so the snapshots the live path takes every
    /// `DEFAULT_SNAPSHOT_EVERY` events are missing: a cold load (as after
    /// a restart) folds the whole stream once and stores one; a second cold
    /// load starts from it. Both times are printed. Then the server's own
    /// handler catches up with the stream, as if the orders had gone
    /// through it.
    async fn snapshot_after_the_past(&self, listing: &str) -> anyhow::Result<()> {
        let id: Uuid = listing.parse()?;
        let stream = StreamId::new(Listing::CATEGORY, id)?;
        let store = self.handler.store().clone();
        let started = Instant::now();
        let folded = CommandHandler::new(store.clone())
            .load::<Listing>(id)
            .await?;
        let fold_time = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(60);
        while store
            .read_snapshot(&stream)
            .await?
            .is_none_or(|s| Some(s.revision) != folded.revision)
        {
            anyhow::ensure!(Instant::now() < deadline, "no snapshot was stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let from_snapshot = CommandHandler::new(store).load::<Listing>(id).await?;
        let snapshot_time = started.elapsed();
        anyhow::ensure!(
            from_snapshot.state == folded.state,
            "the snapshot does not give the state the events do"
        );
        println!(
            "  cold load of the listing ({} events): {:.1} ms folding them, {:.1} ms from its snapshot",
            folded.revision.map_or(0, |r| r + 1),
            fold_time.as_secs_f64() * 1e3,
            snapshot_time.as_secs_f64() * 1e3
        );
        self.handler.load::<Listing>(id).await?;
        Ok(())
    }

    /// Waits until every buyer's deposit is credited (the deposit saga
    /// runs after `depositFunds` answers).
    async fn credited(&self, buyers: &[Buyer]) -> anyhow::Result<()> {
        let deadline = Instant::now() + STALL;
        for b in buyers {
            while self.funds(b.account).await? < b.deposit {
                anyhow::ensure!(Instant::now() < deadline, "a deposit was never credited");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// A buyer's balance plus what is held in escrow, in cents.
    async fn funds(&self, account: Uuid) -> anyhow::Result<i64> {
        let currency = eur(0)?.currency;
        let a = self.handler.load::<Account>(account).await?.state;
        let held: i64 = a.escrow.values().map(|m| m.minor).sum();
        Ok(a.balance(&currency).minor + held)
    }

    /// Every buyer places one order on `listing`, all at once, and the
    /// bench waits until each is final. Prints what they took: the cost of
    /// a server's first orders (new connections, statements prepared,
    /// code paths run for the first time), kept out of the sale's figures.
    /// The books must balance after it too.
    async fn warm_up(&self, buyers: &[Buyer], listing: &str) -> anyhow::Result<()> {
        let start = self.handler.store().head().await?;
        let ids = Arc::new(vec![listing.to_owned()]);
        let results = self.place(buyers, &ids, buyers.len(), 1).await?;
        let mut latencies: Vec<Duration> = results.iter().flat_map(|(l, _)| l.clone()).collect();
        let failed: usize = results.iter().map(|(_, f)| f).sum();
        anyhow::ensure!(failed == 0, "{failed} warm-up orders failed");
        latencies.sort_unstable();
        let (confirmed, _) = self.settle(start, latencies.len() as u64).await?;
        anyhow::ensure!(
            confirmed == buyers.len() as u64,
            "every warm-up order should be confirmed: {confirmed} of {}",
            buyers.len()
        );
        for b in buyers.iter() {
            let now = self.funds(b.account).await?;
            anyhow::ensure!(
                now == b.deposit,
                "money not conserved in the warm-up: {now} cents against {}",
                b.deposit
            );
        }
        println!(
            "  warm-up: {} orders, one per buyer, on another listing: p50 {:.1} ms, slowest {:.1} ms",
            latencies.len(),
            latencies[latencies.len() / 2].as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Buyers place one-unit orders for `ids` (in turn) until `orders` are
    /// placed, each buyer at most `each`. Each buyer is its own task, as
    /// separate clients are: a buyer's latency does not include waiting
    /// for its siblings' responses to be read. Returns each buyer's
    /// latencies and failures.
    async fn place(
        &self,
        buyers: &[Buyer],
        ids: &Arc<Vec<String>>,
        orders: usize,
        each: usize,
    ) -> anyhow::Result<Vec<(Vec<Duration>, usize)>> {
        let next = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = buyers
            .iter()
            .map(|b| {
                let (next, ids) = (next.clone(), ids.clone());
                let (http, endpoint, token) =
                    (self.http.clone(), self.endpoint.clone(), b.token.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failed = 0usize;
                    while latencies.len() + failed < each {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= orders {
                            break;
                        }
                        let listing = &ids[i % ids.len()];
                        let sent = Instant::now();
                        let placed = gql(
                            &http,
                            &endpoint,
                            "mutation($input: PlaceOrderInput!) { placeOrder(input: $input) { order { id } } }",
                            json!({ "input": { "lines": [{ "listingId": listing, "quantity": 1 }] } }),
                            Some(&token),
                        )
                        .await;
                        match placed {
                            Ok(_) => latencies.push(sent.elapsed()),
                            Err(_) => failed += 1,
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(clients.len());
        for client in clients {
            results.push(client.await.context("a buyer's task panicked")?);
        }
        Ok(results)
    }

    /// Waits until the log has settled, so that the sale starts on a quiet
    /// server, as a real one does: the read models at the head, and the
    /// head still for a moment (no consumer with work left).
    async fn quiesce(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STALL;
        let store = self.handler.store();
        let mut head = store.head().await?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                self.progress.wait_for(READ_MODELS, head, left).await,
                "the read models did not catch up with the setup"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = store.head().await?;
            if now == head {
                return Ok(());
            }
            head = now;
        }
    }

    /// Polls the log until `placed` orders placed after `start` have a
    /// verdict; returns (confirmed, rejected).
    async fn settle(&self, start: Position, placed: u64) -> anyhow::Result<(u64, u64)> {
        let mut last = (0u64, Instant::now());
        loop {
            let (confirmed, rejected): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE event_type = 'order.confirmed'), \
                        count(*) FILTER (WHERE event_type = 'order.rejected') \
                 FROM events WHERE position > $1 \
                 AND event_type IN ('order.confirmed', 'order.rejected')",
            )
            .bind(i64::try_from(start.0)?)
            .fetch_one(&self.pool)
            .await?;
            let (confirmed, rejected) = (confirmed as u64, rejected as u64);
            if confirmed + rejected >= placed {
                return Ok((confirmed, rejected));
            }
            if confirmed + rejected > last.0 {
                last = (confirmed + rejected, Instant::now());
            }
            anyhow::ensure!(
                last.1.elapsed() < STALL,
                "orders stopped reaching a final status: {} of {placed}",
                confirmed + rejected
            );
            // Not too often: the count scans the run's events, and the
            // server under test shares the database.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every buyer's balance plus escrow is what they deposited.
    async fn check_money(&self, buyers: &[Buyer]) -> anyhow::Result<()> {
        let mut off = BTreeMap::new();
        for b in buyers {
            let total = self.funds(b.account).await?;
            if total != b.deposit {
                off.insert(b.account, (total, b.deposit));
            }
        }
        anyhow::ensure!(off.is_empty(), "money not conserved: {off:?}");
        Ok(())
    }
}

/// One GraphQL request; an answer with `errors` is an error.
async fn gql(
    http: &reqwest::Client,
    endpoint: &str,
    query: &str,
    variables: Value,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let mut r = http
        .post(endpoint)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let answer: Value = r.send().await?.json().await?;
    if answer.get("errors").is_some() {
        anyhow::bail!("{answer}");
    }
    Ok(answer)
}

/// Resets this process's peak resident set (`VmHWM`), where the kernel
/// allows it.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set since the last reset, in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
