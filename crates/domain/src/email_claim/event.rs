//! Events of the email-claim aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::AccountId;

/// An email was claimed by an account.
///
/// Version 1 stored the email in the clear; version 2 stores none (the
/// stream's name, a keyed hash of the email, is the claim), and its
/// upcaster drops the old field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmailClaimed {
    /// The account that holds it.
    pub account_id: AccountId,
    /// When.
    pub claimed_at: DateTime<Utc>,
}

impl DomainEvent for EmailClaimed {
    const NAME: &'static str = "email.claimed";
    const VERSION: u32 = 2;
}

crate::event_set! {
    /// Every event of the email-claim aggregate.
    pub enum EmailClaimEvent {
        Claimed(EmailClaimed),
    }
}
