//! The deposit saga: charges a payment intent through the gateway and
//! settles it.
//!
//! - `payment.intent_created`: unless the intent is settled already (a
//!   callback beat us, or this is a replay), charge it through the gateway
//!   (behind its breaker, retried until the deadline; the intent id is the
//!   provider's idempotency key, so a repeat charges nothing twice). A
//!   capture succeeds the intent and credits the wallet; a decline fails
//!   it with the provider's reason; no answer by the deadline fails it as
//!   *unconfirmed* — a late success (callback) still succeeds it then; the
//!   breaker refusing before any attempt fails it as *not attempted*
//!   (nothing was charged). A pending answer waits for the callback.
//! - `payment.succeeded`: credits the wallet (again). The credit's event
//!   ids derive from the intent ([`crate::flows::deposit::credit_context`]),
//!   so whichever party credited first, this is recognised by the store;
//!   it is here so that a success recorded by a callback, or by a process
//!   that crashed before its credit, is credited all the same.

use std::sync::Arc;

use async_trait::async_trait;
use marketplace_consumers::Envelope;
use marketplace_domain::payment::{
    FailureKind, PaymentError, PaymentEvent, PaymentIntent, PaymentIntentCreated, PaymentStatus,
    PaymentSucceeded,
};
use marketplace_domain::values::Reason;
use marketplace_domain::{AggregateKind, Event};

use super::{ProcessError, ProcessManager};
use crate::flows::deposit::{self, SettleError};
use crate::handler::{CommandContext, CommandError, CommandHandler};
use crate::payments::{ChargeRequest, GatewayError, PaymentGateway};

/// Name of the saga (its checkpoint key and the actor of its commands).
pub const NAME: &str = "deposit";

/// The deposit saga.
pub struct DepositSaga {
    handler: CommandHandler,
    gateway: Arc<dyn PaymentGateway>,
}

impl std::fmt::Debug for DepositSaga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepositSaga").finish()
    }
}

impl DepositSaga {
    /// A saga charging through `gateway` and issuing commands through
    /// `handler`.
    pub fn new(handler: CommandHandler, gateway: Arc<dyn PaymentGateway>) -> Self {
        Self { handler, gateway }
    }

    async fn created(
        &self,
        trigger: &Envelope,
        e: &PaymentIntentCreated,
    ) -> Result<(), ProcessError> {
        let intent = self.handler.load::<PaymentIntent>(e.intent_id.0).await?;
        if intent.state.status != Some(PaymentStatus::Pending) {
            return Ok(());
        }
        let request = ChargeRequest {
            intent_id: e.intent_id,
            account_id: e.account_id,
            amount: e.amount.clone(),
            payment_token: e.payment_token.clone(),
        };
        let ctx = CommandContext::caused_by(trigger, NAME, "charge");
        match self.gateway.charge(&request).await {
            Ok(outcome) => {
                match deposit::settle(&self.handler, e.intent_id, &outcome, &ctx).await {
                    Ok(_) => Ok(()),
                    Err(SettleError::Intent(CommandError::Rejected(refusal))) => {
                        // The provider's answer contradicts what is recorded
                        // (a capture after a decline): the record stands.
                        tracing::warn!(intent = %e.intent_id, %refusal, "charge outcome refused");
                        Ok(())
                    }
                    Err(SettleError::Intent(err)) => Err(ProcessError::command(err)),
                    Err(SettleError::Credit(err)) => Err(ProcessError::command(err)),
                }
            }
            Err(error) => {
                let reason =
                    Reason::parse(&error.to_string()).unwrap_or_else(|_| fallback_reason());
                tracing::warn!(intent = %e.intent_id, %error, "charge unconfirmed");
                let kind = match error {
                    GatewayError::CircuitOpen { .. } => FailureKind::NotAttempted,
                    GatewayError::Timeout
                    | GatewayError::Unavailable(_)
                    | GatewayError::Protocol(_) => FailureKind::Unconfirmed,
                };
                match deposit::give_up(&self.handler, e.intent_id, kind, reason, &ctx).await {
                    Ok(_) | Err(CommandError::Rejected(PaymentError::NotFound)) => Ok(()),
                    Err(err) => Err(ProcessError::command(err)),
                }
            }
        }
    }

    async fn succeeded(
        &self,
        trigger: &Envelope,
        e: &PaymentSucceeded,
    ) -> Result<(), ProcessError> {
        let intent = self.handler.load::<PaymentIntent>(e.intent_id.0).await?;
        let ctx = CommandContext::caused_by(trigger, NAME, "credit");
        match deposit::credit(&self.handler, &intent.state, &ctx).await {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(refusal)) => Err(ProcessError::Command(format!(
                "credit of intent {} refused: {refusal}",
                e.intent_id
            ))),
            Err(err) => Err(ProcessError::command(err)),
        }
    }
}

fn fallback_reason() -> Reason {
    Reason::parse("the payment provider did not answer").expect("valid reason")
}

/// What the saga does for `event`, if anything.
enum Step<'a> {
    Charge(&'a PaymentIntentCreated),
    Credit(&'a PaymentSucceeded),
}

fn step(event: &Event) -> Option<Step<'_>> {
    match event {
        Event::Payment(payment) => match payment {
            PaymentEvent::IntentCreated(e) => Some(Step::Charge(e)),
            PaymentEvent::Succeeded(e) => Some(Step::Credit(e)),
            // A failure is final for the saga: nothing to charge or credit.
            PaymentEvent::Failed(_) => None,
        },
        Event::Account(_)
        | Event::EmailClaim(_)
        | Event::Listing(_)
        | Event::Order(_)
        | Event::Asset(_)
        | Event::Review(_) => None,
    }
}

#[async_trait]
impl ProcessManager for DepositSaga {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        match aggregate {
            AggregateKind::Payment => true,
            AggregateKind::Account
            | AggregateKind::EmailClaim
            | AggregateKind::Listing
            | AggregateKind::Order
            | AggregateKind::Asset
            | AggregateKind::Review => false,
        }
    }

    fn wants(&self, event: &Envelope) -> bool {
        step(&event.event).is_some()
    }

    async fn handle(&self, event: &Envelope) -> Result<(), ProcessError> {
        match step(&event.event) {
            Some(Step::Charge(e)) => self.created(event, e).await,
            Some(Step::Credit(e)) => self.succeeded(event, e).await,
            None => Ok(()),
        }
    }
}
