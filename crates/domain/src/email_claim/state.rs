//! State of the email-claim aggregate.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::values::AccountId;

/// Who holds an email, if anyone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EmailClaim {
    /// The account holding the claim.
    pub claimant: Option<AccountId>,
    /// Since when.
    pub claimed_at: Option<DateTime<Utc>>,
}
