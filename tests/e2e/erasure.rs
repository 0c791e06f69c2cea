//! GDPR erasure end to end: a buyer who placed and reviewed an order is
//! erased; afterwards no byte of their email, display name, password
//! hash or review comment is readable anywhere in the database, every read shows them
//! erased, the hash chains still verify, a rebuild reproduces the live
//! read models, the money still adds up, and the email registers again.

use std::sync::Arc;
use std::time::Duration;

use marketplace_api::config::EventStoreChoice;
use marketplace_e2e::{eventually, spawn_app, Req, TestApp};
use marketplace_keys::SealingStore;
use marketplace_store::{EventStore, StreamId};
use serde_json::{json, Value};

use crate::commerce::{auth, lamp, place_input, seller_with_listing, DEPOSIT, PLACE};

const EMAIL: &str = "erin.erasable@example.org";
const NAME: &str = "Erin Qzxerasable";
const PASSWORD: &str = "correct horse battery";
/// Free text that identifies its author: personal too.
const COMMENT: &str = "Lovely lamp, from Erin at 12 Qzx Lane";

async fn sealing_store(app: &TestApp) -> SealingStore {
    let pool = app.db.pool().await;
    marketplace_api::database::open_event_store(&pool, &EventStoreChoice::Postgres, &app.master_key)
        .await
        .expect("store")
}

/// Every row of every table of the database, as text, that contains
/// `needle` (as `table: row`).
async fn rows_containing(pool: &sqlx::PgPool, needle: &str) -> Vec<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables.len() > 10, "the scan sees the tables: {tables:?}");
    let mut found = Vec::new();
    for (schema, table) in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM \"{schema}\".\"{table}\" AS t \
             WHERE strpos(lower(t::text), lower($1)) > 0"
        ))
        .bind(needle)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("scan {schema}.{table}: {e}"));
        found.extend(rows.into_iter().map(|r| format!("{schema}.{table}: {r}")));
    }
    found
}

async fn balance_of(pool: &sqlx::PgPool, account: uuid::Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(minor), 0)::bigint FROM rm_account_balances WHERE account_id = $1",
    )
    .bind(account)
    .fetch_one(pool)
    .await
    .expect("balance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_buyer_leaves_no_personal_data_and_everything_still_adds_up() {
    let app = spawn_app().await;
    let pool = app.db.pool().await;
    let (seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;

    // The buyer registers, pays, orders, receives and reviews.
    let registered = app
        .gql(
            "mutation($input: RegisterInput!) { register(input: $input) { token account { id displayName } } }",
            json!({ "input": { "email": EMAIL, "password": PASSWORD, "displayName": NAME } }),
            Req::default(),
        )
        .await;
    let buyer = registered
        .data("register.token")
        .as_str()
        .expect("token")
        .to_owned();
    let buyer_id = registered
        .data("register.account.id")
        .as_str()
        .expect("id")
        .to_owned();
    let buyer_uuid: uuid::Uuid = buyer_id.parse().expect("uuid");
    app.gql(
        DEPOSIT,
        json!({ "amount": { "amount": "100.00", "currencyCode": "EUR" }, "key": "dep-1" }),
        auth(&buyer),
    )
    .await
    .data("depositFunds.consistencyToken");
    let order_id = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 2), "key": "order-1" }),
            auth(&buyer),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_order(&buyer, &order_id, |s| s == "CONFIRMED")
        .await;
    app.gql(
        "mutation($id: ID!) { shipOrder(id: $id) { consistencyToken } }",
        json!({ "id": order_id }),
        auth(&seller),
    )
    .await
    .data("shipOrder.consistencyToken");
    app.gql(
        "mutation($id: ID!) { confirmDelivery(id: $id) { consistencyToken } }",
        json!({ "id": order_id }),
        auth(&buyer),
    )
    .await
    .data("confirmDelivery.consistencyToken");
    let review_id = app
        .gql(
            "mutation($input: SubmitReviewInput!) { submitReview(input: $input) { review { id } } }",
            json!({ "input": { "listingId": listing, "orderId": order_id, "rating": 5, "comment": COMMENT } }),
            auth(&buyer),
        )
        .await
        .data("submitReview.review.id")
        .as_str()
        .expect("id")
        .to_owned();
    let fee = marketplace_domain::values::FEE_ACCOUNT_ID.0;
    let seller_id: uuid::Uuid = app
        .gql("{ me { id } }", json!({}), auth(&seller))
        .await
        .data("me.id")
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    eventually("the payout", async || {
        balance_of(&pool, seller_id).await == 7_600
    })
    .await;
    marketplace_api::admin::create_admin(
        &app.db.url,
        &app.master_key,
        "admin@example.com",
        "admin password 1",
        "Admin",
    )
    .await
    .expect("admin");
    let admin = app.login("admin@example.com", "admin password 1").await;
    app.gql(
        "mutation($id: ID!) { moderateReview(id: $id, decision: APPROVE) { review { status } } }",
        json!({ "id": review_id }),
        auth(&admin),
    )
    .await
    .data("moderateReview.review.status");

    // The password hash, as the write side knows it before the erasure.
    let store = sealing_store(&app).await;
    let account_stream = StreamId::new("account", buyer_uuid).expect("stream");
    let before = store.read_stream(&account_stream, 0).await.expect("read");
    let hash = before[0].data["password_hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    assert!(hash.starts_with("$argon2"), "{hash}");
    // Even before the erasure the log holds them sealed only.
    let raw = store
        .raw()
        .read_stream(&account_stream, 0)
        .await
        .expect("raw");
    assert!(!raw[0].data.to_string().contains(EMAIL), "{}", raw[0].data);
    // The review's comment too: sealed in the log, readable in the read
    // model (until the erasure).
    let review_stream = StreamId::new(
        "review",
        review_id.parse::<uuid::Uuid>().expect("review uuid"),
    )
    .expect("stream");
    let sealed_review = store
        .raw()
        .read_stream(&review_stream, 0)
        .await
        .expect("raw review");
    assert!(
        !sealed_review[0].data.to_string().contains("Qzx Lane"),
        "{}",
        sealed_review[0].data
    );
    let opened_review = store.read_stream(&review_stream, 0).await.expect("review");
    assert_eq!(opened_review[0].data["comment"], json!(COMMENT));
    eventually("the review's comment is shown", async || {
        !rows_containing(&pool, COMMENT).await.is_empty()
    })
    .await;
    let hash_tail = hash
        .rsplit('$')
        .next()
        .expect("the hash's last part")
        .to_owned();

    // Only the owner or an admin may erase.
    let refused = app
        .gql(
            "mutation($id: ID!) { eraseAccount(id: $id) { consistencyToken } }",
            json!({ "id": buyer_id }),
            auth(&seller),
        )
        .await;
    assert_eq!(refused.error_code(), "FORBIDDEN");
    let erased = app
        .gql(
            "mutation($id: ID!) { eraseAccount(id: $id) { consistencyToken } }",
            json!({ "id": buyer_id }),
            auth(&buyer),
        )
        .await;
    let token = erased
        .data("eraseAccount.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned();

    // The review stays, by an erased account.
    let reviews = app
        .gql(
            "query($id: ID!) { reviews(listingId: $id) { totalCount edges { node { id rating comment author { id displayName erased email } } } } }",
            json!({ "id": listing }),
            Req { consistency: Some(&token), ..Req::default() },
        )
        .await;
    let node = &reviews.data("reviews.edges")[0]["node"];
    assert_eq!(node["id"], json!(review_id));
    assert_eq!(node["rating"], json!(5));
    assert_eq!(
        node["comment"],
        json!(""),
        "its comment was erased with its author"
    );
    assert_eq!(
        node["author"],
        json!({ "id": buyer_id, "displayName": "Erased account", "erased": true, "email": "" })
    );
    // The buyer can no longer sign in.
    let login = app
        .gql(
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({ "e": EMAIL, "p": PASSWORD }),
            Req::default(),
        )
        .await;
    assert_eq!(login.error_code(), "UNAUTHENTICATED");

    // Every read of the log shows the personal fields erased.
    let after = store.read_stream(&account_stream, 0).await.expect("read");
    assert_eq!(after[0].data["email"], Value::Null);
    assert_eq!(after[0].data["display_name"], Value::Null);
    assert_eq!(after[0].data["password_hash"], Value::Null);
    assert_eq!(
        after.last().map(|e| e.event_type.as_str()),
        Some("account.erased")
    );
    let history = marketplace_commands::audit::history(&store, &account_stream, true)
        .await
        .expect("audit history");
    assert_eq!(history[0].event.data["email"], Value::Null);
    let state = history
        .last()
        .and_then(|h| h.state_after.clone())
        .expect("state");
    assert_eq!(state["erased"], json!(true));
    assert_eq!(state["email"], Value::Null);
    let streamed = app
        .gql(
            "query($s: String!) { streamHistory(streamId: $s, withState: true) { eventType data stateAfter } }",
            json!({ "s": account_stream.as_str() }),
            auth(&admin),
        )
        .await;
    let shown = streamed.data("streamHistory").to_string();
    assert!(shown.contains("account.erased"), "{shown}");
    assert!(
        !shown.contains("erasable") && !shown.contains("Qzxerasable"),
        "{shown}"
    );

    // No byte of them is left readable anywhere in the database.
    for needle in [EMAIL, NAME, COMMENT, &hash, &hash_tail] {
        let left = rows_containing(&pool, needle).await;
        assert!(left.is_empty(), "{needle:?} is still readable: {left:#?}");
    }
    // Nor in the server's logs (DEBUG for the marketplace's crates), which
    // did record this test's requests: the erasure logs the account's id.
    let logs = marketplace_api::telemetry::captured_logs().expect("the test log sink");
    assert_eq!(logs.dropped(), 0, "the sink kept every line");
    let text = logs.text();
    eprintln!("the test log sink holds {} bytes", text.len());
    assert!(
        text.lines()
            .any(|l| l.contains("account erased") && l.contains(&buyer_id)),
        "the server's logs of this test were captured"
    );
    for needle in [EMAIL, NAME, COMMENT, PASSWORD, &hash, &hash_tail] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        assert!(lines.is_empty(), "{needle:?} is in the logs: {lines:#?}");
    }

    // The chains hold over the stored ciphertext.
    let breaks = marketplace_commands::audit::verify_chains(&*store.raw(), None, &|_, _| {})
        .await
        .expect("verify");
    assert!(breaks.is_empty(), "{breaks:?}");

    // A rebuild from the log reproduces the live read models exactly.
    let projections = marketplace_projections::all();
    let checks =
        marketplace_projections::verify::verify(&pool, &store, &projections, 1_000, &|_, _, _| {})
            .await
            .expect("projections verify");
    assert_eq!(checks.len(), projections.len());
    for check in &checks {
        assert!(check.skipped.is_none(), "{check:?}");
        assert!(
            check.tables.iter().all(|t| t.matches()),
            "no parity: {check:?}"
        );
    }

    // A real rebuild of the accounts read model, switched in, shows the
    // same rows as the live build did.
    let rows = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT t::text FROM rm_accounts AS t ORDER BY account_id")
            .fetch_all(&pool)
            .await
            .expect("rows")
    };
    let live_rows = rows(pool.clone()).await;
    let runtime = marketplace_projections::ProjectorRuntime::new(
        pool.clone(),
        Arc::new(store.clone()),
        marketplace_projections::Progress::default(),
    );
    let (_keep, stop) = tokio::sync::watch::channel(false);
    let rebuilt = runtime
        .rebuild(
            Arc::new(marketplace_projections::read_models::accounts::AccountsProjection),
            stop,
        )
        .await
        .expect("rebuild");
    assert!(rebuilt.switched, "{rebuilt:?}");
    assert_eq!(rows(pool.clone()).await, live_rows);
    assert!(
        live_rows
            .iter()
            .any(|r| r.contains(&buyer_id) && r.contains(",t)")),
        "{live_rows:?}"
    );

    // The money adds up: 80.00 paid, 76.00 to the seller, 4.00 fee.
    assert_eq!(balance_of(&pool, buyer_uuid).await, 2_000);
    assert_eq!(balance_of(&pool, seller_id).await, 7_600);
    assert_eq!(balance_of(&pool, fee).await, 400);
    let order = app
        .gql(
            "query($id: ID!) { order(id: $id) { status total { amount } } }",
            json!({ "id": order_id }),
            auth(&admin),
        )
        .await;
    assert_eq!(
        order.data("order"),
        &json!({ "status": "DELIVERED", "total": { "amount": "80.00" } })
    );

    // The email is free again.
    let again = app
        .gql(
            "mutation($input: RegisterInput!) { register(input: $input) { account { id } } }",
            json!({ "input": { "email": EMAIL, "password": PASSWORD, "displayName": "Erin Again" } }),
            Req::default(),
        )
        .await;
    let new_id = again
        .data("register.account.id")
        .as_str()
        .expect("id")
        .to_owned();
    assert_ne!(new_id, buyer_id);
    app.login(EMAIL, PASSWORD).await;

    // An admin may erase any account; an unknown one is not found.
    let by_admin = app
        .gql(
            "mutation($id: ID!) { eraseAccount(id: $id) { consistencyToken } }",
            json!({ "id": new_id }),
            auth(&admin),
        )
        .await;
    by_admin.data("eraseAccount.consistencyToken");
    let unknown = app
        .gql(
            "mutation($id: ID!) { eraseAccount(id: $id) { consistencyToken } }",
            json!({ "id": uuid::Uuid::now_v7().to_string() }),
            auth(&admin),
        )
        .await;
    assert_eq!(unknown.error_code(), "NOT_FOUND");
    // Erasing again is harmless.
    let again = app
        .gql(
            "mutation($id: ID!) { eraseAccount(id: $id) { consistencyToken } }",
            json!({ "id": new_id }),
            auth(&admin),
        )
        .await;
    again.data("eraseAccount.consistencyToken");
    let login = app
        .gql(
            "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            json!({ "e": EMAIL, "p": PASSWORD }),
            Req::default(),
        )
        .await;
    assert_eq!(login.error_code(), "UNAUTHENTICATED");
}

/// `serve --anchor-every`: the server signs the head periodically into the
/// anchor file, and the anchors it wrote hold against the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_writes_signed_anchors_of_the_head_periodically() {
    let dir = std::env::temp_dir().join(format!("anchors-e2e-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("anchors.jsonl");
    let key = marketplace_keys::AnchorKey::from_hex(&"3c".repeat(32)).expect("key");
    let app = {
        let (key, file) = (key.clone(), file.clone());
        marketplace_e2e::spawn_app_with(move |s| {
            s.anchors = Some(marketplace_api::config::AnchorSchedule {
                key,
                every: Duration::from_millis(100),
                file,
            });
        })
        .await
    };
    app.register("anchored@example.com", &["BUYER"]).await;
    let head = u64::try_from(app.head().await).expect("head");
    let mut anchors = Vec::new();
    eventually("an anchor of the head", async || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        anchors = marketplace_keys::anchor::parse_file(&text).expect("anchor lines");
        anchors.last().is_some_and(|a| a.position == head)
    })
    .await;
    let store = sealing_store(&app).await;
    let report = marketplace_keys::anchor::check(&*store.raw(), &anchors, &key.verifying_key())
        .await
        .expect("check");
    assert!(report.breaks.is_empty(), "{report:?}");
    assert_eq!(report.anchored_up_to, head);
    assert_eq!(report.held, anchors.len());
    std::fs::remove_dir_all(&dir).ok();
}
