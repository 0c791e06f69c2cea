//! The catalogue's read path against a real Postgres: the counts and facets
//! the projection keeps equal a direct count of the rows, through a mix of
//! creates, price changes, sales and delistings and after a rebuild; and
//! every page shape the contract offers is an index read at 10,000
//! listings.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use marketplace_domain::listing::{
    Listing, ListingCreated, ListingDelisted, ListingEvent, ListingKind, ListingPriceChanged,
    ListingPublished, ReservationCommitted, StockReserved,
};
use marketplace_domain::values::*;
use marketplace_projections::read_models::listings::{self, ListingQuery, Sort, Want};
use marketplace_projections::{Progress, ProjectorRuntime};
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::Position;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::{append, eur, setup, DEADLINE};

const CATEGORIES: [&str; 4] = ["home", "garden", "books", "toys"];
const TAGS: [&str; 5] = ["sale", "eco", "new", "gift", "rare"];

fn at(seconds: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
        .single()
        .expect("date")
        + chrono::Duration::seconds(i64::from(seconds))
}

/// The `i`th listing of a catalogue: category, tags, kind and price vary
/// with `i`.
fn created(id: Uuid, seller: Uuid, i: u32) -> ListingEvent {
    let mut tags: Vec<&str> = TAGS
        .iter()
        .enumerate()
        .filter(|(t, _)| (i as usize + t) % 3 == 0)
        .map(|(_, t)| *t)
        .collect();
    // One listing in fifty is a vintage copper kettle: a selective search
    // term and tag, as a shopper's usually are.
    let kettle = i % 50 == 7;
    if kettle {
        tags.push("vintage");
    }
    let digital = i % 5 == 0;
    ListingCreated {
        listing_id: ListingId(id),
        seller_id: AccountId(seller),
        kind: if digital {
            ListingKind::Digital
        } else {
            ListingKind::Physical
        },
        title: Title::parse(&format!("Lamp number {i}")).expect("valid"),
        description: Description::parse(if kettle {
            "A copper kettle"
        } else if i % 2 == 0 {
            "A brass lamp with warm light"
        } else {
            "A garden chair of oak"
        })
        .expect("valid"),
        category: Category::parse(CATEGORIES[i as usize % CATEGORIES.len()]).expect("valid"),
        tags: Tags::parse(tags).expect("valid"),
        price: eur(100 + i64::from(i % 97) * 13),
        quantity: if digital { Quantity(0) } else { Quantity(10) },
        content_hash: digital.then(|| ContentHash::parse(&format!("{:064x}", i)).expect("valid")),
        created_at: at(i),
    }
    .into()
}

fn published(id: Uuid, i: u32) -> ListingEvent {
    ListingPublished {
        listing_id: ListingId(id),
        published_at: at(i + 1),
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
    let (runtime, stop_rx) = (runtime.clone(), stop_rx.clone());
    tokio::spawn(async move {
        runtime
            .run(Arc::new(listings::ListingsProjection), stop_rx)
            .await
    });
    stop
}

fn query(status: &str) -> ListingQuery {
    ListingQuery {
        status: status.into(),
        ..ListingQuery::default()
    }
}

/// The counts a query's page reports, and the same counted straight from
/// the rows.
async fn check_counts(pool: &PgPool, q: &ListingQuery) {
    let page = listings::search_with(pool, q, Sort::Newest, 5, None, Want::ALL)
        .await
        .expect("query")
        .expect("cursor");
    let (category, kind) = (q.category.clone(), q.kind.clone());
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_listings WHERE status = $1 \
         AND ($2::text IS NULL OR category = lower($2)) AND ($3::text IS NULL OR kind = $3)",
    )
    .bind(&q.status)
    .bind(&category)
    .bind(&kind)
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(page.total_count, total, "{q:?}");
    assert!(page.total_exact);
    let categories: Vec<(String, i64)> = sqlx::query_as(
        "SELECT category, count(*) FROM rm_listings WHERE status = $1 \
         AND ($2::text IS NULL OR category = lower($2)) AND ($3::text IS NULL OR kind = $3) \
         GROUP BY category ORDER BY 2 DESC, 1 LIMIT 50",
    )
    .bind(&q.status)
    .bind(&category)
    .bind(&kind)
    .fetch_all(pool)
    .await
    .expect("categories");
    let got: Vec<(String, i64)> = page
        .categories
        .iter()
        .map(|f| (f.value.clone(), f.count))
        .collect();
    assert_eq!(got, categories, "{q:?}");
    let tags: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tag, count(*) FROM rm_listings CROSS JOIN LATERAL unnest(tags) AS tag \
         WHERE status = $1 AND ($2::text IS NULL OR category = lower($2)) \
         AND ($3::text IS NULL OR kind = $3) GROUP BY tag ORDER BY 2 DESC, 1 LIMIT 50",
    )
    .bind(&q.status)
    .bind(&category)
    .bind(&kind)
    .fetch_all(pool)
    .await
    .expect("tags");
    let got: Vec<(String, i64)> = page
        .tags
        .iter()
        .map(|f| (f.value.clone(), f.count))
        .collect();
    assert_eq!(got, tags, "{q:?}");
    assert!(page.facets_exact);
}

async fn counter_tables(pool: &PgPool) -> Vec<(String, String, String, i64)> {
    sqlx::query_as(
        "SELECT 'c', status || '/' || category, kind, n FROM rm_listing_counts \
         UNION ALL SELECT 't', status || '/' || category || '/' || kind, tag, n \
         FROM rm_listing_tag_counts ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(pool)
    .await
    .expect("counters")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_facets_equal_a_direct_count_through_creates_price_changes_sales_delistings_and_a_rebuild(
) {
    let (pool, store) = setup().await;
    let seller = Uuid::now_v7();
    let progress = Progress::default();
    let stop = spawn_runtime(&pool, &store, &progress);
    let mut ids = Vec::new();
    let mut head = Position::START;
    // In waves, so that some listings are created and published in one
    // batch and others change status in later batches.
    for i in 0..120u32 {
        let id = Uuid::now_v7();
        ids.push(id);
        let mut events = vec![created(id, seller, i)];
        if i % 3 != 0 {
            events.push(published(id, i));
        }
        head = append::<Listing>(&store, id, events).await;
        if i % 40 == 39 {
            assert!(progress.wait_for(&[listings::NAME], head, DEADLINE).await);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let i = u32::try_from(i).expect("small");
        let mut events: Vec<ListingEvent> = Vec::new();
        if i % 3 == 0 && i % 2 == 0 {
            events.push(published(*id, i + 10));
        }
        if i % 4 == 1 {
            events.push(
                ListingPriceChanged {
                    listing_id: ListingId(*id),
                    price: eur(999),
                    changed_at: at(i + 20),
                }
                .into(),
            );
        }
        if i % 7 == 2 && i % 5 != 0 {
            let order = OrderId(Uuid::now_v7());
            events.push(
                StockReserved {
                    listing_id: ListingId(*id),
                    order_id: order,
                    quantity: Quantity(2),
                    reserved_at: at(i + 30),
                }
                .into(),
            );
            events.push(
                ReservationCommitted {
                    listing_id: ListingId(*id),
                    order_id: order,
                    quantity: Quantity(2),
                    committed_at: at(i + 31),
                }
                .into(),
            );
        }
        if i % 6 == 1 || i % 9 == 0 {
            events.push(
                ListingDelisted {
                    listing_id: ListingId(*id),
                    delisted_at: at(i + 40),
                }
                .into(),
            );
        }
        if !events.is_empty() {
            head = append::<Listing>(&store, *id, events).await;
        }
    }
    assert!(progress.wait_for(&[listings::NAME], head, DEADLINE).await);

    let mut queries = Vec::new();
    for status in ["PUBLISHED", "DRAFT", "DELISTED"] {
        queries.push(query(status));
        for c in CATEGORIES {
            queries.push(ListingQuery {
                category: Some(c.to_uppercase()),
                ..query(status)
            });
        }
        for k in ["PHYSICAL", "DIGITAL"] {
            queries.push(ListingQuery {
                kind: Some(k.into()),
                ..query(status)
            });
        }
    }
    for q in &queries {
        check_counts(&pool, q).await;
    }
    // Every status is accounted for once.
    let all: i64 = sqlx::query_scalar("SELECT sum(n)::bigint FROM rm_listing_counts")
        .fetch_one(&pool)
        .await
        .expect("sum");
    assert_eq!(all, 120);
    let before = counter_tables(&pool).await;
    let zeros: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM rm_listing_counts WHERE n = 0) \
              + (SELECT count(*) FROM rm_listing_tag_counts WHERE n = 0)",
    )
    .fetch_one(&pool)
    .await
    .expect("zeros");
    assert_eq!(zeros, 0, "a count that fell to zero is dropped");
    stop.send(true).expect("stop");

    // A rebuild from the log reproduces the counters exactly.
    let runtime = ProjectorRuntime::new(pool.clone(), Arc::new(store.clone()), Progress::default());
    let (_cli_stop, cli_stop_rx) = watch::channel(false);
    let report = runtime
        .rebuild(Arc::new(listings::ListingsProjection), cli_stop_rx)
        .await
        .expect("rebuild");
    assert!(report.switched);
    assert_eq!(counter_tables(&pool).await, before);
    for q in &queries {
        check_counts(&pool, q).await;
    }
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value, out: &mut Vec<(String, String)>) {
    if let Some(kind) = plan["Node Type"].as_str() {
        out.push((
            kind.to_owned(),
            plan["Relation Name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            nodes(child, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogue_page_shape_is_an_index_read_at_ten_thousand_listings() {
    let (pool, store) = setup().await;
    let sellers: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
    let progress = Progress::default();
    let _stop = spawn_runtime(&pool, &store, &progress);
    let mut head = Position::START;
    for chunk in 0..100u32 {
        let appends = (0..100u32).map(|j| {
            let i = chunk * 100 + j;
            let id = Uuid::now_v7();
            let seller = sellers[(i % 100) as usize];
            let store = store.clone();
            async move {
                append::<Listing>(&store, id, vec![created(id, seller, i), published(id, i)]).await
            }
        });
        for p in futures::future::join_all(appends).await {
            head = head.max(p);
        }
    }
    assert!(
        progress
            .wait_for(&[listings::NAME], head, DEADLINE * 4)
            .await
    );
    let schema = format!("rm_listings_v{}", listings::VERSION);
    for table in ["rm_listings", "rm_listing_counts", "rm_listing_tag_counts"] {
        sqlx::query(&format!("ANALYZE \"{schema}\".{table}"))
            .execute(&pool)
            .await
            .expect("analyze");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_listings")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 10_000);

    let published = query("PUBLISHED");
    let mut shapes: Vec<(String, ListingQuery, Sort)> = Vec::new();
    for sort in [Sort::Newest, Sort::PriceAsc, Sort::PriceDesc, Sort::Rating] {
        shapes.push((format!("{sort:?}"), published.clone(), sort));
        shapes.push((
            format!("{sort:?} in a category"),
            ListingQuery {
                category: Some("books".into()),
                ..published.clone()
            },
            sort,
        ));
        shapes.push((
            format!("{sort:?} of a kind"),
            ListingQuery {
                kind: Some("DIGITAL".into()),
                ..published.clone()
            },
            sort,
        ));
        shapes.push((
            format!("{sort:?} of a seller"),
            ListingQuery {
                seller_id: Some(sellers[7]),
                ..published.clone()
            },
            sort,
        ));
    }
    shapes.push((
        "relevance".into(),
        ListingQuery {
            search: Some("copper kettle".into()),
            ..published.clone()
        },
        Sort::Relevance,
    ));
    shapes.push((
        "a tag".into(),
        ListingQuery {
            tags: vec!["vintage".into()],
            ..published.clone()
        },
        Sort::Newest,
    ));
    // Terms that match a large share of the catalogue may be read in table
    // order instead (the candidates are bounded either way); the shapes
    // here use the selective terms a storefront sees.
    for (name, q, sort) in &shapes {
        // The first page, and a later one through its cursor.
        let first = listings::search_with(&pool, q, *sort, 20, None, Want::ROWS)
            .await
            .expect("page")
            .expect("cursor");
        assert_eq!(first.rows.len(), 20, "{name}");
        let cursor = first.rows.last().map(|(_, c)| c.clone());
        for after in [None, cursor.as_deref()] {
            for want in [Want::ROWS, Want::ALL] {
                let plan = listings::explain(&pool, q, *sort, 20, after, want)
                    .await
                    .expect("explain");
                let mut seen = Vec::new();
                nodes(&plan[0]["Plan"], &mut seen);
                let scans: Vec<&(String, String)> = seen
                    .iter()
                    .filter(|(kind, rel)| kind == "Seq Scan" && rel == "rm_listings")
                    .collect();
                assert!(
                    scans.is_empty(),
                    "{name} (after {after:?}, {want:?}) scans the table: {seen:?} {plan}"
                );
                assert!(
                    seen.iter().any(|(kind, rel)| rel == "rm_listings"
                        && (kind.starts_with("Index") || kind.starts_with("Bitmap Heap"))),
                    "{name}: {seen:?}"
                );
            }
        }
    }
}
