//! The deposit saga on a real Postgres event store: a deposit is credited
//! exactly once however many parties settle it at the same time — the saga
//! handling its trigger twice at once (a stale leader and its successor),
//! the provider's callbacks racing it, and the saga's own credit step
//! repeated.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use common::{eur, market};
use marketplace_commands::flows::deposit;
use marketplace_commands::payments::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};
use marketplace_commands::process::deposit::DepositSaga;
use marketplace_commands::process::ProcessManager;
use marketplace_commands::CommandContext;
use marketplace_consumers::Envelope;
use marketplace_domain::payment::{CreateIntent, PaymentCommand, PaymentIntent, PaymentStatus};
use marketplace_domain::values::{CardLast4, PaymentIntentId, ProviderRef, Role};
use marketplace_store::{Position, StreamId};
use uuid::Uuid;

/// Captures every charge, counting the calls.
#[derive(Default)]
struct Captures(AtomicUsize);

#[async_trait]
impl PaymentGateway for Captures {
    async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(ChargeOutcome::Captured {
            charge_ref: ProviderRef::parse("ch_test_1").expect("valid"),
            last4: Some(CardLast4::parse("4242").expect("valid")),
        })
    }
}

async fn envelopes_of(market: &common::Market, event_type: &str) -> Vec<Envelope> {
    market
        .store
        .read_all(Position::START, 10_000)
        .await
        .expect("log")
        .iter()
        .filter(|e| e.event_type == event_type)
        .map(|e| Envelope::decode(e).expect("decodes"))
        .collect()
}

async fn count(market: &common::Market, stream: &StreamId, event_type: &str) -> usize {
    market
        .store
        .read_stream(stream, 0)
        .await
        .expect("stream")
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_settled_by_racing_saga_runs_and_callbacks_is_credited_once() {
    let market = market().await;
    let buyer = market.account(vec![Role::Buyer], 0).await;
    let intent = PaymentIntentId(Uuid::now_v7());
    market
        .handler
        .execute::<PaymentIntent>(
            intent.0,
            &market.ctx(),
            &PaymentCommand::Create(CreateIntent {
                intent_id: intent,
                account_id: buyer.account_id,
                amount: eur(2_500),
                payment_token: None,
                at: Utc::now(),
            }),
        )
        .await
        .expect("intent");

    let gateway = Arc::new(Captures::default());
    let saga = Arc::new(DepositSaga::new(market.handler.clone(), gateway.clone()));
    let created = envelopes_of(&market, "payment.intent_created").await;
    assert_eq!(created.len(), 1);
    let trigger = created[0].clone();

    // Two saga runs of the same trigger and four callbacks, all at once.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (saga, trigger) = (saga.clone(), trigger.clone());
        tasks.push(tokio::spawn(async move {
            saga.handle(&trigger).await.map_err(|e| e.to_string())
        }));
    }
    for _ in 0..4 {
        let handler = market.handler.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = ChargeOutcome::Captured {
                charge_ref: ProviderRef::parse("ch_test_1").expect("valid"),
                last4: Some(CardLast4::parse("4242").expect("valid")),
            };
            deposit::settle(&handler, intent, &outcome, &CommandContext::new("provider"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("settled");
    }

    // The saga's credit step for the success, twice at once as well.
    let succeeded = envelopes_of(&market, "payment.succeeded").await;
    assert_eq!(succeeded.len(), 1, "the intent succeeded once");
    let (a, b) = tokio::join!(saga.handle(&succeeded[0]), saga.handle(&succeeded[0]));
    a.expect("credit");
    b.expect("credit");

    let account = StreamId::new("account", buyer.account_id.0).expect("stream");
    assert_eq!(count(&market, &account, "account.funds_deposited").await, 1);
    assert_eq!(
        market
            .wallet(buyer.account_id)
            .await
            .balance(&eur(0).currency),
        eur(2_500)
    );
    let state = market
        .handler
        .load::<PaymentIntent>(intent.0)
        .await
        .expect("intent")
        .state;
    assert_eq!(state.status, Some(PaymentStatus::Succeeded));
    assert!(
        gateway.0.load(Ordering::SeqCst) <= 2,
        "at most one charge per saga run"
    );
}

/// Always fails, like a provider in an outage.
struct Down;

#[async_trait]
impl PaymentGateway for Down {
    async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        Err(GatewayError::Unavailable("503".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_the_open_breaker_refused_fails_as_not_attempted_and_nothing_credits_it() {
    use marketplace_commands::payments::{BreakerConfig, ProtectedGateway, RetryPolicy};
    use marketplace_domain::payment::{FailureKind, PaymentError};

    let market = market().await;
    let buyer = market.account(vec![Role::Buyer], 0).await;
    let gateway = ProtectedGateway::new(
        Arc::new(Down),
        BreakerConfig {
            consecutive_failures: 1,
            cool_down: std::time::Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        RetryPolicy::default(),
    );
    // Trip the breaker with some other charge.
    let other = ChargeRequest {
        intent_id: PaymentIntentId(Uuid::now_v7()),
        account_id: buyer.account_id,
        amount: eur(1),
        payment_token: None,
    };
    assert_eq!(
        gateway.charge(&other).await,
        Err(GatewayError::Unavailable("503".into()))
    );
    assert!(gateway.refuses().is_some(), "open");

    let intent = PaymentIntentId(Uuid::now_v7());
    market
        .handler
        .execute::<PaymentIntent>(
            intent.0,
            &market.ctx(),
            &PaymentCommand::Create(CreateIntent {
                intent_id: intent,
                account_id: buyer.account_id,
                amount: eur(700),
                payment_token: None,
                at: Utc::now(),
            }),
        )
        .await
        .expect("intent");
    let saga = DepositSaga::new(market.handler.clone(), Arc::new(gateway));
    let created = envelopes_of(&market, "payment.intent_created").await;
    saga.handle(&created[0]).await.expect("handled");
    let state = market
        .handler
        .load::<PaymentIntent>(intent.0)
        .await
        .expect("intent")
        .state;
    assert_eq!(state.status, Some(PaymentStatus::Failed));
    assert_eq!(
        state.failure.map(|(kind, _)| kind),
        Some(FailureKind::NotAttempted)
    );

    // A "success" for it contradicts what happened: refused, nothing credited.
    let outcome = ChargeOutcome::Captured {
        charge_ref: ProviderRef::parse("ch_forged").expect("valid"),
        last4: None,
    };
    let refused = deposit::settle(
        &market.handler,
        intent,
        &outcome,
        &CommandContext::new("provider"),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(deposit::SettleError::Intent(
                marketplace_commands::CommandError::Rejected(PaymentError::NeverCharged)
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(
        market
            .wallet(buyer.account_id)
            .await
            .balance(&eur(0).currency),
        eur(0)
    );
}
