//! Events of the payment-intent aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::FailureKind;
use crate::event::DomainEvent;
use crate::values::{AccountId, CardLast4, Money, PaymentIntentId, ProviderRef, Reason};

/// A deposit was asked for; the provider is to be charged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntentCreated {
    /// The intent.
    pub intent_id: PaymentIntentId,
    /// The wallet to credit.
    pub account_id: AccountId,
    /// How much.
    pub amount: Money,
    /// The provider's token for the payment method, if any.
    pub payment_token: Option<ProviderRef>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl DomainEvent for PaymentIntentCreated {
    const NAME: &'static str = "payment.intent_created";
    const VERSION: u32 = 1;
}

/// The provider captured the charge: the wallet is to be credited, once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    /// The intent.
    pub intent_id: PaymentIntentId,
    /// The wallet to credit.
    pub account_id: AccountId,
    /// How much.
    pub amount: Money,
    /// The provider's id of the charge.
    pub charge_ref: ProviderRef,
    /// The card's last four digits, if reported.
    pub last4: Option<CardLast4>,
    /// When.
    pub succeeded_at: DateTime<Utc>,
}

impl DomainEvent for PaymentSucceeded {
    const NAME: &'static str = "payment.succeeded";
    const VERSION: u32 = 1;
}

/// The charge did not go through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The intent.
    pub intent_id: PaymentIntentId,
    /// Declined or unconfirmed.
    pub kind: FailureKind,
    /// Why.
    pub reason: Reason,
    /// When.
    pub failed_at: DateTime<Utc>,
}

impl DomainEvent for PaymentFailed {
    const NAME: &'static str = "payment.failed";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the payment-intent aggregate.
    pub enum PaymentEvent {
        IntentCreated(PaymentIntentCreated),
        Succeeded(PaymentSucceeded),
        Failed(PaymentFailed),
    }
}
