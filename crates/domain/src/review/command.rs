//! Commands of the review aggregate.

use chrono::{DateTime, Utc};

use crate::order::OrderStatus;
use crate::values::{AccountId, Actor, ListingId, OrderId, Rating, Reason, ReviewComment};

/// What the reviewed order looked like when the review was submitted,
/// looked up from the order's stream before deciding.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderFacts {
    /// The order.
    pub order_id: OrderId,
    /// Its buyer.
    pub buyer_id: AccountId,
    /// Its status.
    pub status: OrderStatus,
    /// The listings it contains.
    pub listing_ids: Vec<ListingId>,
}

/// The buyer of a delivered order reviews one of its listings. The review
/// id is derived from (order, listing), so each line is reviewed once.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmitReview {
    /// Who writes it.
    pub author: Actor,
    /// The listing reviewed.
    pub listing_id: ListingId,
    /// The order it was bought in (absent when no such order exists).
    pub order: Option<OrderFacts>,
    /// Stars.
    pub rating: Rating,
    /// Text.
    pub comment: ReviewComment,
    /// When.
    pub at: DateTime<Utc>,
}

/// An ADMIN's decision on a PENDING review.
#[derive(Clone, Debug, PartialEq)]
pub struct ModerateReview {
    /// Who decides; must hold ADMIN.
    pub moderator: Actor,
    /// Approve, or reject with a reason.
    pub decision: Decision,
    /// When.
    pub at: DateTime<Utc>,
}

/// A moderation decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The review is shown and counts toward the rating.
    Approve,
    /// The review is hidden, for this reason (required).
    Reject(Option<Reason>),
}

/// Every command the review aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum ReviewCommand {
    /// See [`SubmitReview`].
    Submit(SubmitReview),
    /// See [`ModerateReview`].
    Moderate(ModerateReview),
}
