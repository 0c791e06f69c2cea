//! Snapshot storage on every backend (Postgres, KurrentDB, memory):
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
async fn kurrentdb_keeps_the_newest_snapshot_per_stream_outside_the_log() {
    use marketplace_store::{
        EventMetadata, ExpectedRevision, KurrentDbEventStore, NewEvent, Position,
    };
    let server = kurrentdb_testserver::spawn().await.expect("test server");
    let store = KurrentDbEventStore::connect(&server.connection_string())
        .expect("connect")
        .with_namespace(&format!("t{}", Uuid::new_v4().simple()))
        .expect("namespace");
    let stream = StreamId::new("listing", Uuid::now_v7()).expect("stream");
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: json!({ "n": 1 }),
        metadata: EventMetadata::default(),
    };
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event])
        .await
        .expect("append");
    let head = store.head().await.expect("head");
    keeps_the_newest(&store).await;
    // Snapshots are not events: the log and its head are as they were.
    let all = store
        .read_all(Position::START, 100)
        .await
        .expect("read_all");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(store.head().await.expect("head"), head);
}

#[tokio::test]
async fn memory_keeps_the_newest_snapshot_per_stream() {
    keeps_the_newest(&InMemoryEventStore::new()).await;
}
