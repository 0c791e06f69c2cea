//! Why the listing aggregate refuses a command.

/// Refusals of listing commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    /// Only accounts with the SELLER role create listings.
    #[error("only sellers can create listings")]
    NotASeller,
    /// The listing id is taken.
    #[error("this listing already exists")]
    AlreadyExists,
    /// No listing with this id.
    #[error("listing not found")]
    NotFound,
    /// The actor does not own the listing.
    #[error("only the seller who owns this listing can change it")]
    NotOwner,
    /// Publishing what is already published.
    #[error("the listing is already published")]
    AlreadyPublished,
    /// Prices must be above zero.
    #[error("the price must be positive")]
    NonPositivePrice,
    /// A price change may not switch currency.
    #[error("the price must stay in the listing's currency")]
    CurrencyChange,
    /// Restocks and reservations must be above zero.
    #[error("the quantity must be positive")]
    NonPositiveQuantity,
    /// Digital listings have no stock.
    #[error("digital listings have unlimited quantity and no stock")]
    DigitalHasNoStock,
    /// Stock would exceed what the system counts.
    #[error("stock cannot exceed {max} units", max = crate::values::Quantity::MAX)]
    TooMuchStock,
    /// Delisting what is not published.
    #[error("only a published listing can be delisted")]
    NotPublished,
    /// Buying what is not PUBLISHED.
    #[error("listing not available")]
    NotAvailable,
    /// A seller buying their own listing.
    #[error("sellers cannot buy their own listings")]
    OwnListing,
    /// Fewer units available than asked for.
    #[error("out of stock: {available} available, {requested} requested")]
    OutOfStock {
        /// Units available.
        available: u32,
        /// Units asked for.
        requested: u32,
    },
    /// Committing a reservation that does not exist.
    #[error("no stock is reserved for this order")]
    NoReservation,
}
