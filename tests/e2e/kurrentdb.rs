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

/// One served instance of the marketplace that can be stopped.
struct Instance {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(settings: marketplace_api::Settings) -> Instance {
    let app = marketplace_api::Application::build(settings)
        .await
        .expect("build");
    let addr = app.local_addr().expect("listens");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Instance {
        base: format!("http://{addr}"),
        stop,
        served,
    }
}

async fn post(
    base: &str,
    token: Option<&str>,
    consistency: Option<&str>,
    query: &str,
) -> serde_json::Value {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(c) = consistency {
        req = req.header("x-consistency-token", c);
    }
    req.send().await.expect("send").json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_tokens_and_checkpoints_survive_a_restart_on_kurrentdb() {
    marketplace_e2e::init_telemetry();
    let server = kurrentdb_testserver::spawn().await.expect("test server");
    let db = marketplace_embedded_postgres::testdb::TestDatabase::create().await;
    let mut settings = marketplace_api::Settings::for_database(db.url.clone());
    settings.event_store = EventStoreChoice::KurrentDb(Secret::new(server.connection_string()));
    settings.jwt_secret = Secret::new("restart-test-secret");
    const REGISTER: &str = "mutation { register(input: { email: \"first@example.com\", \
        password: \"long enough pw\", displayName: \"First\", roles: [BUYER] }) { token consistencyToken } }";

    let first = start(settings.clone()).await;
    let r = post(&first.base, None, None, REGISTER).await;
    let token = r["data"]["register"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let written = r["data"]["register"]["consistencyToken"]
        .as_str()
        .expect("consistency token")
        .to_owned();
    let me = post(
        &first.base,
        Some(&token),
        Some(&written),
        "{ me { email } }",
    )
    .await;
    assert_eq!(me["data"]["me"]["email"], "first@example.com", "{me}");
    let _ = first.stop.send(());
    first.served.await.expect("join").expect("stopped");

    // The checkpoints kept in Postgres are $all positions at (or past) the
    // write, after the restart as before it.
    let pool = db.pool().await;
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE live")
            .fetch_all(&pool)
            .await
            .expect("checkpoints");
    let written_at: i64 = written.parse().expect("a position");
    assert!(!positions.is_empty());
    assert!(
        positions.iter().all(|p| *p >= written_at),
        "{positions:?} vs {written_at}"
    );

    let second = start(settings).await;
    // The old token still means the same point of the log: answered, with
    // the write in it, and nothing folded twice.
    let me = post(
        &second.base,
        Some(&token),
        Some(&written),
        "{ me { email } }",
    )
    .await;
    assert_eq!(me["data"]["me"]["email"], "first@example.com", "{me}");
    assert_eq!(me["extensions"]["consistency"]["reached"], true, "{me}");
    let again = post(
        &second.base,
        None,
        None,
        &REGISTER
            .replace("first@", "second@")
            .replace("First", "Second"),
    )
    .await;
    let later: i64 = again["data"]["register"]["consistencyToken"]
        .as_str()
        .expect("consistency token")
        .parse()
        .expect("a position");
    assert!(later > written_at, "positions keep growing across restarts");
    let token2 = again["data"]["register"]["token"].as_str().expect("token");
    let me2 = post(
        &second.base,
        Some(token2),
        Some(&later.to_string()),
        "{ me { email } }",
    )
    .await;
    assert_eq!(me2["data"]["me"]["email"], "second@example.com", "{me2}");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_accounts")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(accounts, 2, "each account folded once");
    let _ = second.stop.send(());
    second.served.await.expect("join").expect("stopped");
    pool.close().await;
}
