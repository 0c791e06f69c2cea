//! The runner of a reacting consumer (a process manager): one leader across
//! all processes, batches from its checkpoint, lanes, bounded retries, then
//! FAILED.
//!
//! A runner of one [`Handler`] ([`Runner::run`]) never returns before
//! shutdown. It moves between these states (published per process in
//! [`Registry`]; the checkpoint row's `state` is its leader's):
//!
//! - **STANDBY**: it tries the consumer's advisory lock every
//!   [`RunnerConfig::lock_retry`] (see [`crate::leader`]); errors (the
//!   database is down) back off through [`RunnerConfig::unavailable`].
//! - **RUNNING**: with the lock it takes a new generation for the row and
//!   reads batches from the checkpoint ([`crate::subscription`]). The
//!   wanted events of a batch are decoded once into [`Envelope`]s and
//!   handed to lanes by [`Handler::lane`]: one lane handles its events one
//!   after another, in log order, lanes run side by side. When the whole
//!   batch is handled the checkpoint moves to its end, fenced by the
//!   generation; a stale leader's write fails and it stands by again. Every
//!   [`RunnerConfig::leader_check`] without events it checks that its lock
//!   connection is alive and the row still has its generation.
//! - An event whose handler reports [`HandlerError::Unavailable`] (the
//!   store or the database went away) ends the term without counting as a
//!   failure: the runner stands by, backs off, takes over again and handles
//!   the batch again from the checkpoint. Handlers are idempotent, so
//!   handling an event twice does nothing twice.
//! - **FAILED**: an event that fails [`RunnerConfig::max_attempts`] times
//!   (backoff between attempts), or cannot be decoded, marks the row
//!   FAILED with its position and error; the checkpoint stays just below
//!   it, the lock is released, and the runner waits until
//!   [`Checkpoints::reset_failed`] (`marketplace consumers retry`) or a
//!   restart. Other consumers keep running.
//! - **STOPPED**: on shutdown the leader marks its row STOPPED and releases
//!   the lock, so a standby elsewhere takes over at once.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use marketplace_domain::AggregateKind;
use marketplace_store::{EventStore, Position, RecordedEvent};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::checkpoints::{Checkpoints, Generation, LEADING_SQL};
use crate::envelope::Envelope;
use crate::leader::{LockConnection, CONSUMER_LOCKS};
use crate::retry::{pause, stopping, Backoff, Retry};
use crate::subscription::{Batching, Next, Subscription};

/// Why a handler could not handle an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The store or the database is unreachable: not the event's fault.
    /// The runner stands by and tries again later, without limit.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The event could not be handled; retried up to
    /// [`RunnerConfig::max_attempts`], then the consumer is FAILED.
    #[error("{0}")]
    Failed(String),
}

/// Something that reacts to events (a process manager).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Stable name: the checkpoint's key.
    fn name(&self) -> &'static str;
    /// Whether it reads events of `aggregate`: one of those that cannot be
    /// decoded FAILs it; an undecodable event of another aggregate is
    /// passed over.
    fn reads(&self, aggregate: AggregateKind) -> bool;
    /// Whether `event` concerns it.
    fn wants(&self, event: &Envelope) -> bool;
    /// Which lane handles `event`: events of one lane are handled one after
    /// another in log order; lanes run concurrently. By default, the
    /// event's stream.
    fn lane(&self, event: &Envelope) -> u64 {
        lane_hash(event.stream_id.as_str().as_bytes())
    }
    /// Takes every step `event` calls for. Must be safe to call again for
    /// the same event.
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError>;

    /// Handles the events of one lane of a batch, in log order (several
    /// at once where that pays: a hot aggregate's commands in one append).
    /// On failure, says at which event: those before it are done. By
    /// default one [`Handler::handle`] after another.
    async fn handle_many(&self, events: &[&Envelope]) -> Result<(), (usize, HandlerError)> {
        for (i, e) in events.iter().enumerate() {
            self.handle(e).await.map_err(|err| (i, err))?;
        }
        Ok(())
    }
}

/// A stable hash for lane selection (FNV-1a, 64 bit).
pub fn lane_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Knobs of a [`Runner`].
#[derive(Clone, Copy, Debug)]
pub struct RunnerConfig {
    /// How events are gathered into a batch.
    pub batching: Batching,
    /// Lanes handling a batch's events side by side (1: all in log order).
    pub lanes: usize,
    /// Attempts at one event before the consumer is FAILED (at least 1).
    pub max_attempts: u32,
    /// Pauses between attempts at a failing event.
    pub retry: Backoff,
    /// Pauses while the log or the database is unreachable.
    pub unavailable: Backoff,
    /// How often a standby tries the lock (and a FAILED runner looks for a
    /// reset).
    pub lock_retry: Duration,
    /// How often an idle leader checks its lock and generation.
    pub leader_check: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batching: Batching {
                max_events: 256,
                idle_wait: Duration::from_millis(2),
                busy_wait: Duration::from_millis(10),
            },
            lanes: 8,
            max_attempts: 5,
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            unavailable: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            lock_retry: Duration::from_millis(500),
            leader_check: Duration::from_secs(5),
        }
    }
}

/// The state of a runner in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunnerState {
    /// Leading: handling events.
    Running,
    /// Waiting for the lock another process holds (or for the database).
    Standby,
    /// Gave up on an event; waits for a reset or a restart.
    Failed,
    /// Not running.
    Stopped,
}

impl RunnerState {
    /// `RUNNING`, `STANDBY`, `FAILED` or `STOPPED`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Running => "RUNNING",
            RunnerState::Standby => "STANDBY",
            RunnerState::Failed => "FAILED",
            RunnerState::Stopped => "STOPPED",
        }
    }
}

/// What this process's runner of one consumer is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalStatus {
    /// Its state.
    pub state: RunnerState,
    /// Its checkpoint as it last saw it.
    pub position: Position,
    /// Its generation while RUNNING.
    pub generation: Option<i64>,
    /// Events this process has handled (wanted events whose handling
    /// succeeded), since it started.
    pub handled: u64,
    /// The event it failed on, while FAILED.
    pub failed_position: Option<Position>,
    /// Why.
    pub last_error: Option<String>,
}

impl Default for LocalStatus {
    fn default() -> Self {
        Self {
            state: RunnerState::Stopped,
            position: Position::START,
            generation: None,
            handled: 0,
            failed_position: None,
            last_error: None,
        }
    }
}

/// The runners of this process and what they are doing (cheap to clone).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, watch::Sender<LocalStatus>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    fn entry(&self, name: &str) -> watch::Sender<LocalStatus> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned())
            .or_insert_with(|| watch::channel(LocalStatus::default()).0)
            .clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut LocalStatus)) {
        self.entry(name).send_modify(f);
    }

    /// What the runner of `name` is doing here.
    pub fn get(&self, name: &str) -> LocalStatus {
        self.entry(name).borrow().clone()
    }

    /// Follows the runner of `name` (for tests and status pushes).
    pub fn watch(&self, name: &str) -> watch::Receiver<LocalStatus> {
        self.entry(name).subscribe()
    }

    /// Every runner of this process, by name.
    pub fn all(&self) -> Vec<(String, LocalStatus)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.clone(), v.borrow().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// How a leader's term ended.
enum Term {
    Stopped,
    /// Fenced, lost the lock, or the database went away.
    SteppedDown,
    Failed {
        position: Position,
        error: String,
    },
}

/// Why handling a batch stopped short.
enum Halt {
    Unavailable(String),
    Shutdown,
    Failed { position: Position, error: String },
}

/// Runs [`Handler`]s against one database (checkpoints and locks) and one
/// event store.
#[derive(Clone)]
pub struct Runner {
    checkpoints: Checkpoints,
    store: Arc<dyn EventStore>,
    config: RunnerConfig,
    registry: Registry,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner keeping checkpoints in `pool` and reading `store`.
    pub fn new(pool: PgPool, store: Arc<dyn EventStore>, registry: Registry) -> Self {
        Self {
            checkpoints: Checkpoints::new(pool),
            store,
            config: RunnerConfig::default(),
            registry,
        }
    }

    /// Replaces the knobs.
    pub fn with_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// The checkpoints table.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// This process's runners.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `handler` until `shutdown` turns true (or its sender is
    /// dropped): standing by while another process leads it, leading when
    /// it can, waiting for a reset while it is FAILED. Never returns
    /// before shutdown.
    pub async fn run(&self, handler: Arc<dyn Handler>, mut shutdown: watch::Receiver<bool>) {
        let name = handler.name();
        let shutdown = &mut shutdown;
        self.registry
            .update(name, |s| s.state = RunnerState::Standby);
        let mut unavailable = Retry::new(self.config.unavailable);
        // Started on a FAILED consumer: a restart, which retries it.
        let mut resume_failed = loop {
            match self.checkpoints.ensure(name).await {
                Ok(row) => {
                    self.registry.update(name, |s| s.position = row.position);
                    break row.state == "FAILED";
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not read its checkpoint; retrying");
                    if unavailable.failed(shutdown).await {
                        self.registry
                            .update(name, |s| s.state = RunnerState::Stopped);
                        return;
                    }
                }
            }
        };
        unavailable.reset();
        let options = (*self.checkpoints.pool().connect_options()).clone();
        let mut lock = LockConnection::new(options, CONSUMER_LOCKS, name);
        while !stopping(shutdown) {
            self.registry.update(name, |s| {
                s.state = RunnerState::Standby;
                s.generation = None;
            });
            match lock.try_acquire().await {
                Ok(true) => {}
                Ok(false) => {
                    unavailable.reset();
                    if let Ok(Some(row)) = self.checkpoints.row(name).await {
                        self.registry.update(name, |s| s.position = row.position);
                    }
                    if pause(self.config.lock_retry, shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not try the leadership lock");
                    if unavailable.failed(shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            let (generation, position) = match self.checkpoints.take_over(name, resume_failed).await
            {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    // FAILED before this runner led it: leave it to a reset.
                    lock.release().await;
                    if self.wait_for_reset(name, shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not take over; standing by");
                    lock.release().await;
                    if unavailable.failed(shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            resume_failed = false;
            tracing::info!(consumer = name, %generation, %position, "consumer leading");
            match self
                .lead(
                    handler.as_ref(),
                    &mut lock,
                    generation,
                    position,
                    shutdown,
                    &mut unavailable,
                )
                .await
            {
                Term::Stopped => {
                    let _ = self.checkpoints.stop(name, generation).await;
                    break;
                }
                Term::SteppedDown => {
                    lock.release().await;
                    if unavailable.failed(shutdown).await {
                        break;
                    }
                }
                Term::Failed { position, error } => {
                    tracing::error!(consumer = name, %position, %error,
                        "consumer FAILED: it gave up on an event; fix it, then `marketplace consumers retry {name}`");
                    self.registry.update(name, |s| {
                        s.state = RunnerState::Failed;
                        s.failed_position = Some(position);
                        s.last_error = Some(error.clone());
                    });
                    // Recorded before the lock goes, so no standby resumes it.
                    loop {
                        match self
                            .checkpoints
                            .fail(name, generation, position, &error)
                            .await
                        {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(consumer = name, error = %e, "could not record the failure; retrying");
                                if unavailable.failed(shutdown).await {
                                    break;
                                }
                            }
                        }
                    }
                    lock.release().await;
                    if self.wait_for_reset(name, shutdown).await {
                        break;
                    }
                }
            }
        }
        lock.close().await;
        self.registry.update(name, |s| {
            s.state = RunnerState::Stopped;
            s.generation = None;
        });
        tracing::info!(consumer = name, "consumer runner stopped");
    }

    /// While FAILED: waits until the row is no longer FAILED. `true` on
    /// shutdown.
    async fn wait_for_reset(&self, name: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.checkpoints.row(name).await {
                Ok(Some(row)) if row.state == "FAILED" => {
                    self.registry.update(name, |s| {
                        s.state = RunnerState::Failed;
                        s.position = row.position;
                        s.failed_position = row.failed_position;
                        s.last_error = row.last_error.clone();
                    });
                }
                Ok(_) => {
                    tracing::info!(consumer = name, "consumer no longer FAILED; standing by");
                    self.registry.update(name, |s| {
                        s.state = RunnerState::Standby;
                        s.failed_position = None;
                        s.last_error = None;
                    });
                    return false;
                }
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not read its checkpoint")
                }
            }
            if pause(self.config.lock_retry, shutdown).await {
                return true;
            }
        }
    }

    /// Leads `handler` from `position` under `generation`.
    async fn lead(
        &self,
        handler: &dyn Handler,
        lock: &mut LockConnection,
        generation: Generation,
        mut position: Position,
        shutdown: &mut watch::Receiver<bool>,
        unavailable: &mut Retry,
    ) -> Term {
        let name = handler.name();
        self.registry.update(name, |s| {
            s.state = RunnerState::Running;
            s.generation = Some(generation.0);
            s.position = position;
            s.failed_position = None;
            s.last_error = None;
        });
        let mut events =
            Subscription::new(name, self.store.clone(), position, self.config.unavailable);
        loop {
            let batch = match events
                .next_batch(
                    self.config.batching,
                    Some(self.config.leader_check),
                    shutdown,
                )
                .await
            {
                Next::Stopped => return Term::Stopped,
                Next::Idle => {
                    if lock.still_leading(LEADING_SQL, name, generation.0).await == Some(false) {
                        tracing::warn!(consumer = name, "no longer leads; standing by");
                        return Term::SteppedDown;
                    }
                    continue;
                }
                Next::Batch(batch) => batch,
            };
            let Some(last) = batch.last().map(|e| e.position) else {
                continue;
            };
            let (envelopes, poison) = decode_wanted(handler, &batch);
            let handled = self.handle_batch(handler, &envelopes, shutdown).await;
            let (upto, term) = match (handled, poison) {
                (Ok(()), None) => (last, None),
                (Ok(()), Some((at, error))) => (
                    Position(at.0.saturating_sub(1)),
                    Some(Term::Failed {
                        position: at,
                        error,
                    }),
                ),
                (
                    Err(Halt::Failed {
                        position: at,
                        error,
                    }),
                    _,
                ) => (
                    Position(at.0.saturating_sub(1)),
                    Some(Term::Failed {
                        position: at,
                        error,
                    }),
                ),
                (Err(Halt::Unavailable(error)), _) => {
                    tracing::warn!(consumer = name, %error, "the store or database is unavailable; standing by");
                    return Term::SteppedDown;
                }
                (Err(Halt::Shutdown), _) => return Term::Stopped,
            };
            if upto > position {
                match self
                    .checkpoints
                    .advance(name, generation, position, upto)
                    .await
                {
                    Ok(true) => {
                        position = upto;
                        unavailable.reset();
                        self.registry.update(name, |s| s.position = position);
                    }
                    Ok(false) => {
                        tracing::warn!(consumer = name, %generation, "fenced by a newer leader");
                        return Term::SteppedDown;
                    }
                    Err(e) => {
                        tracing::warn!(consumer = name, error = %e, "could not move the checkpoint; standing by");
                        return Term::SteppedDown;
                    }
                }
            }
            if let Some(term) = term {
                return term;
            }
        }
    }

    /// Handles the wanted events of a batch, lane by lane.
    async fn handle_batch(
        &self,
        handler: &dyn Handler,
        envelopes: &[Envelope],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Halt> {
        let lanes = self.config.lanes.max(1);
        let mut by_lane: Vec<Vec<&Envelope>> = vec![Vec::new(); lanes];
        for e in envelopes {
            let lane = (handler.lane(e) % lanes as u64) as usize;
            by_lane[lane].push(e);
        }
        let runs = by_lane
            .into_iter()
            .filter(|lane| !lane.is_empty())
            .map(|lane| {
                let mut shutdown = shutdown.clone();
                async move { self.handle_lane(handler, &lane, &mut shutdown).await }
            });
        let results = futures::future::join_all(runs).await;
        // The earliest failure wins (the checkpoint stays below it); an
        // unavailable store or shutdown ends the term without one.
        let mut first_failure: Option<(Position, String)> = None;
        let mut other = None;
        for r in results {
            match r {
                Ok(()) => {}
                Err(Halt::Failed { position, error }) => {
                    if first_failure.as_ref().is_none_or(|(p, _)| position < *p) {
                        first_failure = Some((position, error));
                    }
                }
                Err(halt) => other = Some(halt),
            }
        }
        match (other, first_failure) {
            (Some(halt), _) => Err(halt),
            (None, Some((position, error))) => Err(Halt::Failed { position, error }),
            (None, None) => Ok(()),
        }
    }

    /// Hands a lane's events to the handler, whole; after a failure at an
    /// event, goes on from there (what came before it is done), with
    /// backoff, up to [`RunnerConfig::max_attempts`] attempts at that
    /// event, then FAILED at it.
    async fn handle_lane(
        &self,
        handler: &dyn Handler,
        lane: &[&Envelope],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Halt> {
        let name = handler.name();
        let mut from = 0;
        let mut attempt = 0;
        while from < lane.len() {
            attempt += 1;
            let rest = &lane[from..];
            let outcome = match AssertUnwindSafe(handler.handle_many(rest))
                .catch_unwind()
                .await
            {
                Ok(outcome) => outcome,
                Err(panic) => Err((
                    0,
                    HandlerError::Failed(format!(
                        "handler panicked: {}",
                        panic_message(panic.as_ref())
                    )),
                )),
            };
            let (done, error) = match outcome {
                Ok(()) => (rest.len(), None),
                Err((at, error)) => (at.min(rest.len()), Some(error)),
            };
            self.registry.update(name, |s| s.handled += done as u64);
            from += done;
            if done > 0 {
                attempt = 1;
            }
            match error {
                None => {}
                Some(HandlerError::Unavailable(e)) => return Err(Halt::Unavailable(e)),
                Some(HandlerError::Failed(error)) => {
                    let position = lane.get(from).map_or(Position::START, |e| e.position);
                    if attempt >= self.config.max_attempts.max(1) {
                        return Err(Halt::Failed { position, error });
                    }
                    let delay = self.config.retry.delay(attempt);
                    tracing::warn!(consumer = name, %position, %error, attempt, ?delay,
                        "event failed; retrying");
                    if pause(delay, shutdown).await {
                        return Err(Halt::Shutdown);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes a batch once; keeps the events `handler` wants. An event of an
/// aggregate it reads that cannot be decoded cuts the batch there: `(what comes before it, (its
/// position, the error))`.
fn decode_wanted(
    handler: &dyn Handler,
    batch: &[Arc<RecordedEvent>],
) -> (Vec<Envelope>, Option<(Position, String)>) {
    let mut out = Vec::new();
    for recorded in batch {
        match Envelope::decode_for(recorded, |a| handler.reads(a)) {
            Ok(Some(e)) if handler.wants(&e) => out.push(e),
            Ok(_) => {}
            Err(e) => return (out, Some((recorded.position, e.to_string()))),
        }
    }
    (out, None)
}

/// The message of a caught panic (a handler's), for the failure it becomes.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
