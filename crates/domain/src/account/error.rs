//! Why the account aggregate refuses a command.

/// Refusals of account commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account id is already taken.
    #[error("this account is already registered")]
    AlreadyRegistered,
    /// ADMIN can only be granted by an operator.
    #[error("the ADMIN role cannot be self-assigned")]
    AdminNotSelfAssignable,
}
