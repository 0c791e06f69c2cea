//! `marketplace bench append`: events per second through the store's append
//! path, in a scratch database of its own (`marketplace_bench_append_<run>_main`).
//!
//! `--writers` concurrent writers each append one event at a time, with
//! `ExpectedRevision::Any`, to one of `--streams` streams picked at random,
//! until `--events` are acknowledged. It runs twice in the same process
//! and database: first with group commit as served, then with one append
//! per transaction (`GroupCommitLimits` of one), and prints both and their
//! ratio, each with its p50 and p99 append latency.
//!
//! Each mode starts as a case of [`super::checkout`] does: the pages written
//! so far flushed by a `CHECKPOINT`, then a quiet disk (`--disk-quiet-secs`,
//! see [`super::disk::quiet_disk`]), so that neither the migration's nor the
//! previous mode's writes, nor the discards of an earlier run's dropped
//! database, are paid inside a run of about a second. When the server runs
//! on this machine, each mode also prints the disk's longest stall while
//! it ran, and how late a thread could be woken (a busy CPU).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_store::postgres::{GroupCommitLimits, PostgresEventStore};
use marketplace_store::{EventMetadata, EventStore, ExpectedRevision, NewEvent, StreamId};
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

use super::disk::{self, checkpoint, quiet_disk, DiskFigures, DiskWatch, Quiet};
use super::{bar, in_scratch};

/// `marketplace bench append`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct AppendArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Distinct streams written to.
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Events to append in each mode.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Before each mode, wait until the server's commits have flushed for
    /// this many seconds without one taking 20 ms or more (at most 30 s,
    /// then the mode starts anyway and says so). 0 starts at once.
    #[arg(long, default_value_t = 3)]
    pub disk_quiet_secs: u64,
}

/// What one mode measured.
#[derive(Debug, Clone)]
pub struct ModeFigures {
    /// Acknowledged appends per second.
    pub events_per_sec: f64,
    /// Append latency, median.
    pub p50: Duration,
    /// Append latency, 99th percentile.
    pub p99: Duration,
    /// The wait for a quiet disk before the mode.
    pub quiet: Quiet,
    /// The disk under the server's data directory while the mode ran, when
    /// the server is local and the kernel reports it.
    pub disk: Option<DiskFigures>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct AppendFigures {
    /// With group commit, as served.
    pub grouped: ModeFigures,
    /// One append per transaction.
    pub single: ModeFigures,
}

/// Runs the benchmark against the PostgreSQL at `url` and prints its
/// figures.
pub async fn run(url: &str, args: &AppendArgs) -> anyhow::Result<()> {
    println!(
        "bench append: {} writers, {} streams, {} single-event appends per mode",
        args.writers, args.streams, args.events
    );
    let f = measure(url, args).await?;
    for (name, m) in [
        ("group commit", &f.grouped),
        ("one append per transaction", &f.single),
    ] {
        println!(
            "{name:>28}: {:>9.0} events/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
            m.events_per_sec,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3
        );
        if args.disk_quiet_secs > 0 {
            println!(
                "{:>30}before: {}",
                "",
                m.quiet.describe(args.disk_quiet_secs)
            );
        }
        if let Some(d) = m.disk {
            println!("{:>30}disk: {}", "", d.describe());
        }
    }
    println!(
        "group commit speed-up: {:.1}x",
        f.grouped.events_per_sec / f.single.events_per_sec.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// Runs both modes against the PostgreSQL at `url`, in a scratch database
/// dropped afterwards, and returns what they measured.
pub async fn measure(url: &str, args: &AppendArgs) -> anyhow::Result<AppendFigures> {
    anyhow::ensure!(args.writers > 0, "--writers must be at least 1");
    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    let args = AppendArgs {
        streams: args.streams.max(1),
        ..args.clone()
    };
    in_scratch(url, "append", |pool| async move {
        let grouped = mode(
            &pool,
            &args,
            PostgresEventStore::new(pool.clone()).await?,
            "grouped",
        )
        .await?;
        let one_by_one = GroupCommitLimits {
            max_requests: 1,
            max_events: 1,
        };
        let single = mode(
            &pool,
            &args,
            PostgresEventStore::with_limits(pool.clone(), one_by_one).await?,
            "one-by-one",
        )
        .await?;
        Ok(AppendFigures { grouped, single })
    })
    .await
}

/// One mode: a checkpoint, a quiet disk, then the appends.
async fn mode(
    pool: &PgPool,
    args: &AppendArgs,
    store: PostgresEventStore,
    label: &str,
) -> anyhow::Result<ModeFigures> {
    checkpoint(&mut *pool.acquire().await?).await?;
    let quiet = quiet_disk(
        &mut *pool.acquire().await?,
        Duration::from_secs(args.disk_quiet_secs),
    )
    .await?;
    let watch = disk::local_data_directory(pool)
        .await
        .and_then(|d| DiskWatch::start(&d));
    let (events_per_sec, mut latencies) = appends(store, args, label).await?;
    let disk = watch.map(DiskWatch::finish);
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(ModeFigures {
        events_per_sec,
        p50: pick(0.50),
        p99: pick(0.99),
        quiet,
        disk,
    })
}

/// `args.writers` writers appending until `args.events` are acknowledged:
/// events/s and every append's latency.
async fn appends(
    store: PostgresEventStore,
    args: &AppendArgs,
    label: &str,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let ids: Arc<Vec<StreamId>> = Arc::new(
        (0..args.streams)
            .map(|_| StreamId::new("bench", Uuid::now_v7()))
            .collect::<Result<_, _>>()?,
    );
    let left = Arc::new(AtomicU64::new(args.events));
    let pb = bar(args.events, label);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (store, ids, left, pb) = (store.clone(), ids.clone(), left.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let stream = &ids[rand::rng().random_range(0..ids.len())];
                let e = NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "bench.appended".into(),
                    schema_version: 1,
                    data: serde_json::json!({ "n": 1 }),
                    metadata: EventMetadata::default(),
                };
                let t = Instant::now();
                store.append(stream, ExpectedRevision::Any, vec![e]).await?;
                latencies.push(t.elapsed());
                pb.inc(1);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.events as usize);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    Ok((args.events as f64 / elapsed.as_secs_f64(), latencies))
}
