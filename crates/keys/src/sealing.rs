//! [`SealingStore`]: the event store every part of the marketplace reads
//! and writes through, which seals personal fields on append and opens
//! them on read.
//!
//! It wraps any backend, and has its capabilities (an append across
//! streams where the backend has one). On append (of every part, for an
//! append across streams), each event whose type and version
//! have sealed personal fields (`personal::PERSONAL`) is sealed under its
//! subject's data key, made on first use; the backend then stores, and
//! chains (`metadata.hash`), the ciphertext. On every read (streams, the
//! global log, subscriptions) the personal fields are opened with the
//! subjects' keys, fetched in one query per batch and never cached, so an
//! erasure in any process takes effect in every other at its next read:
//! a destroyed key makes them `null`, as does a historic plain-text (v1)
//! field of an erased person. Consumers, audits and rebuilds therefore
//! all see the same thing, and none of them holds a key.
//!
//! `audit verify` must read the stored bytes, not the opened ones:
//! [`SealingStore::raw`] is the backend underneath.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use marketplace_event_schemas::personal::{self, personal_fields};
use marketplace_store::{
    AppendOutcome, EventStore, EventStream, ExpectedRevision, IdempotencyKey, IdempotencyRecord,
    NewEvent, Position, RecordedEvent, SharedEventStream, Snapshot, StoreError, StreamAppend,
    StreamId,
};
use uuid::Uuid;

use crate::keyring::{KeyError, KeyState, Keyring};

/// An event store that seals personal fields on the way in and opens them
/// on the way out (see the module docs).
#[derive(Clone)]
pub struct SealingStore {
    inner: Arc<dyn EventStore>,
    keyring: Keyring,
}

impl std::fmt::Debug for SealingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingStore").finish_non_exhaustive()
    }
}

fn store_error(e: KeyError) -> StoreError {
    match e {
        KeyError::Database(db) => StoreError::Unavailable(format!("key table: {db}")),
        KeyError::Erased(_) => StoreError::Rejected {
            reason: e.to_string(),
        },
        KeyError::BadMasterKey | KeyError::WrongMasterKey => StoreError::Backend(e.to_string()),
    }
}

impl SealingStore {
    /// Wraps `inner`, sealing with the keys of `keyring`.
    pub fn new(inner: Arc<dyn EventStore>, keyring: Keyring) -> Self {
        Self { inner, keyring }
    }

    /// The backend underneath: events exactly as stored (sealed).
    pub fn raw(&self) -> Arc<dyn EventStore> {
        self.inner.clone()
    }

    /// The key table.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    async fn seal(&self, events: Vec<NewEvent>) -> Result<Vec<NewEvent>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for mut e in events {
            let sealed = personal_fields(&e.event_type, e.schema_version).is_some_and(|p| p.sealed);
            if sealed {
                let subject = personal::subject(&e.event_type, e.schema_version, &e.data)
                    .ok_or_else(|| StoreError::Rejected {
                        reason: format!("{}: no subject for its personal fields", e.event_type),
                    })?;
                let key = self
                    .keyring
                    .key_for_sealing(subject)
                    .await
                    .map_err(store_error)?;
                e.data = personal::seal(&e.event_type, e.schema_version, e.data, &key).map_err(
                    |err| StoreError::Rejected {
                        reason: err.to_string(),
                    },
                )?;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Opens the personal fields of `events` (one key lookup for all).
    pub async fn open(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, StoreError> {
        let subjects: Vec<Uuid> = events
            .iter()
            .filter_map(|e| personal::subject(&e.event_type, e.schema_version, &e.data))
            .collect();
        if subjects.is_empty() {
            return Ok(events);
        }
        let keys = self
            .keyring
            .keys_for(&subjects)
            .await
            .map_err(store_error)?;
        events.into_iter().map(|e| open_one(e, &keys)).collect()
    }
}

fn open_one(
    mut e: RecordedEvent,
    keys: &HashMap<Uuid, KeyState>,
) -> Result<RecordedEvent, StoreError> {
    let Some(spec) = personal_fields(&e.event_type, e.schema_version) else {
        return Ok(e);
    };
    let Some(subject) = personal::subject(&e.event_type, e.schema_version, &e.data) else {
        return Ok(e);
    };
    let key = match keys.get(&subject) {
        Some(KeyState::Live(key)) => Some(key),
        Some(KeyState::Erased) => None,
        // Plain historic fields of a person with no key stay readable;
        // sealed ones without a key can never be read again.
        Some(KeyState::Absent) | None if !spec.sealed => return Ok(e),
        Some(KeyState::Absent) | None => None,
    };
    let data = std::mem::take(&mut e.data);
    e.data = personal::open(&e.event_type, e.schema_version, data, key).map_err(|err| {
        StoreError::Decode(format!(
            "{} at position {}: {err}",
            e.event_type, e.position.0
        ))
    })?;
    Ok(e)
}

#[async_trait]
impl EventStore for SealingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let events = self.seal(events).await?;
        self.inner.append(stream, expected, events).await
    }

    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        let events = self.seal(events).await?;
        self.inner
            .append_idempotent(stream, expected, events, key)
            .await
    }

    fn multi_stream_appends(&self) -> bool {
        self.inner.multi_stream_appends()
    }

    async fn append_streams(
        &self,
        parts: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut sealed = Vec::with_capacity(parts.len());
        for part in parts {
            sealed.push(StreamAppend {
                events: self.seal(part.events).await?,
                ..part
            });
        }
        self.inner.append_streams(sealed, key).await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_record(key).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream, from_revision).await?;
        self.open(events).await
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .inner
            .read_stream_page(stream, from_revision, limit)
            .await?;
        self.open(events).await
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(from, limit).await?;
        self.open(events).await
    }

    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        // The shared subscription, each event copied out (a no-op for an
        // event only this stream holds).
        Ok(Box::pin(
            self.subscribe_all_shared(from)
                .await?
                .map(|item| item.map(Arc::unwrap_or_clone)),
        ))
    }

    async fn subscribe_all_shared(&self, from: Position) -> Result<SharedEventStream, StoreError> {
        let inner = self.inner.subscribe_all_shared(from).await?;
        let this = self.clone();
        Ok(Box::pin(inner.then(move |item| {
            let this = this.clone();
            async move {
                let event = item?;
                // Most events hold no personal data: they pass on shared.
                if personal::subject(&event.event_type, event.schema_version, &event.data).is_none()
                {
                    return Ok(event);
                }
                let mut opened = this.open(vec![Arc::unwrap_or_clone(event)]).await?;
                opened
                    .pop()
                    .map(Arc::new)
                    .ok_or_else(|| StoreError::Backend("an opened event went missing".into()))
            }
        })))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }

    fn dense_positions(&self) -> bool {
        self.inner.dense_positions()
    }

    async fn read_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.read_snapshot(stream).await
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.write_snapshot(stream, snapshot).await
    }
}
