//! Rebuilds without downtime against a real Postgres: a new version of a
//! projection builds into its own schema while the old one keeps serving
//! concurrent readers and writers, one transaction switches the views, the
//! old build is dropped, and `verify` finds the rebuilt read models equal to
//! a scratch rebuild; `verify` names a tampered table; a fresh database and
//! an existing one (tables in `public`, from before builds) both serve
//! through the views.

mod common;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use common::*;
use marketplace_consumers::Envelope;
use marketplace_domain::account::{Account, AccountEvent, AccountRegistered, FundsDeposited};
use marketplace_domain::listing::{
    Listing, ListingCreated, ListingEvent, ListingKind, ListingPriceChanged, ListingPublished,
};
use marketplace_domain::order::{LineSpec, Order, OrderConfirmed, OrderEvent, OrderPlaced};
use marketplace_domain::review::{Review, ReviewApproved, ReviewEvent, ReviewSubmitted};
use marketplace_domain::values::*;
use marketplace_domain::AggregateKind;
use marketplace_projections::read_models::listings::{self, ListingQuery, Sort};
use marketplace_projections::read_models::{accounts, notifications, orders, reviews};
use marketplace_projections::{
    status, Progress, Projection, ProjectionCheck, ProjectionError, ProjectionState,
    ProjectorRuntime, RuntimeConfig, Table,
};
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{EventStore, Position};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

/// The listings read model at its next version: same tables, same fold. It
/// stands for a bumped `VERSION`.
struct ListingsNext;

#[async_trait]
impl Projection for ListingsNext {
    fn name(&self) -> &'static str {
        listings::NAME
    }

    fn version(&self) -> i32 {
        listings::VERSION + 1
    }

    fn tables(&self) -> &'static [Table] {
        listings::TABLES
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        listings::ListingsProjection.reads(aggregate)
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        listings::ListingsProjection.apply(tx, events).await
    }
}

/// Small knobs: quick takeovers, and a bulk load in many pages.
fn fast() -> RuntimeConfig {
    RuntimeConfig {
        max_batch: 50,
        lock_retry: Duration::from_millis(50),
        leader_check: Duration::from_millis(50),
        follow_interval: Duration::from_millis(10),
        retry: marketplace_consumers::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(20),
        ),
        bulk_batch: 50,
        ..RuntimeConfig::default()
    }
}

fn at(min: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, min % 60, 0)
        .single()
        .expect("date")
}

fn created(id: Uuid, seller: Uuid, n: u32) -> ListingEvent {
    ListingCreated {
        listing_id: ListingId(id),
        seller_id: AccountId(seller),
        kind: ListingKind::Physical,
        title: Title::parse(&format!("Lamp {n}")).expect("valid"),
        description: Description::parse("A fine thing").expect("valid"),
        category: Category::parse(["home", "garden", "books"][n as usize % 3]).expect("valid"),
        tags: Tags::parse(["lamp", "red"].into_iter().take(n as usize % 3)).expect("valid"),
        price: eur(100 + i64::from(n)),
        quantity: Quantity(3),
        content_hash: None,
        created_at: at(n),
    }
    .into()
}

fn published(id: Uuid, n: u32) -> ListingEvent {
    ListingPublished {
        listing_id: ListingId(id),
        published_at: at(n + 1),
    }
    .into()
}

/// Appends one published listing (two events); returns its id.
async fn publish_listing(store: &PostgresEventStore, seller: Uuid, n: u32) -> Uuid {
    let id = Uuid::now_v7();
    append::<Listing>(store, id, vec![created(id, seller, n), published(id, n)]).await;
    id
}

/// A small marketplace touching every read model: a seller with `listings`
/// published listings (some repriced), a funded buyer, an order and an
/// approved review. Returns (seller, the listings).
async fn marketplace(store: &PostgresEventStore, listings: u32) -> (Uuid, Vec<Uuid>) {
    let (seller, buyer) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, email) in [(seller, "shop@example.com"), (buyer, "buyer@example.com")] {
        append::<Account>(
            store,
            id,
            vec![
                AccountEvent::from(AccountRegistered {
                    account_id: AccountId(id),
                    email: Email::parse(email).expect("valid").into(),
                    display_name: DisplayName::parse("Someone").expect("valid").into(),
                    password_hash: PasswordHash::from_phc("$argon2id$x".into())
                        .expect("valid")
                        .into(),
                    roles: vec![Role::Seller, Role::Buyer],
                    registered_at: at(0),
                }),
                FundsDeposited {
                    account_id: AccountId(id),
                    deposit_id: Uuid::now_v7(),
                    amount: eur(10_000),
                    deposited_at: at(1),
                }
                .into(),
            ],
        )
        .await;
    }
    let mut ids = Vec::new();
    for n in 0..listings {
        let id = publish_listing(store, seller, n).await;
        if n % 7 == 0 {
            append::<Listing>(
                store,
                id,
                vec![ListingEvent::from(ListingPriceChanged {
                    listing_id: ListingId(id),
                    price: eur(999),
                    changed_at: at(n + 2),
                })],
            )
            .await;
        }
        ids.push(id);
    }
    let order = Uuid::now_v7();
    append::<Order>(
        store,
        order,
        vec![
            OrderEvent::from(OrderPlaced {
                order_id: OrderId(order),
                buyer_id: AccountId(buyer),
                seller_id: AccountId(seller),
                lines: vec![LineSpec {
                    listing_id: ListingId(ids[0]),
                    seller_id: AccountId(seller),
                    kind: ListingKind::Physical,
                    quantity: 1,
                    unit_price: eur(100),
                }],
                total: eur(100),
                placed_at: at(30),
            }),
            OrderConfirmed {
                order_id: OrderId(order),
                confirmed_at: at(31),
            }
            .into(),
        ],
    )
    .await;
    let review = Uuid::now_v7();
    append::<Review>(
        store,
        review,
        vec![
            ReviewEvent::from(ReviewSubmitted {
                review_id: ReviewId(review),
                listing_id: ListingId(ids[0]),
                order_id: OrderId(order),
                author_id: AccountId(buyer),
                rating: Rating::parse(4).expect("valid"),
                comment: ReviewComment::parse("Lovely").expect("valid").into(),
                submitted_at: at(40),
            }),
            ReviewApproved {
                review_id: ReviewId(review),
                listing_id: ListingId(ids[0]),
                rating: Rating::parse(4).expect("valid"),
                moderator_id: AccountId(Uuid::now_v7()),
                approved_at: at(41),
            }
            .into(),
        ],
    )
    .await;
    (seller, ids)
}

/// One "process": its pool, store, progress and runtime.
struct Process {
    pool: PgPool,
    store: PostgresEventStore,
    progress: Progress,
    runtime: ProjectorRuntime,
}

impl Process {
    async fn start(db: &marketplace_embedded_postgres::testdb::TestDatabase, app: &str) -> Self {
        let pool = named_pool(db, app).await;
        let store = PostgresEventStore::new(pool.clone()).await.expect("store");
        let progress = Progress::default();
        let runtime =
            ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone())
                .with_config(fast());
        Self {
            pool,
            store,
            progress,
            runtime,
        }
    }

    fn run(
        &self,
        projections: Vec<Arc<dyn Projection>>,
        stop: &watch::Sender<bool>,
    ) -> Vec<tokio::task::JoinHandle<Result<(), ProjectionError>>> {
        projections
            .into_iter()
            .map(|p| {
                let (runtime, stop_rx) = (self.runtime.clone(), stop.subscribe());
                tokio::spawn(async move { runtime.run(p, stop_rx).await })
            })
            .collect()
    }

    async fn reaches(&self, names: &[&str], position: Position) -> bool {
        self.progress.wait_for(names, position, DEADLINE).await
    }
}

/// The four read models, with listings at its next version.
fn bumped() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(accounts::AccountsProjection),
        Arc::new(ListingsNext),
        Arc::new(orders::OrdersProjection),
        Arc::new(reviews::ReviewsProjection),
        Arc::new(notifications::NotificationsProjection),
    ]
}

const ALL: [&str; 5] = [
    accounts::NAME,
    listings::NAME,
    orders::NAME,
    reviews::NAME,
    notifications::NAME,
];

async fn listings_status(p: &Process) -> status::ProjectionStatus {
    status::status(&p.pool, &p.store)
        .await
        .expect("status")
        .into_iter()
        .find(|s| s.name == listings::NAME)
        .expect("listed")
}

async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("namespace")
}

/// The schema the view `public.<view>` selects from.
async fn view_target(pool: &PgPool, view: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.view_table_usage \
         WHERE view_schema = 'public' AND view_name = $1",
    )
    .bind(view)
    .fetch_optional(pool)
    .await
    .expect("view")
}

fn assert_parity(checks: &[ProjectionCheck]) {
    assert_eq!(checks.len(), marketplace_projections::all().len());
    for c in checks {
        assert!(
            c.matches(),
            "{} differs from a scratch rebuild: {c:?}",
            c.name
        );
        assert!(!c.tables.is_empty());
    }
}

fn no_progress() -> impl Fn(&str, Position, Position) + Send + Sync {
    |_: &str, _: Position, _: Position| {}
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    /// Query errors, with the phase they happened in.
    errors: Mutex<Vec<String>>,
    /// A catalogue count lower than one the same reader saw before.
    regressions: Mutex<Vec<(i64, i64)>>,
    /// Listings seen in a page that `by_id` then did not find.
    missing: AtomicU64,
    /// Queries per phase: before, during and after the rebuild.
    queries: [AtomicU64; 3],
}

fn published_only() -> ListingQuery {
    ListingQuery {
        status: "PUBLISHED".to_owned(),
        ..ListingQuery::default()
    }
}

/// Queries the catalogue in a loop until `stop`: the count a reader sees
/// never goes down (so never back to empty), and a listing it has seen is
/// always found by id.
async fn reader(pool: PgPool, seen: Arc<Seen>, phase: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let mut best = 0i64;
    let mut known: Vec<Uuid> = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = phase.load(Ordering::Relaxed);
        i += 1;
        match listings::search(&pool, &published_only(), Sort::Newest, 5, None).await {
            Ok(Ok(page)) => {
                if page.total_count < best {
                    seen.regressions
                        .lock()
                        .expect("lock")
                        .push((best, page.total_count));
                }
                best = best.max(page.total_count);
                known.extend(page.rows.iter().map(|(r, _)| r.listing_id));
            }
            Ok(Err(e)) => seen
                .errors
                .lock()
                .expect("lock")
                .push(format!("phase {now}: {e}")),
            Err(e) => seen
                .errors
                .lock()
                .expect("lock")
                .push(format!("phase {now}: search: {e}")),
        }
        if let Some(id) = known.get(i % known.len().max(1)).copied() {
            match listings::by_id(&pool, id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    seen.missing.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => seen
                    .errors
                    .lock()
                    .expect("lock")
                    .push(format!("phase {now}: by_id: {e}")),
            }
        }
        seen.queries[now].fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_new_version_builds_beside_the_live_one_and_switches_in_under_load() {
    let db = migrated_db().await;
    let a = Process::start(&db, "old-version").await;
    let (seller, initial) = marketplace(&a.store, 300).await;
    let (stop, _) = watch::channel(false);
    let _old = a.run(marketplace_projections::all(), &stop);
    let head = a.store.head().await.expect("head");
    assert!(a.reaches(&ALL, head).await);
    let old_schema = format!("rm_listings_v{}", listings::VERSION);
    let new_schema = format!("rm_listings_v{}", listings::VERSION + 1);
    assert_eq!(
        view_target(&a.pool, "rm_listings").await.as_deref(),
        Some(old_schema.as_str())
    );

    // Concurrent writers and readers.
    let halt = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2u32 {
        let (store, halt, written) = (a.store.clone(), halt.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 1_000 * (w + 1);
            while !halt.load(Ordering::Relaxed) {
                publish_listing(&store, seller, n).await;
                written.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    let (seen, phase, done) = (
        Arc::new(Seen::default()),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let readers_pool = named_pool(&db, "readers").await;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(reader(
                readers_pool.clone(),
                seen.clone(),
                phase.clone(),
                done.clone(),
            ))
        })
        .collect();
    eventually("readers and writers are busy", || async {
        seen.queries[0].load(Ordering::Relaxed) >= 20 && written.load(Ordering::Relaxed) >= 10
    })
    .await;

    // A process with the next version starts: it rebuilds listings beside
    // the live build, which keeps serving (and keeps being projected by the
    // old process), and switches it in when it has caught up.
    phase.store(1, Ordering::Relaxed);
    let b = Process::start(&db, "new-version").await;
    let _new = b.run(vec![Arc::new(ListingsNext)], &stop);
    let saw_rebuild = AtomicBool::new(false);
    eventually("the new version is live", || async {
        let s = listings_status(&b).await;
        if let Some(r) = &s.rebuild {
            saw_rebuild.store(true, Ordering::Relaxed);
            assert_eq!(
                (r.version, r.schema.as_str()),
                (listings::VERSION + 1, new_schema.as_str())
            );
            assert_eq!(s.building_version, Some(listings::VERSION + 1));
            assert!((0.0..=1.0).contains(&s.rebuild_progress.expect("progress")));
            assert_eq!(
                s.schema.as_deref(),
                Some(old_schema.as_str()),
                "the old build serves meanwhile"
            );
        }
        s.version == listings::VERSION + 1
    })
    .await;
    phase.store(2, Ordering::Relaxed);
    assert!(
        saw_rebuild.into_inner(),
        "the rebuild showed in the status while it ran"
    );
    assert_eq!(
        view_target(&a.pool, "rm_listings").await.as_deref(),
        Some(new_schema.as_str())
    );
    let after = seen.queries[2].load(Ordering::Relaxed);
    eventually("readers keep querying after the switch", || async {
        seen.queries[2].load(Ordering::Relaxed) >= after + 20
    })
    .await;

    // Writes stop; everything converges on the new build.
    halt.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let head = a.store.head().await.expect("head");
    assert!(
        b.reaches(&[listings::NAME], head).await,
        "the new build caught up"
    );
    assert!(
        a.reaches(&[listings::NAME], head).await,
        "the old process follows the new live build (read-your-writes)"
    );
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let errors = seen.errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "queries failed: {errors:?}");
    let regressions = seen.regressions.lock().expect("lock").clone();
    assert!(
        regressions.is_empty(),
        "a reader saw the catalogue shrink: {regressions:?}"
    );
    assert_eq!(
        seen.missing.load(Ordering::Relaxed),
        0,
        "a listing seen went missing"
    );
    let queries: Vec<u64> = seen
        .queries
        .iter()
        .map(|q| q.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "reader queries before / during / after the rebuild: {queries:?}; listings written: {}",
        written.load(Ordering::Relaxed)
    );
    for (i, q) in queries.iter().enumerate() {
        assert!(*q > 0, "no queries in phase {i}");
    }
    // Counted in SQL: the catalogue's own total is capped at
    // `listings::COUNT_CAP`, and a slow machine writes past it.
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT listing_id) FROM rm_listings WHERE status = 'PUBLISHED'",
    )
    .fetch_one(&a.pool)
    .await
    .expect("count");
    let expected = initial.len() as u64 + written.load(Ordering::Relaxed);
    assert_eq!(
        (rows as u64, distinct as u64),
        (expected, expected),
        "every listing is there once"
    );

    // The old build is dropped; the old process stands by (its code is older).
    eventually("the old build is dropped", || async {
        !schema_exists(&a.pool, &old_schema).await
    })
    .await;
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT schema_name, live, retired FROM projection_checkpoints WHERE name = $1",
    )
    .bind(listings::NAME)
    .fetch_all(&a.pool)
    .await
    .expect("rows");
    assert_eq!(rows, vec![(new_schema.clone(), true, false)]);
    assert_eq!(
        a.progress.runner(listings::NAME).state,
        ProjectionState::Standby
    );
    let s = listings_status(&a).await;
    assert_eq!(
        (s.state, s.has_leader, s.lag_events, s.rebuild.is_none()),
        (ProjectionState::Running, true, 0, true)
    );

    // A scratch rebuild of every read model agrees with the live builds.
    let checks = b
        .runtime
        .verify(&bumped(), &no_progress())
        .await
        .expect("verify");
    assert_parity(&checks);
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_compares_at_one_position_while_writes_go_on_and_names_a_tampered_table() {
    let db = migrated_db().await;
    let p = Process::start(&db, "runner").await;
    let (seller, ids) = marketplace(&p.store, 40).await;
    let (stop, _) = watch::channel(false);
    let _tasks = p.run(marketplace_projections::all(), &stop);
    let head = p.store.head().await.expect("head");
    assert!(p.reaches(&ALL, head).await);

    // Live projections keep moving during the verification.
    let halt = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, halt) = (p.store.clone(), halt.clone());
        tokio::spawn(async move {
            let mut n = 100;
            while !halt.load(Ordering::Relaxed) {
                publish_listing(&store, seller, n).await;
                n += 1;
            }
        })
    };
    let checks = p
        .runtime
        .verify(&marketplace_projections::all(), &no_progress())
        .await
        .expect("verify");
    halt.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert_parity(&checks);
    let listings_check = checks
        .iter()
        .find(|c| c.name == listings::NAME)
        .expect("listings");
    assert!(listings_check.position >= head);

    // Tamper with two live rows, through the views.
    let head = p.store.head().await.expect("head");
    assert!(p.reaches(&ALL, head).await);
    sqlx::query("UPDATE rm_listings SET title = 'tampered' WHERE listing_id = $1")
        .bind(ids[3])
        .execute(&p.pool)
        .await
        .expect("tamper");
    sqlx::query("UPDATE rm_account_balances SET minor = minor + 1 WHERE account_id = $1")
        .bind(seller)
        .execute(&p.pool)
        .await
        .expect("tamper");
    let checks = p
        .runtime
        .verify(&marketplace_projections::all(), &no_progress())
        .await
        .expect("verify");
    let differing: Vec<(String, String)> = checks
        .iter()
        .flat_map(|c| {
            c.tables
                .iter()
                .filter(|t| !t.matches())
                .map(|t| (c.name.clone(), t.table.clone()))
        })
        .collect();
    assert_eq!(
        differing,
        vec![
            ("accounts".to_owned(), "rm_account_balances".to_owned()),
            ("listings".to_owned(), "rm_listings".to_owned()),
        ]
    );
    let t = &checks[1].tables[0];
    assert_eq!(t.live_rows, t.scratch_rows, "same rows, different content");
    assert_ne!(t.live_checksum, t.scratch_checksum);
    // No scratch schema is left behind.
    let scratch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rmverify%'")
            .fetch_one(&p.pool)
            .await
            .expect("count");
    assert_eq!(scratch, 0);
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_rebuild_of_the_same_version_switches_in_and_the_live_runner_follows() {
    let db = migrated_db().await;
    let a = Process::start(&db, "serve").await;
    let (seller, _) = marketplace(&a.store, 200).await;
    let (stop, _) = watch::channel(false);
    let _serve = a.run(marketplace_projections::all(), &stop);
    let head = a.store.head().await.expect("head");
    assert!(a.reaches(&ALL, head).await);

    let halt = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, halt) = (a.store.clone(), halt.clone());
        tokio::spawn(async move {
            let mut n = 1_000;
            while !halt.load(Ordering::Relaxed) {
                publish_listing(&store, seller, n).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // `marketplace projections rebuild listings`, in another "process".
    let cli = Process::start(&db, "cli").await;
    let (cli_stop, cli_stop_rx) = watch::channel(false);
    let report = cli
        .runtime
        .rebuild(Arc::new(listings::ListingsProjection), cli_stop_rx)
        .await
        .expect("rebuild");
    drop(cli_stop);
    let first = format!("rm_listings_v{}", listings::VERSION);
    let second = format!("rm_listings_v{}_r1", listings::VERSION);
    assert!(report.switched);
    assert_eq!(report.schema, second);
    assert_eq!(report.replaced.as_deref(), Some(first.as_str()));
    assert_eq!(report.dropped, vec![first.clone()]);
    assert!(!schema_exists(&a.pool, &first).await);
    assert_eq!(
        view_target(&a.pool, "rm_listings").await.as_deref(),
        Some(second.as_str())
    );

    // The serve process's listings runner finds the new build and leads it.
    halt.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let head = a.store.head().await.expect("head");
    assert!(a.reaches(&ALL, head).await);
    eventually("serve leads the new build", || async {
        let s = listings_status(&a).await;
        s.schema.as_deref() == Some(second.as_str()) && s.has_leader && s.lag_events == 0
    })
    .await;
    assert_eq!(
        a.progress.runner(listings::NAME).state,
        ProjectionState::Running
    );
    let checks = a
        .runtime
        .verify(&marketplace_projections::all(), &no_progress())
        .await
        .expect("verify");
    assert_parity(&checks);
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_builds_every_read_model_and_serves_through_the_views() {
    let db = migrated_db().await;
    let pool = db.pool().await;
    // Installed by the migration: one live build per read model, views on it.
    let builds: Vec<(String, i32, String, bool, bool)> = sqlx::query_as(
        "SELECT name, version, schema_name, live, indexed FROM projection_checkpoints ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .expect("builds");
    let mut expected: Vec<(String, i32, String, bool, bool)> = marketplace_projections::all()
        .iter()
        .map(|p| {
            let schema = format!("rm_{}_v{}", p.name(), p.version());
            (p.name().to_owned(), p.version(), schema, true, true)
        })
        .collect();
    expected.sort();
    assert_eq!(builds, expected);
    let listings_schema = format!("rm_listings_v{}", listings::VERSION);
    let accounts_schema = format!(
        "rm_accounts_v{}",
        marketplace_projections::read_models::accounts::VERSION
    );
    let reviews_schema = format!(
        "rm_reviews_v{}",
        marketplace_projections::read_models::reviews::VERSION
    );
    for (view, schema) in [
        ("rm_accounts", accounts_schema.as_str()),
        ("rm_account_balances", accounts_schema.as_str()),
        ("rm_listings", listings_schema.as_str()),
        ("rm_listing_counts", listings_schema.as_str()),
        ("rm_listing_tag_counts", listings_schema.as_str()),
        ("rm_orders", "rm_orders_v1"),
        ("rm_order_lines", "rm_orders_v1"),
        ("rm_reviews", reviews_schema.as_str()),
    ] {
        assert_eq!(
            view_target(&pool, view).await.as_deref(),
            Some(schema),
            "{view}"
        );
    }
    let tables_in_public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'rm\\_%'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(tables_in_public, 0);
    // Secondary indexes live in the build.
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 \
         AND indexname = 'rm_listings_seller_newest_idx'",
    )
    .bind(&listings_schema)
    .fetch_one(&pool)
    .await
    .expect("indexes");
    assert_eq!(indexes, 1);
    // Migrating again changes nothing.
    marketplace_projections::migrate(&pool)
        .await
        .expect("again");
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(again, marketplace_projections::all().len() as i64);

    // Queries work on the empty read models, then on projected ones.
    let empty = listings::search(&pool, &published_only(), Sort::Newest, 5, None)
        .await
        .expect("search")
        .expect("cursor");
    assert_eq!(empty.total_count, 0);
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let (seller, ids) = marketplace(&store, 5).await;
    let progress = Progress::default();
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone())
        .with_config(fast());
    let (stop, _) = watch::channel(false);
    for p in marketplace_projections::all() {
        let (runtime, rx) = (runtime.clone(), stop.subscribe());
        tokio::spawn(async move { runtime.run(p, rx).await });
    }
    let head = store.head().await.expect("head");
    assert!(progress.wait_for(&ALL, head, DEADLINE).await);
    let page = listings::search(&pool, &published_only(), Sort::Newest, 10, None)
        .await
        .expect("search")
        .expect("cursor");
    assert_eq!(page.total_count, 5);
    assert!(listings::by_id(&pool, ids[2]).await.expect("q").is_some());
    assert_eq!(
        accounts::balances(&pool, seller).await.expect("q"),
        vec![("EUR".to_owned(), 10_000)]
    );
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_database_keeps_its_read_models_in_their_builds_schema() {
    // A database migrated before builds existed, with a projected listing.
    let db = marketplace_embedded_postgres::testdb::TestDatabase::create().await;
    let pool = db.pool().await;
    marketplace_store::postgres::migrate(&pool)
        .await
        .expect("store");
    let mut before = sqlx::migrate!("./migrations");
    before.set_ignore_missing(true);
    before.migrations = Cow::Owned(
        before
            .migrations
            .iter()
            .filter(|m| m.version < 20007)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.expect("old migrations");
    let store = PostgresEventStore::new(pool.clone()).await.expect("store");
    let seller = Uuid::now_v7();
    let id = publish_listing(&store, seller, 1).await;
    let head = store.head().await.expect("head");
    sqlx::query(
        "INSERT INTO rm_listings (listing_id, seller_id, kind, title, description, category, \
             tags, price_minor, currency, quantity, status, created_at, updated_at) \
         VALUES ($1, $2, 'PHYSICAL', 'Lamp 1', 'A fine thing', 'garden', '{lamp}', 101, 'EUR', \
             3, 'PUBLISHED', $3, $4)",
    )
    .bind(id)
    .bind(seller)
    .bind(at(1))
    .bind(at(2))
    .execute(&pool)
    .await
    .expect("row");
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, version, position, state, generation) \
         VALUES ('listings', 2, $1, 'STOPPED', 7)",
    )
    .bind(i64::try_from(head.0).expect("position"))
    .execute(&pool)
    .await
    .expect("checkpoint");

    marketplace_projections::migrate(&pool)
        .await
        .expect("migrate");
    assert_eq!(
        view_target(&pool, "rm_listings").await.as_deref(),
        Some("rm_listings_v2")
    );
    let row = listings::by_id(&pool, id).await.expect("q").expect("kept");
    assert_eq!(row.title, "Lamp 1");
    let (schema, position, generation): (String, i64, i64) = sqlx::query_as(
        "SELECT schema_name, position, generation FROM projection_checkpoints \
         WHERE name = 'listings' AND live",
    )
    .fetch_one(&pool)
    .await
    .expect("row");
    assert_eq!((schema.as_str(), position), ("rm_listings_v2", 2));
    assert_eq!(generation, 7);

    // The runtime resumes from the kept checkpoint, with fresh generations.
    let progress = Progress::default();
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), progress.clone())
        .with_config(fast());
    let (stop, rx) = watch::channel(false);
    tokio::spawn({
        let runtime = runtime.clone();
        async move {
            runtime
                .run(Arc::new(listings::ListingsProjection), rx)
                .await
        }
    });
    let other = publish_listing(&store, seller, 2).await;
    let head = store.head().await.expect("head");
    assert!(progress.wait_for(&[listings::NAME], head, DEADLINE).await);
    assert!(listings::by_id(&pool, other).await.expect("q").is_some());
    // This code's listings are a newer version than the moved build: the
    // runtime rebuilt them on start-up and switched the view over.
    let current = format!("rm_listings_v{}", listings::VERSION);
    eventually("the new build to go live", || async {
        view_target(&pool, "rm_listings").await.as_deref() == Some(current.as_str())
    })
    .await;
    assert!(listings::by_id(&pool, id).await.expect("q").is_some());
    let checks = runtime
        .verify(
            &[Arc::new(listings::ListingsProjection) as Arc<dyn Projection>],
            &no_progress(),
        )
        .await
        .expect("verify");
    assert!(checks[0].matches(), "{checks:?}");
    stop.send(true).expect("stop");
}
