//! Crashing a cluster and starting it again, through the public API only,
//! as a recovery test in another crate would.

use std::time::Duration;

use marketplace_embedded_postgres::{ClusterLifetime, EmbeddedError, EmbeddedPostgres};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_crash_cuts_pooled_connections_and_the_restart_serves_the_same_data_on_the_same_port() {
    let pg = EmbeddedPostgres::start_ephemeral()
        .await
        .expect("start ephemeral cluster");
    let (port, root) = (pg.port(), pg.cluster_dir().to_path_buf());
    pg.ensure_database("kept").await.expect("create database");
    let url = pg.database_url("kept");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("pool");
    sqlx::raw_sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .execute(&pool)
        .await
        .expect("committed before the crash");
    let mut pooled = pool.acquire().await.expect("a pooled connection");

    pg.stop_immediate().await.expect("immediate stop");
    let log = std::fs::read_to_string(pg.log_file()).expect("server log");
    assert!(log.contains("received immediate shutdown request"), "{log}");
    assert!(
        sqlx::query("SELECT 1").execute(&mut *pooled).await.is_err(),
        "a pooled connection survived the crash"
    );
    assert!(
        sqlx::query("SELECT 1").execute(&pool).await.is_err(),
        "the pool reached a server that is down"
    );
    pg.stop_immediate()
        .await
        .expect("stopping a stopped server does nothing");

    pg.start_again().await.expect("start again");
    assert_eq!(pg.port(), port);
    assert_eq!(pg.database_url("kept"), url);
    assert!(
        sqlx::query("SELECT 1").execute(&mut *pooled).await.is_err(),
        "a connection from before the crash works again"
    );
    drop(pooled);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .expect("the pool connects anew after the restart");
    assert_eq!(count, 1, "the committed row survived the crash");

    // Both steps at once, with a fresh connection on either side.
    let mut before = PgConnection::connect(&url).await.expect("connect");
    pg.crash_and_restart().await.expect("crash and restart");
    assert!(sqlx::query("SELECT 1").execute(&mut before).await.is_err());
    let mut after = PgConnection::connect(&url).await.expect("connect after");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut after)
        .await
        .expect("count");
    assert_eq!(count, 1);
    after.close().await.expect("close");
    pool.close().await;

    pg.stop().await.expect("stop");
    assert!(!root.exists(), "{} was not removed", root.display());
}

#[tokio::test]
async fn a_reused_cluster_is_neither_crashed_nor_restarted() {
    let dir = std::env::temp_dir().join(format!(
        "marketplace-crash-reuse-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let owner = EmbeddedPostgres::start_or_reuse(&dir).await.expect("start");
    let reused = EmbeddedPostgres::start_or_reuse(&dir).await.expect("reuse");
    assert_eq!(reused.lifetime(), ClusterLifetime::Reused);
    assert!(matches!(
        reused.crash_and_restart().await,
        Err(EmbeddedError::NotOwned { .. })
    ));
    assert!(matches!(
        reused.start_again().await,
        Err(EmbeddedError::NotOwned { .. })
    ));
    let conn = PgConnection::connect(&owner.admin_url())
        .await
        .expect("the owner's server still runs");
    conn.close().await.expect("close");

    // The owner may crash it, and finds its persistent data again.
    owner.crash_and_restart().await.expect("crash and restart");
    let conn = PgConnection::connect(&owner.admin_url())
        .await
        .expect("connect after restart");
    conn.close().await.expect("close");
    let cluster_dir = owner.cluster_dir().to_path_buf();
    reused.stop().await.expect("stop reused");
    owner.stop().await.expect("stop owner");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cluster_dir);
}
