//! Events of the listing aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::{
    AccountId, Category, ContentHash, Description, ListingId, Money, OrderId, Quantity, Tags, Title,
};

/// Physical or digital.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ListingKind {
    /// Goods with stock.
    Physical,
    /// A digital asset, unlimited.
    Digital,
}

/// A listing was created as a draft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingCreated {
    /// Its id.
    pub listing_id: ListingId,
    /// The seller who owns it.
    pub seller_id: AccountId,
    /// Physical or digital.
    pub kind: ListingKind,
    /// Title.
    pub title: Title,
    /// Description.
    pub description: Description,
    /// Category.
    pub category: Category,
    /// Tags.
    pub tags: Tags,
    /// Unit price.
    pub price: Money,
    /// Initial stock (physical; zero for digital).
    pub quantity: Quantity,
    /// Content hash (digital only).
    pub content_hash: Option<ContentHash>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl DomainEvent for ListingCreated {
    const NAME: &'static str = "listing.created";
    const VERSION: u32 = 1;
}

/// A listing became visible and buyable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingPublished {
    /// Its id.
    pub listing_id: ListingId,
    /// When.
    pub published_at: DateTime<Utc>,
}

impl DomainEvent for ListingPublished {
    const NAME: &'static str = "listing.published";
    const VERSION: u32 = 1;
}

/// The unit price changed (orders already placed keep theirs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingPriceChanged {
    /// Its id.
    pub listing_id: ListingId,
    /// The new unit price.
    pub price: Money,
    /// When.
    pub changed_at: DateTime<Utc>,
}

impl DomainEvent for ListingPriceChanged {
    const NAME: &'static str = "listing.price_changed";
    const VERSION: u32 = 1;
}

/// Units were added to stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingRestocked {
    /// Its id.
    pub listing_id: ListingId,
    /// Units added.
    pub quantity: Quantity,
    /// When.
    pub restocked_at: DateTime<Utc>,
}

impl DomainEvent for ListingRestocked {
    const NAME: &'static str = "listing.restocked";
    const VERSION: u32 = 1;
}

/// The listing was withdrawn from sale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingDelisted {
    /// Its id.
    pub listing_id: ListingId,
    /// When.
    pub delisted_at: DateTime<Utc>,
}

impl DomainEvent for ListingDelisted {
    const NAME: &'static str = "listing.delisted";
    const VERSION: u32 = 1;
}

/// Units were set aside for a pending order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StockReserved {
    /// Its id.
    pub listing_id: ListingId,
    /// The order.
    pub order_id: OrderId,
    /// Units.
    pub quantity: Quantity,
    /// When.
    pub reserved_at: DateTime<Utc>,
}

impl DomainEvent for StockReserved {
    const NAME: &'static str = "listing.stock_reserved";
    const VERSION: u32 = 1;
}

/// An order's reserved units went back to available stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationReleased {
    /// Its id.
    pub listing_id: ListingId,
    /// The order.
    pub order_id: OrderId,
    /// Units.
    pub quantity: Quantity,
    /// When.
    pub released_at: DateTime<Utc>,
}

impl DomainEvent for ReservationReleased {
    const NAME: &'static str = "listing.reservation_released";
    const VERSION: u32 = 1;
}

/// An order's reserved units were sold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationCommitted {
    /// Its id.
    pub listing_id: ListingId,
    /// The order.
    pub order_id: OrderId,
    /// Units.
    pub quantity: Quantity,
    /// When.
    pub committed_at: DateTime<Utc>,
}

impl DomainEvent for ReservationCommitted {
    const NAME: &'static str = "listing.reservation_committed";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the listing aggregate.
    pub enum ListingEvent {
        Created(ListingCreated),
        Published(ListingPublished),
        PriceChanged(ListingPriceChanged),
        Restocked(ListingRestocked),
        Delisted(ListingDelisted),
        StockReserved(StockReserved),
        ReservationReleased(ReservationReleased),
        ReservationCommitted(ReservationCommitted),
    }
}
