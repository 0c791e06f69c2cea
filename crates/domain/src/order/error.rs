//! Why the order aggregate refuses a command.

use super::state::OrderStatus;

/// Refusals of order commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order id is taken.
    #[error("this order already exists")]
    AlreadyPlaced,
    /// No order with this id.
    #[error("order not found")]
    NotFound,
    /// Only accounts with the BUYER role place orders.
    #[error("only buyers can place orders")]
    NotABuyer,
    /// An order needs at least one line.
    #[error("an order needs at least one line")]
    NoLines,
    /// Too many lines.
    #[error("an order holds at most {max} lines", max = super::MAX_LINES)]
    TooManyLines,
    /// Each listing may appear once.
    #[error("each listing may appear only once in an order")]
    DuplicateLine,
    /// Quantities are positive.
    #[error("each line's quantity must be positive")]
    NonPositiveQuantity,
    /// One seller per order.
    #[error("an order holds listings of one seller; place one order per seller")]
    SeveralSellers,
    /// One currency per order.
    #[error("an order is paid in one currency")]
    MixedCurrencies,
    /// A seller buying their own listing.
    #[error("sellers cannot buy their own listings")]
    OwnListing,
    /// The total overflows.
    #[error("the order total is too large")]
    TotalTooLarge,
    /// Only the buyer may do this.
    #[error("only the buyer of this order can do that")]
    NotTheBuyer,
    /// Only the seller may do this.
    #[error("only the seller of this order can do that")]
    NotTheSeller,
    /// The order is not in a state that allows this.
    #[error("the order is {status:?}, which does not allow this")]
    WrongStatus {
        /// Its current status.
        status: OrderStatus,
    },
    /// Digital-only orders are delivered on confirmation, never shipped.
    #[error("digital-only orders are delivered on confirmation and need no shipping")]
    NothingToShip,
}
