//! `marketplace bench read` as a smoke run: a catalogue of 20 listings seeded
//! through the command path into a real PostgreSQL (the shared test cluster
//! of `marketplace_embedded_postgres::testdb`), the API served in-process, and every
//! shape driven over HTTP for a fraction of a second. Each must answer data
//! and no errors.

use marketplace_cli::bench::read::{self, ReadArgs};
use marketplace_cli::seed;
use marketplace_embedded_postgres::testdb::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_answers_data_and_no_errors_on_a_tiny_catalogue() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let plan = read::seed_plan(20, 40, 6).expect("plan");
    let master = marketplace_keys::MasterKey::generate();
    seed::run(&db.url, &master, &plan).await.expect("seed");

    // A title word and the category of a listing that stayed published: the
    // default search word and category may not occur among 20 listings.
    let pool = db.pool().await;
    let (word, category): (String, String) = sqlx::query_as(
        "SELECT split_part(c.data->>'title', ' ', 1), c.data->>'category' FROM events c \
         WHERE c.event_type = 'listing.created' \
         AND EXISTS (SELECT 1 FROM events p WHERE p.stream_id = c.stream_id AND p.event_type = 'listing.published') \
         AND NOT EXISTS (SELECT 1 FROM events d WHERE d.stream_id = c.stream_id AND d.event_type = 'listing.delisted') \
         ORDER BY c.position LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("a published listing");
    pool.close().await;

    let args = ReadArgs {
        concurrency: 2,
        seconds: 0.2,
        warmup: 0.0,
        search: word,
        category,
        ..ReadArgs::default()
    };
    let report = read::measure(&db.url, &master, &args)
        .await
        .expect("measure");

    let keys: Vec<&str> = report.shapes.iter().map(|s| s.key).collect();
    assert_eq!(
        keys,
        [
            "typename",
            "newest",
            "price-asc",
            "price-desc",
            "rating",
            "search",
            "category",
            "facets",
            "listing",
            "my-orders",
            "reviews"
        ]
    );
    for s in &report.shapes {
        assert!(s.requests > 0, "{}: no request answered in time", s.label);
        assert_eq!(s.errors, 0, "{}: {:?}", s.label, s.error_sample);
        assert!(s.rows > 0, "{}: answered no data", s.label);
        assert!(s.p50 <= s.p99, "{}: p50 above p99", s.label);
    }
    assert_eq!(report.listings.0, 20);
    report.check().expect("no shape failed");
}
