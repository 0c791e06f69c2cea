//! The listing aggregate: what a seller offers, its price, stock and status.
//!
//! Stock is counted as `stock` (units ever stocked), `reserved` per order
//! and `sold`; available = stock − reserved − sold and never goes negative.
//! Reservations are keyed by order, so the checkout saga can repeat a step
//! after a crash without reserving twice. The state keeps only open
//! reservations, never the orders it is done with: a step repeated after
//! its reservation ended carries the event ids it was first stored with
//! (the command layer derives them from the step), and the store
//! recognises it as already appended. Digital listings have no stock:
//! reserving them only checks that they can be bought.

mod command;
mod error;
mod event;
mod state;

pub use command::{
    Change, CreateListing, EndReservation, ListingCommand, ListingSpec, PublishListing,
    ReservationOutcome, ReserveStock, SellerChange,
};
pub use error::ListingError;
pub use event::{
    ListingCreated, ListingDelisted, ListingEvent, ListingKind, ListingPriceChanged,
    ListingPublished, ListingRestocked, ReservationCommitted, ReservationReleased, StockReserved,
};
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
            ListingCommand::Change(c) => {
                let id = self.id.ok_or(ListingError::NotFound)?;
                if self.seller_id != Some(c.actor.account_id) {
                    return Err(ListingError::NotOwner);
                }
                match &c.change {
                    Change::Price(price) => {
                        if !price.is_positive() {
                            return Err(ListingError::NonPositivePrice);
                        }
                        if self.price.as_ref().map(|p| &p.currency) != Some(&price.currency) {
                            return Err(ListingError::CurrencyChange);
                        }
                        Ok(vec![ListingPriceChanged {
                            listing_id: id,
                            price: price.clone(),
                            changed_at: c.at,
                        }
                        .into()])
                    }
                    Change::Restock(quantity) => {
                        if self.kind == Some(ListingKind::Digital) {
                            return Err(ListingError::DigitalHasNoStock);
                        }
                        if quantity.0 == 0 {
                            return Err(ListingError::NonPositiveQuantity);
                        }
                        let unsold = self.stock.saturating_sub(self.sold);
                        if unsold
                            .checked_add(quantity.0)
                            .is_none_or(|n| n > Quantity::MAX)
                        {
                            return Err(ListingError::TooMuchStock);
                        }
                        Ok(vec![ListingRestocked {
                            listing_id: id,
                            quantity: *quantity,
                            restocked_at: c.at,
                        }
                        .into()])
                    }
                    Change::Delist => {
                        if self.status != ListingStatus::Published {
                            return Err(ListingError::NotPublished);
                        }
                        Ok(vec![ListingDelisted {
                            listing_id: id,
                            delisted_at: c.at,
                        }
                        .into()])
                    }
                }
            }
            ListingCommand::Reserve(c) => {
                let id = self.id.ok_or(ListingError::NotFound)?;
                if self.reserved.contains_key(&c.order_id) {
                    return Ok(vec![]);
                }
                if self.status != ListingStatus::Published {
                    return Err(ListingError::NotAvailable);
                }
                if self.seller_id == Some(c.buyer_id) {
                    return Err(ListingError::OwnListing);
                }
                if c.quantity.0 == 0 {
                    return Err(ListingError::NonPositiveQuantity);
                }
                if self.kind == Some(ListingKind::Digital) {
                    return Ok(vec![]);
                }
                let available = self.available();
                if available < c.quantity.0 {
                    return Err(ListingError::OutOfStock {
                        available,
                        requested: c.quantity.0,
                    });
                }
                Ok(vec![StockReserved {
                    listing_id: id,
                    order_id: c.order_id,
                    quantity: c.quantity,
                    reserved_at: c.at,
                }
                .into()])
            }
            ListingCommand::EndReservation(c) => {
                let id = self.id.ok_or(ListingError::NotFound)?;
                // Nothing reserved: digital, released (releasing is always
                // a no-op then), or committed lately (a repeated step). A
                // commit of a reservation that is not there is refused: the
                // books disagree with the order.
                let Some(&units) = self.reserved.get(&c.order_id) else {
                    return match c.outcome {
                        ReservationOutcome::Released => Ok(vec![]),
                        ReservationOutcome::Committed
                            if self.kind == Some(ListingKind::Digital)
                                || self.recently_committed.contains(&c.order_id) =>
                        {
                            Ok(vec![])
                        }
                        ReservationOutcome::Committed => Err(ListingError::NoReservation),
                    };
                };
                let quantity = Quantity(units);
                Ok(vec![match c.outcome {
                    ReservationOutcome::Released => ReservationReleased {
                        listing_id: id,
                        order_id: c.order_id,
                        quantity,
                        released_at: c.at,
                    }
                    .into(),
                    ReservationOutcome::Committed => ReservationCommitted {
                        listing_id: id,
                        order_id: c.order_id,
                        quantity,
                        committed_at: c.at,
                    }
                    .into(),
                }])
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
            ListingEvent::PriceChanged(e) => {
                self.price = Some(e.price.clone());
                self.updated_at = Some(e.changed_at);
            }
            ListingEvent::Restocked(e) => {
                self.stock = self.stock.saturating_add(e.quantity.0);
                self.updated_at = Some(e.restocked_at);
            }
            ListingEvent::Delisted(e) => {
                self.status = ListingStatus::Delisted;
                self.updated_at = Some(e.delisted_at);
            }
            ListingEvent::StockReserved(e) => {
                self.reserve(e.order_id, e.quantity.0);
            }
            ListingEvent::ReservationReleased(e) => {
                self.unreserve(e.order_id);
            }
            ListingEvent::ReservationCommitted(e) => {
                self.unreserve(e.order_id);
                self.committed(e.order_id);
                self.sold = self.sold.saturating_add(e.quantity.0);
            }
        }
        self
    }

    const SNAPSHOT_VERSION: u32 = 1;

    /// A listing holds no personal data; its stream grows with every order.
    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn from_snapshot(snapshot: serde_json::Value) -> Option<Self> {
        let mut listing: Self = serde_json::from_value(snapshot).ok()?;
        listing.recount();
        Some(listing)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::given;
    use crate::values::{
        AccountId, Actor, Category, ContentHash, Currency, Description, ListingId, Money, OrderId,
        Tags, Title,
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
        assert_eq!(ListingEvent::TYPES.len(), 8);
        assert_eq!(StockReserved::NAME, "listing.stock_reserved");
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        use crate::event::EventSet;
        let e = created(ListingKind::Physical, 3, None);
        let back = ListingEvent::from_data(e.event_type(), &e.to_data().expect("encode"));
        assert_eq!(back, Ok(e));
        assert!(ListingEvent::from_data("listing.exploded", &serde_json::json!({})).is_err());
    }

    fn buyer() -> AccountId {
        AccountId(Uuid::from_u128(8))
    }

    const ORDER: OrderId = OrderId(Uuid::from_u128(900));

    fn change(actor: Actor, change: Change) -> ListingCommand {
        ListingCommand::Change(SellerChange {
            actor,
            change,
            at: at(),
        })
    }

    fn reserve(order: OrderId, buyer_id: AccountId, quantity: u32) -> ListingCommand {
        ListingCommand::Reserve(ReserveStock {
            order_id: order,
            buyer_id,
            quantity: Quantity(quantity),
            at: at(),
        })
    }

    fn reserved(order: OrderId, quantity: u32) -> ListingEvent {
        StockReserved {
            listing_id: ListingId(Uuid::from_u128(42)),
            order_id: order,
            quantity: Quantity(quantity),
            reserved_at: at(),
        }
        .into()
    }

    fn end(order: OrderId, outcome: ReservationOutcome) -> ListingCommand {
        ListingCommand::EndReservation(EndReservation {
            order_id: order,
            outcome,
            at: at(),
        })
    }

    fn on_sale(stock: u32) -> Vec<ListingEvent> {
        vec![created(ListingKind::Physical, stock, None), published()]
    }

    fn stranger() -> Actor {
        Actor {
            account_id: buyer(),
            roles: vec![Role::Seller],
        }
    }

    #[test]
    fn only_the_owner_changes_price_stock_or_status() {
        for c in [
            Change::Price(eur(100)),
            Change::Restock(Quantity(1)),
            Change::Delist,
        ] {
            given::<Listing>(on_sale(1))
                .when(change(stranger(), c))
                .then_error(ListingError::NotOwner);
        }
    }

    #[test]
    fn changes_the_price_in_the_same_currency_only() {
        let state = given::<Listing>(on_sale(1))
            .when(change(seller(), Change::Price(eur(3999))))
            .then_events([ListingPriceChanged {
                listing_id: ListingId(Uuid::from_u128(42)),
                price: eur(3999),
                changed_at: at(),
            }
            .into()]);
        assert_eq!(state.price, Some(eur(3999)));
        given::<Listing>(on_sale(1))
            .when(change(seller(), Change::Price(eur(0))))
            .then_error(ListingError::NonPositivePrice);
        let usd = Money {
            minor: 100,
            currency: Currency::parse("USD").expect("valid"),
        };
        given::<Listing>(on_sale(1))
            .when(change(seller(), Change::Price(usd)))
            .then_error(ListingError::CurrencyChange);
    }

    #[test]
    fn restocks_physical_listings_by_positive_amounts() {
        let state = given::<Listing>(on_sale(2))
            .when(change(seller(), Change::Restock(Quantity(5))))
            .then_events([ListingRestocked {
                listing_id: ListingId(Uuid::from_u128(42)),
                quantity: Quantity(5),
                restocked_at: at(),
            }
            .into()]);
        assert_eq!(state.available(), 7);
        given::<Listing>(on_sale(2))
            .when(change(seller(), Change::Restock(Quantity(0))))
            .then_error(ListingError::NonPositiveQuantity);
        given::<Listing>(on_sale(2))
            .when(change(seller(), Change::Restock(Quantity(Quantity::MAX))))
            .then_error(ListingError::TooMuchStock);
        let hash = ContentHash::parse(&"ab".repeat(32)).expect("valid");
        given::<Listing>([created(ListingKind::Digital, 0, Some(hash))])
            .when(change(seller(), Change::Restock(Quantity(1))))
            .then_error(ListingError::DigitalHasNoStock);
    }

    #[test]
    fn delists_only_a_published_listing() {
        let state = given::<Listing>(on_sale(1))
            .when(change(seller(), Change::Delist))
            .then_events([ListingDelisted {
                listing_id: ListingId(Uuid::from_u128(42)),
                delisted_at: at(),
            }
            .into()]);
        assert_eq!(state.status, ListingStatus::Delisted);
        given::<Listing>([created(ListingKind::Physical, 1, None)])
            .when(change(seller(), Change::Delist))
            .then_error(ListingError::NotPublished);
    }

    #[test]
    fn reserves_available_stock_for_an_order() {
        let state = given::<Listing>(on_sale(3))
            .when(reserve(ORDER, buyer(), 2))
            .then_events([reserved(ORDER, 2)]);
        assert_eq!(state.available(), 1);
    }

    #[test]
    fn never_reserves_more_than_is_available() {
        let mut history = on_sale(3);
        history.push(reserved(OrderId(Uuid::from_u128(1)), 2));
        given::<Listing>(history)
            .when(reserve(ORDER, buyer(), 2))
            .then_error(ListingError::OutOfStock {
                available: 1,
                requested: 2,
            });
    }

    #[test]
    fn reserving_twice_for_one_order_is_a_no_op() {
        let mut history = on_sale(3);
        history.push(reserved(ORDER, 2));
        given::<Listing>(history)
            .when(reserve(ORDER, buyer(), 2))
            .then_events([]);
    }

    #[test]
    fn only_published_listings_can_be_bought_and_not_by_their_seller() {
        given::<Listing>([created(ListingKind::Physical, 3, None)])
            .when(reserve(ORDER, buyer(), 1))
            .then_error(ListingError::NotAvailable);
        given::<Listing>(on_sale(3))
            .when(reserve(ORDER, seller().account_id, 1))
            .then_error(ListingError::OwnListing);
        given::<Listing>([])
            .when(reserve(ORDER, buyer(), 1))
            .then_error(ListingError::NotFound);
    }

    #[test]
    fn digital_listings_are_unlimited() {
        let hash = ContentHash::parse(&"ab".repeat(32)).expect("valid");
        let state = given::<Listing>([created(ListingKind::Digital, 0, Some(hash)), published()])
            .when(reserve(ORDER, buyer(), 1_000))
            .then_events([]);
        assert_eq!(state.available(), u32::MAX);
    }

    #[test]
    fn releases_a_reservation_back_to_stock_once() {
        let mut history = on_sale(3);
        history.push(reserved(ORDER, 2));
        let released: ListingEvent = ReservationReleased {
            listing_id: ListingId(Uuid::from_u128(42)),
            order_id: ORDER,
            quantity: Quantity(2),
            released_at: at(),
        }
        .into();
        let state = given::<Listing>(history.clone())
            .when(end(ORDER, ReservationOutcome::Released))
            .then_events([released.clone()]);
        assert_eq!(state.available(), 3);
        history.push(released);
        given::<Listing>(history)
            .when(end(ORDER, ReservationOutcome::Released))
            .then_events([]);
    }

    #[test]
    fn commits_a_reservation_as_sold_once() {
        let mut history = on_sale(3);
        history.push(reserved(ORDER, 2));
        let committed: ListingEvent = ReservationCommitted {
            listing_id: ListingId(Uuid::from_u128(42)),
            order_id: ORDER,
            quantity: Quantity(2),
            committed_at: at(),
        }
        .into();
        let state = given::<Listing>(history.clone())
            .when(end(ORDER, ReservationOutcome::Committed))
            .then_events([committed.clone()]);
        assert_eq!(
            (state.sold, state.reserved_total(), state.available()),
            (2, 0, 1)
        );
        history.push(committed);
        given::<Listing>(history)
            .when(end(ORDER, ReservationOutcome::Committed))
            .then_events([]);
        given::<Listing>(on_sale(3))
            .when(end(ORDER, ReservationOutcome::Committed))
            .then_error(ListingError::NoReservation);
    }

    #[test]
    fn the_state_keeps_open_reservations_only() {
        let mut history = on_sale(1_000);
        for n in 0..500u128 {
            let order = OrderId(Uuid::from_u128(1_000 + n));
            history.push(reserved(order, 1));
            history.push(
                ReservationCommitted {
                    listing_id: ListingId(Uuid::from_u128(42)),
                    order_id: order,
                    quantity: Quantity(1),
                    committed_at: at(),
                }
                .into(),
            );
        }
        history.push(reserved(ORDER, 2));
        let state = Listing::replay(&history);
        assert_eq!(
            (state.reserved.len(), state.sold, state.available()),
            (1, 500, 498),
            "500 orders done with, one open"
        );
        let mut longer = history.clone();
        for n in 0..2_000u128 {
            let order = OrderId(Uuid::from_u128(10_000 + n));
            longer.push(reserved(order, 0));
            longer.push(
                ReservationCommitted {
                    listing_id: ListingId(Uuid::from_u128(42)),
                    order_id: order,
                    quantity: Quantity(0),
                    committed_at: at(),
                }
                .into(),
            );
        }
        assert_eq!(
            Listing::replay(&longer).recently_committed.len(),
            Listing::RECENTLY_COMMITTED,
            "the memory of committed reservations is bounded"
        );
        let back = Listing::from_snapshot(state.snapshot().expect("snapshotted"));
        assert_eq!(
            back.as_ref(),
            Some(&state),
            "a snapshot reads back as the state"
        );
        assert_eq!(
            Listing::from_snapshot(serde_json::json!({"stock": "x"})),
            None
        );
    }
}
