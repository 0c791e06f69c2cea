//! `marketplace audit …` as an operator runs it, against a database a
//! running marketplace serves: the hash chains verify, `replay-check`
//! finds the live read models equal to a replay of the log, and after a
//! read-model row is altered behind the projector's back it fails and names
//! the table.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_api::{Application, Settings};
use marketplace_cli::seed::{self, SeedArgs};
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_keys::MasterKey;
use marketplace_projections::ProjectionState;
use marketplace_store::{EventStore, PostgresEventStore};

fn marketplace(args: &[&str], database_url: &str, master: &MasterKey) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(args)
        .args(["--database-url", database_url])
        .env("MARKETPLACE_MASTER_KEY", master.to_hex())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the binary")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_check_passes_on_a_served_database_and_names_a_tampered_table() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    // A realistic log: orders in every state, payouts, moderated reviews.
    let master = marketplace_keys::MasterKey::generate();
    seed::run(
        &db.url,
        &master,
        &SeedArgs {
            sellers: 3,
            listings_per_seller: 4,
            buyers: 8,
            orders: 24,
            seed: 11,
            concurrency: 4,
            ..SeedArgs::default()
        },
    )
    .await
    .expect("seed");

    // Serve it: the projectors fold the log into the live read models.
    let app = Application::build(Settings {
        master_key: master.clone(),
        ..Settings::for_database(db.url.clone())
    })
    .await
    .expect("build");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let pool = db.pool().await;
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresEventStore::new(pool.clone()).await.expect("store"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = marketplace_projections::status::status(&pool, store.as_ref())
            .await
            .expect("status");
        if !all.is_empty()
            && all
                .iter()
                .all(|p| p.state == ProjectionState::Running && p.lag_events == 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let verified = marketplace(&["audit", "verify"], &db.url, &master);
    assert!(verified.status.success(), "{}", text(&verified));

    let parity = marketplace(&["audit", "replay-check"], &db.url, &master);
    assert!(parity.status.success(), "{}", text(&parity));
    assert!(
        String::from_utf8_lossy(&parity.stdout).contains("parity"),
        "{}",
        text(&parity)
    );

    // Someone edits a read model directly: the replay no longer matches.
    let schema: String = sqlx::query_scalar(
        "SELECT schema_name FROM projection_checkpoints WHERE name = 'listings' AND live",
    )
    .fetch_one(&pool)
    .await
    .expect("the live listings build");
    let changed = sqlx::query(&format!(
        "UPDATE \"{schema}\".rm_listings SET title = 'tampered' \
         WHERE listing_id = (SELECT listing_id FROM \"{schema}\".rm_listings LIMIT 1)"
    ))
    .execute(&pool)
    .await
    .expect("tamper")
    .rows_affected();
    assert_eq!(changed, 1);

    let differs = marketplace(&["audit", "replay-check"], &db.url, &master);
    assert!(!differs.status.success(), "{}", text(&differs));
    let stdout = String::from_utf8_lossy(&differs.stdout);
    // That table, and only that one.
    let named: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("DIFFERENT:"))
        .collect();
    assert_eq!(
        named,
        ["DIFFERENT: listings.rm_listings"],
        "{}",
        text(&differs)
    );
    // Nothing of the check is left behind.
    let scratch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rmverify\\_%'")
            .fetch_one(&pool)
            .await
            .expect("count scratch schemas");
    assert_eq!(scratch, 0);

    let _ = stop.send(());
    served.await.expect("join").expect("served");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trace_prints_each_events_trace_id_beside_its_correlation_id() {
    use marketplace_store::{EventMetadata, ExpectedRevision, NewEvent, StreamId};
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let master = MasterKey::generate();
    let pool = db.pool().await;
    marketplace_api::database::migrate(&pool)
        .await
        .expect("migrate");
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let correlation = uuid::Uuid::now_v7();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let event = |traceparent: Option<&str>| NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: serde_json::json!({}),
        metadata: EventMetadata {
            correlation_id: Some(correlation),
            traceparent: traceparent.map(str::to_owned),
            ..EventMetadata::default()
        },
    };
    let stream = StreamId::new("test", uuid::Uuid::now_v7()).expect("stream");
    store
        .append(
            &stream,
            ExpectedRevision::NoStream,
            // One written before traces existed, one inside a trace.
            vec![event(None), event(Some(traceparent))],
        )
        .await
        .expect("append");
    drop(store);
    pool.close().await;

    let out = marketplace(
        &["audit", "trace", &correlation.to_string()],
        &db.url,
        &master,
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out));
    for line in &lines {
        assert_eq!(line["correlationId"], correlation.to_string(), "{line}");
    }
    assert_eq!(lines[0]["traceId"], serde_json::Value::Null, "{}", lines[0]);
    assert_eq!(
        lines[1]["traceId"], "0af7651916cd43dd8448eb211c80319c",
        "{}",
        lines[1]
    );
}
