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
