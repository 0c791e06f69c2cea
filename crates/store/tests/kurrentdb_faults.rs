//! Connection loss on the KurrentDB backend, provoked in the wire test
//! server: a subscription re-subscribes from the last event it delivered
//! (no gap, no duplicate), and an append to an unreachable node is a
//! retryable error whose retry (same event ids) appends exactly once.

use std::time::{Duration, Instant};

use futures::StreamExt;
use marketplace_store::{
    EventMetadata, EventStore, EventStream, ExpectedRevision, KurrentDbEventStore, NewEvent,
    Position, RecordedEvent, StoreError, StreamId,
};
use serde_json::json;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: json!({ "n": n }),
        metadata: EventMetadata::default(),
    }
}

async fn setup() -> (kurrentdb_testserver::TestServer, KurrentDbEventStore) {
    let server = kurrentdb_testserver::spawn().await.expect("test server");
    let store = KurrentDbEventStore::connect(&server.connection_string()).expect("connect");
    (server, store)
}

/// Appends, retrying transient failures with the same event ids until the
/// deadline.
async fn append_retrying(
    store: &KurrentDbEventStore,
    stream: &StreamId,
    events: Vec<NewEvent>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    loop {
        match store
            .append(stream, ExpectedRevision::Any, events.clone())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn next(sub: &mut EventStream) -> RecordedEvent {
    match tokio::time::timeout(DEADLINE, sub.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("no event from the subscription: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_a_lost_connection_without_gaps_or_duplicates() {
    let (server, store) = setup().await;
    let stream = StreamId::new("order", Uuid::now_v7()).expect("stream");
    let mut sub = store
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    let mut written = Vec::new();
    for n in 0..5 {
        let e = event(n);
        written.push(e.event_id);
        append_retrying(&store, &stream, vec![e])
            .await
            .expect("append");
    }
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.push(next(&mut sub).await);
    }

    server.drop_connections();
    for n in 5..10 {
        let e = event(n);
        written.push(e.event_id);
        append_retrying(&store, &stream, vec![e])
            .await
            .expect("append after the loss");
    }
    for _ in 5..10 {
        delivered.push(next(&mut sub).await);
    }

    assert_eq!(
        delivered.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        written,
        "the subscription skipped or repeated an event across the loss"
    );
    assert!(delivered.windows(2).all(|w| w[0].position < w[1].position));
    let extra = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(extra.is_err(), "an extra event was delivered: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_to_an_unreachable_node_is_retryable_and_its_retry_appends_once() {
    let (server, store) = setup().await;
    let stream = StreamId::new("wallet", Uuid::now_v7()).expect("stream");
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("first append");

    server.set_unreachable(true);
    let batch = vec![event(1), event(2)];
    match store
        .append(&stream, ExpectedRevision::Exact(0), batch.clone())
        .await
    {
        Err(e) => assert!(e.is_retryable(), "not retryable: {e}"),
        Ok(out) => panic!("appended to an unreachable node: {out:?}"),
    }

    server.set_unreachable(false);
    let started = Instant::now();
    let outcome = loop {
        match store
            .append(&stream, ExpectedRevision::Exact(0), batch.clone())
            .await
        {
            Ok(out) => break out,
            Err(e) if e.is_retryable() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the retry failed: {e}"),
        }
    };
    assert_eq!(outcome.revision, 2);
    // Retrying once more, as a client unsure of the outcome would, is the
    // same append.
    assert_eq!(
        store
            .append(&stream, ExpectedRevision::Exact(0), batch.clone())
            .await
            .expect("idempotent retry"),
        outcome
    );
    let stored = store.read_stream(&stream, 0).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>()[1..],
        batch.iter().map(|e| e.event_id).collect::<Vec<_>>()[..]
    );
    assert_eq!(stored.len(), 3);
}
