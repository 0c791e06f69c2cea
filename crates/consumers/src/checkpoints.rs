//! The `consumer_checkpoints` table: every statement on it lives here.
//!
//! One row per consumer: its position, its leadership generation, its state
//! (`RUNNING`, `FAILED`, `STOPPED`) and its last failure. See the migration
//! for the fencing rule.

use chrono::{DateTime, Utc};
use marketplace_store::Position;
use sqlx::PgPool;

/// A leadership epoch: bumped by every runner that takes over, checked by
/// every checkpoint write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub i64);

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of one consumer (`$1`), for
/// [`crate::leader::LockConnection::try_acquire_following`].
pub const POSITION_SQL: &str = "SELECT position FROM consumer_checkpoints WHERE name = $1";

/// Whether the row of `$1` still has generation `$2`, for
/// [`crate::leader::LockConnection::still_leading`].
pub const LEADING_SQL: &str =
    "SELECT generation = $2 AND state = 'RUNNING' FROM consumer_checkpoints WHERE name = $1";

/// One row, as status reports read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The consumer.
    pub name: String,
    /// Everything up to here is handled.
    pub position: Position,
    /// Its leadership generation.
    pub generation: i64,
    /// `RUNNING`, `FAILED` or `STOPPED`.
    pub state: String,
    /// The event it failed on.
    pub failed_position: Option<Position>,
    /// Why.
    pub last_error: Option<String>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// The consumers' checkpoints in one database.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    pool: PgPool,
}

impl Checkpoints {
    /// The table in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates `name`'s row at position 0 if it has none; returns its row.
    pub async fn ensure(&self, name: &str) -> Result<Row, sqlx::Error> {
        sqlx::query("INSERT INTO consumer_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.row(name).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// `name`'s row.
    pub async fn row(&self, name: &str) -> Result<Option<Row>, sqlx::Error> {
        let row: Option<RawRow> = sqlx::query_as(
            "SELECT name, position, generation, state, failed_position, last_error, updated_at \
             FROM consumer_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Row::from))
    }

    /// Every row, by name.
    pub async fn rows(&self) -> Result<Vec<Row>, sqlx::Error> {
        let rows: Vec<RawRow> = sqlx::query_as(
            "SELECT name, position, generation, state, failed_position, last_error, updated_at \
             FROM consumer_checkpoints ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Row::from).collect())
    }

    /// Takes a new generation for `name` and sets it RUNNING, unless it is
    /// FAILED and `resume_failed` is false (then `None`). Call it only while
    /// holding the consumer's lock.
    pub async fn take_over(
        &self,
        name: &str,
        resume_failed: bool,
    ) -> Result<Option<(Generation, Position)>, sqlx::Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE consumer_checkpoints \
             SET generation = nextval('consumer_generations'), state = 'RUNNING', \
                 updated_at = now() \
             WHERE name = $1 AND (state <> 'FAILED' OR $2) \
             RETURNING generation, position",
        )
        .bind(name)
        .bind(resume_failed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(g, p)| (Generation(g), to_position(p))))
    }

    /// Moves `name`'s checkpoint from `from` to `to`, provided its row still
    /// has `from` and `generation` (else `false`: fenced) — and clears a
    /// recorded failure.
    pub async fn advance(
        &self,
        name: &str,
        generation: Generation,
        from: Position,
        to: Position,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE consumer_checkpoints SET position = $4, state = 'RUNNING', \
             last_error = NULL, failed_position = NULL, updated_at = now() \
             WHERE name = $1 AND generation = $2 AND position = $3",
        )
        .bind(name)
        .bind(generation.0)
        .bind(to_i64(from))
        .bind(to_i64(to))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks `name` FAILED at `position` with `error`, if `generation` still
    /// owns it.
    pub async fn fail(
        &self,
        name: &str,
        generation: Generation,
        position: Position,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE consumer_checkpoints SET state = 'FAILED', failed_position = $3, \
             last_error = $4, updated_at = now() WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(generation.0)
        .bind(to_i64(position))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks `name` STOPPED (a clean shutdown), if `generation` still owns it.
    pub async fn stop(&self, name: &str, generation: Generation) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE consumer_checkpoints SET state = 'STOPPED', updated_at = now() \
             WHERE name = $1 AND generation = $2 AND state = 'RUNNING'",
        )
        .bind(name)
        .bind(generation.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Clears the FAILED state of `name` (to STOPPED), so that a runner in
    /// any process retries from the checkpoint; returns whether it was
    /// FAILED. The failure stays recorded until a batch commits.
    pub async fn reset_failed(&self, name: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE consumer_checkpoints SET state = 'STOPPED', updated_at = now() \
             WHERE name = $1 AND state = 'FAILED'",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets `name`'s position (an operator's rewind; the next leader
    /// starts there). Returns whether the row exists.
    pub async fn set_position(&self, name: &str, position: Position) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE consumer_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(to_i64(position))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

type RawRow = (
    String,
    i64,
    i64,
    String,
    Option<i64>,
    Option<String>,
    DateTime<Utc>,
);

impl From<RawRow> for Row {
    fn from(r: RawRow) -> Self {
        Row {
            name: r.0,
            position: to_position(r.1),
            generation: r.2,
            state: r.3,
            failed_position: r.4.map(to_position),
            last_error: r.5,
            updated_at: r.6,
        }
    }
}

/// A stored BIGINT position.
pub fn to_position(p: i64) -> Position {
    Position(u64::try_from(p).unwrap_or(0))
}

/// A position as a BIGINT.
pub fn to_i64(p: Position) -> i64 {
    i64::try_from(p.0).unwrap_or(i64::MAX)
}

/// Applies the consumers' migrations (after the process managers' own,
/// whose checkpoints it takes over).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // The event store, read models and process managers keep their
    // migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}
