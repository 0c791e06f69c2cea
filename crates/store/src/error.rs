//! The store's error taxonomy. Each variant says how a caller must treat it.

use crate::event::{ExpectedRevision, IdempotencyRecord, StreamId};

/// Errors of [`crate::EventStore`] operations.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The request's own data was refused by the backend: a string holding
    /// U+0000 (which Postgres `jsonb` and `text` cannot store), a value
    /// outside a column's constraints or a backend limit. Nothing of the
    /// request was written, its idempotency key included; retrying it
    /// unchanged will not help; other requests, even those group-committed
    /// with it, are unaffected. A user error (bad input), never retried.
    #[error("the event store refused the request's data: {reason}")]
    Rejected {
        /// What was refused: the store's own check, or the backend's message
        /// and SQLSTATE. It speaks of this request's data only.
        reason: String,
    },
    /// The backend cannot do this operation at all (for example an atomic
    /// append across several streams); callers check the capability first
    /// ([`crate::EventStore::multi_stream_appends`]). Never retried.
    #[error("the event store does not support {0}")]
    Unsupported(&'static str),
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
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Decode(e.to_string())
            }
            sqlx::Error::Database(db) => match db.code().as_deref().map(classify_sqlstate) {
                Some(SqlState::Data) => StoreError::Rejected {
                    reason: match db.code() {
                        Some(code) => format!("{} (SQLSTATE {code})", db.message()),
                        None => db.message().to_owned(),
                    },
                },
                Some(SqlState::Transient) => StoreError::Unavailable(e.to_string()),
                Some(SqlState::Other) | None => StoreError::Backend(e.to_string()),
            },
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// What a Postgres error code says about the statement that raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqlState {
    /// The values the statement carried were refused; the same values will
    /// be refused again, and other values would not have been. Classes 22
    /// (data exception, e.g. `22P05` for `\u0000` in `jsonb`, `22021` for
    /// NUL in `text`), 23 (integrity constraint violation, e.g. `23514` for a
    /// `CHECK`) except `23505`, and 54 (program limit exceeded, e.g. a value
    /// too large or too deeply nested).
    ///
    /// `23505 unique_violation` is not a data error here: every uniqueness
    /// rule of the log (positions, revisions, event ids, idempotency keys) is
    /// planned under the append lock against the stored state, so a unique
    /// violation means the store's own invariant broke (a writer outside the
    /// lock, or a bug), not that the request was wrong.
    Data,
    /// The server or the connection failed, or the transaction lost a race
    /// the server resolves by aborting: retrying may succeed. Classes 08
    /// (connection exception), 40 (transaction rollback: serialization
    /// failure, deadlock, unknown completion) and 53 (insufficient
    /// resources), and `57P01` admin shutdown, `57P02` crash shutdown,
    /// `57P03` cannot connect now.
    Transient,
    /// Anything else: a bug, a missing migration, a permission problem.
    Other,
}

fn classify_sqlstate(code: &str) -> SqlState {
    match code.get(..2) {
        Some("22" | "54") => SqlState::Data,
        Some("23") if code != "23505" => SqlState::Data,
        Some("08" | "40" | "53") => SqlState::Transient,
        _ if matches!(code, "57P01" | "57P02" | "57P03") => SqlState::Transient,
        _ => SqlState::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_sorted_into_data_transient_and_other_failures() {
        for code in [
            "22P05", "22021", "22001", "22003", "23514", "23502", "54000", "54001",
        ] {
            assert_eq!(classify_sqlstate(code), SqlState::Data, "{code}");
        }
        for code in [
            "08006", "08003", "40001", "40P01", "53300", "57P01", "57P02", "57P03",
        ] {
            assert_eq!(classify_sqlstate(code), SqlState::Transient, "{code}");
        }
        for code in ["23505", "42P01", "42501", "57014", "XX000", "P0001", ""] {
            assert_eq!(classify_sqlstate(code), SqlState::Other, "{code}");
        }
    }
}
