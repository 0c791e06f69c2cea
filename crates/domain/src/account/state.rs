//! State of the account aggregate.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::values::{AccountId, DisplayName, Email, PasswordHash, Role};

/// An account as its events leave it. `None` fields mean "not registered".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Account {
    /// Its id, once registered.
    pub id: Option<AccountId>,
    /// Its email.
    pub email: Option<Email>,
    /// Its public name.
    pub display_name: Option<DisplayName>,
    /// Its roles.
    pub roles: Vec<Role>,
    /// When it was opened.
    pub registered_at: Option<DateTime<Utc>>,
    /// The argon2 hash login verifies against; never shown in audit output.
    #[serde(skip_serializing)]
    pub password_hash: Option<PasswordHash>,
}

impl Account {
    /// Whether the account exists.
    pub fn is_registered(&self) -> bool {
        self.id.is_some()
    }
}
