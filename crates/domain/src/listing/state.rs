//! State of the listing aggregate.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::event::ListingKind;
use crate::values::{AccountId, ListingId, Money};

/// Where a listing is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Listing {
    /// Its id.
    pub id: Option<ListingId>,
    /// Its owner.
    pub seller_id: Option<AccountId>,
    /// Physical or digital.
    pub kind: Option<ListingKind>,
    /// Unit price.
    pub price: Option<Money>,
    /// Units in stock (physical).
    pub stock: u32,
    /// Status.
    pub status: ListingStatus,
    /// Last change.
    pub updated_at: Option<DateTime<Utc>>,
}
