//! State of the payment-intent aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::values::{AccountId, CardLast4, Money, PaymentIntentId, ProviderRef, Reason};

/// Where an intent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Recorded; the provider has not answered for good yet.
    Pending,
    /// Captured; the wallet is credited.
    Succeeded,
    /// Declined, or not confirmed in time.
    Failed,
}

/// Why an intent failed, which decides whether a late success still counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureKind {
    /// The provider refused the charge: final.
    Declined,
    /// No answer before the deadline (timeouts, provider errors, the
    /// breaker open). The provider may still have captured it, so a late
    /// success is accepted: the customer's money is credited.
    Unconfirmed,
    /// The provider was never called (its circuit breaker was open):
    /// nothing was charged, so nothing can succeed later.
    NotAttempted,
}

/// A payment intent as its events leave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntent {
    /// Its id, once created.
    pub id: Option<PaymentIntentId>,
    /// The wallet it credits.
    pub account_id: Option<AccountId>,
    /// How much.
    pub amount: Option<Money>,
    /// Where it stands (`None` before creation).
    pub status: Option<PaymentStatus>,
    /// Why it failed, when it did.
    pub failure: Option<(FailureKind, Reason)>,
    /// The provider's charge id, once captured.
    pub charge_ref: Option<ProviderRef>,
    /// The card's last four digits, if reported.
    pub last4: Option<CardLast4>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: Option<DateTime<Utc>>,
}
