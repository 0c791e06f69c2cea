//! The projector runtime: elect a leader, subscribe from the checkpoint,
//! batch, fold, and commit rows and checkpoint together; rebuild a new
//! version beside the live one and switch it in without downtime.
//!
//! A runner of one projection ([`ProjectorRuntime::run`]) first finds the
//! build its code version should lead ([`crate::builds`]): the live build
//! if it has the code's version, else a rebuild of that version. It then
//! moves between these states (published per process in [`Progress`]; the
//! checkpoint row's `state` reflects the leader of that build):
//!
//! - **STANDBY**: it tries the build's advisory lock every
//!   [`RuntimeConfig::lock_retry`] on a dedicated connection (see
//!   [`marketplace_consumers::leader`]), and meanwhile follows the live
//!   build's committed checkpoint into [`Progress`] every
//!   [`RuntimeConfig::follow_interval`], so read-your-writes also works in
//!   a process that is not leading. A runner whose code is older than the
//!   live build stays here (it never leads a build of another version).
//! - **RUNNING**: with the lock, it takes over the checkpoint row (a new
//!   `generation` from the `projection_generations` sequence), subscribes
//!   from the stored checkpoint, gathers a batch until
//!   [`RuntimeConfig::max_batch`] events or [`RuntimeConfig::max_wait`]
//!   after its first event ([`RuntimeConfig::busy_wait`] while the log is
//!   busy), and commits it. Every `leader_check` it checks that
//!   its lock connection is still alive and that its build still has its
//!   generation and is not retired; if not, or if the log or the database
//!   becomes unreachable ([`ProjectionError::is_unavailable`]), it steps down
//!   to STANDBY (and tries again after `lock_retry`).
//! - **FAILED**: a batch that fails is retried event by event; an event that
//!   still fails after [`RuntimeConfig::max_attempts`] attempts (exponential
//!   backoff from [`RuntimeConfig::retry`], the shared
//!   jittered policy) marks the row `FAILED` with
//!   `last_error` and `failed_position`, and the runner releases the lock
//!   and waits. The checkpoint stays just below the failed event: nothing is
//!   ever skipped. Other projections keep running. It resumes from the
//!   checkpoint after [`ProjectorRuntime::reset_failed`] (from any process),
//!   or when a runner is started on a projection that is already FAILED (a
//!   restart); a standby that was already waiting does not retry a failure
//!   by itself. A rebuild that fails never goes live: the old build keeps
//!   serving.
//! - **STOPPED**: on shutdown the leader marks its row `STOPPED` and releases
//!   the lock, so a standby elsewhere takes over at once.
//!
//! Exactly once comes from the single transaction: it first moves the
//! checkpoint (`UPDATE … WHERE position = $old AND generation = $mine AND
//! NOT retired`, which also locks the row and, through `RETURNING`, puts
//! the build's schema first on the transaction's `search_path`), then folds
//! the batch, then commits; either both take effect or neither, and a
//! restart resumes from the committed checkpoint. The fencing check makes a
//! stale leader's late commit fail ([`ProjectionError::Fenced`]): a new
//! leader has taken a newer generation, the position moved, or the build
//! was retired by a switch. A fenced runner rolls back and goes back to
//! STANDBY. A panicking handler counts as a failed attempt; its transaction
//! is rolled back.
//!
//! # Rebuilds without downtime
//!
//! A runner leading a build that is not live (its code `VERSION` is newer
//! than the live build's, or `marketplace projections rebuild`, see
//! [`ProjectorRuntime::rebuild`]):
//!
//! 1. **Bulk load.** It reads the log from its checkpoint (0 for a new
//!    build) in pages of [`RuntimeConfig::bulk_batch`] events (the next page
//!    is read while the current one commits) and folds each page in one
//!    transaction with the same fencing as above. The read models fold a
//!    batch in memory and write it with multi-row `UNNEST` statements; the
//!    build has no secondary indexes yet, and its transactions commit with
//!    `synchronous_commit = off` (a crash loses the last pages and their
//!    checkpoint together, never one without the other).
//! 2. **Indexes.** When a page comes back short (it reached the head), it
//!    creates the secondary indexes, fenced like a batch, and marks the
//!    build `indexed` (a takeover after this point does not bulk load).
//! 3. **Live batching.** It subscribes from its checkpoint and batches like
//!    a live projection. Meanwhile the live build keeps serving, projected
//!    by whichever runner leads it (its own leader, in this process for a
//!    forced rebuild, or in the processes still running the old code during
//!    a rolling deploy; with no such process it serves as it was), and
//!    [`Progress`] keeps following the live build, not this one.
//! 4. **Switch.** After each batch that did not fill up (it has caught up),
//!    and on idle ticks, it tries one transaction (`lock_timeout` 500 ms,
//!    so it gives way to queries instead of queueing them; it is retried
//!    later): lock the live build's row (`FOR UPDATE`: the live leader's
//!    next commit waits, and one in flight finishes first), lock its own row
//!    (fenced by generation and position), and if the live build is ahead
//!    (by at most `bulk_batch` events, else try later) fold the missing
//!    events into the new build inside this transaction; then mark the old
//!    build `retired` and the new one `live`, and point the views at the new
//!    schema (`DROP VIEW` + `CREATE VIEW`, which takes each view's ACCESS
//!    EXCLUSIVE lock: a query sees the old build or the new one, whole).
//! 5. **Drop.** The old schema and its row are dropped afterwards, in their
//!    own transaction (it waits for queries still reading the old tables).
//!
//! **Why no event is lost or applied twice at the switch.** Each build has
//! its own tables and its own checkpoint row, and each build is folded
//! exactly once by the transaction above; the switch does not move any
//! event between builds, it only changes which build the views show. The
//! new build's leader simply keeps going after the switch from its own
//! checkpoint (the events folded inside the switch are above it and are
//! skipped when the subscription delivers them), so nothing is missed; the
//! old build can fold nothing after the switch, because its row is retired
//! in the same transaction and every commit is fenced on `NOT retired` (its
//! leader finds out at its next commit or its next tick and stands by). And
//! what the queries see never goes back: under the live row's lock the new
//! build is brought to at least the live build's position before the views
//! move, so the served position only grows, and so does [`Progress`]
//! (which then follows the new build).
//!
//! # Layout
//!
//! - this module: [`ProjectorRuntime`], its knobs ([`RuntimeConfig`]) and
//!   errors, and a runner's lifecycle ([`ProjectorRuntime::run`]: find the
//!   build, stand by while following the live checkpoint, take over, lead,
//!   mark the row STOPPED or FAILED, wait for a reset);
//! - `lead`: one leader's term, the live batch loop;
//! - `commit`: the fenced commit of a batch, and its retries;
//! - `rebuild`: bulk load, indexes and the switch, and
//!   [`ProjectorRuntime::rebuild`].
//!
//! Every statement on the checkpoint rows is in [`crate::builds`].

mod commit;
mod lead;
mod rebuild;

pub use rebuild::RebuildReport;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use marketplace_consumers::{DecodeFailure, Envelope};
use marketplace_domain::AggregateKind;
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;

use marketplace_consumers::leader::{LockConnection, PROJECTION_LOCKS};
use marketplace_consumers::retry::{pause, stopping, Backoff};

use crate::builds::{self, Build, Resolved, Table};
use crate::progress::{Progress, ProjectionState, RebuildProgress, RunnerStatus};
use crate::status::{self, ProjectionStatus};
use crate::verify::{self, ProjectionCheck};
use lead::{Mode, Term};

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
    /// The log contradicts itself (e.g. an event about an order that was
    /// never placed); the projection fails rather than skip it.
    #[error("inconsistent log: {0}")]
    Inconsistent(String),
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
    /// A projection name that cannot name a schema (see
    /// [`builds::check_name`]).
    #[error("invalid projection name {0:?}: use a-z, 0-9 and _, at most 40 bytes")]
    InvalidName(String),
    /// The live build is newer than this code's version.
    #[error("projection {name}: the live build is version {live}, newer than this code's {code}")]
    Outdated {
        /// The projection.
        name: String,
        /// The live build's version.
        live: i32,
        /// This code's version.
        code: i32,
    },
}

impl From<DecodeFailure> for ProjectionError {
    fn from(f: DecodeFailure) -> Self {
        ProjectionError::Decode {
            event_type: f.event_type,
            position: f.position,
            reason: f.source.to_string(),
        }
    }
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
    /// Bumped when its tables or logic change: the runtime then builds the
    /// new version beside the live one and switches it in when it has
    /// caught up (see the module documentation).
    fn version(&self) -> i32;
    /// The tables of this version, created in each build's schema (none by
    /// default: a projection may write only to tables of its own).
    fn tables(&self) -> &'static [Table] {
        &[]
    }
    /// Whether it folds events of `aggregate`. An event of such an
    /// aggregate that cannot be decoded fails the projection at that event;
    /// one of any other aggregate (or of a stream no aggregate owns) is
    /// passed over, never handed to [`Projection::apply`].
    fn reads(&self, aggregate: AggregateKind) -> bool;
    /// Folds a batch of decoded events, in log order, into its tables
    /// inside `tx`, naming them unqualified: the transaction's
    /// `search_path` starts with the schema of the build being folded. It
    /// matches [`marketplace_domain::Event`] exhaustively, naming the events
    /// it ignores.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError>;
}

/// Decodes `batch` for `projection` (see [`Projection::reads`]).
pub fn decode_for<R: std::borrow::Borrow<RecordedEvent>>(
    projection: &dyn Projection,
    batch: &[R],
) -> Result<Vec<Envelope>, ProjectionError> {
    Ok(marketplace_consumers::decode_for(batch, |a| {
        projection.reads(a)
    })?)
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
    /// How long to keep gathering a batch after its first event when the
    /// log was quiet before it.
    pub max_wait: Duration,
    /// How long to keep gathering while the log is busy (the first event
    /// was waiting, or came within this long): under load one transaction
    /// folds many commits. See [`marketplace_consumers::Batching`].
    pub busy_wait: Duration,
    /// How often a standby tries the leadership lock.
    pub lock_retry: Duration,
    /// How often an idle leader checks that its lock connection is alive
    /// and its build still has its generation. A stale leader's commit is
    /// refused by the fencing check whatever this is; the check only makes
    /// an idle leader step down sooner, so it runs rarely.
    pub leader_check: Duration,
    /// How often a standby copies the leader's checkpoint into [`Progress`].
    pub follow_interval: Duration,
    /// Attempts at one event before the projection is marked FAILED (at
    /// least 1).
    pub max_attempts: u32,
    /// Pauses between attempts at a failing event (the shared policy, with
    /// jitter).
    pub retry: Backoff,
    /// Events per transaction while a rebuild loads in bulk (and per page
    /// of a `verify` scratch build); also the largest gap a switch closes
    /// by itself.
    pub bulk_batch: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_wait: Duration::from_millis(5),
            busy_wait: Duration::from_millis(25),
            lock_retry: Duration::from_millis(500),
            leader_check: Duration::from_secs(5),
            follow_interval: Duration::from_millis(50),
            max_attempts: 5,
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            bulk_batch: 10_000,
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

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    /// Replaces the batching, leadership and retry knobs.
    pub fn with_config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }
    /// The knobs in use.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
    /// The read models' database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
    /// The shared progress registry.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
    /// Lag, state, failure and rebuild of every projection (see
    /// [`status::status`]).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        status::status(&self.pool, self.store.as_ref()).await
    }
    /// Clears the FAILED state of `name`'s builds so that a runner (in any
    /// process) retries from its checkpoint. Returns whether one was FAILED.
    pub async fn reset_failed(&self, name: &str) -> Result<bool, ProjectionError> {
        status::reset_failed(&self.pool, name).await
    }
    /// Rebuilds every projection in `projections` into scratch schemas up to
    /// its live checkpoint and compares a checksum of every table with the
    /// live build's (see [`verify::verify`]). `on_progress(name, position,
    /// target)` is called after each page of a scratch build.
    pub async fn verify(
        &self,
        projections: &[Arc<dyn Projection>],
        on_progress: &(dyn Fn(&str, Position, Position) + Send + Sync),
    ) -> Result<Vec<ProjectionCheck>, ProjectionError> {
        verify::verify(
            &self.pool,
            self.store.as_ref(),
            projections,
            self.config.bulk_batch,
            on_progress,
        )
        .await
    }
    /// The build `projection`'s runners lead at its code version (created
    /// if needed, see [`builds`]).
    async fn target(&self, projection: &dyn Projection) -> Result<Build, ProjectionError> {
        match builds::resolve(&self.pool, projection).await? {
            Resolved::Lead(build) => Ok(build),
            Resolved::Outdated { live } => Err(ProjectionError::Outdated {
                name: projection.name().to_owned(),
                live,
                code: projection.version(),
            }),
        }
    }
    /// The committed checkpoint of the build `projection` leads at its code
    /// version (creating the build at 0 if there is none).
    pub async fn checkpoint(
        &self,
        projection: &dyn Projection,
    ) -> Result<Position, ProjectionError> {
        Ok(self.target(projection).await?.position)
    }
    /// Makes this caller the leader of the build `projection` leads at its
    /// code version (see [`builds`]): takes a new generation for its row
    /// (fencing out every earlier leader), sets it RUNNING (even if it was
    /// FAILED) and returns the new generation with the checkpoint.
    /// [`ProjectorRuntime::run`] calls this only while holding the build's
    /// advisory lock; tools and tests may call it directly.
    pub async fn take_over(
        &self,
        projection: &dyn Projection,
    ) -> Result<(Generation, Position), ProjectionError> {
        let build = self.target(projection).await?;
        builds::take_over(&self.pool, &build.schema, true)
            .await?
            .ok_or_else(|| ProjectionError::Fenced {
                name: projection.name().to_owned(),
            })
    }
    /// Runs `projection` until `shutdown` turns true (or its sender is
    /// dropped): standing by while another runner leads its build, leading
    /// when it can (rebuilding its version first if the live build is
    /// older, then switching it in), waiting for a reset while it is FAILED.
    /// Returns `Ok` on shutdown, [`ProjectionError::Failed`] if it was
    /// FAILED at shutdown, and an error if its build cannot be found or
    /// created at start.
    pub async fn run(
        &self,
        projection: Arc<dyn Projection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        builds::check_name(name)?;
        self.progress
            .set_runner(name, RunnerStatus::new(ProjectionState::Standby));
        let first = builds::resolve(&self.pool, projection.as_ref()).await?;
        if let Some(position) = builds::live_position(&self.pool, name).await? {
            self.progress.advance(name, position);
        }
        // Started on a FAILED build: a restart, which retries it.
        let resume_failed =
            matches!(&first, Resolved::Lead(b) if b.state == ProjectionState::Failed);
        let mut lock = LockConnection::new(
            (*self.pool.connect_options()).clone(),
            PROJECTION_LOCKS,
            name,
        );
        let result = self
            .run_terms(
                projection.as_ref(),
                Some(first),
                &mut lock,
                &mut shutdown,
                resume_failed,
            )
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
        mut resolved: Option<Resolved>,
        lock: &mut LockConnection,
        shutdown: &mut watch::Receiver<bool>,
        mut resume_failed: bool,
    ) -> Result<(), ProjectionError> {
        let name = projection.name();
        let mut outdated_noted = false;
        loop {
            if stopping(shutdown) {
                return Ok(());
            }
            let next = match resolved.take() {
                Some(r) => Ok(r),
                None => builds::resolve(&self.pool, projection).await,
            };
            let build = match next {
                Ok(Resolved::Lead(build)) => build,
                Ok(Resolved::Outdated { live }) => {
                    if !outdated_noted {
                        tracing::warn!(
                            projection = name,
                            live,
                            code = projection.version(),
                            "the live build is newer than this code: standing by"
                        );
                        outdated_noted = true;
                    }
                    lock.release().await;
                    self.progress
                        .set_runner(name, RunnerStatus::new(ProjectionState::Standby));
                    // Follow the live build; look again after `lock_retry`.
                    let until = Instant::now() + self.config.lock_retry;
                    loop {
                        if let Ok(Some(position)) = builds::live_position(&self.pool, name).await {
                            self.progress.advance(name, position);
                        }
                        if pause(self.config.follow_interval, shutdown).await {
                            return Ok(());
                        }
                        if Instant::now() >= until {
                            break;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not find its build; standing by");
                    lock.release().await;
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            outdated_noted = false;
            lock.target(&build.schema).await;
            self.progress
                .set_runner(name, RunnerStatus::new(ProjectionState::Standby));
            if !self.stand_by(name, lock, shutdown).await {
                return Ok(());
            }
            let (generation, position) = match builds::take_over(
                &self.pool,
                &build.schema,
                resume_failed,
            )
            .await
            {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    lock.release().await;
                    match builds::build(&self.pool, &build.schema).await {
                        // FAILED before this runner led it: leave it to a reset.
                        Ok(Some(b)) if b.state == ProjectionState::Failed => {
                            self.wait_for_reset(name, &build.schema, None, shutdown)
                                .await?;
                        }
                        // Retired by a switch (or gone): find the build again.
                        _ => {}
                    }
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
            // As it stands now that this runner leads it.
            let build = match builds::build(&self.pool, &build.schema).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    lock.release().await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not read its build; standing by");
                    lock.release().await;
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            tracing::info!(
                projection = name,
                %generation,
                %position,
                schema = %build.schema,
                live = build.live,
                "projection leading"
            );
            match self
                .lead(
                    projection,
                    lock,
                    &build,
                    generation,
                    position,
                    shutdown,
                    Mode::Serve,
                )
                .await
            {
                Term::Stopped => {
                    if let Err(e) =
                        builds::mark(&self.pool, name, generation, ProjectionState::Stopped, None)
                            .await
                    {
                        tracing::warn!(projection = name, error = %e, "could not mark STOPPED");
                    }
                    return Ok(());
                }
                Term::SteppedDown | Term::Switched { .. } => {
                    lock.release().await;
                    tracing::info!(projection = name, %generation, "projection standing by");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok(());
                    }
                }
                Term::Failed { position, error } => {
                    tracing::error!(projection = name, %position, error = %error, "projection FAILED");
                    let failure = Some((position, error.as_str()));
                    if let Err(e) = builds::mark(
                        &self.pool,
                        name,
                        generation,
                        ProjectionState::Failed,
                        failure,
                    )
                    .await
                    {
                        tracing::warn!(projection = name, error = %e, "could not mark FAILED");
                    }
                    lock.release().await;
                    self.wait_for_reset(name, &build.schema, Some((position, error)), shutdown)
                        .await?;
                }
            }
        }
    }
    /// Tries the lock until it is taken (`true`) or shutdown (`false`),
    /// following the live build's checkpoint meanwhile.
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
                match lock
                    .try_acquire_following(builds::LIVE_POSITION_SQL, name)
                    .await
                {
                    Ok((true, _)) => return true,
                    Ok((false, position)) => self.follow(name, position),
                    Err(e) => {
                        tracing::warn!(projection = name, error = %e, "could not try the leadership lock");
                    }
                }
            } else if let Ok(position) = lock.read_position(builds::LIVE_POSITION_SQL, name).await {
                self.follow(name, position);
            }
            if pause(self.config.follow_interval, shutdown).await {
                return false;
            }
        }
    }
    fn follow(&self, name: &str, position: Option<i64>) {
        if let Some(p) = position {
            self.progress.advance(name, builds::to_position(p));
        }
    }
    /// While this runner builds a version that is not live: copies the live
    /// build's checkpoint into [`Progress`] every `follow_interval`.
    fn follow_live(&self, name: &str) -> AbortOnDrop {
        let (runtime, name) = (self.clone(), name.to_owned());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                if let Ok(Some(p)) = builds::live_position(&runtime.pool, &name).await {
                    runtime.progress.advance(&name, p);
                }
                tokio::time::sleep(runtime.config.follow_interval).await;
            }
        }))
    }
    /// Publishes how far the (not live) build has come.
    async fn publish_rebuild(&self, name: &str, build: &Build, position: Position, bulk: bool) {
        let head = self.store.head().await.unwrap_or(position).max(position);
        let rebuild = RebuildProgress {
            version: build.version,
            schema: build.schema.clone(),
            position,
            head,
            bulk,
        };
        self.progress
            .update_runner(name, |r| r.rebuild = Some(rebuild));
    }
    /// While FAILED: publishes the failure and waits until the build's row
    /// is no longer FAILED (reset, another runner was restarted and leads
    /// it, or it was retired). On shutdown returns
    /// [`ProjectionError::Failed`].
    async fn wait_for_reset(
        &self,
        name: &str,
        schema: &str,
        mut failure: Option<(Position, String)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        loop {
            match builds::failure_of(&self.pool, schema).await {
                Ok(Some(row)) if row.state == ProjectionState::Failed => {
                    if let (Some(p), Some(e)) = (row.failed_position, row.last_error) {
                        failure = Some((p, e));
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
}
