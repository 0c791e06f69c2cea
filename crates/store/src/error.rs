//! The store's error taxonomy. Each variant says how a caller must treat it.

use crate::event::{ExpectedRevision, IdempotencyRecord, StreamId};

/// Errors of [`crate::EventStore`] operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: the stream is not at the expected revision.
    /// `actual` is `None` when the stream does not exist. Callers reload and
    /// retry (a conflict), never treat it as an infrastructure failure.
    #[error("wrong expected revision on {stream}: expected {expected}, actual {}", .actual.map_or("no stream".to_owned(), |r| format!("revision {r}")))]
    WrongExpectedRevision {
        /// The stream appended to.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedRevision,
        /// The stream's actual last revision, `None` if it does not exist.
        actual: Option<u64>,
    },
    /// Some of the appended event ids already exist, but not as the exact same
    /// append: a caller bug (user error class), never retried.
    #[error("event id {0} already exists in a different append")]
    DuplicateEventId(uuid::Uuid),
    /// An idempotent append's key is already recorded: nothing was written.
    /// Carries the first append's record, whatever the request hash; the
    /// caller compares `request_hash` to tell a replay (same input: return
    /// the recorded outcome) from a reused key (different input). Never
    /// retried.
    #[error("idempotency key {:?} was already used (stream {}, revision {}, position {})", .0.key, .0.stream_id, .0.revision, .0.position)]
    IdempotencyKeyUsed(Box<IdempotencyRecord>),
    /// The append carried no events.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// A transient backend failure (connection lost, timeout): safe to retry,
    /// because appends are idempotent by event id.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be decoded: data corruption or a bug.
    #[error("could not decode a stored event: {0}")]
    Decode(String),
    /// Any other backend failure.
    #[error("event store failure: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Decode(e.to_string())
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}
