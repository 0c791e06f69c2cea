//! Snapshot storage on the backends that keep snapshots (Postgres, memory):
//! a snapshot reads back; one of a lower revision never replaces a higher
//! one; one of another version always does.

use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::postgres::{migrate, PostgresEventStore};
use marketplace_store::{EventStore, InMemoryEventStore, Position, Snapshot, StreamId};
use serde_json::json;
use uuid::Uuid;

fn snapshot(revision: u64, version: u32, n: u64) -> Snapshot {
    Snapshot {
        revision,
        position: Position(revision * 10),
        version,
        state: json!({ "n": n, "nested": { "set": [1, 2, 3] } }),
    }
}

async fn keeps_the_newest(store: &dyn EventStore) {
    let stream = StreamId::new("listing", Uuid::now_v7()).expect("stream");
    let other = StreamId::new("listing", Uuid::now_v7()).expect("stream");
    assert_eq!(store.read_snapshot(&stream).await.expect("read"), None);
    store
        .write_snapshot(&stream, snapshot(999, 1, 1))
        .await
        .expect("write");
    assert_eq!(
        store.read_snapshot(&stream).await.expect("read"),
        Some(snapshot(999, 1, 1))
    );
    // A late writer of an older state loses.
    store
        .write_snapshot(&stream, snapshot(499, 1, 2))
        .await
        .expect("write");
    assert_eq!(
        store.read_snapshot(&stream).await.expect("read"),
        Some(snapshot(999, 1, 1))
    );
    // A newer one, or one of another version (new code), replaces it.
    store
        .write_snapshot(&stream, snapshot(1_999, 1, 3))
        .await
        .expect("write");
    assert_eq!(
        store.read_snapshot(&stream).await.expect("read"),
        Some(snapshot(1_999, 1, 3))
    );
    store
        .write_snapshot(&stream, snapshot(10, 2, 4))
        .await
        .expect("write");
    assert_eq!(
        store.read_snapshot(&stream).await.expect("read"),
        Some(snapshot(10, 2, 4))
    );
    assert_eq!(
        store.read_snapshot(&other).await.expect("read"),
        None,
        "per stream"
    );
}

#[tokio::test]
async fn postgres_keeps_the_newest_snapshot_per_stream() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("migrate");
    let store = PostgresEventStore::new(pool).await.expect("store");
    keeps_the_newest(&store).await;
}

#[tokio::test]
async fn memory_keeps_the_newest_snapshot_per_stream() {
    keeps_the_newest(&InMemoryEventStore::new()).await;
}
