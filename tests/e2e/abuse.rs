//! One client can never hurt another: hostile text, aliased logins and
//! mutations, WebSocket operations, nested page sizes, forged tokens, and
//! wallets in other currencies than EUR.

use std::net::IpAddr;

use futures::StreamExt;
use marketplace_api::auth::Tokens;
use marketplace_api::config::Secret;
use marketplace_api::ratelimit::{Limit, RateLimits};
use marketplace_domain::values::Role;
use marketplace_e2e::{spawn_app, spawn_app_with, Operation, Req, TestApp};
use serde_json::{json, Value};

use crate::commerce::{auth, DEPOSIT};

const REGISTER: &str =
    "mutation($input: RegisterInput!) { register(input: $input) { token account { id } } }";

fn registration(email: &str) -> Value {
    json!({ "input": { "email": email, "password": "correct horse battery", "displayName": "Someone", "roles": ["BUYER"] } })
}

fn first_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

fn message(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap_or_default()
}

/// POSTs from a chosen loopback address, so that one test can be several
/// anonymous clients.
async fn post_from(
    app: &TestApp,
    from: IpAddr,
    token: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .expect("client");
    let mut req = client.post(format!("{}/graphql", app.base)).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry, resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_good_requests_all_succeed_beside_bad_ones_which_are_bad_user_input() {
    let app = spawn_app().await;
    let (buyer, _, _) = app.register("payer@example.com", &["BUYER"]).await;
    let mut tasks = Vec::new();
    for i in 0..48 {
        let base = app.base.clone();
        let buyer = buyer.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            // Every fourth request is hostile, in turn a NUL in an email, a
            // NUL in an idempotency key, a bidi override in a display name.
            let (good, body, token) = match i % 8 {
                3 => (
                    false,
                    json!({ "query": REGISTER, "variables": registration(&format!("a\u{0}{i}@example.com")) }),
                    None,
                ),
                7 if i % 16 == 7 => (
                    false,
                    json!({ "query": DEPOSIT, "variables": { "amount": { "amount": "1.00", "currencyCode": "EUR" }, "key": format!("k\u{0}{i}") } }),
                    Some(buyer),
                ),
                7 => (
                    false,
                    json!({ "query": REGISTER, "variables": { "input": { "email": format!("bidi{i}@example.com"), "password": "correct horse battery", "displayName": "evil\u{202E}gnp.exe", "roles": ["BUYER"] } } }),
                    None,
                ),
                _ => (
                    true,
                    json!({ "query": REGISTER, "variables": registration(&format!("good{i}@example.com")) }),
                    None,
                ),
            };
            let mut req = client.post(format!("{base}/graphql")).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            (i, good, status, body)
        }));
    }
    let (mut good, mut bad) = (0, 0);
    for task in tasks {
        let (i, expected_good, status, body) = task.await.expect("task");
        if expected_good {
            assert_eq!(status, 200, "request {i}: {body}");
            assert!(body.get("errors").is_none(), "request {i}: {body}");
            good += 1;
        } else {
            assert_eq!(
                first_code(&body),
                Some("BAD_USER_INPUT"),
                "request {i}: {body}"
            );
            assert!(
                message(&body).contains("control characters"),
                "request {i}: {body}"
            );
            bad += 1;
        }
    }
    assert_eq!((good, bad), (36, 12));
    // What the good requests did is all there; nothing of the bad ones is.
    let pool = app.db.pool().await;
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'account.registered'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        registered,
        1 + 36,
        "the payer and the 36 good registrations"
    );
    let deposits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'account.funds_deposited'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(deposits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliased_mutations_take_a_token_each_and_are_capped_per_document() {
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            account: Limit {
                burst: 6,
                per_sec: 0.01,
            },
            ..RateLimits::DISABLED
        }
    })
    .await;
    let (buyer, _, _) = app.register("aliases@example.com", &["BUYER"]).await;
    let deposits = |n: usize| -> Value {
        let fields: String = (0..n)
            .map(|i| format!(" d{i}: depositFunds(amount: {{ amount: \"1.00\", currencyCode: \"EUR\" }}) {{ consistencyToken }}"))
            .collect();
        json!({ "query": format!("mutation {{{fields} }}") })
    };
    let local = IpAddr::from([127, 0, 0, 1]);
    // Eleven mutation fields: over the cap, refused whole, nothing written.
    let (status, _, body) = post_from(&app, local, Some(&buyer), &deposits(11)).await;
    assert_eq!(first_code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert!(
        message(&body).contains("at most 10 mutation fields"),
        "{body}"
    );
    assert_eq!(status, 200);
    // Four fields take four tokens (one of them the request's)…
    let (status, _, body) = post_from(&app, local, Some(&buyer), &deposits(4)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    // …and the refused document above took only its request's token, so
    // one is left of six: three more fields are too many.
    let (status, retry, body) = post_from(&app, local, Some(&buyer), &deposits(3)).await;
    assert_eq!(
        (status, first_code(&body)),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );
    let hint = body["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .expect("retryAfterSeconds");
    assert_eq!(retry, Some(hint.to_string()));
    assert!(body.get("data").is_none(), "{body}");
    let deposits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'account.funds_deposited'",
    )
    .fetch_one(&app.db.pool().await)
    .await
    .expect("count");
    assert_eq!(deposits, 4, "only the admitted document's deposits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_one_accounts_password_is_throttled_per_email_from_any_address_and_per_client() {
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            login_per_email: Limit {
                burst: 3,
                per_sec: 0.01,
            },
            login_per_client: Limit {
                burst: 5,
                per_sec: 0.01,
            },
            ..RateLimits::DISABLED
        }
    })
    .await;
    app.register("victim@example.com", &["BUYER"]).await;
    let guess = |email: &str, password: &str| json!({ "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }", "variables": { "e": email, "p": password } });
    // Three wrong guesses from three addresses…
    for i in 1..=3u8 {
        let (_, _, body) = post_from(
            &app,
            IpAddr::from([127, 0, 0, 10 + i]),
            None,
            &guess("victim@example.com", "wrong guess"),
        )
        .await;
        assert_eq!(first_code(&body), Some("UNAUTHENTICATED"), "{body}");
    }
    // …and a fourth address (even with the right password, and the email
    // spelt otherwise) is throttled.
    let (_, _, body) = post_from(
        &app,
        IpAddr::from([127, 0, 0, 20]),
        None,
        &guess(" Victim@Example.com", "correct horse battery"),
    )
    .await;
    assert_eq!(first_code(&body), Some("RATE_LIMITED"), "{body}");
    assert!(
        body["errors"][0]["extensions"]["retryAfterSeconds"].as_u64() >= Some(1),
        "{body}"
    );

    // 300 aliased logins in one document do not run 300 password checks:
    // the document is refused before any runs.
    let aliased: String = (0..300)
        .map(|i| {
            format!(" l{i}: login(email: \"victim{i}@example.com\", password: \"x\") {{ token }}")
        })
        .collect();
    let (_, _, body) = post_from(
        &app,
        IpAddr::from([127, 0, 0, 30]),
        None,
        &json!({ "query": format!("mutation {{{aliased} }}") }),
    )
    .await;
    assert_eq!(first_code(&body), Some("BAD_USER_INPUT"), "{body}");
    // Ten aliases (the most a document runs) from one client: the client's
    // five failures are all it gets, the rest are RATE_LIMITED.
    let aliased: String = (0..10)
        .map(|i| {
            format!(" l{i}: login(email: \"other{i}@example.com\", password: \"x\") {{ token }}")
        })
        .collect();
    let (_, _, body) = post_from(
        &app,
        IpAddr::from([127, 0, 0, 31]),
        None,
        &json!({ "query": format!("mutation {{{aliased} }}") }),
    )
    .await;
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["extensions"]["code"].as_str())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == "UNAUTHENTICATED").count(),
        5,
        "{body}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == "RATE_LIMITED").count(),
        5,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_the_websocket_draw_from_the_same_buckets_as_http() {
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            anonymous: Limit {
                burst: 8,
                per_sec: 0.01,
            },
            ..RateLimits::DISABLED
        }
    })
    .await;
    // The upgrade takes one token; seven operations are left.
    let client = app.ws(None).await.expect("connect");
    let mut codes = Vec::new();
    for _ in 0..12 {
        let mut stream = client
            .subscribe(Operation {
                query: "{ __typename }".into(),
                variables: json!({}),
            })
            .await
            .expect("subscribe");
        let answer = stream.next().await.expect("an answer").expect("json");
        codes.push(
            first_code(&answer)
                .map(str::to_owned)
                .unwrap_or_else(|| answer["data"]["__typename"].to_string()),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "\"Query\"").count(),
        7,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "RATE_LIMITED").count(),
        5,
        "{codes:?}"
    );
    // And the bucket is the one HTTP uses: the same address is refused there.
    let (status, _, body) = post_from(
        &app,
        IpAddr::from([127, 0, 0, 1]),
        None,
        &json!({ "query": "{ __typename }" }),
    )
    .await;
    assert_eq!((status, first_code(&body)), (429, Some("RATE_LIMITED")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_sizes_multiply_the_cost_of_what_is_selected_under_them() {
    let app = spawn_app().await;
    let (buyer, _, _) = app.register("pages@example.com", &["BUYER"]).await;
    let nested = |first: u32, aliases: usize| -> String {
        let field = format!(
            "myOrders(first: {first}) {{ edges {{ node {{ lines {{ listing {{ seller {{ displayName }} }} }} }} }} }}"
        );
        let fields: String = (0..aliases).map(|i| format!(" o{i}: {field}")).collect();
        format!("{{{fields} }}")
    };
    // 100 orders × up to 50 lines each, twice over: too much work.
    let r = app.gql(&nested(100, 2), json!({}), auth(&buyer)).await;
    assert_eq!(r.error_code(), "BAD_USER_INPUT", "{}", r.body);
    assert!(message(&r.body).contains("too complex"), "{}", r.body);
    // The same shape with small pages is fine.
    let r = app.gql(&nested(10, 2), json!({}), auth(&buyer)).await;
    assert!(r.body.get("errors").is_none(), "{}", r.body);
    // 200 aliases of a 100-row page are refused, whatever they select.
    let wide: String = (0..200)
        .map(|i| {
            format!(" l{i}: listings(first: 100) {{ edges {{ node {{ seller {{ id }} }} }} }}")
        })
        .collect();
    let r = app
        .gql(&format!("{{{wide} }}"), json!({}), Req::default())
        .await;
    assert_eq!(r.error_code(), "BAD_USER_INPUT", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_grants_only_the_roles_its_account_holds_now() {
    let secret = "a-test-key-3f9c1e7b2d6a48f0b5c9e1d7a3f6b2c8";
    let app = spawn_app_with(|s| s.jwt_secret = Secret::new(secret)).await;
    let signer = Tokens::new(&Secret::new(secret), std::time::Duration::from_secs(3600));
    // A well-signed ADMIN token for an account that does not exist.
    let ghost = signer
        .issue(uuid::Uuid::now_v7(), vec![Role::Admin])
        .expect("sign");
    let r = app
        .gql("{ projections { name } }", json!({}), auth(&ghost))
        .await;
    assert_eq!(r.error_code(), "FORBIDDEN", "{}", r.body);
    // A BUYER's own account, with ADMIN written into a token for it.
    let (_, buyer_id, _) = app.register("not-admin@example.com", &["BUYER"]).await;
    let promoted = signer
        .issue(
            uuid::Uuid::parse_str(&buyer_id).expect("uuid"),
            vec![Role::Buyer, Role::Admin],
        )
        .expect("sign");
    let r = app
        .gql("{ projections { name } }", json!({}), auth(&promoted))
        .await;
    assert_eq!(r.error_code(), "FORBIDDEN", "{}", r.body);
    // The roles the account does hold still work with that token.
    let r = app
        .gql(
            DEPOSIT,
            json!({ "amount": { "amount": "5.00", "currencyCode": "EUR" } }),
            auth(&promoted),
        )
        .await;
    assert!(r.body.get("errors").is_none(), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_is_in_the_wallets_own_currency_and_balances_keep_every_currency() {
    let app = spawn_app().await;
    let balances = "{ me { balance { amount currencyCode } balances { amount currencyCode } } }";
    let deposit = |token: String, amount: &'static str, currency: &'static str| {
        let app = &app;
        async move {
            app.gql(
                DEPOSIT,
                json!({ "amount": { "amount": amount, "currencyCode": currency } }),
                auth(&token),
            )
            .await
            .data("depositFunds.consistencyToken")
            .as_str()
            .expect("token")
            .to_owned()
        }
    };
    let (usd, _, _) = app.register("usd@example.com", &["BUYER"]).await;
    let at = deposit(usd.clone(), "100.00", "USD").await;
    let r = app
        .gql(
            balances,
            json!({}),
            Req {
                token: Some(&usd),
                consistency: Some(&at),
            },
        )
        .await;
    assert_eq!(
        r.data("me.balance"),
        &json!({ "amount": "100.00", "currencyCode": "USD" })
    );

    // First GBP, then more EUR than GBP: the balance stays in GBP.
    let (two, _, _) = app.register("two@example.com", &["BUYER"]).await;
    deposit(two.clone(), "20.00", "GBP").await;
    let at = deposit(two.clone(), "500.00", "EUR").await;
    let r = app
        .gql(
            balances,
            json!({}),
            Req {
                token: Some(&two),
                consistency: Some(&at),
            },
        )
        .await;
    assert_eq!(
        r.data("me.balance"),
        &json!({ "amount": "20.00", "currencyCode": "GBP" })
    );
    assert_eq!(
        r.data("me.balances"),
        &json!([
            { "amount": "500.00", "currencyCode": "EUR" },
            { "amount": "20.00", "currencyCode": "GBP" },
        ])
    );
}
