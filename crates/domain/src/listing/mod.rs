//! The listing aggregate: what a seller offers, its price, stock and status.

mod command;
mod error;
mod event;
mod state;

pub use command::{CreateListing, ListingCommand, ListingSpec, PublishListing};
pub use error::ListingError;
pub use event::{ListingCreated, ListingEvent, ListingKind, ListingPublished};
pub use state::{Listing, ListingStatus};

use crate::aggregate::Aggregate;
use crate::values::{Quantity, Role};

impl Aggregate for Listing {
    const CATEGORY: &'static str = "listing";
    type Command = ListingCommand;
    type Event = ListingEvent;
    type Error = ListingError;

    fn decide(&self, command: &ListingCommand) -> Result<Vec<ListingEvent>, ListingError> {
        match command {
            ListingCommand::Create(c) => {
                if self.status != ListingStatus::Absent {
                    return Err(ListingError::AlreadyExists);
                }
                if !c.actor.has(Role::Seller) {
                    return Err(ListingError::NotASeller);
                }
                if !c.price.is_positive() {
                    return Err(ListingError::NonPositivePrice);
                }
                let (kind, quantity, content_hash) = match &c.spec {
                    ListingSpec::Physical { quantity } => (ListingKind::Physical, *quantity, None),
                    ListingSpec::Digital { content_hash } => (
                        ListingKind::Digital,
                        Quantity(0),
                        Some(content_hash.clone()),
                    ),
                };
                Ok(vec![ListingCreated {
                    listing_id: c.listing_id,
                    seller_id: c.actor.account_id,
                    kind,
                    title: c.title.clone(),
                    description: c.description.clone(),
                    category: c.category.clone(),
                    tags: c.tags.clone(),
                    price: c.price.clone(),
                    quantity,
                    content_hash,
                    created_at: c.at,
                }
                .into()])
            }
            ListingCommand::Publish(c) => {
                let id = self.id.ok_or(ListingError::NotFound)?;
                if self.seller_id != Some(c.actor.account_id) {
                    return Err(ListingError::NotOwner);
                }
                match self.status {
                    ListingStatus::Published => Err(ListingError::AlreadyPublished),
                    ListingStatus::Absent => Err(ListingError::NotFound),
                    ListingStatus::Draft | ListingStatus::Delisted => Ok(vec![ListingPublished {
                        listing_id: id,
                        published_at: c.at,
                    }
                    .into()]),
                }
            }
        }
    }

    fn evolve(mut self, event: &ListingEvent) -> Self {
        match event {
            ListingEvent::Created(e) => {
                self.id = Some(e.listing_id);
                self.seller_id = Some(e.seller_id);
                self.kind = Some(e.kind);
                self.price = Some(e.price.clone());
                self.stock = e.quantity.0;
                self.status = ListingStatus::Draft;
                self.updated_at = Some(e.created_at);
            }
            ListingEvent::Published(e) => {
                self.status = ListingStatus::Published;
                self.updated_at = Some(e.published_at);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::given;
    use crate::values::{
        AccountId, Actor, Category, ContentHash, Currency, Description, ListingId, Money, Tags,
        Title,
    };

    fn seller() -> Actor {
        Actor {
            account_id: AccountId(Uuid::from_u128(7)),
            roles: vec![Role::Buyer, Role::Seller],
        }
    }

    fn at() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
            .single()
            .expect("date")
    }

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: Currency::parse("EUR").expect("valid"),
        }
    }

    fn create(actor: Actor, spec: ListingSpec, price: Money) -> ListingCommand {
        ListingCommand::Create(CreateListing {
            listing_id: ListingId(Uuid::from_u128(42)),
            actor,
            spec,
            title: Title::parse("Mechanical keyboard").expect("valid"),
            description: Description::parse("Clicky.").expect("valid"),
            category: Category::parse("Electronics").expect("valid"),
            tags: Tags::parse(["keyboard"]).expect("valid"),
            price,
            at: at(),
        })
    }

    fn created(kind: ListingKind, quantity: u32, hash: Option<ContentHash>) -> ListingEvent {
        ListingCreated {
            listing_id: ListingId(Uuid::from_u128(42)),
            seller_id: seller().account_id,
            kind,
            title: Title::parse("Mechanical keyboard").expect("valid"),
            description: Description::parse("Clicky.").expect("valid"),
            category: Category::parse("electronics").expect("valid"),
            tags: Tags::parse(["keyboard"]).expect("valid"),
            price: eur(4999),
            quantity: Quantity(quantity),
            content_hash: hash,
            created_at: at(),
        }
        .into()
    }

    fn publish(actor: Actor) -> ListingCommand {
        ListingCommand::Publish(PublishListing { actor, at: at() })
    }

    fn published() -> ListingEvent {
        ListingPublished {
            listing_id: ListingId(Uuid::from_u128(42)),
            published_at: at(),
        }
        .into()
    }

    #[test]
    fn creates_a_physical_listing_as_a_draft_with_stock() {
        let state = given::<Listing>([])
            .when(create(
                seller(),
                ListingSpec::Physical {
                    quantity: Quantity(20),
                },
                eur(4999),
            ))
            .then_events([created(ListingKind::Physical, 20, None)]);
        assert_eq!(state.status, ListingStatus::Draft);
        assert_eq!(state.stock, 20);
    }

    #[test]
    fn creates_a_digital_listing_identified_by_its_content_hash() {
        let hash = ContentHash::parse(&"ab".repeat(32)).expect("valid");
        given::<Listing>([])
            .when(create(
                seller(),
                ListingSpec::Digital {
                    content_hash: hash.clone(),
                },
                eur(4999),
            ))
            .then_events([created(ListingKind::Digital, 0, Some(hash))]);
    }

    #[test]
    fn refuses_a_listing_from_an_account_that_is_not_a_seller() {
        let buyer = Actor {
            account_id: AccountId(Uuid::from_u128(8)),
            roles: vec![Role::Buyer],
        };
        given::<Listing>([])
            .when(create(
                buyer,
                ListingSpec::Physical {
                    quantity: Quantity(1),
                },
                eur(100),
            ))
            .then_error(ListingError::NotASeller);
    }

    #[test]
    fn refuses_a_free_or_negative_price() {
        for minor in [0, -1] {
            given::<Listing>([])
                .when(create(
                    seller(),
                    ListingSpec::Physical {
                        quantity: Quantity(1),
                    },
                    eur(minor),
                ))
                .then_error(ListingError::NonPositivePrice);
        }
    }

    #[test]
    fn refuses_to_create_the_same_listing_twice() {
        given::<Listing>([created(ListingKind::Physical, 1, None)])
            .when(create(
                seller(),
                ListingSpec::Physical {
                    quantity: Quantity(1),
                },
                eur(4999),
            ))
            .then_error(ListingError::AlreadyExists);
    }

    #[test]
    fn publishes_a_draft_for_its_owner() {
        let state = given::<Listing>([created(ListingKind::Physical, 1, None)])
            .when(publish(seller()))
            .then_events([published()]);
        assert_eq!(state.status, ListingStatus::Published);
    }

    #[test]
    fn refuses_to_publish_someone_elses_listing() {
        let other = Actor {
            account_id: AccountId(Uuid::from_u128(9)),
            roles: vec![Role::Seller],
        };
        given::<Listing>([created(ListingKind::Physical, 1, None)])
            .when(publish(other))
            .then_error(ListingError::NotOwner);
    }

    #[test]
    fn refuses_to_publish_a_missing_or_already_published_listing() {
        given::<Listing>([])
            .when(publish(seller()))
            .then_error(ListingError::NotFound);
        given::<Listing>([created(ListingKind::Physical, 1, None), published()])
            .when(publish(seller()))
            .then_error(ListingError::AlreadyPublished);
    }

    #[test]
    fn pins_the_stored_event_names() {
        use crate::event::{DomainEvent, EventSet};
        assert_eq!(ListingCreated::NAME, "listing.created");
        assert_eq!(ListingPublished::NAME, "listing.published");
        assert_eq!(
            ListingEvent::TYPES,
            &["listing.created", "listing.published"]
        );
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        use crate::event::EventSet;
        let e = created(ListingKind::Physical, 3, None);
        let back = ListingEvent::from_data(e.event_type(), e.to_data().expect("encode"));
        assert_eq!(back, Ok(e));
        assert!(ListingEvent::from_data("listing.exploded", serde_json::json!({})).is_err());
    }
}
