//! Commands of the account aggregate.

use chrono::{DateTime, Utc};

use crate::values::{AccountId, DisplayName, Email, PasswordHash, Role};

/// Through which door an account is being created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationChannel {
    /// A person signing up through the public API: may not grant ADMIN.
    SelfService,
    /// An operator on the command line (`marketplace accounts create-admin`).
    Operator,
}

/// Opens an account. The email must already be claimed for this account
/// (see [`crate::email_claim`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterAccount {
    /// The new account's id.
    pub account_id: AccountId,
    /// Its normalised email.
    pub email: Email,
    /// Its public name.
    pub display_name: DisplayName,
    /// The argon2 hash of its password, computed before the command.
    pub password_hash: PasswordHash,
    /// Requested roles; empty means BUYER.
    pub roles: Vec<Role>,
    /// Who is registering it.
    pub channel: RegistrationChannel,
    /// When.
    pub at: DateTime<Utc>,
}

/// Every command the account aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountCommand {
    /// See [`RegisterAccount`].
    Register(RegisterAccount),
}
