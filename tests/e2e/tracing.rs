//! OpenTelemetry traces, received by the tests' in-process OTLP collector:
//! an order placed with a `traceparent` header is one trace from the HTTP
//! request through its command and append, the projections, the checkout
//! saga's step and commands, to the `orderUpdated` push of its
//! confirmation; a WebSocket connection's `traceparent` (upgrade header,
//! `ConnectionInit` payload) carries its own spans; and `audit trace` names
//! the trace id of each event.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::StreamExt;
use marketplace_api::config::EventStoreChoice;
use marketplace_commands::process::checkout;
use marketplace_consumers::leader::{lock_key, CONSUMER_LOCKS};
use marketplace_e2e::otlp::{collector, ReceivedSpan};
use marketplace_e2e::{flush_traces, spawn_app_on, Operation, TestApp};
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::{EventStore, StreamId};
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

use crate::commerce::{buyer_with, lamp, place_input, seller_with_listing};

const PLACE: &str = "mutation PlaceTraced($input: PlaceOrderInput!) {
    placeOrder(input: $input) { order { id status } }
}";
const ORDER_UPDATED: &str = "subscription($id: ID!) { orderUpdated(id: $id) { id status } }";

/// A fresh trace id (32 hex digits) and a caller's span id (16).
fn ids() -> (String, String) {
    let trace = Uuid::new_v4().simple().to_string();
    let span = Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// A `graphql-transport-ws` connection whose upgrade request carries
/// `upgrade_traceparent` and whose `ConnectionInit` payload carries
/// `init_traceparent` beside the token.
async fn traced_ws(
    app: &TestApp,
    token: &str,
    upgrade_traceparent: &str,
    init_traceparent: &str,
) -> graphql_ws_client::Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/graphql", app.base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("a WebSocket request");
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    headers.insert("traceparent", upgrade_traceparent.parse().expect("header"));
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let (client, actor) = graphql_ws_client::Client::build(socket)
        .payload(json!({
            "Authorization": format!("Bearer {token}"),
            "traceparent": init_traceparent,
        }))
        .expect("payload")
        .build()
        .await
        .expect("connection acknowledged");
    tokio::spawn(actor.into_future());
    client
}

async fn next<S>(stream: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Value, graphql_ws_client::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("a subscription message within the deadline")
        .expect("the subscription goes on")
        .expect("a well-formed message")
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what} span, got {found:#?}\nin {spans:#?}"
    );
    found[0]
}

/// The ancestors of `span` within `spans`, nearest first, up to the one
/// whose parent is not in the trace.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut at = span;
    while let Some(parent) = by_id.get(at.parent_span_id.as_str()) {
        assert!(
            chain.len() < spans.len(),
            "a cycle of parents in {spans:#?}"
        );
        chain.push(*parent);
        at = parent;
    }
    chain
}

/// Whether everything the test looks at has arrived.
fn complete(order: &[ReceivedSpan], ws: &[ReceivedSpan], upgrade: &[ReceivedSpan]) -> bool {
    let has = |spans: &[ReceivedSpan], name: &str, key: &str, value: &str| {
        spans
            .iter()
            .any(|s| s.name == name && s.attribute(key) == Some(value))
    };
    !named(order, "POST /graphql").is_empty()
        && !named(order, "graphql PlaceTraced").is_empty()
        && !named(order, "append").is_empty()
        && has(order, "projection.apply", "event_type", "order.placed")
        && has(order, "projection.apply", "event_type", "order.confirmed")
        && has(order, "saga.step", "saga", "checkout")
        && has(order, "command", "aggregate", "listing")
        && has(order, "command", "aggregate", "account")
        && order
            .iter()
            .filter(|s| s.name == "command" && s.attribute("aggregate") == Some("order"))
            .count()
            >= 2
        && has(order, "push orderUpdated", "sent", "true")
        && !named(ws, "subscription orderUpdated").is_empty()
        && !named(upgrade, "graphql websocket").is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_order_from_its_request_through_the_saga_to_the_subscription_push() {
    let collector = collector();
    let db = TestDatabase::create().await;
    // The checkout saga stands by until the test lets it lead: the order
    // stays PENDING until its subscription is open, so its confirmation
    // is pushed (not read as the order's first state).
    let mut saga_lock = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(CONSUMER_LOCKS)
        .bind(lock_key(checkout::NAME))
        .fetch_one(&mut saga_lock)
        .await
        .expect("take the checkout saga's lock");
    assert!(
        taken,
        "the checkout saga's lock is free before the app starts"
    );
    // The saga's path (KurrentDB's, or `--checkout-in-saga`): its steps
    // are async hops the trace must follow.
    let app = spawn_app_on(db, |s| s.checkout_in_saga = true).await;
    let (_seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;

    // The order, placed by a caller whose span is `caller`.
    let (trace, caller) = ids();
    collector.watch(&trace);
    let placed: Value = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&buyer)
        .header("traceparent", traceparent(&trace, &caller))
        .header("tracestate", "shop=e2e")
        .json(&json!({ "query": PLACE, "variables": { "input": place_input(&listing, 1) } }))
        .send()
        .await
        .expect("place the order")
        .json()
        .await
        .expect("a JSON answer");
    let order = placed["data"]["placeOrder"]["order"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an order id in {placed}"))
        .to_owned();

    // Its subscription, on a connection with traces of its own.
    let (ws_trace, ws_caller) = ids();
    let (upgrade_trace, upgrade_caller) = ids();
    collector.watch(&ws_trace);
    collector.watch(&upgrade_trace);
    let ws = traced_ws(
        &app,
        &buyer,
        &traceparent(&upgrade_trace, &upgrade_caller),
        &traceparent(&ws_trace, &ws_caller),
    )
    .await;
    let mut updates = ws
        .subscribe(Operation {
            query: ORDER_UPDATED.into(),
            variables: json!({ "id": order }),
        })
        .await
        .expect("subscribe");
    let first = next(&mut updates).await;
    assert_eq!(
        first["data"]["orderUpdated"]["status"], "PENDING",
        "the saga waits for the test: {first}"
    );

    // Now the saga leads, checks the order out, and its verdict is pushed.
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(CONSUMER_LOCKS)
        .bind(lock_key(checkout::NAME))
        .execute(&mut saga_lock)
        .await
        .expect("let the checkout saga lead");
    saga_lock.close().await.expect("close");
    let pushed = next(&mut updates).await;
    assert_eq!(
        pushed["data"]["orderUpdated"]["status"], "CONFIRMED",
        "{pushed}"
    );
    // Closing the connection ends the subscription (and its span).
    drop(updates);
    drop(ws);

    let deadline = Instant::now() + Duration::from_secs(120);
    let (spans, ws_spans, upgrade_spans) = loop {
        flush_traces().await;
        let spans = collector.spans(&trace);
        let ws_spans = collector.spans(&ws_trace);
        let upgrade_spans = collector.spans(&upgrade_trace);
        if complete(&spans, &ws_spans, &upgrade_spans) {
            break (spans, ws_spans, upgrade_spans);
        }
        assert!(
            Instant::now() < deadline,
            "the spans did not all arrive ({} export requests): order {spans:#?}\nws {ws_spans:#?}\nupgrade {upgrade_spans:#?}",
            collector.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    assert!(
        spans.iter().all(|s| s.service_name == "marketplace"),
        "{spans:#?}"
    );
    // The request continues the caller's trace; the operation, the command
    // and its append are under it.
    let http = one(&spans, "HTTP", |s| s.name == "POST /graphql");
    assert_eq!(
        http.parent_span_id, caller,
        "the caller's span is the request's parent"
    );
    assert_eq!(
        http.trace_state, "shop=e2e",
        "the caller's tracestate goes on"
    );
    let graphql = one(&spans, "GraphQL", |s| s.name == "graphql PlaceTraced");
    assert_eq!(graphql.parent_span_id, http.span_id);
    let place = one(&spans, "placing command", |s| {
        s.name == "command"
            && s.attribute("aggregate") == Some("order")
            && s.attribute("actor") != Some(checkout::NAME)
    });
    assert_eq!(place.parent_span_id, graphql.span_id);
    assert!(
        named(&spans, "append")
            .iter()
            .any(|a| a.parent_span_id == place.span_id),
        "the order's append is under its command: {spans:#?}"
    );

    // Across the log: the projections fold `order.placed` under the span
    // that wrote it, and so does the saga's step.
    let folded: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == "projection.apply" && s.attribute("event_type") == Some("order.placed")
        })
        .collect();
    assert!(
        folded
            .iter()
            .any(|s| s.attribute("projection") == Some("orders")),
        "the orders projection folds order.placed in the trace: {folded:#?}"
    );
    assert!(
        folded.iter().all(|s| s.parent_span_id == place.span_id),
        "{folded:#?}"
    );
    let step = one(&spans, "saga step", |s| s.name == "saga.step");
    assert_eq!(step.attribute("saga"), Some(checkout::NAME));
    assert_eq!(step.attribute("event_type"), Some("order.placed"));
    assert_eq!(
        step.parent_span_id, place.span_id,
        "the saga's step continues from the event's stored traceparent"
    );

    // The saga's commands are under its step: reserve, hold, verdict.
    let saga_commands: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "command" && s.parent_span_id == step.span_id)
        .collect();
    for aggregate in ["listing", "account", "order"] {
        assert!(
            saga_commands
                .iter()
                .any(|c| c.attribute("aggregate") == Some(aggregate)
                    && c.attribute("actor") == Some(checkout::NAME)),
            "the saga's {aggregate} command is under its step: {saga_commands:#?}"
        );
    }
    let verdict = one(&spans, "verdict", |s| {
        s.name == "command"
            && s.parent_span_id == step.span_id
            && s.attribute("aggregate") == Some("order")
    });
    // Its event carries the trace on: folded and pushed under its command.
    assert!(
        spans.iter().any(|s| s.name == "projection.apply"
            && s.attribute("event_type") == Some("order.confirmed")
            && s.parent_span_id == verdict.span_id),
        "order.confirmed is folded under the verdict's span: {spans:#?}"
    );
    // (The placement's own event may reach the feed after the subscription
    // started watching: it is pushed as nothing new, `sent` false.)
    let push = one(&spans, "push", |s| {
        s.name == "push orderUpdated" && s.attribute("sent") == Some("true")
    });
    assert_eq!(
        push.parent_span_id, verdict.span_id,
        "the push follows the event that caused it"
    );
    // Every span of the trace chains back to the request.
    for span in &spans {
        if span.span_id == http.span_id {
            continue;
        }
        let chain = ancestry(&spans, span);
        assert!(
            chain
                .last()
                .is_some_and(|root| root.span_id == http.span_id),
            "{span:#?} does not chain back to the request: {chain:#?}"
        );
    }

    // The connection: the upgrade request continues its header's trace
    // and the connection's span is under it; the subscription continues
    // the `ConnectionInit` payload's trace, and the push links to it.
    let upgrade = one(&upgrade_spans, "upgrade", |s| s.name == "GET /graphql");
    assert_eq!(upgrade.parent_span_id, upgrade_caller);
    let connection = one(&upgrade_spans, "connection", |s| {
        s.name == "graphql websocket"
    });
    assert_eq!(connection.parent_span_id, upgrade.span_id);
    let init = one(&ws_spans, "connection init", |s| {
        s.name == "graphql websocket init"
    });
    assert_eq!(init.parent_span_id, ws_caller);
    let subscription = one(&ws_spans, "subscription", |s| {
        s.name == "subscription orderUpdated"
    });
    assert_eq!(subscription.parent_span_id, init.span_id);
    assert!(
        push.links
            .contains(&(ws_trace.clone(), subscription.span_id.clone())),
        "the push links to its subscription: {push:#?}"
    );

    // `audit trace` names the trace id beside the correlation id of each
    // event the request caused, the saga's included.
    let pool = app.db.pool().await;
    let store = marketplace_api::database::open_event_store(
        &pool,
        &EventStoreChoice::Postgres,
        &app.master_key,
    )
    .await
    .expect("store");
    let order_stream = StreamId::new("order", order.parse().expect("uuid")).expect("stream");
    let correlation = store.read_stream(&order_stream, 0).await.expect("read")[0]
        .metadata
        .correlation_id
        .expect("a correlation id");
    let events = marketplace_commands::audit::trace(&store, correlation, &|_, _| {})
        .await
        .expect("trace");
    let lines: Vec<Value> = events
        .iter()
        .map(marketplace_commands::audit::trace_line)
        .collect();
    let types: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["eventType"].as_str())
        .collect();
    for expected in ["order.placed", "listing.stock_reserved", "order.confirmed"] {
        assert!(types.contains(&expected), "{expected} in {lines:#?}");
    }
    for line in &lines {
        assert_eq!(line["correlationId"], correlation.to_string(), "{line}");
        assert_eq!(line["traceId"], trace.as_str(), "{line}");
    }
    pool.close().await;
}
