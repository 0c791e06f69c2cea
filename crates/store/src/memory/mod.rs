//! The in-memory backend, for unit tests of the crates above the store.
//!
//! It keeps the same guarantees as the Postgres backend (atomic appends,
//! typed conflicts, idempotent retries, idempotency keys recorded atomically
//! with their append, commit-ordered positions, live subscriptions) and
//! passes the same conformance suite. Writers are serialised by one async
//! mutex, which is also what keeps positions in commit order, exactly like
//! the Postgres backend's appender lock; an idempotency key is checked and
//! recorded under that same mutex, in the same log update as the events.
//! An append across several streams ([`EventStore::append_streams`]) is
//! planned part by part under the same mutex and written in one log update,
//! or not at all.
//!
//! The planning the backends share lives here too: [`plan_append`] for one
//! stream's part and [`plan_parts`] for a whole request of one or more
//! parts, which the Postgres appender runs against its batch's state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{oneshot, watch, Mutex};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{
    chain_hash, check_storable, AppendOutcome, ExpectedRevision, IdempotencyKey, IdempotencyRecord,
    NewEvent, Position, RecordedEvent, Snapshot, StreamAppend, StreamId,
};
use crate::port::{EventStore, EventStream};
use crate::subscription::catch_up_then_live;

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    by_event_id: HashMap<Uuid, usize>,
    idempotency: HashMap<String, IdempotencyRecord>,
    snapshots: HashMap<StreamId, Snapshot>,
}

struct Inner {
    writer: Mutex<()>,
    log: RwLock<Log>,
    commits: watch::Sender<Position>,
}

/// An event store that lives in process memory. Cheap to clone (shared).
#[derive(Clone)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventStore").finish_non_exhaustive()
    }
}

/// The outcome of checking an append against the log before writing it.
pub(crate) enum Plan {
    /// The very same append is already stored: return its outcome.
    AlreadyStored(AppendOutcome),
    /// Write these events.
    Write(Vec<RecordedEvent>),
}

/// Checks expected revision and idempotency, and lays out the events to
/// write after `current` (last revision and hash of the stream).
///
/// `existing` holds the stored (stream, revision, position) of any of the
/// appended event ids that are already in the log.
pub(crate) fn plan_append(
    stream: &StreamId,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    current: Option<(u64, Option<String>)>,
    existing: &[(Uuid, StreamId, u64, Position)],
    mut next_position: impl FnMut() -> Position,
) -> Result<Plan, StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    if !existing.is_empty() {
        // An idempotent retry stores exactly these ids, in this order, in
        // this stream, at consecutive revisions.
        let mut matched = Vec::with_capacity(events.len());
        for e in &events {
            match existing.iter().find(|(id, ..)| *id == e.event_id) {
                Some((_, s, rev, pos)) if s == stream => matched.push((*rev, *pos)),
                _ => return Err(StoreError::DuplicateEventId(existing[0].0)),
            }
        }
        let consecutive = matched.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        return match matched.last() {
            Some(&(revision, position)) if consecutive => {
                Ok(Plan::AlreadyStored(AppendOutcome { revision, position }))
            }
            _ => Err(StoreError::DuplicateEventId(existing[0].0)),
        };
    }
    let actual = current.as_ref().map(|(r, _)| *r);
    let ok = match expected {
        ExpectedRevision::Any => true,
        ExpectedRevision::NoStream => actual.is_none(),
        ExpectedRevision::Exact(r) => actual == Some(r),
    };
    if !ok {
        return Err(StoreError::WrongExpectedRevision {
            stream: stream.clone(),
            expected,
            actual,
        });
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = events.iter().find(|e| !seen.insert(e.event_id)) {
        return Err(StoreError::DuplicateEventId(dup.event_id));
    }
    let first_revision = actual.map_or(0, |r| r + 1);
    let mut prev_hash = current.and_then(|(_, h)| h);
    let recorded_at = Utc::now();
    let mut out = Vec::with_capacity(events.len());
    for (revision, e) in (first_revision..).zip(events) {
        let hash = chain_hash(
            prev_hash.as_deref(),
            stream,
            revision,
            e.event_id,
            &e.event_type,
            e.schema_version,
            &e.data,
        );
        let mut metadata = e.metadata;
        metadata.recorded_at = Some(recorded_at);
        metadata.prev_hash = prev_hash.take();
        metadata.hash = Some(hash.clone());
        out.push(RecordedEvent {
            stream_id: stream.clone(),
            revision,
            position: next_position(),
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data,
            metadata,
        });
        prev_hash = Some(hash);
    }
    Ok(Plan::Write(out))
}

/// Refuses a request that no state of the log could accept: no part, a part
/// without events ([`StoreError::EmptyAppend`]), or a stream named by two
/// parts ([`StoreError::Rejected`]). Cheap enough for the caller's task.
pub(crate) fn check_parts(parts: &[StreamAppend]) -> Result<(), StoreError> {
    if parts.is_empty() || parts.iter().any(|p| p.events.is_empty()) {
        return Err(StoreError::EmptyAppend);
    }
    if parts.len() > 1 {
        let mut streams = HashSet::with_capacity(parts.len());
        if let Some(twice) = parts.iter().find(|p| !streams.insert(&p.stream)) {
            return Err(StoreError::Rejected {
                reason: format!(
                    "stream {} is named by two parts of one append",
                    twice.stream
                ),
            });
        }
    }
    Ok(())
}

/// What planning a request sees of the log: the last revision and hash of
/// the streams it names, the stored (stream, revision, position) of the
/// event ids it carries, and the last position taken. The Postgres appender
/// keeps one for a whole batch, so each request also sees the ones planned
/// before it.
#[derive(Default)]
pub(crate) struct PlanState {
    pub current: HashMap<StreamId, (u64, Option<String>)>,
    pub existing: HashMap<Uuid, (StreamId, u64, Position)>,
    pub next: u64,
}

/// A request that planned successfully.
pub(crate) enum PartsPlan {
    /// Every part is already stored as the very same append: its original
    /// outcomes, one per part.
    AlreadyStored(Vec<AppendOutcome>),
    /// Write `rows` (every part's events, in part order, at consecutive
    /// positions); `outcomes` has one entry per part.
    Write {
        outcomes: Vec<AppendOutcome>,
        rows: Vec<RecordedEvent>,
    },
}

/// Plans a request of one or more parts against `state`, all or nothing:
/// only a [`PartsPlan::Write`] changes `state` (positions taken, heads and
/// ids of the written events); a refusal or an idempotent retry leaves it
/// exactly as it was, so the next request plans as if this one had never
/// been made and positions stay gap-free.
///
/// Each part is planned by [`plan_append`]; the first part refused decides
/// the error. Every part already stored is an idempotent retry; some but not
/// all is [`StoreError::DuplicateEventId`], as is an event id carried twice
/// across parts.
pub(crate) fn plan_parts(
    parts: Vec<StreamAppend>,
    state: &mut PlanState,
) -> Result<PartsPlan, StoreError> {
    check_parts(&parts)?;
    if parts.len() > 1 {
        let mut ids = HashSet::new();
        if let Some(twice) = parts
            .iter()
            .flat_map(|p| &p.events)
            .find(|e| !ids.insert(e.event_id))
        {
            return Err(StoreError::DuplicateEventId(twice.event_id));
        }
    }
    // Positions are taken from a copy of the counter, and `state` is only
    // written once every part has planned: that is the rollback.
    let mut next = state.next;
    let mut planned = Vec::with_capacity(parts.len());
    for part in parts {
        let first_id = part.events.first().map(|e| e.event_id);
        let mine: Vec<_> = part
            .events
            .iter()
            .filter_map(|e| {
                state
                    .existing
                    .get(&e.event_id)
                    .map(|(s, r, p)| (e.event_id, s.clone(), *r, *p))
            })
            .collect();
        let plan = plan_append(
            &part.stream,
            part.expected,
            part.events,
            state.current.get(&part.stream).cloned(),
            &mine,
            || {
                next += 1;
                Position(next)
            },
        )?;
        planned.push((part.stream, first_id, plan));
    }
    let stored = planned
        .iter()
        .filter(|(_, _, plan)| matches!(plan, Plan::AlreadyStored(_)))
        .count();
    if stored == planned.len() {
        return Ok(PartsPlan::AlreadyStored(
            planned
                .into_iter()
                .filter_map(|(_, _, plan)| match plan {
                    Plan::AlreadyStored(outcome) => Some(outcome),
                    Plan::Write(_) => None,
                })
                .collect(),
        ));
    }
    if stored > 0 {
        let stored_id = planned.iter().find_map(|(_, id, plan)| match plan {
            Plan::AlreadyStored(_) => *id,
            Plan::Write(_) => None,
        });
        return Err(StoreError::DuplicateEventId(stored_id.unwrap_or_default()));
    }
    let mut outcomes = Vec::with_capacity(planned.len());
    let mut rows = Vec::new();
    for (stream, _, plan) in planned {
        let Plan::Write(part_rows) = plan else {
            continue;
        };
        let Some(last) = part_rows.last() else {
            return Err(StoreError::EmptyAppend);
        };
        outcomes.push(AppendOutcome {
            revision: last.revision,
            position: last.position,
        });
        state
            .current
            .insert(stream, (last.revision, last.metadata.hash.clone()));
        for r in &part_rows {
            state
                .existing
                .insert(r.event_id, (r.stream_id.clone(), r.revision, r.position));
        }
        rows.extend(part_rows);
    }
    state.next = next;
    Ok(PartsPlan::Write { outcomes, rows })
}

/// The record of `key` for a request whose first part went to `stream`:
/// that part's revision, and the highest position of the whole request (a
/// consistency token covering every part).
pub(crate) fn key_record(
    key: IdempotencyKey,
    stream: StreamId,
    outcomes: &[AppendOutcome],
    recorded_at: chrono::DateTime<Utc>,
) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.key,
        request_hash: key.request_hash,
        stream_id: stream,
        revision: outcomes.first().map_or(0, |o| o.revision),
        position: outcomes
            .iter()
            .map(|o| o.position)
            .max()
            .unwrap_or(Position::START),
        recorded_at,
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        let (commits, _) = watch::channel(Position::START);
        Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(()),
                log: RwLock::new(Log::default()),
                commits,
            }),
        }
    }

    fn read_log(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written
        // (writes are a single push loop after all checks), so poisoning is
        // safe to ignore.
        self.inner.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_log(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.inner.log.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends like [`EventStore::append`], but after taking its positions it
    /// signals `at_gate` and waits for `release` before committing. Test
    /// support for the delayed-commit conformance test.
    pub async fn append_with_commit_gate(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_inner(stream, expected, events, None, Some((at_gate, release)))
            .await
    }

    async fn append_inner(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: Option<IdempotencyKey>,
        gate: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
    ) -> Result<AppendOutcome, StoreError> {
        let part = StreamAppend {
            stream: stream.clone(),
            expected,
            events,
        };
        let mut outcomes = self.append_parts(vec![part], key, gate).await?;
        outcomes.pop().ok_or(StoreError::EmptyAppend)
    }

    /// Every append, of one part or several: checked, planned and written
    /// under the writer mutex, in one log update.
    async fn append_parts(
        &self,
        parts: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
        gate: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        check_parts(&parts)?;
        check_storable(&[], key.as_ref())?;
        for part in &parts {
            check_storable(&part.events, None)?;
        }
        let first_stream = parts[0].stream.clone();
        let _writer = self.inner.writer.lock().await;
        let plan = {
            let log = self.read_log();
            if let Some(record) = key.as_ref().and_then(|k| log.idempotency.get(&k.key)) {
                return Err(StoreError::IdempotencyKeyUsed(Box::new(record.clone())));
            }
            let mut state = PlanState {
                next: log.events.last().map_or(0, |e| e.position.0),
                ..PlanState::default()
            };
            for part in &parts {
                let head = log.streams.get(&part.stream).and_then(|idx| idx.last());
                if let Some(&i) = head {
                    let e = &log.events[i];
                    state
                        .current
                        .insert(part.stream.clone(), (e.revision, e.metadata.hash.clone()));
                }
                for e in &part.events {
                    if let Some(&i) = log.by_event_id.get(&e.event_id) {
                        let e = &log.events[i];
                        state
                            .existing
                            .insert(e.event_id, (e.stream_id.clone(), e.revision, e.position));
                    }
                }
            }
            plan_parts(parts, &mut state)?
        };
        let record = |outcomes: &[AppendOutcome]| {
            key.map(|k| key_record(k, first_stream, outcomes, Utc::now()))
        };
        let (outcomes, rows) = match plan {
            PartsPlan::AlreadyStored(outcomes) => {
                if let Some(record) = record(&outcomes) {
                    self.write_log()
                        .idempotency
                        .insert(record.key.clone(), record);
                }
                return Ok(outcomes);
            }
            PartsPlan::Write { outcomes, rows } => (outcomes, rows),
        };
        if let Some((at_gate, release)) = gate {
            let _ = at_gate.send(());
            let _ = release.await;
        }
        let Some(top) = rows.last().map(|r| r.position) else {
            return Err(StoreError::EmptyAppend);
        };
        let record = record(&outcomes);
        {
            let mut log = self.write_log();
            if let Some(record) = record {
                log.idempotency.insert(record.key.clone(), record);
            }
            for row in rows {
                let i = log.events.len();
                log.streams
                    .entry(row.stream_id.clone())
                    .or_default()
                    .push(i);
                log.by_event_id.insert(row.event_id, i);
                log.events.push(row);
            }
        }
        self.inner.commits.send_replace(top);
        Ok(outcomes)
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_inner(stream, expected, events, None, None)
            .await
    }

    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_inner(stream, expected, events, Some(key), None)
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
        self.append_parts(parts, key, None).await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.read_log().idempotency.get(key).cloned())
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read_log();
        Ok(log
            .streams
            .get(stream)
            .map(|idx| {
                idx.iter()
                    .map(|&i| &log.events[i])
                    .filter(|e| e.revision >= from_revision)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read_log();
        Ok(log
            .streams
            .get(stream)
            .map(|idx| {
                idx.iter()
                    .map(|&i| &log.events[i])
                    .filter(|e| e.revision >= from_revision)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.read_log();
        let start = log.events.partition_point(|e| e.position <= from);
        Ok(log.events[start..].iter().take(limit).cloned().collect())
    }

    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        let me = self.clone();
        let commits = self.inner.commits.subscribe();
        Ok(catch_up_then_live(
            move |pos| {
                let me = me.clone();
                async move { me.read_all(pos, crate::subscription::PAGE).await }
            },
            from,
            commits,
        ))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        Ok(self
            .read_log()
            .events
            .last()
            .map_or(Position::START, |e| e.position))
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.read_log().snapshots.get(stream).cloned())
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let mut log = self.write_log();
        let keep = log
            .snapshots
            .get(stream)
            .is_some_and(|s| s.version == snapshot.version && s.revision > snapshot.revision);
        if !keep {
            log.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}
