//! Events of the account aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::command::SaleShare;
use crate::event::DomainEvent;
use crate::values::{AccountId, DisplayName, Email, Money, OrderId, PasswordHash, Personal, Role};

/// An account was opened.
///
/// Version 2 stores the personal fields (email, display name, password
/// hash) sealed under the account's data key; version 1 stored them in the
/// clear. Decoded, either reads the same, and `Erased` after an erasure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountRegistered {
    /// Its id.
    pub account_id: AccountId,
    /// Its normalised email (personal).
    pub email: Personal<Email>,
    /// Its public name (personal).
    pub display_name: Personal<DisplayName>,
    /// The argon2 hash of its password (personal).
    pub password_hash: Personal<PasswordHash>,
    /// Its roles, sorted, at least one.
    pub roles: Vec<Role>,
    /// When.
    pub registered_at: DateTime<Utc>,
}

impl DomainEvent for AccountRegistered {
    const NAME: &'static str = "account.registered";
    const VERSION: u32 = 2;
}

/// Money came into the wallet from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FundsDeposited {
    /// The account.
    pub account_id: AccountId,
    /// Identifies the deposit.
    pub deposit_id: uuid::Uuid,
    /// How much.
    pub amount: Money,
    /// When.
    pub deposited_at: DateTime<Utc>,
}

impl DomainEvent for FundsDeposited {
    const NAME: &'static str = "account.funds_deposited";
    const VERSION: u32 = 1;
}

/// An order's total moved from the wallet into escrow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FundsHeld {
    /// The buyer's account.
    pub account_id: AccountId,
    /// The order.
    pub order_id: OrderId,
    /// How much.
    pub amount: Money,
    /// When.
    pub held_at: DateTime<Utc>,
}

impl DomainEvent for FundsHeld {
    const NAME: &'static str = "account.funds_held";
    const VERSION: u32 = 1;
}

/// An order's escrow left the buyer for the seller and the fee account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscrowReleased {
    /// The buyer's account.
    pub account_id: AccountId,
    /// The order.
    pub order_id: OrderId,
    /// How much.
    pub amount: Money,
    /// When.
    pub released_at: DateTime<Utc>,
}

impl DomainEvent for EscrowReleased {
    const NAME: &'static str = "account.escrow_released";
    const VERSION: u32 = 1;
}

/// An order's escrow went back to the buyer's wallet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscrowRefunded {
    /// The buyer's account.
    pub account_id: AccountId,
    /// The order.
    pub order_id: OrderId,
    /// How much.
    pub amount: Money,
    /// When.
    pub refunded_at: DateTime<Utc>,
}

impl DomainEvent for EscrowRefunded {
    const NAME: &'static str = "account.escrow_refunded";
    const VERSION: u32 = 1;
}

/// A seller's payout or the marketplace's fee from a delivered order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleCredited {
    /// The credited account (seller or fee account).
    pub account_id: AccountId,
    /// The order.
    pub order_id: OrderId,
    /// How much.
    pub amount: Money,
    /// Payout or fee.
    pub share: SaleShare,
    /// When.
    pub credited_at: DateTime<Utc>,
}

impl DomainEvent for SaleCredited {
    const NAME: &'static str = "account.sale_credited";
    const VERSION: u32 = 1;
}

/// The account's personal data was erased (GDPR art. 17): its data key is
/// destroyed, so every personal field sealed under it reads as erased from
/// now on, and its email is free again. Its money, orders and reviews stay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountErased {
    /// The account.
    pub account_id: AccountId,
    /// Who asked: the owner or an ADMIN.
    pub erased_by: AccountId,
    /// When.
    pub erased_at: DateTime<Utc>,
}

impl DomainEvent for AccountErased {
    const NAME: &'static str = "account.erased";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the account aggregate.
    pub enum AccountEvent {
        Registered(AccountRegistered),
        FundsDeposited(FundsDeposited),
        FundsHeld(FundsHeld),
        EscrowReleased(EscrowReleased),
        EscrowRefunded(EscrowRefunded),
        SaleCredited(SaleCredited),
        Erased(AccountErased),
    }
}
