//! `marketplace audit …`: reading the log itself for auditors.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use marketplace_commands::audit::{history, verify_chains};
use marketplace_store::{EventStore, PostgresEventStore, StreamId};

use crate::bench::bar;
use crate::database::connect;

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole log (or one stream) and report every event whose hash
    /// chain breaks: edited content, a deleted event, a broken link, a
    /// missing position. Exits non-zero when any is found.
    Verify {
        /// Only this stream (`<category>-<uuid>`).
        #[arg(long)]
        stream: Option<String>,
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

/// Runs an audit command against the database at `url`.
pub async fn run(url: &str, which: AuditCommand) -> anyhow::Result<()> {
    let pool = connect(url, 4).await?;
    crate::database::migrate(&pool).await?;
    let store: Arc<dyn EventStore> = Arc::new(
        PostgresEventStore::new(pool.clone())
            .await
            .context("could not open the event store")?,
    );
    let parse = |s: &str| {
        StreamId::parse(s)
            .map_err(|_| anyhow::anyhow!("{s:?} is not a stream id: use <category>-<uuid>"))
    };
    match which {
        AuditCommand::Verify { stream } => {
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
            if verified.is_empty() {
                println!(
                    "verified: every hash chain holds ({} events in {took:.1}s, {:.0} events/s)",
                    head.0,
                    head.0 as f64 / took.max(1e-9)
                );
                Ok(())
            } else {
                for b in &verified {
                    println!("BROKEN {b}");
                }
                anyhow::bail!("{} break(s) in the hash chains", verified.len())
            }
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
