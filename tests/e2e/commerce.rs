//! A purchase from deposit to payout and review, over GraphQL, with the
//! refusals of the contract and idempotency keys under concurrency.

use marketplace_e2e::{eventually, spawn_app, Req, TestApp};
use serde_json::{json, Value};

pub(crate) const CREATE: &str = "mutation($input: CreateListingInput!, $key: String) {
    createListing(input: $input, idempotencyKey: $key) { consistencyToken listing { id } }
}";
pub(crate) const PUBLISH: &str =
    "mutation($id: ID!) { publishListing(id: $id) { consistencyToken listing { status } } }";
pub(crate) const DEPOSIT: &str = "mutation($amount: MoneyInput!, $key: String) {
    depositFunds(amount: $amount, idempotencyKey: $key) { consistencyToken }
}";
pub(crate) const PLACE: &str = "mutation($input: PlaceOrderInput!, $key: String) {
    placeOrder(input: $input, idempotencyKey: $key) { consistencyToken order { id status total { amount currencyCode } } }
}";
pub(crate) const ME: &str = "{ me { balance { amount currencyCode } } }";

pub(crate) fn auth(token: &str) -> Req<'_> {
    Req {
        token: Some(token),
        ..Req::default()
    }
}

pub(crate) fn lamp(quantity: i64) -> Value {
    json!({
        "kind": "PHYSICAL", "title": "Brass lamp", "description": "Warm light",
        "category": "home", "tags": ["lighting"],
        "price": { "amount": "40.00", "currencyCode": "EUR" }, "quantity": quantity
    })
}

/// A seller with one published listing; returns (seller token, listing id).
pub(crate) async fn seller_with_listing(
    app: &TestApp,
    email: &str,
    input: Value,
) -> (String, String) {
    let (token, _, _) = app.register(email, &["SELLER"]).await;
    let created = app
        .gql(CREATE, json!({ "input": input }), auth(&token))
        .await;
    let id = created
        .data("createListing.listing.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.gql(PUBLISH, json!({ "id": id }), auth(&token))
        .await
        .data("publishListing.listing.status");
    (token, id)
}

pub(crate) async fn buyer_with(app: &TestApp, email: &str, euros: &str) -> String {
    let (token, _, _) = app.register(email, &["BUYER"]).await;
    app.gql(
        DEPOSIT,
        json!({ "amount": { "amount": euros, "currencyCode": "EUR" } }),
        auth(&token),
    )
    .await
    .data("depositFunds.consistencyToken");
    token
}

/// The wallet balance as the read models show it once they have caught up
/// with everything in the log so far (or with `consistency`).
async fn balance(app: &TestApp, token: &str, consistency: Option<&str>) -> String {
    let head = app.head().await.to_string();
    app.gql(
        ME,
        json!({}),
        Req {
            token: Some(token),
            consistency: Some(consistency.unwrap_or(&head)),
        },
    )
    .await
    .data("me.balance.amount")
    .as_str()
    .expect("amount")
    .to_owned()
}

pub(crate) fn place_input(listing: &str, quantity: i64) -> Value {
    json!({ "lines": [{ "listingId": listing, "quantity": quantity }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_goes_from_deposit_through_escrow_to_payout_and_an_approved_review() {
    let app = spawn_app().await;
    let (seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;

    let placed = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 2) }),
            auth(&buyer),
        )
        .await;
    let order_id = placed
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        placed.data("placeOrder.order.total"),
        &json!({ "amount": "80.00", "currencyCode": "EUR" })
    );
    let confirmed = app.wait_order(&buyer, &order_id, |s| s != "PENDING").await;
    assert_eq!(confirmed["status"], "CONFIRMED");
    // The price changes afterwards; the order keeps the price it was placed at.
    app.gql(
        "mutation($id: ID!) { updateListingPrice(id: $id, price: { amount: \"55.00\", currencyCode: \"EUR\" }) { listing { price { amount } } } }",
        json!({ "id": listing }),
        auth(&seller),
    )
    .await
    .data("updateListingPrice");
    let confirmed = app
        .wait_order(&buyer, &order_id, |s| s == "CONFIRMED")
        .await;
    assert_eq!(confirmed["lines"][0]["unitPrice"]["amount"], "40.00");
    assert_eq!(
        balance(&app, &buyer, None).await,
        "20.00",
        "80.00 held in escrow"
    );

    // The seller sees it; another buyer does not.
    let seller_view = app
        .gql(
            "{ sellerOrders { totalCount edges { node { id } } } }",
            json!({}),
            auth(&seller),
        )
        .await;
    assert_eq!(seller_view.data("sellerOrders.totalCount"), 1);
    let (stranger, _, _) = app.register("stranger@example.com", &["BUYER"]).await;
    let hidden = app
        .gql(
            "query($id: ID!) { order(id: $id) { id } }",
            json!({ "id": order_id }),
            auth(&stranger),
        )
        .await;
    assert!(hidden.data("order").is_null());

    // Only the seller ships; only the buyer confirms delivery.
    let wrong = app
        .gql(
            "mutation($id: ID!) { shipOrder(id: $id) { consistencyToken } }",
            json!({ "id": order_id }),
            auth(&buyer),
        )
        .await;
    assert_eq!(wrong.error_code(), "FORBIDDEN");
    let shipped = app
        .gql(
            "mutation($id: ID!) { shipOrder(id: $id, trackingCode: \"TRK-1\") { order { status trackingCode } } }",
            json!({ "id": order_id }),
            auth(&seller),
        )
        .await;
    assert_eq!(shipped.data("shipOrder.order.status"), "SHIPPED");
    assert_eq!(shipped.data("shipOrder.order.trackingCode"), "TRK-1");
    let wrong = app
        .gql(
            "mutation($id: ID!) { confirmDelivery(id: $id) { consistencyToken } }",
            json!({ "id": order_id }),
            auth(&seller),
        )
        .await;
    assert_eq!(wrong.error_code(), "FORBIDDEN");
    let delivered = app
        .gql(
            "mutation($id: ID!) { confirmDelivery(id: $id) { consistencyToken order { status } } }",
            json!({ "id": order_id }),
            auth(&buyer),
        )
        .await;
    assert_eq!(delivered.data("confirmDelivery.order.status"), "DELIVERED");

    // The payout arrives: 80.00 less the 5% fee.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while balance(&app, &seller, None).await != "76.00" {
        assert!(
            std::time::Instant::now() < deadline,
            "payout did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(balance(&app, &buyer, None).await, "20.00");

    // The buyer reviews; it counts once an admin approves it.
    let review = app
        .gql(
            "mutation($input: SubmitReviewInput!) { submitReview(input: $input) { consistencyToken review { id status rating } } }",
            json!({ "input": { "listingId": listing, "orderId": order_id, "rating": 4, "comment": "Lovely lamp" } }),
            auth(&buyer),
        )
        .await;
    assert_eq!(review.data("submitReview.review.status"), "PENDING");
    let review_id = review
        .data("submitReview.review.id")
        .as_str()
        .expect("id")
        .to_owned();
    let again = app
        .gql(
            "mutation($input: SubmitReviewInput!) { submitReview(input: $input) { consistencyToken } }",
            json!({ "input": { "listingId": listing, "orderId": order_id, "rating": 5, "comment": "Twice" } }),
            auth(&buyer),
        )
        .await;
    assert_eq!(again.error_code(), "CONFLICT");
    let not_admin = app
        .gql(
            "mutation($id: ID!) { moderateReview(id: $id, decision: APPROVE) { consistencyToken } }",
            json!({ "id": review_id }),
            auth(&seller),
        )
        .await;
    assert_eq!(not_admin.error_code(), "FORBIDDEN");
    marketplace_api::admin::create_admin(
        &app.db.url,
        &app.master_key,
        "admin@example.com",
        "admin password 1",
        "Admin",
    )
    .await
    .expect("create admin");
    let admin = app.login("admin@example.com", "admin password 1").await;
    let approved = app
        .gql(
            "mutation($id: ID!) { moderateReview(id: $id, decision: APPROVE) { consistencyToken review { status } } }",
            json!({ "id": review_id }),
            auth(&admin),
        )
        .await;
    assert_eq!(approved.data("moderateReview.review.status"), "APPROVED");
    let token = approved
        .data("moderateReview.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned();
    let rated = app
        .gql(
            "query($id: ID!) { listing(id: $id) { averageRating reviewCount availableQuantity } reviews(listingId: $id) { totalCount edges { node { rating author { displayName } } } } }",
            json!({ "id": listing }),
            Req { consistency: Some(&token), ..Req::default() },
        )
        .await;
    assert_eq!(rated.data("listing.averageRating"), 4.0);
    assert_eq!(rated.data("listing.reviewCount"), 1);
    assert_eq!(rated.data("listing.availableQuantity"), 3);
    assert_eq!(rated.data("reviews.totalCount"), 1);

    // Everyone was told, newest first.
    let kinds = |r: &marketplace_e2e::Gql| -> Vec<String> {
        r.data("notifications.edges")
            .as_array()
            .expect("edges")
            .iter()
            .filter_map(|e| e["node"]["kind"].as_str().map(str::to_owned))
            .collect()
    };
    let q = "{ notifications { totalCount edges { node { kind message read } } } }";
    let told = app
        .gql(
            q,
            json!({}),
            Req {
                token: Some(&buyer),
                consistency: Some(&token),
            },
        )
        .await;
    assert_eq!(
        kinds(&told),
        [
            "REVIEW_APPROVED",
            "ORDER_DELIVERED",
            "ORDER_SHIPPED",
            "ORDER_CONFIRMED"
        ]
    );
    assert!(told.data("notifications.edges")[2]["node"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("TRK-1")));
    let told = app
        .gql(
            q,
            json!({}),
            Req {
                token: Some(&seller),
                consistency: Some(&token),
            },
        )
        .await;
    assert_eq!(kinds(&told), ["PAYOUT_RECEIVED", "ITEM_SOLD"]);
    assert!(told.data("notifications.edges")[0]["node"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("76.00 EUR")));
}

/// `placeOrder` answers from the state the placement left, without waiting
/// for the orders projection: what it shows is what the read model holds
/// for the order at the token (status and times as placed).
#[tokio::test]
async fn a_placed_order_reads_back_as_the_mutation_answered_it() {
    const FIELDS: &str = "id buyer { id } lines { listing { id title } quantity unitPrice { amount currencyCode } } total { amount currencyCode } placedAt";
    // The read waits for the token; a loaded machine may take longer than
    // the default bound to project it.
    let app = marketplace_e2e::spawn_app_with(|s| {
        s.consistency_wait = std::time::Duration::from_secs(120);
    })
    .await;
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;
    let placed = app
        .gql(
            &format!("mutation($input: PlaceOrderInput!) {{ placeOrder(input: $input) {{ consistencyToken order {{ {FIELDS} status statusReason trackingCode updatedAt }} }} }}"),
            json!({ "input": { "lines": [{ "listingId": listing, "quantity": 2 }] } }),
            auth(&buyer),
        )
        .await;
    let answered = placed.data("placeOrder.order").clone();
    let token = placed
        .data("placeOrder.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned();
    // Checked out in the placement's own append: the answer is final.
    assert_eq!(answered["status"], "CONFIRMED");
    assert_eq!(answered["statusReason"], Value::Null);
    assert_eq!(answered["trackingCode"], Value::Null);
    assert_eq!(answered["updatedAt"], answered["placedAt"]);
    assert_eq!(answered["lines"][0]["listing"]["title"], "Brass lamp");
    let read = app
        .gql(
            &format!("query($id: ID!) {{ order(id: $id) {{ {FIELDS} }} }}"),
            json!({ "id": answered["id"] }),
            Req {
                token: Some(&buyer),
                consistency: Some(&token),
            },
        )
        .await;
    let read = read.data("order");
    for field in ["id", "buyer", "lines", "total", "placedAt"] {
        assert_eq!(read[field], answered[field], "{field}");
    }
}

/// Holds the accounts read model's tables so that its projector cannot
/// write them (plain reads still pass), until the transaction ends.
async fn hold_accounts_read_model(
    pool: &sqlx::PgPool,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE tablename IN ('rm_accounts', 'rm_account_balances')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(!tables.is_empty(), "no accounts read model tables");
    let mut held = pool.begin().await.expect("begin");
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        tables.join(", ")
    ))
    .execute(&mut *held)
    .await
    .expect("lock");
    held
}

/// Whether the accounts read model shows `account` (read beside the hold).
async fn projected(held: &mut sqlx::PgConnection, account: &str) -> bool {
    let id = uuid::Uuid::parse_str(account).expect("account id");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rm_accounts WHERE account_id = $1)")
        .bind(id)
        .fetch_one(held)
        .await
        .expect("read")
}

const PLACED_WITH_BUYER: &str = "mutation($input: PlaceOrderInput!) {
    placeOrder(input: $input) { consistencyToken order { id status buyer { id } } }
}";

/// An app with `consistency_wait`, a listing, and a funded buyer whom the
/// accounts read model does not show while the returned hold lasts:
/// (app, listing, hold, buyer's token, buyer's id).
async fn with_an_unprojected_buyer(
    consistency_wait: std::time::Duration,
) -> (
    TestApp,
    String,
    sqlx::Transaction<'static, sqlx::Postgres>,
    String,
    String,
) {
    let app = marketplace_e2e::spawn_app_with(|s| s.consistency_wait = consistency_wait).await;
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(5)).await;
    let pool = app.db.pool().await;
    let held = hold_accounts_read_model(&pool).await;
    let (buyer, buyer_id, _) = app.register("buyer@example.com", &["BUYER"]).await;
    app.gql(
        DEPOSIT,
        json!({ "amount": { "amount": "100.00", "currencyCode": "EUR" } }),
        auth(&buyer),
    )
    .await
    .data("depositFunds.consistencyToken");
    (app, listing, held, buyer, buyer_id)
}

/// A buyer registered a moment ago may not be in the accounts read model
/// yet when their order is placed: `placeOrder`, which answers from the
/// write side, then reads the buyer once that read model has passed the
/// placement, and the answer is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_orders_buyer_not_yet_projected_is_read_once_the_accounts_catch_up() {
    let (app, listing, mut held, buyer, buyer_id) =
        with_an_unprojected_buyer(std::time::Duration::from_secs(120)).await;
    let place = app.gql(
        PLACED_WITH_BUYER,
        json!({ "input": place_input(&listing, 1) }),
        auth(&buyer),
    );
    // Once the placement is in the log, with the buyer still not
    // projected, the accounts read model is let go.
    let release = async {
        eventually("the placement appended", async || {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE event_type = 'order.placed')",
            )
            .fetch_one(&mut *held)
            .await
            .expect("read")
        })
        .await;
        assert!(!projected(&mut held, &buyer_id).await);
        held.rollback().await.expect("release");
    };
    let (placed, ()) = tokio::join!(place, release);
    assert_eq!(placed.status, 200, "{}", placed.body);
    assert_eq!(placed.data("placeOrder.order.status"), "CONFIRMED");
    assert_eq!(placed.data("placeOrder.order.buyer.id"), buyer_id.as_str());
}

/// If the accounts read model does not reach the placement within the
/// consistency wait, the order is still placed and answered, and only
/// its `buyer` carries an error: CONFLICT (read again with the token),
/// not INTERNAL. Read again once the read model has caught up, it is
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_orders_buyer_the_accounts_do_not_reach_in_time_is_a_conflict_on_that_field() {
    let (app, listing, mut held, buyer, buyer_id) =
        with_an_unprojected_buyer(std::time::Duration::from_millis(300)).await;
    let placed = app
        .gql(
            PLACED_WITH_BUYER,
            json!({ "input": place_input(&listing, 1) }),
            auth(&buyer),
        )
        .await;
    assert!(!projected(&mut held, &buyer_id).await);
    held.rollback().await.expect("release");
    assert_eq!(placed.status, 200, "{}", placed.body);
    let order = &placed.body["data"]["placeOrder"]["order"];
    assert_eq!(order["status"], "CONFIRMED", "{}", placed.body);
    assert_eq!(order["buyer"], Value::Null, "{}", placed.body);
    assert_eq!(placed.body["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(placed.error_code(), "CONFLICT", "{}", placed.body);
    assert_eq!(
        placed.body["errors"][0]["path"],
        json!(["placeOrder", "order", "buyer"])
    );
    let token = placed.body["data"]["placeOrder"]["consistencyToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let id = order["id"].clone();
    eventually("the order read back whole", async || {
        let read = app
            .gql(
                "query($id: ID!) { order(id: $id) { buyer { id } } }",
                json!({ "id": id }),
                Req {
                    token: Some(&buyer),
                    consistency: Some(&token),
                },
            )
            .await;
        read.status == 200
            && read.body.get("errors").is_none()
            && read.body["data"]["order"]["buyer"]["id"] == buyer_id.as_str()
    })
    .await;
}

/// Each read model follows the log on its own, so the catalogue may show a
/// listing whose seller, registered a moment before, the accounts read
/// model has not reached. A read of that listing's seller is not an
/// internal error: it waits (bounded) for the accounts to pass where the
/// catalogue was, and, if they do not in time, is a CONFLICT on that field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listings_seller_the_accounts_have_not_reached_is_waited_for_not_an_internal_error() {
    const SELLER: &str = "query($id: ID!) { listing(id: $id) { title seller { id } } }";
    let app = marketplace_e2e::spawn_app_with(|s| {
        s.consistency_wait = std::time::Duration::from_secs(1);
    })
    .await;
    let pool = app.db.pool().await;
    let mut held = hold_accounts_read_model(&pool).await;
    let (seller, seller_id, _) = app.register("seller@example.com", &["SELLER"]).await;
    let listing = app
        .gql(CREATE, json!({ "input": lamp(5) }), auth(&seller))
        .await
        .data("createListing.listing.id")
        .clone();
    app.gql(PUBLISH, json!({ "id": listing }), auth(&seller))
        .await
        .data("publishListing.listing.status");
    assert!(!projected(&mut held, &seller_id).await);

    // Not in time: the catalogue's part stands, the seller is a CONFLICT.
    let r = app
        .gql(SELLER, json!({ "id": listing }), Req::default())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.error_code(), "CONFLICT", "{}", r.body);
    assert_eq!(r.body["errors"][0]["path"], json!(["listing", "seller"]));

    // Let go while the next read waits: it answers whole.
    let read = app.gql(SELLER, json!({ "id": listing }), Req::default());
    let release = async {
        held.rollback().await.expect("release");
    };
    let (r, ()) = tokio::join!(read, release);
    assert_eq!(r.data("listing.title"), "Brass lamp");
    assert_eq!(r.data("listing.seller.id"), seller_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_rejects_with_a_reason_and_cancellation_refunds() {
    let app = spawn_app().await;
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(1)).await;
    let poor = buyer_with(&app, "poor@example.com", "10.00").await;
    let rich = buyer_with(&app, "rich@example.com", "500.00").await;

    let poor_order = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&poor),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    let rejected = app.wait_order(&poor, &poor_order, |s| s != "PENDING").await;
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["statusReason"], "insufficient funds");
    // The notifications read model follows on its own; poll with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let told = loop {
        let r = app
            .gql(
                "{ notifications { edges { node { kind message } } } }",
                json!({}),
                auth(&poor),
            )
            .await;
        let first = r.data("notifications.edges")[0]["node"].clone();
        if !first.is_null() || std::time::Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(told["kind"], "ORDER_REJECTED");
    assert!(told["message"]
        .as_str()
        .is_some_and(|m| m.contains("insufficient funds")));

    let too_many = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 2) }),
            auth(&rich),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    let rejected = app.wait_order(&rich, &too_many, |s| s != "PENDING").await;
    assert_eq!(rejected["statusReason"], "out of stock");

    let order = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&rich),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_order(&rich, &order, |s| s == "CONFIRMED").await;
    assert_eq!(balance(&app, &rich, None).await, "460.00");
    let cancelled = app
        .gql(
            "mutation($id: ID!) { cancelOrder(id: $id) { consistencyToken order { status statusReason } } }",
            json!({ "id": order }),
            auth(&rich),
        )
        .await;
    assert_eq!(cancelled.data("cancelOrder.order.status"), "CANCELLED");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while balance(&app, &rich, None).await != "500.00" {
        assert!(
            std::time::Instant::now() < deadline,
            "refund did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let stock = loop {
        let l = app
            .gql(
                "query($id: ID!) { listing(id: $id) { availableQuantity } }",
                json!({ "id": listing }),
                Req::default(),
            )
            .await;
        let n = l.data("listing.availableQuantity").as_i64().expect("n");
        if n == 1 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(stock, 1, "the cancelled order's unit is back in stock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_foreign_listings_are_refused_with_codes_and_write_nothing() {
    let app = spawn_app().await;
    let (seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(3)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "100.00").await;
    let before = app.event_count().await;

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            DEPOSIT,
            json!({ "amount": { "amount": "-5.00", "currencyCode": "EUR" } }),
            "BAD_USER_INPUT",
            "negative deposit",
        ),
        (
            DEPOSIT,
            json!({ "amount": { "amount": "0.001", "currencyCode": "EUR" } }),
            "BAD_USER_INPUT",
            "sub-cent deposit",
        ),
        (
            PLACE,
            json!({ "input": place_input(&listing, 0) }),
            "BAD_USER_INPUT",
            "zero quantity",
        ),
        (
            PLACE,
            json!({ "input": place_input(&listing, -1) }),
            "BAD_USER_INPUT",
            "negative quantity",
        ),
        (
            PLACE,
            json!({ "input": place_input("not-a-uuid", 1) }),
            "BAD_USER_INPUT",
            "malformed id",
        ),
        (
            PLACE,
            json!({ "input": place_input(&uuid::Uuid::now_v7().to_string(), 1) }),
            "NOT_FOUND",
            "unknown listing",
        ),
        (
            PLACE,
            json!({ "input": { "lines": [] } }),
            "BAD_USER_INPUT",
            "no lines",
        ),
    ];
    for (query, vars, code, what) in cases {
        let r = app.gql(query, vars, auth(&buyer)).await;
        assert_eq!(r.error_code(), code, "{what}: {}", r.body);
    }
    let r = app
        .gql(
            "mutation($id: ID!) { restockListing(id: $id, quantity: 5) { consistencyToken } }",
            json!({ "id": listing }),
            auth(&buyer),
        )
        .await;
    assert_eq!(
        r.error_code(),
        "FORBIDDEN",
        "a buyer restocking another's listing"
    );
    let r = app
        .gql(
            DEPOSIT,
            json!({ "amount": { "amount": "5.00", "currencyCode": "EUR" } }),
            Req::default(),
        )
        .await;
    assert_eq!(r.error_code(), "UNAUTHENTICATED");
    let own = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&seller),
        )
        .await;
    assert_eq!(
        own.error_code(),
        "FORBIDDEN",
        "an account without BUYER cannot order: {}",
        own.body
    );
    assert_eq!(
        app.event_count().await,
        before,
        "refused input wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_duplicates_of_an_idempotent_order_place_it_once() {
    let app = std::sync::Arc::new(spawn_app().await);
    let (_, listing) = seller_with_listing(&app, "seller@example.com", lamp(10)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "1000.00").await;
    let before = app.event_count().await;

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, buyer, listing) = (app.clone(), buyer.clone(), listing.clone());
            tokio::spawn(async move {
                app.gql(
                    PLACE,
                    json!({ "input": place_input(&listing, 1), "key": "checkout-42" }),
                    auth(&buyer),
                )
                .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("task");
        ids.insert(
            r.data("placeOrder.order.id")
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "every duplicate got the first order");
    let order = ids.into_iter().next().expect("one");
    app.wait_order(&buyer, &order, |s| s == "CONFIRMED").await;
    let pool = app.db.pool().await;
    let placed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'order.placed' AND position > $1",
    )
    .bind(before)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(placed, 1, "one order.placed for twenty requests");

    let reused = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 2), "key": "checkout-42" }),
            auth(&buyer),
        )
        .await;
    assert_eq!(reused.error_code(), "IDEMPOTENCY_KEY_REUSED");

    // The same for deposits: a retried deposit counts once.
    for _ in 0..3 {
        app.gql(
            DEPOSIT,
            json!({ "amount": { "amount": "5.00", "currencyCode": "EUR" }, "key": "topup-1" }),
            auth(&buyer),
        )
        .await
        .data("depositFunds");
    }
    let deposits: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'account.funds_deposited' AND position > $1")
        .bind(before)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(deposits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellers_restock_and_delist_and_a_delisted_listing_cannot_be_bought() {
    let app = spawn_app().await;
    let (seller, listing) = seller_with_listing(&app, "seller@example.com", lamp(2)).await;
    let buyer = buyer_with(&app, "buyer@example.com", "500.00").await;

    let restocked = app
        .gql(
            "mutation($id: ID!) { restockListing(id: $id, quantity: 3) { listing { availableQuantity } } }",
            json!({ "id": listing }),
            auth(&seller),
        )
        .await;
    assert_eq!(
        restocked.data("restockListing.listing.availableQuantity"),
        5
    );
    let zero = app
        .gql(
            "mutation($id: ID!) { restockListing(id: $id, quantity: 0) { consistencyToken } }",
            json!({ "id": listing }),
            auth(&seller),
        )
        .await;
    assert_eq!(zero.error_code(), "BAD_USER_INPUT");

    let delisted = app
        .gql(
            "mutation($id: ID!) { delistListing(id: $id) { consistencyToken listing { status } } }",
            json!({ "id": listing }),
            auth(&seller),
        )
        .await;
    assert_eq!(delisted.data("delistListing.listing.status"), "DELISTED");
    let token = delisted
        .data("delistListing.consistencyToken")
        .as_str()
        .expect("token")
        .to_owned();
    let catalogue = app
        .gql(
            "{ listings { totalCount } }",
            json!({}),
            Req {
                consistency: Some(&token),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(
        catalogue.data("listings.totalCount"),
        0,
        "delisted listings leave the catalogue"
    );

    let order = app
        .gql(
            PLACE,
            json!({ "input": place_input(&listing, 1) }),
            auth(&buyer),
        )
        .await
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    let rejected = app.wait_order(&buyer, &order, |s| s != "PENDING").await;
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["statusReason"], "listing not available");
    assert_eq!(
        balance(&app, &buyer, None).await,
        "500.00",
        "nothing was held"
    );
}
