//! Commands of the listing aggregate.

use chrono::{DateTime, Utc};

use crate::values::{
    Actor, Category, ContentHash, Description, ListingId, Money, Quantity, Tags, Title,
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

/// Every command the listing aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum ListingCommand {
    /// See [`CreateListing`].
    Create(CreateListing),
    /// See [`PublishListing`].
    Publish(PublishListing),
}
