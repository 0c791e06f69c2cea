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
