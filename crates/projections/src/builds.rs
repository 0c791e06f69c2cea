//! Builds: every version of a projection lives in its own schema, and the
//! names the queries use are views that one transaction switches.
//!
//! - **A build** is one schema, `rm_<name>_v<N>` (or `rm_<name>_v<N>_r<k>`
//!   for a forced rebuild of a version that already has a build), holding
//!   version N's tables ([`Projection::tables`]) under their usual names
//!   (`rm_listings`, …), and one row in `projection_checkpoints` (keyed by
//!   the schema) with its own checkpoint, leadership generation and state.
//! - **Live.** At most one build per projection is `live`. The stable names
//!   the queries use are views in `public` (`public.rm_listings` is
//!   `SELECT * FROM rm_listings_v2.rm_listings`), so query code never
//!   names a build. Folds write into their build's schema: the batch
//!   transaction starts with `SET LOCAL search_path TO <build schema>, …`
//!   and the read models use unqualified table names.
//! - **Install.** A projection without a live build (a fresh database, or a
//!   new read model) gets one at once, with its indexes and its views
//!   ([`install`], run by [`crate::migrate`]; the runtime does the same for
//!   a projection [`crate::migrate`] does not know).
//! - **Rebuild.** When a projection's code `VERSION` is newer than its live
//!   build, `resolve` gives its runners a new build to lead instead (made
//!   without secondary indexes): it loads from position 0 in bulk, builds
//!   its indexes, then follows the log live until it has caught up, and
//!   [`crate::ProjectorRuntime`] switches it in (see the runtime's
//!   documentation for why no event is lost or applied twice). The build it
//!   replaces is marked `retired` in the same transaction, and dropped with
//!   its schema afterwards ([`drop_retired`]). A forced rebuild of the same
//!   version ([`start_rebuild`], `marketplace projections rebuild NAME`)
//!   goes the same way into `rm_<name>_v<N>_r<k>`.
//! - **Outdated code.** A runner whose code is older than the live build
//!   never leads it: during a rolling deploy the old processes keep the old
//!   build going until the switch, then stand by.
//!
//! Creating builds is serialised per projection by a transaction-scoped
//! advisory lock ([`BUILD_LOCK_NAMESPACE`]), so several processes agree on
//! one build per version.
//!
//! This is the one module with SQL on `projection_checkpoints` (and the
//! `projection_generations` sequence): the runtime's takeover, fenced
//! commits, state marks and switch, the status, `verify` and an API-only
//! process ([`live_positions`]) read and write build rows through the
//! functions here (the tables themselves are in `migrations/`).
//!
//! Operating notes:
//! - During a rolling deploy the old binaries' queries read the views too,
//!   so after the switch they read the new version's tables: change tables
//!   additively (new columns, new tables) while old binaries still serve.
//! - Processes from before builds existed (migration 20007) lock a
//!   projection by its name, not by its build: stop them before migrating a
//!   database to builds (their commits are still fenced, but two leaders
//!   would take turns).
//! - Schema names are reused once free: a forced rebuild of
//!   `rm_listings_v2_r1` may be built into `rm_listings_v2` again after that
//!   was dropped.

use chrono::{DateTime, Utc};
use marketplace_store::Position;
use sqlx::{PgConnection, PgPool};

use crate::progress::ProjectionState;
use crate::runtime::{Generation, Projection, ProjectionError};
use marketplace_consumers::leader::lock_key;

/// Schema of the stable views the queries read.
pub const VIEW_SCHEMA: &str = "public";

/// First half of the transaction-scoped advisory lock that serialises
/// creating builds of one projection (`"mktb"` in ASCII); the second half is
/// [`lock_key`] of the projection's name.
pub const BUILD_LOCK_NAMESPACE: i32 = 0x6d6b_7462;

/// The checkpoint of the live build of projection `$1`, for a standby to
/// follow (see [`marketplace_consumers::leader::LockConnection`]).
pub const LIVE_POSITION_SQL: &str =
    "SELECT position FROM projection_checkpoints WHERE name = $1 AND live";

/// Whether the build in schema `$1` still has leadership generation `$2`
/// and is not retired (a switch retires the build it replaces; a takeover
/// bumps the generation).
pub const BUILD_LEADING_SQL: &str =
    "SELECT generation = $2 AND NOT retired FROM projection_checkpoints WHERE schema_name = $1";

/// One table of a read model's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Its name, in every build's schema and as the view in [`VIEW_SCHEMA`].
    pub name: &'static str,
    /// `CREATE TABLE <name> (…)`, unqualified: it runs with the build's
    /// schema first on the `search_path`. Keys and constraints the fold
    /// relies on belong here.
    pub create: &'static str,
    /// Secondary indexes (`CREATE INDEX IF NOT EXISTS …`, unqualified),
    /// created after a bulk load.
    pub indexes: &'static [&'static str],
}

/// One build of a projection, as its checkpoint row describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The projection.
    pub name: String,
    /// The version it was built with.
    pub version: i32,
    /// Its schema.
    pub schema: String,
    /// Whether the views point at it.
    pub live: bool,
    /// Whether its secondary indexes exist (a bulk load has not yet).
    pub indexed: bool,
    /// Its committed checkpoint.
    pub position: Position,
    /// Its leader's state.
    pub state: ProjectionState,
}

/// What a runner of some code version should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Lead this build.
    Lead(Build),
    /// The live build is newer than this code: lead nothing.
    Outdated {
        /// The live build's version.
        live: i32,
    },
}

type BuildRow = (String, i32, String, bool, bool, i64, String);

const BUILD_COLUMNS: &str = "name, version, schema_name, live, indexed, position, state";

fn to_build((name, version, schema, live, indexed, position, state): BuildRow) -> Build {
    Build {
        name,
        version,
        schema,
        live,
        indexed,
        position: to_position(position),
        state: ProjectionState::parse(&state),
    }
}

/// Projection names become schema names: lower-case ASCII letters, digits
/// and `_`, starting with a letter, at most 40 bytes.
pub fn check_name(name: &str) -> Result<(), ProjectionError> {
    let ok = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::InvalidName(name.to_owned()))
    }
}

/// The schema of build `k` of `name` at `version`: `rm_<name>_v<N>` for the
/// first, `rm_<name>_v<N>_r<k>` after.
pub fn schema_name(name: &str, version: i32, k: u32) -> String {
    if k == 0 {
        format!("rm_{name}_v{version}")
    } else {
        format!("rm_{name}_v{version}_r{k}")
    }
}

/// `"ident"`, for names this module made (checked, but quoted anyway).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Puts `schema` first on the `search_path` until the end of the
/// transaction (`SET LOCAL`), so that unqualified names are its tables.
pub(crate) async fn enter(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('search_path', \
         quote_ident($1) || ', ' || current_setting('search_path'), true)",
    )
    .bind(schema)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every build of `name` that is not retired, live first.
pub async fn builds(pool: &PgPool, name: &str) -> Result<Vec<Build>, sqlx::Error> {
    let rows: Vec<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM projection_checkpoints \
         WHERE name = $1 AND NOT retired ORDER BY live DESC, version DESC, started_at DESC"
    ))
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(to_build).collect())
}

/// The build in `schema`, if it exists and is not retired.
pub async fn build(pool: &PgPool, schema: &str) -> Result<Option<Build>, sqlx::Error> {
    let row: Option<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM projection_checkpoints \
         WHERE schema_name = $1 AND NOT retired"
    ))
    .bind(schema)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(to_build))
}

/// The live build of `name`, if it has one, read on `conn` (inside the
/// caller's transaction, e.g. a snapshot).
pub(crate) async fn live_build(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Build>, sqlx::Error> {
    let row: Option<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM projection_checkpoints WHERE name = $1 AND live"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(to_build))
}

/// The live build's checkpoint of `name`, if it has one.
pub(crate) async fn live_position(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Position>, sqlx::Error> {
    let p: Option<i64> = sqlx::query_scalar(LIVE_POSITION_SQL)
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(p.map(to_position))
}

/// The checkpoint of every projection's live build, by name: what a
/// process that runs no projector follows so that consistency tokens still
/// work there.
pub async fn live_positions(pool: &PgPool) -> Result<Vec<(String, Position)>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, position FROM projection_checkpoints WHERE live")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, p)| (name, to_position(p)))
        .collect())
}

/// A build's row as the status shows it: the build, its leadership
/// generation, its last failure and its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildRecord {
    pub build: Build,
    pub generation: i64,
    pub last_error: Option<String>,
    pub failed_position: Option<Position>,
    pub updated_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

type RecordRow = (
    String,
    i32,
    String,
    bool,
    bool,
    i64,
    String,
    i64,
    Option<String>,
    Option<i64>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Every build that is not retired, by name, live first, then by version
/// and start.
pub(crate) async fn rows_for_status(pool: &PgPool) -> Result<Vec<BuildRecord>, sqlx::Error> {
    let rows: Vec<RecordRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS}, generation, last_error, failed_position, updated_at, started_at \
         FROM projection_checkpoints WHERE NOT retired \
         ORDER BY name, live DESC, version, started_at"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BuildRecord {
            build: to_build((r.0, r.1, r.2, r.3, r.4, r.5, r.6)),
            generation: r.7,
            last_error: r.8,
            failed_position: r.9.map(to_position),
            updated_at: r.10,
            started_at: r.11,
        })
        .collect())
}

/// Makes the caller the leader of the build in `schema`: a new generation
/// from the `projection_generations` sequence (fencing out every earlier
/// leader) and state RUNNING (even if it was FAILED, when `resume_failed`).
/// Returns the generation with the checkpoint, or `None` if the build is
/// retired (or gone), or FAILED and `resume_failed` is false.
pub(crate) async fn take_over(
    pool: &PgPool,
    schema: &str,
    resume_failed: bool,
) -> Result<Option<(Generation, Position)>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE projection_checkpoints \
         SET generation = nextval('projection_generations'), \
             state = 'RUNNING', updated_at = now() \
         WHERE schema_name = $1 AND NOT retired AND (state <> 'FAILED' OR $2) \
         RETURNING generation, position",
    )
    .bind(schema)
    .bind(resume_failed)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(g, p)| (Generation(g), to_position(p))))
}

/// The fencing check of a batch commit, first in its transaction `tx`:
/// moves the checkpoint of `name`'s build from `from` to `to` (RUNNING, the
/// last failure cleared) provided its row is still at `from` and at
/// `generation` and not retired; `false` (nothing changed) otherwise. It
/// locks the row, so a takeover or a switch waits for this transaction, and
/// it puts the build's schema first on the transaction's `search_path`; a
/// build that is not live commits asynchronously (`synchronous_commit =
/// off`).
pub(crate) async fn advance_fenced(
    tx: &mut PgConnection,
    name: &str,
    generation: Generation,
    from: Position,
    to: Position,
) -> Result<bool, sqlx::Error> {
    let moved: Option<(String, Option<String>)> = sqlx::query_as(
        "UPDATE projection_checkpoints SET position = $4, state = 'RUNNING', \
         last_error = NULL, failed_position = NULL, updated_at = now() \
         WHERE name = $1 AND position = $2 AND generation = $3 AND NOT retired \
         RETURNING set_config('search_path', \
                       quote_ident(schema_name) || ', ' || current_setting('search_path'), \
                       true), \
                   CASE WHEN NOT live THEN set_config('synchronous_commit', 'off', true) END",
    )
    .bind(name)
    .bind(to_i64(from))
    .bind(generation.0)
    .bind(to_i64(to))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(moved.is_some())
}

/// Marks the build in `schema` `indexed` inside `tx`, fenced like a batch
/// commit (still at `position` and `generation`, not retired), and puts its
/// schema first on the transaction's `search_path`; `false` if fenced.
pub(crate) async fn mark_indexed_fenced(
    tx: &mut PgConnection,
    schema: &str,
    generation: Generation,
    position: Position,
) -> Result<bool, sqlx::Error> {
    let fenced: Option<String> = sqlx::query_scalar(
        "UPDATE projection_checkpoints SET indexed = true, updated_at = now() \
         WHERE schema_name = $1 AND generation = $2 AND position = $3 AND NOT retired \
         RETURNING set_config('search_path', \
             quote_ident(schema_name) || ', ' || current_setting('search_path'), true)",
    )
    .bind(schema)
    .bind(generation.0)
    .bind(to_i64(position))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(fenced.is_some())
}

/// Sets the state of `name`'s build led under `generation` (and, for
/// FAILED, the failed position and error), if that generation still owns
/// it. Returns whether it did.
pub(crate) async fn mark(
    pool: &PgPool,
    name: &str,
    generation: Generation,
    state: ProjectionState,
    failure: Option<(Position, &str)>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE projection_checkpoints SET state = $3, updated_at = now(), \
         failed_position = COALESCE($4, failed_position), \
         last_error = COALESCE($5, last_error) \
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(generation.0)
    .bind(state.as_str())
    .bind(failure.map(|f| to_i64(f.0)))
    .bind(failure.map(|f| f.1))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `state`, `failed_position` and `last_error` of a build's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailureRow {
    pub state: ProjectionState,
    pub failed_position: Option<Position>,
    pub last_error: Option<String>,
}

/// The state and last failure of the build in `schema`, unless it is
/// retired (or gone).
pub(crate) async fn failure_of(
    pool: &PgPool,
    schema: &str,
) -> Result<Option<FailureRow>, sqlx::Error> {
    let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT state, failed_position, last_error FROM projection_checkpoints \
             WHERE schema_name = $1 AND NOT retired",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(state, position, error)| FailureRow {
        state: ProjectionState::parse(&state),
        failed_position: position.map(to_position),
        last_error: error,
    }))
}

/// Sets `name`'s FAILED builds (not retired) to STOPPED; `last_error` and
/// `failed_position` stay until a batch commits. Returns whether one was
/// FAILED.
pub(crate) async fn clear_failed(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE projection_checkpoints SET state = 'STOPPED', updated_at = now() \
         WHERE name = $1 AND state = 'FAILED' AND NOT retired",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() >= 1)
}

/// In the switch transaction: locks the live build's row of `name` (`FOR
/// UPDATE`: its leader's next commit waits, one in flight finishes first)
/// and returns its schema and checkpoint.
pub(crate) async fn lock_live(
    tx: &mut PgConnection,
    name: &str,
) -> Result<Option<(String, Position)>, sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT schema_name, position FROM projection_checkpoints \
         WHERE name = $1 AND live FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|(schema, p)| (schema, to_position(p))))
}

/// In the switch transaction: locks the row of the build in `schema`
/// (`FOR UPDATE`) and returns its checkpoint, if `generation` still leads
/// it and it is neither retired nor live.
pub(crate) async fn lock_pending(
    tx: &mut PgConnection,
    schema: &str,
    generation: Generation,
) -> Result<Option<Position>, sqlx::Error> {
    let p: Option<i64> = sqlx::query_scalar(
        "SELECT position FROM projection_checkpoints \
         WHERE schema_name = $1 AND generation = $2 AND NOT retired AND NOT live FOR UPDATE",
    )
    .bind(schema)
    .bind(generation.0)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(p.map(to_position))
}

/// In the switch transaction: sets the checkpoint of the build in `schema`,
/// whose row the caller has locked ([`lock_pending`]).
pub(crate) async fn set_position(
    tx: &mut PgConnection,
    schema: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints SET position = $2, updated_at = now() \
         WHERE schema_name = $1",
    )
    .bind(schema)
    .bind(to_i64(position))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// In the switch transaction: retires the build in `old` (if any) and
/// makes the one in `schema` live (the views are [`point_views`]' part).
pub(crate) async fn go_live(
    tx: &mut PgConnection,
    old: Option<&str>,
    schema: &str,
) -> Result<(), sqlx::Error> {
    if let Some(old) = old {
        sqlx::query(
            "UPDATE projection_checkpoints \
             SET live = false, retired = true, state = 'STOPPED', updated_at = now() \
             WHERE schema_name = $1",
        )
        .bind(old)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE projection_checkpoints SET live = true, live_since = now(), updated_at = now() \
         WHERE schema_name = $1",
    )
    .bind(schema)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Starts a transaction holding the build lock of `name`.
async fn locked(
    pool: &PgPool,
    name: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(BUILD_LOCK_NAMESPACE)
        .bind(lock_key(name))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn builds_in(conn: &mut PgConnection, name: &str) -> Result<Vec<Build>, sqlx::Error> {
    let rows: Vec<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM projection_checkpoints \
         WHERE name = $1 AND NOT retired ORDER BY live DESC, version DESC, started_at DESC"
    ))
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(to_build).collect())
}

/// Creates a new build of `projection` (schema, tables, checkpoint row at
/// 0), inside the caller's transaction. A live build gets its indexes and
/// the views at once; a rebuild gets neither (bulk load first).
async fn create_build(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    live: bool,
) -> Result<Build, sqlx::Error> {
    let (name, version) = (projection.name(), projection.version());
    let mut k = 0;
    let schema = loop {
        let candidate = schema_name(name, version, k);
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
                 OR EXISTS (SELECT 1 FROM projection_checkpoints WHERE schema_name = $1)",
        )
        .bind(&candidate)
        .fetch_one(&mut *tx)
        .await?;
        if !taken {
            break candidate;
        }
        k += 1;
    };
    sqlx::query(&format!("CREATE SCHEMA {}", quote(&schema)))
        .execute(&mut *tx)
        .await?;
    let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *tx)
        .await?;
    enter(&mut *tx, &schema).await?;
    for table in projection.tables() {
        sqlx::query(table.create).execute(&mut *tx).await?;
        if live {
            for index in table.indexes {
                sqlx::query(index).execute(&mut *tx).await?;
            }
        }
    }
    // Leave the build's schema off the path again.
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(&path)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO projection_checkpoints \
             (name, version, schema_name, live, indexed, position, state, generation, live_since) \
         VALUES ($1, $2, $3, $4, $4, 0, 'STOPPED', 0, CASE WHEN $4 THEN now() END)",
    )
    .bind(name)
    .bind(version)
    .bind(&schema)
    .bind(live)
    .execute(&mut *tx)
    .await?;
    if live {
        point_views(&mut *tx, None, &schema, projection.tables()).await?;
    }
    tracing::info!(
        projection = name,
        version,
        schema = %schema,
        live,
        "created a build"
    );
    Ok(Build {
        name: name.to_owned(),
        version,
        schema,
        live,
        indexed: live,
        position: Position::START,
        state: ProjectionState::Stopped,
    })
}

/// Points the views of `tables` at `to`, dropping first every view that
/// selects from `from` (a table the new version no longer has goes away).
/// Run inside the switching transaction: it takes each view's
/// ACCESS EXCLUSIVE lock, so queries see the old build or the new one,
/// never a mix and never no view.
pub(crate) async fn point_views(
    tx: &mut PgConnection,
    from: Option<&str>,
    to: &str,
    tables: &[Table],
) -> Result<(), sqlx::Error> {
    let mut stale: Vec<String> = Vec::new();
    if let Some(from) = from {
        stale = sqlx::query_scalar(
            "SELECT DISTINCT view_name::text FROM information_schema.view_table_usage \
             WHERE view_schema = $1 AND table_schema = $2",
        )
        .bind(VIEW_SCHEMA)
        .bind(from)
        .fetch_all(&mut *tx)
        .await?;
    }
    for table in tables {
        if !stale.iter().any(|s| s == table.name) {
            stale.push(table.name.to_owned());
        }
    }
    stale.sort();
    for view in &stale {
        sqlx::query(&format!(
            "DROP VIEW IF EXISTS {}.{}",
            quote(VIEW_SCHEMA),
            quote(view)
        ))
        .execute(&mut *tx)
        .await?;
    }
    for table in tables {
        sqlx::query(&format!(
            "CREATE VIEW {v}.{t} AS SELECT * FROM {s}.{t}",
            v = quote(VIEW_SCHEMA),
            t = quote(table.name),
            s = quote(to),
        ))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Gives every projection in `projections` without a live build its first
/// one (tables, indexes, views, checkpoint at 0), then drops retired builds.
/// Idempotent and safe from several processes. A projection whose live
/// build is older than its code is left to its runners, which rebuild it
/// without downtime.
pub async fn install(
    pool: &PgPool,
    projections: &[std::sync::Arc<dyn Projection>],
) -> Result<(), sqlx::Error> {
    for p in projections {
        if check_name(p.name()).is_err() {
            return Err(sqlx::Error::Configuration(
                format!("invalid projection name {:?}", p.name()).into(),
            ));
        }
        let mut tx = locked(pool, p.name()).await?;
        if !builds_in(&mut tx, p.name()).await?.iter().any(|b| b.live) {
            create_build(&mut tx, p.as_ref(), true).await?;
        }
        tx.commit().await?;
    }
    if let Err(e) = drop_retired(pool, None).await {
        tracing::warn!(error = %e, "could not drop retired builds yet");
    }
    Ok(())
}

/// Which build a runner of `projection` (at its code version) leads,
/// creating it if needed:
/// - no live build: a new live one (installed as [`install`] does);
/// - the live build has the code's version: it;
/// - the live build is older: the rebuild of the code's version (created if
///   there is none yet; pending rebuilds of older versions are retired);
/// - the live build is newer: [`Resolved::Outdated`].
pub(crate) async fn resolve(
    pool: &PgPool,
    projection: &dyn Projection,
) -> Result<Resolved, ProjectionError> {
    check_name(projection.name())?;
    let code = projection.version();
    let mut tx = locked(pool, projection.name()).await?;
    let all = builds_in(&mut tx, projection.name()).await?;
    let resolved = match all.iter().find(|b| b.live) {
        None => Resolved::Lead(create_build(&mut tx, projection, true).await?),
        Some(live) if live.version > code => Resolved::Outdated { live: live.version },
        Some(live) if live.version == code => Resolved::Lead(live.clone()),
        Some(_) => {
            retire_older_rebuilds(&mut tx, projection.name(), code).await?;
            match all.iter().find(|b| !b.live && b.version == code) {
                Some(pending) => Resolved::Lead(pending.clone()),
                None => Resolved::Lead(create_build(&mut tx, projection, false).await?),
            }
        }
    };
    tx.commit().await?;
    Ok(resolved)
}

async fn retire_older_rebuilds(
    tx: &mut PgConnection,
    name: &str,
    version: i32,
) -> Result<(), sqlx::Error> {
    let retired = sqlx::query(
        "UPDATE projection_checkpoints SET retired = true, state = 'STOPPED', updated_at = now() \
         WHERE name = $1 AND NOT live AND NOT retired AND version < $2",
    )
    .bind(name)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    if retired.rows_affected() > 0 {
        tracing::info!(
            projection = name,
            version,
            "retired rebuilds of older versions"
        );
    }
    Ok(())
}

/// The build a forced rebuild of `projection` leads: a pending rebuild of
/// its code's version if one exists (it resumes), else a new one in a fresh
/// schema (`rm_<name>_v<N>_r<k>` when version N already has a build).
/// Fails with [`ProjectionError::Outdated`] if the live build is newer.
pub async fn start_rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
) -> Result<Build, ProjectionError> {
    check_name(projection.name())?;
    let code = projection.version();
    let mut tx = locked(pool, projection.name()).await?;
    let all = builds_in(&mut tx, projection.name()).await?;
    if let Some(live) = all.iter().find(|b| b.live) {
        if live.version > code {
            return Err(ProjectionError::Outdated {
                name: projection.name().to_owned(),
                live: live.version,
                code,
            });
        }
    }
    retire_older_rebuilds(&mut tx, projection.name(), code).await?;
    let build = match all.iter().find(|b| !b.live && b.version == code) {
        Some(pending) => pending.clone(),
        None => {
            let has_live = all.iter().any(|b| b.live);
            create_build(&mut tx, projection, !has_live).await?
        }
    };
    tx.commit().await?;
    Ok(build)
}

/// Creates the secondary indexes of `projection`'s tables in `schema`
/// (inside the caller's transaction).
pub(crate) async fn create_indexes(
    tx: &mut PgConnection,
    projection: &dyn Projection,
) -> Result<(), sqlx::Error> {
    for table in projection.tables() {
        for index in table.indexes {
            sqlx::query(index).execute(&mut *tx).await?;
        }
        // Fresh statistics, so the planner picks these indexes from the
        // first query on, not after autovacuum's first visit.
        sqlx::query(&format!("ANALYZE {}", table.name))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Drops retired builds (of `name`, or of every projection): their schema
/// and their checkpoint row, one transaction each. A build that a view
/// still selects from is never dropped. Waits at most a few seconds for
/// queries still reading a retired build (then gives up on it: call again).
/// Returns the schemas dropped.
pub async fn drop_retired(pool: &PgPool, name: Option<&str>) -> Result<Vec<String>, sqlx::Error> {
    let retired: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM projection_checkpoints \
         WHERE retired AND ($1::text IS NULL OR name = $1) ORDER BY schema_name",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for schema in retired {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let referenced: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.view_table_usage \
             WHERE table_schema = $1 AND view_schema <> $1)",
        )
        .bind(&schema)
        .fetch_one(&mut *tx)
        .await?;
        if referenced {
            tracing::error!(schema = %schema, "a retired build is still referenced by a view; not dropping it");
            continue;
        }
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM projection_checkpoints WHERE schema_name = $1 AND retired")
            .bind(&schema)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(schema = %schema, "dropped a retired build");
        dropped.push(schema);
    }
    Ok(dropped)
}

/// A checkpoint column as a [`Position`] (never negative in practice).
pub(crate) fn to_position(p: i64) -> Position {
    Position(u64::try_from(p).unwrap_or(0))
}

/// A [`Position`] as a checkpoint column.
pub(crate) fn to_i64(p: Position) -> i64 {
    i64::try_from(p.0).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_schema_names() {
        assert_eq!(schema_name("listings", 2, 0), "rm_listings_v2");
        assert_eq!(schema_name("listings", 2, 3), "rm_listings_v2_r3");
        assert!(check_name("listings").is_ok());
        assert!(check_name("order_lines2").is_ok());
        for bad in ["", "Listings", "2x", "a-b", "a\"b", &"x".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
