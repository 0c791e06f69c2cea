//! Events of the order aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::command::LineSpec;
use crate::event::DomainEvent;
use crate::values::{AccountId, Money, OrderId, Reason, TrackingCode};

/// An order was placed, with the unit prices of that moment.
///
/// Version 2: each line carries its own `unit_price` as money. Version 1
/// stored `unit_price_minor` per line and one `currency` for the order; the
/// upcaster in `event-schemas` turns it into version 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Its id.
    pub order_id: OrderId,
    /// Who buys.
    pub buyer_id: AccountId,
    /// Who sells.
    pub seller_id: AccountId,
    /// What, at which prices.
    pub lines: Vec<LineSpec>,
    /// The sum of the lines.
    pub total: Money,
    /// When.
    pub placed_at: DateTime<Utc>,
}

impl DomainEvent for OrderPlaced {
    const NAME: &'static str = "order.placed";
    const VERSION: u32 = 2;
}

/// Stock reserved and funds held: the order stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// Its id.
    pub order_id: OrderId,
    /// When.
    pub confirmed_at: DateTime<Utc>,
}

impl DomainEvent for OrderConfirmed {
    const NAME: &'static str = "order.confirmed";
    const VERSION: u32 = 1;
}

/// The checkout saga refused the order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderRejected {
    /// Its id.
    pub order_id: OrderId,
    /// Why.
    pub reason: Reason,
    /// When.
    pub rejected_at: DateTime<Utc>,
}

impl DomainEvent for OrderRejected {
    const NAME: &'static str = "order.rejected";
    const VERSION: u32 = 1;
}

/// The buyer cancelled before shipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Its id.
    pub order_id: OrderId,
    /// Why.
    pub reason: Reason,
    /// When.
    pub cancelled_at: DateTime<Utc>,
}

impl DomainEvent for OrderCancelled {
    const NAME: &'static str = "order.cancelled";
    const VERSION: u32 = 1;
}

/// The seller shipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// Its id.
    pub order_id: OrderId,
    /// The carrier's code, if given.
    pub tracking_code: Option<TrackingCode>,
    /// When.
    pub shipped_at: DateTime<Utc>,
}

impl DomainEvent for OrderShipped {
    const NAME: &'static str = "order.shipped";
    const VERSION: u32 = 1;
}

/// The order arrived; its escrow is split into the seller's payout and the
/// marketplace fee (payout + fee == total).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderDelivered {
    /// Its id.
    pub order_id: OrderId,
    /// Who buys.
    pub buyer_id: AccountId,
    /// Who is paid.
    pub seller_id: AccountId,
    /// The seller's share.
    pub payout: Money,
    /// The marketplace's share.
    pub fee: Money,
    /// When.
    pub delivered_at: DateTime<Utc>,
}

impl DomainEvent for OrderDelivered {
    const NAME: &'static str = "order.delivered";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the order aggregate.
    pub enum OrderEvent {
        Placed(OrderPlaced),
        Confirmed(OrderConfirmed),
        Rejected(OrderRejected),
        Cancelled(OrderCancelled),
        Shipped(OrderShipped),
        Delivered(OrderDelivered),
    }
}
