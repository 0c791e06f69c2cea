//! `marketplace bench append` and `bench project` as smoke runs on a real
//! PostgreSQL (the shared test cluster): each run works in a scratch
//! database of its own and drops it when it ends, together with one that
//! an earlier run left behind; what they measure is checked by the
//! benches themselves (every append acknowledged, every projection at the
//! head), which fail the run otherwise. Each append mode waits for a quiet
//! disk first.

use marketplace_cli::bench::append::AppendArgs;
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

    let args = AppendArgs {
        writers: 4,
        streams: 10,
        events: 200,
        disk_quiet_secs: 1,
    };
    let figures = bench::append::measure(&db.url, &args)
        .await
        .expect("append");
    for (mode, f) in [("grouped", &figures.grouped), ("single", &figures.single)] {
        assert!(
            f.quiet.reached && f.quiet.waited >= std::time::Duration::from_secs(1),
            "{mode}: the mode waited for a second of quiet commits ({:?})",
            f.quiet
        );
        assert!(f.events_per_sec > 0.0 && f.p50 <= f.p99, "{mode}: {f:?}");
    }
    assert_eq!(
        scratch_databases(&mut admin, "append").await,
        Vec::<String>::new(),
        "the run dropped the leftover and its own database"
    );
    sqlx::query("CREATE DATABASE marketplace_bench_append_leftover_main")
        .execute(&mut admin)
        .await
        .expect("a leftover");
    bench::run(&db.url, &master, BenchCommand::Append(args))
        .await
        .expect("append");
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
