//! `marketplace projections verify`: rebuild every read model from the log
//! into a scratch schema and compare it, table by table, with the live
//! build.
//!
//! **Comparing at one position while the live build keeps moving.** For each
//! projection, one `REPEATABLE READ` transaction reads the live build's
//! checkpoint *and* checksums its tables: a batch commits its rows and its
//! checkpoint together, so that snapshot is exactly the fold of the log up
//! to that checkpoint, whatever the runner commits meanwhile (nothing is
//! paused). The scratch build is then folded from position 0 up to exactly
//! that checkpoint (pages of `bulk_batch`, the last page cut at the
//! checkpoint) with the same code, and checksummed the same way.
//!
//! **Checksum.** Per table: the row count and
//! `md5(string_agg(md5(row::text), '' ORDER BY md5(row::text)))`, i.e. the
//! md5 of the sorted per-row digests, so it depends on the rows only (not on
//! their physical order or on how the fold batched them).
//!
//! A projection whose live build has another version than this binary's
//! code cannot be compared (a rebuild is pending or the binary is older):
//! it is reported as skipped, which fails the verification too. Scratch
//! schemas are named `rmverify_<name>_<random>` (never a build's `rm_…`)
//! and dropped afterwards;
//! one verification runs at a time (a session advisory lock), and it first
//! drops scratch schemas a crashed run left behind.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use marketplace_store::{EventStore, Position, RecordedEvent};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::builds::{self, quote};
use crate::runtime::{Projection, ProjectionError};
use marketplace_consumers::leader::{lock_key, PROJECTION_LOCKS as LOCK_NAMESPACE};

/// One table compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableCheck {
    /// The table.
    pub table: String,
    /// Rows in the live build.
    pub live_rows: i64,
    /// Checksum of the live build's table.
    pub live_checksum: String,
    /// Rows in the scratch build.
    pub scratch_rows: i64,
    /// Checksum of the scratch build's table.
    pub scratch_checksum: String,
}

impl TableCheck {
    /// Whether both builds hold the same rows.
    pub fn matches(&self) -> bool {
        self.live_rows == self.scratch_rows && self.live_checksum == self.scratch_checksum
    }
}

/// One projection compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectionCheck {
    /// The projection.
    pub name: String,
    /// Its code's version.
    pub version: i32,
    /// The live build compared with.
    pub live_schema: Option<String>,
    /// The position both builds were compared at.
    pub position: Position,
    /// Every table, in the projection's order.
    pub tables: Vec<TableCheck>,
    /// Why it was not compared.
    pub skipped: Option<String>,
}

impl ProjectionCheck {
    /// Whether it was compared and every table matches.
    pub fn matches(&self) -> bool {
        self.skipped.is_none() && self.tables.iter().all(TableCheck::matches)
    }
}

/// Row count and checksum of `schema.table`.
async fn checksum(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<(i64, String), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT count(*), COALESCE(md5(string_agg(h, '' ORDER BY h)), md5('')) \
         FROM (SELECT md5(t::text) AS h FROM {}.{} t) rows",
        quote(schema),
        quote(table)
    ))
    .fetch_one(&mut *conn)
    .await
}

/// Second half of the session lock that keeps verifications one at a time.
fn verify_lock_key() -> i32 {
    lock_key("projections verify")
}

/// Compares every projection in `projections` (see the module
/// documentation). `on_progress(name, position, target)` is called as each
/// scratch build advances. Fails if another verification is running.
pub async fn verify(
    pool: &PgPool,
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
    batch: usize,
    on_progress: &(dyn Fn(&str, Position, Position) + Send + Sync),
) -> Result<Vec<ProjectionCheck>, ProjectionError> {
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(verify_lock_key())
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        let _ = lock.close().await;
        return Err(ProjectionError::Sql(sqlx::Error::Protocol(
            "another `projections verify` is running".to_owned(),
        )));
    }
    let result = async {
        drop_scratch_schemas(pool).await?;
        let mut out = Vec::with_capacity(projections.len());
        for p in projections {
            out.push(verify_one(pool, store, p.as_ref(), batch, on_progress).await?);
        }
        Ok(out)
    }
    .await;
    let _ = lock.close().await;
    result
}

/// Drops every scratch schema (`rmverify_…`) an interrupted or crashed
/// verification left behind; returns how many there were.
pub async fn drop_scratch_schemas(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rmverify\\_%'",
    )
    .fetch_all(pool)
    .await?;
    for schema in &leftovers {
        drop_schema(pool, schema).await?;
    }
    Ok(leftovers.len())
}

async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)))
        .execute(pool)
        .await?;
    Ok(())
}

async fn verify_one(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    batch: usize,
    on_progress: &(dyn Fn(&str, Position, Position) + Send + Sync),
) -> Result<ProjectionCheck, ProjectionError> {
    let name = projection.name();
    builds::check_name(name)?;
    let mut check = ProjectionCheck {
        name: name.to_owned(),
        version: projection.version(),
        live_schema: None,
        position: Position::START,
        tables: Vec::new(),
        skipped: None,
    };
    if projection.tables().is_empty() {
        check.skipped = Some("it has no tables of its own".to_owned());
        return Ok(check);
    }
    // The live build: its checkpoint and its checksums in one snapshot.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let Some(live) = builds::live_build(&mut tx, name).await? else {
        check.skipped = Some("it has no live build".to_owned());
        return Ok(check);
    };
    let (schema, version) = (live.schema, live.version);
    check.live_schema = Some(schema.clone());
    check.position = live.position;
    if version != projection.version() {
        check.skipped = Some(format!(
            "its live build is version {version} and this binary's is {} \
             (a rebuild is pending, or this binary is older)",
            projection.version()
        ));
        return Ok(check);
    }
    let mut live_sums = Vec::new();
    for table in projection.tables() {
        live_sums.push(checksum(&mut tx, &schema, table.name).await?);
    }
    tx.commit().await?;

    // The scratch build, up to exactly that position.
    let scratch = format!(
        "rmverify_{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let scratch_sums = scratch_build(
        pool,
        store,
        projection,
        &scratch,
        check.position,
        batch,
        on_progress,
    )
    .await;
    let dropped = drop_schema(pool, &scratch).await;
    let scratch_sums = scratch_sums?;
    dropped?;
    for ((table, live), scratch) in projection.tables().iter().zip(live_sums).zip(scratch_sums) {
        check.tables.push(TableCheck {
            table: table.name.to_owned(),
            live_rows: live.0,
            live_checksum: live.1,
            scratch_rows: scratch.0,
            scratch_checksum: scratch.1,
        });
    }
    Ok(check)
}

/// Folds the log up to `target` into a new schema `scratch` and returns the
/// checksums of its tables.
async fn scratch_build(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    scratch: &str,
    target: Position,
    batch: usize,
    on_progress: &(dyn Fn(&str, Position, Position) + Send + Sync),
) -> Result<Vec<(i64, String)>, ProjectionError> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA {}", quote(scratch)))
        .execute(&mut *tx)
        .await?;
    builds::enter(&mut tx, scratch).await?;
    for table in projection.tables() {
        sqlx::query(table.create).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let mut at = Position::START;
    on_progress(name, at, target);
    while at < target {
        let page: Vec<RecordedEvent> = store
            .read_all(at, batch.max(1))
            .await?
            .into_iter()
            .take_while(|e| e.position <= target)
            .collect();
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        let mut tx = pool.begin().await?;
        builds::enter(&mut tx, scratch).await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let page = crate::runtime::decode_for(projection, &page)?;
        match AssertUnwindSafe(projection.apply(&mut tx, &page))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied?,
            Err(_) => {
                return Err(ProjectionError::Panicked(format!(
                    "{name}: the fold panicked in a scratch build"
                )))
            }
        }
        tx.commit().await?;
        at = last;
        on_progress(name, at, target);
    }
    let mut conn = pool.acquire().await?;
    let mut sums = Vec::new();
    for table in projection.tables() {
        sums.push(checksum(&mut conn, scratch, table.name).await?);
    }
    Ok(sums)
}
