//! Read replicas (`--read-database-url`) on a real streaming replica: a hot
//! standby cloned from the test cluster with `pg_basebackup -R`, made to
//! lag on purpose by pausing its WAL replay, and stopped to see reads fall
//! back to the primary.

use std::time::{Duration, Instant};

use marketplace_api::config::Secret;
use marketplace_e2e::{spawn_app_with, Req, TestApp};
use marketplace_embedded_postgres::testdb::start_test_standby;
use marketplace_embedded_postgres::EmbeddedPostgres;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(120);

const CREATE: &str = "mutation($input: CreateListingInput!) {
    createListing(input: $input) { consistencyToken listing { id } }
}";

/// The seller's drafts: a filtered catalogue page, which the read cache
/// never holds, so what it shows comes from the database that answered.
const DRAFTS: &str = "query($seller: ID!) {
    listings(filter: { sellerId: $seller, status: DRAFT }) { totalCount edges { node { id title } } }
}";

fn lamp(title: &str) -> serde_json::Value {
    json!({
        "kind": "PHYSICAL", "title": title, "description": "Warm light",
        "category": "Home", "tags": ["lighting"],
        "price": { "amount": "49.90", "currencyCode": "EUR" }, "quantity": 3
    })
}

/// The database name at the end of a `postgres://…/<name>` URL.
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The marketplace on a fresh database, reading from `standby`'s copy of it.
async fn spawn_with_replica(standby: &EmbeddedPostgres) -> TestApp {
    let app = spawn_app_with(|s| {
        let name = database_name(&s.database_url);
        s.replicas.urls = vec![Secret::new(standby.database_url(&name))];
    })
    .await;
    // The monitor finds the replica up once it has replayed the database.
    wait_metric(&app, "marketplace_replica_up{replica=\"0\"}", |v| v == 1.0).await;
    app
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the series `series` (name and labels, as printed).
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let page = metrics(app).await;
    value(&page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"))
}

async fn wait_metric(app: &TestApp, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = metrics(app).await;
        if let Some(v) = value(&page, series).filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never got there:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reads(target: &str, reason: &str) -> String {
    format!("marketplace_replica_reads_total{{target=\"{target}\",reason=\"{reason}\"}}")
}

/// Reads answered by `target` (`replica` or `primary`), for every reason.
fn served(page: &str, target: &str) -> f64 {
    ["untokened", "caught_up", "lagging", "unavailable", "failed"]
        .iter()
        .filter_map(|reason| value(page, &reads(target, reason)))
        .sum()
}

/// The seller's draft count, as answered (with `consistency`, if any).
async fn drafts(app: &TestApp, seller: &str, seller_id: &str, consistency: Option<&str>) -> i64 {
    let r = app
        .gql(
            DRAFTS,
            json!({ "seller": seller_id }),
            Req {
                token: Some(seller),
                consistency,
            },
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.data("listings.totalCount").as_i64().expect("totalCount")
}

async fn create_draft(app: &TestApp, seller: &str, title: &str) -> String {
    let created = app
        .gql(
            CREATE,
            json!({ "input": lamp(title) }),
            Req {
                token: Some(seller),
                ..Req::default()
            },
        )
        .await;
    created
        .data("createListing.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_a_token_are_answered_by_the_replica_even_while_it_lags() {
    let standby = start_test_standby().await;
    let app = spawn_with_replica(&standby).await;
    let (seller, seller_id, _) = app
        .register("replica-reader@example.com", &["SELLER"])
        .await;

    standby.pause_replay().await.expect("pause replay");
    let token = create_draft(&app, &seller, "Paused lamp").await;
    // The primary shows the draft (a token the paused replica cannot
    // reach: the primary answers)…
    let before = served(&metrics(&app).await, "primary");
    assert_eq!(drafts(&app, &seller, &seller_id, Some(&token)).await, 1);
    assert_eq!(served(&metrics(&app).await, "primary"), before + 1.0);
    // …but a read without a token goes to the replica, which has not
    // replayed it (unless the monitor found it down at that moment: then
    // the primary answers, and the read is tried again).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = metric(&app, &reads("replica", "untokened")).await;
        let seen = drafts(&app, &seller, &seller_id, None).await;
        if metric(&app, &reads("replica", "untokened")).await == before + 1.0 {
            assert_eq!(
                seen, 0,
                "the paused replica showed a write it has not replayed"
            );
            break;
        }
        assert_eq!(seen, 1, "the primary answered without the draft");
        assert!(Instant::now() < deadline, "no read went to the replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    standby.resume_replay().await.expect("resume replay");
    let deadline = Instant::now() + DEADLINE;
    while drafts(&app, &seller, &seller_id, None).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the replica never showed the draft"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    standby.stop().await.expect("stop the standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_read_on_the_primary_while_the_replica_lags_and_on_the_replica_once_replayed() {
    let standby = start_test_standby().await;
    let app = spawn_with_replica(&standby).await;
    let (seller, seller_id, _) = app
        .register("replica-writer@example.com", &["SELLER"])
        .await;

    standby.pause_replay().await.expect("pause replay");
    let token = create_draft(&app, &seller, "Read your writes").await;
    // The bounded wait (200 ms by default) for the replica, then the
    // primary (or the primary at once if the monitor found the replica
    // down at that moment: then try again).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = metric(&app, &reads("primary", "lagging")).await;
        let started = Instant::now();
        assert_eq!(
            drafts(&app, &seller, &seller_id, Some(&token)).await,
            1,
            "a read with the write's token must show it"
        );
        let took = started.elapsed();
        if metric(&app, &reads("primary", "lagging")).await == before + 1.0 {
            assert!(took >= Duration::from_millis(200), "{took:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no read waited for the replica");
    }
    assert_eq!(metric(&app, &reads("replica", "caught_up")).await, 0.0);
    // The monitor sees the paused replica fall behind the primary's WAL.
    wait_metric(&app, "marketplace_replica_lag_bytes{replica=\"0\"}", |v| {
        v > 0.0
    })
    .await;

    standby.resume_replay().await.expect("resume replay");
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert_eq!(
            drafts(&app, &seller, &seller_id, Some(&token)).await,
            1,
            "every read with the token shows the write"
        );
        if metric(&app, &reads("replica", "caught_up")).await >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never answered the token:\n{}",
            metrics(&app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    standby.stop().await.expect("stop the standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_when_the_replica_is_down() {
    let standby = start_test_standby().await;
    let app = spawn_with_replica(&standby).await;
    let (seller, seller_id, _) = app.register("replica-down@example.com", &["SELLER"]).await;
    let token = create_draft(&app, &seller, "Still here").await;
    // The replica serves (once it has replayed the draft).
    let deadline = Instant::now() + DEADLINE;
    while drafts(&app, &seller, &seller_id, None).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the replica never showed the draft"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&app, &reads("replica", "untokened")).await >= 1.0);

    let page = metrics(&app).await;
    let (by_replica, by_primary) = (served(&page, "replica"), served(&page, "primary"));

    standby.stop().await.expect("stop the standby");
    for _ in 0..5 {
        assert_eq!(drafts(&app, &seller, &seller_id, None).await, 1);
        assert_eq!(drafts(&app, &seller, &seller_id, Some(&token)).await, 1);
    }
    // Every one of them answered by the primary, none by the replica.
    let page = metrics(&app).await;
    assert_eq!(served(&page, "replica"), by_replica, "{page}");
    assert_eq!(served(&page, "primary"), by_primary + 10.0, "{page}");
    wait_metric(&app, "marketplace_replica_up{replica=\"0\"}", |v| v == 0.0).await;
    assert_eq!(drafts(&app, &seller, &seller_id, None).await, 1);
}
