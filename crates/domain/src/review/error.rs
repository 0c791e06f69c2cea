//! Why the review aggregate refuses a command.

/// Refusals of review commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// This order line was reviewed already.
    #[error("this order's listing has already been reviewed")]
    AlreadyReviewed,
    /// No review with this id.
    #[error("review not found")]
    NotFound,
    /// No such order.
    #[error("order not found")]
    OrderNotFound,
    /// Only the order's buyer reviews it.
    #[error("only the buyer of this order can review it")]
    NotTheBuyer,
    /// Reviews wait for delivery.
    #[error("only delivered orders can be reviewed")]
    NotDelivered,
    /// The listing is not part of the order.
    #[error("this listing is not part of the order")]
    ListingNotInOrder,
    /// Only ADMINs moderate.
    #[error("only admins moderate reviews")]
    NotAnAdmin,
    /// The review was moderated already.
    #[error("this review has already been moderated")]
    AlreadyModerated,
    /// A rejection needs a reason.
    #[error("a rejection needs a reason")]
    ReasonRequired,
}
