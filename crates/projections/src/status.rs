//! Cluster-wide status of the projections and the process managers, from
//! any process: what the `projections status` command, GraphQL
//! `projections`, `/metrics` and `/readyz` show. Each row says its
//! [`ConsumerKind`]; the process managers' rows come from
//! `marketplace_consumers::status`.
//!
//! It reads the builds' checkpoint rows (`projection_checkpoints`, one row
//! per build, through [`crate::builds`]), the advisory locks held in the
//! database (`pg_locks`, to tell whether a build's leader is alive) and the
//! log head through the [`EventStore`] port.
//!
//! Lag is measured two ways:
//! - `lag_events`: the log head's position minus the checkpoint (positions
//!   are dense in the Postgres store, so this is the number of events not yet
//!   folded);
//! - `lag_seconds`: the age of the oldest event not yet folded (now minus its
//!   `recorded_at`), or 0 when the projection has caught up. Unlike "time
//!   since the last commit" it does not grow while the log is idle.
//!
//! A projection's figures are its live build's (the one the queries read);
//! a rebuild in progress shows in [`ProjectionStatus::rebuild`] (and, for
//! convenience, [`ProjectionStatus::building_version`] and
//! [`ProjectionStatus::rebuild_progress`]).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use marketplace_store::{EventStore, Position};
use serde::Serialize;
use sqlx::PgPool;

use crate::builds::{self, Build, BuildRecord};
use crate::progress::{fraction, ProjectionState};
use crate::runtime::ProjectionError;
use marketplace_consumers::leader::{lock_key, PROJECTION_LOCKS as LOCK_NAMESPACE};

/// What kind of log consumer a status row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsumerKind {
    /// A read model (`projection_checkpoints`, one row per build).
    Projection,
    /// A process manager (`consumer_checkpoints`, see
    /// `marketplace_consumers::runner`).
    ProcessManager,
}

impl ConsumerKind {
    /// `PROJECTION` or `PROCESS_MANAGER`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Projection => "PROJECTION",
            ConsumerKind::ProcessManager => "PROCESS_MANAGER",
        }
    }
}

/// One consumer of the log (a projection, or a process manager) as the
/// cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionStatus {
    /// Stable name.
    pub name: String,
    /// A read model or a process manager.
    pub kind: ConsumerKind,
    /// The live build's version (this binary's version if it has none).
    pub version: i32,
    /// The live build's schema (`None` if it has none yet).
    pub schema: Option<String>,
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
    /// Leadership generation (a new one for each takeover).
    pub generation: i64,
    /// The last failure, kept until a batch commits after it.
    pub last_error: Option<String>,
    /// The event it failed on, kept until a batch commits after it.
    pub failed_position: Option<Position>,
    /// When its row last changed (`None` if it has no row yet).
    pub updated_at: Option<DateTime<Utc>>,
    /// The version being rebuilt beside the live build, if any.
    pub building_version: Option<i32>,
    /// How far that rebuild has come, from 0 to 1.
    pub rebuild_progress: Option<f64>,
    /// That rebuild in detail.
    pub rebuild: Option<RebuildStatus>,
}

/// A build that does not serve yet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RebuildStatus {
    /// The version it builds.
    pub version: i32,
    /// Its schema.
    pub schema: String,
    /// Its checkpoint.
    pub position: Position,
    /// Events it has still to fold (`head − position`).
    pub lag_events: u64,
    /// `position / head`, from 0 to 1.
    pub progress: f64,
    /// Still loading in bulk (its secondary indexes are not built yet).
    pub bulk: bool,
    /// Its leader's state, as for the live build.
    pub state: ProjectionState,
    /// Whether a runner leads it right now.
    pub has_leader: bool,
    /// Its leadership generation.
    pub generation: i64,
    /// The last failure (a failing rebuild never goes live).
    pub last_error: Option<String>,
    /// The event it failed on.
    pub failed_position: Option<Position>,
    /// When it was started.
    pub started_at: DateTime<Utc>,
}

/// Every projection of [`crate::all`] plus any other with a build, by name.
pub async fn status(
    pool: &PgPool,
    store: &dyn EventStore,
) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let rows = builds::rows_for_status(pool).await?;
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 2 AND classid::bigint = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(LOCK_NAMESPACE))
    .fetch_all(pool)
    .await?;
    let held: HashSet<i64> = held.into_iter().collect();
    let leads = |schema: &str| held.contains(&i64::from(lock_key(schema)));
    let head = store.head().await?;
    let now = Utc::now();

    let mut all: BTreeMap<String, ProjectionStatus> = BTreeMap::new();
    for p in crate::all() {
        all.insert(
            p.name().to_owned(),
            ProjectionStatus {
                name: p.name().to_owned(),
                kind: ConsumerKind::Projection,
                version: p.version(),
                schema: None,
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
                building_version: None,
                rebuild_progress: None,
                rebuild: None,
            },
        );
    }
    // Live builds first (the query's order), then rebuilds.
    for row in rows {
        let BuildRecord {
            build,
            generation,
            last_error,
            failed_position: failed,
            updated_at,
            started_at,
        } = row;
        let Build {
            name,
            version,
            schema,
            live,
            indexed,
            position,
            mut state,
        } = build;
        let has_leader = leads(&schema);
        if state == ProjectionState::Running && !has_leader {
            state = ProjectionState::Stopped;
        }
        if live {
            all.insert(
                name.clone(),
                ProjectionStatus {
                    name,
                    kind: ConsumerKind::Projection,
                    version,
                    schema: Some(schema),
                    position,
                    head,
                    lag_events: 0,
                    lag_seconds: 0.0,
                    state,
                    has_leader,
                    generation,
                    last_error,
                    failed_position: failed,
                    updated_at: Some(updated_at),
                    building_version: None,
                    rebuild_progress: None,
                    rebuild: None,
                },
            );
            continue;
        }
        let rebuild = RebuildStatus {
            version,
            schema,
            position,
            lag_events: head.0.saturating_sub(position.0),
            progress: fraction(position, head),
            bulk: !indexed,
            state,
            has_leader,
            generation,
            last_error,
            failed_position: failed,
            started_at,
        };
        let entry = all.entry(name.clone()).or_insert_with(|| ProjectionStatus {
            name,
            kind: ConsumerKind::Projection,
            version,
            schema: None,
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
            building_version: None,
            rebuild_progress: None,
            rebuild: None,
        });
        // Several pending rebuilds (left over): the newest version, then the
        // latest started, is the one shown.
        let newer = entry
            .rebuild
            .as_ref()
            .is_none_or(|r| (rebuild.version, rebuild.started_at) >= (r.version, r.started_at));
        if newer {
            entry.building_version = Some(rebuild.version);
            entry.rebuild_progress = Some(rebuild.progress);
            entry.rebuild = Some(rebuild);
        }
    }
    let mut out = Vec::with_capacity(all.len());
    for (_, mut s) in all {
        s.lag_events = head.0.saturating_sub(s.position.0);
        if s.lag_events > 0 {
            if let Some(oldest) = store.read_all(s.position, 1).await?.first() {
                let age = now.signed_duration_since(oldest.recorded_at());
                s.lag_seconds = (age.num_milliseconds().max(0) as f64) / 1_000.0;
            }
        }
        out.push(s);
    }
    // The process managers, from their own table (see
    // `marketplace_consumers::status`).
    let managers = marketplace_consumers::status::status(pool, store, &[])
        .await
        .map_err(|e| match e {
            marketplace_consumers::status::StatusError::Sql(e) => ProjectionError::Sql(e),
            marketplace_consumers::status::StatusError::Store(e) => ProjectionError::Store(e),
        })?;
    out.extend(managers.into_iter().map(|c| ProjectionStatus {
        name: c.name,
        kind: ConsumerKind::ProcessManager,
        version: 1,
        schema: None,
        position: c.position,
        head: c.head,
        lag_events: c.lag_events,
        lag_seconds: c.lag_seconds,
        state: ProjectionState::parse(&c.state),
        has_leader: c.has_leader,
        generation: c.generation,
        last_error: c.last_error,
        failed_position: c.failed_position,
        updated_at: c.updated_at,
        building_version: None,
        rebuild_progress: None,
        rebuild: None,
    }));
    Ok(out)
}

/// Clears the FAILED state of `name`'s builds (to `STOPPED`), so that a
/// runner in any process retries from its checkpoint; `last_error` and
/// `failed_position` stay until a batch commits. Returns whether one was
/// FAILED.
pub async fn reset_failed(pool: &PgPool, name: &str) -> Result<bool, ProjectionError> {
    // A process manager of that name (its own table).
    let manager = marketplace_consumers::Checkpoints::new(pool.clone())
        .reset_failed(name)
        .await?;
    let projection = builds::clear_failed(pool, name).await?;
    Ok(manager || projection)
}
