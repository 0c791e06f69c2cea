//! Signed head anchors on the KurrentDB backend (sparse `$all` positions),
//! over the real `kurrentdb` client and a `kurrentdb-testserver`: an anchor
//! of the head holds while the log only grows, and once the newest event
//! is cut on the node's disk — which no hash chain can notice — the check
//! names the anchored position the log no longer holds.

use marketplace_keys::anchor::{anchor_head, check, AnchorKey};
use marketplace_store::{
    EventMetadata, EventStore, ExpectedRevision, KurrentDbEventStore, NewEvent, StreamId,
};
use serde_json::json;
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: json!({ "n": n }),
        metadata: EventMetadata::default(),
    }
}

fn key() -> AnchorKey {
    AnchorKey::from_hex(&"5e".repeat(32)).expect("anchor key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_on_kurrentdb_holds_while_the_log_grows_and_catches_the_last_event_cut() {
    let server = kurrentdb_testserver::spawn().await.expect("test server");
    let store = KurrentDbEventStore::connect(&server.connection_string())
        .expect("connect")
        .with_namespace(&format!("t{}", Uuid::new_v4().simple()))
        .expect("namespace");
    let stream = StreamId::new("test", Uuid::now_v7()).expect("stream");
    store
        .append(
            &stream,
            ExpectedRevision::NoStream,
            (0..3).map(event).collect(),
        )
        .await
        .expect("append");

    let key = key();
    let anchor = anchor_head(&store, &key, chrono::Utc::now())
        .await
        .expect("anchor the head");
    let head = store.head().await.expect("head");
    assert_eq!(anchor.position, head.0, "the head is what is anchored");
    assert!(
        anchor.position > 3,
        "KurrentDB positions are sparse: {}",
        anchor.position
    );
    let stored = store.read_stream(&stream, 0).await.expect("read");
    assert_eq!(
        Some(anchor.hash.as_str()),
        stored.last().and_then(|e| e.metadata.hash.as_deref()),
        "it signs the head event's chain hash"
    );
    let report = check(&store, std::slice::from_ref(&anchor), &key.verifying_key())
        .await
        .expect("check");
    assert_eq!((report.held, report.breaks.len()), (1, 0), "{report:?}");
    assert_eq!(report.unanchored(), 0);

    // The log grows: the anchor still holds, and the new head is not
    // anchored yet.
    store
        .append(&stream, ExpectedRevision::Exact(2), vec![event(3)])
        .await
        .expect("append");
    let report = check(&store, std::slice::from_ref(&anchor), &key.verifying_key())
        .await
        .expect("check");
    assert_eq!((report.held, report.breaks.len()), (1, 0), "{report:?}");
    assert!(report.unanchored() > 0, "{report:?}");

    // Anchor the new head, then cut it on the node's disk.
    let newest = anchor_head(&store, &key, chrono::Utc::now())
        .await
        .expect("anchor the new head");
    assert!(
        server.log().cut_last(),
        "the test server cut its last record"
    );
    let anchors = [anchor, newest.clone()];
    let report = check(&store, &anchors, &key.verifying_key())
        .await
        .expect("check");
    assert_eq!(report.held, 1, "the older anchor still holds: {report:?}");
    assert_eq!(report.breaks.len(), 1, "{report:?}");
    assert!(
        report.breaks[0].contains(&format!("position {}", newest.position))
            && report.breaks[0].contains("no longer holds"),
        "{:?}",
        report.breaks
    );

    // An anchor signed by another key proves nothing.
    let forged = anchor_head(
        &store,
        &AnchorKey::from_hex(&"07".repeat(32)).expect("key"),
        chrono::Utc::now(),
    )
    .await
    .expect("anchor");
    let report = check(&store, &[forged], &key.verifying_key())
        .await
        .expect("check");
    assert_eq!(report.held, 0);
    assert!(
        report.breaks[0].contains("not signed"),
        "{:?}",
        report.breaks
    );
}
