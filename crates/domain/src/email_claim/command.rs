//! Commands of the email-claim aggregate.

use chrono::{DateTime, Utc};

use crate::values::AccountId;

/// Claims an email for an account about to be registered. The email itself
/// is not on the command: the claim's stream is named by a keyed hash of
/// it (see [`super::claim_id`]), and the claim stores no personal data.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimEmail {
    /// The account that wants it.
    pub account_id: AccountId,
    /// Looked up before the command: whether the account holding the current
    /// claim (if any) was actually registered. A claim whose account never
    /// came to exist (the registering process died between the two appends)
    /// may be taken over once it is stale.
    pub current_claimant_registered: bool,
    /// Looked up before the command: whether the account holding the
    /// current claim (if any) was erased. Its email is free at once.
    pub current_claimant_erased: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// Every command the email-claim aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum EmailClaimCommand {
    /// See [`ClaimEmail`].
    Claim(ClaimEmail),
}
