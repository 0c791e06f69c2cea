//! Projections against a real Postgres: feed events through the real store,
//! then assert rows.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use marketplace_domain::account::{
    Account, AccountEvent, AccountRegistered, EscrowRefunded, EscrowReleased, FundsDeposited,
    FundsHeld, SaleCredited, SaleShare,
};
use marketplace_domain::listing::{
    Listing, ListingCreated, ListingDelisted, ListingEvent, ListingKind, ListingPriceChanged,
    ListingPublished, ListingRestocked, ReservationCommitted, ReservationReleased, StockReserved,
};
use marketplace_domain::order::{
    LineSpec, Order, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderPlaced,
    OrderRejected, OrderShipped,
};
use marketplace_domain::review::{
    Review, ReviewApproved, ReviewEvent, ReviewRejected, ReviewSubmitted,
};
use marketplace_domain::values::*;
use marketplace_projections::read_models::{accounts, listings, notifications, orders, reviews};
use marketplace_projections::{
    Progress, Projection, ProjectionError, ProjectionState, ProjectorRuntime,
};
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{EventStore, Position};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::{append, eur, setup, DEADLINE};

fn at(min: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, min, 0)
        .single()
        .expect("date")
}

fn account(id: Uuid, email: &str) -> AccountEvent {
    AccountRegistered {
        account_id: AccountId(id),
        email: Email::parse(email).expect("valid").into(),
        display_name: DisplayName::parse("Shop").expect("valid").into(),
        password_hash: PasswordHash::from_phc("$argon2id$x".into())
            .expect("valid")
            .into(),
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
    append::<Account>(&store, seller, vec![account(seller, "shop@example.com")]).await;
    append::<Listing>(
        &store,
        a,
        vec![
            listing(a, seller, "Red lamp", "home", &["lamp", "red"], 1500, 1),
            published(a, 2),
        ],
    )
    .await;
    let head = append::<Listing>(
        &store,
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
    let head = append::<Listing>(&store, b, vec![published(b, 4)]).await;
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
    // The new runners take over as the old ones hand over their locks.
    for name in ALL {
        assert!(
            progress
                .wait_for_state(name, ProjectionState::Running, DEADLINE)
                .await
        );
    }
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM projection_checkpoints ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("states");
    assert_eq!(states, vec!["RUNNING"; ALL.len()]);
}

#[tokio::test]
async fn a_stale_runner_cannot_commit_a_batch_twice() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    append::<Account>(&store, seller, vec![account(seller, "fenced@example.com")]).await;
    let batch = store.read_all(Position::START, 10).await.expect("read");
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), Progress::default());
    let projection = accounts::AccountsProjection;
    let (generation, from) = runtime.take_over(&projection).await.expect("take over");
    let to = runtime
        .commit_batch(&projection, generation, from, &batch)
        .await
        .expect("first commit");
    assert_eq!(to, batch[0].position);
    // A second runner that read the same old checkpoint is refused.
    match runtime
        .commit_batch(&projection, generation, from, &batch)
        .await
    {
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
        head = append::<Listing>(
            &store,
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
        append::<Listing>(
            &store,
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

const ALL: [&str; 5] = [
    accounts::NAME,
    listings::NAME,
    notifications::NAME,
    orders::NAME,
    reviews::NAME,
];

fn money(minor: i64, currency: &str) -> Money {
    Money {
        minor,
        currency: Currency::parse(currency).expect("valid"),
    }
}

fn deposited(account: Uuid, amount: Money) -> AccountEvent {
    FundsDeposited {
        account_id: AccountId(account),
        deposit_id: Uuid::now_v7(),
        amount,
        deposited_at: at(1),
    }
    .into()
}

fn held(account: Uuid, order: Uuid, minor: i64) -> AccountEvent {
    FundsHeld {
        account_id: AccountId(account),
        order_id: OrderId(order),
        amount: eur(minor),
        held_at: at(2),
    }
    .into()
}

fn refunded(account: Uuid, order: Uuid, minor: i64) -> AccountEvent {
    EscrowRefunded {
        account_id: AccountId(account),
        order_id: OrderId(order),
        amount: eur(minor),
        refunded_at: at(3),
    }
    .into()
}

fn released(account: Uuid, order: Uuid, minor: i64) -> AccountEvent {
    EscrowReleased {
        account_id: AccountId(account),
        order_id: OrderId(order),
        amount: eur(minor),
        released_at: at(4),
    }
    .into()
}

fn credited(account: Uuid, order: Uuid, minor: i64, share: SaleShare) -> AccountEvent {
    SaleCredited {
        account_id: AccountId(account),
        order_id: OrderId(order),
        amount: eur(minor),
        share,
        credited_at: at(4),
    }
    .into()
}

/// Folds the whole log so far as one batch into every read model, so that
/// the in-memory folding of a batch is exercised deterministically; a
/// runtime started afterwards resumes from there.
async fn fold_as_one_batch(pool: &PgPool, store: &PostgresEventStore) -> Position {
    let batch = store.read_all(Position::START, 10_000).await.expect("read");
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), Progress::default());
    let mut head = Position::START;
    for p in marketplace_projections::all() {
        let (generation, from) = runtime.take_over(p.as_ref()).await.expect("take over");
        head = runtime
            .commit_batch(p.as_ref(), generation, from, &batch)
            .await
            .expect("commit");
    }
    head
}

/// Waits until every read model has passed `head`.
async fn caught_up(progress: &Progress, head: Position) {
    assert!(
        progress.wait_for(&ALL, head, DEADLINE).await,
        "projections did not reach {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_balances_follow_deposits_holds_refunds_and_credits() {
    let (pool, store) = setup().await;
    let (buyer, seller) = (Uuid::now_v7(), Uuid::now_v7());
    let (o1, o2) = (Uuid::now_v7(), Uuid::now_v7());
    let fee = FEE_ACCOUNT_ID.0;
    // The first batch holds several changes of one wallet.
    append::<Account>(
        &store,
        buyer,
        vec![
            account(buyer, "buyer@example.com"),
            deposited(buyer, eur(10_000)),
            deposited(buyer, money(500, "USD")),
            held(buyer, o1, 3_000),
        ],
    )
    .await;
    append::<Account>(&store, seller, vec![account(seller, "seller@example.com")]).await;
    let head = fold_as_one_batch(&pool, &store).await;
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    caught_up(&progress, head).await;
    assert_eq!(
        accounts::balances(&pool, buyer).await.expect("q"),
        vec![("EUR".to_owned(), 7_000), ("USD".to_owned(), 500)]
    );
    assert!(accounts::balances(&pool, seller)
        .await
        .expect("q")
        .is_empty());

    // Later batches add to the stored balances.
    append::<Account>(
        &store,
        buyer,
        vec![
            held(buyer, o2, 2_000),
            refunded(buyer, o2, 2_000),
            released(buyer, o1, 3_000),
        ],
    )
    .await;
    append::<Account>(
        &store,
        seller,
        vec![credited(seller, o1, 2_850, SaleShare::Payout)],
    )
    .await;
    let head = append::<Account>(&store, fee, vec![credited(fee, o1, 150, SaleShare::Fee)]).await;
    caught_up(&progress, head).await;
    assert_eq!(
        accounts::balances(&pool, buyer).await.expect("q"),
        vec![("EUR".to_owned(), 7_000), ("USD".to_owned(), 500)],
        "a refund undoes its hold; releasing escrow leaves the wallet alone"
    );
    assert_eq!(
        accounts::balances(&pool, seller).await.expect("q"),
        vec![("EUR".to_owned(), 2_850)]
    );
    assert_eq!(
        accounts::balances(&pool, fee).await.expect("q"),
        vec![("EUR".to_owned(), 150)],
        "the fee account has a balance without a profile"
    );
    assert!(accounts::by_id(&pool, fee).await.expect("q").is_none());
    let mut batch = accounts::balances_of(&pool, &[seller, buyer, Uuid::now_v7()])
        .await
        .expect("q");
    batch.sort();
    let mut expected = vec![
        (buyer, "EUR".to_owned(), 7_000),
        (buyer, "USD".to_owned(), 500),
        (seller, "EUR".to_owned(), 2_850),
    ];
    expected.sort();
    assert_eq!(batch, expected);
}

fn stock_event(id: Uuid, order: Uuid, units: u32, what: &str) -> ListingEvent {
    let (listing_id, order_id, quantity) = (ListingId(id), OrderId(order), Quantity(units));
    match what {
        "reserve" => StockReserved {
            listing_id,
            order_id,
            quantity,
            reserved_at: at(10),
        }
        .into(),
        "release" => ReservationReleased {
            listing_id,
            order_id,
            quantity,
            released_at: at(11),
        }
        .into(),
        "commit" => ReservationCommitted {
            listing_id,
            order_id,
            quantity,
            committed_at: at(12),
        }
        .into(),
        other => panic!("unknown stock event {other}"),
    }
}

fn restocked(id: Uuid, units: u32, min: u32) -> ListingEvent {
    ListingRestocked {
        listing_id: ListingId(id),
        quantity: Quantity(units),
        restocked_at: at(min),
    }
    .into()
}

async fn row(pool: &PgPool, id: Uuid) -> listings::ListingRow {
    listings::by_id(pool, id).await.expect("q").expect("row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_stock_follows_reservations_commits_and_restocks() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    let (a, b, digital) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (o1, o2, o3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // Listing `b` is created and sold within the first batch: its whole
    // history folds into its insert.
    append::<Listing>(
        &store,
        a,
        vec![
            listing(a, seller, "Lamp", "home", &[], 1500, 1),
            published(a, 2),
        ],
    )
    .await;
    append::<Listing>(
        &store,
        b,
        vec![
            listing(b, seller, "Vase", "home", &[], 800, 1),
            published(b, 2),
            stock_event(b, o3, 2, "reserve"),
            stock_event(b, o3, 2, "commit"),
            restocked(b, 5, 13),
        ],
    )
    .await;
    append::<Listing>(
        &store,
        digital,
        vec![
            ListingCreated {
                kind: ListingKind::Digital,
                quantity: Quantity(0),
                content_hash: Some(ContentHash::parse(&"ab".repeat(32)).expect("valid")),
                ..match listing(digital, seller, "Ebook", "books", &[], 500, 1) {
                    ListingEvent::Created(c) => c,
                    other => panic!("not a creation: {other:?}"),
                }
            }
            .into(),
            published(digital, 2),
        ],
    )
    .await;
    let head = fold_as_one_batch(&pool, &store).await;
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    caught_up(&progress, head).await;
    let vase = row(&pool, b).await;
    assert_eq!(
        (vase.quantity, vase.reserved, vase.sold),
        (6, 0, 2),
        "3 + 5 stocked, 2 sold"
    );
    assert_eq!(vase.updated_at, at(13));
    let lamp = row(&pool, a).await;
    assert_eq!((lamp.quantity, lamp.reserved, lamp.sold), (3, 0, 0));
    let ebook = row(&pool, digital).await;
    assert_eq!((ebook.kind.as_str(), ebook.quantity), ("DIGITAL", 0));

    // Updates of stored rows, one batch at a time.
    let head = append::<Listing>(&store, a, vec![stock_event(a, o1, 2, "reserve")]).await;
    caught_up(&progress, head).await;
    let lamp = row(&pool, a).await;
    assert_eq!((lamp.quantity, lamp.reserved, lamp.sold), (1, 2, 0));
    assert_eq!(
        lamp.updated_at,
        at(2),
        "reservations are not seller changes"
    );

    let head = append::<Listing>(
        &store,
        a,
        vec![
            stock_event(a, o2, 1, "reserve"),
            stock_event(a, o1, 2, "commit"),
            stock_event(a, o2, 1, "release"),
        ],
    )
    .await;
    caught_up(&progress, head).await;
    let lamp = row(&pool, a).await;
    assert_eq!((lamp.quantity, lamp.reserved, lamp.sold), (1, 0, 2));

    let head = append::<Listing>(
        &store,
        a,
        vec![
            restocked(a, 4, 20),
            ListingPriceChanged {
                listing_id: ListingId(a),
                price: eur(1200),
                changed_at: at(21),
            }
            .into(),
            ListingPriceChanged {
                listing_id: ListingId(a),
                price: eur(1100),
                changed_at: at(22),
            }
            .into(),
            ListingDelisted {
                listing_id: ListingId(a),
                delisted_at: at(23),
            }
            .into(),
        ],
    )
    .await;
    caught_up(&progress, head).await;
    let lamp = row(&pool, a).await;
    assert_eq!((lamp.quantity, lamp.reserved, lamp.sold), (5, 0, 2));
    assert_eq!(lamp.price_minor, 1100, "the last price in the batch wins");
    assert_eq!(lamp.status, "DELISTED");
    assert_eq!(lamp.updated_at, at(23));
    assert_eq!((lamp.rating_count, lamp.average_rating), (0, None));
}

fn submitted(review: Uuid, listing: Uuid, author: Uuid, stars: i64, min: u32) -> ReviewEvent {
    ReviewSubmitted {
        review_id: ReviewId(review),
        listing_id: ListingId(listing),
        order_id: OrderId(Uuid::now_v7()),
        author_id: AccountId(author),
        rating: Rating::parse(stars).expect("valid"),
        comment: ReviewComment::parse("Lovely").expect("valid").into(),
        submitted_at: at(min),
    }
    .into()
}

fn approved(review: Uuid, listing: Uuid, stars: i64) -> ReviewEvent {
    ReviewApproved {
        review_id: ReviewId(review),
        listing_id: ListingId(listing),
        rating: Rating::parse(stars).expect("valid"),
        moderator_id: AccountId(Uuid::now_v7()),
        approved_at: at(40),
    }
    .into()
}

fn rejected(review: Uuid, listing: Uuid) -> ReviewEvent {
    ReviewRejected {
        review_id: ReviewId(review),
        listing_id: ListingId(listing),
        moderator_id: AccountId(Uuid::now_v7()),
        reason: Reason::parse("Off topic").expect("valid"),
        rejected_at: at(41),
    }
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_approved_reviews_are_listed_and_rated() {
    let (pool, store) = setup().await;
    let (seller, buyer, listing_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let r: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    append::<Listing>(
        &store,
        listing_id,
        vec![
            listing(listing_id, seller, "Lamp", "home", &[], 1500, 1),
            published(listing_id, 2),
        ],
    )
    .await;
    // r0 is submitted and approved within the first batch.
    append::<Review>(
        &store,
        r[0],
        vec![
            submitted(r[0], listing_id, buyer, 5, 30),
            approved(r[0], listing_id, 5),
        ],
    )
    .await;
    for (i, stars) in [(1, 2), (2, 4), (3, 1), (4, 3)] {
        append::<Review>(
            &store,
            r[i],
            vec![submitted(r[i], listing_id, buyer, stars, 30 + i as u32)],
        )
        .await;
    }
    let head = fold_as_one_batch(&pool, &store).await;
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    caught_up(&progress, head).await;
    let lamp = row(&pool, listing_id).await;
    assert_eq!((lamp.rating_count, lamp.average_rating), (1, Some(5.0)));
    let queue = reviews::pending(&pool, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(queue.total_count, 4);
    let ids: Vec<Uuid> = queue.rows.iter().map(|(row, _)| row.review_id).collect();
    assert_eq!(ids, r[1..].to_vec(), "the queue is oldest first");

    // Moderation in later batches.
    append::<Review>(&store, r[1], vec![rejected(r[1], listing_id)]).await;
    append::<Review>(&store, r[2], vec![approved(r[2], listing_id, 4)]).await;
    let head = append::<Review>(&store, r[3], vec![approved(r[3], listing_id, 1)]).await;
    caught_up(&progress, head).await;
    let lamp = row(&pool, listing_id).await;
    assert_eq!(lamp.rating_count, 3);
    assert_eq!(lamp.average_rating, Some(10.0 / 3.0));

    let rejected_row = reviews::by_id(&pool, r[1]).await.expect("q").expect("row");
    assert_eq!(rejected_row.status, "REJECTED");
    assert_eq!(rejected_row.rejection_reason.as_deref(), Some("Off topic"));
    assert_eq!(rejected_row.updated_at, at(41));
    assert_eq!(rejected_row.rating, 2);

    // Approved only, newest first, in pages of two.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reviews::for_listing(&pool, listing_id, false, 2, after.as_deref())
            .await
            .expect("q")
            .expect("c");
        assert_eq!(page.total_count, 3);
        seen.extend(page.rows.iter().map(|(row, _)| row.review_id));
        if !page.has_next_page {
            break;
        }
        after = page.rows.last().map(|(_, c)| c.clone());
    }
    assert_eq!(seen, vec![r[3], r[2], r[0]]);
    let all = reviews::for_listing(&pool, listing_id, true, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(all.total_count, 5);
    let statuses: Vec<&str> = all
        .rows
        .iter()
        .map(|(row, _)| row.status.as_str())
        .collect();
    assert_eq!(
        statuses,
        vec!["PENDING", "APPROVED", "APPROVED", "REJECTED", "APPROVED"]
    );
    let queue = reviews::pending(&pool, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(
        queue
            .rows
            .iter()
            .map(|(row, _)| row.review_id)
            .collect::<Vec<_>>(),
        vec![r[4]]
    );
    assert!(
        reviews::for_listing(&pool, listing_id, false, 2, Some("zz"))
            .await
            .expect("q")
            .is_err()
    );
}

fn placed(order: Uuid, buyer: Uuid, seller: Uuid, listing: Uuid, min: u32) -> OrderEvent {
    let lines = vec![
        LineSpec {
            listing_id: ListingId(listing),
            seller_id: AccountId(seller),
            kind: ListingKind::Physical,
            quantity: 2,
            unit_price: eur(700),
        },
        LineSpec {
            listing_id: ListingId(Uuid::now_v7()),
            seller_id: AccountId(seller),
            kind: ListingKind::Physical,
            quantity: 1,
            unit_price: eur(100),
        },
    ];
    OrderPlaced {
        order_id: OrderId(order),
        buyer_id: AccountId(buyer),
        seller_id: AccountId(seller),
        lines,
        total: eur(1_500),
        placed_at: at(min),
    }
    .into()
}

fn confirmed(order: Uuid, min: u32) -> OrderEvent {
    OrderConfirmed {
        order_id: OrderId(order),
        confirmed_at: at(min),
    }
    .into()
}

fn shipped(order: Uuid, tracking: Option<&str>, min: u32) -> OrderEvent {
    OrderShipped {
        order_id: OrderId(order),
        tracking_code: tracking.map(|t| TrackingCode::parse(t).expect("valid")),
        shipped_at: at(min),
    }
    .into()
}

async fn order_row(pool: &PgPool, id: Uuid) -> orders::OrderRow {
    orders::by_id(pool, id).await.expect("q").expect("row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_follow_their_status_and_page_by_buyer_and_seller() {
    let (pool, store) = setup().await;
    let (buyer, other_buyer) = (Uuid::now_v7(), Uuid::now_v7());
    let (seller, other_seller) = (Uuid::now_v7(), Uuid::now_v7());
    let item = Uuid::now_v7();
    let o: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    // The first batch holds o0's whole life.
    append::<Order>(
        &store,
        o[0],
        vec![
            placed(o[0], buyer, seller, item, 1),
            confirmed(o[0], 2),
            shipped(o[0], Some("TRACK-1"), 3),
            OrderDelivered {
                order_id: OrderId(o[0]),
                buyer_id: AccountId(buyer),
                seller_id: AccountId(seller),
                payout: eur(1_425),
                fee: eur(75),
                delivered_at: at(4),
            }
            .into(),
        ],
    )
    .await;
    append::<Order>(
        &store,
        o[1],
        vec![
            placed(o[1], buyer, seller, item, 5),
            OrderRejected {
                order_id: OrderId(o[1]),
                reason: Reason::parse("Out of stock").expect("valid"),
                rejected_at: at(6),
            }
            .into(),
        ],
    )
    .await;
    // o2 and o3 share a placement time: the id breaks the tie.
    append::<Order>(&store, o[2], vec![placed(o[2], buyer, seller, item, 7)]).await;
    append::<Order>(&store, o[3], vec![placed(o[3], buyer, seller, item, 7)]).await;
    append::<Order>(
        &store,
        o[4],
        vec![placed(o[4], other_buyer, seller, item, 8)],
    )
    .await;
    append::<Order>(
        &store,
        o[5],
        vec![placed(o[5], buyer, other_seller, item, 9)],
    )
    .await;
    let head = fold_as_one_batch(&pool, &store).await;
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    caught_up(&progress, head).await;

    let delivered = order_row(&pool, o[0]).await;
    assert_eq!(delivered.status, "DELIVERED");
    assert_eq!(delivered.tracking_code.as_deref(), Some("TRACK-1"));
    assert_eq!((delivered.placed_at, delivered.updated_at), (at(1), at(4)));
    assert_eq!(
        (delivered.total_minor, delivered.currency.as_str()),
        (1_500, "EUR")
    );
    let rejected = order_row(&pool, o[1]).await;
    assert_eq!(rejected.status, "REJECTED");
    assert_eq!(rejected.status_reason.as_deref(), Some("Out of stock"));
    assert_eq!(order_row(&pool, o[2]).await.status, "PENDING");

    // Transitions of stored rows.
    append::<Order>(
        &store,
        o[2],
        vec![
            confirmed(o[2], 10),
            OrderCancelled {
                order_id: OrderId(o[2]),
                reason: Reason::parse("Changed my mind").expect("valid"),
                cancelled_at: at(11),
            }
            .into(),
        ],
    )
    .await;
    let head = append::<Order>(&store, o[3], vec![confirmed(o[3], 10)]).await;
    caught_up(&progress, head).await;
    let cancelled = order_row(&pool, o[2]).await;
    assert_eq!(cancelled.status, "CANCELLED");
    assert_eq!(cancelled.status_reason.as_deref(), Some("Changed my mind"));
    assert_eq!(cancelled.updated_at, at(11));
    assert_eq!(order_row(&pool, o[3]).await.status, "CONFIRMED");
    let head = append::<Order>(&store, o[3], vec![shipped(o[3], None, 12)]).await;
    caught_up(&progress, head).await;
    let untracked = order_row(&pool, o[3]).await;
    assert_eq!(untracked.status, "SHIPPED");
    assert_eq!(
        (untracked.tracking_code, untracked.status_reason),
        (None, None)
    );

    // Lines of several orders in one call.
    let lines = orders::lines_of(&pool, &[o[1], o[0]]).await.expect("q");
    assert_eq!(lines.len(), 4);
    let of_o0: Vec<_> = lines.iter().filter(|l| l.order_id == o[0]).collect();
    assert_eq!(
        of_o0
            .iter()
            .map(|l| (l.line_no, l.quantity, l.unit_price_minor))
            .collect::<Vec<_>>(),
        vec![(1, 2, 700), (2, 1, 100)]
    );
    assert_eq!(of_o0[0].listing_id, item);

    // The buyer's orders, newest first, in pages of two.
    let (tie_first, tie_second) = if o[3] > o[2] {
        (o[3], o[2])
    } else {
        (o[2], o[3])
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = orders::for_buyer(&pool, buyer, 2, after.as_deref())
            .await
            .expect("q")
            .expect("c");
        pages += 1;
        assert_eq!(page.total_count, 5);
        seen.extend(page.rows.iter().map(|(row, _)| row.order_id));
        if !page.has_next_page {
            break;
        }
        after = page.rows.last().map(|(_, c)| c.clone());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec![o[5], tie_first, tie_second, o[1], o[0]]);

    let page = orders::for_seller(&pool, seller, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(page.total_count, 5);
    assert!(!page.has_next_page);
    assert_eq!(
        page.rows
            .iter()
            .map(|(row, _)| row.order_id)
            .collect::<Vec<_>>(),
        vec![o[4], tie_first, tie_second, o[1], o[0]]
    );
    let page = orders::for_seller(&pool, other_seller, 10, None)
        .await
        .expect("q")
        .expect("c");
    assert_eq!(page.total_count, 1);
    assert!(orders::for_buyer(&pool, buyer, 2, Some("garbage"))
        .await
        .expect("q")
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_sorts_by_approved_rating_with_unrated_listings_last() {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        append::<Listing>(
            &store,
            *id,
            vec![
                listing(
                    *id,
                    seller,
                    &format!("Item {i}"),
                    "home",
                    &[],
                    1_000,
                    i as u32,
                ),
                published(*id, 10),
            ],
        )
        .await;
    }
    // Item 0: 3 stars; item 1: 5 and 4 (4.5); item 2: unrated (its only
    // review is rejected).
    for (listing_id, stars, approve) in [
        (ids[0], 3, true),
        (ids[1], 5, true),
        (ids[1], 4, true),
        (ids[2], 5, false),
    ] {
        let review = Uuid::now_v7();
        let mut events = vec![submitted(review, listing_id, Uuid::now_v7(), stars, 20)];
        events.push(if approve {
            approved(review, listing_id, stars)
        } else {
            rejected(review, listing_id)
        });
        append::<Review>(&store, review, events).await;
    }
    fold_as_one_batch(&pool, &store).await;
    let q = listings::ListingQuery {
        status: "PUBLISHED".into(),
        ..listings::ListingQuery::default()
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = listings::search(&pool, &q, listings::Sort::Rating, 1, after.as_deref())
            .await
            .expect("search")
            .expect("cursor");
        for (row, cursor) in page.rows {
            seen.push((row.title.clone(), row.average_rating, row.rating_count));
            after = Some(cursor);
        }
        if !page.has_next_page {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            ("Item 1".to_owned(), Some(4.5), 2),
            ("Item 0".to_owned(), Some(3.0), 1),
            ("Item 2".to_owned(), None, 0),
        ]
    );
}

/// An order's confirmation notifies its buyer and its seller with its
/// total, whether its placement is in the same batch (checked out at
/// placement: one append) or came in an earlier one (the saga's path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_notifications_name_both_parties_whether_placed_in_the_same_batch_or_before() {
    let (pool, store) = setup().await;
    let (buyer, seller, item) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (together, apart) = (Uuid::now_v7(), Uuid::now_v7());
    append::<Order>(
        &store,
        together,
        vec![
            placed(together, buyer, seller, item, 1),
            confirmed(together, 2),
        ],
    )
    .await;
    append::<Order>(&store, apart, vec![placed(apart, buyer, seller, item, 3)]).await;
    let head = fold_as_one_batch(&pool, &store).await;
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    caught_up(&progress, head).await;
    let head = append::<Order>(&store, apart, vec![confirmed(apart, 4)]).await;
    caught_up(&progress, head).await;

    let page = |account: Uuid| {
        let pool = pool.clone();
        async move {
            notifications::for_account(&pool, account, 10, None)
                .await
                .expect("query")
                .expect("page")
                .rows
                .into_iter()
                .map(|(n, _)| (n.kind, n.message))
                .collect::<Vec<_>>()
        }
    };
    let short = |id: Uuid| id.simple().to_string()[..8].to_owned();
    let told_buyer = page(buyer).await;
    let told_seller = page(seller).await;
    for order in [together, apart] {
        assert!(
            told_buyer
                .iter()
                .any(|(kind, message)| kind == "ORDER_CONFIRMED"
                    && message.contains(&short(order))
                    && !message.contains("{total}")),
            "the buyer is told about {order}: {told_buyer:?}"
        );
        assert!(
            told_seller.iter().any(|(kind, message)| kind == "ITEM_SOLD"
                && message.contains(&short(order))
                && !message.contains("{total}")),
            "the seller is told about {order}: {told_seller:?}"
        );
    }
    assert_eq!((told_buyer.len(), told_seller.len()), (2, 2));
}
