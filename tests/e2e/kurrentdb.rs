//! The whole marketplace over HTTP with its event log in KurrentDB — the
//! wire-compatible test server, reached through the real `kurrentdb` client
//! — and its read models in Postgres: a flash sale of 20 lamps to 50
//! concurrent buyers sells exactly 20, and every buyer's money adds up.

use std::sync::Arc;

use marketplace_api::config::{EventStoreChoice, Secret};
use marketplace_e2e::{spawn_app_with, Req};
use marketplace_store::{EventStore, KurrentDbEventStore};
use serde_json::json;

use crate::commerce::{auth, buyer_with, lamp, place_input, seller_with_listing, ME, PLACE};

const STOCK: i64 = 20;
const BUYERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_over_http_with_the_log_in_kurrentdb_sells_exactly_the_stock() {
    let server = kurrentdb_testserver::spawn().await.expect("test server");
    let url = server.connection_string();
    let app = Arc::new(
        spawn_app_with(|s| s.event_store = EventStoreChoice::KurrentDb(Secret::new(url.clone())))
            .await,
    );
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(STOCK)).await;
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(buyer_with(&app, &format!("buyer{i}@example.com"), "100.00").await);
    }

    let barrier = Arc::new(tokio::sync::Barrier::new(BUYERS));
    let tasks: Vec<_> = buyers
        .into_iter()
        .map(|token| {
            let (app, listing, barrier) = (app.clone(), listing.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = app
                    .gql(
                        PLACE,
                        json!({ "input": place_input(&listing, 1) }),
                        auth(&token),
                    )
                    .await;
                let id = r
                    .data("placeOrder.order.id")
                    .as_str()
                    .expect("id")
                    .to_owned();
                (token, id)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        let (token, id) = t.await.expect("buyer");
        let order = app
            .wait_order(&token, &id, |s| s == "CONFIRMED" || s == "REJECTED")
            .await;
        outcomes.push((token, order["status"].as_str().expect("status").to_owned()));
    }
    let sold = outcomes.iter().filter(|(_, s)| s == "CONFIRMED").count();
    assert_eq!(sold, STOCK as usize, "exactly the stock is sold");
    assert_eq!(outcomes.len() - sold, BUYERS - STOCK as usize);

    // Read every wallet once the read models have caught up with the whole
    // log: $all commit positions are the consistency tokens here.
    let head = KurrentDbEventStore::connect(&url)
        .expect("store")
        .head()
        .await
        .expect("head")
        .to_string();
    let consistency = Req {
        consistency: Some(&head),
        ..Req::default()
    };
    for (token, status) in &outcomes {
        let r = app
            .gql(
                ME,
                json!({}),
                Req {
                    token: Some(token),
                    ..consistency.clone()
                },
            )
            .await;
        let expected = if status == "CONFIRMED" {
            "60.00"
        } else {
            "100.00"
        };
        assert_eq!(
            r.data("me.balance.amount"),
            expected,
            "a {status} buyer's balance"
        );
    }
}
