//! How domain events name themselves for storage.
//!
//! Every event type implements [`DomainEvent`], which defines its stored name
//! (e.g. `listing.published`) and current schema version once, beside the
//! type. Each aggregate groups its events in one enum declared with
//! [`event_set!`](crate::event_set), which derives [`EventSet`] with
//! exhaustive matches, so adding an event cannot be forgotten anywhere the
//! compiler can see.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One kind of event: its stored name and schema version.
pub trait DomainEvent: Serialize + DeserializeOwned {
    /// The stable stored name, `<aggregate>.<past-tense verb>`.
    const NAME: &'static str;
    /// The current version of its JSON Schema (see `event-schemas/`).
    const VERSION: u32;
}

/// Why stored data could not become a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No event of this aggregate has that name.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// No aggregate has streams of that category.
    #[error("unknown stream category {0:?}")]
    UnknownCategory(String),
    /// The data does not match the current version of the type.
    #[error("event {event_type} does not match its schema: {reason}")]
    Malformed {
        /// The stored name.
        event_type: String,
        /// What serde said.
        reason: String,
    },
    /// Encoding failed (only for values serde cannot represent).
    #[error("could not encode event {0}")]
    Encode(String),
}

/// The events of one aggregate, as one enum.
pub trait EventSet: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Stored names of every event in the set.
    const TYPES: &'static [&'static str];
    /// `(stored name, current version)` of every event in the set.
    const VERSIONS: &'static [(&'static str, u32)];
    /// This event's stored name.
    fn event_type(&self) -> &'static str;
    /// This event's current schema version.
    fn schema_version(&self) -> u32;
    /// The event's data as JSON (current version).
    fn to_data(&self) -> Result<serde_json::Value, DecodeError>;
    /// Decodes current-version data stored under `event_type` (read in
    /// place: a subscriber decoding a shared event copies only what the
    /// event keeps).
    fn from_data(event_type: &str, data: &serde_json::Value) -> Result<Self, DecodeError>;
}

/// Declares an aggregate's event enum and derives [`EventSet`] and `From`
/// conversions for it.
#[macro_export]
macro_rules! event_set {
    ($(#[$meta:meta])* pub enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name { $($variant($ty)),+ }

        impl $crate::event::EventSet for $name {
            const TYPES: &'static [&'static str] =
                &[$(<$ty as $crate::event::DomainEvent>::NAME),+];
            const VERSIONS: &'static [(&'static str, u32)] = &[$((
                <$ty as $crate::event::DomainEvent>::NAME,
                <$ty as $crate::event::DomainEvent>::VERSION,
            )),+];

            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$ty as $crate::event::DomainEvent>::NAME),+ }
            }

            fn schema_version(&self) -> u32 {
                match self { $(Self::$variant(_) => <$ty as $crate::event::DomainEvent>::VERSION),+ }
            }

            fn to_data(&self) -> Result<serde_json::Value, $crate::event::DecodeError> {
                match self {
                    $(Self::$variant(e) => serde_json::to_value(e)
                        .map_err(|err| $crate::event::DecodeError::Encode(err.to_string()))),+
                }
            }

            fn from_data(
                event_type: &str,
                data: &serde_json::Value,
            ) -> Result<Self, $crate::event::DecodeError> {
                $(
                    if event_type == <$ty as $crate::event::DomainEvent>::NAME {
                        return <$ty as serde::Deserialize>::deserialize(data)
                            .map(Self::$variant)
                            .map_err(|err| $crate::event::DecodeError::Malformed {
                                event_type: event_type.to_owned(),
                                reason: err.to_string(),
                            });
                    }
                )+
                Err($crate::event::DecodeError::UnknownType(event_type.to_owned()))
            }
        }

        $(impl From<$ty> for $name {
            fn from(e: $ty) -> Self { Self::$variant(e) }
        })+
    };
}
