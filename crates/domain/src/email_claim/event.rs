//! Events of the email-claim aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::{AccountId, Email};

/// An email was claimed by an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmailClaimed {
    /// The normalised email.
    pub email: Email,
    /// The account that holds it.
    pub account_id: AccountId,
    /// When.
    pub claimed_at: DateTime<Utc>,
}

impl DomainEvent for EmailClaimed {
    const NAME: &'static str = "email.claimed";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the email-claim aggregate.
    pub enum EmailClaimEvent {
        Claimed(EmailClaimed),
    }
}
