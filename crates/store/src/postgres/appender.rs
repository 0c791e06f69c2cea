//! The serialising appender with group commit.
//!
//! One task per process owns the write path. It takes the first queued
//! request, drains whatever else is already waiting (up to the limits), and
//! writes the lot in one transaction under the global append lock. Each
//! request is planned on its own — expected revision, idempotent retry,
//! hash chain — against the stored state plus the requests planned before it
//! in the same batch, so a conflict refuses only its own request.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{AppendOutcome, ExpectedRevision, NewEvent, Position, RecordedEvent, StreamId};
use crate::memory::{plan_append, Plan};

/// The key of the transaction-scoped advisory lock every append takes
/// ("mkt-log" in ASCII). All writers in all processes share it.
const APPEND_LOCK_KEY: i64 = 0x006d_6b74_2d6c_6f67;

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

/// One append, as the batch writer sees it.
pub(crate) struct Batched {
    pub stream: StreamId,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
}

/// One append waiting for the appender, with where to send its outcome.
pub(crate) struct Request {
    pub batched: Batched,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The appender loop: runs until every sender is gone.
pub(crate) async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Request>,
    commits: watch::Sender<Position>,
    limits: GroupCommitLimits,
) {
    while let Some(first) = rx.recv().await {
        let mut events = first.batched.events.len();
        let mut batch = vec![first];
        while batch.len() < limits.max_requests && events < limits.max_events {
            match rx.try_recv() {
                Ok(r) => {
                    events += r.batched.events.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let (work, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.batched, r.reply)).unzip();
        match commit_batch(&pool, work).await {
            Ok(results) => {
                let top = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok().map(|o| o.position))
                    .max();
                if let Some(top) = top {
                    commits.send_modify(|p| *p = (*p).max(top));
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = replies.len(), "group commit failed");
                let msg = e.to_string();
                let retryable = e.is_retryable();
                for reply in replies {
                    let err = if retryable {
                        StoreError::Unavailable(msg.clone())
                    } else {
                        StoreError::Backend(msg.clone())
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}

async fn commit_batch(
    pool: &PgPool,
    work: Vec<Batched>,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let results = write_batch(&mut tx, work).await?;
    tx.commit().await?;
    Ok(results)
}

/// Writes a batch of appends inside the caller's transaction, under the
/// global append lock. Returns one outcome per request, in order; the
/// transaction is left open for the caller to commit.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    work: Vec<Batched>,
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK_KEY)
        .execute(&mut *conn)
        .await?;

    let ids: Vec<Uuid> = work
        .iter()
        .flat_map(|w| w.events.iter().map(|e| e.event_id))
        .collect();
    let mut existing: HashMap<Uuid, (StreamId, u64, Position)> = HashMap::new();
    for row in sqlx::query(
        "SELECT event_id, stream_id, revision, position FROM events WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    {
        let stream: String = row.try_get("stream_id")?;
        let stream = StreamId::parse(&stream).map_err(|e| StoreError::Decode(e.to_string()))?;
        existing.insert(
            row.try_get("event_id")?,
            (
                stream,
                u64::try_from(row.try_get::<i64, _>("revision")?).unwrap_or(0),
                Position(u64::try_from(row.try_get::<i64, _>("position")?).unwrap_or(0)),
            ),
        );
    }

    let mut streams: Vec<&str> = work.iter().map(|w| w.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut current: HashMap<StreamId, (u64, Option<String>)> = HashMap::new();
    for row in sqlx::query(
        "SELECT s.stream_id, e.revision, e.metadata->>'hash' AS hash \
         FROM unnest($1::text[]) AS s(stream_id) \
         CROSS JOIN LATERAL ( \
             SELECT revision, metadata FROM events \
             WHERE events.stream_id = s.stream_id ORDER BY revision DESC LIMIT 1 \
         ) e",
    )
    .bind(&streams)
    .fetch_all(&mut *conn)
    .await?
    {
        let stream: String = row.try_get("stream_id")?;
        let stream = StreamId::parse(&stream).map_err(|e| StoreError::Decode(e.to_string()))?;
        let revision = u64::try_from(row.try_get::<i64, _>("revision")?).unwrap_or(0);
        current.insert(stream, (revision, row.try_get("hash")?));
    }

    let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let mut next = head.map_or(0, |h| u64::try_from(h).unwrap_or(0));

    let mut results = Vec::with_capacity(work.len());
    let mut rows: Vec<RecordedEvent> = Vec::new();
    for w in work {
        let mine: Vec<_> = w
            .events
            .iter()
            .filter_map(|e| {
                existing
                    .get(&e.event_id)
                    .map(|(s, r, p)| (e.event_id, s.clone(), *r, *p))
            })
            .collect();
        let plan = plan_append(
            &w.stream,
            w.expected,
            w.events,
            current.get(&w.stream).cloned(),
            &mine,
            || {
                next += 1;
                Position(next)
            },
        );
        match plan {
            Ok(Plan::AlreadyStored(outcome)) => results.push(Ok(outcome)),
            Ok(Plan::Write(new_rows)) => {
                let Some(last) = new_rows.last() else {
                    results.push(Err(StoreError::EmptyAppend));
                    continue;
                };
                current.insert(
                    w.stream.clone(),
                    (last.revision, last.metadata.hash.clone()),
                );
                results.push(Ok(AppendOutcome {
                    revision: last.revision,
                    position: last.position,
                }));
                for r in &new_rows {
                    existing.insert(r.event_id, (r.stream_id.clone(), r.revision, r.position));
                }
                rows.extend(new_rows);
            }
            Err(e) => results.push(Err(e)),
        }
    }

    if let Some(last) = rows.last().map(|r| r.position) {
        insert_rows(conn, rows).await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::NOTIFY_CHANNEL)
            .bind(last.0.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(results)
}

async fn insert_rows(conn: &mut PgConnection, rows: Vec<RecordedEvent>) -> Result<(), StoreError> {
    let n = rows.len();
    let mut position = Vec::with_capacity(n);
    let mut stream_id = Vec::with_capacity(n);
    let mut revision = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut recorded_at: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    for r in rows {
        position.push(i64::try_from(r.position.0).unwrap_or(i64::MAX));
        stream_id.push(r.stream_id.as_str().to_owned());
        revision.push(i64::try_from(r.revision).unwrap_or(i64::MAX));
        event_id.push(r.event_id);
        schema_version.push(i32::try_from(r.schema_version).unwrap_or(i32::MAX));
        recorded_at.push(r.recorded_at());
        metadata.push(
            serde_json::to_value(&r.metadata).map_err(|e| StoreError::Backend(e.to_string()))?,
        );
        event_type.push(r.event_type);
        data.push(r.data);
    }
    sqlx::query(
        "INSERT INTO events (position, stream_id, revision, event_id, event_type, \
                             schema_version, data, metadata, recorded_at) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], \
                              $6::int[], $7::jsonb[], $8::jsonb[], $9::timestamptz[])",
    )
    .bind(position)
    .bind(stream_id)
    .bind(revision)
    .bind(event_id)
    .bind(event_type)
    .bind(schema_version)
    .bind(data)
    .bind(metadata)
    .bind(recorded_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
