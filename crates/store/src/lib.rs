//! The event store: the port every other crate writes and reads the log through,
//! and its backends.
//!
//! This crate may depend on nothing of the marketplace but itself: it stores
//! opaque events (a type name, a schema version, JSON data and metadata) and
//! knows no aggregate. `commands` and `projections` depend on it; `domain` never
//! does.
//!
//! Layout:
//! - [`event`]: the value types of the contract — [`StreamId`], [`NewEvent`],
//!   [`RecordedEvent`], [`Position`], [`ExpectedRevision`], [`EventMetadata`],
//!   [`IdempotencyKey`], [`IdempotencyRecord`], [`Snapshot`], [`StreamAppend`].
//! - [`error`]: [`StoreError`], whose variants say how a caller must treat them.
//! - [`port`]: the [`EventStore`] trait (append, append_idempotent,
//!   idempotency_record, read_stream, read_all, subscribe_all, head, and
//!   the optional read_snapshot/write_snapshot and append_streams, an
//!   atomic append across streams where multi_stream_appends says so) that
//!   every backend implements.
//! - [`postgres`]: the embedded default backend (one append-only `events`
//!   table, an `idempotency_keys` table written in the same transaction as
//!   the append, a serialising appender, LISTEN/NOTIFY for live delivery,
//!   a `snapshots` table beside the log).
//! - [`kurrentdb`]: the KurrentDB backend through the official `kurrentdb`
//!   gRPC client (streams and revisions, `$all` commit positions, catch-up
//!   subscriptions; event-id claims and per-key streams for what KurrentDB
//!   has no transaction for). Its module docs explain the mapping.
//!   Snapshots go to a bookkeeping stream per stream, outside `$all`.
//! - [`memory`]: an in-process backend for unit tests of other crates.
//! - [`retry`]: the one jittered [`retry::Backoff`] policy (the consumer
//!   runtime re-exports it).
//! - `conformance` (feature `testing`): the one conformance suite every
//!   backend must pass.
//!
//! Where a Postgres comes from (the embedded cluster, a fresh database per
//! test) is not this crate's business: see `marketplace-embedded-postgres`.

pub mod error;
pub mod event;
pub mod kurrentdb;
pub mod memory;
pub mod port;
pub mod postgres;
pub mod retry;
mod subscription;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

pub use error::StoreError;
pub use event::{
    AppendOutcome, EventMetadata, ExpectedRevision, IdempotencyKey, IdempotencyRecord, NewEvent,
    Position, RecordedEvent, Snapshot, StreamAppend, StreamId, StreamIdError,
};
pub use kurrentdb::KurrentDbEventStore;
pub use memory::InMemoryEventStore;
pub use port::{EventStore, EventStream, SharedEventStream};
pub use postgres::PostgresEventStore;
