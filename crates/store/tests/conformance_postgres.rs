//! The conformance suite against the Postgres backend, on a fresh database
//! per test in the shared embedded test cluster (or `DATABASE_URL`).

use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::postgres::{migrate, PostgresEventStore};

async fn fresh_store() -> PostgresEventStore {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("migrate");
    PostgresEventStore::new(pool).await.expect("store")
}

marketplace_store::conformance_suite!(fresh_store());
