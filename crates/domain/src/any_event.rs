//! [`Event`]: an event of any aggregate, one variant per aggregate holding
//! that aggregate's event enum.
//!
//! The list of aggregates is written once, in the [`aggregates!`] call
//! below; it derives the enum, the stream category of each variant (from
//! [`Aggregate::CATEGORY`]), [`Event::from_data`] and [`AggregateKind`],
//! the aggregates without their events (what a consumer says it reads, and
//! what an event that could not be decoded still tells). Consumers match
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

        /// An aggregate, without its events: one variant per variant of
        /// [`Event`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AggregateKind {
            $(
                #[doc = concat!("The `", stringify!($variant), "` aggregate.")]
                $variant
            ),+
        }

        impl AggregateKind {
            /// Every aggregate, in the order of [`Event`]'s variants.
            pub const ALL: &'static [AggregateKind] = &[$(AggregateKind::$variant),+];

            /// The aggregate whose streams are of `category`, if any.
            pub fn of_category(category: &str) -> Option<AggregateKind> {
                $(
                    if category == <$aggregate as Aggregate>::CATEGORY {
                        return Some(AggregateKind::$variant);
                    }
                )+
                None
            }

            /// Its stream category.
            pub fn category(self) -> &'static str {
                match self {
                    $(AggregateKind::$variant => <$aggregate as Aggregate>::CATEGORY),+
                }
            }
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
                data: &serde_json::Value,
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

            /// The aggregate this event belongs to.
            pub fn aggregate(&self) -> AggregateKind {
                match self {
                    $(Event::$variant(_) => AggregateKind::$variant),+
                }
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
    Payment(crate::payment::PaymentIntent),
    Asset(crate::asset::Asset),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aggregate_kind_round_trips_through_its_category() {
        assert_eq!(AggregateKind::ALL.len(), Event::CATEGORIES.len());
        for (kind, category) in AggregateKind::ALL.iter().zip(Event::CATEGORIES) {
            assert_eq!(kind.category(), *category);
            assert_eq!(AggregateKind::of_category(category), Some(*kind));
        }
        assert_eq!(AggregateKind::of_category("tick"), None);
    }
}
