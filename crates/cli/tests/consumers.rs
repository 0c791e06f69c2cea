//! The consumer runtime across real processes: two `marketplace serve`
//! processes on one database (each runs every projection and process
//! manager), and one served from a Postgres that crashes under load.
//!
//! - Two instances of each process manager work through concurrent
//!   multi-line orders, some from buyers who cannot pay: exactly one acts,
//!   every order ends CONFIRMED or REJECTED, a rejected order holds no
//!   funds, and stock is exact.
//! - The leader is killed (`SIGKILL`) mid-stream: the standby finishes the
//!   work, each step exactly once.
//! - Postgres is stopped in immediate mode and started again while orders
//!   are placed: every acknowledged order reaches a final status without
//!   restarting the server, and `/readyz` returns to 200 by itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_domain::order::Order;
use marketplace_domain::Aggregate;
use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_embedded_postgres::EmbeddedPostgres;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);
const SECRET: &str = "7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a";
const PASSWORD: &str = "correct horse battery";

/// One `marketplace serve` process.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts `serve --role all` on `database_url` and waits for its URL.
    fn start(database_url: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url)
            .env("MARKETPLACE_JWT_SECRET", SECRET)
            // Every process of one marketplace shares the master key.
            .env("MARKETPLACE_MASTER_KEY", "0f".repeat(32))
            // Load tests lift the per-client limits (they have their own tests).
            .env("MARKETPLACE_RATE_LIMIT_ACCOUNT_BURST", "1000000")
            .env("MARKETPLACE_RATE_LIMIT_ACCOUNT_PER_SEC", "1000000")
            .env("MARKETPLACE_RATE_LIMIT_ANON_BURST", "1000000")
            .env("MARKETPLACE_RATE_LIMIT_ANON_PER_SEC", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the binary");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            let line = rx
                .recv_timeout(DEADLINE)
                .expect("the binary printed its URL");
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                break url.trim_end_matches("/graphql").to_owned();
            }
        };
        Server {
            child,
            base: url,
            http: reqwest::Client::new(),
        }
    }

    /// Kills the process at once, as a crash would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn gql(&self, query: &str, variables: Value, token: Option<&str>) -> Value {
        self.try_gql(query, variables, token, None)
            .await
            .expect("request")
    }

    async fn try_gql(
        &self,
        query: &str,
        variables: Value,
        token: Option<&str>,
        consistency: Option<&str>,
    ) -> Result<Value, reqwest::Error> {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.base))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(c) = consistency {
            req = req.header("x-consistency-token", c);
        }
        req.send().await?.json().await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// A gauge or counter of `/metrics`, by its exact series name.
    async fn metric(&self, series: &str) -> f64 {
        let page = self.metrics().await;
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn head(&self) -> String {
        (self.metric("marketplace_log_head").await as u64).to_string()
    }

    async fn readyz(&self) -> Option<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.json().await.ok()?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

const HANDLED: &str = "marketplace_consumer_handled_events_total{consumer=\"checkout\"}";
const LEADING: &str = "marketplace_consumer_leading{consumer=\"checkout\"}";

async fn register(s: &Server, email: &str, role: &str) -> String {
    let r = s
        .gql(
            "mutation($input: RegisterInput!) { register(input: $input) { token } }",
            json!({ "input": { "email": email, "password": PASSWORD, "displayName": "Someone", "roles": [role] } }),
            None,
        )
        .await;
    r["data"]["register"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("register {email}: {r}"))
        .to_owned()
}

/// A seller with two published listings of `stock` lamps each, at 40.00.
async fn listings(s: &Server, stock: i64) -> Vec<String> {
    let seller = register(s, "seller@example.com", "SELLER").await;
    let mut ids = Vec::new();
    for title in ["Brass lamp", "Copper lamp"] {
        let r = s
            .gql(
                "mutation($input: CreateListingInput!) { createListing(input: $input) { listing { id } } }",
                json!({ "input": {
                    "kind": "PHYSICAL", "title": title, "description": "Warm light",
                    "category": "home", "tags": ["lighting"],
                    "price": { "amount": "40.00", "currencyCode": "EUR" }, "quantity": stock
                } }),
                Some(&seller),
            )
            .await;
        let id = r["data"]["createListing"]["listing"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createListing: {r}"))
            .to_owned();
        let r = s
            .gql(
                "mutation($id: ID!) { publishListing(id: $id) { listing { status } } }",
                json!({ "id": id }),
                Some(&seller),
            )
            .await;
        assert_eq!(
            r["data"]["publishListing"]["listing"]["status"], "PUBLISHED",
            "{r}"
        );
        ids.push(id);
    }
    ids
}

/// A buyer; every third cannot pay for an order of both lamps (80.00).
struct Buyer {
    token: String,
    deposit_cents: i64,
}

async fn buyers(s: &Server, n: usize) -> Vec<Buyer> {
    let mut out = Vec::new();
    for i in 0..n {
        let token = register(s, &format!("buyer{i}@example.com"), "BUYER").await;
        let deposit_cents = if i % 3 == 0 { 5_000 } else { 50_000 };
        let r = s
            .gql(
                "mutation($amount: MoneyInput!) { depositFunds(amount: $amount) { consistencyToken } }",
                json!({ "amount": { "amount": format!("{}.00", deposit_cents / 100), "currencyCode": "EUR" } }),
                Some(&token),
            )
            .await;
        assert!(r["data"]["depositFunds"].is_object(), "{r}");
        out.push(Buyer {
            token,
            deposit_cents,
        });
    }
    out
}

const PLACE: &str = "mutation($input: PlaceOrderInput!, $key: String) {
    placeOrder(input: $input, idempotencyKey: $key) { order { id } }
}";

/// Places one order of both listings; `Ok(id)` once acknowledged.
async fn place(
    s: &Server,
    buyer: &Buyer,
    listings: &[String],
    key: &str,
) -> Result<String, String> {
    let lines: Vec<Value> = listings
        .iter()
        .map(|l| json!({ "listingId": l, "quantity": 1 }))
        .collect();
    let r = s
        .try_gql(
            PLACE,
            json!({ "input": { "lines": lines }, "key": key }),
            Some(&buyer.token),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    r["data"]["placeOrder"]["order"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| r.to_string())
}

/// Polls until every order is CONFIRMED or REJECTED; returns the statuses.
async fn settle(s: &Server, orders: &[(usize, String)], buyers: &[Buyer]) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut statuses = vec![String::new(); orders.len()];
    loop {
        for (i, (b, id)) in orders.iter().enumerate() {
            if statuses[i] == "CONFIRMED" || statuses[i] == "REJECTED" {
                continue;
            }
            if let Ok(r) = s
                .try_gql(
                    "query($id: ID!) { order(id: $id) { status } }",
                    json!({ "id": id }),
                    Some(&buyers[*b].token),
                    None,
                )
                .await
            {
                statuses[i] = r["data"]["order"]["status"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
            }
        }
        if statuses.iter().all(|s| s == "CONFIRMED" || s == "REJECTED") {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "orders did not settle: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the books once everything has settled: poor buyers rejected,
/// each rejected order holds nothing, each confirmed one exactly its total,
/// and stock is exact.
async fn check_books(
    s: &Server,
    listings: &[String],
    stock: i64,
    buyers: &[Buyer],
    orders: &[(usize, String)],
    statuses: &[String],
) {
    let head = s.head().await;
    let mut spent: HashMap<usize, i64> = HashMap::new();
    let mut confirmed = 0;
    for ((b, id), status) in orders.iter().zip(statuses) {
        if buyers[*b].deposit_cents < 8_000 {
            assert_eq!(status, "REJECTED", "order {id} of a buyer who cannot pay");
        }
        if status == "CONFIRMED" {
            confirmed += 1;
            *spent.entry(*b).or_default() += 8_000;
        }
    }
    assert!(confirmed > 0, "some orders were confirmed: {statuses:?}");
    for (i, b) in buyers.iter().enumerate() {
        let r = s
            .try_gql(
                "{ me { balance { amount } } }",
                json!({}),
                Some(&b.token),
                Some(&head),
            )
            .await
            .expect("me");
        let amount = r["data"]["me"]["balance"][0]["amount"]
            .as_str()
            .or_else(|| r["data"]["me"]["balance"]["amount"].as_str())
            .unwrap_or_else(|| panic!("balance: {r}"))
            .to_owned();
        let expected = b.deposit_cents - spent.get(&i).copied().unwrap_or(0);
        assert_eq!(
            amount,
            format!("{}.{:02}", expected / 100, expected % 100),
            "buyer {i}: no funds stay held for a rejected order"
        );
    }
    // A rejected order gives its reservations back right after its
    // verdict: poll, with a deadline, for the stock to add up.
    for l in listings {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = s
                .try_gql(
                    "query($id: ID!) { listing(id: $id) { availableQuantity } }",
                    json!({ "id": l }),
                    None,
                    Some(&s.head().await),
                )
                .await
                .expect("listing");
            if r["data"]["listing"]["availableQuantity"] == stock - confirmed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stock is exact: {r}, {confirmed} confirmed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every order has exactly one verdict, at most one hold and at most one
/// reservation per listing: nothing was done twice.
async fn check_exactly_once(database_url: &str, orders: &[(usize, String)]) {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    for (_, id) in orders {
        let verdicts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE stream_id = $1 \
             AND event_type IN ('order.confirmed', 'order.rejected')",
        )
        .bind(format!("{}-{id}", Order::CATEGORY))
        .fetch_one(&pool)
        .await
        .expect("verdicts");
        assert_eq!(verdicts, 1, "order {id} has exactly one verdict");
        let holds: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type = 'account.funds_held' \
             AND data->>'order_id' = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("holds");
        assert!(holds <= 1, "order {id}: funds held {holds} times");
        let most: Option<i64> = sqlx::query_scalar(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM events \
             WHERE event_type = 'listing.stock_reserved' AND data->>'order_id' = $1 \
             GROUP BY stream_id) per_listing",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("reservations");
        assert!(
            most.unwrap_or(0) <= 1,
            "order {id}: a listing reserved {most:?} times"
        );
    }
    pool.close().await;
}

/// Places one order per buyer, spread over `servers`, all at once.
async fn place_all(
    servers: &[&Server],
    buyers: &Arc<Vec<Buyer>>,
    listings: &[String],
) -> Vec<(usize, String)> {
    let placing = (0..buyers.len()).map(|i| {
        let s = servers[i % servers.len()];
        let b = &buyers[i];
        async move {
            let id = place(s, b, listings, &format!("order-{i}"))
                .await
                .unwrap_or_else(|e| panic!("place order {i}: {e}"));
            (i, id)
        }
    });
    futures::future::join_all(placing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_run_each_process_manager_once_and_the_books_add_up() {
    let db = TestDatabase::create().await;
    let a = Server::start(&db.url);
    let b = Server::start(&db.url);
    let stock = 6;
    let listings = listings(&a, stock).await;
    let buyers = Arc::new(buyers(&b, 12).await);
    let orders = place_all(&[&a, &b], &buyers, &listings).await;
    let statuses = settle(&a, &orders, &buyers).await;
    check_books(&b, &listings, stock, &buyers, &orders, &statuses).await;
    check_exactly_once(&db.url, &orders).await;

    // Exactly one instance acted: one process handled every order, the
    // other stood by.
    let (ha, hb) = (a.metric(HANDLED).await, b.metric(HANDLED).await);
    assert_eq!(ha + hb, orders.len() as f64, "handled {ha} + {hb}");
    assert!(ha == 0.0 || hb == 0.0, "both acted: {ha} and {hb}");
    let (la, lb) = (a.metric(LEADING).await, b.metric(LEADING).await);
    assert_eq!(la + lb, 1.0, "one leader: {la} and {lb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_finishes_exactly_once_after_the_leader_is_killed_mid_stream() {
    let db = TestDatabase::create().await;
    let mut servers = [Server::start(&db.url), Server::start(&db.url)];
    let stock = 10;
    let listings = listings(&servers[0], stock).await;
    let buyers = Arc::new(buyers(&servers[0], 24).await);
    // Which one leads the checkout saga.
    let deadline = Instant::now() + DEADLINE;
    let leader = loop {
        let (l0, l1) = (
            servers[0].metric(LEADING).await,
            servers[1].metric(LEADING).await,
        );
        if l0 + l1 == 1.0 {
            break usize::from(l1 == 1.0);
        }
        assert!(Instant::now() < deadline, "no checkout leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let standby = 1 - leader;
    // The first half of the orders, through the standby's API (it stays
    // up); the leader starts on them.
    let (first, second): (Vec<usize>, Vec<usize>) = (0..buyers.len()).partition(|i| i % 2 == 0);
    let mut orders = place_some(&servers[standby], &buyers, &listings, &first).await;
    let deadline = Instant::now() + DEADLINE;
    while servers[leader].metric(HANDLED).await < 1.0 {
        assert!(Instant::now() < deadline, "the leader handled nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Killed mid-stream: the second half is still to come, and perhaps
    // some of the first.
    servers[leader].kill();
    orders.extend(place_some(&servers[standby], &buyers, &listings, &second).await);
    let s = &servers[standby];
    let statuses = settle(s, &orders, &buyers).await;
    // Orders are final at placement, so settling does not wait for the
    // saga: wait for the takeover itself (the killed leader's lock is freed
    // when Postgres notices its session is gone).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (leading, handled) = (s.metric(LEADING).await, s.metric(HANDLED).await);
        if leading == 1.0 && handled >= second.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not take over and handle the rest: leading {leading}, \
             handled {handled} of at least {}",
            second.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_books(s, &listings, stock, &buyers, &orders, &statuses).await;
    check_exactly_once(&db.url, &orders).await;
}

/// Places the orders of buyers `which` through `server`, all at once.
async fn place_some(
    server: &Server,
    buyers: &Arc<Vec<Buyer>>,
    listings: &[String],
    which: &[usize],
) -> Vec<(usize, String)> {
    let placing = which.iter().map(|&i| {
        let b = &buyers[i];
        async move {
            let id = place(server, b, listings, &format!("order-{i}"))
                .await
                .unwrap_or_else(|e| panic!("place order {i}: {e}"));
            (i, id)
        }
    });
    futures::future::join_all(placing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_are_all_decided_after_postgres_restarts_under_load() {
    let cluster = Arc::new(EmbeddedPostgres::start_ephemeral().await.expect("cluster"));
    cluster.ensure_database("market").await.expect("database");
    let url = cluster.database_url("market");
    let server = Arc::new(Server::start(&url));
    let stock = 1_000;
    let listings = Arc::new(listings(&server, stock).await);
    let buyers = Arc::new(buyers(&server, 8).await);

    // Buyers keep ordering; an order counts once `placeOrder` acknowledged
    // it. Failures while the database is down are expected (and retried
    // with the same idempotency key).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for b in 0..buyers.len() {
        let (server, buyers, listings, stop_rx, placed) = (
            server.clone(),
            buyers.clone(),
            listings.clone(),
            stop_rx.clone(),
            placed.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !*stop_rx.borrow() {
                let key = format!("buyer-{b}-order-{n}");
                match place(&server, &buyers[b], &listings, &key).await {
                    Ok(id) => {
                        acknowledged.push((b, id));
                        placed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        n += 1;
                    }
                    // Down: the same key again, a moment later.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            acknowledged
        }));
    }
    let count = || placed.load(std::sync::atomic::Ordering::SeqCst);
    let wait_for = |n: usize| async move {
        let deadline = Instant::now() + DEADLINE;
        while count() < n {
            assert!(Instant::now() < deadline, "only {} orders placed", count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Orders before the crash, the crash, and orders after it.
    wait_for(20).await;
    cluster
        .crash_and_restart()
        .await
        .expect("crash and restart");
    let after = count();
    wait_for(after + 20).await;
    stop.send_replace(true);
    let mut orders = Vec::new();
    for c in clients {
        orders.extend(c.await.expect("client"));
    }
    assert!(
        orders.len() > buyers.len(),
        "orders were placed: {}",
        orders.len()
    );
    let statuses = settle(&server, &orders, &buyers).await;
    check_books(&server, &listings, stock, &buyers, &orders, &statuses).await;
    check_exactly_once(&url, &orders).await;
    // Ready again by itself, without a restart of the server.
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some((200, _)) = server.readyz().await {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never returned to 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_retry_names_what_it_cannot_retry_and_clears_a_failed_process_manager() {
    let db = TestDatabase::create().await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("MARKETPLACE_MASTER_KEY", "0f".repeat(32))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the binary");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["projections", "retry", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("unknown consumer \"nope\"") && err.contains("checkout"),
        "{err}"
    );
    let (ok, _, err) = run(&["projections", "retry", "payout"]);
    assert!(!ok);
    assert!(err.contains("payout is not FAILED"), "{err}");

    // A FAILED process manager (as its runner records it) is cleared.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    sqlx::query(
        "INSERT INTO consumer_checkpoints (name, position, state, failed_position, last_error) \
         VALUES ('payout', 41, 'FAILED', 42, 'settle refused: no escrow')",
    )
    .execute(&pool)
    .await
    .expect("a failed row");
    let (_, table, _) = run(&["projections", "status"]);
    assert!(
        table.contains("payout") && table.contains("saga") && table.contains("FAILED"),
        "{table}"
    );
    assert!(
        table.contains("failed at 42: settle refused: no escrow"),
        "{table}"
    );
    let (ok, out, err) = run(&["projections", "retry", "payout"]);
    assert!(ok, "{err}");
    assert!(out.contains("payout: no longer FAILED"), "{out}");
    let state: String =
        sqlx::query_scalar("SELECT state FROM consumer_checkpoints WHERE name = 'payout'")
            .fetch_one(&pool)
            .await
            .expect("state");
    assert_eq!(
        state, "STOPPED",
        "a runner in any process takes it from here"
    );
    pool.close().await;
}
