//! Commands of the listing aggregate.

use chrono::{DateTime, Utc};

use crate::values::{
    AccountId, Actor, Category, ContentHash, Description, ListingId, Money, OrderId, Quantity,
    Tags, Title,
};

/// What is being sold, with what it needs.
#[derive(Clone, Debug, PartialEq)]
pub enum ListingSpec {
    /// Goods with stock.
    Physical {
        /// Initial stock.
        quantity: Quantity,
    },
    /// A digital asset identified by the sha256 of its content.
    Digital {
        /// The asset's content hash.
        content_hash: ContentHash,
    },
}

/// Creates a listing as a DRAFT owned by the acting seller.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateListing {
    /// The new listing's id.
    pub listing_id: ListingId,
    /// The acting account; must hold SELLER.
    pub actor: Actor,
    /// Physical with stock, or digital with a content hash.
    pub spec: ListingSpec,
    /// Title.
    pub title: Title,
    /// Description.
    pub description: Description,
    /// Category.
    pub category: Category,
    /// Tags.
    pub tags: Tags,
    /// Price per unit; must be positive.
    pub price: Money,
    /// When.
    pub at: DateTime<Utc>,
}

/// Makes a DRAFT (or DELISTED) listing visible and buyable.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishListing {
    /// The acting account; must own the listing.
    pub actor: Actor,
    /// When.
    pub at: DateTime<Utc>,
}

/// A seller's change to their own listing.
#[derive(Clone, Debug, PartialEq)]
pub struct SellerChange {
    /// The acting account; must own the listing.
    pub actor: Actor,
    /// What changes.
    pub change: Change,
    /// When.
    pub at: DateTime<Utc>,
}

/// What a seller may change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A new unit price for orders placed from now on.
    Price(Money),
    /// More units in stock (physical only; positive).
    Restock(Quantity),
    /// Withdraw from sale (publish again to return).
    Delist,
}

/// Sets units aside for a PENDING order (the checkout saga's first step).
/// Reserving again for the same order is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct ReserveStock {
    /// The order.
    pub order_id: OrderId,
    /// Its buyer, who must not be the seller.
    pub buyer_id: AccountId,
    /// Units.
    pub quantity: Quantity,
    /// When.
    pub at: DateTime<Utc>,
}

/// Ends an order's reservation: released back to stock (order rejected or
/// cancelled) or committed as sold (order shipped). Ending it twice is a
/// no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct EndReservation {
    /// The order.
    pub order_id: OrderId,
    /// Back to stock, or sold.
    pub outcome: ReservationOutcome,
    /// When.
    pub at: DateTime<Utc>,
}

/// How a reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationOutcome {
    /// The units return to the available stock.
    Released,
    /// The units are sold.
    Committed,
}

/// Every command the listing aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum ListingCommand {
    /// See [`CreateListing`].
    Create(CreateListing),
    /// See [`PublishListing`].
    Publish(PublishListing),
    /// See [`SellerChange`].
    Change(SellerChange),
    /// See [`ReserveStock`].
    Reserve(ReserveStock),
    /// See [`EndReservation`].
    EndReservation(EndReservation),
}
