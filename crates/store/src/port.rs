//! The [`EventStore`] port: the only way the rest of the system touches the log.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::error::StoreError;
use crate::event::{
    AppendOutcome, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent, Position,
    RecordedEvent, Snapshot, StreamAppend, StreamId,
};

/// A stream of events from a subscription. It ends only on an error the
/// backend cannot recover from; dropping it unsubscribes.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>;

/// A subscription whose events are shared rather than copied: what
/// [`EventStore::subscribe_all_shared`] returns.
pub type SharedEventStream =
    Pin<Box<dyn Stream<Item = Result<Arc<RecordedEvent>, StoreError>> + Send>>;

/// An append-only, globally ordered log of streams (DESIGN.md §2).
///
/// Every backend passes the suite in [`crate::conformance`].
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically to `stream` if it is at `expected`.
    ///
    /// Appending event ids that are already stored as the very same append
    /// is an idempotent retry: it returns the original outcome and writes
    /// nothing.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Appends like [`EventStore::append`], and records `key` with the
    /// append's outcome atomically with it (DESIGN.md: idempotency keys).
    ///
    /// - If `key.key` is already recorded, nothing is written and the result
    ///   is [`StoreError::IdempotencyKeyUsed`] carrying the first append's
    ///   record, whatever `key.request_hash` is (the caller compares hashes).
    ///   This is checked before the append itself, so it also wins over an
    ///   expected-revision mismatch.
    /// - If the append fails (wrong expected revision, duplicate event id,
    ///   empty), the key is not recorded.
    /// - If the append is an idempotent retry of stored event ids, the key is
    ///   recorded with the original outcome.
    ///
    /// Holds across retries, crashes and concurrent duplicates: of any number
    /// of concurrent calls with one key, exactly one appends.
    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError>;

    /// Whether [`EventStore::append_streams`] is available: an atomic
    /// append across several streams, each with its own expected revision.
    /// Postgres and in-memory have it; KurrentDB's Rust client does not
    /// expose its server's multi-stream append, so that backend says no and
    /// its callers take the one-stream-at-a-time path (the checkout saga).
    fn multi_stream_appends(&self) -> bool {
        false
    }

    /// Appends every part, or none: each part's stream must be at its own
    /// `expected` revision, or nothing is written and the error is the
    /// first mismatching part's [`StoreError::WrongExpectedRevision`] (it
    /// names the stream). Returns one outcome per part, in order; the
    /// parts' events take consecutive positions in part order.
    ///
    /// - A stream named by two parts, or a part without events, is
    ///   refused ([`StoreError::Rejected`], [`StoreError::EmptyAppend`]).
    /// - Appending the very same parts again (same event ids) is an
    ///   idempotent retry: the original outcomes, nothing written. Some
    ///   but not all of the ids stored is [`StoreError::DuplicateEventId`].
    /// - With `key`, the key is recorded atomically with the append, as in
    ///   [`EventStore::append_idempotent`]: its record names the first
    ///   part's stream and last revision, and the highest position of the
    ///   whole append (a consistency token that covers every part).
    ///
    /// Backends without the capability answer [`StoreError::Unsupported`].
    async fn append_streams(
        &self,
        _parts: Vec<StreamAppend>,
        _key: Option<IdempotencyKey>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        Err(StoreError::Unsupported("atomic appends across streams"))
    }

    /// The record of an idempotency key, `None` if it was never used by a
    /// successful [`EventStore::append_idempotent`].
    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Events of `stream` from `from_revision` (inclusive), oldest first.
    /// An absent stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of `stream` from `from_revision` (inclusive),
    /// oldest first: a long stream read a page at a time, so loading it
    /// never holds all of it in memory. The default reads the whole tail
    /// and cuts it; backends override it with a bounded read.
    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.read_stream(stream, from_revision).await?;
        events.truncate(limit);
        Ok(events)
    }

    /// Up to `limit` events of the global log strictly after `from`, in
    /// position order. Never returns an event below one a later call could
    /// return first: what it returns is final.
    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Catch-up subscription to the whole log strictly after `from`: first
    /// everything stored, then live events as they commit, with no gap and no
    /// duplicate, without polling in a busy loop.
    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError>;

    /// [`subscribe_all`](Self::subscribe_all), the same events in the same
    /// order, handed out shared. A backend that keeps the live tail in
    /// memory gives every local subscriber the one copy it holds, instead
    /// of a deep copy of each event per subscriber; the default wraps
    /// `subscribe_all`.
    async fn subscribe_all_shared(&self, from: Position) -> Result<SharedEventStream, StoreError> {
        Ok(Box::pin(
            self.subscribe_all(from)
                .await?
                .map(|item| item.map(Arc::new)),
        ))
    }

    /// The position of the last committed event (`Position::START` if none).
    async fn head(&self) -> Result<Position, StoreError>;

    /// Whether positions are dense: every integer from 1 to the head is an
    /// event, so a missing one means a deleted event (what `audit verify`
    /// checks). True of the Postgres and in-memory backends; KurrentDB's
    /// positions are byte offsets in its transaction log, so only their
    /// order means anything.
    fn dense_positions(&self) -> bool {
        true
    }

    /// The snapshot stored for `stream`, if any. Snapshots are a cache of
    /// states the events determine: a backend may keep none (the default),
    /// and then every load after a cache miss folds the whole stream.
    async fn read_snapshot(&self, _stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }

    /// Stores `snapshot` for `stream`, replacing one of the same or a lower
    /// revision, or of another version; one of a higher revision stays. Not part of any
    /// append: losing it loses nothing but time.
    async fn write_snapshot(
        &self,
        _stream: &StreamId,
        _snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
