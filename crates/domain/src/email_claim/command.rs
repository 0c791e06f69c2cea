//! Commands of the email-claim aggregate.

use chrono::{DateTime, Utc};

use crate::values::{AccountId, Email};

/// Claims an email for an account about to be registered.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimEmail {
    /// The normalised email.
    pub email: Email,
    /// The account that wants it.
    pub account_id: AccountId,
    /// Looked up before the command: whether the account holding the current
    /// claim (if any) was actually registered. A claim whose account never
    /// came to exist (the registering process died between the two appends)
    /// may be taken over once it is stale.
    pub current_claimant_registered: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// Every command the email-claim aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum EmailClaimCommand {
    /// See [`ClaimEmail`].
    Claim(ClaimEmail),
}
