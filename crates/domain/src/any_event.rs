//! [`Event`]: an event of any aggregate, one variant per aggregate holding
//! that aggregate's event enum.
//!
//! The list of aggregates is written once, in the [`aggregates!`] call
//! below; it derives the enum, the stream category of each variant (from
//! [`Aggregate::CATEGORY`]) and [`Event::from_data`]. Consumers match
//! [`Event`] exhaustively, so a new aggregate (or a new event of one) is a
//! compile error in every consumer that has to decide about it.

use crate::aggregate::Aggregate;
use crate::event::{DecodeError, EventSet};

macro_rules! aggregates {
    ($($variant:ident($aggregate:ty)),+ $(,)?) => {
        /// An event of any aggregate.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $(
                #[doc = concat!("An event of the `", stringify!($variant), "` aggregate.")]
                $variant(<$aggregate as Aggregate>::Event)
            ),+
        }

        impl Event {
            /// The stream category of every aggregate.
            pub const CATEGORIES: &'static [&'static str] =
                &[$(<$aggregate as Aggregate>::CATEGORY),+];

            /// `(stored name, current version)` of every event type of
            /// every aggregate, read from the types themselves.
            pub fn versions() -> Vec<(&'static str, u32)> {
                let mut out = Vec::new();
                $(out.extend_from_slice(
                    <<$aggregate as Aggregate>::Event as EventSet>::VERSIONS,
                );)+
                out
            }

            /// Decodes current-version data of `event_type` stored in a
            /// stream of `category`.
            pub fn from_data(
                category: &str,
                event_type: &str,
                data: serde_json::Value,
            ) -> Result<Event, DecodeError> {
                $(
                    if category == <$aggregate as Aggregate>::CATEGORY {
                        return <<$aggregate as Aggregate>::Event as EventSet>::from_data(
                            event_type, data,
                        )
                        .map(Event::$variant);
                    }
                )+
                Err(DecodeError::UnknownCategory(category.to_owned()))
            }

            /// The stream category this event belongs in.
            pub fn category(&self) -> &'static str {
                match self {
                    $(Event::$variant(_) => <$aggregate as Aggregate>::CATEGORY),+
                }
            }

            /// The event's stored name.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$variant(e) => e.event_type()),+
                }
            }
        }
    };
}

aggregates! {
    Account(crate::account::Account),
    EmailClaim(crate::email_claim::EmailClaim),
    Listing(crate::listing::Listing),
    Order(crate::order::Order),
    Review(crate::review::Review),
}
