//! Process managers (sagas): react to committed events with commands.
//!
//! A process manager runs on the shared consumer runtime
//! ([`marketplace_consumers::Runner`]): one leader across all processes
//! (advisory lock plus fencing generation), batches from its own
//! checkpoint, lanes ([`ProcessManager::lane`]), bounded retries, then
//! FAILED with the position and the error, visible in every status surface
//! and retried with `marketplace projections retry <name>`. Each step it
//! takes is a command whose decision is idempotent (keyed by the order it
//! serves) and whose event ids derive from the triggering event, so
//! handling an event twice — after a crash between the step and the
//! checkpoint, or in a stale leader during a takeover — does nothing twice.
//!
//! - [`checkout`]: `order.placed` → reserve stock, hold funds, confirm; or
//!   reject, then compensate.
//! - [`payout`]: `order.shipped` → commit reservations as sold;
//!   `order.delivered` → release escrow to the seller and the fee account;
//!   `order.cancelled` → refund the buyer and release the stock.
//! - [`deposit`]: `payment.intent_created` → charge through the gateway,
//!   then succeed (and credit) or fail the intent; `payment.succeeded` →
//!   credit the wallet, exactly once whoever recorded the success.
//!
//! The runner decodes each event once into an [`Envelope`]; a process
//! manager matches its [`marketplace_domain::Event`] exhaustively, naming
//! what it ignores (`clippy::wildcard_enum_match_arm` is denied in these
//! modules, so a new event is an error in each of them until it decides).
//! An event that cannot be decoded FAILs the process manager if it reads
//! its aggregate ([`ProcessManager::reads`]), and is passed over otherwise.

#![deny(clippy::wildcard_enum_match_arm)]

pub mod checkout;
pub mod deposit;
pub mod payout;

mod managers;

pub use managers::managers;

use std::sync::Arc;

use async_trait::async_trait;
use marketplace_consumers::{DecodeFailure, Envelope, Handler, HandlerError, Runner};
use marketplace_domain::AggregateKind;
use marketplace_store::StoreError;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::handler::{CommandError, LoadError};

/// Why a process manager could not handle an event. [`ProcessError::is_unavailable`]
/// errors are waited out without limit; the others are retried a few times,
/// then the process manager is FAILED.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The store or the database is unreachable (retried without limit).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// A command failed for a reason other than a domain refusal.
    #[error("command failed: {0}")]
    Command(String),
    /// The checkpoint could not be read or written.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An event of an aggregate it reads could not be decoded: retrying
    /// cannot help, so the runner stops there.
    #[error(transparent)]
    Decode(#[from] DecodeFailure),
    /// A test stopped the process here, as a crash would.
    #[error("fault injected at {0}")]
    Injected(&'static str),
}

impl From<LoadError> for ProcessError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) if e.is_retryable() => ProcessError::Unavailable(e.to_string()),
            e @ (LoadError::Store(_) | LoadError::Codec(_)) => ProcessError::Command(e.to_string()),
        }
    }
}

impl ProcessError {
    pub(crate) fn command<E: std::fmt::Display>(e: CommandError<E>) -> Self {
        match e {
            CommandError::Store(e) if e.is_retryable() => ProcessError::Unavailable(e.to_string()),
            e @ (CommandError::Rejected(_)
            | CommandError::Conflict { .. }
            | CommandError::Store(_)
            | CommandError::Codec(_)
            | CommandError::IdempotencyKeyReused) => ProcessError::Command(e.to_string()),
        }
    }

    /// Whether it is the infrastructure's fault (the store or database is
    /// unreachable), not the event's.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ProcessError::Unavailable(_) => true,
            ProcessError::Store(e) => e.is_retryable(),
            ProcessError::Command(_)
            | ProcessError::Checkpoint(_)
            | ProcessError::Decode(_)
            | ProcessError::Injected(_) => false,
        }
    }
}

/// Something that reacts to events with commands.
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// Stable name: the checkpoint's key.
    fn name(&self) -> &'static str;
    /// Whether it reads events of `aggregate`: one of those that cannot be
    /// decoded stops it; an undecodable event of any other aggregate is
    /// passed over.
    fn reads(&self, aggregate: AggregateKind) -> bool;
    /// Whether `event` concerns it (cheap; by type).
    fn wants(&self, event: &Envelope) -> bool;
    /// Takes every step `event` calls for. Must be safe to call again for
    /// the same event.
    async fn handle(&self, event: &Envelope) -> Result<(), ProcessError>;

    /// Handles the events of one lane in log order, several at once where
    /// that pays; on failure, says at which event (those before it are
    /// done). By default one [`ProcessManager::handle`] after another.
    async fn handle_many(&self, events: &[&Envelope]) -> Result<(), (usize, ProcessError)> {
        use tracing::Instrument;
        for (i, e) in events.iter().enumerate() {
            self.handle(e)
                .instrument(step_span(self.name(), e))
                .await
                .map_err(|err| (i, err))?;
        }
        Ok(())
    }

    /// Which lane handles `event` when the runner runs several: events of
    /// one lane are handled one after another, in log order; lanes run
    /// concurrently. By default, the event's stream.
    fn lane(&self, event: &Envelope) -> u64 {
        hash(event.stream_id.as_str().as_bytes())
    }
}

/// A stable hash for lane selection (FNV-1a).
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    marketplace_consumers::runner::lane_hash(bytes)
}

/// The span of a process manager's step for `trigger`: in the trace of the
/// request that wrote the trigger (its stored `traceparent` is the
/// parent), so the step's commands, and the events they append, continue
/// that trace. Events recorded long ago (a catch-up) start no trace here.
pub fn step_span(manager: &'static str, trigger: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "saga.step",
        saga = manager,
        event_type = trigger.event.event_type(),
        stream = %trigger.stream_id,
        position = trigger.position.0,
    );
    if trigger
        .metadata
        .recorded_at
        .is_some_and(marketplace_consumers::trace::is_recent)
    {
        marketplace_consumers::trace::follow(&span, trigger.metadata.traceparent.as_deref());
    }
    span
}

/// A process manager as the consumer runtime sees it.
struct Managed(Arc<dyn ProcessManager>);

#[async_trait]
impl Handler for Managed {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        self.0.reads(aggregate)
    }

    fn wants(&self, event: &Envelope) -> bool {
        self.0.wants(event)
    }

    fn lane(&self, event: &Envelope) -> u64 {
        self.0.lane(event)
    }

    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.0.handle(event).await.map_err(handler_error)
    }

    async fn handle_many(&self, events: &[&Envelope]) -> Result<(), (usize, HandlerError)> {
        self.0
            .handle_many(events)
            .await
            .map_err(|(at, e)| (at, handler_error(e)))
    }
}

fn handler_error(e: ProcessError) -> HandlerError {
    if e.is_unavailable() {
        HandlerError::Unavailable(e.to_string())
    } else {
        HandlerError::Failed(e.to_string())
    }
}

/// Runs `pm` on `runner` (one leader across processes, bounded retries,
/// FAILED; see [`marketplace_consumers::runner`]) until `shutdown`.
pub async fn run(pm: Arc<dyn ProcessManager>, runner: Runner, shutdown: watch::Receiver<bool>) {
    runner.run(Arc::new(Managed(pm)), shutdown).await;
}

/// Applies the process managers' tables: the old `process_checkpoints`,
/// then the consumer runtime's `consumer_checkpoints`, which takes over its
/// positions.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // The event store and read models keep their migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    marketplace_consumers::checkpoints::migrate(pool).await
}

/// A test hook: called at each step boundary with the step's name; `true`
/// stops the handler there with [`ProcessError::Injected`], as a crash would.
pub type FaultHook = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

pub(crate) fn check_fault(
    fault: &Option<FaultHook>,
    step: &'static str,
) -> Result<(), ProcessError> {
    match fault {
        Some(f) if f(step) => Err(ProcessError::Injected(step)),
        _ => Ok(()),
    }
}
