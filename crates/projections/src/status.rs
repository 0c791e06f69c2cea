//! Cluster-wide status of the projections, from any process: what the
//! `projections status` command, GraphQL `projections` and `/metrics` show.
//!
//! It reads the `projection_checkpoints` table, the advisory locks held in
//! the database (`pg_locks`, to tell whether a leader is alive) and the log
//! head through the [`EventStore`] port.
//!
//! Lag is measured two ways:
//! - `lag_events`: the log head's position minus the checkpoint (positions
//!   are dense in the Postgres store, so this is the number of events not yet
//!   folded);
//! - `lag_seconds`: the age of the oldest event not yet folded (now minus its
//!   `recorded_at`), or 0 when the projection has caught up. Unlike "time
//!   since the last commit" it does not grow while the log is idle.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use marketplace_store::{EventStore, Position};
use serde::Serialize;
use sqlx::PgPool;

use crate::leader::{lock_key, LOCK_NAMESPACE};
use crate::progress::ProjectionState;
use crate::runtime::{to_position, ProjectionError};

/// One projection as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    /// Stable name.
    pub name: String,
    /// The version its checkpoint row was created with.
    pub version: i32,
    /// Its committed checkpoint.
    pub position: Position,
    /// The log head when the status was taken.
    pub head: Position,
    /// Events not yet folded (`head − position`).
    pub lag_events: u64,
    /// Age in seconds of the oldest event not yet folded (0 when caught up).
    pub lag_seconds: f64,
    /// `RUNNING` (a live leader), `FAILED` (see `failed_position` and
    /// `last_error`) or `STOPPED` (no leader: shut down, never started, or
    /// its leader died and no standby has taken over yet). Per-process
    /// `STANDBY` states are in [`crate::Progress::runners`].
    pub state: ProjectionState,
    /// Whether a runner holds its leadership lock right now.
    pub has_leader: bool,
    /// Leadership generation (bumped by each takeover).
    pub generation: i64,
    /// The last failure, kept until a batch commits after it.
    pub last_error: Option<String>,
    /// The event it failed on, kept until a batch commits after it.
    pub failed_position: Option<Position>,
    /// When its row last changed (`None` if it has no row yet).
    pub updated_at: Option<DateTime<Utc>>,
}

type Row = (
    String,
    i32,
    i64,
    String,
    i64,
    Option<String>,
    Option<i64>,
    DateTime<Utc>,
);

/// Every projection of [`crate::all`] plus any other with a checkpoint row,
/// by name.
pub async fn status(
    pool: &PgPool,
    store: &dyn EventStore,
) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, version, position, state, generation, last_error, failed_position, \
         updated_at FROM projection_checkpoints",
    )
    .fetch_all(pool)
    .await?;
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 2 AND classid::bigint = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(LOCK_NAMESPACE))
    .fetch_all(pool)
    .await?;
    let held: HashSet<i64> = held.into_iter().collect();
    let head = store.head().await?;
    let now = Utc::now();

    let mut all: BTreeMap<String, ProjectionStatus> = BTreeMap::new();
    for p in crate::all() {
        all.insert(
            p.name().to_owned(),
            ProjectionStatus {
                name: p.name().to_owned(),
                version: p.version(),
                position: Position::START,
                head,
                lag_events: 0,
                lag_seconds: 0.0,
                state: ProjectionState::Stopped,
                has_leader: false,
                generation: 0,
                last_error: None,
                failed_position: None,
                updated_at: None,
            },
        );
    }
    for (name, version, position, state, generation, last_error, failed, updated_at) in rows {
        all.insert(
            name.clone(),
            ProjectionStatus {
                name,
                version,
                position: to_position(position),
                head,
                lag_events: 0,
                lag_seconds: 0.0,
                state: ProjectionState::parse(&state),
                has_leader: false,
                generation,
                last_error,
                failed_position: failed.map(to_position),
                updated_at: Some(updated_at),
            },
        );
    }
    let mut out = Vec::with_capacity(all.len());
    for (_, mut s) in all {
        s.has_leader = held.contains(&i64::from(lock_key(&s.name)));
        if s.state == ProjectionState::Running && !s.has_leader {
            s.state = ProjectionState::Stopped;
        }
        s.lag_events = head.0.saturating_sub(s.position.0);
        if s.lag_events > 0 {
            if let Some(oldest) = store.read_all(s.position, 1).await?.first() {
                let age = now.signed_duration_since(oldest.recorded_at());
                s.lag_seconds = (age.num_milliseconds().max(0) as f64) / 1_000.0;
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// Clears the FAILED state of `name` (to `STOPPED`), so that a runner in any
/// process retries from its checkpoint; `last_error` and `failed_position`
/// stay until a batch commits. Returns whether it was FAILED.
pub async fn reset_failed(pool: &PgPool, name: &str) -> Result<bool, ProjectionError> {
    let done = sqlx::query(
        "UPDATE projection_checkpoints SET state = 'STOPPED', updated_at = now() \
         WHERE name = $1 AND state = 'FAILED'",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
