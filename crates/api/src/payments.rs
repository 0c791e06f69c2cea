//! The payment provider over HTTP, and the gateway this server charges
//! through.
//!
//! # The provider protocol (v1)
//! This is the one place it is written down; `crates/payments-simulator`
//! serves it for tests.
//!
//! **Charge.** `POST {base}/v1/charges`, with `Idempotency-Key: <intent id>`,
//! `Content-Type: application/json`, and `Authorization: Bearer <api key>`
//! when one is configured:
//! ```json
//! {"intentId": "0193…", "customer": "0193…",
//!  "amount": {"minor": 5000, "currency": "EUR"},
//!  "paymentToken": "tok_…", "callbackUrl": "https://…/payments/callback"}
//! ```
//! `paymentToken` and `callbackUrl` may be `null`. Answers:
//! - `200 {"status": "captured", "chargeId": "ch_…", "last4": "4242"}`
//!   (`last4` may be `null`);
//! - `200` or `402 {"status": "declined", "reason": "…"}`: final;
//! - `202 {"status": "pending", "chargeId": "ch_…"}`: the result comes by
//!   callback;
//! - `409` (the same key is still being processed), `429` and `5xx`:
//!   transient, retried; any other answer breaks the protocol.
//!
//! A request repeating an `Idempotency-Key` answers the first charge's
//! result and never charges twice.
//!
//! **Callback.** `POST {callbackUrl}` with `Authorization: Bearer <callback
//! secret>` and `{"intentId": "…", "status": "captured" | "declined",
//! "chargeId": "…", "last4": "…", "reason": "…"}` (the fields of its
//! status). The server answers `204`; it may be sent more than once, in any
//! order with the charge's own answer: the receiver deduplicates (see
//! `marketplace_commands::flows::deposit`).
//!
//! No card number, expiry or CVC is ever sent or received: the client
//! tokenises the card at the provider and sends only the token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use marketplace_commands::payments::{
    BreakerStats, ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, ProtectedGateway,
    SimulatedGateway,
};
use marketplace_domain::values::{CardLast4, ProviderRef, Reason};
use serde::{Deserialize, Serialize};

use crate::config::{PaymentProvider, PaymentsSettings, Secret};

/// A charge as sent to the provider.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody<'a> {
    intent_id: uuid::Uuid,
    customer: uuid::Uuid,
    amount: AmountBody<'a>,
    payment_token: Option<&'a str>,
    callback_url: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct AmountBody<'a> {
    minor: i64,
    currency: &'a str,
}

/// A charge's result as the provider reports it (an answer or a callback).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResult {
    /// `captured`, `declined` or `pending`.
    pub status: String,
    /// The provider's charge id.
    #[serde(default)]
    pub charge_id: Option<String>,
    /// The card's last four digits.
    #[serde(default)]
    pub last4: Option<String>,
    /// Why it was declined.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ProviderResult {
    /// The outcome it reports, or why it breaks the protocol.
    pub fn outcome(&self) -> Result<ChargeOutcome, GatewayError> {
        let protocol = |what: &str| GatewayError::Protocol(what.to_owned());
        match self.status.as_str() {
            "captured" => {
                let charge = self
                    .charge_id
                    .as_deref()
                    .ok_or_else(|| protocol("no chargeId"))?;
                let charge_ref =
                    ProviderRef::parse(charge).map_err(|e| protocol(&e.to_string()))?;
                let last4 = match self.last4.as_deref() {
                    Some(l) => Some(CardLast4::parse(l).map_err(|e| protocol(&e.to_string()))?),
                    None => None,
                };
                Ok(ChargeOutcome::Captured { charge_ref, last4 })
            }
            "declined" => {
                let reason = self.reason.as_deref().unwrap_or("declined by the provider");
                let reason = Reason::parse(reason).map_err(|e| protocol(&e.to_string()))?;
                Ok(ChargeOutcome::Declined { reason })
            }
            "pending" => Ok(ChargeOutcome::Pending),
            other => Err(protocol(&format!("unknown status {other:?}"))),
        }
    }
}

/// The HTTP adapter of [`PaymentGateway`]: the protocol above.
#[derive(Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    charges: String,
    api_key: Option<Secret>,
    callback_url: Option<String>,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("charges", &self.charges)
            .finish_non_exhaustive()
    }
}

impl HttpGateway {
    /// A gateway to the provider at `base`.
    pub fn new(base: &str, api_key: Option<Secret>, callback_url: Option<String>) -> Self {
        Self {
            client: reqwest::Client::new(),
            charges: format!("{}/v1/charges", base.trim_end_matches('/')),
            api_key,
            callback_url,
        }
    }
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let body = ChargeBody {
            intent_id: request.intent_id.0,
            customer: request.account_id.0,
            amount: AmountBody {
                minor: request.amount.minor,
                currency: request.amount.currency.as_str(),
            },
            payment_token: request.payment_token.as_ref().map(|t| t.as_str()),
            callback_url: self.callback_url.as_deref(),
        };
        let mut call = self
            .client
            .post(&self.charges)
            .header("idempotency-key", request.intent_id.0.to_string())
            .json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(|e| {
            if e.is_timeout() {
                GatewayError::Timeout
            } else {
                GatewayError::Unavailable(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        match status {
            200 | 202 | 402 => {
                let result: ProviderResult = response
                    .json()
                    .await
                    .map_err(|e| GatewayError::Protocol(e.to_string()))?;
                result.outcome()
            }
            409 | 429 | 500..=599 => Err(GatewayError::Unavailable(format!("HTTP {status}"))),
            other => Err(GatewayError::Protocol(format!("HTTP {other}"))),
        }
    }
}

/// The gateway this server charges through, its breaker, and the callback
/// settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Payments {
    /// The configured adapter behind the breaker and retries.
    pub gateway: ProtectedGateway,
    /// The secret callbacks must carry (none: callbacks are refused).
    pub callback_secret: Option<Secret>,
    /// How long `depositFunds` waits for its intent to settle.
    pub settle_wait: Duration,
    /// The breaker's cool-down: the `Retry-After` for an intent the
    /// charging process's breaker refused (that process may be another).
    pub cool_down: Duration,
}

impl Payments {
    /// The gateway `settings` describe.
    pub fn new(settings: &PaymentsSettings) -> Self {
        let adapter: Arc<dyn PaymentGateway> = match &settings.provider {
            PaymentProvider::Simulated => Arc::new(SimulatedGateway),
            PaymentProvider::Http { url, api_key } => Arc::new(HttpGateway::new(
                url,
                api_key.clone(),
                settings.callback_url.clone(),
            )),
        };
        Self {
            gateway: ProtectedGateway::new(adapter, settings.breaker, settings.retry),
            callback_secret: settings.callback_secret.clone(),
            settle_wait: settings.settle_wait,
            cool_down: settings.breaker.cool_down,
        }
    }

    /// The breaker's state and counters.
    pub fn stats(&self) -> &BreakerStats {
        self.gateway.stats()
    }

    /// Whether `bearer` is the callback secret (compared in constant time).
    pub fn accepts_callback(&self, bearer: &str) -> bool {
        let Some(secret) = &self.callback_secret else {
            return false;
        };
        let (a, b) = (secret.expose().as_bytes(), bearer.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_result_reads_as_a_capture_with_its_digits() {
        let result = ProviderResult {
            status: "captured".into(),
            charge_id: Some("ch_1".into()),
            last4: Some("4242".into()),
            reason: None,
        };
        assert_eq!(
            result.outcome(),
            Ok(ChargeOutcome::Captured {
                charge_ref: ProviderRef::parse("ch_1").expect("valid"),
                last4: Some(CardLast4::parse("4242").expect("valid")),
            })
        );
    }

    #[test]
    fn a_capture_without_a_charge_id_or_with_a_full_card_number_breaks_the_protocol() {
        let mut result = ProviderResult {
            status: "captured".into(),
            charge_id: None,
            last4: None,
            reason: None,
        };
        assert!(matches!(result.outcome(), Err(GatewayError::Protocol(_))));
        result.charge_id = Some("ch_1".into());
        result.last4 = Some("4242424242424242".into());
        assert!(matches!(result.outcome(), Err(GatewayError::Protocol(_))));
    }

    #[test]
    fn an_unknown_status_breaks_the_protocol() {
        let result = ProviderResult {
            status: "maybe".into(),
            charge_id: None,
            last4: None,
            reason: None,
        };
        assert!(matches!(result.outcome(), Err(GatewayError::Protocol(_))));
    }
}
