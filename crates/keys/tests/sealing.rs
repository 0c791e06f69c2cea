//! The sealing store on a real Postgres: personal fields are stored sealed
//! and read opened, through every read path; once the key is destroyed
//! they read as `null` everywhere (streams, the log, subscriptions), no new
//! personal data can be written for the person, and the events of everyone
//! else read as before. The decorator passes the store's conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_keys::{Keyring, MasterKey, SealingStore};
use marketplace_store::conformance::Conformance;
use marketplace_store::{
    AppendOutcome, EventMetadata, EventStore, EventStream, ExpectedRevision, IdempotencyKey,
    IdempotencyRecord, NewEvent, Position, PostgresEventStore, RecordedEvent, SharedEventStream,
    StoreError, StreamAppend, StreamId,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

async fn fresh() -> (SealingStore, PostgresEventStore, sqlx::PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    marketplace_store::postgres::migrate(&pool)
        .await
        .expect("migrate");
    marketplace_keys::migrate(&pool)
        .await
        .expect("migrate keys");
    let pg = PostgresEventStore::new(pool.clone()).await.expect("store");
    let sealing = SealingStore::new(
        Arc::new(pg.clone()),
        Keyring::new(pool.clone(), MasterKey::generate()),
    );
    (sealing, pg, pool)
}

fn registered(account: Uuid, email: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "account.registered".into(),
        schema_version: 2,
        data: json!({
            "account_id": account,
            "email": email,
            "display_name": "Grace",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "roles": ["BUYER"],
            "registered_at": "2026-12-01T09:00:00Z"
        }),
        metadata: EventMetadata::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_sealed_at_rest_and_erased_on_every_read_path() {
    let (store, _, pool) = fresh().await;
    let (grace, alan) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, email) in [(grace, "grace@example.org"), (alan, "alan@example.org")] {
        let stream = StreamId::new("account", id).expect("stream");
        store
            .append(
                &stream,
                ExpectedRevision::NoStream,
                vec![registered(id, email)],
            )
            .await
            .expect("append");
    }
    let at_rest: Vec<String> = sqlx::query_scalar("SELECT data::text FROM events")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(at_rest.len(), 2);
    assert!(at_rest
        .iter()
        .all(|d| !d.contains("@example.org") && !d.contains("Grace")));
    let opened = store.read_all(Position::START, 10).await.expect("read");
    assert_eq!(opened[0].data["email"], "grace@example.org");
    assert_eq!(opened[0].data["display_name"], "Grace");

    assert!(store.keyring().erase(grace).await.expect("erase"));
    assert!(
        !store.keyring().erase(grace).await.expect("again"),
        "already gone"
    );

    let grace_stream = StreamId::new("account", grace).expect("stream");
    let read = store.read_stream(&grace_stream, 0).await.expect("read");
    assert_eq!(read[0].data["email"], Value::Null);
    assert_eq!(read[0].data["password_hash"], Value::Null);
    assert_eq!(read[0].data["roles"], json!(["BUYER"]));
    let all = store.read_all(Position::START, 10).await.expect("read all");
    assert_eq!(all[0].data["display_name"], Value::Null);
    assert_eq!(
        all[1].data["email"], "alan@example.org",
        "others are untouched"
    );
    let mut live = store
        .subscribe_all(Position::START)
        .await
        .expect("subscribe");
    let first = live.next().await.expect("an event").expect("ok");
    assert_eq!(first.data["email"], Value::Null);
    let second = live.next().await.expect("an event").expect("ok");
    assert_eq!(second.data["email"], "alan@example.org");
    // The shared subscription (what consumers read) opens the same way;
    // the events it passes on unopened are the log's own.
    let mut shared = store
        .subscribe_all_shared(Position::START)
        .await
        .expect("subscribe shared");
    let first = shared.next().await.expect("an event").expect("ok");
    assert_eq!(first.data["email"], Value::Null);
    assert_eq!(first.data["roles"], json!(["BUYER"]));
    let second = shared.next().await.expect("an event").expect("ok");
    assert_eq!(second.data["email"], "alan@example.org");

    // Nothing personal can be written for an erased person again.
    let refused = store
        .append(
            &grace_stream,
            ExpectedRevision::Any,
            vec![registered(grace, "g@example.org")],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Rejected { .. })),
        "{refused:?}"
    );
    let tombstone: (Option<Vec<u8>>, bool) =
        sqlx::query_as("SELECT wrapped, erased_at IS NOT NULL FROM data_keys WHERE subject = $1")
            .bind(grace)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(tombstone, (None, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_historic_plain_registration_is_hidden_once_its_owner_is_erased() {
    let (store, pg, _) = fresh().await;
    let ada = Uuid::now_v7();
    let mut v1 = registered(ada, "ada@example.org");
    v1.schema_version = 1;
    let stream = StreamId::new("account", ada).expect("stream");
    // Written by an earlier build, straight to the backend, in the clear.
    pg.append(&stream, ExpectedRevision::NoStream, vec![v1])
        .await
        .expect("append");
    let read = store.read_stream(&stream, 0).await.expect("read");
    assert_eq!(
        read[0].data["email"], "ada@example.org",
        "no key: still readable"
    );
    store.keyring().erase(ada).await.expect("erase");
    let read = store.read_stream(&stream, 0).await.expect("read");
    assert_eq!(read[0].data["email"], Value::Null);
    assert_eq!(read[0].data["display_name"], Value::Null);
}

/// An append across streams is sealed part by part, as `append` seals:
/// every part's personal fields are stored sealed and read opened, and the
/// call keeps the backend's capability and outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_of_an_append_across_streams_is_sealed() {
    let (store, pg, pool) = fresh().await;
    assert!(store.multi_stream_appends(), "the backend's capability");
    let (grace, alan) = (Uuid::now_v7(), Uuid::now_v7());
    let streams = [grace, alan].map(|id| StreamId::new("account", id).expect("stream"));
    let outcomes = store
        .append_streams(
            vec![
                StreamAppend {
                    stream: streams[0].clone(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![registered(grace, "grace@example.org")],
                },
                StreamAppend {
                    stream: streams[1].clone(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![registered(alan, "alan@example.org")],
                },
            ],
            None,
        )
        .await
        .expect("append across streams");
    assert_eq!(
        outcomes.iter().map(|o| o.revision).collect::<Vec<_>>(),
        [0, 0]
    );
    let at_rest: Vec<String> = sqlx::query_scalar("SELECT data::text FROM events")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(at_rest.len(), 2);
    assert!(
        at_rest
            .iter()
            .all(|d| !d.contains("@example.org") && !d.contains("Grace")),
        "every part is sealed at rest: {at_rest:?}"
    );
    let raw = pg.read_stream(&streams[1], 0).await.expect("raw read");
    assert_ne!(raw[0].data["email"], "alan@example.org");
    for (stream, email) in streams
        .iter()
        .zip(["grace@example.org", "alan@example.org"])
    {
        let opened = store.read_stream(stream, 0).await.expect("read");
        assert_eq!(opened[0].data["email"], email);
    }
}

/// The decorator, with the backend's held append for the delayed-commit
/// check (the suite's events hold no personal fields, so nothing is sealed
/// on that path).
#[derive(Clone)]
struct UnderTest {
    sealing: SealingStore,
    pg: PostgresEventStore,
}

#[async_trait]
impl EventStore for UnderTest {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.sealing.append(stream, expected, events).await
    }
    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        self.sealing
            .append_idempotent(stream, expected, events, key)
            .await
    }
    fn multi_stream_appends(&self) -> bool {
        self.sealing.multi_stream_appends()
    }
    async fn append_streams(
        &self,
        parts: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.sealing.append_streams(parts, key).await
    }
    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.sealing.idempotency_record(key).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.sealing.read_stream(stream, from).await
    }
    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.sealing.read_all(from, limit).await
    }
    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        self.sealing.subscribe_all(from).await
    }
    async fn subscribe_all_shared(&self, from: Position) -> Result<SharedEventStream, StoreError> {
        self.sealing.subscribe_all_shared(from).await
    }
    async fn head(&self) -> Result<Position, StoreError> {
        self.sealing.head().await
    }
}

#[async_trait]
impl Conformance for UnderTest {
    async fn append_held(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> Result<AppendOutcome, StoreError> {
        self.pg
            .append_held(stream, expected, events, at_gate, release)
            .await
    }
}

async fn fresh_under_test() -> UnderTest {
    let (sealing, pg, _) = fresh().await;
    UnderTest { sealing, pg }
}

marketplace_store::conformance_suite!(fresh_under_test());
