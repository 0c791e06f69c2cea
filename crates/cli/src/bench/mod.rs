//! `marketplace bench …`: throughput figures for BENCHMARKS.md.
//!
//! Every run of a benchmark works in scratch databases of its own, on the
//! same server as the main one, named `marketplace_bench_<bench>_<run>_…`
//! and dropped together when the run ends, whether it succeeded or not
//! ([`ScratchDatabases`]); `bench checkout` gives each case one (see
//! [`checkout`]). The exception is `bench read`, which keeps its seeded
//! catalogue between runs (see [`read`]).

pub mod append;
pub mod checkout;
pub mod disk;
mod mix;
pub mod read;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use marketplace_domain::values::*;
use marketplace_domain::EventSet;
use marketplace_projections::{Progress, ProjectorRuntime};
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{EventMetadata, EventStore, NewEvent};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Events/s appended by N concurrent writers to M streams, with group
    /// commit and without it (ratio taken in the same run), each mode on a
    /// quiet disk, with the disk's longest stall while it ran.
    Append(append::AppendArgs),
    /// Events/s folded by the projectors from a pre-filled log of the
    /// marketplace mix (accounts and wallets, listings and stock, orders
    /// through their whole life, payouts, reviews).
    Project {
        /// Events in the pre-filled log.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// GraphQL requests/s (p50, p99) of the served API over real HTTP, one
    /// query shape at a time (storefront pages under each sort, search,
    /// category, facets, a listing, a buyer's orders, a listing's reviews),
    /// against a catalogue seeded through the command path and kept between
    /// runs, with `{ __typename }` as the ceiling measured in the same run.
    /// Fails if any shape answers an error.
    Read(read::ReadArgs),
    /// Orders/s through the served API over real HTTP, from `placeOrder`
    /// to a final status, in four flash-sale cases: (a) one hot listing,
    /// (b) 1,000 listings, (c) a hot listing with a long past, (d) demand
    /// 10x the stock. Prints placements/s (p50, p99), orders/s final and
    /// peak memory; fails if the books do not balance.
    Checkout(checkout::CheckoutArgs),
}

/// Runs a benchmark against the server at `url`.
pub async fn run(
    url: &str,
    master: &marketplace_keys::MasterKey,
    which: BenchCommand,
) -> anyhow::Result<()> {
    println!(
        "machine: {} cores; PostgreSQL at {}",
        num_cpus(),
        redact(url)
    );
    match which {
        BenchCommand::Append(args) => append::run(url, &args).await,
        BenchCommand::Project { events } => {
            in_scratch(url, "project", |pool| async move {
                project(&pool, events).await
            })
            .await
        }
        BenchCommand::Read(args) => read::run(url, master, &args).await,
        BenchCommand::Checkout(args) => checkout::run(url, &args).await,
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn redact(url: &str) -> String {
    PgConnectOptions::from_str(url)
        .map(|o| format!("{}:{}", o.get_host(), o.get_port()))
        .unwrap_or_else(|_| "<configured server>".into())
}

/// Runs `bench` in a scratch database of its own, dropped afterwards.
async fn in_scratch<T, F, Fut>(url: &str, bench: &str, run: F) -> anyhow::Result<T>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut scratch = ScratchDatabases::open(url, bench).await?;
    let measured = async {
        let pool = scratch.create_pool("main").await?;
        let result = run(pool.clone()).await;
        pool.close().await;
        result
    }
    .await;
    let dropped = scratch.drop_all().await;
    let measured = measured?;
    dropped?;
    Ok(measured)
}

/// The scratch databases of one run of a benchmark, named
/// `marketplace_bench_<bench>_<run>_<label>`, and dropped together when the
/// run ends. Dropping frees files, and on a file system that discards
/// freed blocks the next flushes can wait on it, so nothing is dropped
/// while a run measures (see [`checkout`]'s documentation).
pub(crate) struct ScratchDatabases {
    /// The server's URL, as given.
    server: String,
    /// `marketplace_bench_<bench>_`.
    prefix: String,
    /// This run's part of each name: eight hex digits.
    run: String,
    /// The databases created so far.
    created: Vec<String>,
}

impl ScratchDatabases {
    /// Drops what earlier runs of `bench` left behind, unless someone is
    /// connected to it (a run still going).
    pub(crate) async fn open(server: &str, bench: &str) -> anyhow::Result<Self> {
        let prefix = format!("marketplace_bench_{bench}_");
        let mut admin = sqlx::PgConnection::connect(server)
            .await
            .context("could not connect")?;
        let leftovers: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
        )
        .bind(&prefix)
        .fetch_all(&mut admin)
        .await?;
        for name in leftovers {
            let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut admin)
                .await;
            match dropped {
                Ok(_) => println!("  dropped {name}, left by an earlier run"),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {
                    println!("  kept {name}: another run is using it")
                }
                Err(e) => return Err(e.into()),
            }
        }
        admin.close().await?;
        let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ok(Self {
            server: server.to_owned(),
            prefix,
            run,
            created: Vec::new(),
        })
    }

    /// The name of this run's database `label`.
    fn name(&self, label: &str) -> String {
        format!("{}{}_{label}", self.prefix, self.run)
    }

    /// A fresh, migrated database `label`; its URL.
    pub(crate) async fn create(&mut self, label: &str) -> anyhow::Result<String> {
        self.create_pool(label).await?.close().await;
        Ok(read::with_database(&self.server, &self.name(label)))
    }

    /// A fresh, migrated database `label`; a pool on it.
    async fn create_pool(&mut self, label: &str) -> anyhow::Result<PgPool> {
        let name = self.name(label);
        // Counted before it exists, so that a failure half-way still drops it.
        self.created.push(name.clone());
        fresh_database(&self.server, &name).await
    }

    /// Drops every database this run created.
    pub(crate) async fn drop_all(&mut self) -> anyhow::Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        let mut admin = sqlx::PgConnection::connect(&self.server)
            .await
            .context("could not connect")?;
        for name in self.created.drain(..) {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .with_context(|| format!("could not drop the scratch database {name}"))?;
        }
        admin.close().await?;
        Ok(())
    }
}

/// Database `name` on the server at `url`, dropped if it exists, created
/// and migrated, and a pool on it as served. `name` must be a plain
/// identifier.
async fn fresh_database(url: &str, name: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("invalid database URL")?;
    let mut admin = options
        .clone()
        .connect()
        .await
        .context("could not connect")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    // The pool `serve` opens (no ping before each acquire, generic plans),
    // so that the benches measure the store as it is served.
    let pool = marketplace_api::database::connect(&read::with_database(url, name), 32).await?;
    marketplace_api::database::migrate(&pool).await?;
    Ok(pool)
}

fn event<E: EventSet>(e: E) -> anyhow::Result<NewEvent> {
    Ok(NewEvent {
        event_id: Uuid::now_v7(),
        event_type: e.event_type().to_owned(),
        schema_version: e.schema_version(),
        data: e.to_data()?,
        metadata: EventMetadata {
            actor: Some("bench".into()),
            correlation_id: Some(Uuid::now_v7()),
            ..EventMetadata::default()
        },
    })
}

/// A progress bar labelled `what` (also used by `marketplace seed`).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// `minor` euro cents (also used by `marketplace seed`).
pub(crate) fn eur(minor: i64) -> anyhow::Result<Money> {
    Ok(Money {
        minor,
        currency: Currency::parse("EUR")?,
    })
}

async fn project(pool: &PgPool, events: u64) -> anyhow::Result<()> {
    let store = PostgresEventStore::new(pool.clone()).await?;
    let started = Instant::now();
    mix::prefill(&store, events, 16).await?;
    let head = store.head().await?;
    let filled = head.0;
    println!(
        "prefill: {filled} events in {:.1}s ({:.0} events/s through the append path)",
        started.elapsed().as_secs_f64(),
        filled as f64 / started.elapsed().as_secs_f64()
    );
    let progress = Progress::default();
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone());
    let (stop, stop_rx) = watch::channel(false);
    let pb = bar(filled, "project");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in marketplace_projections::all() {
        let (runtime, stop_rx) = (runtime.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move { runtime.run(p, stop_rx).await }));
    }
    let names: Vec<&str> = marketplace_projections::all()
        .iter()
        .map(|p| p.name())
        .collect();
    loop {
        let done = progress
            .wait_for(&names, head, Duration::from_millis(200))
            .await;
        let slowest = names
            .iter()
            .map(|n| progress.position(n).0)
            .min()
            .unwrap_or(0);
        pb.set_position(slowest);
        if done {
            break;
        }
        if tasks.iter().any(|t| t.is_finished()) {
            anyhow::bail!("a projection stopped before catching up");
        }
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    let _ = stop.send(true);
    for t in tasks {
        t.await??;
    }
    println!(
        "project: {} projections caught up on {filled} events in {:.2}s: {:.0} events/s per projection",
        names.len(),
        elapsed.as_secs_f64(),
        filled as f64 / elapsed.as_secs_f64()
    );

    // Bulk rebuild: each projection rebuilt from position 0 into a fresh
    // schema (large batches, indexes after the load), one after another.
    let mut total = Duration::ZERO;
    for p in marketplace_projections::all() {
        let name = p.name();
        let pb = bar(filled, &format!("rebuild {name}"));
        let (_keep, rx) = watch::channel(false);
        let started = Instant::now();
        let report = runtime.rebuild(p, rx).await?;
        let took = started.elapsed();
        pb.finish_and_clear();
        total += took;
        println!(
            "rebuild: {name} ({}) {filled} events in {:.2}s: {:.0} events/s (bulk, indexes after the load{})",
            report.schema,
            took.as_secs_f64(),
            filled as f64 / took.as_secs_f64(),
            if report.switched { ", switched in" } else { ", NOT switched" }
        );
    }
    println!(
        "rebuild: all {} projections in {:.2}s: {:.0} events/s per projection on average",
        names.len(),
        total.as_secs_f64(),
        (filled * names.len() as u64) as f64 / total.as_secs_f64()
    );
    Ok(())
}
