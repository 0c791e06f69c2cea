//! `marketplace seed` against a real PostgreSQL: orders end in every state,
//! reviews are moderated both ways, the processes have settled, and a second
//! run is refused without writing anything. Results are read from the event
//! store and the aggregates (no projector runs here).

use std::collections::BTreeSet;
use std::sync::Arc;

use marketplace_cli::seed::{self, AlreadySeeded, SeedArgs};
use marketplace_consumers::Envelope;
use marketplace_domain::account::Account;
use marketplace_domain::order::{Order, OrderStatus};
use marketplace_domain::review::{Review, ReviewStatus};
use marketplace_domain::Event;
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_store::{EventStore, Position};
use sha2::Digest as _;
use sqlx::PgPool;
use uuid::Uuid;

fn small() -> SeedArgs {
    SeedArgs {
        sellers: 3,
        listings_per_seller: 6,
        buyers: 12,
        orders: 40,
        seed: 7,
        concurrency: 4,
        ..SeedArgs::default()
    }
}

async fn events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// Ids of the streams in the whole log whose events are `of` an aggregate.
async fn streams(store: &dyn EventStore, of: fn(&Event) -> bool) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, 1_000).await.expect("read log");
        let Some(last) = page.last() else {
            return ids;
        };
        from = last.position;
        ids.extend(
            page.iter()
                .map(|e| Envelope::decode(e).expect("decodes"))
                .filter(|e| of(&e.event))
                .map(|e| e.entity_id()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeds_orders_in_every_state_and_refuses_a_second_run() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let master = marketplace_keys::MasterKey::generate();
    let assets_dir = std::env::temp_dir().join(format!("seed-assets-{}", uuid::Uuid::now_v7()));
    let args = SeedArgs {
        assets_dir: Some(assets_dir.clone()),
        ..small()
    };
    let report = seed::run(&db.url, &master, &args).await.expect("seed");

    let pool = db.pool().await;
    let sealing = marketplace_api::database::open_event_store(
        &pool,
        &marketplace_api::config::EventStoreChoice::Postgres,
        &master,
    )
    .await
    .expect("store");
    let handler = marketplace_api::database::command_handler(&sealing)
        .await
        .expect("handler");
    let store: Arc<dyn EventStore> = Arc::new(sealing);

    let mut orders = Vec::new();
    for id in streams(store.as_ref(), |e| matches!(e, Event::Order(_))).await {
        orders.push(handler.load::<Order>(id).await.expect("order").state);
    }
    assert_eq!(orders.len(), 40);
    for status in [
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Rejected,
    ] {
        let n = orders.iter().filter(|o| o.status == status).count();
        assert!(n >= 1, "no {status:?} order: {report}");
        assert_eq!(n, report.orders_in(status), "{status:?}");
    }
    assert!(orders.iter().all(|o| o.status != OrderStatus::Pending));
    let reasons: BTreeSet<&str> = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Rejected)
        .filter_map(|o| o.status_reason.as_ref().map(|r| r.as_str()))
        .collect();
    assert!(reasons.contains("insufficient funds"), "{reasons:?}");
    assert!(reasons.contains("out of stock"), "{reasons:?}");

    // The payout process has settled every escrow the seed ended.
    for o in orders.iter().filter(|o| {
        matches!(
            o.status,
            OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Rejected
        )
    }) {
        let buyer = o.buyer_id.expect("buyer");
        let wallet = handler.load::<Account>(buyer.0).await.expect("account");
        let id = o.id.expect("id");
        assert!(
            !wallet.state.escrow.contains_key(&id),
            "escrow left for {id}"
        );
    }

    // Every DIGITAL listing's file is stored, under its hash, and uploaded
    // by its seller.
    let created: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT data->>'content_hash', (data->>'seller_id')::uuid FROM events \
         WHERE event_type = 'listing.created' AND data->>'content_hash' IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .expect("digital listings");
    let digital = created.len();
    for (h, seller) in created {
        let file = std::fs::read(assets_dir.join("sha256").join(&h[..2]).join(&h))
            .expect("the asset's file");
        assert_eq!(hex::encode(sha2::Sha256::digest(&file)), h);
        let hash = marketplace_domain::values::ContentHash::parse(&h).expect("hash");
        let asset = handler
            .load::<marketplace_domain::asset::Asset>(marketplace_domain::asset::asset_id(&hash))
            .await
            .expect("asset")
            .state;
        assert_eq!(asset.uploaded_by.map(|a| a.0), Some(seller), "{h}");
    }
    assert!(digital >= 1, "the seed lists digital assets");
    let _ = std::fs::remove_dir_all(&assets_dir);

    let mut reviews = Vec::new();
    for id in streams(store.as_ref(), |e| matches!(e, Event::Review(_))).await {
        reviews.push(handler.load::<Review>(id).await.expect("review").state);
    }
    for status in [ReviewStatus::Approved, ReviewStatus::Rejected] {
        let n = reviews.iter().filter(|r| r.status == status).count();
        assert!(n >= 1, "no {status:?} review: {report}");
        assert_eq!(n, report.reviews_in(status), "{status:?}");
    }
    assert!(reviews
        .iter()
        .filter(|r| r.status == ReviewStatus::Rejected)
        .all(|r| r.rejection_reason.is_some()));

    let before = events(&pool).await;
    assert_eq!(u64::try_from(before).expect("count"), report.events_total);
    let err = seed::run(&db.url, &master, &small())
        .await
        .expect_err("a second run is refused");
    assert!(err.downcast_ref::<AlreadySeeded>().is_some(), "{err:#}");
    assert!(err.to_string().contains("--data-dir"), "{err}");
    assert_eq!(events(&pool).await, before, "the refused run wrote events");
}
