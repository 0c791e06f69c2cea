//! One module per read model: its batch fold (a [`crate::Projection`]) and
//! the queries the API runs against it.

pub mod accounts;
pub mod listings;

use marketplace_domain::EventSet;
use marketplace_store::RecordedEvent;

use crate::runtime::ProjectionError;

/// Decodes a recorded event as one aggregate's event set (upcasting old versions).
pub(crate) fn decode<E: EventSet>(e: &RecordedEvent) -> Result<E, ProjectionError> {
    marketplace_event_schemas::decode(&e.event_type, e.schema_version, e.data.clone()).map_err(
        |err| ProjectionError::Decode {
            event_type: e.event_type.clone(),
            position: e.position,
            reason: err.to_string(),
        },
    )
}

/// An opaque keyset cursor over (sort key, id).
pub(crate) mod cursor {
    use uuid::Uuid;

    /// Encodes a cursor.
    pub fn encode(key: i64, id: Uuid) -> String {
        hex::encode(format!("{key}|{id}"))
    }

    /// Decodes a cursor; `None` if it was not made by [`encode`].
    pub fn decode(cursor: &str) -> Option<(i64, Uuid)> {
        let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
        let (key, id) = raw.split_once('|')?;
        Some((key.parse().ok()?, Uuid::try_parse(id).ok()?))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips_and_refuses_garbage() {
            let id = uuid::Uuid::now_v7();
            assert_eq!(super::decode(&super::encode(-5, id)), Some((-5, id)));
            assert_eq!(super::decode("zz"), None);
            assert_eq!(super::decode(&hex::encode("nope")), None);
        }
    }
}
