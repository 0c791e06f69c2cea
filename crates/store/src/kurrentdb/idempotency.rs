//! Idempotency keys on KurrentDB: one stream per key, used as a small state
//! machine (`claimed` → `recorded` | `released`) guarded by expected
//! revisions. The protocol and its known limit are in the parent module's
//! docs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kurrentdb::{EventData, StreamState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::KurrentDbEventStore;
use crate::error::StoreError;
use crate::event::{
    AppendOutcome, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent, StreamId,
};
use crate::port::EventStore;

/// How long a claim may stay unresolved before another caller with the same
/// key takes it over.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The longest a caller waits on another attempt's claim (the lease, plus the
/// time to take it over).
const WAIT_AT_MOST: Duration = Duration::from_secs(45);

/// Namespace of the UUID v5 that names a key's stream.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6d61_726b_6574_706c_6163_652d_6964_656d);

/// One state change of a key, as stored in the key's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum KeyEvent {
    Claimed {
        attempt: Uuid,
        key: String,
        request_hash: String,
        stream: StreamId,
        event_ids: Vec<Uuid>,
        claimed_at: DateTime<Utc>,
    },
    Recorded {
        record: IdempotencyRecord,
    },
    Released {
        attempt: Uuid,
    },
}

impl KeyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            KeyEvent::Claimed { .. } => "idempotency.claimed",
            KeyEvent::Recorded { .. } => "idempotency.recorded",
            KeyEvent::Released { .. } => "idempotency.released",
        }
    }
}

/// The latest state of a key and the key stream's revision.
struct KeyState {
    last: Option<(u64, KeyEvent)>,
}

impl KeyState {
    fn next_expected(&self) -> StreamState {
        match &self.last {
            None => StreamState::NoStream,
            Some((r, _)) => StreamState::StreamRevision(*r),
        }
    }
}

fn key_stream(store: &KurrentDbEventStore, key: &str) -> String {
    store.bookkeeping_stream("idempotency", Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes()))
}

async fn state(store: &KurrentDbEventStore, stream: &str) -> Result<KeyState, StoreError> {
    let last = store.read_last(stream).await?;
    let last = match last {
        None => None,
        Some(e) => {
            let event: KeyEvent = serde_json::from_slice(&e.data)
                .map_err(|err| StoreError::Decode(format!("{stream}@{}: {err}", e.revision)))?;
            Some((e.revision, event))
        }
    };
    Ok(KeyState { last })
}

/// Appends a state change at `expected`; `false` if another writer got there
/// first.
async fn change(
    store: &KurrentDbEventStore,
    stream: &str,
    expected: StreamState,
    event: &KeyEvent,
) -> Result<bool, StoreError> {
    let data = EventData::json(event.event_type(), event)
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .id(Uuid::new_v4());
    Ok(store
        .append_raw(stream, expected, vec![data])
        .await?
        .is_ok())
}

/// The record of `key`, if a successful idempotent append recorded it.
pub(super) async fn record(
    store: &KurrentDbEventStore,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let st = state(store, &key_stream(store, key)).await?;
    Ok(match st.last {
        Some((_, KeyEvent::Recorded { record })) => Some(record),
        Some((_, KeyEvent::Claimed { .. } | KeyEvent::Released { .. })) | None => None,
    })
}

fn record_of(
    key: &str,
    request_hash: &str,
    stream: &StreamId,
    outcome: AppendOutcome,
) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.to_owned(),
        request_hash: request_hash.to_owned(),
        stream_id: stream.clone(),
        revision: outcome.revision,
        position: outcome.position,
        recorded_at: Utc::now(),
    }
}

/// `append_idempotent` (see the parent module's docs for the protocol).
pub(super) async fn append(
    store: &KurrentDbEventStore,
    stream: &StreamId,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    key: IdempotencyKey,
) -> Result<AppendOutcome, StoreError> {
    let ks = key_stream(store, &key.key);
    let my_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let attempt = Uuid::new_v4();
    let started = std::time::Instant::now();
    let backoff = crate::retry::Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
    let mut waits = 0u32;
    let claim_revision = loop {
        let st = state(store, &ks).await?;
        match &st.last {
            Some((_, KeyEvent::Recorded { record })) => {
                return Err(StoreError::IdempotencyKeyUsed(Box::new(record.clone())))
            }
            // A retry of an attempt whose outcome was unknown: resume it.
            Some((r, KeyEvent::Claimed { event_ids, .. })) if *event_ids == my_ids => break *r,
            Some((
                r,
                KeyEvent::Claimed {
                    stream: target,
                    event_ids,
                    claimed_at,
                    ..
                },
            )) => {
                if Utc::now()
                    .signed_duration_since(*claimed_at)
                    .to_std()
                    .unwrap_or_default()
                    >= CLAIM_LEASE
                {
                    take_over(store, &ks, *r, target, event_ids, &key).await?;
                    continue;
                }
                if started.elapsed() > WAIT_AT_MOST {
                    return Err(StoreError::Unavailable(format!(
                        "idempotency key {:?} is held by an attempt that neither finished nor expired",
                        key.key
                    )));
                }
                waits = waits.saturating_add(1);
                tokio::time::sleep(backoff.delay(waits)).await;
            }
            Some((_, KeyEvent::Released { .. })) | None => {
                let claim = KeyEvent::Claimed {
                    attempt,
                    key: key.key.clone(),
                    request_hash: key.request_hash.clone(),
                    stream: stream.clone(),
                    event_ids: my_ids.clone(),
                    claimed_at: Utc::now(),
                };
                if change(store, &ks, st.next_expected(), &claim).await? {
                    break st.last.as_ref().map_or(0, |(r, _)| r + 1);
                }
            }
        }
    };
    match store.append(stream, expected, events).await {
        Ok(outcome) => {
            let record = record_of(&key.key, &key.request_hash, stream, outcome);
            let recorded = KeyEvent::Recorded { record };
            if !change(
                store,
                &ks,
                StreamState::StreamRevision(claim_revision),
                &recorded,
            )
            .await?
            {
                // Another caller took the claim over after the lease; it
                // records the same stored events' outcome.
                tracing::warn!(key = %key.key, "an idempotency claim was taken over while its append completed");
            }
            Ok(outcome)
        }
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => {
            let released = KeyEvent::Released { attempt };
            change(
                store,
                &ks,
                StreamState::StreamRevision(claim_revision),
                &released,
            )
            .await?;
            Err(e)
        }
    }
}

/// Resolves an expired claim at revision `at`: records the outcome of its
/// events if they were stored, otherwise releases the key.
async fn take_over(
    store: &KurrentDbEventStore,
    ks: &str,
    at: u64,
    target: &StreamId,
    event_ids: &[Uuid],
    key: &IdempotencyKey,
) -> Result<(), StoreError> {
    let stored = store.read_stream(target, 0).await?;
    let last_id = event_ids.last().copied();
    let event = match stored.iter().find(|e| Some(e.event_id) == last_id) {
        Some(last) => {
            let request_hash = match state(store, ks).await?.last {
                Some((_, KeyEvent::Claimed { request_hash, .. })) => request_hash,
                _ => key.request_hash.clone(),
            };
            KeyEvent::Recorded {
                record: record_of(
                    &key.key,
                    &request_hash,
                    target,
                    AppendOutcome {
                        revision: last.revision,
                        position: last.position,
                    },
                ),
            }
        }
        None => KeyEvent::Released {
            attempt: Uuid::nil(),
        },
    };
    change(store, ks, StreamState::StreamRevision(at), &event).await?;
    Ok(())
}
