//! The flash sale and the audit hash chains on the KurrentDB backend: the
//! command handler, the checkout saga and the payout process run unchanged
//! over the real `kurrentdb` client and a `kurrentdb-testserver` (or the
//! server at `KURRENTDB_URL`), with their checkpoints (`$all` positions) in
//! a fresh Postgres database.

mod common;

use std::sync::Arc;

use common::*;
use marketplace_commands::audit::verify_chains;
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::{EventStore, KurrentDbEventStore, Position};
use uuid::Uuid;

/// A KurrentDB store in a namespace of its own, and the test server behind
/// it unless `KURRENTDB_URL` names a real one.
async fn kurrentdb() -> (
    Arc<KurrentDbEventStore>,
    Option<kurrentdb_testserver::TestServer>,
) {
    let (url, server) = match std::env::var("KURRENTDB_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = kurrentdb_testserver::spawn().await.expect("test server");
            (server.connection_string(), Some(server))
        }
    };
    let store = KurrentDbEventStore::connect(&url)
        .expect("connect")
        .with_namespace(&format!("t{}", Uuid::new_v4().simple()))
        .expect("namespace");
    (Arc::new(store), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_on_kurrentdb_sells_exactly_the_stock_and_keeps_every_hash_chain() {
    let (store, server) = kurrentdb().await;
    let pool = TestDatabase::create().await.pool().await;
    let m = market_on(pool, store.clone()).await;

    flash_sale::sells_exactly_the_stock_and_conserves_money(m).await;

    // Every stream the sale wrote links into an unbroken chain.
    let head = store.head().await.expect("head");
    let events = store
        .read_all(Position::START, 100_000)
        .await
        .expect("read_all");
    assert!(
        events.len() > flash_sale::BUYERS * 3,
        "the sale wrote {} events",
        events.len()
    );
    assert_eq!(events.last().map(|e| e.position), Some(head));
    let breaks = verify_chains(store.as_ref(), None, &|_, _| {})
        .await
        .expect("verify");
    assert!(breaks.is_empty(), "chain breaks: {breaks:?}");

    // An edit made under the server (on its disk) is caught.
    if let Some(server) = &server {
        let victim = &events[events.len() / 2];
        let mut data = victim.data.clone();
        data["tampered"] = serde_json::json!(true);
        assert!(server.log().overwrite_data(
            &store.server_stream_name(&victim.stream_id),
            victim.revision,
            data.to_string().into_bytes(),
        ));
        let breaks = verify_chains(store.as_ref(), None, &|_, _| {})
            .await
            .expect("verify");
        assert_eq!(breaks.len(), 1, "{breaks:?}");
        assert_eq!(breaks[0].stream.as_ref(), Some(&victim.stream_id));
        assert_eq!(breaks[0].revision, Some(victim.revision));
    }
}
