//! Events of the review aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::{
    AccountId, ListingId, OrderId, Personal, Rating, Reason, ReviewComment, ReviewId,
};

/// A buyer reviewed a listing from a delivered order; PENDING moderation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewSubmitted {
    /// Its id.
    pub review_id: ReviewId,
    /// The listing.
    pub listing_id: ListingId,
    /// The order.
    pub order_id: OrderId,
    /// The author (the order's buyer).
    pub author_id: AccountId,
    /// Stars.
    pub rating: Rating,
    /// Text: free text that can identify its author, so personal (sealed
    /// under the author's data key from version 2; erased with them).
    pub comment: Personal<ReviewComment>,
    /// When.
    pub submitted_at: DateTime<Utc>,
}

impl DomainEvent for ReviewSubmitted {
    const NAME: &'static str = "review.submitted";
    const VERSION: u32 = 2;
}

/// An ADMIN approved the review: it counts toward the listing's rating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewApproved {
    /// Its id.
    pub review_id: ReviewId,
    /// The listing.
    pub listing_id: ListingId,
    /// Its stars, now counted toward the listing's rating.
    pub rating: Rating,
    /// The moderator.
    pub moderator_id: AccountId,
    /// When.
    pub approved_at: DateTime<Utc>,
}

impl DomainEvent for ReviewApproved {
    const NAME: &'static str = "review.approved";
    const VERSION: u32 = 1;
}

/// An ADMIN rejected the review.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewRejected {
    /// Its id.
    pub review_id: ReviewId,
    /// The listing.
    pub listing_id: ListingId,
    /// The moderator.
    pub moderator_id: AccountId,
    /// Why.
    pub reason: Reason,
    /// When.
    pub rejected_at: DateTime<Utc>,
}

impl DomainEvent for ReviewRejected {
    const NAME: &'static str = "review.rejected";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the review aggregate.
    pub enum ReviewEvent {
        Submitted(ReviewSubmitted),
        Approved(ReviewApproved),
        Rejected(ReviewRejected),
    }
}
