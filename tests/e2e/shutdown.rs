//! A graceful stop under load: a replica told to stop (what SIGTERM does)
//! drains — unready, `Connection: close`, subscribers closed with 1012 —
//! while clients move to another replica, finishes what is in flight, and
//! hands its consumers to the standby. No request fails, except with a
//! retryable code; every acknowledged order still ends final, and stock adds
//! up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use marketplace_api::shutdown::{ShutdownSettings, WS_CLOSE_SERVICE_RESTART};
use marketplace_api::Settings;
use marketplace_e2e::{eventually, serve, Served, TestApp};
use marketplace_embedded_postgres::testdb::TestDatabase;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::commerce::{auth, buyer_with, lamp, place_input, seller_with_listing, PLACE};

const STOCK: i64 = 100_000;

/// What the load clients saw.
#[derive(Default)]
struct Seen {
    /// Answers from the stopping replica while it drained (they carry
    /// `Connection: close`).
    served_while_draining: AtomicU64,
    /// Answers from the standby.
    served_by_standby: AtomicU64,
    /// Answers that asked the client to go elsewhere: `Connection: close`
    /// or a retryable code.
    told_to_move: AtomicU64,
    /// Orders acknowledged (by either replica).
    orders: Mutex<Vec<(String, String)>>,
    /// Anything else: a transport error, or a code a client may not retry.
    failures: Mutex<Vec<String>>,
}

/// One shopper behind a load balancer: it sends to the stopping replica
/// until that replica tells it to move (an answer with `Connection: close`,
/// or a retryable refusal, which it retries), then to the standby.
async fn shopper(
    (first, standby): (String, String),
    buyer: String,
    listing: String,
    seen: Arc<Seen>,
    halt: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let mut target = first.clone();
    let mut i = 0u64;
    while halt.load(Ordering::Relaxed) == 0 {
        i += 1;
        let (query, variables) = if i % 2 == 0 {
            (PLACE, json!({ "input": place_input(&listing, 1) }))
        } else {
            (
                "{ listings(first: 5) { totalCount edges { node { id title } } } }",
                json!({}),
            )
        };
        let sent = http
            .post(format!("{target}/graphql"))
            .bearer_auth(&buyer)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                seen.failures
                    .lock()
                    .expect("lock")
                    .push(format!("{target}: {e:?}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let close = response
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(e) => {
                seen.failures
                    .lock()
                    .expect("lock")
                    .push(format!("{target}: body: {e:?}"));
                continue;
            }
        };
        let code = body["errors"][0]["extensions"]["code"].as_str();
        match (status, code) {
            (200, None) => {
                if target == standby {
                    seen.served_by_standby.fetch_add(1, Ordering::Relaxed);
                } else if close {
                    seen.served_while_draining.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(order) = body["data"]["placeOrder"]["order"]["id"].as_str() {
                    seen.orders
                        .lock()
                        .expect("lock")
                        .push((buyer.clone(), order.to_owned()));
                }
            }
            // Retryable: try again, elsewhere.
            (_, Some("UNAVAILABLE" | "RATE_LIMITED")) => {
                seen.told_to_move.fetch_add(1, Ordering::Relaxed);
                target = standby.clone();
                continue;
            }
            _ => seen
                .failures
                .lock()
                .expect("lock")
                .push(format!("{target}: HTTP {status}: {body}")),
        }
        if close && target != standby {
            seen.told_to_move.fetch_add(1, Ordering::Relaxed);
            target = standby.clone();
        }
    }
}

/// Opens a `graphql-transport-ws` subscription to an order's updates on
/// `base`, acknowledged; returns the socket.
async fn subscribe_raw(
    base: &str,
    token: &str,
    order: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/graphql", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("a WebSocket request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    socket
        .send(Message::Text(init.to_string().into()))
        .await
        .expect("init");
    let ack = tokio::time::timeout(Duration::from_secs(120), socket.next())
        .await
        .expect("an answer to connection_init")
        .expect("a message")
        .expect("not an error");
    assert!(
        ack.to_text().expect("text").contains("connection_ack"),
        "{ack:?}"
    );
    let subscribe = json!({
        "id": "1", "type": "subscribe",
        "payload": { "query": "subscription($id: ID!) { orderUpdated(id: $id) { id status } }", "variables": { "id": order } }
    });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("subscribe");
    socket
}

fn settings(db: &TestDatabase, template: &Settings, drain: Duration) -> Settings {
    Settings {
        database_url: db.url.clone(),
        shutdown: ShutdownSettings {
            drain,
            grace: Duration::from_secs(30),
        },
        ..template.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopping_under_load_fails_no_request_and_hands_its_consumers_to_the_standby() {
    let db = TestDatabase::create().await;
    let template = Settings::for_database(db.url.clone());
    // The stopping replica drains for 5 s: long enough for every shopper to
    // be told to move while it still answers.
    let mut first: Served = serve(&db, settings(&db, &template, Duration::from_secs(5))).await;
    let app: &TestApp = &first.app;
    let (_seller, listing) = seller_with_listing(app, "seller@example.com", lamp(STOCK)).await;
    let mut buyers = Vec::new();
    for i in 0..4 {
        buyers.push(buyer_with(app, &format!("buyer-{i}@example.com"), "100000.00").await);
    }
    // The first replica leads every consumer; the standby starts after it
    // (and shares its signing key, so the shoppers' tokens work on both).
    eventually("the first replica is ready", || async {
        reqwest::get(format!("{}/readyz", first.app.base))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let standby = serve(&db, settings(&db, &template, Duration::ZERO)).await;

    // A subscriber on the stopping replica.
    let watched = first
        .app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&buyers[0]),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    let mut socket = subscribe_raw(&first.app.base, &buyers[0], &watched).await;
    let first_message = tokio::time::timeout(Duration::from_secs(120), socket.next())
        .await
        .expect("the order as it stands")
        .expect("a message")
        .expect("not an error");
    assert!(
        first_message.to_text().expect("text").contains(&watched),
        "{first_message:?}"
    );

    // Load on the first replica.
    let (halt, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(Seen::default()));
    let shoppers: Vec<_> = buyers
        .iter()
        .map(|buyer| {
            tokio::spawn(shopper(
                (first.app.base.clone(), standby.app.base.clone()),
                buyer.clone(),
                listing.clone(),
                seen.clone(),
                halt.clone(),
            ))
        })
        .collect();
    eventually("the shoppers are ordering", || async {
        seen.orders.lock().expect("lock").len() >= 20
    })
    .await;

    // Stop it, as SIGTERM would.
    first.signal_stop();
    // The subscriber is told to reconnect: 1012, Service Restart.
    let close = loop {
        let message = tokio::time::timeout(Duration::from_secs(120), socket.next())
            .await
            .expect("the socket is closed within the deadline");
        match message {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close.map(|f| u16::from(f.code)),
        Some(WS_CLOSE_SERVICE_RESTART)
    );
    // While it drains it is unready, and it refuses new subscribers with a
    // retryable code.
    let ready = reqwest::get(format!("{}/readyz", first.app.base))
        .await
        .expect("it still answers while draining");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["draining"], true, "{body}");

    let base = first.app.base.clone();
    first.stopped().await.expect("the stop completes cleanly");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the stopped replica no longer listens"
    );

    // The shoppers carry on against the standby, whose consumers took over.
    let now = seen.served_by_standby.load(Ordering::Relaxed);
    eventually("the standby serves the shoppers", || async {
        seen.served_by_standby.load(Ordering::Relaxed) >= now + 40
    })
    .await;
    halt.store(1, Ordering::Relaxed);
    for s in shoppers {
        s.await.expect("shopper");
    }

    eprintln!(
        "orders {}, answered while draining {}, by the standby {}, told to move {}",
        seen.orders.lock().expect("lock").len(),
        seen.served_while_draining.load(Ordering::Relaxed),
        seen.served_by_standby.load(Ordering::Relaxed),
        seen.told_to_move.load(Ordering::Relaxed)
    );
    let failures = seen.failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert!(
        seen.served_while_draining.load(Ordering::Relaxed) > 0,
        "the stopping replica kept answering while it drained"
    );
    assert!(
        seen.told_to_move.load(Ordering::Relaxed) >= buyers.len() as u64,
        "every shopper was told to move"
    );

    // Every acknowledged order ends final (the checkout saga runs on the
    // standby now), and the stock adds up.
    let orders = seen.orders.lock().expect("lock").clone();
    let mut confirmed = 0i64;
    for (buyer, order) in orders.iter().chain([&(buyers[0].clone(), watched.clone())]) {
        let order = standby
            .app
            .wait_order(buyer, order, |s| s != "PENDING")
            .await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
        confirmed += 1;
    }
    let head = standby.app.head().await.to_string();
    let listing_now = standby
        .app
        .gql(
            "query($id: ID!) { listing(id: $id) { availableQuantity } }",
            json!({ "id": listing }),
            marketplace_e2e::Req {
                consistency: Some(&head),
                ..marketplace_e2e::Req::default()
            },
        )
        .await;
    assert_eq!(
        listing_now.data("listing.availableQuantity").as_i64(),
        Some(STOCK - confirmed),
        "every confirmed order took one unit, and no other did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_when_the_grace_period_ends_is_answered_unavailable_and_the_stop_completes(
) {
    let db = TestDatabase::create().await;
    let mut template = Settings::for_database(db.url.clone());
    template.shutdown = ShutdownSettings {
        drain: Duration::ZERO,
        grace: Duration::from_secs(1),
    };
    let served = serve(&db, template).await;
    let addr = served.app.base.trim_start_matches("http://").to_owned();

    // A request whose body never finishes arriving: in flight for ever.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"query\":",
    )
    .await
    .expect("write");
    // It is in flight once the server counts two requests in flight: it
    // and the `/metrics` request asking.
    let metrics = format!("{}/metrics", served.app.base);
    eventually("the slow request is in flight", || async {
        let page = reqwest::get(&metrics)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        page.lines()
            .any(|l| l == "marketplace_http_requests_in_flight 2")
    })
    .await;

    let mut served = served;
    served.signal_stop();
    served
        .stopped()
        .await
        .expect("the stop completes although a request never finished");
    // The request still running when the grace period ended was answered
    // with a retryable code, and its connection closed.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), slow.read_to_end(&mut answer))
        .await
        .expect("the cut connection is closed")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"UNAVAILABLE\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
}
