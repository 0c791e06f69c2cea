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
}
