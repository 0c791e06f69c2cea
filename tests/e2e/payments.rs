//! Deposits through a payment provider over real HTTP (the simulator), on a
//! real Postgres: exactly-once credits through timeouts, late successes and
//! duplicate callbacks; declines; the circuit breaker opening, fast-failing
//! with UNAVAILABLE and Retry-After, showing in /metrics and /readyz, then
//! half-opening and closing; and the books balancing across it all.

use std::time::{Duration, Instant};

use marketplace_api::config::{PaymentProvider, PaymentsSettings, Secret};
use marketplace_commands::payments::{BreakerConfig, RetryPolicy};
use marketplace_consumers::retry::Backoff;
use marketplace_e2e::{eventually, spawn_app_with, Req, TestApp};
use payments_simulator::Simulator;
use serde_json::{json, Value};

const SECRET: &str = "callback-secret-for-tests";

const DEPOSIT: &str = "mutation($amount: MoneyInput!, $token: String, $key: String) {
    depositFunds(amount: $amount, paymentToken: $token, idempotencyKey: $key) {
        consistencyToken
        paymentIntent { id status failureReason cardLast4 amount { amount currencyCode } }
    }
}";

/// The marketplace charging at `sim`, with `breaker` and `retry`.
async fn app_with_provider(
    sim: &Simulator,
    breaker: BreakerConfig,
    retry: RetryPolicy,
    settle_wait: Duration,
) -> TestApp {
    let url = sim.url();
    let app = spawn_app_with(|s| {
        s.payments = PaymentsSettings {
            provider: PaymentProvider::Http { url, api_key: None },
            callback_secret: Some(Secret::new(SECRET)),
            callback_url: None,
            breaker,
            retry,
            settle_wait,
        };
    })
    .await;
    sim.set_callback_target(&format!("{}/payments/callback", app.base));
    app
}

fn quick_retry(attempt_timeout_ms: u64, deadline_ms: u64) -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_millis(attempt_timeout_ms),
        backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
        deadline: Duration::from_millis(deadline_ms),
    }
}

async fn deposit(
    app: &TestApp,
    token: &str,
    amount: &str,
    card: Option<&str>,
) -> marketplace_e2e::Gql {
    app.gql(
        DEPOSIT,
        json!({ "amount": { "amount": amount, "currencyCode": "EUR" }, "token": card }),
        Req {
            token: Some(token),
            ..Req::default()
        },
    )
    .await
}

async fn balance(app: &TestApp, token: &str, consistency: Option<&str>) -> String {
    app.gql(
        "{ me { balance { amount currencyCode } } }",
        json!({}),
        Req {
            token: Some(token),
            consistency,
        },
    )
    .await
    .data("me.balance.amount")
    .as_str()
    .expect("amount")
    .to_owned()
}

/// `account.funds_deposited` events in `account`'s stream, read from the log.
async fn credits(app: &TestApp, account: &str) -> i64 {
    let pool = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'account.funds_deposited'",
    )
    .bind(format!("account-{account}"))
    .fetch_one(&pool)
    .await
    .expect("count");
    pool.close().await;
    n
}

async fn get_text(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn a_deposit_survives_a_timeout_a_late_success_and_duplicate_callbacks_and_credits_once() {
    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    // The first answer is held back past the client's timeout (the charge
    // is made at once); the provider's callback comes meanwhile, three
    // copies at once; the retry then races it and gets the same charge.
    sim.delay_next(1, Duration::from_millis(1_500));
    sim.set_callback_copies(3);
    sim.set_callback_delay(Duration::from_millis(200));
    let app = app_with_provider(
        &sim,
        BreakerConfig::default(),
        quick_retry(300, 10_000),
        Duration::from_secs(10),
    )
    .await;
    let (buyer, buyer_id, _) = app.register("late@example.com", &[]).await;

    let r = deposit(&app, &buyer, "25.00", Some("tok_visa_1881")).await;
    let intent = r.data("depositFunds.paymentIntent").clone();
    assert_eq!(intent["status"], "SUCCEEDED", "{intent}");
    assert_eq!(intent["cardLast4"], "1881");
    assert_eq!(intent["failureReason"], Value::Null);
    let ct = r
        .data("depositFunds.consistencyToken")
        .as_str()
        .expect("ct")
        .to_owned();

    // Every duplicate has arrived and the retry has been answered.
    eventually("three callbacks", || async { sim.callbacks_sent() == 3 }).await;
    eventually("a retried charge request", || async { sim.requests() >= 2 }).await;
    assert_eq!(sim.charges().len(), 1, "one charge at the provider");
    assert_eq!(balance(&app, &buyer, Some(&ct)).await, "25.00");
    assert_eq!(credits(&app, &buyer_id).await, 1, "credited exactly once");

    // The deposit saga has also handled the success (its credit is the
    // same event): wait until the process manager has passed the log's head.
    let head = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics");
    assert_eq!(head.status().as_u16(), 200);
    let intent_id = intent["id"].as_str().expect("id").to_owned();
    let followed = app
        .gql(
            "query($id: ID!) { paymentIntent(id: $id) { status cardLast4 } }",
            json!({ "id": intent_id }),
            Req {
                token: Some(&buyer),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(followed.data("paymentIntent.status"), "SUCCEEDED");
    assert_eq!(credits(&app, &buyer_id).await, 1);
    assert_eq!(balance(&app, &buyer, Some(&ct)).await, "25.00");

    // Another account cannot see the intent.
    let (stranger, _, _) = app.register("nosy@example.com", &[]).await;
    let hidden = app
        .gql(
            "query($id: ID!) { paymentIntent(id: $id) { status } }",
            json!({ "id": intent["id"] }),
            Req {
                token: Some(&stranger),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(hidden.data("paymentIntent"), &Value::Null);
}

#[tokio::test]
async fn concurrent_duplicate_callbacks_for_a_pending_charge_credit_once() {
    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    sim.set_pending(true);
    sim.set_callback_copies(0);
    let app = app_with_provider(
        &sim,
        BreakerConfig::default(),
        quick_retry(2_000, 10_000),
        Duration::from_millis(300),
    )
    .await;
    let (buyer, buyer_id, _) = app.register("pending@example.com", &[]).await;
    let r = deposit(&app, &buyer, "40.00", None).await;
    let intent = r.data("depositFunds.paymentIntent").clone();
    assert_eq!(intent["status"], "PENDING", "{intent}");
    let id = intent["id"].as_str().expect("id").to_owned();
    eventually("the charge", || async { sim.charges().len() == 1 }).await;
    assert_eq!(balance(&app, &buyer, None).await, "0.00");

    let client = reqwest::Client::new();
    let url = format!("{}/payments/callback", app.base);
    let body =
        json!({ "intentId": id, "status": "captured", "chargeId": "ch_sim_1", "last4": "4242" });
    // Without the secret: refused, nothing recorded.
    let refused = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .expect("callback");
    assert_eq!(refused.status().as_u16(), 401);

    let sends = (0..8).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(SECRET)
                .json(&body)
                .send()
                .await
                .expect("callback")
                .status()
                .as_u16()
        })
    });
    for send in futures::future::join_all(sends).await {
        assert_eq!(send.expect("task"), 204);
    }
    let settled = app
        .gql(
            "query($id: ID!) { paymentIntent(id: $id) { status cardLast4 } }",
            json!({ "id": id }),
            Req {
                token: Some(&buyer),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(settled.data("paymentIntent.status"), "SUCCEEDED");
    assert_eq!(settled.data("paymentIntent.cardLast4"), "4242");
    // The saga credits the same event on `payment.succeeded`; wait for the
    // wallet read model, then check the log holds one credit.
    eventually("the credit in the read model", || async {
        balance(&app, &buyer, None).await == "40.00"
    })
    .await;
    assert_eq!(credits(&app, &buyer_id).await, 1, "credited exactly once");

    // A callback for an unknown intent is a 404; a malformed one a 400.
    let unknown = client
        .post(&url)
        .bearer_auth(SECRET)
        .json(
            &json!({ "intentId": uuid::Uuid::now_v7(), "status": "captured", "chargeId": "ch_x" }),
        )
        .send()
        .await
        .expect("callback");
    assert_eq!(unknown.status().as_u16(), 404);
    let malformed = client
        .post(&url)
        .bearer_auth(SECRET)
        .json(&json!({ "intentId": id, "status": "captured", "chargeId": "ch_1", "last4": "4242424242424242" }))
        .send()
        .await
        .expect("callback");
    assert_eq!(malformed.status().as_u16(), 400);
}

#[tokio::test]
async fn a_declined_card_fails_the_intent_with_a_reason_and_credits_nothing() {
    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    sim.set_callback_copies(0);
    let app = app_with_provider(
        &sim,
        BreakerConfig::default(),
        quick_retry(2_000, 10_000),
        Duration::from_secs(10),
    )
    .await;
    let (buyer, buyer_id, _) = app.register("declined@example.com", &[]).await;
    let r = deposit(
        &app,
        &buyer,
        "10.00",
        Some(payments_simulator::DECLINED_TOKEN),
    )
    .await;
    let intent = r.data("depositFunds.paymentIntent").clone();
    assert_eq!(intent["status"], "FAILED", "{intent}");
    assert!(
        intent["failureReason"]
            .as_str()
            .is_some_and(|r| r.contains("declined")),
        "{intent}"
    );
    let ct = r
        .data("depositFunds.consistencyToken")
        .as_str()
        .expect("ct")
        .to_owned();
    assert_eq!(balance(&app, &buyer, Some(&ct)).await, "0.00");
    assert_eq!(credits(&app, &buyer_id).await, 0);

    // An amount the wallet could never take is refused before any charge.
    let requests = sim.requests();
    let r = deposit(&app, &buyer, "1.00", None).await;
    assert_eq!(r.data("depositFunds.paymentIntent.status"), "SUCCEEDED");
    let huge = deposit(&app, &buyer, "92233720368547758.07", None).await;
    assert_eq!(huge.error_code(), "BAD_USER_INPUT", "{}", huge.body);
    assert_eq!(sim.requests(), requests + 1, "only the 1.00 was charged");
}

#[tokio::test]
async fn under_an_error_burst_the_breaker_opens_fails_fast_with_unavailable_then_half_opens_and_closes(
) {
    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    sim.set_callback_copies(0);
    let breaker = BreakerConfig {
        consecutive_failures: 3,
        cool_down: Duration::from_secs(2),
        ..BreakerConfig::default()
    };
    let app = app_with_provider(
        &sim,
        breaker,
        quick_retry(500, 5_000),
        Duration::from_secs(10),
    )
    .await;
    let (buyer, buyer_id, _) = app.register("burst@example.com", &[]).await;

    // Closed to start with.
    let (_, page) = get_text(format!("{}/metrics", app.base)).await;
    assert!(
        page.contains("marketplace_payments_breaker_state{state=\"closed\"} 1"),
        "{page}"
    );

    // An outage: the saga's retries meet three failures, the breaker opens,
    // and the intent fails as unconfirmed.
    sim.set_failing(true);
    let r = deposit(&app, &buyer, "30.00", None).await;
    let intent = r.data("depositFunds.paymentIntent").clone();
    assert_eq!(intent["status"], "FAILED", "{intent}");
    assert!(
        intent["failureReason"]
            .as_str()
            .is_some_and(|r| r.contains("unavailable")),
        "{intent}"
    );
    assert_eq!(
        sim.requests(),
        3,
        "three attempts, then the breaker refused"
    );

    // Open: a deposit is refused at once, recording nothing.
    let started = Instant::now();
    let refused = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&buyer)
        .json(&json!({ "query": DEPOSIT, "variables": { "amount": { "amount": "5.00", "currencyCode": "EUR" } } }))
        .send()
        .await
        .expect("deposit");
    assert!(started.elapsed() < Duration::from_secs(1), "fast fail");
    assert_eq!(refused.status().as_u16(), 503);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{body}"
    );
    assert_eq!(sim.requests(), 3, "the provider was not called");

    // The breaker's state is in /metrics and /readyz (degraded, still ready:
    // reads keep working).
    let (_, page) = get_text(format!("{}/metrics", app.base)).await;
    assert!(
        page.contains("marketplace_payments_breaker_state{state=\"open\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("marketplace_payments_calls_total{outcome=\"failed\"} 3"),
        "{page}"
    );
    assert!(
        page.contains("marketplace_payments_breaker_opened_total 1"),
        "{page}"
    );
    let (status, ready) = get_text(format!("{}/readyz", app.base)).await;
    let ready: Value = serde_json::from_str(&ready).expect("json");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["payments"]["breaker"], "open", "{ready}");
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("payments"))),
        "{ready}"
    );
    assert_eq!(balance(&app, &buyer, None).await, "0.00");

    // The provider recovers; after the cool-down the breaker half-opens, the
    // next deposit probes it and closes it.
    sim.set_failing(false);
    eventually("the breaker half-open", || async {
        let (_, ready) = get_text(format!("{}/readyz", app.base)).await;
        ready.contains("\"half_open\"")
    })
    .await;
    let r = deposit(&app, &buyer, "12.50", None).await;
    assert_eq!(r.data("depositFunds.paymentIntent.status"), "SUCCEEDED");
    let ct = r
        .data("depositFunds.consistencyToken")
        .as_str()
        .expect("ct")
        .to_owned();
    let (_, page) = get_text(format!("{}/metrics", app.base)).await;
    assert!(
        page.contains("marketplace_payments_breaker_state{state=\"closed\"} 1"),
        "{page}"
    );
    let (_, ready) = get_text(format!("{}/readyz", app.base)).await;
    assert!(ready.contains("\"closed\""), "{ready}");

    // The books balance: the wallet holds what the provider captured.
    let captured: i64 = sim
        .charges()
        .values()
        .filter(|c| c.captured)
        .map(|c| c.minor)
        .sum();
    assert_eq!(captured, 1_250);
    assert_eq!(balance(&app, &buyer, Some(&ct)).await, "12.50");
    assert_eq!(credits(&app, &buyer_id).await, 1);
}

#[tokio::test]
async fn a_success_arriving_after_the_deadline_still_credits_once_and_subscribers_see_it() {
    use futures::StreamExt;
    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    // Every answer is late (past the attempt timeout), so the saga gives up
    // at its deadline; the provider had captured it all along, and its
    // callbacks (two at once) come after that.
    sim.delay_next(100, Duration::from_millis(1_000));
    sim.set_callback_copies(2);
    sim.set_callback_delay(Duration::from_millis(1_500));
    let app = app_with_provider(
        &sim,
        BreakerConfig::default(),
        quick_retry(100, 300),
        Duration::from_secs(10),
    )
    .await;
    let (buyer, buyer_id, _) = app.register("patient@example.com", &[]).await;
    let r = deposit(&app, &buyer, "15.00", None).await;
    let intent = r.data("depositFunds.paymentIntent").clone();
    assert_eq!(intent["status"], "FAILED", "{intent}");
    assert!(
        intent["failureReason"]
            .as_str()
            .is_some_and(|r| r.contains("in time")),
        "{intent}"
    );
    assert_eq!(balance(&app, &buyer, None).await, "0.00");

    // Follow it: the current state, then the late success.
    let ws = app.ws(Some(&buyer)).await.expect("ws");
    let mut updates = ws
        .subscribe(marketplace_e2e::Operation {
            query: "subscription($id: ID!) { paymentIntentUpdated(id: $id) { status cardLast4 } }"
                .into(),
            variables: json!({ "id": intent["id"] }),
        })
        .await
        .expect("subscribe");
    let next = |m: Option<Result<Value, graphql_ws_client::Error>>| {
        m.expect("a message").expect("well formed")
    };
    let mut last = next(
        tokio::time::timeout(Duration::from_secs(30), updates.next())
            .await
            .expect("first message"),
    );
    while last["data"]["paymentIntentUpdated"]["status"] != "SUCCEEDED" {
        assert_eq!(
            last["data"]["paymentIntentUpdated"]["status"], "FAILED",
            "{last}"
        );
        last = next(
            tokio::time::timeout(Duration::from_secs(30), updates.next())
                .await
                .expect("the late success"),
        );
    }
    assert_eq!(last["data"]["paymentIntentUpdated"]["cardLast4"], "4242");

    eventually("both callbacks", || async { sim.callbacks_sent() == 2 }).await;
    eventually("the credit in the read model", || async {
        balance(&app, &buyer, None).await == "15.00"
    })
    .await;
    assert_eq!(credits(&app, &buyer_id).await, 1, "credited exactly once");
    assert_eq!(sim.charges().len(), 1);
}

#[tokio::test]
async fn in_a_split_deployment_the_projectors_open_breaker_still_answers_unavailable() {
    use marketplace_api::config::ServeRole;
    use marketplace_api::{Application, Settings};

    let sim = payments_simulator::spawn(SECRET).await.expect("simulator");
    sim.set_callback_copies(0);
    let payments = |url: String| PaymentsSettings {
        provider: PaymentProvider::Http { url, api_key: None },
        callback_secret: Some(Secret::new(SECRET)),
        callback_url: None,
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(30),
            ..BreakerConfig::default()
        },
        retry: quick_retry(500, 5_000),
        settle_wait: Duration::from_secs(10),
    };
    // The API replica (its own, idle, breaker) and a projector process,
    // whose deposit saga charges.
    let url = sim.url();
    let app = spawn_app_with(|s| {
        s.role = ServeRole::Api;
        s.payments = payments(url);
    })
    .await;
    let projector = Application::build(Settings {
        role: ServeRole::Projector,
        payments: payments(sim.url()),
        master_key: app.master_key.clone(),
        ..Settings::for_database(app.db.url.clone())
    })
    .await
    .expect("build the projector");
    let projector_base = format!("http://{}", projector.local_addr().expect("listens"));
    tokio::spawn(projector.run_until_stopped(std::future::pending()));

    let (buyer, buyer_id, _) = app.register("split@example.com", &[]).await;
    sim.set_failing(true);
    let r = deposit(&app, &buyer, "30.00", None).await;
    assert_eq!(r.data("depositFunds.paymentIntent.status"), "FAILED");
    assert_eq!(sim.requests(), 3);
    let (_, page) = get_text(format!("{projector_base}/metrics")).await;
    assert!(
        page.contains("marketplace_payments_breaker_state{state=\"open\"} 1"),
        "{page}"
    );

    // The API's breaker never saw a failure, but the answer is the same.
    let refused = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&buyer)
        .json(&json!({ "query": DEPOSIT, "variables": { "amount": { "amount": "5.00", "currencyCode": "EUR" } } }))
        .send()
        .await
        .expect("deposit");
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{body}"
    );
    assert_eq!(sim.requests(), 3, "the provider was not called");
    assert_eq!(credits(&app, &buyer_id).await, 0);
}
