//! State of the listing aggregate.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::event::ListingKind;
use crate::values::{AccountId, ListingId, Money, OrderId};

/// Where a listing is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ListingStatus {
    /// Not created yet.
    #[default]
    Absent,
    /// Created, not visible.
    Draft,
    /// Visible and buyable.
    Published,
    /// Withdrawn by its seller.
    Delisted,
}

/// A listing as its events leave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// Its id.
    pub id: Option<ListingId>,
    /// Its owner.
    pub seller_id: Option<AccountId>,
    /// Physical or digital.
    pub kind: Option<ListingKind>,
    /// Unit price.
    pub price: Option<Money>,
    /// Units ever stocked (initial plus restocks; physical).
    pub stock: u32,
    /// Units reserved per open reservation (an order pending, or confirmed
    /// and not shipped yet). Only open ones: a listing's state does not grow
    /// with the orders it has seen.
    pub reserved: BTreeMap<OrderId, u32>,
    /// Units sold (reservations committed).
    pub sold: u32,
    /// The orders whose reservation was committed last, at most
    /// [`Listing::RECENTLY_COMMITTED`]: a bounded memory that tells a
    /// repeated commit (a no-op) from committing a reservation that is not
    /// there (a refusal: the books disagree with the order).
    #[serde(default)]
    pub recently_committed: VecDeque<OrderId>,
    /// The sum of `reserved`, kept with it (not stored: recounted from it),
    /// so deciding a reservation does not walk every open one.
    #[serde(skip)]
    reserved_units: u64,
    /// Status.
    pub status: ListingStatus,
    /// Last change.
    pub updated_at: Option<DateTime<Utc>>,
}

impl Listing {
    /// How many committed reservations a listing remembers.
    pub const RECENTLY_COMMITTED: usize = 1_024;

    pub(super) fn committed(&mut self, order: OrderId) {
        self.recently_committed.push_back(order);
        if self.recently_committed.len() > Self::RECENTLY_COMMITTED {
            self.recently_committed.pop_front();
        }
    }

    /// Units reserved across all orders.
    pub fn reserved_total(&self) -> u32 {
        u32::try_from(self.reserved_units).unwrap_or(u32::MAX)
    }

    /// Records `order`'s reservation of `units` (replacing one it had).
    pub(super) fn reserve(&mut self, order: OrderId, units: u32) {
        if let Some(before) = self.reserved.insert(order, units) {
            self.reserved_units -= u64::from(before);
        }
        self.reserved_units += u64::from(units);
    }

    /// Ends `order`'s reservation, if it has one.
    pub(super) fn unreserve(&mut self, order: OrderId) {
        if let Some(units) = self.reserved.remove(&order) {
            self.reserved_units -= u64::from(units);
        }
    }

    /// Counts `reserved` again (after reading a snapshot).
    pub(super) fn recount(&mut self) {
        self.reserved_units = self.reserved.values().map(|&u| u64::from(u)).sum();
    }

    /// Units that can still be bought: stock − reserved − sold, never
    /// negative. Digital listings are unlimited (`u32::MAX`).
    pub fn available(&self) -> u32 {
        if self.kind == Some(ListingKind::Digital) {
            return u32::MAX;
        }
        self.stock
            .saturating_sub(self.reserved_total())
            .saturating_sub(self.sold)
    }
}
