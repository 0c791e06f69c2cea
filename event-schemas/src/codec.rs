//! Encoding domain events for the store, and decoding them back.

use marketplace_domain::{DecodeError, Event, EventSet};

/// A domain event in stored form.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Stable stored name.
    pub event_type: &'static str,
    /// Schema version of `data`.
    pub schema_version: u32,
    /// The payload.
    pub data: serde_json::Value,
}

/// Why stored data could not be turned into a domain event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The data does not fit the (upcast) current type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stored version newer than this build knows, or one with no upcaster.
    #[error("{event_type} v{version} cannot be read by this build (current is v{current})")]
    UnsupportedVersion {
        /// Stored name.
        event_type: String,
        /// Stored version.
        version: u32,
        /// The version this build writes.
        current: u32,
    },
    /// A stored old version does not have the shape its upcaster expects.
    #[error("{event_type} v{from} cannot be upcast to v{}: {reason}", from + 1)]
    Upcast {
        /// Stored name.
        event_type: String,
        /// The version the failing step reads.
        from: u32,
        /// What was wrong with the document.
        reason: String,
    },
}

/// Encodes a domain event at its current schema version.
pub fn encode<E: EventSet>(event: &E) -> Result<Encoded, CodecError> {
    Ok(Encoded {
        event_type: event.event_type(),
        schema_version: event.schema_version(),
        data: event.to_data()?,
    })
}

/// Decodes stored data of `event_type` at `version`, upcasting it to the
/// current version first.
pub fn decode<E: EventSet>(
    event_type: &str,
    version: u32,
    data: serde_json::Value,
) -> Result<E, CodecError> {
    let data = crate::upcast::to_current(event_type, version, data)?;
    Ok(E::from_data(event_type, &data)?)
}

/// Decodes stored data of `event_type` at `version` in a stream of
/// `category` into an event of any aggregate. Data at the current version
/// is read in place; an older version is copied and upcast first.
pub fn decode_any(
    category: &str,
    event_type: &str,
    version: u32,
    data: &serde_json::Value,
) -> Result<Event, CodecError> {
    if crate::upcast::current_version(event_type).unwrap_or(1) == version {
        return Ok(Event::from_data(category, event_type, data)?);
    }
    let data = crate::upcast::to_current(event_type, version, data.clone())?;
    Ok(Event::from_data(category, event_type, &data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketplace_domain::listing::{ListingEvent, ListingPublished};
    use marketplace_domain::values::ListingId;

    #[test]
    fn round_trips_a_current_event() {
        let e: ListingEvent = ListingPublished {
            listing_id: ListingId(uuid::Uuid::nil()),
            published_at: chrono::DateTime::UNIX_EPOCH,
        }
        .into();
        let stored = encode(&e).expect("encode");
        assert_eq!(stored.event_type, "listing.published");
        assert_eq!(stored.schema_version, 1);
        let back: ListingEvent =
            decode(stored.event_type, stored.schema_version, stored.data).expect("decode");
        assert_eq!(back, e);
    }

    #[test]
    fn refuses_a_version_from_the_future() {
        let r: Result<ListingEvent, _> = decode("listing.published", 99, serde_json::json!({}));
        assert!(matches!(
            r,
            Err(CodecError::UnsupportedVersion { version: 99, .. })
        ));
    }
}
