//! Subscriptions over a real WebSocket with a protocol-faithful
//! `graphql-transport-ws` client (`graphql-ws-client`): an order's status
//! changes and each party's notifications arrive in order, and only to whom
//! they belong.

use std::time::Duration;

use futures::StreamExt;
use marketplace_e2e::{spawn_app, Operation, TestApp};

use crate::commerce::{auth, buyer_with, lamp, seller_with_listing};
use serde_json::{json, Value};

const ORDER_UPDATED: &str =
    "subscription($id: ID!) { orderUpdated(id: $id) { id status trackingCode total { amount } } }";
const NOTIFICATION_ADDED: &str = "subscription { notificationAdded { id kind message } }";

fn op(query: &str, variables: Value) -> Operation {
    Operation {
        query: query.into(),
        variables,
    }
}

/// The next message of a subscription, with a deadline (the stream must not
/// go quiet); `None` once the server completed it.
async fn next<S>(stream: &mut S) -> Option<Value>
where
    S: futures::Stream<Item = Result<Value, graphql_ws_client::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a subscription message within the deadline")
        .map(|m| m.expect("a well-formed message"))
}

/// Waits until the server has started every subscription sent earlier on
/// `ws`. graphql-transport-ws does not acknowledge a subscription, but the
/// server reads one connection's messages in order and polls every
/// operation it has started until one answers; a query sent now (which
/// must wait for the database before it can answer) therefore answers only
/// after the earlier subscriptions have been set up.
async fn settled(ws: &graphql_ws_client::Client) {
    let mut probe = ws
        .subscribe(op("{ listings(first: 1) { totalCount } }", json!({})))
        .await
        .expect("probe");
    let answer = next(&mut probe).await.expect("the probe's answer");
    assert!(
        answer["data"]["listings"]["totalCount"].is_number(),
        "{answer}"
    );
}

/// A seller with one published lamp (stock 5, 40.00 EUR) and a buyer with
/// 100.00 EUR; returns (seller token, buyer token, listing id).
async fn seller_and_buyer(app: &TestApp) -> (String, String, String) {
    let (seller, listing) = seller_with_listing(app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(app, "buyer@example.com", "100.00").await;
    (seller, buyer, listing)
}

async fn place(app: &TestApp, buyer: &str, listing: &str) -> String {
    app.gql(
        "mutation($input: PlaceOrderInput!) { placeOrder(input: $input) { order { id } } }",
        json!({ "input": { "lines": [{ "listingId": listing, "quantity": 1 }] } }),
        auth(buyer),
    )
    .await
    .data("placeOrder.order.id")
    .as_str()
    .expect("order id")
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_updates_and_notifications_arrive_in_order_over_graphql_transport_ws() {
    let app = spawn_app().await;
    let (seller, buyer, listing) = seller_and_buyer(&app).await;

    // Both parties listen for notifications before anything happens.
    let buyer_ws = app.ws(Some(&buyer)).await.expect("buyer connects");
    let seller_ws = app.ws(Some(&seller)).await.expect("seller connects");
    let mut buyer_notes = buyer_ws
        .subscribe(op(NOTIFICATION_ADDED, json!({})))
        .await
        .expect("buyer subscribes");
    let mut seller_notes = seller_ws
        .subscribe(op(NOTIFICATION_ADDED, json!({})))
        .await
        .expect("seller subscribes");
    // The protocol has no acknowledgement of a subscription: wait until the
    // server has taken both in before anything happens.
    settled(&buyer_ws).await;
    settled(&seller_ws).await;

    let order = place(&app, &buyer, &listing).await;
    let mut updates = buyer_ws
        .subscribe(op(ORDER_UPDATED, json!({ "id": order })))
        .await
        .expect("buyer subscribes to the order");

    // First the order as it stands (PENDING while checkout runs, or already
    // CONFIRMED), then each change, in order.
    let mut seen = Vec::new();
    let first = next(&mut updates).await.expect("the current order");
    assert_eq!(
        first["data"]["orderUpdated"]["id"],
        order.as_str(),
        "{first}"
    );
    assert_eq!(first["data"]["orderUpdated"]["total"]["amount"], "40.00");
    seen.push(first["data"]["orderUpdated"]["status"].clone());
    while seen.last() == Some(&json!("PENDING")) {
        let m = next(&mut updates).await.expect("checkout completes");
        seen.push(m["data"]["orderUpdated"]["status"].clone());
    }
    assert_eq!(seen.last(), Some(&json!("CONFIRMED")), "seen {seen:?}");

    app.gql(
        "mutation($id: ID!) { shipOrder(id: $id, trackingCode: \"TRACK-42\") { order { status } } }",
        json!({ "id": order }),
        auth(&seller),
    )
    .await
    .data("shipOrder");
    let shipped = next(&mut updates).await.expect("the shipment");
    assert_eq!(
        shipped["data"]["orderUpdated"]["status"], "SHIPPED",
        "{shipped}"
    );
    assert_eq!(shipped["data"]["orderUpdated"]["trackingCode"], "TRACK-42");

    app.gql(
        "mutation($id: ID!) { confirmDelivery(id: $id) { order { status } } }",
        json!({ "id": order }),
        auth(&buyer),
    )
    .await
    .data("confirmDelivery");
    let delivered = next(&mut updates).await.expect("the delivery");
    assert_eq!(delivered["data"]["orderUpdated"]["status"], "DELIVERED");
    // DELIVERED is final: the server completes the subscription.
    assert_eq!(
        next(&mut updates).await,
        None,
        "completed after a final status"
    );

    // Notifications, each party its own, in the order they happened.
    let mut buyer_kinds = Vec::new();
    for _ in 0..3 {
        let m = next(&mut buyer_notes).await.expect("a buyer notification");
        buyer_kinds.push(m["data"]["notificationAdded"]["kind"].clone());
    }
    assert_eq!(
        buyer_kinds,
        [
            json!("ORDER_CONFIRMED"),
            json!("ORDER_SHIPPED"),
            json!("ORDER_DELIVERED")
        ]
    );
    let mut seller_kinds = Vec::new();
    for _ in 0..2 {
        let m = next(&mut seller_notes)
            .await
            .expect("a seller notification");
        seller_kinds.push(m["data"]["notificationAdded"]["kind"].clone());
    }
    assert_eq!(seller_kinds, [json!("ITEM_SOLD"), json!("PAYOUT_RECEIVED")]);

    // What the subscription sent is what the read model holds.
    let listed = app
        .gql(
            "{ notifications(first: 10) { edges { node { id kind } } } }",
            json!({}),
            auth(&buyer),
        )
        .await;
    let stored: Vec<Value> = listed
        .data("notifications.edges")
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["kind"].clone())
        .rev()
        .collect();
    assert_eq!(stored, buyer_kinds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_check_the_token_and_ownership() {
    let app = spawn_app().await;
    let (_seller, buyer, listing) = seller_and_buyer(&app).await;
    let order = place(&app, &buyer, &listing).await;
    let (stranger, _, _) = app.register("stranger@example.com", &["BUYER"]).await;

    // Another buyer's order is not found for them.
    let ws = app.ws(Some(&stranger)).await.expect("stranger connects");
    let mut foreign = ws
        .subscribe(op(ORDER_UPDATED, json!({ "id": order })))
        .await
        .expect("subscribe");
    let refused = next(&mut foreign).await.expect("an error message");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );

    // A stranger listening for notifications gets only their own: the first
    // they receive is about their own order, placed after the buyer's.
    let mut stranger_notes = ws
        .subscribe(op(NOTIFICATION_ADDED, json!({})))
        .await
        .expect("subscribe");
    settled(&ws).await;
    app.gql(
        "mutation { depositFunds(amount: { amount: \"50.00\", currencyCode: \"EUR\" }) { consistencyToken } }",
        json!({}),
        auth(&stranger),
    )
    .await
    .data("depositFunds");
    let own = place(&app, &stranger, &listing).await;
    let note = next(&mut stranger_notes).await.expect("a notification");
    assert_eq!(note["data"]["notificationAdded"]["kind"], "ORDER_CONFIRMED");
    let message = note["data"]["notificationAdded"]["message"]
        .as_str()
        .expect("message");
    assert!(
        message.contains(&own[..8]),
        "the stranger's own order ({own}), not the buyer's ({order}): {message}"
    );

    // Without a token: UNAUTHENTICATED.
    let anonymous = app.ws(None).await.expect("anonymous connects");
    let mut anon = anonymous
        .subscribe(op(NOTIFICATION_ADDED, json!({})))
        .await
        .expect("subscribe");
    let refused = next(&mut anon).await.expect("an error message");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{refused}"
    );

    // Only graphql-transport-ws is spoken: an upgrade offering no (or
    // another) subprotocol is refused before the handshake.
    let url = format!("{}/graphql", app.base.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected HTTP 400 without the subprotocol, got {other:?}"),
    }

    // A bad token in ConnectionInit: the server closes with 4403 Forbidden.
    match app.ws(Some("not-a-token")).await {
        Err(graphql_ws_client::Error::Close(code, _)) => assert_eq!(code, 4403),
        Err(other) => panic!("expected a 4403 close, got {other}"),
        Ok(_) => panic!("a bad token must not be acknowledged"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_a_bounded_number_of_subscriptions() {
    let app = spawn_app().await;
    let (_seller, buyer, listing) = seller_and_buyer(&app).await;
    let order = place(&app, &buyer, &listing).await;
    let ws = app.ws(Some(&buyer)).await.expect("connects");
    let limit = marketplace_api::graphql::MAX_SUBSCRIPTIONS_PER_CONNECTION;
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut updates = ws
            .subscribe(op(ORDER_UPDATED, json!({ "id": order })))
            .await
            .expect("subscribe");
        // The first message (the order as it stands) shows it is active.
        let first = next(&mut updates).await.expect("the order");
        assert_eq!(
            first["data"]["orderUpdated"]["id"],
            order.as_str(),
            "{first}"
        );
        held.push(updates);
    }
    // Over the limit: refused before anything else is looked at. (A free
    // slot would get NOT_FOUND for this unknown order instead.)
    let unknown = json!({ "id": uuid::Uuid::now_v7().to_string() });
    let mut over = ws
        .subscribe(op(ORDER_UPDATED, unknown.clone()))
        .await
        .expect("subscribe");
    let refused = next(&mut over).await.expect("an error message");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused}"
    );
    // Completing one frees its slot once the server has processed the
    // client's `complete` (poll with a deadline).
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut again = ws
            .subscribe(op(ORDER_UPDATED, unknown.clone()))
            .await
            .expect("subscribe");
        let m = next(&mut again).await.expect("an error message");
        match m["errors"][0]["extensions"]["code"].as_str() {
            Some("NOT_FOUND") => break,
            Some("BAD_USER_INPUT") => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
