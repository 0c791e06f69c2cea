//! Events of the account aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::DomainEvent;
use crate::values::{AccountId, DisplayName, Email, PasswordHash, Role};

/// An account was opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountRegistered {
    /// Its id.
    pub account_id: AccountId,
    /// Its normalised email.
    pub email: Email,
    /// Its public name.
    pub display_name: DisplayName,
    /// The argon2 hash of its password.
    pub password_hash: PasswordHash,
    /// Its roles, sorted, at least one.
    pub roles: Vec<Role>,
    /// When.
    pub registered_at: DateTime<Utc>,
}

impl DomainEvent for AccountRegistered {
    const NAME: &'static str = "account.registered";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the account aggregate.
    pub enum AccountEvent {
        Registered(AccountRegistered),
    }
}
