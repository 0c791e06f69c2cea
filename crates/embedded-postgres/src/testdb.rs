//! Test-database helper shared by every crate's integration tests.
//!
//! Each test calls [`TestDatabase::create`] to get a brand-new, empty database
//! with a unique name, so tests can run in parallel without sharing state.
//! The databases live on one PostgreSQL cluster per test process:
//!
//! * if `DATABASE_URL` is set, the server it points to (databases are created
//!   through its `postgres` maintenance database);
//! * otherwise an embedded throwaway cluster ([`EmbeddedPostgres::start_ephemeral`]),
//!   started lazily on first use.
//!
//! Every `#[tokio::test]` runs on its own runtime, so nothing runtime-bound is
//! shared between tests: the shared state is only the cluster handle (whose
//! supervisor is a `std::process::Child`, kept in a static so its pipe stays
//! open for the life of the process) and URLs. Connections are opened per call.
//! When the test process exits, the embedded cluster shuts down and its
//! directory is deleted by its supervisor.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

use crate::launcher::{percent_encode, EmbeddedPostgres};

/// Maximum number of connections in a pool returned by [`TestDatabase::pool`].
const POOL_MAX_CONNECTIONS: u32 = 20;

/// The cluster all tests of this process share.
#[derive(Debug)]
enum SharedCluster {
    /// The server named by `DATABASE_URL`.
    External {
        /// `DATABASE_URL` as given.
        url: String,
    },
    /// An embedded cluster owned by this process (never stopped explicitly:
    /// it stops when the process exits).
    Embedded(Box<EmbeddedPostgres>),
}

impl SharedCluster {
    fn admin_url(&self) -> String {
        match self {
            SharedCluster::External { url } => with_database(url, "postgres"),
            SharedCluster::Embedded(pg) => pg.admin_url(),
        }
    }

    fn database_url(&self, name: &str) -> String {
        match self {
            SharedCluster::External { url } => with_database(url, name),
            SharedCluster::Embedded(pg) => pg.database_url(name),
        }
    }
}

/// Started at most once per process; a start failure is remembered so that
/// every later test fails fast with the same message.
static CLUSTER: OnceCell<Result<SharedCluster, String>> = OnceCell::const_new();

async fn shared_cluster() -> &'static SharedCluster {
    let cluster = CLUSTER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => Ok(SharedCluster::External { url }),
                _ => EmbeddedPostgres::start_ephemeral()
                    .await
                    .map(|pg| SharedCluster::Embedded(Box::new(pg)))
                    .map_err(|err| err.to_string()),
            }
        })
        .await;
    match cluster {
        Ok(cluster) => cluster,
        Err(message) => panic!("could not start the embedded PostgreSQL test cluster: {message}"),
    }
}

/// Replaces the database (path) part of a `postgres://` URL, keeping any query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    format!(
        "{}/{}{}",
        &base[..authority_end],
        percent_encode(database),
        query
    )
}

/// A fresh, empty database on the shared test cluster.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Connection URL of the database.
    pub url: String,
    /// Name of the database (`t_<uuid>`).
    pub name: String,
}

impl TestDatabase {
    /// Creates a brand-new, empty database with a unique name (`t_<uuid>`) and
    /// returns its URL. Starts the shared embedded cluster on first use.
    ///
    /// # Panics
    ///
    /// With a descriptive message if the cluster cannot be started or the
    /// database cannot be created (this is test support).
    pub async fn create() -> TestDatabase {
        let cluster = shared_cluster().await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin_url = cluster.admin_url();
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| {
                panic!("could not connect to the test cluster at {admin_url}: {err}")
            });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| {
                panic!("could not create test database {name} via {admin_url}: {err}")
            });
        let _ = conn.close().await;
        TestDatabase {
            url: cluster.database_url(&name),
            name,
        }
    }

    /// A connection pool to this database (at most 20 connections), bound to
    /// the calling test's runtime.
    ///
    /// # Panics
    ///
    /// If the database cannot be reached.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(POOL_MAX_CONNECTIONS)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("could not connect to test database {}: {err}", self.url))
    }
}

/// Admin URL (superuser, `postgres` database) of the shared test cluster, for
/// tests that need superuser access. Starts the cluster on first use.
pub async fn test_cluster_admin_url() -> String {
    shared_cluster().await.admin_url()
}

/// A hot standby of the shared test cluster ([`EmbeddedPostgres::start_standby`]
/// from its superuser), on its own port: every test database, those created
/// later included, is readable there (`standby.database_url(&db.name)`) as
/// soon as it has replayed them. Each call clones a new one, which the test
/// may pause, stop or crash without disturbing any other test. With
/// `DATABASE_URL` set, that server is cloned: it must accept replication
/// connections from its role and run the local binaries' major version.
///
/// # Panics
///
/// If the cluster cannot be cloned or the standby does not start.
pub async fn start_test_standby() -> EmbeddedPostgres {
    let primary = shared_cluster().await.admin_url();
    EmbeddedPostgres::start_standby(&primary)
        .await
        .unwrap_or_else(|err| panic!("could not start a standby of the test cluster: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app?sslmode=disable", "postgres"),
            "postgres://u:p@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t_1"), "postgres://h/t_1");
        assert_eq!(
            with_database("postgresql://h:1/", "a b"),
            "postgresql://h:1/a%20b"
        );
    }

    #[tokio::test]
    async fn databases_are_fresh_and_isolated() {
        let a = TestDatabase::create().await;
        let b = TestDatabase::create().await;
        assert_ne!(a.name, b.name);
        let pool = a.pool().await;
        sqlx::query("create table t (x int)")
            .execute(&pool)
            .await
            .expect("create table");
        let pool_b = b.pool().await;
        let count: i64 = sqlx::query_scalar("select count(*) from pg_tables where tablename = 't'")
            .fetch_one(&pool_b)
            .await
            .expect("count");
        assert_eq!(count, 0);
        let mut admin = PgConnection::connect(&test_cluster_admin_url().await)
            .await
            .expect("admin");
        let superuser: bool =
            sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
                .fetch_one(&mut admin)
                .await
                .expect("rolsuper");
        assert!(superuser);
    }

    #[tokio::test]
    async fn a_standby_replays_what_the_primary_commits_unless_paused() {
        let db = TestDatabase::create().await;
        let standby = start_test_standby().await;
        let primary = db.pool().await;
        sqlx::query("create table t (x int)")
            .execute(&primary)
            .await
            .expect("create table");
        let replica = standby.database_url(&db.name);
        let count = || async {
            let Ok(mut conn) = PgConnection::connect(&replica).await else {
                return None;
            };
            let n: Option<i64> = sqlx::query_scalar("select count(*) from t")
                .fetch_one(&mut conn)
                .await
                .ok();
            let _ = conn.close().await;
            n
        };
        let until = |want: i64| async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                if count().await == Some(want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the standby never showed {want} rows"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        until(0).await;
        standby.pause_replay().await.expect("pause");
        let paused_at = standby.replay_lsn().await.expect("lsn").expect("a standby");
        sqlx::query("insert into t values (1)")
            .execute(&primary)
            .await
            .expect("insert");
        assert_eq!(count().await, Some(0), "a paused standby applied a commit");
        assert_eq!(
            standby.replay_lsn().await.expect("lsn"),
            Some(paused_at),
            "a paused standby moved on"
        );
        standby.resume_replay().await.expect("resume");
        until(1).await;
        let slot = standby.replication_slot().expect("a slot").to_owned();
        let slots = || async {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_replication_slots where slot_name = $1",
            )
            .bind(&slot)
            .fetch_one(&primary)
            .await
            .expect("slots");
            n
        };
        assert_eq!(slots().await, 1, "the standby holds its slot");
        standby.stop().await.expect("stop the standby");
        assert_eq!(slots().await, 0, "stopping the standby drops its slot");
    }

    // A second test in the same binary, on a different runtime, reuses the cluster.
    #[tokio::test]
    async fn cluster_is_shared_across_runtimes() {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        let one: i32 = sqlx::query_scalar("select 1")
            .fetch_one(&pool)
            .await
            .expect("select 1");
        assert_eq!(one, 1);
    }
}
