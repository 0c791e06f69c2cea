//! The serialising appender with group commit.
//!
//! One task per process owns the write path. It takes the first queued
//! request, drains whatever else is already waiting (up to the limits), and
//! writes the lot in one transaction under the global append lock. Each
//! request is planned on its own — idempotency key, expected revision,
//! idempotent retry, hash chain — against the stored state plus the requests
//! planned before it in the same batch, so a conflict refuses only its own
//! request. The idempotency keys of the requests that succeed are inserted in
//! the same transaction as the events: a key is recorded exactly when its
//! append commits, and a second request with a key claimed earlier in the same
//! batch is refused with the first one's record.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{
    AppendOutcome, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent, Position,
    RecordedEvent, StreamId,
};
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
    /// The idempotency key to record with the append's outcome, if any.
    pub idempotency: Option<IdempotencyKey>,
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
    // Postgres keeps microseconds: truncate so a record handed out from this
    // batch equals the one read back later.
    let now = Utc::now();
    let recorded_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);

    let mut results = Vec::with_capacity(work.len());
    let mut rows: Vec<RecordedEvent> = Vec::new();
    let mut new_keys: Vec<IdempotencyRecord> = Vec::new();
    for w in work {
        let key = w.idempotency;
        if let Some(record) = key.as_ref().and_then(|k| claimed.get(&k.key)) {
            results.push(Err(StoreError::IdempotencyKeyUsed(Box::new(
                record.clone(),
            ))));
            continue;
        }
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
        let outcome = match plan {
            Ok(Plan::AlreadyStored(outcome)) => outcome,
            Ok(Plan::Write(new_rows)) => {
                let Some(last) = new_rows.last() else {
                    results.push(Err(StoreError::EmptyAppend));
                    continue;
                };
                let outcome = AppendOutcome {
                    revision: last.revision,
                    position: last.position,
                };
                current.insert(
                    w.stream.clone(),
                    (last.revision, last.metadata.hash.clone()),
                );
                for r in &new_rows {
                    existing.insert(r.event_id, (r.stream_id.clone(), r.revision, r.position));
                }
                rows.extend(new_rows);
                outcome
            }
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        if let Some(key) = key {
            let record = IdempotencyRecord {
                key: key.key,
                request_hash: key.request_hash,
                stream_id: w.stream,
                revision: outcome.revision,
                position: outcome.position,
                recorded_at,
            };
            claimed.insert(record.key.clone(), record.clone());
            new_keys.push(record);
        }
        results.push(Ok(outcome));
    }

    if !new_keys.is_empty() {
        insert_keys(conn, new_keys).await?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::EventMetadata;
    use crate::testdb::TestDatabase;

    fn batched(stream: &StreamId, key: &IdempotencyKey) -> Batched {
        Batched {
            stream: stream.clone(),
            expected: ExpectedRevision::Any,
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema_version: 1,
                data: json!({}),
                metadata: EventMetadata::default(),
            }],
            idempotency: Some(key.clone()),
        }
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
        let mut tx = pool.begin().await.expect("begin");
        let results = write_batch(&mut tx, vec![batched(&s, &key), batched(&s, &second_key)])
            .await
            .expect("batch");
        tx.commit().await.expect("commit");

        let [first, second]: [_; 2] = results.try_into().expect("two results");
        let first = first.expect("the first appends");
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
}
