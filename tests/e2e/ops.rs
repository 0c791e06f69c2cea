//! Operations surfaces: GraphQL `projections` (ADMIN only) and `/metrics`.

use marketplace_e2e::{spawn_app, Req};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_projection_running_with_its_lag_and_metrics_show_it() {
    let app = spawn_app().await;
    let (buyer, _, token) = app.register("buyer@example.com", &["BUYER"]).await;
    let query =
        "{ projections { name version position lagEvents lagSeconds state rebuildProgress } }";
    let refused = app
        .gql(
            query,
            json!({}),
            Req {
                token: Some(&buyer),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(refused.error_code(), "FORBIDDEN");
    let anonymous = app.gql(query, json!({}), Req::default()).await;
    assert_eq!(anonymous.error_code(), "UNAUTHENTICATED");

    marketplace_api::admin::create_admin(
        &app.db.url,
        "admin@example.com",
        "admin password 1",
        "Admin",
    )
    .await
    .expect("admin");
    let admin = app.login("admin@example.com", "admin password 1").await;
    // Wait (bounded) for every projection to be running and caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let all = loop {
        let r = app
            .gql(
                query,
                json!({}),
                Req {
                    token: Some(&admin),
                    consistency: Some(&token),
                },
            )
            .await;
        let all = r.data("projections").as_array().expect("list").clone();
        if all
            .iter()
            .all(|p| p["state"] == "RUNNING" && p["lagEvents"] == 0)
            && all.len() >= 4
        {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "projections did not settle: {all:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let names: Vec<&str> = all.iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in ["accounts", "listings", "orders", "reviews"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let metrics = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("marketplace_projection_lag_events{projection=\"listings\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("marketplace_projection_failed{projection=\"orders\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("marketplace_projection_lag_seconds{projection=\"accounts\"}"));
    // Request latency by operation, and what the commands did.
    assert!(
        metrics.contains(
            "marketplace_graphql_request_duration_seconds_bucket{operation=\"projections\",type=\"query\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("marketplace_graphql_request_duration_seconds_count{operation=\"register\",type=\"mutation\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("marketplace_commands_total{aggregate=\"account\",outcome=\"appended\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE marketplace_command_conflicts_total counter"));
    assert!(metrics.contains("# TYPE marketplace_command_retries_total counter"));

    // Ready: the database answers and every read model has a running leader.
    let ready = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["projections"]["orders"], "RUNNING", "{body}");
    // A FAILED read model makes the instance unready, and says which.
    let pool = app.db.pool().await;
    sqlx::query(
        "UPDATE projection_checkpoints SET state = 'FAILED' WHERE name = 'orders' AND live",
    )
    .execute(&pool)
    .await
    .expect("mark failed");
    let unready = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert_eq!(unready.status().as_u16(), 503);
    let body: serde_json::Value = unready.json().await.expect("json");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["projections"]["orders"], "FAILED", "{body}");
    assert_eq!(body["projections"]["listings"], "RUNNING", "{body}");
    // Liveness is not readiness: the process is still up.
    let live = reqwest::get(format!("{}/healthz", app.base))
        .await
        .expect("healthz");
    assert_eq!(live.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reviews_read_model_holds_up_neither_order_queries_with_a_token_nor_readiness() {
    use crate::commerce::{auth, buyer_with, lamp, place_input, seller_with_listing, PLACE};
    use marketplace_domain::review::Review;
    use marketplace_domain::Aggregate;
    use marketplace_store::postgres::PostgresEventStore;
    use marketplace_store::{EventMetadata, EventStore, ExpectedRevision, NewEvent, StreamId};

    let app = marketplace_e2e::spawn_app_with(|s| {
        s.consistency_wait = std::time::Duration::from_millis(1_500);
    })
    .await;
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;
    let placed = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&buyer),
        )
        .await;
    let order = placed
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_order(&buyer, &order, |s| s == "CONFIRMED").await;
    let pool = app.db.pool().await;

    // Reviews and notifications only degrade: still ready, and said so.
    sqlx::query(
        "UPDATE projection_checkpoints SET state = 'FAILED' WHERE name = 'reviews' AND live",
    )
    .execute(&pool)
    .await
    .expect("mark failed");
    let ready = reqwest::get(format!("{}/readyz", app.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["projections"]["reviews"], "FAILED", "{body}");
    assert_eq!(body["degraded"], json!(["reviews"]), "{body}");
    sqlx::query(
        "UPDATE projection_checkpoints SET state = 'RUNNING' WHERE name = 'reviews' AND live",
    )
    .execute(&pool)
    .await
    .expect("mark running");

    // A review event no code can read stops the read models that read
    // reviews; the orders read model passes it.
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let poison = store
        .append(
            &StreamId::new(Review::CATEGORY, uuid::Uuid::now_v7()).expect("stream"),
            ExpectedRevision::NoStream,
            vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "review.submitted".into(),
                schema_version: 1,
                data: json!({ "not": "a review" }),
                metadata: EventMetadata::default(),
            }],
        )
        .await
        .expect("append")
        .position
        .to_string();
    let order_query = "query($id: ID!) { order(id: $id) { id status total { amount } } }";
    let r = app
        .gql(
            order_query,
            json!({ "id": order }),
            Req {
                token: Some(&buyer),
                consistency: Some(&poison),
            },
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.data("order.status"), "CONFIRMED");
    assert_eq!(
        r.body["extensions"]["consistency"]["reached"], true,
        "{}",
        r.body
    );
    // A query that reads reviews cannot be answered at that token.
    let r = app
        .gql(
            "query($id: ID!) { reviews(listingId: $id) { totalCount } }",
            json!({ "id": listing }),
            Req {
                token: Some(&buyer),
                consistency: Some(&poison),
            },
        )
        .await;
    assert_eq!((r.status, r.error_code()), (503, "CONFLICT"), "{}", r.body);
}
