//! State of the account aggregate.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::values::{AccountId, DisplayName, Email, Role};

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
}

impl Account {
    /// Whether the account exists.
    pub fn is_registered(&self) -> bool {
        self.id.is_some()
    }
}
