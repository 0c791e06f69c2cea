//! State of the review aggregate.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::values::{AccountId, ListingId, OrderId, Rating, Reason, ReviewComment, ReviewId};

/// Where a review is in moderation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewStatus {
    /// Not submitted.
    #[default]
    Absent,
    /// Waiting for an ADMIN.
    Pending,
    /// Shown; counts toward the rating.
    Approved,
    /// Hidden.
    Rejected,
}

/// A review as its events leave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Review {
    /// Its id.
    pub id: Option<ReviewId>,
    /// The listing.
    pub listing_id: Option<ListingId>,
    /// The order.
    pub order_id: Option<OrderId>,
    /// The author.
    pub author_id: Option<AccountId>,
    /// Stars.
    pub rating: Option<Rating>,
    /// Text.
    pub comment: Option<ReviewComment>,
    /// Status.
    pub status: ReviewStatus,
    /// Why rejected.
    pub rejection_reason: Option<Reason>,
    /// When submitted.
    pub submitted_at: Option<DateTime<Utc>>,
}
