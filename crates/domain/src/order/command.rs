//! Commands of the order aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::listing::ListingKind;
use crate::values::{AccountId, Actor, FeeRate, ListingId, Money, OrderId, Reason, TrackingCode};

/// One line as the buyer asked for it, with the listing's facts looked up
/// from the write side at placement time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineSpec {
    /// The listing bought.
    pub listing_id: ListingId,
    /// Its seller.
    pub seller_id: AccountId,
    /// Physical or digital.
    pub kind: ListingKind,
    /// Units.
    pub quantity: u32,
    /// The unit price at this moment; later price changes do not alter it.
    pub unit_price: Money,
}

/// Places an order: PENDING until the checkout saga confirms or rejects it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaceOrder {
    /// The new order's id.
    pub order_id: OrderId,
    /// The buyer; must hold BUYER.
    pub buyer: Actor,
    /// What is bought.
    pub lines: Vec<LineSpec>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The checkout saga's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckoutOutcome {
    /// Stock reserved and funds held. Digital-only orders are delivered at
    /// once, paying out with this fee.
    Confirmed {
        /// The fee taken when a digital-only order is delivered.
        fee: FeeRate,
    },
    /// Something failed; what was reserved or held has been given back.
    Rejected(Reason),
}

/// Records the checkout saga's verdict. Repeating it is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct CompleteCheckout {
    /// Confirmed or rejected.
    pub outcome: CheckoutOutcome,
    /// When.
    pub at: DateTime<Utc>,
}

/// A participant's step after confirmation.
#[derive(Clone, Debug, PartialEq)]
pub struct Fulfil {
    /// Who acts.
    pub actor: Actor,
    /// What they do.
    pub step: Step,
    /// When.
    pub at: DateTime<Utc>,
}

/// The steps after confirmation.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The buyer cancels before shipping.
    Cancel,
    /// The seller ships, optionally with a tracking code.
    Ship(Option<TrackingCode>),
    /// The buyer confirms delivery; the escrow goes to the seller less this fee.
    ConfirmDelivery(FeeRate),
}

/// Every command the order aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum OrderCommand {
    /// See [`PlaceOrder`].
    Place(PlaceOrder),
    /// See [`CompleteCheckout`].
    CompleteCheckout(CompleteCheckout),
    /// See [`Fulfil`].
    Fulfil(Fulfil),
}
