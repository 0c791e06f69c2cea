//! Audit queries (ADMIN only): a stream's history with state, and an order
//! as it stood at a moment.

use marketplace_e2e::{spawn_app_with, Req};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_an_order_pending_before_confirmation_and_confirmed_after() {
    // The saga decides a moment after the placement: a moment between the
    // two events to look at (checked out at placement, they are one append).
    let app = spawn_app_with(|s| s.checkout_in_saga = true).await;
    let (seller, _, _) = app.register("seller@example.com", &["SELLER"]).await;
    let listing = app
        .gql(
            "mutation($input: CreateListingInput!) { createListing(input: $input) { listing { id } } }",
            json!({ "input": {
                "kind": "PHYSICAL", "title": "Brass lamp", "description": "Warm light",
                "category": "home", "quantity": 3,
                "price": { "amount": "15.00", "currencyCode": "EUR" } } }),
            Req { token: Some(&seller), ..Req::default() },
        )
        .await
        .data("createListing.listing.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.gql(
        "mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }",
        json!({ "id": listing }),
        Req {
            token: Some(&seller),
            ..Req::default()
        },
    )
    .await
    .data("publishListing");
    let (buyer, buyer_id, _) = app.register("buyer@example.com", &["BUYER"]).await;
    app.gql(
        "mutation { depositFunds(amount: { amount: \"50.00\", currencyCode: \"EUR\" }) { consistencyToken } }",
        json!({}),
        Req { token: Some(&buyer), ..Req::default() },
    )
    .await
    .data("depositFunds");
    let order = app
        .gql(
            "mutation($id: ID!) { placeOrder(input: { lines: [{ listingId: $id, quantity: 1 }] }) { order { id } } }",
            json!({ "id": listing }),
            Req { token: Some(&buyer), ..Req::default() },
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_order(&buyer, &order, |s| s == "CONFIRMED").await;

    let history_q = "query($s: String!) { streamHistory(streamId: $s, withState: true) { revision eventType schemaVersion recordedAt data metadata stateAfter } }";
    let refused = app
        .gql(
            history_q,
            json!({ "s": format!("order-{order}") }),
            Req {
                token: Some(&buyer),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(refused.error_code(), "FORBIDDEN");

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
    let as_admin = || Req {
        token: Some(&admin),
        ..Req::default()
    };
    let history = app
        .gql(
            history_q,
            json!({ "s": format!("order-{order}") }),
            as_admin(),
        )
        .await;
    let events = history
        .data("streamHistory")
        .as_array()
        .expect("list")
        .clone();
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["eventType"].as_str())
        .collect();
    assert_eq!(types, ["order.placed", "order.confirmed"]);
    assert_eq!(events[0]["schemaVersion"], 2);
    let state: Value =
        serde_json::from_str(events[0]["stateAfter"].as_str().expect("state")).expect("json");
    assert_eq!(state["status"], "PENDING");
    let meta: Value =
        serde_json::from_str(events[1]["metadata"].as_str().expect("meta")).expect("json");
    assert_eq!(meta["actor"], "checkout", "the saga confirmed it");
    assert!(meta["hash"].is_string() && meta["prev_hash"].is_string());

    let placed_at = events[0]["recordedAt"].as_str().expect("time").to_owned();
    let confirmed_at = events[1]["recordedAt"].as_str().expect("time").to_owned();
    assert!(placed_at < confirmed_at);
    let as_of = "query($id: ID!, $at: DateTime!) { orderAsOf(id: $id, at: $at) { status total { amount } } }";
    let then = app
        .gql(as_of, json!({ "id": order, "at": placed_at }), as_admin())
        .await;
    assert_eq!(then.data("orderAsOf.status"), "PENDING");
    let later = app
        .gql(
            as_of,
            json!({ "id": order, "at": confirmed_at }),
            as_admin(),
        )
        .await;
    assert_eq!(later.data("orderAsOf.status"), "CONFIRMED");
    let before = app
        .gql(
            as_of,
            json!({ "id": order, "at": "2000-01-01T00:00:00Z" }),
            as_admin(),
        )
        .await;
    assert!(before.data("orderAsOf").is_null());

    // Secrets stay out of audit output.
    let account = app
        .gql(
            history_q,
            json!({ "s": format!("account-{buyer_id}") }),
            as_admin(),
        )
        .await;
    let first = &account.data("streamHistory")[0];
    assert!(first["data"]
        .as_str()
        .is_some_and(|d| d.contains("<redacted>") && !d.contains("argon2")));
    assert!(!first["stateAfter"]
        .as_str()
        .unwrap_or_default()
        .contains("argon2"));
    let bad = app
        .gql(history_q, json!({ "s": "nonsense" }), as_admin())
        .await;
    assert_eq!(bad.error_code(), "BAD_USER_INPUT");
}
