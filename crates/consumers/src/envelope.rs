//! The typed envelope: a stored event decoded once, through the codec and
//! its upcasters, into [`Event`] plus where it sits in the log.

use chrono::{DateTime, Utc};
use marketplace_domain::Event;
use marketplace_event_schemas::CodecError;
use marketplace_store::{EventMetadata, Position, RecordedEvent, StreamId};
use uuid::Uuid;

/// A decoded event with its place in the log and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its place in the stream.
    pub revision: u64,
    /// Its place in the global log.
    pub position: Position,
    /// Unique id.
    pub event_id: Uuid,
    /// Correlation, causation, actor, time and hash chain.
    pub metadata: EventMetadata,
    /// The event, at its current schema version.
    pub event: Event,
}

/// Why a stored event could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not decode {event_type} at position {position}: {source}")]
pub struct DecodeFailure {
    /// Stored name.
    pub event_type: String,
    /// Where in the log.
    pub position: Position,
    /// What the codec said.
    #[source]
    pub source: CodecError,
}

impl Envelope {
    /// Decodes `recorded` (upcasting old schema versions).
    pub fn decode(recorded: &RecordedEvent) -> Result<Envelope, DecodeFailure> {
        let event = marketplace_event_schemas::decode_any(
            recorded.stream_id.category(),
            &recorded.event_type,
            recorded.schema_version,
            recorded.data.clone(),
        )
        .map_err(|source| DecodeFailure {
            event_type: recorded.event_type.clone(),
            position: recorded.position,
            source,
        })?;
        Ok(Envelope {
            stream_id: recorded.stream_id.clone(),
            revision: recorded.revision,
            position: recorded.position,
            event_id: recorded.event_id,
            metadata: recorded.metadata.clone(),
            event,
        })
    }

    /// When the store recorded it (the epoch if a backend lost it).
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.metadata.recorded_at.unwrap_or_default()
    }

    /// Its stream's entity id (the uuid after the category).
    pub fn entity_id(&self) -> Uuid {
        self.stream_id.id()
    }
}
