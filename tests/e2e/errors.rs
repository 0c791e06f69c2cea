//! Refusals come back with the contract's error codes and write nothing.

use marketplace_e2e::{spawn_app, Req};
use serde_json::json;

const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) { token } }";
const CREATE: &str =
    "mutation($input: CreateListingInput!) { createListing(input: $input) { consistencyToken } }";
const PUBLISH: &str = "mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }";

fn registration(email: &str, password: &str, roles: &[&str]) -> serde_json::Value {
    json!({ "input": { "email": email, "password": password, "displayName": "X", "roles": roles } })
}

fn listing(kind: &str) -> serde_json::Value {
    json!({ "input": { "kind": kind, "title": "T", "description": "D", "category": "c",
                       "price": { "amount": "1.00", "currencyCode": "EUR" } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refusals_have_codes_and_write_nothing() {
    let app = spawn_app().await;
    app.register("taken@example.com", &[]).await;
    let before = app.event_count().await;
    for (vars, code) in [
        (
            registration("taken@example.com", "long enough pw", &[]),
            "CONFLICT",
        ),
        (
            registration("TAKEN@example.com ", "long enough pw", &[]),
            "CONFLICT",
        ),
        (
            registration("not-an-email", "long enough pw", &[]),
            "BAD_USER_INPUT",
        ),
        (
            registration("a@example.com", "short", &[]),
            "BAD_USER_INPUT",
        ),
        (
            registration("b@example.com", "long enough pw", &["ADMIN"]),
            "FORBIDDEN",
        ),
    ] {
        let r = app.gql(REGISTER, vars.clone(), Req::default()).await;
        assert_eq!(r.error_code(), code, "{vars}: {}", r.body);
    }
    assert_eq!(
        app.event_count().await,
        before,
        "refused registrations appended events"
    );

    let bad_role = app
        .gql(
            REGISTER,
            registration("c@example.com", "long enough pw", &["OWNER"]),
            Req::default(),
        )
        .await;
    assert!(
        bad_role.body["errors"].is_array(),
        "an unknown enum value is refused"
    );
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refuses_a_wrong_password_or_unknown_email_alike() {
    let app = spawn_app().await;
    app.register("known@example.com", &[]).await;
    for (email, pw) in [
        ("known@example.com", "wrong password!"),
        ("nobody@example.com", "correct horse battery"),
    ] {
        let r = app
            .gql(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({ "e": email, "p": pw }),
                Req::default(),
            )
            .await;
        assert_eq!(r.error_code(), "UNAUTHENTICATED");
        assert_eq!(r.body["errors"][0]["message"], "invalid email or password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_mutations_check_identity_roles_ownership_and_input() {
    let app = spawn_app().await;
    let (seller, _, _) = app.register("seller@example.com", &["SELLER"]).await;
    let (other_seller, _, _) = app.register("other@example.com", &["SELLER"]).await;
    let (buyer, _, _) = app.register("buyer@example.com", &["BUYER"]).await;

    let anon = app.gql(CREATE, listing("PHYSICAL"), Req::default()).await;
    assert_eq!(anon.error_code(), "UNAUTHENTICATED");
    let forged = app
        .gql(
            CREATE,
            listing("PHYSICAL"),
            Req {
                token: Some("not.a.token"),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(forged.error_code(), "UNAUTHENTICATED");
    assert_eq!(forged.status, 401);
    let by_buyer = app
        .gql(
            CREATE,
            listing("PHYSICAL"),
            Req {
                token: Some(&buyer),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(by_buyer.error_code(), "FORBIDDEN");

    let before = app.event_count().await;
    let mut bad_price = listing("PHYSICAL");
    bad_price["input"]["price"]["amount"] = json!("1.999");
    let mut negative = listing("PHYSICAL");
    negative["input"]["quantity"] = json!(-1);
    let mut hash_on_physical = listing("PHYSICAL");
    hash_on_physical["input"]["contentHash"] = json!("ab".repeat(32));
    let mut bad_hash = listing("DIGITAL");
    bad_hash["input"]["contentHash"] = json!("xyz");
    let mut huge_title = listing("PHYSICAL");
    huge_title["input"]["title"] = json!("x".repeat(201));
    for vars in [
        listing("DIGITAL"),
        bad_price,
        negative,
        hash_on_physical,
        bad_hash,
        huge_title,
    ] {
        let r = app
            .gql(
                CREATE,
                vars.clone(),
                Req {
                    token: Some(&seller),
                    ..Req::default()
                },
            )
            .await;
        assert_eq!(r.error_code(), "BAD_USER_INPUT", "{vars}: {}", r.body);
    }
    assert_eq!(
        app.event_count().await,
        before,
        "refused listings appended events"
    );

    // A stored asset's hash, spelled in upper case: normalised, accepted.
    let hash = app.stored_asset(&seller, b"an e-book").await;
    let mut digital = listing("DIGITAL");
    digital["input"]["contentHash"] = json!(hash.to_uppercase());
    let ok = app
        .gql(
            CREATE,
            digital,
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await;
    assert!(ok.body.get("errors").is_none(), "{}", ok.body);
    let created = app
        .gql("mutation($input: CreateListingInput!) { createListing(input: $input) { listing { id } } }", listing("PHYSICAL"), Req { token: Some(&seller), ..Req::default() })
        .await;
    let id = created
        .data("createListing.listing.id")
        .as_str()
        .expect("id")
        .to_owned();

    let not_owner = app
        .gql(
            PUBLISH,
            json!({ "id": id }),
            Req {
                token: Some(&other_seller),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(not_owner.error_code(), "FORBIDDEN");
    let missing = app
        .gql(
            PUBLISH,
            json!({ "id": uuid::Uuid::now_v7().to_string() }),
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(missing.error_code(), "NOT_FOUND");
    let malformed = app
        .gql(
            PUBLISH,
            json!({ "id": "12" }),
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(malformed.error_code(), "BAD_USER_INPUT");
    let ok = app
        .gql(
            PUBLISH,
            json!({ "id": id }),
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await;
    assert!(ok.body.get("errors").is_none(), "{}", ok.body);
    let twice = app
        .gql(
            PUBLISH,
            json!({ "id": id }),
            Req {
                token: Some(&seller),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(twice.error_code(), "CONFLICT");

    let drafts = app
        .gql(
            "{ listings(filter: { status: DRAFT }) { totalCount } }",
            json!({}),
            Req::default(),
        )
        .await;
    assert_eq!(drafts.error_code(), "UNAUTHENTICATED");
    let too_many = app
        .gql(
            "{ listings(first: 101) { totalCount } }",
            json!({}),
            Req::default(),
        )
        .await;
    assert!(too_many.body["errors"].is_array());
    let bad_token = app
        .gql(
            "{ me { id } }",
            json!({}),
            Req {
                consistency: Some("soon"),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(bad_token.error_code(), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_sent_with_get_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let mutation = "mutation { register(input: { email: \"get@example.com\", password: \"correct horse battery\", displayName: \"G\" }) { token } }";
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/graphql", app.base))
        .query(&[("query", mutation)])
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(app.event_count().await, before, "nothing was written");
    // Queries still work over GET.
    let resp = client
        .get(format!("{}/graphql", app.base))
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
}
