//! The payment-intent aggregate: one deposit's charge at the payment
//! provider, from request to capture or failure.
//!
//! A deposit no longer credits the wallet directly. `depositFunds` creates
//! an intent (`payment.intent_created`); the deposit saga asks the gateway
//! and records the outcome here; the wallet is credited (an
//! `account.funds_deposited` whose event id derives from the
//! `payment.succeeded` event) only once the intent has succeeded. An intent
//! succeeds at most once — a duplicate callback, or a retry racing a late
//! success, decides nothing — so the credit happens exactly once. The state
//! is one intent's, so it stays small; the account keeps no per-deposit
//! "already credited" set.
//!
//! No card data ever enters: only the provider's token for the payment
//! method and, once captured, its charge id and the card's last four digits.

mod command;
mod error;
mod event;
mod state;

pub use command::{CreateIntent, PaymentCommand, RecordFailure, RecordSuccess};
pub use error::PaymentError;
pub use event::{PaymentEvent, PaymentFailed, PaymentIntentCreated, PaymentSucceeded};
pub use state::{FailureKind, PaymentIntent, PaymentStatus};

use crate::aggregate::Aggregate;

impl Aggregate for PaymentIntent {
    const CATEGORY: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::Create(c) => {
                if self.id.is_some() {
                    return Err(PaymentError::AlreadyExists);
                }
                if !c.amount.is_positive() {
                    return Err(PaymentError::NonPositiveAmount);
                }
                Ok(vec![PaymentIntentCreated {
                    intent_id: c.intent_id,
                    account_id: c.account_id,
                    amount: c.amount.clone(),
                    payment_token: c.payment_token.clone(),
                    created_at: c.at,
                }
                .into()])
            }
            PaymentCommand::RecordSuccess(c) => {
                let (Some(id), Some(account_id), Some(amount), Some(status)) =
                    (self.id, self.account_id, self.amount.clone(), self.status)
                else {
                    return Err(PaymentError::NotFound);
                };
                match (status, self.failure.as_ref().map(|(kind, _)| *kind)) {
                    (PaymentStatus::Succeeded, _) => Ok(vec![]),
                    (PaymentStatus::Failed, Some(FailureKind::Declined)) => {
                        Err(PaymentError::AlreadyDeclined)
                    }
                    (PaymentStatus::Failed, Some(FailureKind::NotAttempted)) => {
                        Err(PaymentError::NeverCharged)
                    }
                    (PaymentStatus::Pending, _)
                    | (PaymentStatus::Failed, Some(FailureKind::Unconfirmed) | None) => {
                        Ok(vec![PaymentSucceeded {
                            intent_id: id,
                            account_id,
                            amount,
                            charge_ref: c.charge_ref.clone(),
                            last4: c.last4.clone(),
                            succeeded_at: c.at,
                        }
                        .into()])
                    }
                }
            }
            PaymentCommand::RecordFailure(c) => {
                let (Some(id), Some(status)) = (self.id, self.status) else {
                    return Err(PaymentError::NotFound);
                };
                match status {
                    PaymentStatus::Pending => Ok(vec![PaymentFailed {
                        intent_id: id,
                        kind: c.kind,
                        reason: c.reason.clone(),
                        failed_at: c.at,
                    }
                    .into()]),
                    // Settled already: a late or repeated failure changes nothing.
                    PaymentStatus::Succeeded | PaymentStatus::Failed => Ok(vec![]),
                }
            }
        }
    }

    fn evolve(mut self, event: &PaymentEvent) -> Self {
        match event {
            PaymentEvent::IntentCreated(e) => {
                self.id = Some(e.intent_id);
                self.account_id = Some(e.account_id);
                self.amount = Some(e.amount.clone());
                self.status = Some(PaymentStatus::Pending);
                self.created_at = Some(e.created_at);
                self.updated_at = Some(e.created_at);
            }
            PaymentEvent::Succeeded(e) => {
                self.status = Some(PaymentStatus::Succeeded);
                self.failure = None;
                self.charge_ref = Some(e.charge_ref.clone());
                self.last4 = e.last4.clone();
                self.updated_at = Some(e.succeeded_at);
            }
            PaymentEvent::Failed(e) => {
                self.status = Some(PaymentStatus::Failed);
                self.failure = Some((e.kind, e.reason.clone()));
                self.updated_at = Some(e.failed_at);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::given;
    use crate::values::{
        AccountId, CardLast4, Currency, Money, PaymentIntentId, ProviderRef, Reason,
    };

    fn at() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
            .single()
            .expect("date")
    }

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: Currency::parse("EUR").expect("valid"),
        }
    }

    fn created() -> PaymentIntentCreated {
        PaymentIntentCreated {
            intent_id: PaymentIntentId(Uuid::from_u128(7)),
            account_id: AccountId(Uuid::from_u128(1)),
            amount: eur(5_000),
            payment_token: Some(ProviderRef::parse("tok_visa").expect("valid")),
            created_at: at(),
        }
    }

    fn success() -> RecordSuccess {
        RecordSuccess {
            charge_ref: ProviderRef::parse("ch_1").expect("valid"),
            last4: Some(CardLast4::parse("4242").expect("valid")),
            at: at(),
        }
    }

    fn succeeded() -> PaymentSucceeded {
        PaymentSucceeded {
            intent_id: PaymentIntentId(Uuid::from_u128(7)),
            account_id: AccountId(Uuid::from_u128(1)),
            amount: eur(5_000),
            charge_ref: ProviderRef::parse("ch_1").expect("valid"),
            last4: Some(CardLast4::parse("4242").expect("valid")),
            succeeded_at: at(),
        }
    }

    fn failure(kind: FailureKind) -> RecordFailure {
        RecordFailure {
            kind,
            reason: Reason::parse("card declined").expect("valid"),
            at: at(),
        }
    }

    fn failed(kind: FailureKind) -> PaymentFailed {
        PaymentFailed {
            intent_id: PaymentIntentId(Uuid::from_u128(7)),
            kind,
            reason: Reason::parse("card declined").expect("valid"),
            failed_at: at(),
        }
    }

    #[test]
    fn creates_a_pending_intent() {
        let c = created();
        let state = given::<PaymentIntent>([])
            .when(PaymentCommand::Create(CreateIntent {
                intent_id: c.intent_id,
                account_id: c.account_id,
                amount: c.amount.clone(),
                payment_token: c.payment_token.clone(),
                at: c.created_at,
            }))
            .then_events([c.into()]);
        assert_eq!(state.status, Some(PaymentStatus::Pending));
    }

    #[test]
    fn refuses_a_second_intent_with_the_same_id() {
        let c = created();
        given::<PaymentIntent>([c.clone().into()])
            .when(PaymentCommand::Create(CreateIntent {
                intent_id: c.intent_id,
                account_id: c.account_id,
                amount: c.amount,
                payment_token: None,
                at: at(),
            }))
            .then_error(PaymentError::AlreadyExists);
    }

    #[test]
    fn refuses_a_non_positive_amount() {
        let c = created();
        given::<PaymentIntent>([])
            .when(PaymentCommand::Create(CreateIntent {
                intent_id: c.intent_id,
                account_id: c.account_id,
                amount: eur(0),
                payment_token: None,
                at: at(),
            }))
            .then_error(PaymentError::NonPositiveAmount);
    }

    #[test]
    fn records_a_success_with_the_amount_to_credit() {
        let state = given::<PaymentIntent>([created().into()])
            .when(PaymentCommand::RecordSuccess(success()))
            .then_events([succeeded().into()]);
        assert_eq!(state.status, Some(PaymentStatus::Succeeded));
        assert_eq!(state.last4.as_ref().map(|l| l.as_str()), Some("4242"));
    }

    #[test]
    fn a_second_success_decides_nothing_so_the_wallet_is_credited_once() {
        given::<PaymentIntent>([created().into(), succeeded().into()])
            .when(PaymentCommand::RecordSuccess(success()))
            .then_events([]);
    }

    #[test]
    fn a_late_success_after_an_unconfirmed_failure_still_counts() {
        let state =
            given::<PaymentIntent>([created().into(), failed(FailureKind::Unconfirmed).into()])
                .when(PaymentCommand::RecordSuccess(success()))
                .then_events([succeeded().into()]);
        assert_eq!(state.failure, None);
    }

    #[test]
    fn refuses_a_success_after_a_decline() {
        given::<PaymentIntent>([created().into(), failed(FailureKind::Declined).into()])
            .when(PaymentCommand::RecordSuccess(success()))
            .then_error(PaymentError::AlreadyDeclined);
    }

    #[test]
    fn refuses_a_success_for_an_intent_the_provider_never_saw() {
        given::<PaymentIntent>([created().into(), failed(FailureKind::NotAttempted).into()])
            .when(PaymentCommand::RecordSuccess(success()))
            .then_error(PaymentError::NeverCharged);
    }

    #[test]
    fn records_a_decline_while_pending() {
        let state = given::<PaymentIntent>([created().into()])
            .when(PaymentCommand::RecordFailure(failure(
                FailureKind::Declined,
            )))
            .then_events([failed(FailureKind::Declined).into()]);
        assert_eq!(state.status, Some(PaymentStatus::Failed));
    }

    #[test]
    fn a_failure_after_a_success_decides_nothing() {
        given::<PaymentIntent>([created().into(), succeeded().into()])
            .when(PaymentCommand::RecordFailure(failure(
                FailureKind::Unconfirmed,
            )))
            .then_events([]);
    }

    #[test]
    fn refuses_outcomes_for_an_unknown_intent() {
        given::<PaymentIntent>([])
            .when(PaymentCommand::RecordSuccess(success()))
            .then_error(PaymentError::NotFound);
    }

    #[test]
    fn pins_the_stored_event_names() {
        use crate::event::DomainEvent;
        assert_eq!(PaymentIntentCreated::NAME, "payment.intent_created");
        assert_eq!(PaymentSucceeded::NAME, "payment.succeeded");
        assert_eq!(PaymentFailed::NAME, "payment.failed");
    }
}
