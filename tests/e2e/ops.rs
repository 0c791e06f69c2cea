//! Operations surfaces: GraphQL `projections` (ADMIN only) and `/metrics`.

use marketplace_e2e::{eventually, spawn_app, Req};
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
        &app.master_key,
        "admin@example.com",
        "admin password 1",
        "Admin",
    )
    .await
    .expect("admin");
    let admin = app.login("admin@example.com", "admin password 1").await;
    // Wait (bounded) for every projection to be running and caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
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
    at_the_head(&app, &pool).await;
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
    at_the_head(&app, &pool).await;

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

/// Appends `event` to the stream of listing `listing`, as if it were in the
/// log already (a corrupt history, then its repair).
async fn append_listing_event(
    pool: &sqlx::PgPool,
    listing: &str,
    event: marketplace_domain::listing::ListingEvent,
) -> i64 {
    use marketplace_domain::listing::Listing;
    use marketplace_domain::Aggregate;
    use marketplace_store::postgres::PostgresEventStore;
    use marketplace_store::{EventMetadata, EventStore, ExpectedRevision, NewEvent, StreamId};

    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let encoded = marketplace_event_schemas::encode(&event).expect("encode");
    let id = uuid::Uuid::parse_str(listing).expect("listing id");
    let outcome = store
        .append(
            &StreamId::new(Listing::CATEGORY, id).expect("stream"),
            ExpectedRevision::Any,
            vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                data: encoded.data,
                metadata: EventMetadata::default(),
            }],
        )
        .await
        .expect("append");
    i64::try_from(outcome.position.0).expect("position")
}

/// The payout process meets an event it cannot act on (an order shipped
/// whose reservation the log says was released): after its bounded retries
/// it is FAILED, and status, `/metrics` and `/readyz` say so, while the
/// checkout saga and the read models keep going. Once the log is repaired,
/// a retry resumes it at that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_fails_the_payout_process_visibly_and_a_retry_after_the_fix_resumes_it() {
    use crate::commerce::{auth, buyer_with, lamp, place_input, seller_with_listing, PLACE};
    use marketplace_domain::listing::{ListingEvent, ReservationReleased, StockReserved};
    use marketplace_domain::values::{ListingId, OrderId, Quantity};
    use marketplace_projections::status::{self, ConsumerKind};
    use marketplace_projections::ProjectionState;
    use marketplace_store::postgres::PostgresEventStore;

    let app = spawn_app().await;
    let (seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;
    let place = |buyer: String| {
        let (app, listing) = (&app, listing.clone());
        async move {
            let placed = app
                .gql(
                    PLACE,
                    json!({ "input": place_input(&listing, 1) }),
                    auth(&buyer),
                )
                .await;
            let id = placed
                .data("placeOrder.order.id")
                .as_str()
                .expect("id")
                .to_owned();
            app.wait_order(&buyer, &id, |s| s == "CONFIRMED").await;
            id
        }
    };
    let order = place(buyer.clone()).await;
    let pool = app.db.pool().await;
    let (listing_id, order_id) = (
        ListingId(uuid::Uuid::parse_str(&listing).expect("uuid")),
        OrderId(uuid::Uuid::parse_str(&order).expect("uuid")),
    );
    // The corruption: the log says the order's reservation was given back.
    append_listing_event(
        &pool,
        &listing,
        ListingEvent::ReservationReleased(ReservationReleased {
            listing_id,
            order_id,
            quantity: Quantity(1),
            released_at: chrono::Utc::now(),
        }),
    )
    .await;
    let shipped = app
        .gql(
            "mutation($id: ID!) { shipOrder(id: $id) { order { status } } }",
            json!({ "id": order }),
            auth(&seller),
        )
        .await;
    assert_eq!(
        shipped.data("shipOrder.order.status"),
        "SHIPPED",
        "{}",
        shipped.body
    );

    // FAILED, in readiness (503, named) …
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let body = loop {
        let ready = reqwest::get(format!("{}/readyz", app.base))
            .await
            .expect("readyz");
        let code = ready.status().as_u16();
        let body: serde_json::Value = ready.json().await.expect("json");
        if body["processManagers"]["payout"] == "FAILED" {
            assert_eq!(code, 503, "{body}");
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payout did not fail: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(body["processManagers"]["checkout"], "RUNNING", "{body}");
    assert_eq!(body["projections"]["orders"], "RUNNING", "{body}");
    // … in the metrics …
    let metrics = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "marketplace_consumer_failed{consumer=\"payout\",kind=\"PROCESS_MANAGER\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "marketplace_consumer_failed{consumer=\"checkout\",kind=\"PROCESS_MANAGER\"} 0"
        ),
        "{metrics}"
    );
    // … and in the status the CLI and GraphQL show, with the event and why.
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let payout = status::status(&pool, &store)
        .await
        .expect("status")
        .into_iter()
        .find(|s| s.name == "payout" && s.kind == ConsumerKind::ProcessManager)
        .expect("payout in status");
    assert_eq!(payout.state, ProjectionState::Failed);
    let failed_at = payout.failed_position.expect("failed position");
    assert!(
        payout
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{payout:?}"
    );

    // The checkout saga keeps running meanwhile.
    let other = buyer_with(&app, "other@example.com", "100.00").await;
    place(other).await;

    // The repair, then the retry: it resumes at the event it failed on.
    append_listing_event(
        &pool,
        &listing,
        ListingEvent::StockReserved(StockReserved {
            listing_id,
            order_id,
            quantity: Quantity(1),
            reserved_at: chrono::Utc::now(),
        }),
    )
    .await;
    assert!(status::reset_failed(&pool, "payout").await.expect("reset"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let committed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'listing.reservation_committed' \
             AND data->>'order_id' = $1",
        )
        .bind(&order)
        .fetch_one(&pool)
        .await
        .expect("count");
        let ready = reqwest::get(format!("{}/readyz", app.base))
            .await
            .expect("readyz");
        if committed == 1 && ready.status().as_u16() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payout did not resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let payout = status::status(&pool, &store)
        .await
        .expect("status")
        .into_iter()
        .find(|s| s.name == "payout")
        .expect("payout");
    assert_eq!(payout.state, ProjectionState::Running, "{payout:?}");
    assert!(payout.position.0 >= failed_at.0, "{payout:?}");
}

/// Waits until every read model and process manager has folded the whole
/// log, so that no runner has a batch left to commit: a commit writes
/// RUNNING over a state a test has just marked.
async fn at_the_head(app: &marketplace_e2e::TestApp, pool: &sqlx::PgPool) {
    eventually("every consumer is at the head", async || {
        let head = app.head().await;
        let behind: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM projection_checkpoints WHERE live AND position < $1) \
                  + (SELECT count(*) FROM consumer_checkpoints WHERE position < $1)",
        )
        .bind(head)
        .fetch_one(pool)
        .await
        .expect("checkpoints");
        behind == 0 && app.head().await == head
    })
    .await;
}
