//! The serialising appender with group commit.
//!
//! One task per process owns the write path. It takes the first queued
//! request, drains whatever else is already waiting (up to the limits),
//! yielding while that brings more, and writes the lot in one transaction
//! under the global append lock. Each
//! request is planned on its own — idempotency key, expected revision,
//! idempotent retry, hash chain — against the stored state plus the requests
//! planned before it in the same batch, so a conflict refuses only its own
//! request. The idempotency keys of the requests that succeed are inserted in
//! the same transaction as the events: a key is recorded exactly when its
//! append commits, and a second request with a key claimed earlier in the same
//! batch is refused with the first one's record.
//!
//! **A request has one part per stream.** A single append is a one-part
//! request; an [`EventStore::append_streams`](crate::EventStore::append_streams)
//! is a request of several parts, group-committed with the others like any
//! request, and answered with one outcome per part. Its parts are planned
//! one after the other (`plan_parts`, each part through `plan_append`, so
//! each stream's hash chain continues its own) and take consecutive
//! positions, all or nothing: if any part is refused (wrong expected
//! revision, duplicate event id, a stream named twice, an empty part), the
//! request fails with that part's error and leaves the batch's working state
//! — the position counter, the streams' heads, the stored ids, the rows to
//! insert — as if it had never been planned, so positions stay gap-free and
//! the requests after it plan without it. Every part already stored is an
//! idempotent retry (the stored outcomes); some but not all is
//! `DuplicateEventId`. Its key's record names the first part's stream and
//! revision and the request's highest position.
//!
//! **One request's bad data fails only that request.** Text Postgres cannot
//! store (U+0000) is refused before a request is queued (`check_storable`,
//! on the caller's task). Any other refusal of the data — an SQLSTATE that
//! `StoreError`'s conversion classes as the request's own fault (classes 22
//! and 54, class 23 except `23505`) and so turns into
//! [`StoreError::Rejected`] — rolls the whole batch back, and the appender
//! then writes the same requests again in queue order, each in a transaction
//! of its own with the same lock, planning and key handling. The refused
//! request answers `Rejected`; the others commit, each planned against what
//! the ones before it committed (so a later request of the batch that
//! expected the refused one's events gets a conflict, and a key only the
//! refused one carried stays free). Positions stay gap-free: they are taken
//! as the stored maximum plus one under the lock, and the rolled-back batch's
//! were never visible. Each one-by-one commit advances the `commits`
//! watermark and NOTIFYs like a batch. Infrastructure failures (connection
//! lost, pool timeout, `57P01` admin shutdown, …) do not fall back: every
//! request of the batch — or of the rest of a fallback — gets the same
//! retryable error, as before, and callers retry with the same event ids.
//! A lone request never falls back: its failure is its own. A multi-part
//! request is one request here too: it commits or is refused as a whole.
//!
//! **Planning skips what the appender already knows.** It keeps the log's
//! top position after its own last commit and the heads of the streams it
//! wrote (`heads.rs`). The planning lookup reads the stored top under the
//! lock; while it is still the one recorded, nobody else has appended, so
//! the held heads are the stored ones and only the other streams' heads are
//! probed. The event ids are then left to the `UNIQUE(event_id)` index: an
//! id it finds stored, or a refusal on a held head (which a retry of a
//! committed append would also get), rolls the batch back and plans it
//! again with everything looked up, so retries and duplicates answer as
//! before. Anything else that fails forgets the heads.
//!
//! **A warm batch is one round trip** (`write_warm`). When the appender
//! holds the head of every stream a batch writes (or the part expects a new
//! stream) and no request carries an idempotency key, it plans the batch on what it holds alone and sends one
//! statement outside any transaction block: `events_append_at` (migration
//! `10004`) takes the append lock, checks the stored top is the one the
//! heads were recorded at, and inserts the rows with the NOTIFY; the
//! statement's own transaction commits before it answers. A moved top (another
//! writer appended), an id or a "new" stream found stored (by the `UNIQUE`
//! indexes), or a refusal on a held head writes
//! nothing and replans the batch the long way (`BEGIN` with the lock, the
//! planning lookup, the INSERT, `COMMIT`: four round trips).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::heads::{Head, Heads};
use super::recent::RecentEvents;
use crate::error::StoreError;
use crate::event::{
    AppendOutcome, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent, Position,
    RecordedEvent, StreamAppend, StreamId,
};
use crate::memory::{key_record, plan_parts, PartsPlan, PlanState};

/// The key of the transaction-scoped advisory lock every append takes
/// ("mkt-log" in ASCII). All writers in all processes share it.
const APPEND_LOCK_KEY: i64 = 0x006d_6b74_2d6c_6f67;

/// Begins a transaction holding the global append lock, in one round trip
/// (`BEGIN`, the plan setting and the lock as one simple query). The
/// statements after it see every append committed before the lock was
/// granted.
///
/// The appender's statements are prepared once per connection and run on
/// their generic plan (`plan_cache_mode = force_generic_plan`), planned
/// without sequential scans (`enable_seqscan = off`). Planning the
/// id/head lookup per call was most of its server time; and a generic plan
/// made while the table was small (a fresh database) would otherwise scan
/// the whole table for the rest of the connection's life. Without
/// sequential scans every lookup goes through the `event_id`,
/// `(stream_id, revision)` and position indexes, whatever the table's size
/// when the plan was made.
pub(crate) async fn begin_locked(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    Ok(pool.begin_with(LOCKED_BEGIN.as_str()).await?)
}

/// `BEGIN`, the plan settings and the append lock, as one simple query
/// (see [`begin_locked`]).
static LOCKED_BEGIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
         SET LOCAL enable_seqscan = off; \
         SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"
    )
});

/// The appender's own connection, taken from the pool when first needed
/// and kept: a batch neither waits on the pool nor pays the round trip
/// with which sqlx tests every connection given back to it. A transaction
/// that ended in anything but a clean commit or rollback gives it up, and
/// the next batch takes a fresh one.
pub(crate) struct Link {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
    /// The last transaction on `conn` ended uncleanly: take another.
    broken: bool,
}

impl Link {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            conn: None,
            broken: false,
        }
    }
}

/// Begins a transaction holding the append lock on `link`'s kept
/// connection (see [`begin_locked`]), taking one from the pool first if it
/// has none or the last was given up. After a failure the caller marks
/// the link broken.
async fn begin_on<'c>(
    pool: &PgPool,
    conn: &'c mut Option<PoolConnection<Postgres>>,
    broken: bool,
) -> Result<sqlx::Transaction<'c, Postgres>, StoreError> {
    if broken {
        *conn = None;
    }
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(pool.acquire().await?),
    };
    Ok(sqlx::Connection::begin_with(&mut **conn, LOCKED_BEGIN.as_str()).await?)
}

/// How much one group commit may carry.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitLimits {
    /// Most append requests in one transaction.
    pub max_requests: usize,
    /// Most events in one transaction (a single larger request still goes alone).
    pub max_events: usize,
}

impl Default for GroupCommitLimits {
    fn default() -> Self {
        Self {
            max_requests: 256,
            max_events: 4_096,
        }
    }
}

/// How many times the appender yields, before writing a batch, to let
/// writers that are already woken queue their requests; it stops at the
/// first yield after which nothing is queued.
const MAX_GATHER_YIELDS: usize = 8;

/// One append request, as the batch writer sees it: one part per stream
/// (a single append is a one-part request), committed or refused as a
/// whole.
#[derive(Clone)]
pub(crate) struct Batched {
    pub parts: Vec<StreamAppend>,
    /// The idempotency key to record with the append's outcome, if any.
    pub idempotency: Option<IdempotencyKey>,
}

impl Batched {
    /// A one-stream append.
    pub fn single(
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        idempotency: Option<IdempotencyKey>,
    ) -> Self {
        Self {
            parts: vec![StreamAppend {
                stream: stream.clone(),
                expected,
                events,
            }],
            idempotency,
        }
    }

    /// How many events the request carries, over all its parts.
    pub fn events(&self) -> usize {
        self.parts.iter().map(|p| p.events.len()).sum()
    }
}

/// One request's outcome: one per part, in part order.
pub(crate) type Outcomes = Result<Vec<AppendOutcome>, StoreError>;

/// Where the appender sends one request's outcome.
pub(crate) type Reply = oneshot::Sender<Outcomes>;

/// One append waiting for the appender, with where to send its outcome.
pub(crate) struct Request {
    pub batched: Batched,
    pub reply: Reply,
}

/// The appender loop: runs until every sender is gone.
pub(crate) async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Request>,
    commits: watch::Sender<Position>,
    limits: GroupCommitLimits,
    recent: Arc<RecentEvents>,
) {
    let mut heads = Heads::default();
    let mut link = Link::new(pool);
    while let Some(first) = rx.recv().await {
        let mut events = first.batched.events();
        let mut batch = vec![first];
        // Drain what is queued; then, as long as yielding to the tasks
        // already woken brings more (the writers the last commit answered,
        // coming back), drain again. Without it the writers one commit
        // answered come back split: the first alone in a batch of one, the
        // rest in the next, behind it (half the batches held one request).
        for _ in 0..MAX_GATHER_YIELDS {
            while batch.len() < limits.max_requests && events < limits.max_events {
                match rx.try_recv() {
                    Ok(r) => {
                        events += r.batched.events();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() >= limits.max_requests || events >= limits.max_events {
                break;
            }
            tokio::task::yield_now().await;
            if rx.is_empty() {
                break;
            }
        }
        let (work, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.batched, r.reply)).unzip();
        // A lone request never falls back: a refusal is its own.
        match commit_batch(&mut link, &recent, &mut heads, &work).await {
            Ok((results, rows)) => {
                recent.push(rows);
                deliver(&commits, replies, results);
            }
            Err(e @ StoreError::Rejected { .. }) if work.len() > 1 => {
                tracing::warn!(
                    error = %e,
                    requests = replies.len(),
                    "group commit refused one request's data; committing its requests one by one"
                );
                commit_one_by_one(&mut link, &commits, &recent, &mut heads, work, replies).await;
            }
            Err(e) => fail(&commits, replies, &e),
        }
    }
}

/// Answers each request of a committed transaction and announces its top
/// position to local subscribers.
fn deliver(commits: &watch::Sender<Position>, replies: Vec<Reply>, results: Vec<Outcomes>) {
    let top = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .map(|o| o.position)
        .max();
    if let Some(top) = top {
        commits.send_modify(|p| *p = (*p).max(top));
    }
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Answers every request of a transaction that failed with the same error.
/// Also wakes every local subscriber: one waiting for this transaction's
/// rows in memory asks the table instead (a commit whose outcome is unknown
/// may have happened).
fn fail(commits: &watch::Sender<Position>, replies: Vec<Reply>, e: &StoreError) {
    tracing::warn!(error = %e, requests = replies.len(), "group commit failed");
    commits.send_modify(|_| {});
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// The second line of defence: after a batch failed on one request's data,
/// writes its requests again in queue order, each in a transaction of its
/// own, so that only the refused request fails. Each transaction plans
/// against what the ones before it committed. An infrastructure failure
/// stops the fallback and fails the request it hit and all those after it.
async fn commit_one_by_one(
    link: &mut Link,
    commits: &watch::Sender<Position>,
    recent: &RecentEvents,
    heads: &mut Heads,
    work: Vec<Batched>,
    replies: Vec<Reply>,
) {
    let mut pending = work.into_iter().zip(replies);
    while let Some((w, reply)) = pending.next() {
        match commit_batch(link, recent, heads, std::slice::from_ref(&w)).await {
            Ok((results, rows)) => {
                recent.push(rows);
                deliver(commits, vec![reply], results);
            }
            Err(e @ StoreError::Rejected { .. }) => {
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                fail(
                    commits,
                    std::iter::once(reply)
                        .chain(pending.map(|(_, r)| r))
                        .collect(),
                    &e,
                );
                return;
            }
        }
    }
}

/// Writes `work` in one transaction and commits it. A data error
/// ([`StoreError::Rejected`]) means the transaction rolled back: nothing of
/// any request was written, and the positions it had taken were never
/// visible, so the fallback takes them again. A lost connection may leave
/// the commit's outcome unknown; that is `Unavailable`, which never falls
/// back, and callers resolve it by retrying the same event ids.
///
/// Planned on valid `heads` (see [`Heads`]), a batch that meets what a
/// stored event id could explain ([`WriteError::Replan`]) is rolled back and
/// written once more with every id looked up. A commit records its top position and heads in `heads`;
/// any failure forgets them.
///
/// While the commit is in flight its top position is marked in `recent`
/// (see [`RecentEvents::committing`]); the caller pushes the rows after a
/// success, and a failure clears the mark here.
async fn commit_batch(
    link: &mut Link,
    recent: &RecentEvents,
    heads: &mut Heads,
    work: &[Batched],
) -> Result<(Vec<Outcomes>, Vec<RecordedEvent>), StoreError> {
    let result = match try_commit(link, recent, heads, work).await {
        Err(WriteError::Replan) => {
            heads.forget();
            try_commit(link, recent, heads, work).await
        }
        other => other,
    };
    match result {
        Ok(written) => {
            heads.committed(written.top, written.heads);
            Ok((written.results, written.rows))
        }
        Err(e) => {
            heads.forget();
            Err(e.into_store())
        }
    }
}

/// One transaction of [`commit_batch`].
async fn try_commit(
    link: &mut Link,
    recent: &RecentEvents,
    heads: &Heads,
    work: &[Batched],
) -> Result<Written, WriteError> {
    if warm(work, heads) {
        return write_warm(link, recent, heads, work).await;
    }
    let broken = std::mem::take(&mut link.broken);
    let mut tx = match begin_on(&link.pool, &mut link.conn, broken).await {
        Ok(tx) => tx,
        Err(e) => {
            link.broken = true;
            return Err(e.into());
        }
    };
    match write_batch_rows(&mut tx, work, heads).await {
        Ok(written) => {
            if let Some(top) = written.rows.last() {
                recent.committing(top.position);
            }
            if let Err(e) = tx.commit().await {
                recent.committed_or_not();
                link.broken = true;
                return Err(e.into());
            }
            Ok(written)
        }
        Err(e) => {
            // Release the append lock now: the fallback's first transaction
            // waits for it. If the connection is gone, so is the
            // transaction, and the next batch takes another.
            if tx.rollback().await.is_err() {
                link.broken = true;
            }
            Err(e)
        }
    }
}

/// Writes a batch of appends inside the caller's transaction, which holds
/// the global append lock (begun by [`begin_locked`]), looking up every
/// head and id. Returns one result per request (one outcome per part), in
/// order; the transaction is left open for the caller to commit.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    work: Vec<Batched>,
) -> Result<Vec<Outcomes>, StoreError> {
    write_batch_rows(conn, &work, &Heads::default())
        .await
        .map(|w| w.results)
        .map_err(WriteError::into_store)
}

/// What planning a batch reads, in one statement, after the append lock:
/// the log's top position (kind 2); the heads (last revision and hash) of
/// the streams the appender holds none for (`$2`, kind 1); and, only when
/// the stored top is not the one the appender's [`Heads`] were recorded at
/// (`$3`, -1 when it holds none), also the heads of the streams it does
/// hold (`$4`) and the appended ids already stored (`$1`, kind 0). Those two
/// branches are gated on a one-time filter, so while the heads are valid
/// their index probes never run.
const PLANNING_LOOKUP: &str =
    "SELECT 0 AS kind, event_id, stream_id, revision, position, NULL::text AS hash \
       FROM events \
      WHERE event_id = ANY($1) \
        AND (SELECT coalesce(max(position), 0) FROM events) <> $3::bigint \
     UNION ALL \
     SELECT 1, NULL::uuid, s.stream_id, e.revision, NULL::bigint, e.metadata->>'hash' \
       FROM unnest($2::text[]) AS s(stream_id) \
       CROSS JOIN LATERAL ( \
           SELECT revision, metadata FROM events \
           WHERE events.stream_id = s.stream_id ORDER BY revision DESC LIMIT 1 \
       ) e \
     UNION ALL \
     SELECT 1, NULL::uuid, s.stream_id, e.revision, NULL::bigint, e.metadata->>'hash' \
       FROM unnest($4::text[]) AS s(stream_id) \
       CROSS JOIN LATERAL ( \
           SELECT revision, metadata FROM events \
           WHERE events.stream_id = s.stream_id ORDER BY revision DESC LIMIT 1 \
       ) e \
      WHERE (SELECT coalesce(max(position), 0) FROM events) <> $3::bigint \
     UNION ALL \
     SELECT 2, NULL::uuid, NULL::text, NULL::bigint, max(position), NULL::text FROM events";

/// What writing a batch produced, for the caller to commit.
pub(crate) struct Written {
    /// One result per request, in order.
    pub results: Vec<Outcomes>,
    /// The rows inserted, in position order.
    pub rows: Vec<RecordedEvent>,
    /// The log's top position once this commits.
    pub top: u64,
    /// Every head planning saw or wrote, as they stand once this commits.
    pub heads: HashMap<StreamId, Head>,
}

/// Why writing a batch stopped.
pub(crate) enum WriteError {
    /// The store's error, for the requests.
    Store(StoreError),
    /// Planned without looking the ids up (valid [`Heads`]), the batch met
    /// what a stored id could explain: the insert found one already stored,
    /// or a request was refused a wrong expected revision (as a retry of a
    /// committed append would be). Roll back and plan again with every id
    /// looked up.
    Replan,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl WriteError {
    /// As the store's error. `Replan` only comes from a batch planned on
    /// valid heads; anywhere else a stored id is the store's own invariant
    /// broken, as any other unique violation would be.
    fn into_store(self) -> StoreError {
        match self {
            Self::Store(e) => e,
            Self::Replan => {
                StoreError::Backend("an appended event id was stored concurrently".into())
            }
        }
    }
}

/// Writes a batch of appends inside the caller's transaction, which holds
/// the global append lock (begun by [`begin_locked`]), planned against
/// `heads` where they are still valid (see [`Heads`]). The transaction is
/// left open for the caller to commit.
async fn write_batch_rows(
    conn: &mut PgConnection,
    work: &[Batched],
    heads: &Heads,
) -> Result<Written, WriteError> {
    let ids: Vec<Uuid> = work
        .iter()
        .flat_map(|w| &w.parts)
        .flat_map(|p| p.events.iter().map(|e| e.event_id))
        .collect();
    let mut streams: Vec<&StreamId> = work
        .iter()
        .flat_map(|w| &w.parts)
        .map(|p| &p.stream)
        .collect();
    streams.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    streams.dedup();
    let (held, unheld): (Vec<&StreamId>, Vec<&StreamId>) =
        streams.into_iter().partition(|s| heads.get(s).is_some());
    let as_text = |s: &[&StreamId]| s.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>();
    // One round trip for what planning needs (see `PLANNING_LOOKUP`).
    // Prepared once per connection, on an index-only generic plan (see
    // `begin_locked`). The batch's working state: what is stored, then
    // also what the requests planned before in this batch will write.
    let mut state = PlanState::default();
    let mut head: Option<i64> = None;
    for row in sqlx::query(PLANNING_LOOKUP)
        .bind(&ids)
        .bind(as_text(&unheld))
        .bind(heads.expected_top())
        .bind(as_text(&held))
        .fetch_all(&mut *conn)
        .await?
    {
        let kind: i32 = row.try_get("kind")?;
        if kind == 2 {
            head = row.try_get("position")?;
            continue;
        }
        let stream: String = row.try_get("stream_id")?;
        let stream = StreamId::parse(&stream).map_err(|e| StoreError::Decode(e.to_string()))?;
        let revision = u64::try_from(row.try_get::<i64, _>("revision")?).unwrap_or(0);
        if kind == 0 {
            state.existing.insert(
                row.try_get("event_id")?,
                (
                    stream,
                    revision,
                    Position(u64::try_from(row.try_get::<i64, _>("position")?).unwrap_or(0)),
                ),
            );
        } else {
            state
                .current
                .insert(stream, (revision, row.try_get("hash")?));
        }
    }
    let stored_top = head.map(|h| u64::try_from(h).unwrap_or(0));
    state.next = stored_top.unwrap_or(0);
    // Valid heads: the lookup skipped the held streams and the ids, so the
    // held heads are the stored ones and the ids are left to the insert.
    let unprobed_ids = heads.still_valid(stored_top);
    if unprobed_ids {
        for s in held {
            if let Some(h) = heads.get(s) {
                state.current.insert(s.clone(), h.clone());
            }
        }
    }

    // Keys recorded before this batch, then also those claimed by the
    // requests planned earlier in it.
    let keys: Vec<&str> = work
        .iter()
        .filter_map(|w| w.idempotency.as_ref().map(|k| k.key.as_str()))
        .collect();
    let mut claimed: HashMap<String, IdempotencyRecord> = HashMap::new();
    if !keys.is_empty() {
        let sql = format!("{} WHERE key = ANY($1)", super::SELECT_IDEMPOTENCY);
        for row in sqlx::query(&sql).bind(&keys).fetch_all(&mut *conn).await? {
            let record = super::decode_idempotency_row(&row)?;
            claimed.insert(record.key.clone(), record);
        }
    }
    let Planned { written, new_keys } = plan_batch(work, state, claimed, unprobed_ids)?;

    if !new_keys.is_empty() {
        insert_keys(conn, new_keys).await?;
    }
    if let Some(last) = written.rows.last().map(|r| r.position) {
        insert_rows(conn, &written.rows, last, unprobed_ids).await?;
    }
    Ok(written)
}

/// A batch planned: what it writes, and the idempotency records to insert
/// with it.
struct Planned {
    written: Written,
    new_keys: Vec<IdempotencyRecord>,
}

/// Plans each request of `work` in turn against `state` (what is stored,
/// then also what the requests before it will write) and the keys already
/// `claimed`. With `unprobed_ids` (valid heads, ids not looked up), a
/// refusal on a held head is [`WriteError::Replan`].
fn plan_batch(
    work: &[Batched],
    mut state: PlanState,
    mut claimed: HashMap<String, IdempotencyRecord>,
    unprobed_ids: bool,
) -> Result<Planned, WriteError> {
    // Postgres keeps microseconds: truncate so a record handed out from this
    // batch equals the one read back later.
    let now = Utc::now();
    let recorded_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);

    let mut results = Vec::with_capacity(work.len());
    let mut rows: Vec<RecordedEvent> = Vec::new();
    let mut new_keys: Vec<IdempotencyRecord> = Vec::new();
    for w in work {
        let key = w.idempotency.clone();
        if let Some(record) = key.as_ref().and_then(|k| claimed.get(&k.key)) {
            results.push(Err(StoreError::IdempotencyKeyUsed(Box::new(
                record.clone(),
            ))));
            continue;
        }
        let first_stream = key
            .as_ref()
            .and_then(|_| w.parts.first().map(|p| p.stream.clone()));
        let outcomes = match plan_parts(w.parts.clone(), &mut state) {
            Ok(PartsPlan::AlreadyStored(outcomes)) => outcomes,
            Ok(PartsPlan::Write {
                outcomes,
                rows: new_rows,
            }) => {
                rows.extend(new_rows);
                outcomes
            }
            // Refused on a held head with the ids unprobed: an idempotent
            // retry of a committed append is refused just so, and only the
            // ids tell the two apart.
            Err(StoreError::WrongExpectedRevision { .. }) if unprobed_ids => {
                return Err(WriteError::Replan);
            }
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        if let (Some(key), Some(stream)) = (key, first_stream) {
            let record = key_record(key, stream, &outcomes, recorded_at);
            claimed.insert(record.key.clone(), record.clone());
            new_keys.push(record);
        }
        results.push(Ok(outcomes));
    }
    Ok(Planned {
        written: Written {
            results,
            rows,
            top: state.next,
            heads: state.current,
        },
        new_keys,
    })
}

async fn insert_keys(
    conn: &mut PgConnection,
    records: Vec<IdempotencyRecord>,
) -> Result<(), StoreError> {
    let n = records.len();
    let mut key = Vec::with_capacity(n);
    let mut request_hash = Vec::with_capacity(n);
    let mut stream_id = Vec::with_capacity(n);
    let mut revision = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    let mut recorded_at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    for r in records {
        key.push(r.key);
        request_hash.push(r.request_hash);
        stream_id.push(String::from(r.stream_id));
        revision.push(i64::try_from(r.revision).unwrap_or(i64::MAX));
        position.push(i64::try_from(r.position.0).unwrap_or(i64::MAX));
        recorded_at.push(r.recorded_at);
    }
    sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, stream_id, revision, position, \
                                       recorded_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::timestamptz[])",
    )
    .bind(key)
    .bind(request_hash)
    .bind(stream_id)
    .bind(revision)
    .bind(position)
    .bind(recorded_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The columns of rows to insert, as the arrays the statements unnest.
struct Columns {
    position: Vec<i64>,
    stream_id: Vec<String>,
    revision: Vec<i64>,
    event_id: Vec<Uuid>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    data: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl Columns {
    fn of(rows: &[RecordedEvent]) -> Result<Self, StoreError> {
        let n = rows.len();
        let mut c = Self {
            position: Vec::with_capacity(n),
            stream_id: Vec::with_capacity(n),
            revision: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
        };
        for r in rows {
            c.position
                .push(i64::try_from(r.position.0).unwrap_or(i64::MAX));
            c.stream_id.push(r.stream_id.as_str().to_owned());
            c.revision
                .push(i64::try_from(r.revision).unwrap_or(i64::MAX));
            c.event_id.push(r.event_id);
            c.schema_version
                .push(i32::try_from(r.schema_version).unwrap_or(i32::MAX));
            c.recorded_at.push(r.recorded_at());
            c.metadata.push(
                serde_json::to_value(&r.metadata)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            );
            c.event_type.push(r.event_type.clone());
            c.data.push(r.data.clone());
        }
        Ok(c)
    }

    /// Binds the nine arrays, in the table's column order.
    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.position)
            .bind(self.stream_id)
            .bind(self.revision)
            .bind(self.event_id)
            .bind(self.event_type)
            .bind(self.schema_version)
            .bind(self.data)
            .bind(self.metadata)
            .bind(self.recorded_at)
    }
}

/// With `unprobed_ids`, an id the `UNIQUE(event_id)` index finds stored is
/// [`WriteError::Replan`]; so, with `unprobed_streams` (new streams planned
/// without looking them up), is a revision `UNIQUE(stream_id, revision)`
/// finds taken. Any other failure is the store's error.
fn insert_error(e: sqlx::Error, unprobed_ids: bool, unprobed_streams: bool) -> WriteError {
    match &e {
        sqlx::Error::Database(db)
            if (unprobed_ids && db.constraint() == Some("events_event_id_key"))
                || (unprobed_streams && db.constraint() == Some("events_stream_revision_key")) =>
        {
            WriteError::Replan
        }
        _ => e.into(),
    }
}

/// Inserts `rows` and NOTIFYs `last` to other processes' subscribers, in
/// one statement. With `unprobed_ids` (planned without looking the ids up),
/// an id the `UNIQUE(event_id)` index finds stored is
/// [`WriteError::Replan`].
async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[RecordedEvent],
    last: Position,
    unprobed_ids: bool,
) -> Result<(), WriteError> {
    Columns::of(rows)?
        .bind(sqlx::query(
            "WITH inserted AS ( \
                 INSERT INTO events (position, stream_id, revision, event_id, event_type, \
                                     schema_version, data, metadata, recorded_at) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], \
                                      $5::text[], $6::int[], $7::jsonb[], $8::jsonb[], \
                                      $9::timestamptz[]) \
             ) \
             SELECT pg_notify($10, $11)",
        ))
        .bind(super::NOTIFY_CHANNEL)
        .bind(last.0.to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| insert_error(e, unprobed_ids, false))?;
    Ok(())
}

/// Whether `work` can be written by [`write_warm`]: the appender knows the
/// log's top, no request carries an idempotency key (keys are looked up
/// under the lock), and every part writes a stream whose head it holds or
/// expects a stream that does not exist yet (planned as new, and checked by
/// `UNIQUE(stream_id, revision)` on insert).
fn warm(work: &[Batched], heads: &Heads) -> bool {
    heads.expected_top() >= 0
        && work.iter().all(|w| {
            w.idempotency.is_none()
                && w.parts.iter().all(|p| {
                    p.expected == ExpectedRevision::NoStream || heads.get(&p.stream).is_some()
                })
        })
}

/// Writes a [`warm`] batch in one round trip: planned on the held heads
/// alone, then one statement outside any transaction block (so it commits
/// as it returns) calls `events_append_at`, which takes the append lock,
/// checks that the stored top is still the heads' and inserts the rows with
/// the NOTIFY. Another writer's append in between, an id found stored, a
/// "new" stream found stored, or a refusal on a held head is
/// [`WriteError::Replan`]: nothing was written, and the caller plans again
/// with everything looked up.
async fn write_warm(
    link: &mut Link,
    recent: &RecentEvents,
    heads: &Heads,
    work: &[Batched],
) -> Result<Written, WriteError> {
    let top = heads.expected_top();
    let mut state = PlanState {
        next: u64::try_from(top).unwrap_or(0),
        ..PlanState::default()
    };
    for p in work.iter().flat_map(|w| &w.parts) {
        if let Some(h) = heads.get(&p.stream) {
            state.current.insert(p.stream.clone(), h.clone());
        }
    }
    let Planned { written, .. } = plan_batch(work, state, HashMap::new(), true)?;
    let Some(last) = written.rows.last().map(|r| r.position) else {
        return Ok(written);
    };
    let columns = Columns::of(&written.rows)?;
    if std::mem::take(&mut link.broken) {
        link.conn = None;
    }
    let conn = match &mut link.conn {
        Some(conn) => conn,
        None => match link.pool.acquire().await {
            Ok(conn) => link.conn.insert(conn),
            Err(e) => {
                link.broken = true;
                return Err(e.into());
            }
        },
    };
    recent.committing(last);
    let appended = columns
        .bind(sqlx::query(
            "SELECT events_append_at($10, $11, $1, $2, $3, $4, $5, $6, $7, $8, $9, $12, $13)",
        ))
        .bind(top)
        .bind(APPEND_LOCK_KEY)
        .bind(super::NOTIFY_CHANNEL)
        .bind(last.0.to_string())
        .fetch_one(&mut **conn)
        .await
        .and_then(|row| row.try_get::<bool, _>(0));
    match appended {
        Ok(true) => Ok(written),
        Ok(false) => {
            recent.committed_or_not();
            Err(WriteError::Replan)
        }
        Err(e) => {
            recent.committed_or_not();
            // Only a stored id is known to leave the connection usable: a
            // failure may be the server's last word before it closed it
            // (`57P01`), and the next batch takes another.
            let e = insert_error(e, true, true);
            if !matches!(e, WriteError::Replan) {
                link.broken = true;
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use serde_json::json;
    use sqlx::{Postgres, Transaction};
    use tokio::sync::Barrier;

    use super::*;
    use crate::event::EventMetadata;
    use crate::{EventStore, PostgresEventStore};
    use marketplace_embedded_postgres::testdb::TestDatabase;

    /// Generous bound for "this must happen"; only reached when a test fails.
    const DEADLINE: Duration = Duration::from_secs(120);

    async fn migrated_pool() -> PgPool {
        let pool = TestDatabase::create().await.pool().await;
        super::super::migrate(&pool).await.expect("migrate");
        pool
    }

    fn stream() -> StreamId {
        StreamId::new("order", Uuid::now_v7()).expect("stream")
    }

    /// The plan kept for the connection's life is made on its first call,
    /// here on a log of twenty events (analysed): it must still go through
    /// the indexes, or it would scan the whole log on every batch once the
    /// log has grown. Planned as Postgres would by default, it is a
    /// sequential scan and a sort.
    #[tokio::test]
    async fn the_planning_lookup_plan_made_on_a_small_log_uses_the_indexes() {
        let pool = migrated_pool().await;
        sqlx::query(
            "INSERT INTO events SELECT g, 'order-' || gen_random_uuid(), 0, gen_random_uuid(), \
                    'test.happened', 1, '{}', '{}', now() FROM generate_series(1, 20) g",
        )
        .execute(&pool)
        .await
        .expect("a small log");
        sqlx::query("ANALYZE events")
            .execute(&pool)
            .await
            .expect("analyse");
        let mut tx = begin_locked(&pool).await.expect("begin");
        sqlx::query(&format!(
            "PREPARE planning_lookup(uuid[], text[], bigint, text[]) AS {PLANNING_LOOKUP}"
        ))
        .execute(&mut *tx)
        .await
        .expect("prepare");
        let plan: Vec<String> =
            sqlx::query_scalar("EXPLAIN EXECUTE planning_lookup('{}', '{}', -1, '{}')")
                .fetch_all(&mut *tx)
                .await
                .expect("explain");
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "a sequential scan:\n{plan}");
        // The id and held-head branches run only when the stored top is not
        // the appender's: a filter checked once, before their index scans.
        assert_eq!(
            plan.matches("One-Time Filter").count(),
            2,
            "the gated branches are not one-time filters:\n{plan}"
        );
        for index in [
            "events_event_id_key",
            "events_stream_revision_key",
            "events_pkey",
        ] {
            assert!(plan.contains(index), "{index} unused:\n{plan}");
        }
    }

    fn event(data: serde_json::Value) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "test.happened".into(),
            schema_version: 1,
            data,
            metadata: EventMetadata::default(),
        }
    }

    /// An event Postgres refuses although it holds no U+0000: the `events`
    /// table's `CHECK (schema_version > 0)`.
    fn event_refused_by_a_check() -> NewEvent {
        NewEvent {
            schema_version: 0,
            ..event(json!({ "refused": "schema version 0" }))
        }
    }

    fn key(request_hash: &str) -> IdempotencyKey {
        IdempotencyKey {
            key: format!("{}:key", Uuid::now_v7()),
            request_hash: request_hash.into(),
        }
    }

    fn append(
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Batched {
        Batched::single(stream, expected, events, idempotency.cloned())
    }

    /// A request of several parts.
    fn append_parts(
        parts: Vec<(&StreamId, ExpectedRevision, Vec<NewEvent>)>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Batched {
        Batched {
            parts: parts
                .into_iter()
                .map(|(stream, expected, events)| StreamAppend {
                    stream: stream.clone(),
                    expected,
                    events,
                })
                .collect(),
            idempotency: idempotency.cloned(),
        }
    }

    /// The one outcome of a one-part request.
    #[track_caller]
    fn single(result: Outcomes) -> Result<AppendOutcome, StoreError> {
        result.map(|outcomes| {
            let [outcome]: [_; 1] = outcomes.try_into().expect("one outcome per part");
            outcome
        })
    }

    fn is_rejected<T>(result: &Result<T, StoreError>) -> bool {
        matches!(result, Err(StoreError::Rejected { .. }))
    }

    fn outcome(revision: u64, position: u64) -> AppendOutcome {
        AppendOutcome {
            revision,
            position: Position(position),
        }
    }

    /// Polls `probe` until it yields a value; fails the test after [`DEADLINE`].
    async fn eventually<T, Fut: Future<Output = Option<T>>>(
        what: &str,
        mut probe: impl FnMut() -> Fut,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes the global append lock in a transaction of the test's own, so
    /// an appender's transaction waits for it to end.
    async fn hold_append_lock(pool: &PgPool) -> Transaction<'static, Postgres> {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .expect("take the append lock");
        tx
    }

    /// The backend of the transaction waiting for the append lock, once
    /// there is one.
    async fn waiting_for_the_append_lock(pool: &PgPool) -> i32 {
        eventually("an appender to wait for the append lock", || async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_optional(pool)
            .await
            .expect("pg_locks")
        })
        .await
    }

    /// Queues `work` before the appender starts, so that its first batch
    /// holds every request, runs the appender until the queue is done, and
    /// returns each request's outcome and the commit watermark.
    async fn run_one_batch(pool: &PgPool, work: Vec<Batched>) -> (Vec<Outcomes>, Position) {
        let (tx, rx) = mpsc::channel(work.len());
        let mut outcomes = Vec::with_capacity(work.len());
        for batched in work {
            let (reply, outcome) = oneshot::channel();
            tx.try_send(Request { batched, reply })
                .unwrap_or_else(|_| panic!("queue a request"));
            outcomes.push(outcome);
        }
        drop(tx);
        let (commits, watermark) = watch::channel(Position::START);
        run(
            pool.clone(),
            rx,
            commits,
            GroupCommitLimits::default(),
            Arc::default(),
        )
        .await;
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            results.push(outcome.await.expect("every request is answered"));
        }
        let top = *watermark.borrow();
        (results, top)
    }

    fn batched(stream: &StreamId, key: &IdempotencyKey) -> Batched {
        Batched::single(
            stream,
            ExpectedRevision::Any,
            vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema_version: 1,
                data: json!({}),
                metadata: EventMetadata::default(),
            }],
            Some(key.clone()),
        )
    }

    /// Two requests with one key in the same group commit: the first appends
    /// and records the key, the second is refused with the first's record.
    #[tokio::test]
    async fn a_key_claimed_earlier_in_the_same_batch_is_used() {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        super::super::migrate(&pool).await.expect("migrate");
        let s = StreamId::new("order", Uuid::now_v7()).expect("stream");
        let key = IdempotencyKey {
            key: "account:key".into(),
            request_hash: "h1".into(),
        };
        let second_key = IdempotencyKey {
            request_hash: "h2".into(),
            ..key.clone()
        };
        let mut tx = begin_locked(&pool).await.expect("begin");
        let results = write_batch(&mut tx, vec![batched(&s, &key), batched(&s, &second_key)])
            .await
            .expect("batch");
        tx.commit().await.expect("commit");

        let [first, second]: [_; 2] = results.try_into().expect("two results");
        let first = single(first).expect("the first appends");
        let record = match second {
            Err(StoreError::IdempotencyKeyUsed(record)) => *record,
            other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
        };
        assert_eq!(record.outcome(), first);
        assert_eq!(record.request_hash, "h1");
        assert_eq!(record.stream_id, s);

        let stored = sqlx::query(&format!(
            "{} WHERE key = $1",
            super::super::SELECT_IDEMPOTENCY
        ))
        .bind(&key.key)
        .fetch_one(&pool)
        .await
        .expect("stored key");
        assert_eq!(
            super::super::decode_idempotency_row(&stored).expect("decode"),
            record,
            "the record handed out in the batch is the one stored"
        );
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(events, 1);
    }

    /// The second line of defence, without the first: requests queued
    /// straight to the appender (no pre-check), one batch of six, two of
    /// them carrying data Postgres refuses (U+0000 in `jsonb`, in the data of
    /// one and the metadata of another). The batch fails; its requests are
    /// written again one transaction each; only the two refused ones fail,
    /// and nothing of them is stored (neither their clean events nor their
    /// idempotency key, which a later request of the batch then claims).
    #[tokio::test]
    async fn a_batch_refused_for_one_requests_data_commits_the_others_one_by_one() {
        let pool = migrated_pool().await;
        let (s1, s2, s3, s4) = (stream(), stream(), stream(), stream());
        let (ka, kb) = (key("a"), key("b"));
        let ka_again = IdempotencyKey {
            request_hash: "a, again".into(),
            ..ka.clone()
        };
        let nul_actor = NewEvent {
            metadata: EventMetadata {
                actor: Some("actor\u{0}".into()),
                ..EventMetadata::default()
            },
            ..event(json!({ "n": 41 }))
        };
        let (results, watermark) = run_one_batch(
            &pool,
            vec![
                append(
                    &s1,
                    ExpectedRevision::NoStream,
                    vec![event(json!({ "n": 0 }))],
                    Some(&ka),
                ),
                append(
                    &s2,
                    ExpectedRevision::NoStream,
                    vec![event(json!({ "note": "a\u{0}b" }))],
                    Some(&kb),
                ),
                append(
                    &s1,
                    ExpectedRevision::Exact(0),
                    vec![event(json!({ "n": 1 })), event(json!({ "n": 2 }))],
                    None,
                ),
                append(
                    &s3,
                    ExpectedRevision::Any,
                    vec![event(json!({ "n": 3 }))],
                    Some(&kb),
                ),
                append(
                    &s4,
                    ExpectedRevision::Any,
                    vec![event(json!({ "n": 40 })), nul_actor],
                    None,
                ),
                append(
                    &s1,
                    ExpectedRevision::Exact(2),
                    vec![event(json!({ "n": 5 }))],
                    Some(&ka_again),
                ),
            ],
        )
        .await;

        let results: Vec<_> = results.into_iter().map(single).collect();
        let [r0, r1, r2, r3, r4, r5]: [_; 6] = results.try_into().expect("six outcomes");
        let first = r0.expect("the first request commits");
        assert_eq!(
            first,
            AppendOutcome {
                revision: 0,
                position: Position(1)
            }
        );
        match &r1 {
            Err(StoreError::Rejected { reason }) => assert!(
                reason.contains("22P05"),
                "Postgres refused the jsonb, not the pre-check: {reason}"
            ),
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(
            r2.expect("the append after the first commits"),
            AppendOutcome {
                revision: 2,
                position: Position(3)
            }
        );
        assert_eq!(
            r3.expect("the refused request's key is free"),
            AppendOutcome {
                revision: 0,
                position: Position(4)
            }
        );
        assert!(is_rejected(&r4), "expected Rejected, got {r4:?}");
        match r5 {
            Err(StoreError::IdempotencyKeyUsed(record)) => {
                assert_eq!((&record.stream_id, record.outcome()), (&s1, first));
            }
            other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
        }
        assert_eq!(
            watermark,
            Position(4),
            "local subscribers are woken up to the top"
        );

        let rows = sqlx::query(
            "SELECT position, stream_id, revision, metadata->>'hash' AS hash, \
                    metadata->>'prev_hash' AS prev_hash, xmin::text AS xid \
             FROM events ORDER BY position",
        )
        .fetch_all(&pool)
        .await
        .expect("events");
        let log: Vec<(i64, String, i64)> = rows
            .iter()
            .map(|r| (r.get("position"), r.get("stream_id"), r.get("revision")))
            .collect();
        assert_eq!(
            log,
            vec![
                (1, s1.to_string(), 0),
                (2, s1.to_string(), 1),
                (3, s1.to_string(), 2),
                (4, s3.to_string(), 0),
            ],
            "gap-free positions, and nothing of the refused requests"
        );
        let hash = |i: usize, column: &str| rows[i].get::<Option<String>, _>(column);
        assert_eq!(
            hash(1, "prev_hash"),
            hash(0, "hash"),
            "the chain links across transactions"
        );
        assert_eq!(hash(2, "prev_hash"), hash(1, "hash"));
        let transactions: std::collections::HashSet<String> =
            rows.iter().map(|r| r.get("xid")).collect();
        assert_eq!(
            transactions.len(),
            3,
            "each committed request had a transaction of its own"
        );

        let keys: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT key, stream_id, position FROM idempotency_keys ORDER BY position",
        )
        .fetch_all(&pool)
        .await
        .expect("keys");
        assert_eq!(
            keys,
            vec![
                (ka.key.clone(), s1.to_string(), 1),
                (kb.key.clone(), s3.to_string(), 4)
            ]
        );
    }

    /// The log's rows as (position, stream, revision), the hash links, and
    /// how many transactions wrote them.
    async fn stored_log(
        pool: &PgPool,
    ) -> (Vec<(i64, String, i64)>, Vec<sqlx::postgres::PgRow>, usize) {
        let rows = sqlx::query(
            "SELECT position, stream_id, revision, metadata->>'hash' AS hash, \
                    metadata->>'prev_hash' AS prev_hash, xmin::text AS xid \
             FROM events ORDER BY position",
        )
        .fetch_all(pool)
        .await
        .expect("events");
        let log = rows
            .iter()
            .map(|r| (r.get("position"), r.get("stream_id"), r.get("revision")))
            .collect();
        let transactions: std::collections::HashSet<String> =
            rows.iter().map(|r| r.get("xid")).collect();
        (log, rows, transactions.len())
    }

    async fn stored_keys(pool: &PgPool) -> Vec<(String, String, i64, i64)> {
        sqlx::query_as(
            "SELECT key, stream_id, revision, position FROM idempotency_keys ORDER BY position",
        )
        .fetch_all(pool)
        .await
        .expect("keys")
    }

    /// One group commit of good and bad requests, single and multi-part,
    /// queued straight to the appender (no pre-check): each multi-part
    /// request that fails planning — a wrong revision in its last part, a
    /// stream named twice, an empty part, a mix of stored and new ids —
    /// fails alone and leaves no trace in the batch: the requests after it
    /// get the positions it would have taken, find its streams as they were
    /// and its key free. The rest commit in the one transaction, at
    /// gap-free positions, each stream's hash chain intact, and an in-batch
    /// retry of a multi-part request gets its outcomes.
    #[tokio::test]
    async fn a_failing_multi_part_request_fails_alone_and_leaves_no_gap() {
        let pool = migrated_pool().await;
        let [s1, s2, s3, s4, s5, s6, s7, s8] = std::array::from_fn(|_| stream());
        let ka = key("a");
        let e = || event(json!({}));
        let first = e();
        let good_multi = vec![
            (&s2, ExpectedRevision::NoStream, vec![e()]),
            (&s3, ExpectedRevision::NoStream, vec![e()]),
        ];
        let (results, watermark) = run_one_batch(
            &pool,
            vec![
                append(&s1, ExpectedRevision::NoStream, vec![first.clone()], None),
                append_parts(
                    vec![
                        (&s2, ExpectedRevision::NoStream, vec![e(), e()]),
                        (&s1, ExpectedRevision::Exact(5), vec![e()]),
                    ],
                    Some(&ka),
                ),
                append_parts(good_multi.clone(), Some(&ka)),
                append(&s1, ExpectedRevision::Exact(0), vec![e()], None),
                append_parts(
                    vec![
                        (&s4, ExpectedRevision::NoStream, vec![e()]),
                        (&s4, ExpectedRevision::Any, vec![e()]),
                    ],
                    None,
                ),
                append_parts(
                    vec![
                        (&s5, ExpectedRevision::NoStream, vec![e()]),
                        (&s6, ExpectedRevision::Any, vec![]),
                    ],
                    None,
                ),
                append_parts(
                    vec![
                        (&s5, ExpectedRevision::NoStream, vec![e()]),
                        (&s2, ExpectedRevision::Exact(0), vec![e()]),
                    ],
                    None,
                ),
                append_parts(good_multi, None),
                append_parts(
                    vec![
                        (&s1, ExpectedRevision::Any, vec![first.clone()]),
                        (&s7, ExpectedRevision::NoStream, vec![e()]),
                    ],
                    None,
                ),
                append_parts(
                    vec![
                        (&s7, ExpectedRevision::NoStream, vec![e(), e()]),
                        (&s8, ExpectedRevision::NoStream, vec![e()]),
                        (&s1, ExpectedRevision::NoStream, vec![e()]),
                    ],
                    None,
                ),
                append(&s7, ExpectedRevision::NoStream, vec![e()], None),
            ],
        )
        .await;
        let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10]: [_; 11] =
            results.try_into().expect("eleven results");

        assert_eq!(r0.expect("single"), vec![outcome(0, 1)]);
        match r1 {
            Err(StoreError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            }) => assert_eq!(
                (stream, expected, actual),
                (s1.clone(), ExpectedRevision::Exact(5), Some(0))
            ),
            other => panic!("expected WrongExpectedRevision, got {other:?}"),
        }
        assert_eq!(
            r2.expect("takes the positions and the key the refused one would have"),
            vec![outcome(0, 2), outcome(0, 3)]
        );
        assert_eq!(r3.expect("single"), vec![outcome(1, 4)]);
        assert!(is_rejected(&r4), "expected Rejected, got {r4:?}");
        assert!(
            matches!(r5, Err(StoreError::EmptyAppend)),
            "expected EmptyAppend, got {r5:?}"
        );
        assert_eq!(
            r6.expect("multi-part after a refused one"),
            vec![outcome(0, 5), outcome(1, 6)]
        );
        assert_eq!(
            r7.expect("an in-batch retry"),
            vec![outcome(0, 2), outcome(0, 3)]
        );
        assert!(
            matches!(r8, Err(StoreError::DuplicateEventId(id)) if id == first.event_id),
            "expected DuplicateEventId, got {r8:?}"
        );
        match r9 {
            Err(StoreError::WrongExpectedRevision { stream, actual, .. }) => {
                assert_eq!((stream, actual), (s1.clone(), Some(1)));
            }
            other => panic!("expected WrongExpectedRevision, got {other:?}"),
        }
        assert_eq!(
            r10.expect("the stream a refused request named is still new"),
            vec![outcome(0, 7)]
        );
        assert_eq!(watermark, Position(7));

        let (log, rows, transactions) = stored_log(&pool).await;
        assert_eq!(
            log,
            vec![
                (1, s1.to_string(), 0),
                (2, s2.to_string(), 0),
                (3, s3.to_string(), 0),
                (4, s1.to_string(), 1),
                (5, s5.to_string(), 0),
                (6, s2.to_string(), 1),
                (7, s7.to_string(), 0),
            ],
            "gap-free positions, nothing of the refused requests"
        );
        let hash = |i: usize, column: &str| rows[i].get::<Option<String>, _>(column);
        assert_eq!(hash(3, "prev_hash"), hash(0, "hash"), "s1's chain");
        assert_eq!(hash(5, "prev_hash"), hash(1, "hash"), "s2's chain");
        assert_eq!(hash(6, "prev_hash"), None, "s7 starts afresh");
        assert_eq!(transactions, 1, "one group commit");
        assert_eq!(
            stored_keys(&pool).await,
            vec![(ka.key.clone(), s2.to_string(), 0, 3)],
            "the first part's stream and revision, the request's top position"
        );
    }

    /// The data-error fallback with multi-part requests: a batch in which
    /// one part of one request holds data Postgres refuses (a `CHECK`) is
    /// written again one request per transaction; that request fails as a
    /// whole (its clean part is not stored, its key stays free), and the
    /// other requests, multi-part ones included, commit with one outcome per
    /// part at gap-free positions.
    #[tokio::test]
    async fn the_fallback_fails_a_refused_multi_part_request_as_a_whole() {
        let pool = migrated_pool().await;
        let [s1, s2, s3, s4] = std::array::from_fn(|_| stream());
        let (ka, kb) = (key("a"), key("b"));
        let e = || event(json!({}));
        let (results, watermark) = run_one_batch(
            &pool,
            vec![
                append_parts(
                    vec![
                        (&s1, ExpectedRevision::NoStream, vec![e()]),
                        (&s2, ExpectedRevision::NoStream, vec![e()]),
                    ],
                    Some(&ka),
                ),
                append_parts(
                    vec![
                        (&s3, ExpectedRevision::NoStream, vec![e()]),
                        (
                            &s4,
                            ExpectedRevision::NoStream,
                            vec![event_refused_by_a_check()],
                        ),
                    ],
                    Some(&kb),
                ),
                append_parts(
                    vec![
                        (&s1, ExpectedRevision::Exact(0), vec![e()]),
                        (&s3, ExpectedRevision::NoStream, vec![e()]),
                    ],
                    Some(&kb),
                ),
                append(&s2, ExpectedRevision::Exact(0), vec![e()], None),
            ],
        )
        .await;
        let [r0, r1, r2, r3]: [_; 4] = results.try_into().expect("four results");
        assert_eq!(r0.expect("multi-part"), vec![outcome(0, 1), outcome(0, 2)]);
        match &r1 {
            Err(StoreError::Rejected { reason }) => {
                assert!(reason.contains("23514"), "the CHECK refused it: {reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(
            r2.expect("the refused request's stream and key are free"),
            vec![outcome(1, 3), outcome(0, 4)]
        );
        assert_eq!(r3.expect("single"), vec![outcome(1, 5)]);
        assert_eq!(watermark, Position(5));

        let (log, rows, transactions) = stored_log(&pool).await;
        assert_eq!(
            log,
            vec![
                (1, s1.to_string(), 0),
                (2, s2.to_string(), 0),
                (3, s1.to_string(), 1),
                (4, s3.to_string(), 0),
                (5, s2.to_string(), 1),
            ]
        );
        let hash = |i: usize, column: &str| rows[i].get::<Option<String>, _>(column);
        assert_eq!(hash(2, "prev_hash"), hash(0, "hash"));
        assert_eq!(hash(4, "prev_hash"), hash(1, "hash"));
        assert_eq!(transactions, 3, "one transaction per committed request");
        assert_eq!(
            stored_keys(&pool).await,
            vec![
                (ka.key.clone(), s1.to_string(), 0, 2),
                (kb.key.clone(), s1.to_string(), 1, 4),
            ]
        );
    }

    /// A batch that fails because the connection does (here: its backend is
    /// terminated, `57P01`, while it waits for the append lock) is not
    /// retried one by one: every request gets the same retryable error and
    /// nothing is written, even though the lock is free right after.
    #[tokio::test]
    async fn a_lost_connection_still_fails_the_whole_batch_as_retryable() {
        let pool = migrated_pool().await;
        let lock = hold_append_lock(&pool).await;
        let (tx, rx) = mpsc::channel(2);
        let mut outcomes = Vec::new();
        for batched in [
            append(
                &stream(),
                ExpectedRevision::Any,
                vec![event(json!({}))],
                None,
            ),
            append(
                &stream(),
                ExpectedRevision::Any,
                vec![event(json!({}))],
                None,
            ),
        ] {
            let (reply, outcome) = oneshot::channel();
            tx.try_send(Request { batched, reply })
                .unwrap_or_else(|_| panic!("queue a request"));
            outcomes.push(outcome);
        }
        drop(tx);
        let (commits, _) = watch::channel(Position::START);
        let appender = tokio::spawn(run(
            pool.clone(),
            rx,
            commits,
            GroupCommitLimits::default(),
            Arc::default(),
        ));

        let pid = waiting_for_the_append_lock(&pool).await;
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&pool)
            .await
            .expect("terminate");
        assert!(terminated);
        // A fallback started now would find the lock free and commit.
        lock.rollback().await.expect("release the append lock");
        appender.await.expect("the appender ends with its queue");

        for outcome in outcomes {
            match outcome.await.expect("answered") {
                Err(e) => assert!(e.is_retryable(), "expected a retryable error, got {e:?}"),
                Ok(o) => panic!("expected the batch to fail, got {o:?}"),
            }
        }
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(events, 0);
    }

    /// The appender keeps one connection across batches; when that
    /// connection dies between two batches (its backend terminated while
    /// idle), the batch that meets it fails retryably at the worst, and the
    /// appender takes a fresh connection for the next: appends go on.
    #[tokio::test]
    async fn the_appender_replaces_a_kept_connection_that_died() {
        let pool = migrated_pool().await;
        let store = PostgresEventStore::new(pool.clone()).await.expect("store");
        let s = stream();
        store
            .append(&s, ExpectedRevision::NoStream, vec![event(json!({}))])
            .await
            .expect("first append");
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ( \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid() \
                    AND backend_type = 'client backend') t",
        )
        .fetch_one(&pool)
        .await
        .expect("terminate");
        assert!(terminated >= 1, "the appender's connection was among them");
        match store
            .append(&s, ExpectedRevision::Exact(0), vec![event(json!({}))])
            .await
        {
            Ok(o) => assert_eq!(o.revision, 1),
            Err(e) => assert!(e.is_retryable(), "expected a retryable error, got {e:?}"),
        }
        let last = store
            .append(&s, ExpectedRevision::Any, vec![event(json!({}))])
            .await
            .expect("an append after the lost connection commits");
        let stored: Vec<u64> = store
            .read_stream(&s, 0)
            .await
            .expect("read")
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(stored.last().copied(), Some(last.revision));
        assert!(stored.len() == 2 || stored.len() == 3, "got {stored:?}");
    }

    /// Through the store's public `append`, with real concurrent callers:
    /// 32 good appends, 4 that Postgres refuses (a `CHECK`), and 6 carrying
    /// U+0000 start together behind a barrier while a test transaction holds
    /// the append lock, so every request that reaches the appender is queued
    /// for one batch. The U+0000 ones are refused before they are queued; the
    /// batch of the rest fails, is written again one by one, and exactly the
    /// good appends commit, readable with their revisions, gap-free positions
    /// and idempotency records, and delivered live in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_event_in_a_batch_fails_only_its_own_append() {
        const GOOD: usize = 32;
        const REFUSED_BY_POSTGRES: usize = 4;
        const HOLDING_NUL: usize = 6;
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Kind {
            Good,
            RefusedByPostgres,
            HoldingNul,
        }
        struct Caller {
            kind: Kind,
            stream: StreamId,
            key: IdempotencyKey,
            events: Vec<NewEvent>,
            task: tokio::task::JoinHandle<Result<AppendOutcome, StoreError>>,
        }

        let pool = migrated_pool().await;
        let store = PostgresEventStore::new(pool.clone()).await.expect("store");
        let mut live = store
            .subscribe_all(Position::START)
            .await
            .expect("subscribe");

        // A first append takes the appender's attention and waits for the
        // lock, alone in its batch; everything after it queues up.
        let lock = hold_append_lock(&pool).await;
        let plug_stream = stream();
        let plug = {
            let (store, s) = (store.clone(), plug_stream.clone());
            tokio::spawn(async move {
                store
                    .append(
                        &s,
                        ExpectedRevision::NoStream,
                        vec![event(json!({ "plug": true }))],
                    )
                    .await
            })
        };
        waiting_for_the_append_lock(&pool).await;

        let kinds: Vec<Kind> = std::iter::repeat_n(Kind::Good, GOOD)
            .chain(std::iter::repeat_n(
                Kind::RefusedByPostgres,
                REFUSED_BY_POSTGRES,
            ))
            .chain(std::iter::repeat_n(Kind::HoldingNul, HOLDING_NUL))
            .collect();
        let barrier = Arc::new(Barrier::new(kinds.len()));
        let callers: Vec<Caller> = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let (stream, key) = (stream(), key(&format!("request {i}")));
                let first = event(json!({ "task": i, "n": 0 }));
                let second = match kind {
                    Kind::Good => event(json!({ "task": i, "n": 1 })),
                    Kind::RefusedByPostgres => event_refused_by_a_check(),
                    Kind::HoldingNul => event(json!({ "task": i, "note": "nul \u{0} here" })),
                };
                let events = vec![first, second];
                let task = tokio::spawn({
                    let (store, barrier) = (store.clone(), barrier.clone());
                    let (s, k, events) = (stream.clone(), key.clone(), events.clone());
                    async move {
                        barrier.wait().await;
                        store
                            .append_idempotent(&s, ExpectedRevision::NoStream, events, k)
                            .await
                    }
                });
                Caller {
                    kind,
                    stream,
                    key,
                    events,
                    task,
                }
            })
            .collect();

        let reaching_the_appender = GOOD + REFUSED_BY_POSTGRES;
        let queued = || store.appender.max_capacity() - store.appender.capacity();
        eventually("the appends to queue up", || async {
            let refused_early = callers
                .iter()
                .filter(|c| c.kind == Kind::HoldingNul)
                .all(|c| c.task.is_finished());
            let settled = refused_early && queued() >= reaching_the_appender;
            (settled || queued() > reaching_the_appender).then_some(())
        })
        .await;
        assert_eq!(
            queued(),
            reaching_the_appender,
            "appends holding U+0000 never reach the appender"
        );
        lock.rollback().await.expect("release the append lock");

        let plugged = plug.await.expect("join").expect("plug");
        assert_eq!(plugged.position, Position(1));
        let mut good = Vec::new();
        for caller in callers {
            let result = caller.task.await.expect("join");
            match caller.kind {
                Kind::Good => {
                    let outcome = result.unwrap_or_else(|e| panic!("a good append failed: {e}"));
                    assert_eq!(outcome.revision, 1);
                    good.push((caller.stream, caller.key, caller.events, outcome));
                }
                Kind::RefusedByPostgres | Kind::HoldingNul => {
                    assert!(
                        is_rejected(&result),
                        "{:?}: expected Rejected, got {result:?}",
                        caller.kind
                    );
                    let stored = store.read_stream(&caller.stream, 0).await.expect("read");
                    assert!(stored.is_empty(), "nothing of a refused append is stored");
                    let record = store.idempotency_record(&caller.key.key).await;
                    assert_eq!(record.expect("key"), None);
                }
            }
        }

        let total = 1 + 2 * GOOD;
        let log = store
            .read_all(Position::START, 1_000)
            .await
            .expect("read_all");
        assert_eq!(
            log.iter().map(|e| e.position.0).collect::<Vec<_>>(),
            (1..=total as u64).collect::<Vec<_>>(),
            "positions are gap-free"
        );
        assert_eq!(store.head().await.expect("head"), Position(total as u64));
        for (s, k, events, outcome) in &good {
            let stored = store.read_stream(s, 0).await.expect("read");
            assert_eq!(
                stored
                    .iter()
                    .map(|e| (e.revision, e.event_id, &e.data))
                    .collect::<Vec<_>>(),
                vec![
                    (0, events[0].event_id, &events[0].data),
                    (1, events[1].event_id, &events[1].data)
                ]
            );
            assert_eq!(stored[1].position, outcome.position);
            assert_eq!(stored[1].metadata.prev_hash, stored[0].metadata.hash);
            let record = store.idempotency_record(&k.key).await.expect("key");
            assert_eq!(record.map(|r| r.outcome()), Some(*outcome));
        }

        // The refused batch really held both kinds: after the fallback each
        // good append committed in a transaction of its own.
        let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events")
            .fetch_one(&pool)
            .await
            .expect("transactions");
        assert_eq!(transactions, 1 + GOOD as i64);

        let mut delivered = Vec::with_capacity(total);
        while delivered.len() < total {
            match tokio::time::timeout(DEADLINE, live.next()).await {
                Ok(Some(Ok(e))) => delivered.push(e),
                other => panic!("the live subscription stopped early: {other:?}"),
            }
        }
        assert_eq!(delivered, log, "live delivery matches the log, in order");
    }

    /// One group commit of one append of a fresh event to `s`, on `heads`:
    /// its outcome.
    async fn commit_one(
        pool: &PgPool,
        heads: &mut Heads,
        s: &StreamId,
        expected: ExpectedRevision,
    ) -> Result<AppendOutcome, StoreError> {
        let results = commit_on(
            pool,
            heads,
            vec![append(s, expected, vec![event(json!({}))], None)],
        )
        .await
        .expect("commit");
        single(results.into_iter().next().expect("one result"))
    }

    /// One group commit through [`commit_batch`] on the appender's `heads`.
    async fn commit_on(
        pool: &PgPool,
        heads: &mut Heads,
        work: Vec<Batched>,
    ) -> Result<Vec<Outcomes>, StoreError> {
        commit_batch(
            &mut Link::new(pool.clone()),
            &RecentEvents::default(),
            heads,
            &work,
        )
        .await
        .map(|(results, _)| results)
    }

    /// The log's top position, as the heads must record it.
    async fn stored_top(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(pool)
            .await
            .expect("top")
    }

    /// While the heads are valid the ids are not looked up, yet a retry of a
    /// committed append still gets its stored outcome, whether its expected
    /// revision is the one it was first written on (refused on the held
    /// head, then planned again) or any (found by the insert), and adds
    /// nothing to the log.
    #[tokio::test]
    async fn a_retry_on_warm_heads_gets_its_stored_outcome() {
        let pool = migrated_pool().await;
        let mut heads = Heads::default();
        let s = stream();
        let first = vec![event(json!({ "n": 1 })), event(json!({ "n": 2 }))];
        let written = commit_on(
            &pool,
            &mut heads,
            vec![append(&s, ExpectedRevision::NoStream, first.clone(), None)],
        )
        .await
        .expect("commit");
        let original = single(written.into_iter().next().expect("one")).expect("appended");
        assert_eq!(original, outcome(1, 2));
        assert_eq!(heads.expected_top(), stored_top(&pool).await);
        assert!(heads.get(&s).is_some(), "the written head is held");

        for expected in [ExpectedRevision::NoStream, ExpectedRevision::Any] {
            let retried = commit_on(
                &pool,
                &mut heads,
                vec![append(&s, expected, first.clone(), None)],
            )
            .await
            .expect("commit");
            let retried = single(retried.into_iter().next().expect("one"));
            assert_eq!(retried.expect("a retry"), original, "{expected:?}");
        }
        let (log, _, _) = stored_log(&pool).await;
        assert_eq!(log.len(), 2, "the retries wrote nothing");
        assert_eq!(heads.expected_top(), 2, "the heads are valid again");
    }

    /// On warm heads an event id already stored in another stream, held or
    /// not, is still that id's error, and the batch's other requests commit.
    #[tokio::test]
    async fn a_stored_id_on_warm_heads_is_a_duplicate() {
        let pool = migrated_pool().await;
        let mut heads = Heads::default();
        let (s, held, fresh) = (stream(), stream(), stream());
        let taken = event(json!({}));
        commit_on(
            &pool,
            &mut heads,
            vec![
                append(&s, ExpectedRevision::Any, vec![taken.clone()], None),
                append(&held, ExpectedRevision::Any, vec![event(json!({}))], None),
            ],
        )
        .await
        .expect("commit");
        assert_eq!(heads.expected_top(), 2);

        for other in [&held, &fresh] {
            let results = commit_on(
                &pool,
                &mut heads,
                vec![
                    append(other, ExpectedRevision::Any, vec![taken.clone()], None),
                    append(&s, ExpectedRevision::Any, vec![event(json!({}))], None),
                ],
            )
            .await
            .expect("commit");
            let [dup, ok]: [_; 2] = results.try_into().expect("two results");
            match single(dup) {
                Err(StoreError::DuplicateEventId(id)) => assert_eq!(id, taken.event_id),
                other => panic!("expected DuplicateEventId, got {other:?}"),
            }
            single(ok).expect("the other request commits");
        }
        let (log, rows, _) = stored_log(&pool).await;
        assert_eq!(
            log.iter().map(|(p, _, _)| *p).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "gap-free"
        );
        assert_eq!(
            rows.last().map(|r| r.get::<Option<String>, _>("prev_hash")),
            Some(rows[2].get::<Option<String>, _>("hash")),
            "s's chain runs on from its third event"
        );
    }

    /// Another writer (another process, or the store's gated append) moves
    /// the top between two batches: the heads are stale and dropped, the
    /// next batch looks everything up, and its revisions and hash chain run
    /// on from the other writer's event. A revision the held head would have
    /// accepted is refused with the stored one.
    #[tokio::test]
    async fn a_warm_new_stream_found_stored_is_answered_as_the_long_way_would() {
        let pool = migrated_pool().await;
        let taken = stream();
        // Stored before this appender knew anything: its heads will not
        // hold `taken`, and the top will not move after they are recorded.
        let first = event(json!({"n": 0}));
        let mut none = Heads::default();
        let stored = commit_on(
            &pool,
            &mut none,
            vec![append(
                &taken,
                ExpectedRevision::NoStream,
                vec![first.clone()],
                None,
            )],
        )
        .await
        .expect("commit");
        let stored = single(stored.into_iter().next().expect("one")).expect("appended");
        let mut heads = Heads::default();
        commit_one(&pool, &mut heads, &stream(), ExpectedRevision::NoStream)
            .await
            .expect("appended");
        assert!(heads.get(&taken).is_none() && heads.expected_top() == 2);

        // Planned as new, warm: the insert meets `(taken, 0)`, and the batch
        // is planned again with `taken` looked up. Another request of the
        // same batch, to a new stream, still commits.
        let fresh = stream();
        let results = commit_on(
            &pool,
            &mut heads,
            vec![
                append(
                    &taken,
                    ExpectedRevision::NoStream,
                    vec![event(json!({}))],
                    None,
                ),
                append(
                    &fresh,
                    ExpectedRevision::NoStream,
                    vec![event(json!({}))],
                    None,
                ),
            ],
        )
        .await
        .expect("commit");
        let mut results = results.into_iter().map(single);
        match results.next().expect("first") {
            Err(StoreError::WrongExpectedRevision { actual, .. }) => assert_eq!(actual, Some(0)),
            other => panic!("expected WrongExpectedRevision, got {other:?}"),
        }
        assert_eq!(
            results.next().expect("second").expect("appended"),
            outcome(0, 3)
        );
        // The very append stored first, sent again: its outcome.
        let again = commit_on(
            &pool,
            &mut heads,
            vec![append(
                &taken,
                ExpectedRevision::NoStream,
                vec![first],
                None,
            )],
        )
        .await
        .expect("commit");
        assert_eq!(
            single(again.into_iter().next().expect("one")).expect("its outcome"),
            stored
        );
        let (log, _, _) = stored_log(&pool).await;
        assert_eq!(log.len(), 3, "nothing written twice, no gap");
        assert_eq!(heads.expected_top(), 3);
    }

    #[tokio::test]
    async fn an_append_by_another_writer_invalidates_the_heads() {
        let pool = migrated_pool().await;
        let mut heads = Heads::default();
        let s = stream();
        commit_one(&pool, &mut heads, &s, ExpectedRevision::NoStream)
            .await
            .expect("appended");
        assert_eq!(heads.expected_top(), 1);

        let mut other = begin_locked(&pool).await.expect("begin");
        let theirs = write_batch(
            &mut other,
            vec![append(
                &s,
                ExpectedRevision::Exact(0),
                vec![event(json!({}))],
                None,
            )],
        )
        .await
        .expect("the other writer");
        other.commit().await.expect("commit");
        assert_eq!(
            single(theirs.into_iter().next().expect("one")).expect("appended"),
            outcome(1, 2)
        );

        let stale = commit_one(&pool, &mut heads, &s, ExpectedRevision::Exact(0)).await;
        match stale {
            Err(StoreError::WrongExpectedRevision { actual, .. }) => assert_eq!(actual, Some(1)),
            other => panic!("expected WrongExpectedRevision, got {other:?}"),
        }
        let next = commit_one(&pool, &mut heads, &s, ExpectedRevision::Exact(1)).await;
        assert_eq!(next.expect("appended"), outcome(2, 3));
        let (log, rows, _) = stored_log(&pool).await;
        assert_eq!(log.len(), 3);
        for pair in rows.windows(2) {
            assert_eq!(
                pair[1].get::<Option<String>, _>("prev_hash"),
                pair[0].get::<Option<String>, _>("hash"),
                "the chain is unbroken"
            );
        }
        assert_eq!(heads.expected_top(), 3);
    }

    /// A wrong expected revision on a held head is refused with the held
    /// (and stored) revision, after the ids are looked up, and it leaves the
    /// log and the heads as they were.
    #[tokio::test]
    async fn a_wrong_revision_on_warm_heads_is_refused() {
        let pool = migrated_pool().await;
        let mut heads = Heads::default();
        let s = stream();
        commit_one(&pool, &mut heads, &s, ExpectedRevision::NoStream)
            .await
            .expect("appended");
        for expected in [ExpectedRevision::NoStream, ExpectedRevision::Exact(5)] {
            let refused = commit_one(&pool, &mut heads, &s, expected).await;
            match refused {
                Err(StoreError::WrongExpectedRevision { actual, .. }) => {
                    assert_eq!(actual, Some(0), "{expected:?}");
                }
                other => panic!("expected WrongExpectedRevision, got {other:?}"),
            }
        }
        assert_eq!(stored_log(&pool).await.0.len(), 1);
        assert_eq!(heads.expected_top(), 1);
        assert!(heads.get(&s).is_some());
    }
}
