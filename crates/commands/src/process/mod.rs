//! Process managers (sagas): react to committed events with commands.
//!
//! A process manager consumes the log from its own checkpoint, one event at
//! a time, in log order. Each step it takes is a command whose decision is
//! idempotent (keyed by the order it serves) and whose event ids derive from
//! the triggering event, so handling an event twice — after a crash between
//! the step and the checkpoint — does nothing twice. The checkpoint moves
//! only after an event is fully handled; a failing event is retried with
//! backoff and never skipped.
//!
//! - [`checkout`]: `order.placed` → reserve stock, hold funds, confirm; or
//!   compensate and reject.
//! - [`payout`]: `order.shipped` → commit reservations as sold;
//!   `order.delivered` → release escrow to the seller and the fee account;
//!   `order.cancelled` → refund the buyer and release the stock.

pub mod checkout;
pub mod payout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::handler::{CommandError, LoadError};

/// Why a process manager could not handle an event (it will be retried).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// A command failed for a reason other than a domain refusal.
    #[error("command failed: {0}")]
    Command(String),
    /// The checkpoint could not be read or written.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A test stopped the process here, as a crash would.
    #[error("fault injected at {0}")]
    Injected(&'static str),
}

impl From<LoadError> for ProcessError {
    fn from(e: LoadError) -> Self {
        ProcessError::Command(e.to_string())
    }
}

impl ProcessError {
    pub(crate) fn command<E: std::fmt::Display>(e: CommandError<E>) -> Self {
        ProcessError::Command(e.to_string())
    }
}

/// Something that reacts to events with commands.
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// Stable name: the checkpoint's key.
    fn name(&self) -> &'static str;
    /// Whether `event` concerns it (cheap; by type).
    fn wants(&self, event: &RecordedEvent) -> bool;
    /// Takes every step `event` calls for. Must be safe to call again for
    /// the same event.
    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProcessError>;
}

/// Where process managers keep their checkpoints.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// The last handled position of `name` (`START` if none).
    async fn load(&self, name: &str) -> Result<Position, ProcessError>;
    /// Records that everything up to `position` is handled.
    async fn save(&self, name: &str, position: Position) -> Result<(), ProcessError>;
}

/// Checkpoints in Postgres (`process_checkpoints`).
#[derive(Clone, Debug)]
pub struct PgCheckpoints(pub PgPool);

#[async_trait]
impl Checkpoints for PgCheckpoints {
    async fn load(&self, name: &str) -> Result<Position, ProcessError> {
        let p: Option<i64> =
            sqlx::query_scalar("SELECT position FROM process_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.0)
                .await
                .map_err(|e| ProcessError::Checkpoint(e.to_string()))?;
        Ok(Position(p.map_or(0, |p| u64::try_from(p).unwrap_or(0))))
    }

    async fn save(&self, name: &str, position: Position) -> Result<(), ProcessError> {
        sqlx::query(
            "INSERT INTO process_checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = GREATEST(process_checkpoints.position, \
             EXCLUDED.position), updated_at = now()",
        )
        .bind(name)
        .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
        .execute(&self.0)
        .await
        .map_err(|e| ProcessError::Checkpoint(e.to_string()))?;
        Ok(())
    }
}

/// Checkpoints in memory, for tests with the in-memory store.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints(std::sync::Mutex<std::collections::HashMap<String, Position>>);

#[async_trait]
impl Checkpoints for MemoryCheckpoints {
    async fn load(&self, name: &str) -> Result<Position, ProcessError> {
        let map = self
            .0
            .lock()
            .map_err(|_| ProcessError::Checkpoint("poisoned".into()))?;
        Ok(map.get(name).copied().unwrap_or(Position::START))
    }

    async fn save(&self, name: &str, position: Position) -> Result<(), ProcessError> {
        let mut map = self
            .0
            .lock()
            .map_err(|_| ProcessError::Checkpoint("poisoned".into()))?;
        let entry = map.entry(name.to_owned()).or_insert(Position::START);
        *entry = (*entry).max(position);
        Ok(())
    }
}

/// Applies the process managers' table.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // The event store and read models keep their migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// How a runner treats a failing event.
#[derive(Clone, Copy, Debug)]
pub struct RunnerPolicy {
    /// Attempts per event before the runner stops with the error
    /// (`u32::MAX`: keep trying, as a service should).
    pub max_attempts: u32,
    /// First backoff; doubles up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Skipped (unwanted) events between checkpoint writes.
    pub checkpoint_every: u32,
}

impl Default for RunnerPolicy {
    fn default() -> Self {
        Self {
            max_attempts: u32::MAX,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            checkpoint_every: 500,
        }
    }
}

/// Runs `pm` from its checkpoint until the subscription ends or an event
/// fails `policy.max_attempts` times. `progress` receives each position
/// handled, for tests and status.
pub async fn run(
    pm: Arc<dyn ProcessManager>,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn Checkpoints>,
    policy: RunnerPolicy,
    progress: Option<watch::Sender<Position>>,
) -> Result<(), ProcessError> {
    let name = pm.name();
    let from = checkpoints.load(name).await?;
    tracing::info!(process = name, %from, "process manager starting");
    let mut events = store.subscribe_all(from).await?;
    let mut unsaved = 0u32;
    while let Some(event) = events.next().await {
        let event = event?;
        if pm.wants(&event) {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match pm.handle(&event).await {
                    Ok(()) => break,
                    Err(e) if attempt >= policy.max_attempts => {
                        tracing::error!(process = name, position = %event.position, error = %e,
                            "process manager stopped on an event it could not handle");
                        return Err(e);
                    }
                    Err(e) => {
                        let backoff = policy
                            .base_backoff
                            .saturating_mul(1u32 << attempt.min(16))
                            .min(policy.max_backoff);
                        tracing::warn!(process = name, position = %event.position, attempt,
                            error = %e, "retrying event");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            checkpoints.save(name, event.position).await?;
            unsaved = 0;
        } else {
            unsaved += 1;
            if unsaved >= policy.checkpoint_every {
                checkpoints.save(name, event.position).await?;
                unsaved = 0;
            }
        }
        if let Some(p) = &progress {
            p.send_replace(event.position);
        }
    }
    Ok(())
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
