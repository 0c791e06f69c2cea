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
//!
//! The runner decodes each event once into an [`Envelope`]; a process
//! manager matches its [`marketplace_domain::Event`] exhaustively, naming
//! what it ignores (`clippy::wildcard_enum_match_arm` is denied in these
//! modules, so a new event is an error in each of them until it decides).
//! An event that cannot be decoded stops the runner with
//! [`ProcessError::Decode`] if the process manager reads its aggregate
//! ([`ProcessManager::reads`]), and is passed over otherwise.

#![deny(clippy::wildcard_enum_match_arm)]

pub mod checkout;
pub mod payout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use marketplace_consumers::{DecodeFailure, Envelope};
use marketplace_domain::AggregateKind;
use marketplace_store::{EventStore, Position, StoreError};
use sqlx::PgPool;
use std::collections::BTreeSet;

use tokio::sync::{mpsc, watch};

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
    /// Whether it reads events of `aggregate`: one of those that cannot be
    /// decoded stops it; an undecodable event of any other aggregate is
    /// passed over.
    fn reads(&self, aggregate: AggregateKind) -> bool;
    /// Whether `event` concerns it (cheap; by type).
    fn wants(&self, event: &Envelope) -> bool;
    /// Takes every step `event` calls for. Must be safe to call again for
    /// the same event.
    async fn handle(&self, event: &Envelope) -> Result<(), ProcessError>;

    /// Which lane handles `event` when the runner runs several: events of
    /// one lane are handled one after another, in log order; lanes run
    /// concurrently. By default, the event's stream.
    fn lane(&self, event: &Envelope) -> u64 {
        hash(event.stream_id.as_str().as_bytes())
    }
}

/// A stable hash for lane selection (FNV-1a).
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    /// Lanes handling events concurrently (see [`ProcessManager::lane`]);
    /// 1 handles every event in log order.
    pub lanes: usize,
}

impl Default for RunnerPolicy {
    fn default() -> Self {
        Self {
            max_attempts: u32::MAX,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            checkpoint_every: 500,
            lanes: 8,
        }
    }
}

/// Runs `pm` from its checkpoint until the subscription ends or an event
/// fails `policy.max_attempts` times. `progress` receives each position
/// whose handling (and everything's before it) is done, for tests and status.
///
/// With several lanes, events are handed to lanes by [`ProcessManager::lane`]
/// and handled concurrently; the checkpoint only moves to a position below
/// which every wanted event is done, so a restart never skips one.
pub async fn run(
    pm: Arc<dyn ProcessManager>,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn Checkpoints>,
    policy: RunnerPolicy,
    progress: Option<watch::Sender<Position>>,
) -> Result<(), ProcessError> {
    let name = pm.name();
    let from = checkpoints.load(name).await?;
    tracing::info!(process = name, %from, lanes = policy.lanes, "process manager starting");
    let mut events = store.subscribe_all(from).await?;
    let lanes = policy.lanes.max(1);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Position, Result<(), ProcessError>)>();
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..lanes {
        let (tx, mut rx) = mpsc::channel::<Envelope>(256);
        senders.push(tx);
        let (pm, done_tx) = (pm.clone(), done_tx.clone());
        workers.spawn(async move {
            while let Some(event) = rx.recv().await {
                let result = handle_with_retries(&*pm, &event, policy).await;
                let failed = result.is_err();
                if done_tx.send((event.position, result)).is_err() || failed {
                    break;
                }
            }
        });
    }
    drop(done_tx);
    // Wanted events handed to a lane and not finished yet.
    let mut in_flight: BTreeSet<Position> = BTreeSet::new();
    // The highest position read from the log.
    let mut seen = from;
    let mut saved = from;
    let mut unsaved = 0u32;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            next = events.next(), if open && in_flight.len() < lanes * 256 => match next {
                Some(recorded) => {
                    let recorded = recorded?;
                    let decoded = match Envelope::decode_for(&recorded, |a| pm.reads(a)) {
                        Ok(decoded) => decoded,
                        Err(e) => {
                            tracing::error!(process = name, position = %e.position, error = %e,
                                "process manager stopped on an event it cannot decode");
                            return Err(e.into());
                        }
                    };
                    seen = recorded.position;
                    match decoded {
                        Some(event) if pm.wants(&event) => {
                            in_flight.insert(event.position);
                            let lane = (pm.lane(&event) % lanes as u64) as usize;
                            if senders[lane].send(event).await.is_err() {
                                return Err(ProcessError::Command(format!("{name}: a lane stopped")));
                            }
                        }
                        // Not wanted, or undecodable of an aggregate it does not read.
                        Some(_) | None => unsaved += 1,
                    }
                }
                None => open = false,
            },
            done = done_rx.recv() => match done {
                Some((position, Ok(()))) => {
                    in_flight.remove(&position);
                    unsaved = unsaved.saturating_add(policy.checkpoint_every);
                }
                Some((position, Err(e))) => {
                    tracing::error!(process = name, %position, error = %e,
                        "process manager stopped on an event it could not handle");
                    return Err(e);
                }
                None => return Err(ProcessError::Command(format!("{name}: every lane stopped"))),
            },
        }
        // Everything below the oldest unfinished event is done.
        let done_upto = match in_flight.first() {
            Some(p) => Position(p.0.saturating_sub(1)),
            None => seen,
        };
        if done_upto > saved && unsaved >= policy.checkpoint_every {
            checkpoints.save(name, done_upto).await?;
            saved = done_upto;
            unsaved = 0;
        }
        if let Some(p) = &progress {
            p.send_if_modified(|old| {
                let moved = *old < done_upto;
                *old = (*old).max(done_upto);
                moved
            });
        }
    }
    if seen > saved {
        checkpoints.save(name, seen).await?;
    }
    Ok(())
}

async fn handle_with_retries(
    pm: &dyn ProcessManager,
    event: &Envelope,
    policy: RunnerPolicy,
) -> Result<(), ProcessError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match pm.handle(event).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= policy.max_attempts => return Err(e),
            Err(e) => {
                let backoff = policy
                    .base_backoff
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(policy.max_backoff);
                tracing::warn!(process = pm.name(), position = %event.position, attempt,
                    error = %e, "retrying event");
                tokio::time::sleep(backoff).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use marketplace_domain::email_claim::{EmailClaim, EmailClaimEvent, EmailClaimed};
    use marketplace_domain::review::Review;
    use marketplace_domain::values::{AccountId, Email};
    use marketplace_domain::Aggregate;
    use marketplace_store::{
        EventMetadata, EventStore, ExpectedRevision, InMemoryEventStore, NewEvent, StreamId,
    };
    use tokio::sync::Notify;
    use uuid::Uuid;

    use super::*;

    /// Wants every event; the one of stream `slow` waits for `release`.
    struct Gate {
        slow: StreamId,
        release: Arc<Notify>,
    }

    #[async_trait]
    impl ProcessManager for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn reads(&self, _: AggregateKind) -> bool {
            true
        }
        fn wants(&self, _: &Envelope) -> bool {
            true
        }
        async fn handle(&self, event: &Envelope) -> Result<(), ProcessError> {
            if event.stream_id == self.slow {
                self.release.notified().await;
            }
            Ok(())
        }
    }

    /// A new stream of an email claim, and its event.
    fn claim() -> (StreamId, NewEvent) {
        let account = AccountId(Uuid::now_v7());
        let e = EmailClaimEvent::Claimed(EmailClaimed {
            email: Email::parse(&format!("{}@example.com", account.0.simple())).expect("email"),
            account_id: account,
            claimed_at: chrono::Utc::now(),
        });
        let encoded = marketplace_event_schemas::encode(&e).expect("encode");
        let stream = StreamId::new(EmailClaim::CATEGORY, Uuid::now_v7()).expect("stream");
        let event = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: encoded.event_type.to_owned(),
            schema_version: encoded.schema_version,
            data: encoded.data,
            metadata: EventMetadata::default(),
        };
        (stream, event)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpoint_never_passes_an_event_a_lane_has_not_finished() {
        let store = Arc::new(InMemoryEventStore::new());
        let (slow, event) = claim();
        store
            .append(&slow, ExpectedRevision::Any, vec![event])
            .await
            .expect("append");
        for _ in 0..20 {
            let (s, event) = claim();
            store
                .append(&s, ExpectedRevision::Any, vec![event])
                .await
                .expect("append");
        }
        let release = Arc::new(Notify::new());
        let checkpoints = Arc::new(MemoryCheckpoints::default());
        let (tx, mut rx) = watch::channel(Position::START);
        let runner = tokio::spawn(run(
            Arc::new(Gate {
                slow: slow.clone(),
                release: release.clone(),
            }),
            store.clone(),
            checkpoints.clone(),
            RunnerPolicy {
                lanes: 4,
                checkpoint_every: 1,
                ..RunnerPolicy::default()
            },
            Some(tx),
        ));
        // The other lanes finish the 20 later events; the checkpoint stays
        // below the first event, which is still being handled.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            assert_eq!(
                checkpoints.load("gate").await.expect("load"),
                Position::START
            );
            assert_eq!(*rx.borrow(), Position::START);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if deadline - tokio::time::Instant::now() < Duration::from_secs(4) {
                break;
            }
        }
        release.notify_one();
        let done = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|p| p.0 == 21)).await;
        assert!(done.is_ok(), "everything is done once the slow event is");
        assert_eq!(checkpoints.load("gate").await.expect("load"), Position(21));
        runner.abort();
    }

    /// Wants every event it reads and counts them.
    struct Tally {
        reads: fn(AggregateKind) -> bool,
        handled: AtomicUsize,
    }

    #[async_trait]
    impl ProcessManager for Tally {
        fn name(&self) -> &'static str {
            "tally"
        }
        fn reads(&self, aggregate: AggregateKind) -> bool {
            (self.reads)(aggregate)
        }
        fn wants(&self, _: &Envelope) -> bool {
            true
        }
        async fn handle(&self, _: &Envelope) -> Result<(), ProcessError> {
            self.handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_undecodable_event_stops_only_a_process_manager_that_reads_its_aggregate() {
        let store = Arc::new(InMemoryEventStore::new());
        let (s, event) = claim();
        store
            .append(&s, ExpectedRevision::Any, vec![event])
            .await
            .expect("append");
        let poison = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "review.submitted".into(),
            schema_version: 1,
            data: serde_json::json!({ "not": "a review" }),
            metadata: EventMetadata::default(),
        };
        let review = StreamId::new(Review::CATEGORY, Uuid::now_v7()).expect("stream");
        store
            .append(&review, ExpectedRevision::Any, vec![poison])
            .await
            .expect("append");
        let (s, event) = claim();
        store
            .append(&s, ExpectedRevision::Any, vec![event])
            .await
            .expect("append");
        let policy = RunnerPolicy {
            lanes: 1,
            ..RunnerPolicy::default()
        };

        let claims_only = Arc::new(Tally {
            reads: |a| a == AggregateKind::EmailClaim,
            handled: AtomicUsize::new(0),
        });
        let (tx, mut rx) = watch::channel(Position::START);
        let runner = tokio::spawn(run(
            claims_only.clone(),
            store.clone(),
            Arc::new(MemoryCheckpoints::default()),
            policy,
            Some(tx),
        ));
        let done = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|p| p.0 == 3)).await;
        assert!(done.is_ok(), "it passes the review over");
        assert_eq!(claims_only.handled.load(Ordering::SeqCst), 2);
        runner.abort();

        let everything = Arc::new(Tally {
            reads: |_| true,
            handled: AtomicUsize::new(0),
        });
        let checkpoints = Arc::new(MemoryCheckpoints::default());
        let stopped = tokio::time::timeout(
            Duration::from_secs(30),
            run(everything, store, checkpoints.clone(), policy, None),
        )
        .await
        .expect("stops");
        match stopped {
            Err(ProcessError::Decode(f)) => {
                assert_eq!(
                    (f.event_type.as_str(), f.position),
                    ("review.submitted", Position(2))
                );
            }
            other => panic!("expected a decode failure, got {other:?}"),
        }
        assert!(checkpoints.load("tally").await.expect("load") < Position(2));
    }
}
