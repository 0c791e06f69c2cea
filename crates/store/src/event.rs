//! Value types of the event store contract (DESIGN.md §2).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// A stream name of the form `<category>-<uuid>`, e.g. `order-0193…`.
///
/// The category is lowercase ASCII letters, digits or `_`; the id is a UUID
/// in its hyphenated form. Built only through [`StreamId::new`] or parsing, so
/// a value of this type is always well formed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

/// Why a string is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id {0:?}: expected <category>-<uuid>, category in [a-z0-9_]")]
pub struct StreamIdError(pub String);

impl StreamId {
    /// The stream of one aggregate instance.
    pub fn new(category: &str, id: Uuid) -> Result<Self, StreamIdError> {
        Self::parse(&format!("{category}-{id}"))
    }

    /// Parses `<category>-<uuid>`.
    pub fn parse(s: &str) -> Result<Self, StreamIdError> {
        let err = || StreamIdError(s.chars().take(128).collect());
        // A hyphenated UUID is 36 characters long and itself contains hyphens,
        // so the category is whatever comes before it.
        // Valid names are ASCII; anything else could also put the split
        // below inside a character.
        if s.len() < 38 || !s.is_ascii() {
            return Err(err());
        }
        let (category, rest) = s.split_at(s.len() - 37);
        let id = rest.strip_prefix('-').ok_or_else(err)?;
        let valid_category = !category.is_empty()
            && category.len() <= 64
            && category
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let parsed = Uuid::try_parse(id).map_err(|_| err())?;
        if !valid_category || parsed.hyphenated().to_string() != id {
            return Err(err());
        }
        Ok(Self(s.to_owned()))
    }

    /// The category part, e.g. `order`.
    pub fn category(&self) -> &str {
        &self.0[..self.0.len() - 37]
    }

    /// The id part.
    pub fn id(&self) -> Uuid {
        // Checked in `parse`.
        Uuid::try_parse(&self.0[self.0.len() - 36..]).unwrap_or_default()
    }

    /// The stream name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = StreamIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

/// A place in the global log. Positions only grow in commit order; a reader
/// that has seen position `p` never later receives an event below `p`.
///
/// `Position::START` is before the first event: reading "from" it yields
/// everything. Reading from `p` yields events strictly after `p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event of the log.
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the writer believes the stream's last revision to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this revision.
    Exact(u64),
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::Exact(r) => write!(f, "revision {r}"),
        }
    }
}

/// Metadata carried by every event.
///
/// `recorded_at` and the hash-chain fields are filled by the store at append
/// time; writers leave them `None`.
///
/// The audit hash chain ([`chain_hash`]) covers the stream, revision, id,
/// type, schema version and data, never the metadata: correlation,
/// causation, actor and trace context are context of the write, not its
/// content, so an event written before `traceparent` existed (stored
/// without it) verifies as before, and so does one that carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Ties together everything caused by one user request.
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Who caused it: an account id, or a process name such as `saga:checkout`.
    pub actor: Option<String>,
    /// The client's idempotency key, when the command carried one.
    pub idempotency_key: Option<String>,
    /// When the store recorded the event.
    pub recorded_at: Option<DateTime<Utc>>,
    /// Hex sha256 of the previous event in the same stream (audit chain).
    pub prev_hash: Option<String>,
    /// Hex sha256 of this event, chained over `prev_hash` (audit chain).
    pub hash: Option<String>,
    /// The W3C `traceparent` of the span that wrote the event (the command
    /// that decided it), so whatever reacts to the event (projections,
    /// process managers, live feeds) continues the same trace. Absent on
    /// events written while tracing was off, or before the field existed;
    /// it is not part of the hash chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id; appending the same ids again is an idempotent retry.
    pub event_id: Uuid,
    /// Stable stored name such as `order.placed`.
    pub event_type: String,
    /// Version of the data's JSON Schema.
    pub schema_version: u32,
    /// The payload.
    pub data: serde_json::Value,
    /// Correlation, causation, actor and idempotency key.
    pub metadata: EventMetadata,
}

/// An event as stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its place in the stream: 0, 1, 2, … without gaps.
    pub revision: u64,
    /// Its place in the global log.
    pub position: Position,
    /// Unique id.
    pub event_id: Uuid,
    /// Stable stored name such as `order.placed`.
    pub event_type: String,
    /// Version of the data's JSON Schema when it was written.
    pub schema_version: u32,
    /// The payload.
    pub data: serde_json::Value,
    /// Metadata, including `recorded_at` and the hash chain.
    pub metadata: EventMetadata,
}

impl RecordedEvent {
    /// When the store recorded it (falls back to the epoch if a backend lost it).
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.metadata.recorded_at.unwrap_or_default()
    }
}

/// A stored state of one stream's aggregate at one revision, so a load
/// after a cache miss or a restart folds only the tail after it. The
/// version is the aggregate's snapshot form: a reader ignores any other.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The revision of the last event folded into it.
    pub revision: u64,
    /// That event's position.
    pub position: Position,
    /// The aggregate's snapshot version.
    pub version: u32,
    /// The state.
    pub state: serde_json::Value,
}

/// The result of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's revision after the append (its last event's revision).
    pub revision: u64,
    /// The global position of the last appended event: the consistency token.
    pub position: Position,
}

/// One stream's share of a multi-stream append
/// ([`crate::EventStore::append_streams`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    /// The stream appended to (at most once per append).
    pub stream: StreamId,
    /// Where it must be for the whole append to happen.
    pub expected: ExpectedRevision,
    /// Its events, in order (at least one).
    pub events: Vec<NewEvent>,
}

/// A client's idempotency key for one mutation, as the store records it.
///
/// The store compares only `key`: an idempotent append whose key is already
/// recorded writes nothing and returns the first append's
/// [`IdempotencyRecord`], whatever its `request_hash`. Deciding whether the
/// retry is the same request (same hash: replay the first result) or a misuse
/// (different hash: refuse) is the caller's job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// The key, already scoped by the caller (e.g. `<account uuid>:<client key>`).
    pub key: String,
    /// Hex digest of the request input, computed by the caller.
    pub request_hash: String,
}

/// A recorded idempotency key: the outcome of the first append that used it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The (caller-scoped) key.
    pub key: String,
    /// The request hash the first append carried.
    pub request_hash: String,
    /// The stream the first append went to.
    pub stream_id: StreamId,
    /// The stream's revision after that append (its last event's revision).
    pub revision: u64,
    /// The global position of that append's last event.
    pub position: Position,
    /// When the key was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl IdempotencyRecord {
    /// The outcome of the append that recorded the key.
    pub fn outcome(&self) -> AppendOutcome {
        AppendOutcome {
            revision: self.revision,
            position: self.position,
        }
    }
}

/// Refuses, as [`StoreError::Rejected`], an append holding text the log
/// cannot store: U+0000 in any string (or object key) of an event's data, in
/// its metadata or type, or in the idempotency key. Postgres `jsonb` and
/// `text` refuse it, so every backend refuses it the same way, before the
/// request touches anything shared. Cheap: one walk over the strings.
pub(crate) fn check_storable(
    events: &[NewEvent],
    key: Option<&IdempotencyKey>,
) -> Result<(), StoreError> {
    let refused = |what: String| StoreError::Rejected {
        reason: format!("{what} holds the character U+0000, which the event store cannot store"),
    };
    if let Some(key) = key {
        if has_nul(&key.key) || has_nul(&key.request_hash) {
            return Err(refused("the idempotency key".into()));
        }
    }
    for e in events {
        let EventMetadata {
            correlation_id: _,
            causation_id: _,
            actor,
            idempotency_key,
            recorded_at: _,
            prev_hash,
            hash,
            traceparent,
        } = &e.metadata;
        let metadata = [actor, idempotency_key, prev_hash, hash, traceparent];
        if metadata.into_iter().flatten().any(|s| has_nul(s)) {
            return Err(refused(format!("the metadata of event {}", e.event_id)));
        }
        if has_nul(&e.event_type) {
            return Err(refused(format!("the type of event {}", e.event_id)));
        }
        if json_has_nul(&e.data) {
            return Err(refused(format!("the data of event {}", e.event_id)));
        }
    }
    Ok(())
}

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

fn json_has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    // An explicit stack: a value built in code is not bounded in depth the
    // way parsed JSON is.
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
            Value::String(s) => {
                if has_nul(s) {
                    return true;
                }
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(fields) => {
                for (name, field) in fields {
                    if has_nul(name) {
                        return true;
                    }
                    pending.push(field);
                }
            }
        }
    }
    false
}

/// The sha256 hash chain link of an event: hex(sha256(prev_hash | stream |
/// revision | event_id | type | version | canonical data)).
///
/// Computed by every backend the same way so `audit verify` works on all.
pub fn chain_hash(
    prev_hash: Option<&str>,
    stream_id: &StreamId,
    revision: u64,
    event_id: Uuid,
    event_type: &str,
    schema_version: u32,
    data: &serde_json::Value,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.unwrap_or("").as_bytes());
    h.update(b"|");
    h.update(stream_id.as_str().as_bytes());
    h.update(b"|");
    h.update(revision.to_string().as_bytes());
    h.update(b"|");
    h.update(event_id.as_bytes());
    h.update(b"|");
    h.update(event_type.as_bytes());
    h.update(b"|");
    h.update(schema_version.to_string().as_bytes());
    h.update(b"|");
    // serde_json's Value serialisation sorts object keys (BTreeMap), so this is canonical.
    h.update(data.to_string().as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_category_and_uuid() {
        let id = Uuid::now_v7();
        let s = StreamId::new("order_line", id).expect("valid");
        assert_eq!(s.category(), "order_line");
        assert_eq!(s.id(), id);
        assert_eq!(StreamId::parse(s.as_str()), Ok(s));
    }

    #[test]
    fn rejects_malformed_stream_ids() {
        for bad in [
            "",
            "order",
            "order-123",
            "Order-0193a2b4-0000-7000-8000-000000000000",
            "-0193a2b4-0000-7000-8000-000000000000",
            "order_0193a2b4-0000-7000-8000-000000000000",
            "order-0193A2B4-0000-7000-8000-000000000000",
            // Multi-byte characters where the split falls (the fuzzer's
            // find: this used to panic).
            "ééééééééééééééééééé",
            "é-0193a2b4-0000-7000-8000-000000000000",
            "order-0193a2b4-0000-7000-8000-00000000000é",
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn chain_hash_depends_on_every_input() {
        let s = StreamId::new("order", Uuid::nil()).expect("valid");
        let data = serde_json::json!({"a": 1});
        let base = chain_hash(None, &s, 0, Uuid::nil(), "order.placed", 1, &data);
        assert_ne!(
            base,
            chain_hash(Some("x"), &s, 0, Uuid::nil(), "order.placed", 1, &data)
        );
        assert_ne!(
            base,
            chain_hash(None, &s, 1, Uuid::nil(), "order.placed", 1, &data)
        );
        assert_ne!(
            base,
            chain_hash(None, &s, 0, Uuid::nil(), "order.placed", 2, &data)
        );
        let other = serde_json::json!({"a": 2});
        assert_ne!(
            base,
            chain_hash(None, &s, 0, Uuid::nil(), "order.placed", 1, &other)
        );
    }

    #[test]
    fn metadata_without_a_traceparent_reads_and_writes_as_before() {
        let old = serde_json::json!({
            "correlation_id": null, "causation_id": null, "actor": "a",
            "idempotency_key": null, "recorded_at": null, "prev_hash": null, "hash": "h"
        });
        let read: EventMetadata = serde_json::from_value(old.clone()).expect("old metadata");
        assert_eq!(read.traceparent, None);
        assert_eq!(serde_json::to_value(&read).expect("json"), old);
        let traced = EventMetadata {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..read
        };
        let json = serde_json::to_value(&traced).expect("json");
        assert_eq!(
            json["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let back: EventMetadata = serde_json::from_value(json).expect("traced metadata");
        assert_eq!(back, traced);
    }

    fn event_with(data: serde_json::Value, metadata: EventMetadata) -> NewEvent {
        NewEvent {
            event_id: Uuid::nil(),
            event_type: "test.happened".into(),
            schema_version: 1,
            data,
            metadata,
        }
    }

    fn is_rejected(result: Result<(), StoreError>) -> bool {
        matches!(result, Err(StoreError::Rejected { .. }))
    }

    #[test]
    fn a_nul_anywhere_in_an_appends_text_is_refused() {
        use serde_json::json;
        let clean = event_with(
            json!({"a": [1, "x", {"b": null, "c": "\u{1}"}], "d": true}),
            EventMetadata {
                actor: Some("account:1".into()),
                ..EventMetadata::default()
            },
        );
        let key = IdempotencyKey {
            key: "k".into(),
            request_hash: "h".into(),
        };
        assert!(check_storable(std::slice::from_ref(&clean), Some(&key)).is_ok());

        let nul_data = [
            json!("a\u{0}"),
            json!({"a": [1, [2, {"b": "\u{0}"}]]}),
            json!({"a\u{0}b": 1}),
        ];
        for data in nul_data {
            let bad = event_with(data.clone(), EventMetadata::default());
            assert!(
                is_rejected(check_storable(&[clean.clone(), bad], None)),
                "{data}"
            );
        }
        let bad_actor = event_with(
            json!({}),
            EventMetadata {
                actor: Some("\u{0}".into()),
                ..EventMetadata::default()
            },
        );
        assert!(is_rejected(check_storable(&[bad_actor], None)));
        let bad_type = NewEvent {
            event_type: "test.\u{0}".into(),
            ..clean.clone()
        };
        assert!(is_rejected(check_storable(&[bad_type], None)));
        let bad_key = IdempotencyKey {
            key: "k\u{0}".into(),
            ..key
        };
        assert!(is_rejected(check_storable(&[clean], Some(&bad_key))));
    }
}
