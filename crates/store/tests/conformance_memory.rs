//! The conformance suite against the in-memory backend.

use marketplace_store::InMemoryEventStore;

async fn fresh_store() -> InMemoryEventStore {
    InMemoryEventStore::new()
}

marketplace_store::conformance_suite!(fresh_store());
