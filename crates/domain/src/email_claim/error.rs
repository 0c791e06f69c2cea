//! Why the email-claim aggregate refuses a command.

/// Refusals of email claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailClaimError {
    /// Another account holds this email.
    #[error("an account with this email already exists")]
    EmailTaken,
}
