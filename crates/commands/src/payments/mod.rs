//! The payment gateway: the port deposits are charged through, and what
//! protects the marketplace from a provider that fails or hangs.
//!
//! - [`PaymentGateway`]: the port. One call, [`PaymentGateway::charge`],
//!   idempotent per payment intent (the intent id is the provider's
//!   idempotency key), answering captured, declined or pending (the result
//!   will come by callback).
//! - [`SimulatedGateway`]: captures at once; the default when no provider is
//!   configured (`cargo run --release`). The HTTP adapter, which speaks the
//!   documented JSON protocol to a real provider, is the API crate's
//!   (`marketplace_api::payments`), since it needs an HTTP client.
//! - [`breaker`]: [`ProtectedGateway`], any gateway behind a circuit breaker
//!   (the `failsafe` crate's state machine: it opens on an error rate or a
//!   run of failures, fast-fails while open, half-opens after a cool-down)
//!   and retries with exponential backoff, jitter and a deadline (the
//!   consumer runtime's [`marketplace_consumers::retry::Backoff`]);
//!   [`BreakerStats`] are its state and counters for `/metrics` and
//!   `/readyz`.
//!
//! No card data crosses this port: a charge carries the provider's token
//! for the payment method, and a capture returns the charge id and the
//! card's last four digits.

pub mod breaker;

use std::time::Duration;

use async_trait::async_trait;
use marketplace_domain::values::{
    AccountId, CardLast4, Money, PaymentIntentId, ProviderRef, Reason,
};

pub use breaker::{BreakerConfig, BreakerState, BreakerStats, ProtectedGateway, RetryPolicy};

/// One charge the provider is asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ChargeRequest {
    /// The intent: the provider's idempotency key.
    pub intent_id: PaymentIntentId,
    /// The wallet the money is for (the provider's customer reference).
    pub account_id: AccountId,
    /// How much.
    pub amount: Money,
    /// The provider's token for the payment method, if the client sent one.
    pub payment_token: Option<ProviderRef>,
}

/// What the provider answered.
#[derive(Clone, Debug, PartialEq)]
pub enum ChargeOutcome {
    /// The money is captured.
    Captured {
        /// The provider's charge id.
        charge_ref: ProviderRef,
        /// The card's last four digits, if reported.
        last4: Option<CardLast4>,
    },
    /// The provider refused the charge (final).
    Declined {
        /// Why.
        reason: Reason,
    },
    /// Accepted, still processing: the result comes by callback.
    Pending,
}

/// Why a charge got no answer. Every variant is transient: the provider may
/// still capture it later (a timeout), so nothing here is a decline.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer within the attempt's timeout.
    #[error("the payment provider did not answer in time")]
    Timeout,
    /// The provider answered with an error, or could not be reached.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider's answer broke the protocol.
    #[error("the payment provider answered unexpectedly: {0}")]
    Protocol(String),
    /// The circuit breaker is open: the provider is not called at all.
    #[error("the payment provider is unavailable (circuit open)")]
    CircuitOpen {
        /// When the breaker lets a call through again.
        retry_after: Duration,
    },
}

/// The port every charge goes through.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `request`. Calling it again for the same intent must not
    /// charge twice: adapters pass the intent id as the idempotency key.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError>;
}

/// Captures every charge at once, with a charge id derived from the intent
/// and no card digits: the gateway of a marketplace without a provider.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedGateway;

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let charge_ref = ProviderRef::parse(&format!("sim_{}", request.intent_id.0.simple()))
            .map_err(|e| GatewayError::Protocol(e.to_string()))?;
        Ok(ChargeOutcome::Captured {
            charge_ref,
            last4: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketplace_domain::values::Currency;
    use uuid::Uuid;

    #[tokio::test]
    async fn the_simulated_gateway_captures_with_a_charge_id_from_the_intent() {
        let request = ChargeRequest {
            intent_id: PaymentIntentId(Uuid::from_u128(9)),
            account_id: AccountId(Uuid::from_u128(1)),
            amount: Money {
                minor: 100,
                currency: Currency::parse("EUR").expect("valid"),
            },
            payment_token: None,
        };
        let outcome = SimulatedGateway.charge(&request).await.expect("captured");
        assert_eq!(
            outcome,
            ChargeOutcome::Captured {
                charge_ref: ProviderRef::parse("sim_00000000000000000000000000000009")
                    .expect("valid"),
                last4: None,
            }
        );
    }
}
