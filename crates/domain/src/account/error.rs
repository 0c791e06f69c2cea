//! Why the account aggregate refuses a command.

use crate::values::Money;

/// Refusals of account commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account id is already taken.
    #[error("this account is already registered")]
    AlreadyRegistered,
    /// ADMIN can only be granted by an operator.
    #[error("the ADMIN role cannot be self-assigned")]
    AdminNotSelfAssignable,
    /// No account with this id.
    #[error("account not found")]
    NotFound,
    /// Deposits and holds must be above zero.
    #[error("the amount must be positive")]
    NonPositiveAmount,
    /// The balance would overflow.
    #[error("the amount is too large")]
    AmountTooLarge,
    /// The wallet holds less than the order costs.
    #[error("insufficient funds: {available:?} available, {required:?} required")]
    InsufficientFunds {
        /// What the wallet holds in that currency.
        available: Money,
        /// What is needed.
        required: Money,
    },
    /// Settling an escrow that was never held.
    #[error("no funds are held for this order")]
    NoEscrow,
}
