//! Events of the listing aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::{
    AccountId, Category, ContentHash, Description, ListingId, Money, Quantity, Tags, Title,
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

crate::event_set! {
    /// Every event of the listing aggregate.
    pub enum ListingEvent {
        Created(ListingCreated),
        Published(ListingPublished),
    }
}
