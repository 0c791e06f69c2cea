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
//!   [`crate::leader`]), and meanwhile follows the live build's committed
//!   checkpoint into [`Progress`] every [`RuntimeConfig::follow_interval`],
//!   so read-your-writes also works in a process that is not leading. A
//!   runner whose code is older than the live build stays here (it never
//!   leads a build of another version).
//! - **RUNNING**: with the lock, it takes over the checkpoint row (a new
//!   `generation` from the `projection_generations` sequence), subscribes
//!   from the stored checkpoint, gathers a batch until
//!   [`RuntimeConfig::max_batch`] events or [`RuntimeConfig::max_wait`]
//!   after its first event, and commits it. Every `leader_check` it checks that
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

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use marketplace_consumers::{DecodeFailure, Envelope};
use marketplace_domain::AggregateKind;
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;

use marketplace_consumers::leader::{LockConnection, PROJECTION_LOCKS};
use marketplace_consumers::retry::{pause, stopping, Backoff};
use marketplace_consumers::subscription::{Batching, Next, Subscription};

use crate::builds::{self, Build, Resolved, Table};
use crate::progress::{Progress, ProjectionState, RebuildProgress, RunnerStatus};
use crate::status::{self, ProjectionStatus};
use crate::verify::{self, ProjectionCheck};

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
pub fn decode_for(
    projection: &dyn Projection,
    batch: &[RecordedEvent],
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
    /// How long to keep gathering a batch after its first event.
    pub max_wait: Duration,
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

/// How a leader's term ended.
enum Term {
    /// Shutdown was asked for.
    Stopped,
    /// Fenced, lost its lock, or the log could not be read: stand by again.
    SteppedDown,
    /// The handler kept failing on the event at `position`.
    Failed { position: Position, error: String },
    /// [`Mode::UntilLive`]: the build is live and caught up.
    Switched {
        replaced: Option<String>,
        position: Position,
    },
}

/// How long a leader leads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Until shutdown (a rebuild switches in, then goes on live).
    Serve,
    /// Until its build is live and caught up (`projections rebuild`).
    UntilLive,
}

/// A switch that happened.
struct Switched {
    /// The new build's checkpoint after the switch.
    position: Position,
    /// The schema of the build it replaced.
    replaced: Option<String>,
}

/// What [`ProjectorRuntime::rebuild`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// The projection.
    pub name: String,
    /// The version built.
    pub version: i32,
    /// The new build's schema.
    pub schema: String,
    /// Where the build stood when this rebuild started (0 unless resumed).
    pub from: Position,
    /// Where it stood at the end.
    pub position: Position,
    /// Whether it is live now (`false`: interrupted; it stays pending and a
    /// later rebuild resumes it).
    pub switched: bool,
    /// The build it replaced.
    pub replaced: Option<String>,
    /// Retired schemas dropped afterwards.
    pub dropped: Vec<String>,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether `e` is Postgres' `lock_not_available` (a `lock_timeout`).
fn is_lock_timeout(e: &ProjectionError) -> bool {
    match e {
        ProjectionError::Sql(sqlx::Error::Database(db)) => db.code().as_deref() == Some("55P03"),
        _ => false,
    }
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

    /// Rebuilds `projection` at its code version into a new build while the
    /// live one keeps serving, and switches it in once it has caught up:
    /// `marketplace projections rebuild NAME`. Resumes a pending rebuild of
    /// that version if there is one (else a fresh schema, see
    /// [`builds::start_rebuild`]); if another runner leads that rebuild, it
    /// follows it until it is live. Progress is published in [`Progress`]
    /// ([`RunnerStatus::rebuild`]). Returns when the build is live (and the
    /// one it replaced dropped, if that could be done within a few
    /// seconds), or at shutdown (`switched: false`: the build stays pending).
    /// After it returns, the runners of the live build in `serve` processes
    /// find the new build and take it over.
    pub async fn rebuild(
        &self,
        projection: Arc<dyn Projection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RebuildReport, ProjectionError> {
        let name = projection.name();
        let build = builds::start_rebuild(&self.pool, projection.as_ref()).await?;
        tracing::info!(projection = name, schema = %build.schema, from = %build.position, "rebuilding");
        let mut lock = LockConnection::new(
            (*self.pool.connect_options()).clone(),
            PROJECTION_LOCKS,
            &build.schema,
        );
        let result = self
            .rebuild_terms(projection.as_ref(), &build, &mut lock, &mut shutdown)
            .await;
        lock.close().await;
        self.progress
            .set_runner(name, RunnerStatus::new(ProjectionState::Stopped));
        let (switched, replaced, position) = result?;
        let mut dropped = Vec::new();
        if switched {
            for attempt in 1..=5u32 {
                match builds::drop_retired(&self.pool, Some(name)).await {
                    Ok(d) => {
                        dropped = d;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(projection = name, error = %e, attempt, "could not drop the old build yet");
                        if pause(self.config.retry.delay(attempt), &mut shutdown).await {
                            break;
                        }
                    }
                }
            }
        }
        Ok(RebuildReport {
            name: name.to_owned(),
            version: build.version,
            schema: build.schema,
            from: build.position,
            position,
            switched,
            replaced,
            dropped,
        })
    }

    /// Leads (or follows) the rebuild in `target` until it is live:
    /// (switched, replaced schema, position).
    async fn rebuild_terms(
        &self,
        projection: &dyn Projection,
        target: &Build,
        lock: &mut LockConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(bool, Option<String>, Position), ProjectionError> {
        let name = projection.name();
        let mut position = target.position;
        loop {
            if stopping(shutdown) {
                return Ok((false, None, position));
            }
            let build = match builds::build(&self.pool, &target.schema).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(ProjectionError::Fenced {
                        name: name.to_owned(),
                    })
                }
                Err(e) => {
                    let e = ProjectionError::from(e);
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    tracing::warn!(projection = name, error = %e, "could not read the rebuild");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                    continue;
                }
            };
            position = build.position;
            if build.live && !target.live {
                // Another runner switched it in.
                return Ok((true, None, position));
            }
            match lock
                .try_acquire_following(builds::LIVE_POSITION_SQL, name)
                .await
            {
                Ok((true, _)) => {}
                Ok((false, _)) => {
                    // Another runner leads this rebuild: follow it.
                    self.publish_rebuild(name, &build, build.position, !build.indexed)
                        .await;
                    if pause(
                        self.config.follow_interval.max(Duration::from_millis(100)),
                        shutdown,
                    )
                    .await
                    {
                        return Ok((false, None, position));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not try the rebuild's lock");
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                    continue;
                }
            }
            let Some((generation, from)) =
                builds::take_over(&self.pool, &build.schema, true).await?
            else {
                lock.release().await;
                continue;
            };
            let Some(build) = builds::build(&self.pool, &build.schema).await? else {
                lock.release().await;
                continue;
            };
            match self
                .lead(
                    projection,
                    lock,
                    &build,
                    generation,
                    from,
                    shutdown,
                    Mode::UntilLive,
                )
                .await
            {
                Term::Switched { replaced, position } => {
                    let _ =
                        builds::mark(&self.pool, name, generation, ProjectionState::Stopped, None)
                            .await;
                    lock.release().await;
                    return Ok((true, replaced, position));
                }
                Term::Stopped => {
                    let _ =
                        builds::mark(&self.pool, name, generation, ProjectionState::Stopped, None)
                            .await;
                    return Ok((false, None, self.progress_of(&build.schema).await));
                }
                Term::SteppedDown => {
                    lock.release().await;
                    if pause(self.config.lock_retry, shutdown).await {
                        return Ok((false, None, position));
                    }
                }
                Term::Failed { position, error } => {
                    let failure = Some((position, error.as_str()));
                    let _ = builds::mark(
                        &self.pool,
                        name,
                        generation,
                        ProjectionState::Failed,
                        failure,
                    )
                    .await;
                    lock.release().await;
                    return Err(ProjectionError::Failed {
                        name: name.to_owned(),
                        position,
                        error,
                    });
                }
            }
        }
    }

    /// The checkpoint of the build in `schema` (0 if unreadable).
    async fn progress_of(&self, schema: &str) -> Position {
        match builds::build(&self.pool, schema).await {
            Ok(Some(b)) => b.position,
            _ => Position::START,
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

    /// Leads `build` of `projection` from `position` under `generation`.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        build: &Build,
        generation: Generation,
        mut position: Position,
        shutdown: &mut watch::Receiver<bool>,
        mode: Mode,
    ) -> Term {
        let name = projection.name();
        let schema = build.schema.as_str();
        let mut live = build.live;
        self.progress.set_runner(
            name,
            RunnerStatus {
                generation: Some(generation.0),
                ..RunnerStatus::new(ProjectionState::Running)
            },
        );
        let mut follower = None;
        if live {
            self.progress.advance(name, position);
        } else {
            follower = Some(self.follow_live(name));
            self.publish_rebuild(name, build, position, !build.indexed)
                .await;
        }
        if !build.indexed {
            if let Err(term) = self
                .bulk_load(projection, lock, build, generation, &mut position, shutdown)
                .await
            {
                return term;
            }
            match self
                .commit_indexes(projection, schema, generation, position)
                .await
            {
                Ok(()) => {
                    tracing::info!(projection = name, schema, %position, "bulk load done; indexes built")
                }
                Err(ProjectionError::Fenced { .. }) => return Term::SteppedDown,
                Err(e) if e.is_unavailable() => return Term::SteppedDown,
                Err(e) => {
                    return Term::Failed {
                        position: Position(position.0 + 1),
                        error: format!("could not build the indexes: {e}"),
                    }
                }
            }
            if live {
                self.progress.advance(name, position);
            } else {
                self.publish_rebuild(name, build, position, false).await;
            }
        }
        let mut events = Subscription::new(name, self.store.clone(), position, self.config.retry);
        let batching = Batching {
            max_events: self.config.max_batch,
            max_wait: self.config.max_wait,
        };
        // Whether the last batch left the subscription drained (caught up).
        let mut caught_up;
        // A rebuild fresh from its bulk load (or taken over) has caught up
        // as far as it knows: try to switch before waiting for events.
        let mut try_first = !live;
        loop {
            let next = if std::mem::take(&mut try_first) {
                Next::Idle
            } else {
                events
                    .next_batch(batching, Some(self.config.leader_check), shutdown)
                    .await
            };
            match next {
                Next::Stopped => return Term::Stopped,
                Next::Idle => {
                    if lock
                        .still_leading(builds::BUILD_LEADING_SQL, schema, generation.0)
                        .await
                        == Some(false)
                    {
                        tracing::warn!(projection = name, schema, "no longer leads this build");
                        return Term::SteppedDown;
                    }
                    // Idle: nothing came for a while.
                    caught_up = true;
                }
                Next::Batch(mut batch) => {
                    caught_up = batch.len() < self.config.max_batch;
                    // Events a switch already folded come round again.
                    batch.retain(|e| e.position > position);
                    if !batch.is_empty() {
                        match self
                            .commit_with_retry(projection, generation, position, &batch, shutdown)
                            .await
                        {
                            Ok(p) => position = p,
                            Err(Halt::Fenced) => {
                                tracing::warn!(projection = name, %generation, "fenced by a newer leader or a switch");
                                return Term::SteppedDown;
                            }
                            Err(Halt::Unavailable) => return Term::SteppedDown,
                            Err(Halt::Shutdown) => return Term::Stopped,
                            Err(Halt::Failed { position, error }) => {
                                return Term::Failed { position, error }
                            }
                        }
                        if live {
                            self.progress.advance(name, position);
                        } else {
                            self.publish_rebuild(name, build, position, false).await;
                        }
                    }
                }
            }
            if !caught_up {
                continue;
            }
            if live {
                if mode == Mode::UntilLive {
                    return Term::Switched {
                        replaced: None,
                        position,
                    };
                }
                continue;
            }
            match self.switch(projection, build, generation, position).await {
                Ok(Some(switched)) => {
                    live = true;
                    follower.take();
                    position = position.max(switched.position);
                    self.progress.advance(name, position);
                    self.progress.update_runner(name, |r| r.rebuild = None);
                    tracing::info!(
                        projection = name,
                        schema,
                        %position,
                        replaced = ?switched.replaced,
                        "switched the new build in"
                    );
                    if mode == Mode::UntilLive {
                        return Term::Switched {
                            replaced: switched.replaced,
                            position,
                        };
                    }
                    self.drop_retired_later(name);
                }
                Ok(None) => {}
                Err(ProjectionError::Fenced { .. }) => return Term::SteppedDown,
                Err(e) if e.is_unavailable() => return Term::SteppedDown,
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not switch the new build in yet")
                }
            }
        }
    }

    /// Bulk phase of a rebuild: pages of `bulk_batch` events from the
    /// checkpoint until a short page (the head). `Err` ends the term.
    async fn bulk_load(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        build: &Build,
        generation: Generation,
        position: &mut Position,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Term> {
        let name = projection.name();
        let size = self.config.bulk_batch.max(1);
        let mut last_check = Instant::now();
        let mut prefetched: Option<
            tokio::task::JoinHandle<Result<Vec<RecordedEvent>, StoreError>>,
        > = None;
        loop {
            if stopping(shutdown) {
                return Err(Term::Stopped);
            }
            if last_check.elapsed() >= self.config.lock_retry {
                last_check = Instant::now();
                if lock
                    .still_leading(builds::BUILD_LEADING_SQL, &build.schema, generation.0)
                    .await
                    == Some(false)
                {
                    tracing::warn!(projection = name, schema = %build.schema, "no longer leads this build");
                    return Err(Term::SteppedDown);
                }
            }
            let page = match prefetched.take() {
                Some(handle) => match handle.await {
                    Ok(page) => page,
                    Err(e) => Err(StoreError::Backend(format!("read task failed: {e}"))),
                },
                None => self.store.read_all(*position, size).await,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not read the log");
                    return Err(Term::SteppedDown);
                }
            };
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(());
            };
            let at_head = page.len() < size;
            if !at_head {
                let store = self.store.clone();
                prefetched = Some(tokio::spawn(
                    async move { store.read_all(last, size).await },
                ));
            }
            match self
                .commit_with_retry(projection, generation, *position, &page, shutdown)
                .await
            {
                Ok(p) => *position = p,
                Err(Halt::Fenced) => return Err(Term::SteppedDown),
                Err(Halt::Unavailable) => return Err(Term::SteppedDown),
                Err(Halt::Shutdown) => return Err(Term::Stopped),
                Err(Halt::Failed { position, error }) => {
                    return Err(Term::Failed { position, error })
                }
            }
            self.publish_rebuild(name, build, *position, true).await;
            if at_head {
                return Ok(());
            }
        }
    }

    /// Creates the build's secondary indexes and marks it `indexed`, fenced
    /// like a batch commit.
    async fn commit_indexes(
        &self,
        projection: &dyn Projection,
        schema: &str,
        generation: Generation,
        position: Position,
    ) -> Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        if !builds::mark_indexed_fenced(&mut tx, schema, generation, position).await? {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        builds::create_indexes(&mut tx, projection).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tries to switch `build` in (see the module documentation): `None` if
    /// not now (the live build is too far ahead, or a lock was not free
    /// within `lock_timeout`).
    async fn switch(
        &self,
        projection: &dyn Projection,
        build: &Build,
        generation: Generation,
        position: Position,
    ) -> Result<Option<Switched>, ProjectionError> {
        let reach = u64::try_from(self.config.bulk_batch.max(1)).unwrap_or(u64::MAX);
        // A first look without locks: is the live build within reach?
        if let Some(live) = builds::live_position(&self.pool, projection.name()).await? {
            if live.0 > position.0.saturating_add(reach) {
                return Ok(None);
            }
        }
        let mut tx = self.pool.begin().await?;
        match self
            .switch_in(&mut tx, projection, build, generation, position, reach)
            .await
        {
            Ok(Some(switched)) => {
                tx.commit().await?;
                Ok(Some(switched))
            }
            Ok(None) => {
                tx.rollback().await?;
                Ok(None)
            }
            Err(e) if is_lock_timeout(&e) => {
                let _ = tx.rollback().await;
                tracing::debug!(projection = projection.name(), "switch: locks busy; later");
                Ok(None)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn switch_in(
        &self,
        tx: &mut PgConnection,
        projection: &dyn Projection,
        build: &Build,
        generation: Generation,
        position: Position,
        reach: u64,
    ) -> Result<Option<Switched>, ProjectionError> {
        let name = projection.name();
        sqlx::query("SET LOCAL lock_timeout = '500ms'")
            .execute(&mut *tx)
            .await?;
        // The live build's row first: its leader's next commit waits for us.
        let old = builds::lock_live(&mut *tx, name).await?;
        let mine = builds::lock_pending(&mut *tx, &build.schema, generation).await?;
        if mine != Some(position) {
            return Err(ProjectionError::Fenced {
                name: name.to_owned(),
            });
        }
        let mut at = position;
        if let Some(&(_, target)) = old.as_ref() {
            if target > at {
                if target.0 - at.0 > reach {
                    return Ok(None);
                }
                // Bring the new build up to the live one, in this transaction.
                builds::enter(&mut *tx, &build.schema).await?;
                while at < target {
                    let limit = usize::try_from(target.0 - at.0).unwrap_or(usize::MAX);
                    let page: Vec<RecordedEvent> = self
                        .store
                        .read_all(at, limit)
                        .await?
                        .into_iter()
                        .take_while(|e| e.position <= target)
                        .collect();
                    let Some(last) = page.last().map(|e| e.position) else {
                        break;
                    };
                    let page = decode_for(projection, &page)?;
                    match AssertUnwindSafe(projection.apply(&mut *tx, &page))
                        .catch_unwind()
                        .await
                    {
                        Ok(applied) => applied?,
                        Err(panic) => {
                            return Err(ProjectionError::Panicked(panic_message(panic.as_ref())))
                        }
                    }
                    at = last;
                }
                builds::set_position(&mut *tx, &build.schema, at).await?;
            }
        }
        let old_schema = old.as_ref().map(|(s, _)| s.as_str());
        builds::go_live(&mut *tx, old_schema, &build.schema).await?;
        builds::point_views(&mut *tx, old_schema, &build.schema, projection.tables()).await?;
        Ok(Some(Switched {
            position: at,
            replaced: old.map(|(s, _)| s),
        }))
    }

    /// Drops `name`'s retired builds in the background, retrying while
    /// queries still hold the old tables.
    fn drop_retired_later(&self, name: &str) {
        let (pool, name, config) = (self.pool.clone(), name.to_owned(), self.config);
        tokio::spawn(async move {
            for attempt in 1..=20u32 {
                match builds::drop_retired(&pool, Some(&name)).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, attempt, "could not drop the old build yet");
                        tokio::time::sleep(config.retry.delay(attempt)).await;
                    }
                }
            }
        });
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
                    let delay = self.config.retry.delay(attempt);
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

    /// Folds one batch into the build led under `generation` and moves its
    /// checkpoint from `from`, atomically, provided the build's row is still
    /// at `from` and at `generation` and not retired; otherwise nothing is
    /// applied and the result is [`ProjectionError::Fenced`]. The fold runs
    /// with the build's schema first on the `search_path`; a build that is
    /// not live commits asynchronously (`synchronous_commit = off`).
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
        // The fencing check goes first: it locks the row, so a takeover or a
        // switch waits for this commit, and a stale leader folds nothing.
        let moved =
            builds::advance_fenced(&mut tx, projection.name(), generation, from, last.position)
                .await?;
        if !moved {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: projection.name().to_owned(),
            });
        }
        let events = decode_for(projection, batch)?;
        match AssertUnwindSafe(projection.apply(&mut tx, &events))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied?,
            Err(panic) => return Err(ProjectionError::Panicked(panic_message(panic.as_ref()))),
        }
        tx.commit().await?;
        Ok(last.position)
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
