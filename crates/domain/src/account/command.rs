//! Commands of the account aggregate.

use chrono::{DateTime, Utc};

use crate::values::{AccountId, DisplayName, Email, Money, OrderId, PasswordHash, Role};

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
    /// See [`DepositFunds`].
    Deposit(DepositFunds),
    /// See [`HoldFunds`].
    Hold(HoldFunds),
    /// See [`SettleEscrow`].
    Settle(SettleEscrow),
    /// See [`CreditSale`].
    Credit(CreditSale),
    /// See [`EraseAccount`].
    Erase(EraseAccount),
}

/// Erases the account's personal data. The caller has checked that the
/// actor is the owner or an ADMIN, and destroys the data key with it.
/// Erasing an erased account is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct EraseAccount {
    /// Who asks.
    pub by: AccountId,
    /// When.
    pub at: DateTime<Utc>,
}

/// Adds funds to the wallet (from outside the marketplace: a card, a bank).
#[derive(Clone, Debug, PartialEq)]
pub struct DepositFunds {
    /// Identifies this deposit (from the idempotency key when there is one).
    pub deposit_id: uuid::Uuid,
    /// How much; must be positive.
    pub amount: Money,
    /// When.
    pub at: DateTime<Utc>,
}

/// Moves an order's total from the buyer's wallet into escrow.
/// Holding again for the same order is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldFunds {
    /// The order paid for.
    pub order_id: OrderId,
    /// Its total.
    pub amount: Money,
    /// When.
    pub at: DateTime<Utc>,
}

/// Settles an order's escrow: released (paid out to the seller) on delivery,
/// refunded to the buyer on cancellation. Settling twice is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct SettleEscrow {
    /// The order.
    pub order_id: OrderId,
    /// Paid out or refunded.
    pub outcome: EscrowOutcome,
    /// When.
    pub at: DateTime<Utc>,
}

/// How an escrow ends.
#[derive(Clone, Debug, PartialEq)]
pub enum EscrowOutcome {
    /// Delivered: leaves the buyer for the seller (and the fee account).
    Released,
    /// Cancelled or rejected: back to the buyer's wallet.
    Refunded,
}

/// Credits a seller (or the fee account) with its share of a delivered
/// order. Crediting twice for the same order is a no-op.
#[derive(Clone, Debug, PartialEq)]
pub struct CreditSale {
    /// The delivered order.
    pub order_id: OrderId,
    /// The share.
    pub amount: Money,
    /// The seller's payout or the marketplace's fee.
    pub share: SaleShare,
    /// When.
    pub at: DateTime<Utc>,
}

/// Whose share of a sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SaleShare {
    /// The seller's payout (total less fee).
    Payout,
    /// The marketplace fee, to [`crate::values::FEE_ACCOUNT_ID`].
    Fee,
}
