//! `marketplace bench checkout` as a smoke run on a real PostgreSQL (the
//! shared test cluster): every case, a few hundred orders by eight buyers
//! over HTTP, with the warm-up. What it asserts is what the bench reports:
//! every placement answered, every order final, exactly the stock sold in
//! (d) and the rest rejected, and the books balanced (the bench fails the
//! case otherwise); and that the run drops its scratch databases, and one
//! that an earlier run left behind.

use marketplace_cli::bench::checkout::{self, Case, CheckoutArgs};
use marketplace_embedded_postgres::testdb::TestDatabase;
use sqlx::{Connection, PgConnection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_settles_every_order_and_balances_the_books() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let args = CheckoutArgs {
        cases: vec![Case::D, Case::A, Case::B, Case::C],
        concurrency: 8,
        orders: 300,
        past_orders: 500,
        checkout_in_saga: false,
        warm_up: true,
        disk_quiet_secs: 1,
    };
    // What a run that did not finish leaves behind.
    let mut admin = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("CREATE DATABASE marketplace_bench_checkout_leftover_a")
        .execute(&mut admin)
        .await
        .expect("a leftover");

    let figures = checkout::measure(&db.url, &args).await.expect("measure");

    let scratch: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE starts_with(datname, 'marketplace_bench_checkout_')",
    )
    .fetch_all(&mut admin)
    .await
    .expect("list databases");
    assert_eq!(
        scratch,
        Vec::<String>::new(),
        "the run dropped the leftover and its own scratch databases"
    );

    let cases: Vec<Case> = figures.iter().map(|f| f.case).collect();
    assert_eq!(cases, [Case::A, Case::B, Case::C, Case::D], "in case order");
    for f in &figures {
        assert_eq!(f.failed, 0, "{:?}: no placement failed", f.case);
        assert_eq!(f.placed, 300, "{:?}: every order placed", f.case);
        assert_eq!(
            f.confirmed + f.rejected,
            300,
            "{:?}: every order final",
            f.case
        );
        assert!(f.p50 <= f.p99, "{:?}: percentiles in order", f.case);
        assert!(f.peak_rss > 0, "{:?}: a resident set was read", f.case);
        assert!(
            f.quiet.waited >= std::time::Duration::from_secs(1),
            "{:?}: the sale waited for a second of quiet commits ({:?})",
            f.case,
            f.quiet
        );
    }
    for f in &figures[..3] {
        assert_eq!(
            f.confirmed, 300,
            "{:?}: deep stock sells every order",
            f.case
        );
    }
    let d = &figures[3];
    assert_eq!(d.confirmed, 30, "exactly the stock (a tenth) sells");
    assert_eq!(d.rejected, 270);
}
