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

use marketplace_store::Position;
use sqlx::{PgConnection, PgPool};

use crate::progress::ProjectionState;
use crate::runtime::{to_position, Projection, ProjectionError};
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
