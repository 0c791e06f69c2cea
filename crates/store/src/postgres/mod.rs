//! The Postgres backend: the embedded default.
//!
//! - One `events` table with `UNIQUE(stream_id, revision)` and
//!   `UNIQUE(event_id)`; triggers refuse UPDATE, DELETE and TRUNCATE.
//! - **Gap safety by serialisation.** Every append transaction first takes one
//!   transaction-scoped advisory lock, then assigns positions after the
//!   current maximum. Postgres makes a transaction visible before it releases
//!   its locks, so positions become visible strictly in order, across every
//!   process that writes to the database. `read_all` can then simply read
//!   `position > from` and what it returns is final. This was chosen over
//!   recording `pg_current_xact_id()` and reading below the snapshot's xmin
//!   because the latter stalls every subscriber behind any long transaction
//!   in the cluster and makes positions compound.
//! - **Group commit.** In each process, appends go through one appender task
//!   that takes every request queued while the previous transaction was
//!   committing and writes them in one transaction (one lock, one fsync),
//!   while each request still gets its own optimistic-concurrency outcome.
//!   A request whose own data Postgres refuses fails alone: text it cannot
//!   store (U+0000) is refused before it is queued, and a batch that fails on
//!   any other data error is written again one request per transaction (see
//!   `appender.rs`). Either way the caller gets [`StoreError::Rejected`].
//!   While no other writer has appended since its last commit, the appender
//!   plans on the stream heads it wrote and probes only the others
//!   (`heads.rs`).
//! - **Appends across streams** ([`EventStore::append_streams`]) are one
//!   request of several parts to the same appender: group-committed with
//!   the other requests, in the same transaction, their parts planned all
//!   or nothing and written at consecutive positions.
//! - **Idempotency keys** live in the `idempotency_keys` table (primary key
//!   `key`). The appender checks a request's key under the append lock and
//!   inserts it, with the append's outcome, in the same transaction as the
//!   events; keys claimed earlier in the same group commit count as recorded.
//!   So a key is recorded if and only if its append committed, across
//!   retries, crashes, concurrent duplicates and processes.
//! - **Live delivery** through `LISTEN/NOTIFY` on channel
//!   `marketplace_events`; appends in this process also wake local
//!   subscribers directly, and those subscribers read the rows the
//!   appender just committed from memory (`recent.rs`: a bounded, gap-free
//!   run; anything it does not hold is read from the table), so five
//!   projections and three process managers do not each query and decode
//!   every new row. `read_all`, what audits read, always reads the table.

mod appender;
mod heads;
mod recent;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::StoreError;
use crate::event::{
    check_storable, AppendOutcome, EventMetadata, ExpectedRevision, IdempotencyKey,
    IdempotencyRecord, NewEvent, Position, RecordedEvent, Snapshot, StreamAppend, StreamId,
};
use crate::memory::check_parts;
use crate::port::{EventStore, EventStream, SharedEventStream};
use crate::subscription::{catch_up_then_live, PAGE};

pub use appender::GroupCommitLimits;

/// The NOTIFY channel announcing committed positions.
pub const NOTIFY_CHANNEL: &str = "marketplace_events";

/// Applies the event store's migrations (idempotent; safe to run from several
/// processes at once).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // Other crates keep their own migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Backend(format!("event store migration failed: {e}")))
}

/// Aborts background tasks when the last handle to the store is dropped.
struct TaskGuard(Vec<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The Postgres event store. Cheap to clone (shared).
#[derive(Clone)]
pub struct PostgresEventStore {
    pool: PgPool,
    appender: mpsc::Sender<appender::Request>,
    commits: watch::Sender<Position>,
    /// The newest events this process appended, for its own subscribers.
    recent: Arc<recent::RecentEvents>,
    _tasks: Arc<TaskGuard>,
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore").finish_non_exhaustive()
    }
}

impl PostgresEventStore {
    /// Connects the store to a migrated database (see [`migrate`]) and starts
    /// its appender and listener tasks on the current Tokio runtime.
    pub async fn new(pool: PgPool) -> Result<Self, StoreError> {
        Self::with_limits(pool, GroupCommitLimits::default()).await
    }

    /// Like [`PostgresEventStore::new`] with explicit group-commit limits.
    pub async fn with_limits(pool: PgPool, limits: GroupCommitLimits) -> Result<Self, StoreError> {
        let (commits, _) = watch::channel(Position::START);
        // LISTEN before returning, so no commit after `new` can go unannounced.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let (tx, rx) = mpsc::channel(limits.max_requests * 4);
        let recent = Arc::new(recent::RecentEvents::default());
        let listen_task = tokio::spawn(listen(listener, commits.clone(), recent.clone()));
        let append_task = tokio::spawn(appender::run(
            pool.clone(),
            rx,
            commits.clone(),
            limits,
            recent.clone(),
        ));
        Ok(Self {
            pool,
            appender: tx,
            commits,
            recent,
            _tasks: Arc::new(TaskGuard(vec![
                listen_task.abort_handle(),
                append_task.abort_handle(),
            ])),
        })
    }

    /// The pool this store reads through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends like [`EventStore::append`], but on its own connection, and
    /// after taking its positions it signals `at_gate` and keeps the
    /// transaction open until `release` fires. Test support for the
    /// delayed-commit conformance test; never used on the serving path.
    pub async fn append_with_commit_gate(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError> {
        check_storable(&events, None)?;
        let mut tx = appender::begin_locked(&self.pool).await?;
        let mut results = appender::write_batch(
            &mut tx,
            vec![appender::Batched::single(stream, expected, events, None)],
        )
        .await?;
        let _ = at_gate.send(());
        let _ = release.await;
        tx.commit().await?;
        let result = results
            .pop()
            .unwrap_or(Err(StoreError::EmptyAppend))
            .and_then(|mut outcomes| outcomes.pop().ok_or(StoreError::EmptyAppend));
        if let Ok(outcome) = &result {
            self.commits
                .send_modify(|p| *p = (*p).max(outcome.position));
        }
        result
    }

    /// Hands one append request to the appender task and waits for its
    /// outcomes (one per part).
    async fn submit(&self, batched: appender::Batched) -> Result<Vec<AppendOutcome>, StoreError> {
        // On the caller's task, so a refused request never reaches a batch
        // and the walk costs the serialised appender nothing.
        check_parts(&batched.parts)?;
        check_storable(&[], batched.idempotency.as_ref())?;
        for part in &batched.parts {
            check_storable(&part.events, None)?;
        }
        let (reply, outcome) = oneshot::channel();
        self.appender
            .send(appender::Request { batched, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the appender has stopped".into()))?;
        outcome
            .await
            .map_err(|_| StoreError::Unavailable("the appender dropped the request".into()))?
    }

    /// Submits a one-stream append: its one outcome.
    async fn submit_single(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut outcomes = self
            .submit(appender::Batched::single(stream, expected, events, key))
            .await?;
        outcomes.pop().ok_or(StoreError::EmptyAppend)
    }
}

async fn listen(
    mut listener: PgListener,
    commits: watch::Sender<Position>,
    recent: Arc<recent::RecentEvents>,
) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                let pos = n.payload().parse().map(Position).unwrap_or(Position::START);
                commits.send_modify(|p| *p = (*p).max(pos));
            }
            // The pool is closing: give its connection back (`close()`
            // waits for every checked-out connection) and stop listening.
            Err(sqlx::Error::PoolClosed) => {
                recent.forget();
                commits.send_modify(|_| {});
                return;
            }
            Err(e) => {
                // The listener reconnects on the next recv; notifications sent
                // meanwhile are lost, so wake every subscriber to re-read.
                tracing::warn!(error = %e, "event notification listener lost its connection");
                // Another process's commits may have gone unannounced: the
                // in-memory tail can no longer say "nothing newer".
                recent.forget();
                commits.send_modify(|_| {});
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

const SELECT_EVENT: &str = "SELECT stream_id, revision, position, event_id, event_type, \
     schema_version, data, metadata, recorded_at FROM events";

fn decode_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream: String = row.try_get("stream_id")?;
    let revision: i64 = row.try_get("revision")?;
    let position: i64 = row.try_get("position")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    let metadata: serde_json::Value = row.try_get("metadata")?;
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
    let mut metadata: EventMetadata = serde_json::from_value(metadata)
        .map_err(|e| StoreError::Decode(format!("metadata of {stream}@{revision}: {e}")))?;
    metadata.recorded_at = Some(recorded_at);
    Ok(RecordedEvent {
        stream_id: StreamId::parse(&stream).map_err(|e| StoreError::Decode(e.to_string()))?,
        revision: u64::try_from(revision).map_err(|e| StoreError::Decode(e.to_string()))?,
        position: Position(u64::try_from(position).map_err(|e| StoreError::Decode(e.to_string()))?),
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|e| StoreError::Decode(e.to_string()))?,
        data: row.try_get("data")?,
        metadata,
    })
}

const SELECT_IDEMPOTENCY: &str =
    "SELECT key, request_hash, stream_id, revision, position, recorded_at FROM idempotency_keys";

fn decode_idempotency_row(row: &PgRow) -> Result<IdempotencyRecord, StoreError> {
    let key: String = row.try_get("key")?;
    let stream: String = row.try_get("stream_id")?;
    let revision: i64 = row.try_get("revision")?;
    let position: i64 = row.try_get("position")?;
    let decode =
        |e: &dyn std::fmt::Display| StoreError::Decode(format!("idempotency key {key:?}: {e}"));
    Ok(IdempotencyRecord {
        request_hash: row.try_get("request_hash")?,
        stream_id: StreamId::parse(&stream).map_err(|e| decode(&e))?,
        revision: u64::try_from(revision).map_err(|e| decode(&e))?,
        position: Position(u64::try_from(position).map_err(|e| decode(&e))?),
        recorded_at: row.try_get("recorded_at")?,
        key,
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads up to `limit` events after `from` (shared by `read_all` and subscriptions).
async fn read_page(
    pool: &PgPool,
    from: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!("{SELECT_EVENT} WHERE position > $1 ORDER BY position LIMIT $2");
    let rows = sqlx::query(&sql)
        .bind(to_i64(from.0))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode_row).collect()
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.submit_single(stream, expected, events, None).await
    }

    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        self.submit_single(stream, expected, events, Some(key))
            .await
    }

    fn multi_stream_appends(&self) -> bool {
        true
    }

    async fn append_streams(
        &self,
        parts: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.submit(appender::Batched {
            parts,
            idempotency: key,
        })
        .await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let sql = format!("{SELECT_IDEMPOTENCY} WHERE key = $1");
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_idempotency_row).transpose()
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql =
            format!("{SELECT_EVENT} WHERE stream_id = $1 AND revision >= $2 ORDER BY revision");
        let rows = sqlx::query(&sql)
            .bind(stream.as_str())
            .bind(to_i64(from_revision))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "{SELECT_EVENT} WHERE stream_id = $1 AND revision >= $2 ORDER BY revision LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(stream.as_str())
            .bind(to_i64(from_revision))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Always the table: audits (`audit verify`) read the log through
        // this, and must see what is stored, not what was appended.
        read_page(&self.pool, from, limit).await
    }

    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        // The shared subscription, each event copied out of the tail.
        Ok(Box::pin(
            self.subscribe_all_shared(from)
                .await?
                .map(|item| item.map(Arc::unwrap_or_clone)),
        ))
    }

    async fn subscribe_all_shared(&self, from: Position) -> Result<SharedEventStream, StoreError> {
        let (pool, recent) = (self.pool.clone(), self.recent.clone());
        let announced = self.commits.subscribe();
        Ok(catch_up_then_live(
            move |pos| {
                let (pool, recent) = (pool.clone(), recent.clone());
                // At the newest event, with nothing newer announced: wait
                // for the next announcement rather than ask Postgres.
                let idle = recent.is_newest(pos, *announced.borrow());
                async move {
                    if idle {
                        return Ok(Vec::new());
                    }
                    match recent.read(pos, PAGE) {
                        Some(events) => Ok(events),
                        None => Ok(read_page(&pool, pos, PAGE)
                            .await?
                            .into_iter()
                            .map(Arc::new)
                            .collect()),
                    }
                }
            },
            from,
            self.commits.subscribe(),
        ))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(Position(max.map_or(0, |m| u64::try_from(m).unwrap_or(0))))
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, i64, i32, serde_json::Value)> = sqlx::query_as(
            "SELECT revision, position, version, state FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(revision, position, version, state)| Snapshot {
            revision: u64::try_from(revision).unwrap_or(0),
            position: Position(u64::try_from(position).unwrap_or(0)),
            version: u32::try_from(version).unwrap_or(0),
            state,
        }))
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, revision, position, version, state) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (stream_id) DO UPDATE SET revision = EXCLUDED.revision, \
                 position = EXCLUDED.position, version = EXCLUDED.version, \
                 state = EXCLUDED.state, taken_at = now() \
             WHERE snapshots.revision <= EXCLUDED.revision \
                OR snapshots.version <> EXCLUDED.version",
        )
        .bind(stream.as_str())
        .bind(to_i64(snapshot.revision))
        .bind(to_i64(snapshot.position.0))
        .bind(i32::try_from(snapshot.version).unwrap_or(i32::MAX))
        .bind(&snapshot.state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
