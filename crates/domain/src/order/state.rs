//! State of the order aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::command::LineSpec;
use crate::listing::ListingKind;
use crate::values::{AccountId, Money, OrderId, Reason, TrackingCode};

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    Absent,
    /// Placed; the checkout saga is at work.
    Pending,
    /// Stock reserved and funds held in escrow.
    Confirmed,
    /// On its way.
    Shipped,
    /// Received; escrow paid out.
    Delivered,
    /// Cancelled by the buyer before shipping; refunded.
    Cancelled,
    /// Refused by the checkout saga.
    Rejected,
}

/// An order as its events leave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Order {
    /// Its id.
    pub id: Option<OrderId>,
    /// Who buys.
    pub buyer_id: Option<AccountId>,
    /// Who sells.
    pub seller_id: Option<AccountId>,
    /// What, at which prices.
    pub lines: Vec<LineSpec>,
    /// The sum of the lines.
    pub total: Option<Money>,
    /// Status.
    pub status: OrderStatus,
    /// Why REJECTED or CANCELLED.
    pub status_reason: Option<Reason>,
    /// The carrier's code, once shipped.
    pub tracking_code: Option<TrackingCode>,
    /// When placed.
    pub placed_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Order {
    /// Whether every line is digital (delivered on confirmation).
    pub fn is_digital_only(&self) -> bool {
        self.lines.iter().all(|l| l.kind == ListingKind::Digital)
    }
}
