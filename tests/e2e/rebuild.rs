//! A projection rebuilt while clients keep writing and querying over
//! GraphQL: no query fails or sees the catalogue shrink, and afterwards the
//! read models equal a rebuild from the log.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use marketplace_e2e::{spawn_app, Req};
use marketplace_projections::read_models::listings::ListingsProjection;
use marketplace_projections::{Progress, ProjectorRuntime};
use serde_json::json;

const CREATE: &str = "mutation($input: CreateListingInput!) {
    createListing(input: $input) { listing { id } }
}";

fn lamp(n: usize) -> serde_json::Value {
    json!({
        "kind": "PHYSICAL", "title": format!("Lamp {n}"), "description": "Warm light",
        "category": "home", "tags": ["lighting"], "quantity": 2,
        "price": { "amount": "10.00", "currencyCode": "EUR" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catalogue_is_rebuilt_while_clients_write_and_query_without_a_failed_or_shrunk_read() {
    let app = Arc::new(spawn_app().await);
    let (seller, _, _) = app.register("shop@example.com", &["SELLER"]).await;
    let publish = |app: Arc<marketplace_e2e::TestApp>, seller: String, n: usize| async move {
        let id = app
            .gql(
                CREATE,
                json!({ "input": lamp(n) }),
                Req {
                    token: Some(&seller),
                    ..Req::default()
                },
            )
            .await
            .data("createListing.listing.id")
            .as_str()
            .expect("id")
            .to_owned();
        app.gql(
            "mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }",
            json!({ "id": id }),
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await
        .data("publishListing.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned()
    };
    let mut token = String::new();
    for n in 0..20 {
        token = publish(app.clone(), seller.clone(), n).await;
    }
    let first = app
        .gql(
            "{ listings { totalCount } }",
            json!({}),
            Req {
                consistency: Some(&token),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(first.data("listings.totalCount"), 20);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (app, seller, stop) = (app.clone(), seller.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 1_000 * (w + 1);
            let mut last = String::new();
            while !stop.load(Ordering::Relaxed) {
                last = publish(app.clone(), seller.clone(), n).await;
                n += 1;
            }
            last
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (app, stop, reads) = (app.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut high = 20;
            while !stop.load(Ordering::Relaxed) {
                let r = app
                    .gql(
                        "{ listings(first: 5) { totalCount edges { node { id title } } } }",
                        json!({}),
                        Req::default(),
                    )
                    .await;
                assert!(r.body.get("errors").is_none(), "a query failed: {}", r.body);
                let n = r.data("listings.totalCount").as_i64().expect("count");
                assert!(n >= high, "the catalogue shrank from {high} to {n}");
                assert_eq!(r.data("listings.edges").as_array().map(Vec::len), Some(5));
                high = n;
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Rebuild the catalogue into a fresh schema while all that goes on.
    let pool = app.db.pool().await;
    // Through the sealing store, as every reader of the log does.
    let store = Arc::new(
        marketplace_api::database::open_event_store(
            &pool,
            &marketplace_api::config::EventStoreChoice::Postgres,
            &app.master_key,
        )
        .await
        .expect("store"),
    );
    let runtime = ProjectorRuntime::new(pool.clone(), store, Progress::default());
    let (_keep, rx) = tokio::sync::watch::channel(false);
    let report = runtime
        .rebuild(Arc::new(ListingsProjection), rx)
        .await
        .expect("rebuild");
    assert!(report.switched, "the new build went live: {report:?}");
    // Keep the clients going a little past the switch.
    let after = reads.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while reads.load(Ordering::Relaxed) < after + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "readers stalled after the switch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut last = token;
    for w in writers {
        let t = w.await.expect("writer");
        if !t.is_empty() && t.parse::<u64>().unwrap_or(0) > last.parse::<u64>().unwrap_or(0) {
            last = t;
        }
    }
    for r in readers {
        r.await.expect("reader");
    }

    // Everything written is there, and the read models equal the log.
    let total = app
        .gql(
            "{ listings { totalCount } }",
            json!({}),
            Req {
                consistency: Some(&last),
                ..Req::default()
            },
        )
        .await;
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'listing.published'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(total.data("listings.totalCount"), published);
    let checks = runtime
        .verify(&marketplace_projections::all(), &|_, _, _| {})
        .await
        .expect("verify");
    for c in &checks {
        assert!(c.matches(), "{} differs from a rebuild: {c:?}", c.name);
    }
}
