//! The projector runtime: subscribe from the checkpoint, batch, fold, and
//! commit rows and checkpoint together.
//!
//! Exactly-once comes from the single transaction: either a batch's rows and
//! its new checkpoint are both committed, or neither is, and a restart
//! resumes from the committed checkpoint. The checkpoint moves only from the
//! position this runner read (`UPDATE … WHERE position = $old`), so a second
//! runner that somehow processed the same batch fails instead of applying it
//! twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::progress::Progress;

/// Why a projection could not fold a batch.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A read-model write failed.
    #[error("read model write failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// An event could not be decoded.
    #[error("could not decode {event_type} at position {position}: {reason}")]
    Decode {
        /// Stored name.
        event_type: String,
        /// Where in the log.
        position: Position,
        /// What went wrong.
        reason: String,
    },
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another runner moved the checkpoint: this runner is stale.
    #[error("projection {name}: checkpoint moved by another runner (fenced)")]
    Fenced {
        /// The projection.
        name: String,
    },
}

/// A read model fed from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name, e.g. `listings`.
    fn name(&self) -> &'static str;
    /// Bumped when its tables or logic change.
    fn version(&self) -> i32;
    /// Folds a batch of events, in log order, into its tables inside `tx`.
    /// Events it does not care about must be skipped explicitly.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError>;
}

/// Batching knobs.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    /// Most events folded in one transaction.
    pub max_batch: usize,
    /// How long to keep gathering a batch after its first event.
    pub max_wait: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_wait: Duration::from_millis(5),
        }
    }
}

/// Runs projections against one read-model database.
#[derive(Clone)]
pub struct ProjectorRuntime {
    pool: PgPool,
    store: Arc<dyn EventStore>,
    progress: Progress,
    config: RuntimeConfig,
}

impl std::fmt::Debug for ProjectorRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectorRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ProjectorRuntime {
    /// A runtime folding `store` into the read models in `pool`.
    pub fn new(pool: PgPool, store: Arc<dyn EventStore>, progress: Progress) -> Self {
        Self {
            pool,
            store,
            progress,
            config: RuntimeConfig::default(),
        }
    }

    /// Replaces the batching knobs.
    pub fn with_config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The shared progress registry.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The committed checkpoint of `name` (creating its row at 0 if new).
    pub async fn checkpoint(
        &self,
        projection: &dyn Projection,
    ) -> Result<Position, ProjectionError> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, version) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection.name())
        .bind(projection.version())
        .execute(&self.pool)
        .await?;
        let pos: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(projection.name())
                .fetch_one(&self.pool)
                .await?;
        Ok(Position(u64::try_from(pos).unwrap_or(0)))
    }

    /// Runs `projection` until `shutdown` turns true or a batch keeps failing.
    pub async fn run(
        &self,
        projection: Arc<dyn Projection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        let mut position = self.checkpoint(projection.as_ref()).await?;
        self.progress.advance(name, position);
        tracing::info!(projection = name, %position, "projection starting");
        let mut events = self.store.subscribe_all(position).await?;
        loop {
            let first = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                next = events.next() => next,
            };
            let Some(first) = first else { return Ok(()) };
            let mut batch = vec![first?];
            let deadline = tokio::time::Instant::now() + self.config.max_wait;
            while batch.len() < self.config.max_batch {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(Some(e)) => batch.push(e?),
                    Ok(None) | Err(_) => break,
                }
            }
            position = self
                .commit_with_retry(projection.as_ref(), position, &batch)
                .await?;
            self.progress.advance(name, position);
        }
    }

    async fn commit_with_retry(
        &self,
        projection: &dyn Projection,
        from: Position,
        batch: &[RecordedEvent],
    ) -> Result<Position, ProjectionError> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_batch(projection, from, batch).await {
                Ok(p) => return Ok(p),
                Err(e @ ProjectionError::Fenced { .. }) => return Err(e),
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(projection = projection.name(), error = %e, attempt, "batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * 2u64.pow(attempt))).await;
                }
                Err(e) => {
                    let _ = sqlx::query(
                        "UPDATE projection_checkpoints SET state = 'FAILED', last_error = $2, \
                         updated_at = now() WHERE name = $1",
                    )
                    .bind(projection.name())
                    .bind(e.to_string())
                    .execute(&self.pool)
                    .await;
                    tracing::error!(projection = projection.name(), error = %e, "projection failed");
                    return Err(e);
                }
            }
        }
    }

    /// Folds one batch and moves the checkpoint from `from`, atomically.
    pub async fn commit_batch(
        &self,
        projection: &dyn Projection,
        from: Position,
        batch: &[RecordedEvent],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = batch.last() else {
            return Ok(from);
        };
        let mut tx = self.pool.begin().await?;
        projection.apply(&mut tx, batch).await?;
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET position = $3, state = 'RUNNING', \
             last_error = NULL, updated_at = now() WHERE name = $1 AND position = $2",
        )
        .bind(projection.name())
        .bind(i64::try_from(from.0).unwrap_or(i64::MAX))
        .bind(i64::try_from(last.position.0).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        tx.commit().await?;
        Ok(last.position)
    }
}
