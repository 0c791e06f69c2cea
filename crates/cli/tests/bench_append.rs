//! `marketplace bench append` and `bench project` as smoke runs on a real
//! PostgreSQL (the shared test cluster): each run works in a scratch
//! database of its own and drops it when it ends, together with one that
//! an earlier run left behind; what they measure is checked by the
//! benches themselves (every append acknowledged, every projection at the
//! head), which fail the run otherwise.

use marketplace_cli::bench::{self, BenchCommand};
use marketplace_embedded_postgres::testdb::TestDatabase;
use sqlx::{Connection, PgConnection};

async fn scratch_databases(admin: &mut PgConnection, bench: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
    )
    .bind(format!("marketplace_bench_{bench}_"))
    .fetch_all(admin)
    .await
    .expect("list databases")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_project_runs_leave_no_scratch_database_behind() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let master = marketplace_keys::MasterKey::generate();
    let mut admin = PgConnection::connect(&db.url).await.expect("connect");
    // What a run that did not finish leaves behind.
    sqlx::query("CREATE DATABASE marketplace_bench_append_leftover_main")
        .execute(&mut admin)
        .await
        .expect("a leftover");
    assert_eq!(scratch_databases(&mut admin, "append").await.len(), 1);

    let append = BenchCommand::Append {
        writers: 4,
        streams: 10,
        events: 200,
    };
    bench::run(&db.url, &master, append).await.expect("append");
    assert_eq!(
        scratch_databases(&mut admin, "append").await,
        Vec::<String>::new(),
        "the run dropped the leftover and its own database"
    );

    bench::run(&db.url, &master, BenchCommand::Project { events: 500 })
        .await
        .expect("project");
    assert_eq!(
        scratch_databases(&mut admin, "project").await,
        Vec::<String>::new(),
        "the run dropped its database"
    );
}
