//! The event store conformance suite: written once, run against every backend.
//!
//! Each check is a plain async function over a fresh store. A backend's test
//! file instantiates them all with [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! marketplace_store::conformance_suite!(fresh_store());
//! ```
//!
//! where `fresh_store()` is an async fn returning an empty store implementing
//! [`Conformance`].
//!
//! The checks of [`EventStore::append_streams`] run in full on a backend
//! that claims the capability ([`EventStore::multi_stream_appends`]); on one
//! that does not, each of them checks instead that the call is refused as
//! [`StoreError::Unsupported`] and writes nothing.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    AppendOutcome, EventMetadata, EventStore, ExpectedRevision, IdempotencyKey, IdempotencyRecord,
    InMemoryEventStore, NewEvent, Position, PostgresEventStore, RecordedEvent, StoreError,
    StreamAppend, StreamId,
};

/// What the suite needs beyond [`EventStore`]: a way to hold an append's
/// transaction open after it has taken its positions.
#[async_trait]
pub trait Conformance: EventStore + Clone {
    /// Appends, signals `at_gate` once positions are taken, and commits only
    /// after `release` fires.
    async fn append_held(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError>;
}

#[async_trait]
impl Conformance for InMemoryEventStore {
    async fn append_held(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_with_commit_gate(stream, expected, events, at_gate, release)
            .await
    }
}

#[async_trait]
impl Conformance for PostgresEventStore {
    async fn append_held(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_with_commit_gate(stream, expected, events, at_gate, release)
            .await
    }
}

/// Generous bound for "this must arrive"; only reached when a test fails.
const DEADLINE: Duration = Duration::from_secs(120);

fn new_stream(category: &str) -> StreamId {
    StreamId::new(category, Uuid::now_v7()).expect("valid stream id")
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema_version: 1,
        data: json!({ "n": n }),
        metadata: EventMetadata {
            actor: Some("conformance".into()),
            correlation_id: Some(Uuid::nil()),
            ..EventMetadata::default()
        },
    }
}

/// A fresh caller-scoped key carrying `request_hash`.
fn idempotency_key(request_hash: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: format!("{}:client-key", Uuid::now_v7()),
        request_hash: request_hash.into(),
    }
}

fn with_hash(key: &IdempotencyKey, request_hash: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: key.key.clone(),
        request_hash: request_hash.into(),
    }
}

fn expect_key_used(result: Result<AppendOutcome, StoreError>) -> IdempotencyRecord {
    match result {
        Err(StoreError::IdempotencyKeyUsed(record)) => *record,
        other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
    }
}

async fn collect(stream: &mut crate::EventStream, n: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(DEADLINE, stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended after {} of {n} events", out.len()),
            Err(_) => panic!("subscription delivered {} of {n} events in time", out.len()),
        }
    }
    out
}

/// The whole log, which must hold exactly `total` events.
async fn whole_log<S: Conformance>(store: &S, total: usize) -> Vec<RecordedEvent> {
    let log = store
        .read_all(Position::START, total + 10)
        .await
        .expect("read_all");
    assert_eq!(log.len(), total, "the log holds {} events", log.len());
    log
}

/// `n` one-event streams.
async fn seed_streams<S: Conformance>(store: &S, n: u64) {
    for n in 0..n {
        store
            .append(
                &new_stream("seed"),
                ExpectedRevision::NoStream,
                vec![event(n)],
            )
            .await
            .expect("seed");
    }
}

/// `writers` tasks, each appending `each` events to a stream of its own.
fn live_writers<S: Conformance>(
    store: &S,
    writers: u64,
    each: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = new_stream("live");
                for n in 0..each {
                    store
                        .append(&s, ExpectedRevision::Any, vec![event(w * 1000 + n)])
                        .await
                        .expect("live append");
                }
            })
        })
        .collect()
}

fn assert_strictly_increasing(events: &[RecordedEvent]) {
    for w in events.windows(2) {
        assert!(
            w[0].position < w[1].position,
            "delivered position {} after {}",
            w[1].position,
            w[0].position
        );
    }
}

/// A W3C `traceparent` (the specification's example).
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Appends then reads back a stream: revisions from 0, data and metadata kept
/// (a `traceparent` too, where an event carries one), `recorded_at` and the
/// hash chain filled in.
pub async fn appends_and_reads_a_stream<S: Conformance>(store: S) {
    let s = new_stream("order");
    let mut traced = event(2);
    traced.metadata.traceparent = Some(TRACEPARENT.into());
    let out = store
        .append(&s, ExpectedRevision::NoStream, vec![event(1), traced])
        .await
        .expect("append");
    assert_eq!(out.revision, 1);
    let read = store.read_stream(&s, 0).await.expect("read");
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].revision, 0);
    assert_eq!(read[1].revision, 1);
    assert_eq!(read[1].position, out.position);
    assert!(read[0].position < read[1].position);
    assert_eq!(read[0].data, json!({"n": 1}));
    assert_eq!(read[0].event_type, "test.happened");
    assert_eq!(read[0].metadata.actor.as_deref(), Some("conformance"));
    assert!(read[0].metadata.recorded_at.is_some());
    assert_eq!(read[0].metadata.prev_hash, None);
    assert_eq!(read[1].metadata.prev_hash, read[0].metadata.hash);
    assert!(read[1].metadata.hash.is_some());
    assert_eq!(read[0].metadata.traceparent, None);
    assert_eq!(read[1].metadata.traceparent.as_deref(), Some(TRACEPARENT));
    let all = store
        .read_all(read[0].position, 1_000)
        .await
        .expect("read all");
    let logged = all
        .iter()
        .find(|e| e.event_id == read[1].event_id)
        .expect("the traced event in the log");
    assert_eq!(logged.metadata.traceparent.as_deref(), Some(TRACEPARENT));

    let tail = store.read_stream(&s, 1).await.expect("read tail");
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].revision, 1);
    assert!(store
        .read_stream(&new_stream("order"), 0)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(store.head().await.expect("head"), out.position);
}

/// Every expected-revision mismatch is the typed error, carrying both sides.
pub async fn refuses_a_wrong_expected_revision_with_a_typed_error<S: Conformance>(store: S) {
    let s = new_stream("listing");
    let missing = store
        .append(&s, ExpectedRevision::Exact(0), vec![event(0)])
        .await;
    match missing {
        Err(StoreError::WrongExpectedRevision {
            expected,
            actual,
            stream,
        }) => {
            assert_eq!(expected, ExpectedRevision::Exact(0));
            assert_eq!(actual, None);
            assert_eq!(stream, s);
        }
        other => panic!("expected WrongExpectedRevision, got {other:?}"),
    }
    store
        .append(&s, ExpectedRevision::NoStream, vec![event(1), event(2)])
        .await
        .expect("first append");
    for expected in [
        ExpectedRevision::NoStream,
        ExpectedRevision::Exact(0),
        ExpectedRevision::Exact(7),
    ] {
        match store.append(&s, expected, vec![event(3)]).await {
            Err(StoreError::WrongExpectedRevision {
                expected: e,
                actual,
                ..
            }) => {
                assert_eq!(e, expected);
                assert_eq!(actual, Some(1));
            }
            other => panic!("expected WrongExpectedRevision for {expected}, got {other:?}"),
        }
    }
    let ok = store
        .append(&s, ExpectedRevision::Exact(1), vec![event(4)])
        .await
        .expect("exact append");
    assert_eq!(ok.revision, 2);
    let any = store
        .append(&s, ExpectedRevision::Any, vec![event(5)])
        .await
        .expect("any append");
    assert_eq!(any.revision, 3);
    assert_eq!(store.read_stream(&s, 0).await.expect("read").len(), 4);
    assert!(matches!(
        store.append(&s, ExpectedRevision::Any, vec![]).await,
        Err(StoreError::EmptyAppend)
    ));
}

/// Re-sending an append with the same event ids is an idempotent retry;
/// reusing some ids in a different append is refused.
pub async fn retrying_the_same_event_ids_appends_nothing<S: Conformance>(store: S) {
    let s = new_stream("wallet");
    let batch = vec![event(1), event(2)];
    let first = store
        .append(&s, ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("append");
    // The retry carries the same (now stale) expectation and still succeeds.
    let retry = store
        .append(&s, ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("idempotent retry");
    assert_eq!(retry, first);
    assert_eq!(store.read_stream(&s, 0).await.expect("read").len(), 2);

    let mixed = vec![batch[0].clone(), event(3)];
    assert!(matches!(
        store.append(&s, ExpectedRevision::Any, mixed).await,
        Err(StoreError::DuplicateEventId(_))
    ));
    let elsewhere = new_stream("wallet");
    assert!(matches!(
        store
            .append(&elsewhere, ExpectedRevision::Any, vec![batch[1].clone()])
            .await,
        Err(StoreError::DuplicateEventId(_))
    ));
    assert_eq!(store.read_stream(&s, 0).await.expect("read").len(), 2);
    assert!(store
        .read_stream(&elsewhere, 0)
        .await
        .expect("read")
        .is_empty());
}

/// `read_all` pages through the log in position order, strictly after `from`.
pub async fn reads_all_in_position_order<S: Conformance>(store: S) {
    let streams: Vec<_> = (0..3).map(|_| new_stream("account")).collect();
    let mut written = Vec::new();
    for round in 0..3u64 {
        for s in &streams {
            let out = store
                .append(s, ExpectedRevision::Any, vec![event(round)])
                .await
                .expect("append");
            written.push(out.position);
        }
    }
    let all = store
        .read_all(Position::START, 100)
        .await
        .expect("read_all");
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), written);
    let page1 = store.read_all(Position::START, 4).await.expect("page 1");
    let page2 = store.read_all(page1[3].position, 4).await.expect("page 2");
    let page3 = store.read_all(page2[3].position, 4).await.expect("page 3");
    assert_eq!(page1.len(), 4);
    assert_eq!(page2.len(), 4);
    assert_eq!(page3.len(), 1);
    let paged: Vec<_> = page1.iter().chain(&page2).chain(&page3).cloned().collect();
    assert_eq!(paged, all);
    assert!(store
        .read_all(*written.last().expect("written"), 10)
        .await
        .expect("read past head")
        .is_empty());
}

/// Two transactions, the one that took the lower position committing after
/// the other: readers and live subscribers deliver both, in position order,
/// and nothing read while the first was open is ever preceded by a later
/// arrival.
pub async fn a_delayed_commit_never_lets_a_reader_skip_an_event<S: Conformance>(store: S) {
    let mut live = store
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    let (held_stream, other_stream) = (new_stream("delay"), new_stream("delay"));

    let (at_gate_tx, at_gate) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let held = {
        let store = store.clone();
        let s = held_stream.clone();
        tokio::spawn(async move {
            store
                .append_held(
                    &s,
                    ExpectedRevision::NoStream,
                    vec![event(1)],
                    at_gate_tx,
                    release_rx,
                )
                .await
        })
    };
    at_gate
        .await
        .expect("the held append reached its commit gate");

    let mut other = {
        let store = store.clone();
        let s = other_stream.clone();
        tokio::spawn(async move {
            store
                .append(&s, ExpectedRevision::NoStream, vec![event(2)])
                .await
        })
    };
    // Give the second writer every chance to commit first, as it would on a
    // store that hands out positions without ordering commits.
    let other_early = tokio::time::timeout(Duration::from_millis(300), &mut other)
        .await
        .ok();
    let read_while_held = store
        .read_all(Position::START, 100)
        .await
        .expect("read_all");
    // A checkpointing reader resumes strictly after what it has seen.
    let resume_from = read_while_held
        .last()
        .map_or(Position::START, |e| e.position);

    release.send(()).expect("release the held append");
    let held_out = held.await.expect("join").expect("held append");
    let other_out = match other_early {
        Some(r) => r,
        None => other.await,
    }
    .expect("join")
    .expect("other append");
    assert!(
        held_out.position < other_out.position,
        "positions must follow commit order"
    );

    let final_log = store
        .read_all(Position::START, 100)
        .await
        .expect("read_all");
    assert_eq!(final_log.len(), 2);
    assert_strictly_increasing(&final_log);
    assert!(
        final_log.starts_with(&read_while_held),
        "an event appeared below one already read: {:?} then {:?}",
        read_while_held
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        final_log.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    let resumed = store.read_all(resume_from, 100).await.expect("read_all");
    assert_eq!(
        read_while_held.len() + resumed.len(),
        2,
        "a reader resuming from {resume_from} missed an event"
    );

    let delivered = collect(&mut live, 2).await;
    assert_strictly_increasing(&delivered);
    assert_eq!(
        delivered.iter().map(|e| &e.stream_id).collect::<Vec<_>>(),
        vec![&held_stream, &other_stream]
    );
}

/// 16 writers race for each revision of one stream with `Exact`: exactly one
/// wins each revision; every other gets the typed error.
pub async fn sixteen_concurrent_writers_get_one_winner_per_revision<S: Conformance>(store: S) {
    const WRITERS: usize = 16;
    const ROUNDS: u64 = 8;
    let s = new_stream("listing");
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = if round == 0 {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::Exact(round - 1)
        };
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
                tokio::spawn(async move {
                    let e = event(w as u64);
                    let id = e.event_id;
                    barrier.wait().await;
                    (id, store.append(&s, expected, vec![e]).await)
                })
            })
            .collect();
        let mut won = Vec::new();
        for t in tasks {
            match t.await.expect("join") {
                (id, Ok(out)) => {
                    assert_eq!(out.revision, round);
                    won.push(id);
                }
                (_, Err(StoreError::WrongExpectedRevision { actual, .. })) => {
                    // The loser saw either the previous revision or this round's winner.
                    assert!(actual.is_none() || actual <= Some(round));
                }
                (_, Err(other)) => panic!("a losing writer got an untyped error: {other}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {} winners", won.len());
        winners.extend(won);
    }
    let stored = store.read_stream(&s, 0).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        winners,
        "the stream holds exactly the winners, in order"
    );
    assert_eq!(
        stored.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (0..ROUNDS).collect::<Vec<_>>()
    );
}

/// A subscriber that starts while writers are busy hands over from catch-up
/// to live delivery without a gap or a duplicate.
pub async fn catch_up_hands_over_to_live_without_gaps_or_duplicates<S: Conformance>(store: S) {
    const BEFORE: u64 = 300;
    const WRITERS: u64 = 4;
    const EACH: u64 = 100;
    seed_streams(&store, BEFORE).await;
    let writers = live_writers(&store, WRITERS, EACH);
    let mut sub = store
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    let total = (BEFORE + WRITERS * EACH) as usize;
    let delivered = collect(&mut sub, total).await;
    for w in writers {
        w.await.expect("writer");
    }
    assert_strictly_increasing(&delivered);
    let ids: HashSet<_> = delivered.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), total, "duplicates delivered");
    let log = whole_log(&store, total).await;
    assert_eq!(
        log.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        delivered.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "the subscription and the log disagree"
    );
    // Nothing more arrives once the writers are done.
    let extra = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(extra.is_err(), "an extra event was delivered: {extra:?}");
}

/// A subscription from a position starts strictly after it.
pub async fn a_subscription_starts_strictly_after_its_position<S: Conformance>(store: S) {
    let s = new_stream("order");
    let first = store
        .append(&s, ExpectedRevision::NoStream, vec![event(1), event(2)])
        .await
        .expect("append");
    let mut sub = store
        .subscribe_all(first.position)
        .await
        .expect("subscribe");
    store
        .append(&s, ExpectedRevision::Exact(1), vec![event(3)])
        .await
        .expect("append");
    let got = collect(&mut sub, 1).await;
    assert_eq!(got[0].revision, 2);
    assert_eq!(got[0].data, json!({"n": 3}));
}

/// A shared subscription (`subscribe_all_shared`) and a copying one
/// (`subscribe_all`), started together while writers are busy, deliver
/// the very events the log holds: same order, same payloads, same
/// metadata, to the microsecond.
pub async fn shared_and_copied_subscriptions_deliver_what_the_log_holds<S: Conformance>(store: S) {
    const WRITERS: u64 = 3;
    const EACH: u64 = 60;
    seed_streams(&store, 40).await;
    let mut shared = store
        .subscribe_all_shared(Position::START)
        .await
        .expect("subscribe shared");
    let mut copied = store
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    let writers = live_writers(&store, WRITERS, EACH);
    let total = (40 + WRITERS * EACH) as usize;
    let mut from_shared = Vec::with_capacity(total);
    while from_shared.len() < total {
        match tokio::time::timeout(DEADLINE, shared.next()).await {
            Ok(Some(Ok(e))) => from_shared.push(RecordedEvent::clone(&e)),
            Ok(Some(Err(e))) => panic!("shared subscription failed: {e}"),
            Ok(None) => panic!("shared subscription ended"),
            Err(_) => panic!(
                "shared subscription delivered {} of {total}",
                from_shared.len()
            ),
        }
    }
    let from_copied = collect(&mut copied, total).await;
    for w in writers {
        w.await.expect("writer");
    }
    let log = whole_log(&store, total).await;
    assert_eq!(
        from_shared, log,
        "the shared subscription and the log differ"
    );
    assert_eq!(
        from_copied, log,
        "the copying subscription and the log differ"
    );
}

/// An idempotency key, once recorded, refuses every later append with the
/// first append's record (same input or not) and nothing more is written.
pub async fn a_used_idempotency_key_returns_the_first_outcome_and_appends_nothing<
    S: Conformance,
>(
    store: S,
) {
    let s = new_stream("order");
    let key = idempotency_key("hash-1");
    let first_events = vec![event(1), event(2)];
    let first = store
        .append_idempotent(
            &s,
            ExpectedRevision::NoStream,
            first_events.clone(),
            key.clone(),
        )
        .await
        .expect("first idempotent append");
    assert_eq!(first.revision, 1);

    let recorded = store
        .idempotency_record(&key.key)
        .await
        .expect("lookup")
        .expect("the key is recorded");
    assert_eq!(recorded.key, key.key);
    assert_eq!(recorded.request_hash, "hash-1");
    assert_eq!(recorded.stream_id, s);
    assert_eq!(recorded.outcome(), first);

    // The same request again: fresh event ids, as a client retry through the
    // command layer would carry.
    let replay = expect_key_used(
        store
            .append_idempotent(
                &s,
                ExpectedRevision::NoStream,
                vec![event(1), event(2)],
                key.clone(),
            )
            .await,
    );
    assert_eq!(replay, recorded);
    assert_eq!(replay.outcome(), first);
    // A different request under the same key: the same record, for the
    // caller to see the hash differs. The key wins over the (now wrong)
    // expectation and over the stored event ids.
    let misuse = expect_key_used(
        store
            .append_idempotent(
                &s,
                ExpectedRevision::Exact(1),
                vec![event(3)],
                with_hash(&key, "hash-2"),
            )
            .await,
    );
    assert_eq!(misuse, recorded);
    assert_eq!(misuse.request_hash, "hash-1");
    let retry = expect_key_used(
        store
            .append_idempotent(&s, ExpectedRevision::NoStream, first_events.clone(), key)
            .await,
    );
    assert_eq!(retry, recorded);

    let stored = store.read_stream(&s, 0).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        first_events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "the stream holds only the first append"
    );
    assert_eq!(store.head().await.expect("head"), first.position);
}

/// An idempotent append that fails records nothing, so the key stays free
/// for a correct append.
pub async fn a_failed_append_leaves_its_idempotency_key_unrecorded<S: Conformance>(store: S) {
    let s = new_stream("listing");
    let seeded = store
        .append(&s, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("seed");
    let key = idempotency_key("hash");
    match store
        .append_idempotent(&s, ExpectedRevision::Exact(5), vec![event(1)], key.clone())
        .await
    {
        Err(StoreError::WrongExpectedRevision { actual, .. }) => assert_eq!(actual, Some(0)),
        other => panic!("expected WrongExpectedRevision, got {other:?}"),
    }
    assert_eq!(
        store.idempotency_record(&key.key).await.expect("lookup"),
        None
    );
    // Nor does a duplicate event id or an empty append.
    let reused = store.read_stream(&s, 0).await.expect("read")[0].clone();
    let duplicate = NewEvent {
        event_id: reused.event_id,
        ..event(2)
    };
    assert!(matches!(
        store
            .append_idempotent(
                &s,
                ExpectedRevision::Any,
                vec![event(2), duplicate],
                key.clone()
            )
            .await,
        Err(StoreError::DuplicateEventId(_))
    ));
    assert!(matches!(
        store
            .append_idempotent(&s, ExpectedRevision::Any, vec![], key.clone())
            .await,
        Err(StoreError::EmptyAppend)
    ));
    assert_eq!(
        store.idempotency_record(&key.key).await.expect("lookup"),
        None
    );

    let ok = store
        .append_idempotent(&s, ExpectedRevision::Exact(0), vec![event(3)], key.clone())
        .await
        .expect("a correct append with the same key");
    assert_eq!(ok.revision, 1);
    assert!(ok.position > seeded.position);
    let recorded = store
        .idempotency_record(&key.key)
        .await
        .expect("lookup")
        .expect("recorded now");
    assert_eq!(recorded.outcome(), ok);
    assert_eq!(recorded.stream_id, s);
    assert_eq!(store.read_stream(&s, 0).await.expect("read").len(), 2);
}

/// An idempotent append that retries event ids already stored writes nothing
/// and records its key with the original outcome.
pub async fn an_idempotent_retry_of_stored_events_records_its_key<S: Conformance>(store: S) {
    let s = new_stream("wallet");
    let batch = vec![event(1), event(2)];
    let first = store
        .append(&s, ExpectedRevision::NoStream, batch.clone())
        .await
        .expect("plain append");
    let key = idempotency_key("hash");
    let retry = store
        .append_idempotent(&s, ExpectedRevision::NoStream, batch.clone(), key.clone())
        .await
        .expect("retry of stored event ids");
    assert_eq!(retry, first);
    let recorded = store
        .idempotency_record(&key.key)
        .await
        .expect("lookup")
        .expect("the key is recorded");
    assert_eq!(recorded.outcome(), first);
    assert_eq!(recorded.stream_id, s);
    let again = expect_key_used(
        store
            .append_idempotent(&s, ExpectedRevision::NoStream, batch, key)
            .await,
    );
    assert_eq!(again, recorded);
    assert_eq!(store.read_stream(&s, 0).await.expect("read").len(), 2);
}

/// A key never used has no record.
pub async fn an_unknown_idempotency_key_has_no_record<S: Conformance>(store: S) {
    assert_eq!(
        store
            .idempotency_record("nobody:never-used")
            .await
            .expect("lookup"),
        None
    );
    store
        .append(
            &new_stream("order"),
            ExpectedRevision::NoStream,
            vec![event(1)],
        )
        .await
        .expect("a plain append");
    assert_eq!(
        store
            .idempotency_record("nobody:never-used")
            .await
            .expect("lookup"),
        None
    );
}

/// 20 concurrent duplicates of one request (same key, fresh event ids, one
/// stream, no expectation): exactly one appends; the 19 others get the
/// winner's record.
pub async fn twenty_concurrent_duplicates_append_once<S: Conformance>(store: S) {
    const DUPLICATES: usize = 20;
    let s = new_stream("order");
    let key = idempotency_key("hash");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(DUPLICATES));
    let tasks: Vec<_> = (0..DUPLICATES)
        .map(|n| {
            let (store, s, key, barrier) = (store.clone(), s.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                let e = event(n as u64);
                let id = e.event_id;
                barrier.wait().await;
                (
                    id,
                    store
                        .append_idempotent(&s, ExpectedRevision::Any, vec![e], key)
                        .await,
                )
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            (id, Ok(out)) => won.push((id, out)),
            (_, Err(StoreError::IdempotencyKeyUsed(record))) => refused.push(*record),
            (_, Err(other)) => panic!("a duplicate got another error: {other}"),
        }
    }
    assert_eq!(won.len(), 1, "{} duplicates appended", won.len());
    assert_eq!(refused.len(), DUPLICATES - 1);
    let (winner_id, winner) = won[0];
    assert_eq!(winner.revision, 0);
    for record in &refused {
        assert_eq!(record.key, key.key);
        assert_eq!(record.stream_id, s);
        assert_eq!(record.outcome(), winner, "a duplicate got another outcome");
    }
    let stored = store.read_stream(&s, 0).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![winner_id],
        "the stream holds exactly the winner's event"
    );
    assert_eq!(stored[0].position, winner.position);
    let recorded = store
        .idempotency_record(&key.key)
        .await
        .expect("lookup")
        .expect("recorded");
    assert_eq!(recorded.outcome(), winner);
    assert_eq!(
        store
            .read_all(Position::START, 100)
            .await
            .expect("read_all")
            .len(),
        1
    );
}

/// U+0000 in an append's text (an event's data, its metadata, or the
/// idempotency key) cannot be stored by every backend: such an append is
/// refused as [`StoreError::Rejected`], nothing of it is stored (neither its
/// clean events nor its key), and the stream and key stay free for a clean
/// append.
pub async fn an_append_holding_a_nul_character_is_refused_and_stores_nothing<S: Conformance>(
    store: S,
) {
    let s = new_stream("nul");
    let key = idempotency_key("h1");
    let mut nul_data = event(2);
    nul_data.data = json!({ "note": "a\u{0}b" });
    let mut nul_actor = event(3);
    nul_actor.metadata.actor = Some("actor\u{0}".into());
    let nul_key = IdempotencyKey {
        key: format!("{}\u{0}", key.key),
        request_hash: "h2".into(),
    };
    let refusals = [
        store
            .append_idempotent(
                &s,
                ExpectedRevision::NoStream,
                vec![event(1), nul_data],
                key.clone(),
            )
            .await,
        store
            .append(&s, ExpectedRevision::Any, vec![nul_actor])
            .await,
        store
            .append_idempotent(&s, ExpectedRevision::Any, vec![event(4)], nul_key)
            .await,
    ];
    for refused in refusals {
        assert!(
            matches!(refused, Err(StoreError::Rejected { .. })),
            "expected Rejected, got {refused:?}"
        );
    }
    assert!(store.read_stream(&s, 0).await.expect("read").is_empty());
    assert_eq!(
        store.idempotency_record(&key.key).await.expect("record"),
        None
    );

    let appended = store
        .append_idempotent(&s, ExpectedRevision::NoStream, vec![event(5)], key)
        .await
        .expect("a clean append after the refusals");
    assert_eq!(appended.revision, 0);
    let all = store
        .read_all(Position::START, 100)
        .await
        .expect("read_all");
    assert_eq!(
        all.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        vec![json!({ "n": 5 })]
    );
}

fn part(stream: &StreamId, expected: ExpectedRevision, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream.clone(),
        expected,
        events,
    }
}

/// The events appended after `from`, in log order.
async fn log_after<S: Conformance>(store: &S, from: Position) -> Vec<RecordedEvent> {
    store.read_all(from, 10_000).await.expect("read_all")
}

/// On a backend without [`EventStore::append_streams`]: the call, with a
/// key or without, is refused as [`StoreError::Unsupported`] and writes
/// nothing (no event, no stream, no key).
async fn assert_multi_stream_appends_unsupported<S: Conformance>(store: &S) {
    let (a, b) = (new_stream("order"), new_stream("listing"));
    let head = store.head().await.expect("head");
    let key = idempotency_key("hash");
    for key in [None, Some(key.clone())] {
        let result = store
            .append_streams(
                vec![
                    part(&a, ExpectedRevision::NoStream, vec![event(1)]),
                    part(&b, ExpectedRevision::Any, vec![event(2)]),
                ],
                key,
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::Unsupported(_))),
            "expected Unsupported, got {result:?}"
        );
    }
    assert_eq!(store.head().await.expect("head"), head);
    assert!(store.read_stream(&a, 0).await.expect("read").is_empty());
    assert!(store.read_stream(&b, 0).await.expect("read").is_empty());
    assert_eq!(
        store.idempotency_record(&key.key).await.expect("lookup"),
        None
    );
}

/// A backend answers [`EventStore::append_streams`] as its capability says:
/// without it, `Unsupported` and nothing written; with it, the append
/// happens.
pub async fn append_streams_answers_as_the_capability_says<S: Conformance>(store: S) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b) = (new_stream("order"), new_stream("listing"));
    let outcomes = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::NoStream, vec![event(1)]),
                part(&b, ExpectedRevision::NoStream, vec![event(2)]),
            ],
            None,
        )
        .await
        .expect("a backend with the capability appends");
    assert_eq!(outcomes.len(), 2);
    assert_eq!(store.read_stream(&a, 0).await.expect("read").len(), 1);
    assert_eq!(store.read_stream(&b, 0).await.expect("read").len(), 1);
}

/// Three streams (one with history, two new) appended in one call: one
/// outcome per part, each stream's revisions continuing its own, every
/// event of the append at consecutive positions in part order, and each
/// stream's hash chain linking to its own previous event.
pub async fn appends_to_several_streams_atomically<S: Conformance>(store: S) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (order, listing, wallet) = (
        new_stream("order"),
        new_stream("listing"),
        new_stream("wallet"),
    );
    store
        .append(&order, ExpectedRevision::NoStream, vec![event(0), event(1)])
        .await
        .expect("seed");
    let before = store.head().await.expect("head");
    let parts = vec![
        part(&order, ExpectedRevision::Exact(1), vec![event(2), event(3)]),
        part(&listing, ExpectedRevision::NoStream, vec![event(4)]),
        part(
            &wallet,
            ExpectedRevision::Any,
            vec![event(5), event(6), event(7)],
        ),
    ];
    let ids: Vec<Uuid> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.event_id))
        .collect();
    let outcomes = store
        .append_streams(parts, None)
        .await
        .expect("multi-stream append");

    let appended = log_after(&store, before).await;
    assert_eq!(
        appended.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids,
        "the append's events, in part order, and nothing else"
    );
    assert_eq!(
        appended
            .iter()
            .map(|e| (&e.stream_id, e.revision))
            .collect::<Vec<_>>(),
        vec![
            (&order, 2),
            (&order, 3),
            (&listing, 0),
            (&wallet, 0),
            (&wallet, 1),
            (&wallet, 2)
        ]
    );
    assert_strictly_increasing(&appended);
    if store.dense_positions() {
        assert_eq!(
            appended.iter().map(|e| e.position.0).collect::<Vec<_>>(),
            (before.0 + 1..=before.0 + 6).collect::<Vec<_>>(),
            "consecutive positions"
        );
    }
    assert_eq!(
        outcomes,
        vec![
            AppendOutcome {
                revision: 3,
                position: appended[1].position
            },
            AppendOutcome {
                revision: 0,
                position: appended[2].position
            },
            AppendOutcome {
                revision: 2,
                position: appended[5].position
            },
        ]
    );
    assert_eq!(store.head().await.expect("head"), appended[5].position);

    let order_events = store.read_stream(&order, 0).await.expect("read");
    assert_eq!(order_events.len(), 4);
    for w in order_events.windows(2) {
        assert_eq!(w[1].metadata.prev_hash, w[0].metadata.hash);
    }
    let listing_events = store.read_stream(&listing, 0).await.expect("read");
    assert_eq!(listing_events[0].metadata.prev_hash, None);
    let wallet_events = store.read_stream(&wallet, 0).await.expect("read");
    assert_eq!(wallet_events[0].metadata.prev_hash, None);
    assert_eq!(
        wallet_events[2].metadata.prev_hash,
        wallet_events[1].metadata.hash
    );

    // Two streams, both already there, right after.
    let two = store
        .append_streams(
            vec![
                part(&listing, ExpectedRevision::Exact(0), vec![event(8)]),
                part(&order, ExpectedRevision::Exact(3), vec![event(9)]),
            ],
            None,
        )
        .await
        .expect("two-stream append");
    assert_eq!(
        two.iter().map(|o| o.revision).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert!(two[0].position > appended[5].position && two[0].position < two[1].position);
    assert_eq!(store.head().await.expect("head"), two[1].position);
}

/// One part at a wrong revision refuses the whole append: the error names
/// that part's stream, and nothing of any part is written, so the same
/// event ids can then be appended at the right revisions.
pub async fn a_wrong_revision_in_one_part_writes_no_part<S: Conformance>(store: S) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b, fresh) = (
        new_stream("order"),
        new_stream("listing"),
        new_stream("wallet"),
    );
    store
        .append(&a, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("seed a");
    store
        .append(&b, ExpectedRevision::NoStream, vec![event(1)])
        .await
        .expect("seed b");
    let head = store.head().await.expect("head");
    let (a_before, b_before) = (
        store.read_stream(&a, 0).await.expect("read"),
        store.read_stream(&b, 0).await.expect("read"),
    );
    let (ea, eb, ef) = (vec![event(2)], vec![event(3)], vec![event(4)]);
    let refused = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::Exact(0), ea.clone()),
                part(&fresh, ExpectedRevision::NoStream, ef.clone()),
                part(&b, ExpectedRevision::Exact(5), eb.clone()),
            ],
            None,
        )
        .await;
    match refused {
        Err(StoreError::WrongExpectedRevision {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, b, "the error names the mismatching part's stream");
            assert_eq!(expected, ExpectedRevision::Exact(5));
            assert_eq!(actual, Some(0));
        }
        other => panic!("expected WrongExpectedRevision, got {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), head);
    assert_eq!(store.read_stream(&a, 0).await.expect("read"), a_before);
    assert_eq!(store.read_stream(&b, 0).await.expect("read"), b_before);
    assert!(store.read_stream(&fresh, 0).await.expect("read").is_empty());
    assert!(log_after(&store, head).await.is_empty());

    let ok = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::Exact(0), ea),
                part(&fresh, ExpectedRevision::NoStream, ef),
                part(&b, ExpectedRevision::Exact(0), eb),
            ],
            None,
        )
        .await
        .expect("the same ids at the right revisions");
    assert_eq!(
        ok.iter().map(|o| o.revision).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
    assert_eq!(log_after(&store, head).await.len(), 3);
}

/// Requests no state of the log could accept are refused and write
/// nothing: a stream named by two parts (`Rejected`), a part without
/// events or no part at all (`EmptyAppend`), one event id in two parts
/// (`DuplicateEventId`).
pub async fn a_multi_stream_append_naming_a_stream_twice_is_refused<S: Conformance>(store: S) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b) = (new_stream("order"), new_stream("listing"));
    store
        .append(&a, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("seed");
    let head = store.head().await.expect("head");
    let twice = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::Exact(0), vec![event(1)]),
                part(&b, ExpectedRevision::NoStream, vec![event(2)]),
                part(&a, ExpectedRevision::Any, vec![event(3)]),
            ],
            None,
        )
        .await;
    assert!(
        matches!(twice, Err(StoreError::Rejected { .. })),
        "expected Rejected, got {twice:?}"
    );
    let empty_part = store
        .append_streams(
            vec![
                part(&b, ExpectedRevision::NoStream, vec![event(4)]),
                part(&a, ExpectedRevision::Exact(0), vec![]),
            ],
            None,
        )
        .await;
    assert!(
        matches!(empty_part, Err(StoreError::EmptyAppend)),
        "expected EmptyAppend, got {empty_part:?}"
    );
    let no_part = store.append_streams(vec![], None).await;
    assert!(
        matches!(no_part, Err(StoreError::EmptyAppend)),
        "expected EmptyAppend, got {no_part:?}"
    );
    let shared = event(5);
    let one_id_twice = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::Exact(0), vec![shared.clone()]),
                part(&b, ExpectedRevision::NoStream, vec![shared.clone()]),
            ],
            None,
        )
        .await;
    assert!(
        matches!(one_id_twice, Err(StoreError::DuplicateEventId(id)) if id == shared.event_id),
        "expected DuplicateEventId, got {one_id_twice:?}"
    );
    assert_eq!(store.head().await.expect("head"), head);
    assert_eq!(store.read_stream(&a, 0).await.expect("read").len(), 1);
    assert!(store.read_stream(&b, 0).await.expect("read").is_empty());
}

/// Sending the very same parts again (same event ids, now stale
/// expectations) returns the original outcomes and writes nothing; a
/// request with some of those ids and some new ones is a
/// `DuplicateEventId`, and writes nothing either.
pub async fn retrying_a_multi_stream_append_returns_its_outcomes_and_writes_nothing<
    S: Conformance,
>(
    store: S,
) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b) = (new_stream("order"), new_stream("listing"));
    let parts = vec![
        part(&a, ExpectedRevision::NoStream, vec![event(1), event(2)]),
        part(&b, ExpectedRevision::NoStream, vec![event(3)]),
    ];
    let first = store
        .append_streams(parts.clone(), None)
        .await
        .expect("append");
    let head = store.head().await.expect("head");
    let retry = store
        .append_streams(parts.clone(), None)
        .await
        .expect("idempotent retry");
    assert_eq!(retry, first);
    assert_eq!(store.head().await.expect("head"), head);

    let mixed = vec![
        parts[0].clone(),
        part(&b, ExpectedRevision::Exact(0), vec![event(4)]),
    ];
    let refused = store.append_streams(mixed, None).await;
    assert!(
        matches!(refused, Err(StoreError::DuplicateEventId(_))),
        "expected DuplicateEventId, got {refused:?}"
    );
    assert_eq!(store.head().await.expect("head"), head);
    assert_eq!(store.read_stream(&a, 0).await.expect("read").len(), 2);
    assert_eq!(store.read_stream(&b, 0).await.expect("read").len(), 1);
}

/// A multi-stream append's idempotency key is recorded with it: the record
/// names the first part's stream and last revision and the highest
/// position of the append; a second use is refused with that record (even
/// at wrong revisions) and writes nothing; a failed append leaves its key
/// free; a retry of stored parts records its key with the original
/// outcomes.
pub async fn a_multi_stream_append_records_its_idempotency_key_atomically<S: Conformance>(
    store: S,
) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b) = (new_stream("order"), new_stream("listing"));
    let key = idempotency_key("hash-1");
    let parts = vec![
        part(&a, ExpectedRevision::NoStream, vec![event(1), event(2)]),
        part(&b, ExpectedRevision::NoStream, vec![event(3), event(4)]),
    ];
    let first = store
        .append_streams(parts.clone(), Some(key.clone()))
        .await
        .expect("keyed append");
    let recorded = store
        .idempotency_record(&key.key)
        .await
        .expect("lookup")
        .expect("the key is recorded");
    assert_eq!(recorded.key, key.key);
    assert_eq!(recorded.request_hash, "hash-1");
    assert_eq!(recorded.stream_id, a, "the first part's stream");
    assert_eq!(recorded.revision, first[0].revision, "its last revision");
    assert_eq!(recorded.position, first[1].position, "the highest position");
    assert_eq!(recorded.position, store.head().await.expect("head"));

    let head = store.head().await.expect("head");
    let again = store
        .append_streams(
            vec![
                part(&a, ExpectedRevision::Exact(9), vec![event(5)]),
                part(&b, ExpectedRevision::Exact(9), vec![event(6)]),
            ],
            Some(with_hash(&key, "hash-2")),
        )
        .await;
    match again {
        Err(StoreError::IdempotencyKeyUsed(record)) => assert_eq!(*record, recorded),
        other => panic!("expected IdempotencyKeyUsed, got {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), head);

    let unused = idempotency_key("hash-3");
    let failed = store
        .append_streams(
            vec![
                part(&b, ExpectedRevision::Exact(1), vec![event(7)]),
                part(&a, ExpectedRevision::Exact(0), vec![event(8)]),
            ],
            Some(unused.clone()),
        )
        .await;
    assert!(
        matches!(failed, Err(StoreError::WrongExpectedRevision { ref stream, .. }) if *stream == a),
        "expected WrongExpectedRevision on {a}, got {failed:?}"
    );
    assert_eq!(
        store.idempotency_record(&unused.key).await.expect("lookup"),
        None
    );
    assert_eq!(store.head().await.expect("head"), head);

    let retry = store
        .append_streams(parts, Some(unused.clone()))
        .await
        .expect("a retry of stored parts under a fresh key");
    assert_eq!(retry, first);
    let retry_record = store
        .idempotency_record(&unused.key)
        .await
        .expect("lookup")
        .expect("recorded by the retry");
    assert_eq!(
        (&retry_record.stream_id, retry_record.outcome()),
        (&a, recorded.outcome())
    );
    assert_eq!(store.head().await.expect("head"), head);
}

/// A live subscriber receives every event of a multi-stream append once,
/// in the log's order, and then what follows it.
pub async fn subscribers_see_every_event_of_a_multi_stream_append_once<S: Conformance>(store: S) {
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let (a, b, c) = (
        new_stream("order"),
        new_stream("listing"),
        new_stream("wallet"),
    );
    store
        .append(&a, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("seed");
    let from = store.head().await.expect("head");
    let mut live = store.subscribe_all(from).await.expect("subscribe");
    let parts = vec![
        part(&a, ExpectedRevision::Exact(0), vec![event(1), event(2)]),
        part(&b, ExpectedRevision::NoStream, vec![event(3)]),
        part(&c, ExpectedRevision::NoStream, vec![event(4), event(5)]),
    ];
    let mut ids: Vec<Uuid> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.event_id))
        .collect();
    store
        .append_streams(parts, None)
        .await
        .expect("multi-stream append");
    let after = event(6);
    ids.push(after.event_id);
    store
        .append(&b, ExpectedRevision::Exact(0), vec![after])
        .await
        .expect("an append after it");
    let delivered = collect(&mut live, ids.len()).await;
    assert_eq!(
        delivered.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        ids,
        "each event once, in order"
    );
    assert_strictly_increasing(&delivered);
    assert_eq!(delivered, log_after(&store, from).await);
    let extra = tokio::time::timeout(Duration::from_millis(100), live.next()).await;
    assert!(extra.is_err(), "an extra event was delivered: {extra:?}");
}

/// 32 writers each append, in one call, an event to a shared hot stream
/// (at the exact revision they last saw, retrying on conflict) and one to a
/// stream of their own. Every writer lands exactly once: the hot stream's
/// revisions run 0..32 without a gap, each writer's two events sit next to
/// each other in the log, and the log's positions are gap-free.
pub async fn concurrent_multi_stream_appends_on_a_shared_stream_land_without_gaps<
    S: Conformance,
>(
    store: S,
) {
    const WRITERS: usize = 32;
    const ATTEMPTS: usize = 10_000;
    if !store.multi_stream_appends() {
        return assert_multi_stream_appends_unsupported(&store).await;
    }
    let hot = new_stream("listing");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, hot, barrier) = (store.clone(), hot.clone(), barrier.clone());
            tokio::spawn(async move {
                let own = new_stream("order");
                let (hot_event, own_event) = (event(w as u64), event(1000 + w as u64));
                let ids = (hot_event.event_id, own_event.event_id);
                barrier.wait().await;
                let mut expected = ExpectedRevision::NoStream;
                for _ in 0..ATTEMPTS {
                    let parts = vec![
                        part(&hot, expected, vec![hot_event.clone()]),
                        part(&own, ExpectedRevision::NoStream, vec![own_event.clone()]),
                    ];
                    match store.append_streams(parts, None).await {
                        Ok(outcomes) => return (own, ids, outcomes),
                        Err(StoreError::WrongExpectedRevision { stream, actual, .. }) => {
                            assert_eq!(stream, hot, "only the hot stream conflicts");
                            expected =
                                actual.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                        }
                        Err(other) => panic!("writer {w} got {other}"),
                    }
                }
                panic!("writer {w} never landed in {ATTEMPTS} attempts");
            })
        })
        .collect();
    let mut landed = Vec::with_capacity(WRITERS);
    for t in tasks {
        landed.push(t.await.expect("join"));
    }

    let hot_events = store.read_stream(&hot, 0).await.expect("read hot");
    assert_eq!(
        hot_events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (0..WRITERS as u64).collect::<Vec<_>>(),
        "the hot stream's revisions have no gap"
    );
    let log = log_after(&store, Position::START).await;
    assert_eq!(log.len(), 2 * WRITERS);
    assert_strictly_increasing(&log);
    if store.dense_positions() {
        assert_eq!(
            log.iter().map(|e| e.position.0).collect::<Vec<_>>(),
            (1..=2 * WRITERS as u64).collect::<Vec<_>>(),
            "dense, gap-free positions"
        );
    }
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2 * WRITERS, "every event once");
    for (own, (hot_id, own_id), outcomes) in &landed {
        let at = log
            .iter()
            .position(|e| e.event_id == *hot_id)
            .expect("the writer's hot event is in the log");
        assert_eq!(log[at].stream_id, hot);
        assert_eq!(
            log[at + 1].event_id,
            *own_id,
            "the writer's events sit together"
        );
        assert_eq!(&log[at + 1].stream_id, own);
        assert_eq!(
            outcomes,
            &vec![
                AppendOutcome {
                    revision: log[at].revision,
                    position: log[at].position
                },
                AppendOutcome {
                    revision: 0,
                    position: log[at + 1].position
                },
            ]
        );
    }
}

/// Instantiates every conformance check as a `#[tokio::test]` for the backend
/// built by the given async expression.
#[macro_export]
macro_rules! conformance_suite {
    ($fresh:expr) => {
        $crate::conformance_suite!(@tests $fresh;
            appends_and_reads_a_stream,
            refuses_a_wrong_expected_revision_with_a_typed_error,
            retrying_the_same_event_ids_appends_nothing,
            reads_all_in_position_order,
            a_delayed_commit_never_lets_a_reader_skip_an_event,
            sixteen_concurrent_writers_get_one_winner_per_revision,
            catch_up_hands_over_to_live_without_gaps_or_duplicates,
            a_subscription_starts_strictly_after_its_position,
            shared_and_copied_subscriptions_deliver_what_the_log_holds,
            a_used_idempotency_key_returns_the_first_outcome_and_appends_nothing,
            a_failed_append_leaves_its_idempotency_key_unrecorded,
            an_idempotent_retry_of_stored_events_records_its_key,
            an_unknown_idempotency_key_has_no_record,
            twenty_concurrent_duplicates_append_once,
            an_append_holding_a_nul_character_is_refused_and_stores_nothing,
            append_streams_answers_as_the_capability_says,
            appends_to_several_streams_atomically,
            a_wrong_revision_in_one_part_writes_no_part,
            a_multi_stream_append_naming_a_stream_twice_is_refused,
            retrying_a_multi_stream_append_returns_its_outcomes_and_writes_nothing,
            a_multi_stream_append_records_its_idempotency_key_atomically,
            subscribers_see_every_event_of_a_multi_stream_append_once,
            concurrent_multi_stream_appends_on_a_shared_stream_land_without_gaps
        );
    };
    (@tests $fresh:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($fresh.await).await;
            }
        )*
    };
}
