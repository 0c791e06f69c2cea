//! Cluster-wide status of the consumers of [`crate::checkpoints`], from
//! any process: their rows, whether their lock is held, and the log head.
//!
//! Lag is measured as for the projections: `lag_events` is the head minus
//! the checkpoint, `lag_seconds` the age of the oldest event not yet
//! handled (0 when caught up, so it does not grow while the log is idle).

use chrono::{DateTime, Utc};
use marketplace_store::{EventStore, Position, StoreError};
use serde::Serialize;
use sqlx::PgPool;

use crate::checkpoints::Checkpoints;
use crate::leader::{held_locks, lock_key, CONSUMER_LOCKS};

/// One consumer as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsumerStatus {
    /// Stable name.
    pub name: String,
    /// Its committed checkpoint.
    pub position: Position,
    /// The log head when the status was taken.
    pub head: Position,
    /// Events not yet handled.
    pub lag_events: u64,
    /// Age in seconds of the oldest event not yet handled.
    pub lag_seconds: f64,
    /// `RUNNING` (a live leader), `FAILED` or `STOPPED` (no leader).
    pub state: String,
    /// Whether a runner holds its lock right now.
    pub has_leader: bool,
    /// Leadership generation.
    pub generation: i64,
    /// The last failure, kept until a batch commits after it.
    pub last_error: Option<String>,
    /// The event it failed on.
    pub failed_position: Option<Position>,
    /// When its row last changed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every consumer in `names` (known to this binary, `STOPPED` at 0 if it
/// has no row yet) plus any other with a row, by name.
pub async fn status(
    pool: &PgPool,
    store: &dyn EventStore,
    names: &[&str],
) -> Result<Vec<ConsumerStatus>, StatusError> {
    let rows = Checkpoints::new(pool.clone()).rows().await?;
    let held = held_locks(pool).await?;
    let head = store.head().await?;
    let now = Utc::now();
    let mut out: Vec<ConsumerStatus> = Vec::new();
    for name in names {
        if !rows.iter().any(|r| r.name == *name) {
            out.push(ConsumerStatus {
                name: (*name).to_owned(),
                position: Position::START,
                head,
                lag_events: head.0,
                lag_seconds: 0.0,
                state: "STOPPED".to_owned(),
                has_leader: held.contains(&(CONSUMER_LOCKS, lock_key(name))),
                generation: 0,
                last_error: None,
                failed_position: None,
                updated_at: None,
            });
        }
    }
    for row in rows {
        let has_leader = held.contains(&(CONSUMER_LOCKS, lock_key(&row.name)));
        let state = match row.state.as_str() {
            "RUNNING" if !has_leader => "STOPPED".to_owned(),
            s => s.to_owned(),
        };
        out.push(ConsumerStatus {
            name: row.name,
            position: row.position,
            head,
            lag_events: head.0.saturating_sub(row.position.0),
            lag_seconds: 0.0,
            state,
            has_leader,
            generation: row.generation,
            last_error: row.last_error,
            failed_position: row.failed_position,
            updated_at: Some(row.updated_at),
        });
    }
    for s in &mut out {
        if s.lag_events > 0 {
            if let Some(oldest) = store.read_all(s.position, 1).await?.first() {
                let age = now.signed_duration_since(oldest.recorded_at());
                s.lag_seconds = (age.num_milliseconds().max(0) as f64) / 1_000.0;
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
