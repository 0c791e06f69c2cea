//! `marketplace projections …`: the read models from the operator's side.
//!
//! - `status`: every projection's live build (version, schema, position,
//!   head, lag in events and seconds, state, leader) and the rebuild in
//!   progress beside it, if any (version, position, progress).
//! - `rebuild NAME`: builds NAME at this binary's version into a fresh
//!   schema from position 0 in bulk while the live build keeps serving, then
//!   switches the views to it and drops the old build; a progress bar shows
//!   events/s and the ETA. A pending rebuild of that version is resumed; one
//!   another process leads (a `serve` that started with a newer version) is
//!   followed until it is live.
//! - `verify [NAME…]`: rebuilds the read models into scratch schemas up to
//!   each live checkpoint and compares every table's checksum with the live
//!   build; prints the comparison table by table and fails on any difference.
//!
//! The work itself lives in `marketplace_projections` (see its `builds`,
//! `runtime` and `verify` modules); this is argument parsing and output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use marketplace_projections::status::ConsumerKind;
use marketplace_projections::{
    Projection, ProjectionCheck, ProjectionStatus, ProjectorRuntime, RuntimeConfig,
};
use marketplace_store::EventStore;
use tokio::sync::watch;

use marketplace_api::application::shutdown_signal;
use marketplace_api::database::{connect, migrate};

/// What to do with the read models.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Show every consumer of the log — each projection's live version and
    /// the process managers (`saga`) — with position, lag, state and
    /// leader, the progress of any rebuild, and the last failure of each.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Clear the FAILED state of a projection or a process manager (say,
    /// `checkout` or `payout`) once the cause is fixed: its leader, in
    /// whichever process, resumes from its checkpoint at the event it
    /// failed on. Nothing is skipped.
    Retry {
        /// The projection or process manager.
        name: String,
    },
    /// Rebuild one projection at this binary's version into a new schema,
    /// without downtime: the live build keeps serving until the new one has
    /// caught up, then one transaction switches the queries over and the old
    /// build is dropped. Interrupted (Ctrl-C), it resumes where it stopped
    /// when run again.
    Rebuild {
        /// The projection: accounts, listings, notifications, orders or reviews.
        name: String,
        /// Events per transaction while loading in bulk.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Rebuild every read model (or the ones named) into scratch schemas up
    /// to its live checkpoint and compare each table's checksum with the
    /// live one, while the projectors keep running. Fails on any difference.
    Verify {
        /// Projections to verify (default: all).
        names: Vec<String>,
        /// Events per transaction of the scratch builds.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
}

/// Runs a `projections` subcommand against the database at `url`.
pub async fn run(
    url: &str,
    event_store: &marketplace_api::config::EventStoreChoice,
    master: &marketplace_keys::MasterKey,
    which: ProjectionsCommand,
) -> anyhow::Result<()> {
    let pool = connect(url, 8).await?;
    let result = async {
        migrate(&pool).await?;
        let store: std::sync::Arc<dyn marketplace_store::EventStore> = std::sync::Arc::new(
            marketplace_api::database::open_event_store(&pool, event_store, master).await?,
        );
        let runtime = |bulk_batch: usize| {
            ProjectorRuntime::new(pool.clone(), store.clone(), Default::default()).with_config(
                RuntimeConfig {
                    bulk_batch: bulk_batch.max(1),
                    ..RuntimeConfig::default()
                },
            )
        };
        match which {
            ProjectionsCommand::Status { json } => {
                let all = runtime(1).status().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                } else {
                    print!("{}", status_table(&all));
                }
                Ok(())
            }
            ProjectionsCommand::Retry { name } => {
                if runtime(1).reset_failed(&name).await? {
                    println!("{name}: no longer FAILED; its leader resumes from its checkpoint");
                    return Ok(());
                }
                let mut known: Vec<&str> = marketplace_projections::all()
                    .iter()
                    .map(|p| p.name())
                    .collect();
                known.extend([
                    marketplace_commands::process::checkout::NAME,
                    marketplace_commands::process::payout::NAME,
                ]);
                if known.contains(&name.as_str()) {
                    anyhow::bail!("{name} is not FAILED: nothing to retry")
                }
                anyhow::bail!("unknown consumer {name:?} (known: {})", known.join(", "))
            }
            ProjectionsCommand::Rebuild { name, batch } => {
                rebuild(runtime(batch), &name, store.as_ref()).await
            }
            ProjectionsCommand::Verify { names, batch } => verify(runtime(batch), &names).await,
        }
    }
    .await;
    pool.close().await;
    result
}

fn projection(name: &str) -> anyhow::Result<Arc<dyn Projection>> {
    let all = marketplace_projections::all();
    let known: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let known = known.join(", ");
    all.into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("unknown projection {name:?} (known: {known})"))
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The `status` table: one line per build (the live one, then a rebuild),
/// and the failures below it.
pub fn status_table(all: &[ProjectionStatus]) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for s in all {
        let schema = s.schema.clone().unwrap_or_else(|| "-".to_owned());
        if let (Some(e), Some(p)) = (&s.last_error, s.failed_position) {
            failures.push(format!("{} ({schema}) failed at {p}: {e}", s.name));
        }
        rows.push(vec![
            s.name.clone(),
            s.version.to_string(),
            match s.kind {
                ConsumerKind::Projection => "live",
                ConsumerKind::ProcessManager => "saga",
            }
            .to_owned(),
            schema,
            s.position.to_string(),
            s.head.to_string(),
            s.lag_events.to_string(),
            format!("{:.1}", s.lag_seconds),
            s.state.to_string(),
            yes_no(s.has_leader),
            "-".to_owned(),
        ]);
        if let Some(r) = &s.rebuild {
            if let (Some(e), Some(p)) = (&r.last_error, r.failed_position) {
                failures.push(format!(
                    "{} ({}, rebuild) failed at {p}: {e}",
                    s.name, r.schema
                ));
            }
            rows.push(vec![
                s.name.clone(),
                r.version.to_string(),
                "building".to_owned(),
                r.schema.clone(),
                r.position.to_string(),
                s.head.to_string(),
                r.lag_events.to_string(),
                "-".to_owned(),
                r.state.to_string(),
                yes_no(r.has_leader),
                format!(
                    "{:.1}% {}",
                    r.progress * 100.0,
                    if r.bulk {
                        "(bulk load)"
                    } else {
                        "(catching up)"
                    }
                ),
            ]);
        }
    }
    let mut out = table(
        &[
            "PROJECTION",
            "VERSION",
            "BUILD",
            "SCHEMA",
            "POSITION",
            "HEAD",
            "LAG_EVENTS",
            "LAG_S",
            "STATE",
            "LEADER",
            "REBUILD",
        ],
        &rows,
    );
    for f in failures {
        out.push_str(&f);
        out.push('\n');
    }
    out
}

/// A bar like `bench`'s, with the rate (events/s) and the phase in its
/// message.
fn bar(what: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{bar:40}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// `"12345 events/s"`, from the bar's own estimate.
fn rate(pb: &ProgressBar) -> String {
    format!("{:.0} events/s", pb.per_sec())
}

async fn rebuild(
    runtime: ProjectorRuntime,
    name: &str,
    store: &dyn EventStore,
) -> anyhow::Result<()> {
    let projection = projection(name)?;
    let name = projection.name();
    let progress = runtime.progress().clone();
    let (stop, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.rebuild(projection, stop_rx).await })
    };
    tokio::pin!(task);
    let pb = bar(name);
    pb.set_length(store.head().await?.0);
    let mut first: Option<u64> = None;
    let mut interrupted = false;
    let mut signal = Box::pin(shutdown_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let report = loop {
        tokio::select! {
            done = &mut task => break done.context("the rebuild task failed")??,
            () = &mut signal, if !interrupted => {
                interrupted = true;
                pb.println("interrupted: stopping after the current batch (run again to resume)");
                let _ = stop.send(true);
            }
            _ = tick.tick() => {
                if let Some(r) = progress.runner(name).rebuild {
                    pb.set_length(r.head.0);
                    pb.set_position(r.position.0);
                    if first.is_none() {
                        // A resumed rebuild: rate and ETA from here on.
                        first = Some(r.position.0);
                        pb.reset_eta();
                    }
                    pb.set_message(format!(
                        "{} ({}, {})",
                        rate(&pb),
                        r.schema,
                        if r.bulk { "bulk load" } else { "catching up" }
                    ));
                }
            }
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let folded = report.position.0.saturating_sub(report.from.0);
    pb.set_length(pb.length().unwrap_or(0).max(report.position.0));
    pb.set_position(report.position.0);
    pb.set_message(format!(
        "{:.0} events/s ({})",
        folded as f64 / elapsed.max(0.001),
        report.schema
    ));
    pb.finish();
    if !report.switched {
        println!(
            "{name}: rebuild of version {} into {} stopped at position {}; the live build still serves; run again to resume",
            report.version, report.schema, report.position
        );
        anyhow::bail!("rebuild interrupted");
    }
    println!(
        "{name}: version {} rebuilt into {} up to position {} ({folded} events in {elapsed:.1}s, {:.0} events/s)",
        report.version,
        report.schema,
        report.position,
        folded as f64 / elapsed.max(0.001)
    );
    match &report.replaced {
        Some(old) => println!("{name}: {} is live now, replacing {old}", report.schema),
        None => println!("{name}: {} is live now", report.schema),
    }
    if report.dropped.is_empty() {
        if report.replaced.is_some() {
            println!("{name}: the old build is still in use; it is dropped at the next start-up or switch");
        }
    } else {
        println!("{name}: dropped {}", report.dropped.join(", "));
    }
    Ok(())
}

async fn verify(runtime: ProjectorRuntime, names: &[String]) -> anyhow::Result<()> {
    let projections: Vec<Arc<dyn Projection>> = if names.is_empty() {
        marketplace_projections::all()
    } else {
        names
            .iter()
            .map(|n| projection(n))
            .collect::<anyhow::Result<_>>()?
    };
    let pb = bar("verify");
    let on_progress = {
        let pb = pb.clone();
        let current = std::sync::Mutex::new(String::new());
        move |name: &str,
              position: marketplace_store::Position,
              target: marketplace_store::Position| {
            let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
            if *current != name {
                // The next projection's scratch build.
                name.clone_into(&mut current);
                pb.set_length(target.0);
                pb.set_position(position.0);
                pb.reset_eta();
            }
            pb.set_position(position.0);
            pb.set_message(format!("{} ({name} scratch build)", rate(&pb)));
        }
    };
    let checks = tokio::select! {
        checks = runtime.verify(&projections, &on_progress) => checks,
        _ = tokio::signal::ctrl_c() => {
            pb.finish_and_clear();
            // The scratch build in progress is abandoned: drop it now
            // rather than leave it to the next run.
            let dropped = marketplace_projections::verify::drop_scratch_schemas(runtime.pool())
                .await
                .unwrap_or_default();
            anyhow::bail!(
                "interrupted: nothing was verified to the end ({dropped} scratch schema(s) dropped; \
                 the live read models were not touched)"
            );
        }
    };
    pb.finish_and_clear();
    let checks = checks?;
    print!("{}", verify_table(&checks));
    let differing: Vec<String> = checks
        .iter()
        .flat_map(|c| {
            c.tables
                .iter()
                .filter(|t| !t.matches())
                .map(move |t| format!("{}.{}", c.name, t.table))
        })
        .collect();
    let skipped: Vec<String> = checks
        .iter()
        .filter_map(|c| c.skipped.as_ref().map(|why| format!("{} ({why})", c.name)))
        .collect();
    if differing.is_empty() && skipped.is_empty() {
        println!("parity: every read model equals a rebuild from the log");
        return Ok(());
    }
    if !differing.is_empty() {
        println!("DIFFERENT: {}", differing.join(", "));
    }
    if !skipped.is_empty() {
        println!("NOT VERIFIED: {}", skipped.join("; "));
    }
    anyhow::bail!(
        "verification failed: {} table(s) differ, {} projection(s) not verified",
        differing.len(),
        skipped.len()
    )
}

/// The `verify` table: one line per table.
pub fn verify_table(checks: &[ProjectionCheck]) -> String {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let mut rows = Vec::new();
    for c in checks {
        if let Some(why) = &c.skipped {
            rows.push(vec![
                c.name.clone(),
                "-".to_owned(),
                c.position.to_string(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                format!("SKIPPED: {why}"),
            ]);
            continue;
        }
        for t in &c.tables {
            rows.push(vec![
                c.name.clone(),
                t.table.clone(),
                c.position.to_string(),
                t.live_rows.to_string(),
                t.scratch_rows.to_string(),
                short(&t.live_checksum),
                short(&t.scratch_checksum),
                if t.matches() { "ok" } else { "DIFFERENT" }.to_owned(),
            ]);
        }
    }
    table(
        &[
            "PROJECTION",
            "TABLE",
            "POSITION",
            "LIVE_ROWS",
            "REBUILT_ROWS",
            "LIVE_MD5",
            "REBUILT_MD5",
            "RESULT",
        ],
        &rows,
    )
}
