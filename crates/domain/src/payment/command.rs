//! Commands of the payment-intent aggregate.

use chrono::{DateTime, Utc};

use super::state::FailureKind;
use crate::values::{AccountId, CardLast4, Money, PaymentIntentId, ProviderRef, Reason};

/// Every command the payment-intent aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum PaymentCommand {
    /// See [`CreateIntent`].
    Create(CreateIntent),
    /// See [`RecordSuccess`].
    RecordSuccess(RecordSuccess),
    /// See [`RecordFailure`].
    RecordFailure(RecordFailure),
}

/// Records that `account_id` wants to deposit `amount`, charged through the
/// payment provider. Nothing is credited yet.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateIntent {
    /// The intent (and the provider's idempotency key).
    pub intent_id: PaymentIntentId,
    /// The wallet to credit.
    pub account_id: AccountId,
    /// How much; must be positive.
    pub amount: Money,
    /// The provider's token for the payment method, if the client sent one
    /// (never card data).
    pub payment_token: Option<ProviderRef>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The provider captured the charge. Recording it again (a duplicate
/// callback, a retry that raced the callback) changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordSuccess {
    /// The provider's id of the charge.
    pub charge_ref: ProviderRef,
    /// The card's last four digits, if the provider reports them.
    pub last4: Option<CardLast4>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The charge did not go through: declined by the provider, or not
/// confirmed before the deadline. A failure after a success changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordFailure {
    /// Declined (final) or unconfirmed (a late success may still come).
    pub kind: FailureKind,
    /// Why, for the client.
    pub reason: Reason,
    /// When.
    pub at: DateTime<Utc>,
}
