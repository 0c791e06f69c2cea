//! Projections against a real Postgres: feed events through the real store,
//! then assert rows.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use marketplace_domain::account::{AccountEvent, AccountRegistered};
use marketplace_domain::listing::{ListingCreated, ListingEvent, ListingKind, ListingPublished};
use marketplace_domain::values::*;
use marketplace_domain::EventSet;
use marketplace_projections::read_models::{accounts, listings};
use marketplace_projections::{Progress, Projection, ProjectionError, ProjectorRuntime};
use marketplace_store::postgres::{migrate, PostgresEventStore};
use marketplace_store::testdb::TestDatabase;
use marketplace_store::{
    EventMetadata, EventStore, ExpectedRevision, NewEvent, Position, StreamId,
};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

async fn setup() -> (PgPool, PostgresEventStore) {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    migrate(&pool).await.expect("store migrations");
    marketplace_projections::migrate(&pool)
        .await
        .expect("read model migrations");
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    (pool, store)
}

fn new_event<E: EventSet>(e: E) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: e.event_type().to_owned(),
        schema_version: e.schema_version(),
        data: e.to_data().expect("encode"),
        metadata: EventMetadata::default(),
    }
}

async fn append<E: EventSet>(
    store: &PostgresEventStore,
    category: &str,
    id: Uuid,
    events: Vec<E>,
) -> Position {
    let s = StreamId::new(category, id).expect("stream");
    store
        .append(
            &s,
            ExpectedRevision::Any,
            events.into_iter().map(new_event).collect(),
        )
        .await
        .expect("append")
        .position
}

fn at(min: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, min, 0)
        .single()
        .expect("date")
}

fn eur(minor: i64) -> Money {
    Money {
        minor,
        currency: Currency::parse("EUR").expect("valid"),
    }
}

fn account(id: Uuid, email: &str) -> AccountEvent {
    AccountRegistered {
        account_id: AccountId(id),
        email: Email::parse(email).expect("valid"),
        display_name: DisplayName::parse("Shop").expect("valid"),
        password_hash: PasswordHash::from_phc("$argon2id$x".into()).expect("valid"),
        roles: vec![Role::Seller],
        registered_at: at(0),
    }
    .into()
}

fn listing(
    id: Uuid,
    seller: Uuid,
    title: &str,
    category: &str,
    tags: &[&str],
    price: i64,
    min: u32,
) -> ListingEvent {
    ListingCreated {
        listing_id: ListingId(id),
        seller_id: AccountId(seller),
        kind: ListingKind::Physical,
        title: Title::parse(title).expect("valid"),
        description: Description::parse("A fine thing").expect("valid"),
        category: Category::parse(category).expect("valid"),
        tags: Tags::parse(tags.iter().copied()).expect("valid"),
        price: eur(price),
        quantity: Quantity(3),
        content_hash: None,
        created_at: at(min),
    }
    .into()
}

fn published(id: Uuid, min: u32) -> ListingEvent {
    ListingPublished {
        listing_id: ListingId(id),
        published_at: at(min),
    }
    .into()
}

fn spawn_runtime(
    pool: &PgPool,
    store: &PostgresEventStore,
    progress: &Progress,
) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone());
    for p in marketplace_projections::all() {
        let (runtime, stop_rx) = (runtime.clone(), stop_rx.clone());
        tokio::spawn(async move { runtime.run(p, stop_rx).await });
    }
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folds_accounts_and_listings_and_resumes_from_the_checkpoint_exactly_once() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    append(
        &store,
        "account",
        seller,
        vec![account(seller, "shop@example.com")],
    )
    .await;
    append(
        &store,
        "listing",
        a,
        vec![
            listing(a, seller, "Red lamp", "home", &["lamp", "red"], 1500, 1),
            published(a, 2),
        ],
    )
    .await;
    let head = append(
        &store,
        "listing",
        b,
        vec![listing(b, seller, "Blue lamp", "home", &["lamp"], 900, 3)],
    )
    .await;

    let progress = Progress::default();
    let stop = spawn_runtime(&pool, &store, &progress);
    assert!(
        progress
            .wait_for(&[accounts::NAME, listings::NAME], head, DEADLINE)
            .await
    );

    let acc = accounts::by_id(&pool, seller)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(acc.email, "shop@example.com");
    assert_eq!(acc.roles, vec!["SELLER".to_owned()]);
    let row_a = listings::by_id(&pool, a)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row_a.status, "PUBLISHED");
    assert_eq!(row_a.tags, vec!["lamp".to_owned(), "red".to_owned()]);
    assert_eq!(row_a.updated_at, at(2));
    assert_eq!(
        listings::by_id(&pool, b)
            .await
            .expect("query")
            .expect("row")
            .status,
        "DRAFT"
    );

    // Restart: a fresh runtime resumes from the committed checkpoint; a
    // re-applied insert would violate the primary key and fail the projection.
    stop.send(true).expect("stop");
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    let head = append(&store, "listing", b, vec![published(b, 4)]).await;
    assert!(
        progress
            .wait_for(&[accounts::NAME, listings::NAME], head, DEADLINE)
            .await
    );
    assert_eq!(
        listings::by_id(&pool, b)
            .await
            .expect("query")
            .expect("row")
            .status,
        "PUBLISHED"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_listings")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 2);
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM projection_checkpoints ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("states");
    assert_eq!(states, vec!["RUNNING", "RUNNING"]);
}

#[tokio::test]
async fn a_stale_runner_cannot_commit_a_batch_twice() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    append(
        &store,
        "account",
        seller,
        vec![account(seller, "fenced@example.com")],
    )
    .await;
    let batch = store.read_all(Position::START, 10).await.expect("read");
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), Progress::default());
    let projection = accounts::AccountsProjection;
    let from = runtime.checkpoint(&projection).await.expect("checkpoint");
    let to = runtime
        .commit_batch(&projection, from, &batch)
        .await
        .expect("first commit");
    assert_eq!(to, batch[0].position);
    // A second runner that read the same old checkpoint is refused.
    match runtime.commit_batch(&projection, from, &batch).await {
        Err(ProjectionError::Fenced { name }) => assert_eq!(name, projection.name()),
        // The duplicate insert may fail first; either way nothing is applied twice.
        Err(ProjectionError::Sql(_)) => {}
        other => panic!("expected the stale commit to fail, got {other:?}"),
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_accounts")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_the_catalogue_with_filters_keyset_pages_and_facets() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    let mut head = Position::START;
    for i in 0..7u32 {
        let id = Uuid::now_v7();
        let category = if i % 2 == 0 { "home" } else { "garden" };
        let tags: &[&str] = if i < 3 { &["sale", "eco"] } else { &["eco"] };
        head = append(
            &store,
            "listing",
            id,
            vec![
                listing(
                    id,
                    seller,
                    &format!("Item {i}"),
                    category,
                    tags,
                    100 * i64::from(i + 1),
                    i,
                ),
                published(id, 30),
            ],
        )
        .await;
    }
    let draft = Uuid::now_v7();
    head = head.max(
        append(
            &store,
            "listing",
            draft,
            vec![listing(draft, seller, "Hidden", "home", &[], 50, 40)],
        )
        .await,
    );
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    assert!(progress.wait_for(&[listings::NAME], head, DEADLINE).await);

    let q = listings::ListingQuery {
        status: "PUBLISHED".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = listings::search(&pool, &q, listings::Sort::Newest, 3, after.as_deref())
            .await
            .expect("query")
            .expect("cursor");
        assert_eq!(page.total_count, 7);
        seen.extend(page.rows.iter().map(|(r, _)| r.title.clone()));
        if !page.has_next_page {
            break;
        }
        after = page.rows.last().map(|(_, c)| c.clone());
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("Item {i}")).collect();
    assert_eq!(seen, expected, "newest first, every item once across pages");

    let cheap_home = listings::ListingQuery {
        category: Some("HOME".into()),
        max_price_minor: Some(500),
        ..q.clone()
    };
    let page = listings::search(&pool, &cheap_home, listings::Sort::PriceAsc, 10, None)
        .await
        .expect("q")
        .expect("c");
    let prices: Vec<i64> = page.rows.iter().map(|(r, _)| r.price_minor).collect();
    assert_eq!(prices, vec![100, 300, 500]);

    let sale = listings::ListingQuery {
        tags: vec!["sale".into()],
        ..q.clone()
    };
    let page = listings::search(&pool, &sale, listings::Sort::Newest, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(page.total_count, 3);
    assert_eq!(
        page.tags[0],
        listings::FacetCount {
            value: "eco".into(),
            count: 3
        }
    );
    let all = listings::search(&pool, &q, listings::Sort::Newest, 1, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(
        all.categories,
        vec![
            listings::FacetCount {
                value: "home".into(),
                count: 4
            },
            listings::FacetCount {
                value: "garden".into(),
                count: 3
            },
        ]
    );
    let searched = listings::ListingQuery {
        search: Some("item 4".into()),
        ..q.clone()
    };
    assert_eq!(
        listings::search(&pool, &searched, listings::Sort::Newest, 10, None)
            .await
            .expect("q")
            .expect("c")
            .total_count,
        1
    );
    assert!(
        listings::search(&pool, &q, listings::Sort::Newest, 10, Some("garbage"))
            .await
            .expect("q")
            .is_err()
    );
}
