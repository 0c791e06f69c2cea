//! The catalogue: full-text search with relevance, filters, facets, sorts
//! and keyset pagination over GraphQL.

use marketplace_e2e::{spawn_app, Req};
use serde_json::{json, Value};

const CREATE: &str = "mutation($input: CreateListingInput!) {
    createListing(input: $input) { listing { id } }
}";
const PUBLISH: &str = "mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }";
const SEARCH: &str =
    "query($filter: ListingFilter, $sort: ListingSort, $first: Int, $after: String) {
    listings(filter: $filter, sort: $sort, first: $first, after: $after) {
        totalCount
        pageInfo { hasNextPage endCursor }
        edges { node { title price { amount } } }
        facets { categories { value count } tags { value count } }
    }
}";

fn titles(r: &marketplace_e2e::Gql) -> Vec<String> {
    r.data("listings.edges")
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["title"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_search_ranks_title_matches_first_and_pages_by_cursor() {
    let app = spawn_app().await;
    let (token, _, _) = app.register("shop@example.com", &["SELLER"]).await;
    let items: [(&str, &str, &str, &[&str], &str); 4] = [
        (
            "Brass desk lamp",
            "Warm light for reading",
            "home",
            &["lighting", "brass"],
            "49.00",
        ),
        (
            "Oak reading chair",
            "Pairs well with any lamp",
            "home",
            &["furniture"],
            "199.00",
        ),
        (
            "Garden hose",
            "Twenty metres",
            "garden",
            &["watering"],
            "25.00",
        ),
        (
            "Ceiling lamps, set of two",
            "Bright",
            "home",
            &["lighting"],
            "89.00",
        ),
    ];
    let mut last = String::new();
    for (title, description, category, tags, price) in items {
        let input: Value = json!({
            "kind": "PHYSICAL", "title": title, "description": description,
            "category": category, "tags": tags, "quantity": 3,
            "price": { "amount": price, "currencyCode": "EUR" }
        });
        let id = app
            .gql(
                CREATE,
                json!({ "input": input }),
                Req {
                    token: Some(&token),
                    ..Req::default()
                },
            )
            .await
            .data("createListing.listing.id")
            .as_str()
            .expect("id")
            .to_owned();
        last = app
            .gql(
                PUBLISH,
                json!({ "id": id }),
                Req {
                    token: Some(&token),
                    ..Req::default()
                },
            )
            .await
            .data("publishListing.consistencyToken")
            .as_str()
            .expect("token")
            .to_owned();
    }
    let req = || Req {
        consistency: Some(&last),
        ..Req::default()
    };

    // "lamp" matches "lamps" (stemming) and a description mention, title
    // matches ranked above the description match.
    let found = app
        .gql(SEARCH, json!({ "filter": { "search": "lamp" } }), req())
        .await;
    assert_eq!(found.data("listings.totalCount"), 3);
    let t = titles(&found);
    assert_eq!(
        t.last().map(String::as_str),
        Some("Oak reading chair"),
        "{t:?}"
    );
    assert!(t[..2].contains(&"Brass desk lamp".to_owned()));
    assert!(t[..2].contains(&"Ceiling lamps, set of two".to_owned()));
    // Tags are searched too, and facets count the matching rows.
    let lighting = app
        .gql(SEARCH, json!({ "filter": { "search": "lighting" } }), req())
        .await;
    assert_eq!(lighting.data("listings.totalCount"), 2);
    assert_eq!(
        lighting.data("listings.facets.categories"),
        &json!([{ "value": "home", "count": 2 }])
    );
    // Exclusion syntax.
    let not_brass = app
        .gql(
            SEARCH,
            json!({ "filter": { "search": "lamp -brass" } }),
            req(),
        )
        .await;
    assert!(!titles(&not_brass).contains(&"Brass desk lamp".to_owned()));

    // Price sort, two per page, cursors carry on where the last page ended.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app
            .gql(
                SEARCH,
                json!({ "sort": "PRICE_ASC", "first": 2, "after": after }),
                req(),
            )
            .await;
        seen.extend(titles(&page));
        if page.data("listings.pageInfo.hasNextPage") != &json!(true) {
            break;
        }
        after = page
            .data("listings.pageInfo.endCursor")
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(
        seen,
        [
            "Garden hose",
            "Brass desk lamp",
            "Ceiling lamps, set of two",
            "Oak reading chair"
        ]
    );
    // Unrated listings all tie under RATING; every one is still listed once.
    let rated = app
        .gql(SEARCH, json!({ "sort": "RATING", "first": 10 }), req())
        .await;
    assert_eq!(titles(&rated).len(), 4);
}

/// Statements that read the read models (`rm_…`) in this test's database
/// since the last reset, as `pg_stat_statements` counts them.
async fn read_model_statements(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query ILIKE '%rm\\_%' AND query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_statements (the embedded cluster preloads it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_orders_with_lines_listings_and_sellers_runs_the_same_few_statements_whatever_the_page_size(
) {
    use crate::commerce::{
        auth, buyer_with, CREATE as CREATE_KEYED, PLACE, PUBLISH as PUBLISH_KEYED,
    };
    let app = spawn_app().await;
    let pool = app.db.pool().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .expect("the pg_stat_statements extension");
    let buyer = buyer_with(&app, "many-orders@example.com", "10000.00").await;
    // Twelve orders of two lines each, every line a listing of its own,
    // from three sellers: nothing a page reads is shared by two orders.
    let mut placed_ids = Vec::new();
    for s in 0..3 {
        let (seller, _, _) = app
            .register(&format!("seller{s}@example.com"), &["SELLER"])
            .await;
        for o in 0..4 {
            let mut lines = Vec::new();
            for l in 0..2 {
                let created = app
                    .gql(
                        CREATE_KEYED,
                        json!({ "input": {
                            "kind": "PHYSICAL", "title": format!("Item {s}-{o}-{l}"),
                            "description": "Counted", "category": "home",
                            "price": { "amount": "1.00", "currencyCode": "EUR" }, "quantity": 5 } }),
                        auth(&seller),
                    )
                    .await;
                let id = created
                    .data("createListing.listing.id")
                    .as_str()
                    .expect("id")
                    .to_owned();
                app.gql(PUBLISH_KEYED, json!({ "id": id }), auth(&seller))
                    .await
                    .data("publishListing.listing.status");
                lines.push(json!({ "listingId": id, "quantity": 1 }));
            }
            let placed = app
                .gql(PLACE, json!({ "input": { "lines": lines } }), auth(&buyer))
                .await;
            placed_ids.push(
                placed
                    .data("placeOrder.order.id")
                    .as_str()
                    .expect("order id")
                    .to_owned(),
            );
        }
    }
    // Nothing may still be moving while statements are counted: every
    // order has been through checkout.
    for id in &placed_ids {
        app.wait_order(&buyer, id, |s| s == "CONFIRMED").await;
    }
    let head = app.head().await.to_string();
    let query = |first: u32| {
        format!(
            "{{ myOrders(first: {first}) {{ edges {{ node {{ id lines {{ quantity listing {{ title seller {{ displayName }} }} }} }} }} }} }}"
        )
    };
    let mut counts = Vec::new();
    let mut statements = Vec::new();
    for first in [1, 4, 12] {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&pool)
            .await
            .expect("reset");
        let r = app
            .gql(
                &query(first),
                json!({}),
                Req {
                    token: Some(&buyer),
                    consistency: Some(&head),
                },
            )
            .await;
        let orders = r.data("myOrders.edges").as_array().expect("edges").clone();
        assert_eq!(orders.len(), first as usize, "{}", r.body);
        for order in &orders {
            let lines = order["node"]["lines"].as_array().expect("lines");
            assert_eq!(lines.len(), 2, "{order}");
            assert!(lines
                .iter()
                .all(|l| l["listing"]["seller"]["displayName"].is_string()));
        }
        counts.push(read_model_statements(&pool).await);
        let texts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT left(query, 120), calls FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query ILIKE '%rm\\_%' AND query NOT ILIKE '%pg_stat_statements%'",
        )
        .fetch_all(&pool)
        .await
        .expect("texts");
        statements.push((first, texts));
    }
    // One statement for the page of orders with its total, one batch of
    // their lines, one of the lines' listings, and the listings' sellers in
    // at most two batches (those of cached listings resolve a batch
    // earlier): at most five, and never one per row (twelve orders have 24
    // lines, with 24 listings).
    assert!(
        counts.iter().all(|n| (1..=5).contains(n)),
        "statements for 1, 4 and 12 orders: {counts:?}: {statements:#?}"
    );
}
