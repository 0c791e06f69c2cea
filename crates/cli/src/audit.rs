//! `marketplace audit …`: reading the log itself for auditors.
//!
//! `verify` and `anchor` read the events as stored (personal fields
//! sealed: the chains cover the ciphertext, so they hold after an
//! erasure); every other command reads them opened, as the live system
//! does, with erased fields `null`.

use anyhow::Context;
use clap::Subcommand;
use marketplace_commands::audit::{history, state_as_of, trace, trace_line, verify_chains, AsOf};
use marketplace_keys::anchor::{anchor_head, check as check_anchors};
use marketplace_store::{EventStore, StreamId};

use crate::bench::bar;
use marketplace_api::database::connect;

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole log (or one stream) and report every event whose hash
    /// chain breaks: edited content, a deleted event, a broken link, a
    /// missing position. Exits non-zero when any is found.
    ///
    /// Chains cannot tell that the newest events were cut from the end:
    /// with --anchor, every signed anchor in FILE must still hold (its
    /// position holds the very event it signed). Without it, the head is
    /// reported unanchored.
    Verify {
        /// Only this stream (`<category>-<uuid>`).
        #[arg(long)]
        stream: Option<String>,
        /// An anchor file (`audit anchor --file`, `serve --anchor-every`),
        /// checked with the public half of MARKETPLACE_ANCHOR_KEY.
        #[arg(long, value_name = "FILE")]
        anchor: Option<std::path::PathBuf>,
    },
    /// Sign the log's head (position, last hash, time) with
    /// MARKETPLACE_ANCHOR_KEY and print the anchor as a JSON line; keep it
    /// away from the database. `audit verify --anchor` checks it later.
    Anchor {
        /// Also append it to this file.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        /// Also POST it (JSON) to this http:// or https:// URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// An aggregate (any type) as it stood at a moment or a log position,
    /// as JSON.
    AsOf {
        /// The stream (`<category>-<uuid>`).
        stream: String,
        /// RFC 3339 time, e.g. 2026-11-27T09:00:00Z.
        #[arg(
            long,
            conflicts_with = "position",
            required_unless_present = "position"
        )]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// Global log position.
        #[arg(long)]
        position: Option<u64>,
    },
    /// Every event one request caused, across streams, in log order (the
    /// checkout saga's steps included), as JSON lines; each names its
    /// correlation id and, if it was written while tracing was on, its
    /// OpenTelemetry trace id (`traceId`).
    Trace {
        /// The correlation id (from any event's metadata).
        correlation_id: uuid::Uuid,
    },
    /// Replay the whole log into scratch read models and compare each table
    /// with the live one (the same check as `projections verify`). Fails on
    /// any difference.
    ReplayCheck {
        /// Events per transaction of the scratch builds.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Every event of a stream, oldest first, as JSON lines, optionally with
    /// the aggregate's state after each (secrets redacted).
    History {
        /// The stream (`<category>-<uuid>`).
        stream: String,
        /// Also print the state after each event.
        #[arg(long)]
        with_state: bool,
    },
}

/// The keys an audit reads with.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The master key (opening personal fields).
    pub master: marketplace_keys::MasterKey,
    /// The anchor key (signing and checking anchors), if configured.
    pub anchor: Option<marketplace_keys::AnchorKey>,
}

impl Keys {
    fn anchor(&self) -> anyhow::Result<&marketplace_keys::AnchorKey> {
        self.anchor.as_ref().ok_or_else(|| {
            anyhow::anyhow!("set MARKETPLACE_ANCHOR_KEY (or --anchor-key): 64 hex characters, e.g. `openssl rand -hex 32`")
        })
    }
}

/// Runs an audit command against the database at `url`.
pub async fn run(
    url: &str,
    event_store: &marketplace_api::config::EventStoreChoice,
    keys: &Keys,
    which: AuditCommand,
) -> anyhow::Result<()> {
    let pool = connect(url, 4).await?;
    marketplace_api::database::migrate(&pool).await?;
    let sealing =
        marketplace_api::database::open_event_store(&pool, event_store, &keys.master).await?;
    let raw = sealing.raw();
    let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(sealing);
    let parse = |s: &str| {
        StreamId::parse(s)
            .map_err(|_| anyhow::anyhow!("{s:?} is not a stream id: use <category>-<uuid>"))
    };
    match which {
        AuditCommand::Anchor { file, url } => {
            let anchor = anchor_head(&*raw, keys.anchor()?, chrono::Utc::now()).await?;
            if let Some(path) = &file {
                marketplace_api::anchors::append_to_file(path, &anchor)?;
            }
            if let Some(url) = &url {
                marketplace_api::anchors::post_to_url(url, &anchor).await?;
            }
            println!("{}", anchor.to_line());
            Ok(())
        }
        AuditCommand::Verify { stream, anchor } => {
            let store = raw;
            let anchors = match &anchor {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("could not read {}", path.display()))?;
                    Some(marketplace_keys::anchor::parse_file(&text)?)
                }
                None => None,
            };
            let only = stream.as_deref().map(parse).transpose()?;
            let head = store.head().await?;
            let pb = bar(head.0, "verify");
            let progress = {
                let pb = pb.clone();
                move |done: marketplace_store::Position, head: marketplace_store::Position| {
                    pb.set_length(head.0);
                    pb.set_position(done.0);
                }
            };
            let started = std::time::Instant::now();
            let verified = tokio::select! {
                v = verify_chains(&*store, only.as_ref(), &progress) => v?,
                _ = tokio::signal::ctrl_c() => {
                    pb.abandon();
                    anyhow::bail!("interrupted: nothing was verified to the end");
                }
            };
            pb.finish_and_clear();
            let took = started.elapsed().as_secs_f64();
            let mut verified: Vec<String> = verified.iter().map(ToString::to_string).collect();
            match &anchors {
                Some(anchors) => {
                    let key = keys.anchor()?.verifying_key();
                    let report = check_anchors(&*store, anchors, &key).await?;
                    verified.extend(report.breaks.iter().cloned());
                    if report.breaks.is_empty() {
                        println!(
                            "anchors: {} hold; the log holds everything up to position {}",
                            report.held, report.anchored_up_to
                        );
                    }
                    if report.unanchored() > 0 {
                        println!(
                            "unanchored: the head (position {}) is {} position(s) past the newest anchor",
                            report.head,
                            report.unanchored()
                        );
                    }
                }
                None if only.is_none() => println!(
                    "unanchored: the head (position {}) is not covered by any anchor; cutting the newest events cannot be detected without one (audit verify --anchor FILE)",
                    head.0
                ),
                None => {}
            }
            if verified.is_empty() {
                if store.dense_positions() && only.is_none() {
                    println!(
                        "verified: every hash chain holds ({} events in {took:.1}s, {:.0} events/s)",
                        head.0,
                        head.0 as f64 / took.max(1e-9)
                    );
                } else {
                    // Positions are not event counts here (KurrentDB's are
                    // log offsets), or only one stream was walked.
                    println!(
                        "verified: every hash chain holds (up to log position {} in {took:.1}s)",
                        head.0
                    );
                }
                Ok(())
            } else {
                for b in &verified {
                    println!("BROKEN {b}");
                }
                anyhow::bail!("{} break(s) in the hash chains or anchors", verified.len())
            }
        }
        AuditCommand::AsOf {
            stream,
            at,
            position,
        } => {
            let stream = parse(&stream)?;
            let as_of = match (at, position) {
                (Some(t), _) => AsOf::Time(t),
                (None, Some(p)) => AsOf::Position(marketplace_store::Position(p)),
                (None, None) => anyhow::bail!("give --at TIME or --position P"),
            };
            match state_as_of(&*store, &stream, as_of).await? {
                Some((revision, state)) => {
                    println!(
                        "{}",
                        serde_json::json!({ "revision": revision, "state": state })
                    );
                    Ok(())
                }
                None => anyhow::bail!("{stream} did not exist then"),
            }
        }
        AuditCommand::Trace { correlation_id } => {
            let head = store.head().await?;
            let pb = bar(head.0, "trace");
            let progress = {
                let pb = pb.clone();
                move |done: marketplace_store::Position, head: marketplace_store::Position| {
                    pb.set_length(head.0);
                    pb.set_position(done.0);
                }
            };
            let events = tokio::select! {
                t = trace(&*store, correlation_id, &progress) => t?,
                _ = tokio::signal::ctrl_c() => {
                    pb.abandon();
                    anyhow::bail!("interrupted");
                }
            };
            pb.finish_and_clear();
            for e in &events {
                println!("{}", trace_line(e));
            }
            if events.is_empty() {
                anyhow::bail!("no event carries correlation id {correlation_id}");
            }
            Ok(())
        }
        AuditCommand::ReplayCheck { batch } => {
            pool.close().await;
            crate::projections::run(
                url,
                event_store,
                &keys.master,
                crate::projections::ProjectionsCommand::Verify {
                    names: Vec::new(),
                    batch,
                },
            )
            .await
        }
        AuditCommand::History { stream, with_state } => {
            let stream = parse(&stream)?;
            for h in history(&*store, &stream, with_state).await? {
                let line = serde_json::json!({
                    "revision": h.event.revision,
                    "position": h.event.position.0,
                    "eventId": h.event.event_id,
                    "eventType": h.event.event_type,
                    "schemaVersion": h.event.schema_version,
                    "recordedAt": h.event.recorded_at(),
                    "data": h.event.data,
                    "metadata": h.event.metadata,
                    "stateAfter": h.state_after,
                });
                println!("{line}");
            }
            Ok(())
        }
    }
}
