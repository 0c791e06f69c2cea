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

/// Subscribers in the appending process read the live tail from memory
/// (`postgres::recent`); what they get must be exactly what the table
/// holds, also when another process's appends interleave.
#[tokio::test]
async fn the_live_tail_read_from_memory_is_what_the_table_holds() {
    use futures::StreamExt;
    use marketplace_store::{
        EventMetadata, EventStore, ExpectedRevision, NewEvent, Position, StreamAppend, StreamId,
    };

    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("migrate");
    let (here, there, reader) = (
        PostgresEventStore::new(pool.clone()).await.expect("store"),
        PostgresEventStore::new(pool.clone()).await.expect("store"),
        PostgresEventStore::new(pool.clone()).await.expect("store"),
    );
    let event = |n: i64| NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: serde_json::json!({
            "n": n, "big": i64::MAX, "neg": -n, "text": "é ✓ \"quoted\" \n",
            "nested": { "list": [1, 2, { "deep": null }], "flag": true },
        }),
        metadata: EventMetadata {
            actor: Some(format!("actor-{n}")),
            correlation_id: Some(uuid::Uuid::now_v7()),
            ..EventMetadata::default()
        },
    };
    let stream = || StreamId::new("order", uuid::Uuid::now_v7()).expect("stream");
    let mut live = here
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    for round in 0..3 {
        here.append(
            &stream(),
            ExpectedRevision::NoStream,
            vec![event(round), event(round + 1)],
        )
        .await
        .expect("append here");
        there
            .append(
                &stream(),
                ExpectedRevision::NoStream,
                vec![event(round + 10)],
            )
            .await
            .expect("append there");
        here.append_streams(
            vec![
                StreamAppend {
                    stream: stream(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![event(round + 20)],
                },
                StreamAppend {
                    stream: stream(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![event(round + 30), event(round + 31)],
                },
            ],
            None,
        )
        .await
        .expect("append across streams here");
    }
    let table = reader.read_all(Position::START, 100).await.expect("read");
    assert_eq!(table.len(), 18);
    // Subscriptions from every position, caught up from memory where it
    // holds the run.
    for from in [0u64, 3, 4, 9, 16] {
        let mut sub = here.subscribe_all(Position(from)).await.expect("subscribe");
        let mut got = Vec::new();
        while got.len() < table.len() - from as usize {
            got.push(sub.next().await.expect("live").expect("event"));
        }
        assert_eq!(got, table[from as usize..], "subscribed after {from}");
    }
    let mut delivered = Vec::new();
    while delivered.len() < table.len() {
        delivered.push(live.next().await.expect("live").expect("event"));
    }
    assert_eq!(delivered, table, "the live subscription");
}
