//! Why the payment-intent aggregate refuses a command.

/// Refusals of payment commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// An intent with this id exists already.
    #[error("this payment intent already exists")]
    AlreadyExists,
    /// No intent with this id.
    #[error("payment intent not found")]
    NotFound,
    /// Deposits must be above zero.
    #[error("the amount must be positive")]
    NonPositiveAmount,
    /// The provider declined it: a success for it contradicts the provider.
    #[error("the payment was declined")]
    AlreadyDeclined,
    /// The provider was never asked (the breaker was open): it cannot
    /// have captured anything.
    #[error("the payment was never sent to the provider")]
    NeverCharged,
}
