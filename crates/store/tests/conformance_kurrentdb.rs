//! The conformance suite against the KurrentDB backend, through the real
//! `kurrentdb` client over a real socket:
//!
//! - against a real KurrentDB when `KURRENTDB_URL` is set (e.g.
//!   `kurrentdb://127.0.0.1:2113?tls=false`), each test in a namespace of its
//!   own so tests share the server without seeing each other's events;
//! - otherwise against a fresh `kurrentdb-testserver` per test.
//!
//! The delayed-commit check holds an append inside the test server after it
//! has taken its `$all` positions. A real KurrentDB cannot be made to hold a
//! commit from outside (its single writer assigns positions at commit), so
//! against one the held append simply commits before the gate opens.

use std::sync::Arc;

use async_trait::async_trait;
use marketplace_store::conformance::Conformance;
use marketplace_store::{
    AppendOutcome, EventStore, EventStream, ExpectedRevision, IdempotencyKey, IdempotencyRecord,
    KurrentDbEventStore, NewEvent, Position, RecordedEvent, StoreError, StreamAppend, StreamId,
};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The backend under test and, when it runs on one, the test server.
#[derive(Clone)]
struct UnderTest {
    store: KurrentDbEventStore,
    server: Option<Arc<kurrentdb_testserver::TestServer>>,
}

async fn fresh_store() -> UnderTest {
    let namespace = format!("t{}", Uuid::new_v4().simple());
    let (url, server) = match std::env::var("KURRENTDB_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = kurrentdb_testserver::spawn().await.expect("test server");
            (server.connection_string(), Some(Arc::new(server)))
        }
    };
    let store = KurrentDbEventStore::connect(&url)
        .expect("connect")
        .with_namespace(&namespace)
        .expect("namespace");
    UnderTest { store, server }
}

#[async_trait]
impl EventStore for UnderTest {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.store.append(stream, expected, events).await
    }

    async fn append_idempotent(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<AppendOutcome, StoreError> {
        self.store
            .append_idempotent(stream, expected, events, key)
            .await
    }

    fn multi_stream_appends(&self) -> bool {
        self.store.multi_stream_appends()
    }

    async fn append_streams(
        &self,
        parts: Vec<StreamAppend>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.store.append_streams(parts, key).await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.store.idempotency_record(key).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, from_revision).await
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(from, limit).await
    }

    async fn subscribe_all(&self, from: Position) -> Result<EventStream, StoreError> {
        self.store.subscribe_all(from).await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.store.head().await
    }

    fn dense_positions(&self) -> bool {
        self.store.dense_positions()
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
        match &self.server {
            Some(server) => {
                server.hold_next_append(&self.store.server_stream_name(stream), at_gate, release);
                self.store.append(stream, expected, events).await
            }
            None => {
                let out = self.store.append(stream, expected, events).await;
                let _ = at_gate.send(());
                let _ = release.await;
                out
            }
        }
    }
}

marketplace_store::conformance_suite!(fresh_store());
