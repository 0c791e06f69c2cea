//! The walking-skeleton flow: register → login → createListing →
//! publishListing → read it back with the consistency token.

use marketplace_e2e::{spawn_app, Req};
use serde_json::json;

const CREATE: &str = "mutation($input: CreateListingInput!, $key: String) {
    createListing(input: $input, idempotencyKey: $key) {
        consistencyToken
        listing { id status title kind price { amount currencyCode } availableQuantity tags seller { id displayName } }
    }
}";

fn lamp() -> serde_json::Value {
    json!({
        "kind": "PHYSICAL", "title": "Brass lamp", "description": "Warm light",
        "category": "Home", "tags": ["Lighting", "brass"],
        "price": { "amount": "49.90", "currencyCode": "EUR" }, "quantity": 20
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_registers_logs_in_creates_and_publishes_a_listing_that_buyers_then_see() {
    let app = spawn_app().await;
    let (_, seller_id, _) = app.register("Seller@Example.com", &["SELLER"]).await;

    let login = app
        .gql(
            "mutation { login(email: \"seller@example.com\", password: \"correct horse battery\") { token account { id email roles } } }",
            json!({}),
            Req::default(),
        )
        .await;
    assert_eq!(login.data("login.account.id"), &json!(seller_id));
    assert_eq!(
        login.data("login.account.email"),
        &json!("seller@example.com")
    );
    assert_eq!(login.data("login.account.roles"), &json!(["SELLER"]));
    let token = login
        .data("login.token")
        .as_str()
        .expect("token")
        .to_owned();

    let created = app
        .gql(
            CREATE,
            json!({ "input": lamp() }),
            Req {
                token: Some(&token),
                ..Req::default()
            },
        )
        .await;
    let listing = created.data("createListing.listing");
    assert_eq!(listing["status"], "DRAFT");
    assert_eq!(listing["kind"], "PHYSICAL");
    assert_eq!(
        listing["price"],
        json!({ "amount": "49.90", "currencyCode": "EUR" })
    );
    assert_eq!(listing["availableQuantity"], 20);
    assert_eq!(listing["tags"], json!(["lighting", "brass"]));
    assert_eq!(listing["seller"]["id"], json!(seller_id));
    let id = listing["id"].as_str().expect("id").to_owned();

    // A draft is invisible to everyone but its seller.
    let anon = app
        .gql(
            "query($id: ID!) { listing(id: $id) { id } }",
            json!({ "id": id }),
            Req::default(),
        )
        .await;
    assert!(anon.data("listing").is_null());

    let published = app
        .gql(
            "mutation($id: ID!) { publishListing(id: $id) { consistencyToken listing { status } } }",
            json!({ "id": id }),
            Req { token: Some(&token), ..Req::default() },
        )
        .await;
    let ct = published
        .data("publishListing.consistencyToken")
        .as_str()
        .expect("ct")
        .to_owned();

    // A buyer, reading with the consistency token, sees the published listing.
    let seen = app
        .gql(
            "query($id: ID!) { listing(id: $id) { id title status } listings(filter: { search: \"brass\" }) { totalCount edges { node { id } cursor } facets { categories { value count } tags { value count } } } }",
            json!({ "id": id }),
            Req { consistency: Some(&ct), ..Req::default() },
        )
        .await;
    assert_eq!(seen.data("listing.status"), "PUBLISHED");
    assert_eq!(seen.data("listing.title"), "Brass lamp");
    assert_eq!(seen.data("listings.totalCount"), 1);
    assert_eq!(seen.data("listings.edges")[0]["node"]["id"], json!(id));
    assert_eq!(
        seen.data("listings.facets.categories"),
        &json!([{ "value": "home", "count": 1 }])
    );
    assert_eq!(seen.body["extensions"]["consistency"]["reached"], true);

    let me = app
        .gql(
            "{ me { id email balance { amount currencyCode } } }",
            json!({}),
            Req {
                token: Some(&token),
                consistency: Some(&ct),
            },
        )
        .await;
    assert_eq!(me.data("me.id"), &json!(seller_id));
    assert_eq!(me.data("me.email"), "seller@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_create_listing_with_the_same_idempotency_key_returns_the_same_listing() {
    let app = spawn_app().await;
    let (token, _, _) = app.register("shop@example.com", &["SELLER"]).await;
    let opts = Req {
        token: Some(&token),
        ..Req::default()
    };
    let first = app
        .gql(
            CREATE,
            json!({ "input": lamp(), "key": "k-1" }),
            opts.clone(),
        )
        .await;
    let events = app.event_count().await;
    let again = app
        .gql(
            CREATE,
            json!({ "input": lamp(), "key": "k-1" }),
            opts.clone(),
        )
        .await;
    assert_eq!(
        first.data("createListing.listing.id"),
        again.data("createListing.listing.id")
    );
    assert_eq!(
        app.event_count().await,
        events,
        "the retry appended nothing"
    );
    let mut changed = lamp();
    changed["title"] = json!("Copper lamp");
    let reused = app
        .gql(
            CREATE,
            json!({ "input": changed, "key": "k-1" }),
            opts.clone(),
        )
        .await;
    assert_eq!(reused.error_code(), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        app.event_count().await,
        events,
        "the reuse appended nothing"
    );
    let other = app
        .gql(CREATE, json!({ "input": lamp(), "key": "k-2" }), opts)
        .await;
    assert_ne!(
        first.data("createListing.listing.id"),
        other.data("createListing.listing.id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_of_one_email_open_exactly_one_account() {
    let app = std::sync::Arc::new(spawn_app().await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.gql(
                    "mutation { register(input: { email: \"race@example.com\", password: \"correct horse battery\", displayName: \"R\" }) { account { id } } }",
                    json!({}),
                    Req::default(),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let r = t.await.expect("join");
        if r.body.get("errors").is_some() {
            assert_eq!(r.error_code(), "CONFLICT", "{}", r.body);
        } else {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}
