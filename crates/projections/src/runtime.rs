//! The projector runtime: elect a leader, subscribe from the checkpoint,
//! batch, fold, and commit rows and checkpoint together.
//!
//! A runner of one projection ([`ProjectorRuntime::run`]) moves between
//! these states (published per process in [`Progress`]; the checkpoint row's
//! `state` reflects the leader):
//!
//! - **STANDBY**: it tries the projection's advisory lock every
//!   [`RuntimeConfig::lock_retry`] on a dedicated connection (see
//!   [`crate::leader`]), and meanwhile follows the leader's committed
//!   checkpoint into [`Progress`] every [`RuntimeConfig::follow_interval`],
//!   so read-your-writes also works in a process that is not leading.
//! - **RUNNING**: with the lock, it takes over the checkpoint row (bumping its
//!   `generation`), subscribes from the stored checkpoint, gathers a batch
//!   until [`RuntimeConfig::max_batch`] events or [`RuntimeConfig::max_wait`]
//!   after its first event, and commits it. Every `lock_retry` it checks that
//!   its lock connection is still alive; if not, or if the log or the
//!   database becomes unreachable ([`ProjectionError::is_unavailable`]), it
//!   steps down to STANDBY (and tries again after `lock_retry`).
//! - **FAILED**: a batch that fails is retried event by event; an event that
//!   still fails after [`RuntimeConfig::max_attempts`] attempts (exponential
//!   backoff from [`RuntimeConfig::backoff_initial`] up to
//!   [`RuntimeConfig::backoff_max`]) marks the row `FAILED` with
//!   `last_error` and `failed_position`, and the runner releases the lock
//!   and waits. The checkpoint stays just below the failed event: nothing is
//!   ever skipped. Other projections keep running. It resumes from the
//!   checkpoint after [`ProjectorRuntime::reset_failed`] (from any process),
//!   or when a runner is started on a projection that is already FAILED (a
//!   restart); a standby that was already waiting does not retry a failure
//!   by itself.
//! - **STOPPED**: on shutdown the leader marks its row `STOPPED` and releases
//!   the lock, so a standby elsewhere takes over at once.
//!
//! Exactly once comes from the single transaction: it first moves the
//! checkpoint (`UPDATE … WHERE position = $old AND generation = $mine`, which
//! also locks the row), then folds the batch, then commits; either both take
//! effect or neither, and a restart resumes from the committed checkpoint.
//! The fencing check makes a stale leader's late commit fail
//! ([`ProjectionError::Fenced`]): a new leader has bumped the generation, or
//! the position moved. A fenced runner rolls back and goes back to STANDBY.
//! A panicking handler counts as a failed attempt; its transaction is rolled
//! back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader::LockConnection;
use crate::progress::{Progress, ProjectionState, RunnerStatus};
use crate::status::{self, ProjectionStatus};

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
    /// Another runner moved the checkpoint or took over leadership (a newer
    /// generation): this runner is stale and its batch was rolled back.
    #[error("projection {name}: checkpoint moved by another runner (fenced)")]
    Fenced {
        /// The projection.
        name: String,
    },
    /// The handler panicked; its transaction was rolled back.
    #[error("handler panicked: {0}")]
    Panicked(String),
    /// The projection is FAILED: its handler kept failing on one event.
    #[error("projection {name} failed at position {position}: {error}")]
    Failed {
        /// The projection.
        name: String,
        /// The event it could not fold.
        position: Position,
        /// The last error.
        error: String,
    },
}

impl ProjectionError {
    /// Whether the database connection failed (I/O, pool, or the server
    /// closing the session: SQLSTATE classes 08 and 57), rather than the
    /// handler. The runtime steps down and retries these without counting
    /// them as the handler's failed attempts.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ProjectionError::Sql(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
                _ => false,
            },
            ProjectionError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
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

/// A leadership epoch of one projection: bumped in its checkpoint row by
/// every runner that takes over, and checked by every batch commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub i64);

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Batching, leadership and retry knobs.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    /// Most events folded in one transaction.
    pub max_batch: usize,
    /// How long to keep gathering a batch after its first event.
    pub max_wait: Duration,
    /// How often a standby tries the leadership lock, and how often a
    /// leader checks that its lock connection is alive.
    pub lock_retry: Duration,
    /// How often a standby copies the leader's checkpoint into [`Progress`].
    pub follow_interval: Duration,
    /// Attempts at one event before the projection is marked FAILED (at
    /// least 1).
    pub max_attempts: u32,
    /// Pause after the first failed attempt; doubled after each next one.
    pub backoff_initial: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_wait: Duration::from_millis(5),
            lock_retry: Duration::from_millis(500),
            follow_interval: Duration::from_millis(50),
            max_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl RuntimeConfig {
    /// The pause after failed attempt number `attempt` (from 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
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

/// `state`, `failed_position` and `last_error` of a checkpoint row.
type FailureRow = (String, Option<i64>, Option<String>);

/// How a leader's term ended.
enum Term {
    /// Shutdown was asked for.
    Stopped,
    /// Fenced, lost its lock, or the log could not be read: stand by again.
    SteppedDown,
    /// The handler kept failing on the event at `position`.
    Failed { position: Position, error: String },
}

/// Why committing a batch stopped short.
enum Halt {
    Fenced,
    /// The database connection failed: not the handler's fault.
    Unavailable,
    Shutdown,
    Failed {
        position: Position,
        error: String,
    },
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

    /// Replaces the batching, leadership and retry knobs.
    pub fn with_config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The knobs in use.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The shared progress registry.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Lag, state and failure of every projection (see [`status::status`]).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        status::status(&self.pool, self.store.as_ref()).await
    }

    /// Clears the FAILED state of `name` so that a runner (in any process)
    /// retries from its checkpoint. Returns whether it was FAILED.
    pub async fn reset_failed(&self, name: &str) -> Result<bool, ProjectionError> {
        status::reset_failed(&self.pool, name).await
    }

    async fn ensure_row(&self, projection: &dyn Projection) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, version) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection.name())
        .bind(projection.version())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The committed checkpoint of `name` (creating its row at 0 if new).
    pub async fn checkpoint(
        &self,
        projection: &dyn Projection,
    ) -> Result<Position, ProjectionError> {
        self.ensure_row(projection).await?;
        let pos: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(projection.name())
                .fetch_one(&self.pool)
                .await?;
        Ok(to_position(pos))
    }

    /// Makes this caller the leader of `projection`'s checkpoint row: bumps
    /// its generation (fencing out every earlier leader), sets it RUNNING
    /// (even if it was FAILED) and returns the new generation with the
    /// checkpoint. [`ProjectorRuntime::run`] calls this only while holding
    /// the advisory lock; tools and tests may call it directly.
    pub async fn take_over(
        &self,
        projection: &dyn Projection,
    ) -> Result<(Generation, Position), ProjectionError> {
        self.ensure_row(projection).await?;
        self.take_over_row(projection.name(), true)
            .await?
            .ok_or_else(|| ProjectionError::Fenced {
                name: projection.name().to_owned(),
            })
    }

    /// Bumps the generation unless the row is FAILED and `resume_failed` is
    /// false (then `None`).
    async fn take_over_row(
        &self,
        name: &str,
        resume_failed: bool,
    ) -> Result<Option<(Generation, Position)>, ProjectionError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE projection_checkpoints SET generation = generation + 1, \
             state = 'RUNNING', updated_at = now() \
             WHERE name = $1 AND (state <> 'FAILED' OR $2) RETURNING generation, position",
        )
        .bind(name)
        .bind(resume_failed)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(g, p)| (Generation(g), to_position(p))))
    }

    /// Runs `projection` until `shutdown` turns true (or its sender is
    /// dropped): standing by while another runner leads it, leading when it
    /// can, waiting for a reset while it is FAILED. Returns `Ok` on
    /// shutdown, [`ProjectionError::Failed`] if it was FAILED at shutdown,
    /// and an error if its checkpoint row cannot be created at start.
    pub async fn run(
        &self,
        projection: Arc<dyn Projection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        self.progress
            .set_runner(name, RunnerStatus::new(ProjectionState::Standby));
        let position = self.checkpoint(projection.as_ref()).await?;
        self.progress.advance(name, position);
        let state: String =
            sqlx::query_scalar("SELECT state FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        // Started on a FAILED projection: a restart, which retries it.
        let resume_failed = ProjectionState::parse(&state) == ProjectionState::Failed;
        let mut lock = LockConnection::new((*self.pool.connect_options()).clone(), name);
        let result = self
            .run_terms(projection.as_ref(), &mut lock, &mut shutdown, resume_failed)
            .await;
        lock.close().await;
        self.progress
            .set_runner(name, RunnerStatus::new(ProjectionState::Stopped));
        tracing::info!(projection = name, "projection runner stopped");
        result
    }

    async fn run_terms(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        shutdown: &mut watch::Receiver<bool>,
        mut resume_failed: bool,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        loop {
            self.progress
                .set_runner(name, RunnerStatus::new(ProjectionState::Standby));
            if !self.stand_by(name, lock, shutdown).await {
                return Ok(());
            }
            let (generation, position) = match self.take_over_row(name, resume_failed).await {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    // FAILED before this runner led it: leave it to a reset.
                    lock.release().await;
                    self.wait_for_reset(name, None, shutdown).await?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not take over; standing by");
                    lock.release().await;
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            resume_failed = false;
            tracing::info!(projection = name, %generation, %position, "projection leading");
            match self
                .lead(projection, lock, generation, position, shutdown)
                .await
            {
                Term::Stopped => {
                    if let Err(e) = self.mark(name, generation, "STOPPED", None).await {
                        tracing::warn!(projection = name, error = %e, "could not mark STOPPED");
                    }
                    return Ok(());
                }
                Term::SteppedDown => {
                    lock.release().await;
                    tracing::info!(projection = name, %generation, "projection standing by");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok(());
                    }
                }
                Term::Failed { position, error } => {
                    tracing::error!(projection = name, %position, error = %error, "projection FAILED");
                    if let Err(e) = self
                        .mark(name, generation, "FAILED", Some((position, &error)))
                        .await
                    {
                        tracing::warn!(projection = name, error = %e, "could not mark FAILED");
                    }
                    lock.release().await;
                    self.wait_for_reset(name, Some((position, error)), shutdown)
                        .await?;
                }
            }
        }
    }

    /// Tries the lock until it is taken (`true`) or shutdown (`false`),
    /// following the leader's checkpoint meanwhile.
    async fn stand_by(
        &self,
        name: &str,
        lock: &mut LockConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut next_attempt = Instant::now();
        loop {
            if stopping(shutdown) {
                return false;
            }
            if Instant::now() >= next_attempt {
                next_attempt = Instant::now() + self.config.lock_retry;
                match lock.try_acquire(name).await {
                    Ok((true, _)) => return true,
                    Ok((false, position)) => self.follow(name, position),
                    Err(e) => {
                        tracing::warn!(projection = name, error = %e, "could not try the leadership lock");
                    }
                }
            } else if let Ok(position) = lock.follow(name).await {
                self.follow(name, position);
            }
            if pause(self.config.follow_interval, shutdown).await {
                return false;
            }
        }
    }

    fn follow(&self, name: &str, position: Option<i64>) {
        if let Some(p) = position {
            self.progress.advance(name, to_position(p));
        }
    }

    /// While FAILED: publishes the failure and waits until the row is no
    /// longer FAILED (reset, or another runner was restarted and leads it).
    /// On shutdown returns [`ProjectionError::Failed`].
    async fn wait_for_reset(
        &self,
        name: &str,
        mut failure: Option<(Position, String)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        loop {
            let row: Result<Option<FailureRow>, sqlx::Error> = sqlx::query_as(
                "SELECT state, failed_position, last_error FROM projection_checkpoints \
                     WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&self.pool)
            .await;
            match row {
                Ok(Some((state, position, error)))
                    if ProjectionState::parse(&state) == ProjectionState::Failed =>
                {
                    if let (Some(p), Some(e)) = (position, error) {
                        failure = Some((to_position(p), e));
                    }
                }
                Ok(_) => {
                    tracing::info!(
                        projection = name,
                        "projection no longer FAILED; standing by"
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not read the checkpoint")
                }
            }
            self.progress.set_runner(
                name,
                RunnerStatus {
                    failed_position: failure.as_ref().map(|f| f.0),
                    last_error: failure.as_ref().map(|f| f.1.clone()),
                    ..RunnerStatus::new(ProjectionState::Failed)
                },
            );
            if pause(self.config.lock_retry, shutdown).await {
                let (position, error) =
                    failure.unwrap_or((Position::START, "unknown error".to_owned()));
                return Err(ProjectionError::Failed {
                    name: name.to_owned(),
                    position,
                    error,
                });
            }
        }
    }

    /// Leads `projection` from `position` under `generation`.
    async fn lead(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        generation: Generation,
        mut position: Position,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Term {
        let name = projection.name();
        self.progress.advance(name, position);
        self.progress.set_runner(
            name,
            RunnerStatus {
                generation: Some(generation.0),
                ..RunnerStatus::new(ProjectionState::Running)
            },
        );
        let mut events = match self.store.subscribe_all(position).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(projection = name, error = %e, "could not subscribe");
                return Term::SteppedDown;
            }
        };
        let lock_retry = self.config.lock_retry;
        let mut check = tokio::time::interval_at(Instant::now() + lock_retry, lock_retry);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Term::Stopped,
                _ = check.tick() => None,
                next = events.next() => Some(next),
            };
            let Some(next) = next else {
                if !lock.still_held().await {
                    tracing::warn!(projection = name, "lost the leadership lock");
                    return Term::SteppedDown;
                }
                continue;
            };
            let mut batch = match next {
                Some(Ok(first)) => vec![first],
                Some(Err(e)) => {
                    tracing::warn!(projection = name, error = %e, "subscription failed");
                    return Term::SteppedDown;
                }
                None => {
                    tracing::warn!(projection = name, "subscription ended");
                    return Term::SteppedDown;
                }
            };
            let deadline = Instant::now() + self.config.max_wait;
            while batch.len() < self.config.max_batch {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(Some(Ok(e))) => batch.push(e),
                    Ok(Some(Err(e))) => {
                        tracing::warn!(projection = name, error = %e, "subscription failed");
                        return Term::SteppedDown;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            match self
                .commit_with_retry(projection, generation, position, &batch, shutdown)
                .await
            {
                Ok(p) => {
                    position = p;
                    self.progress.advance(name, position);
                }
                Err(Halt::Fenced) => {
                    tracing::warn!(projection = name, %generation, "fenced by a newer leader");
                    return Term::SteppedDown;
                }
                Err(Halt::Unavailable) => return Term::SteppedDown,
                Err(Halt::Shutdown) => return Term::Stopped,
                Err(Halt::Failed { position, error }) => return Term::Failed { position, error },
            }
        }
    }

    /// Commits `batch` whole; if that fails, commits its events one by one,
    /// each with retries, so a failure is pinned to one event and the
    /// events before it still commit.
    async fn commit_with_retry(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        batch: &[RecordedEvent],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Position, Halt> {
        if batch.len() > 1 {
            match self.commit_batch(projection, generation, from, batch).await {
                Ok(p) => return Ok(p),
                Err(ProjectionError::Fenced { .. }) => return Err(Halt::Fenced),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(projection = projection.name(), error = %e, "database unavailable; standing by");
                    return Err(Halt::Unavailable);
                }
                Err(e) => {
                    tracing::warn!(projection = projection.name(), error = %e, events = batch.len(), "batch failed; folding its events one by one");
                }
            }
        }
        let mut at = from;
        for event in batch {
            at = self
                .commit_event_with_retry(projection, generation, at, event, shutdown)
                .await?;
        }
        Ok(at)
    }

    async fn commit_event_with_retry(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        event: &RecordedEvent,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Position, Halt> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .commit_batch(projection, generation, from, std::slice::from_ref(event))
                .await
            {
                Ok(p) => return Ok(p),
                Err(ProjectionError::Fenced { .. }) => return Err(Halt::Fenced),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(projection = projection.name(), error = %e, "database unavailable; standing by");
                    return Err(Halt::Unavailable);
                }
                Err(e) if attempt < self.config.max_attempts.max(1) => {
                    let delay = self.config.backoff(attempt);
                    tracing::warn!(projection = projection.name(), position = %event.position, error = %e, attempt, ?delay, "event failed; retrying");
                    if pause(delay, shutdown).await {
                        return Err(Halt::Shutdown);
                    }
                }
                Err(e) => {
                    return Err(Halt::Failed {
                        position: event.position,
                        error: e.to_string(),
                    })
                }
            }
        }
    }

    /// Folds one batch and moves the checkpoint from `from`, atomically,
    /// provided the checkpoint row is still at `from` and at `generation`;
    /// otherwise nothing is applied and the result is
    /// [`ProjectionError::Fenced`].
    pub async fn commit_batch(
        &self,
        projection: &dyn Projection,
        generation: Generation,
        from: Position,
        batch: &[RecordedEvent],
    ) -> Result<Position, ProjectionError> {
        let Some(last) = batch.last() else {
            return Ok(from);
        };
        let mut tx = self.pool.begin().await?;
        // The fencing check goes first: it locks the row, so a takeover
        // waits for this commit, and a stale leader folds nothing.
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET position = $4, state = 'RUNNING', \
             last_error = NULL, failed_position = NULL, updated_at = now() \
             WHERE name = $1 AND position = $2 AND generation = $3",
        )
        .bind(projection.name())
        .bind(to_i64(from))
        .bind(generation.0)
        .bind(to_i64(last.position))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        match AssertUnwindSafe(projection.apply(&mut tx, batch))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied?,
            Err(panic) => return Err(ProjectionError::Panicked(panic_message(panic.as_ref()))),
        }
        tx.commit().await?;
        Ok(last.position)
    }

    /// Sets the row's state, if this runner's generation still owns it.
    async fn mark(
        &self,
        name: &str,
        generation: Generation,
        state: &str,
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
        .bind(state)
        .bind(failure.map(|f| to_i64(f.0)))
        .bind(failure.map(|f| f.1))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Whether shutdown was asked for (or can no longer be: sender dropped).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Sleeps `d`; returns `true` at once if shutdown is asked for meanwhile.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

pub(crate) fn to_position(p: i64) -> Position {
    Position(u64::try_from(p).unwrap_or(0))
}

pub(crate) fn to_i64(p: Position) -> i64 {
    i64::try_from(p.0).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = RuntimeConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..RuntimeConfig::default()
        };
        let delays: Vec<_> = (1..=5).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        assert_eq!(c.backoff(100), Duration::from_millis(50));
    }
}
