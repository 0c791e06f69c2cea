//! Orders checked out in their placement's own atomic append
//! (`flows::checkout`), against a real Postgres with real concurrent
//! clients: a flash sale, two processes on one hot listing, concurrent
//! duplicates of one idempotency key, and a database crash in the middle
//! of batches. No saga runs in these tests: every answer is final.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use marketplace_commands::flows::checkout::{
    checks_out_at_placement, place_and_check_out, CheckoutError, OrderRequest,
};
use marketplace_commands::{CommandError, CommandHandler, Executed, Idempotent};
use marketplace_domain::listing::Listing;
use marketplace_domain::order::{Order, OrderStatus};
use marketplace_domain::values::*;
use marketplace_embedded_postgres::EmbeddedPostgres;
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{EventStore, IdempotencyKey};
use uuid::Uuid;

const PRICE: i64 = 12_999;

fn request(buyer: &Actor, listing: ListingId) -> OrderRequest {
    OrderRequest {
        order_id: OrderId(Uuid::now_v7()),
        buyer: buyer.clone(),
        wanted: vec![(listing, Quantity(1))],
        at: Utc::now(),
    }
}

async fn check_out(
    handler: &CommandHandler,
    request: OrderRequest,
) -> Result<Executed<Order>, CheckoutError> {
    match place_and_check_out(
        handler,
        &marketplace_commands::CommandContext::new("test"),
        request,
        FeeRate::DEFAULT,
        None,
    )
    .await?
    {
        Idempotent::Fresh(done) => Ok(done),
        Idempotent::Replayed(_) => panic!("no key, no replay"),
    }
}

fn reason(o: &Order) -> Option<&str> {
    o.status_reason.as_ref().map(|r| r.as_str())
}

/// Every order stream in the log holds its placement and its verdict, in
/// one transaction, and nothing else (nothing shipped in these tests).
async fn every_order_in_the_log_is_final(pool: &sqlx::PgPool) -> (i64, i64) {
    let undecided: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id FROM events WHERE stream_id LIKE 'order-%' \
         GROUP BY stream_id HAVING NOT bool_or(event_type IN ('order.confirmed', 'order.rejected'))) s",
    )
    .fetch_one(pool)
    .await
    .expect("count undecided");
    assert_eq!(
        undecided, 0,
        "every placed order has its verdict in the log"
    );
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'order.confirmed'), \
                count(*) FILTER (WHERE event_type = 'order.rejected') FROM events",
    )
    .fetch_one(pool)
    .await
    .expect("count verdicts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_at_placement_answers_each_order_finally_and_sells_exactly_the_stock() {
    let m = market().await;
    assert!(checks_out_at_placement(&m.handler));
    let (_, listing) = m.stocked(20, PRICE).await;
    let mut buyers = Vec::new();
    for _ in 0..48 {
        buyers.push(m.account(vec![Role::Buyer], 50_000).await);
    }
    // Two buyers who cannot pay: refused without taking a unit.
    let poor: Vec<Actor> = vec![
        m.account(vec![Role::Buyer], 100).await,
        m.account(vec![Role::Buyer], 100).await,
    ];
    let everyone: Vec<Actor> = poor.iter().chain(&buyers).cloned().collect();
    let deposits = 48 * 50_000 + 2 * 100;

    let barrier = Arc::new(tokio::sync::Barrier::new(everyone.len()));
    let tasks: Vec<_> = everyone
        .iter()
        .cloned()
        .map(|buyer| {
            let (handler, barrier) = (m.handler.clone(), barrier.clone());
            tokio::spawn(async move {
                let r = request(&buyer, listing);
                barrier.wait().await;
                (buyer.account_id, check_out(&handler, r).await)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        let (buyer, answer) = t.await.expect("buyer task");
        answers.push((buyer, answer.expect("every order gets an answer")));
    }

    let mut confirmed = 0;
    for (buyer, done) in &answers {
        let id = done.state.id.expect("placed");
        // The answer is the order as the log holds it, and its token
        // covers it.
        let stored = m.handler.load::<Order>(id.0).await.expect("load");
        assert_eq!(stored.state, done.state, "the answer is what was stored");
        assert!(
            done.position >= stored.position,
            "the token covers the order"
        );
        match done.state.status {
            OrderStatus::Confirmed => {
                confirmed += 1;
                let wallet = m.wallet(*buyer).await;
                assert_eq!(wallet.escrow.get(&id).map(|e| e.minor), Some(PRICE));
            }
            // Stock is reserved before funds are held: a buyer who cannot
            // pay and comes after the last unit hears "out of stock".
            OrderStatus::Rejected if poor.iter().any(|p| p.account_id == *buyer) => {
                assert!(
                    matches!(
                        reason(&done.state),
                        Some("insufficient funds" | "out of stock")
                    ),
                    "{:?}",
                    reason(&done.state)
                );
            }
            OrderStatus::Rejected => assert_eq!(reason(&done.state), Some("out of stock")),
            other => panic!("an answer is final, not {other:?}"),
        }
    }
    assert_eq!(confirmed, 20, "exactly the stock is sold");
    let listing_state = m.handler.load::<Listing>(listing.0).await.expect("listing");
    assert_eq!(listing_state.state.reserved_total(), 20);
    assert_eq!(listing_state.state.available(), 0);
    let ids: Vec<AccountId> = everyone.iter().map(|b| b.account_id).collect();
    assert_eq!(
        m.money_in(&ids).await,
        deposits,
        "money is conserved to the cent"
    );
    assert_eq!(every_order_in_the_log_is_final(&m.pool).await, (20, 30));
    // A rejected order reserved and held nothing: its stream is all it wrote.
    let effects: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('listing.stock_reserved', 'account.funds_held')",
    )
    .fetch_one(&m.pool)
    .await
    .expect("count effects");
    assert_eq!(
        effects, 40,
        "one reservation and one hold per confirmed order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_checking_out_one_hot_listing_never_oversell() {
    let m = market().await;
    let (_, listing) = m.stocked(40, PRICE).await;
    let mut buyers = Vec::new();
    for _ in 0..16 {
        buyers.push(m.account(vec![Role::Buyer], 10 * PRICE).await);
    }
    // Two handlers: two processes, each with its own cache and queues,
    // on one log. Each buyer orders 4 units, two through each.
    let other = CommandHandler::new(m.store.clone());
    let handlers = [m.handler.clone(), other];
    let barrier = Arc::new(tokio::sync::Barrier::new(buyers.len() * 2));
    let mut tasks = Vec::new();
    for buyer in &buyers {
        for handler in &handlers {
            let (handler, barrier, buyer) = (handler.clone(), barrier.clone(), buyer.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut statuses = Vec::new();
                for _ in 0..2 {
                    let done = check_out(&handler, request(&buyer, listing))
                        .await
                        .expect("an answer");
                    statuses.push(done.state.status);
                }
                statuses
            }));
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.expect("task"));
    }
    let confirmed = statuses
        .iter()
        .filter(|s| **s == OrderStatus::Confirmed)
        .count();
    assert_eq!(statuses.len(), 64);
    assert_eq!(confirmed, 40, "exactly the stock is sold across processes");
    assert!(statuses
        .iter()
        .all(|s| matches!(s, OrderStatus::Confirmed | OrderStatus::Rejected)));
    let fresh = CommandHandler::new(m.store.clone());
    let l = fresh
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!(l.reserved_total(), 40);
    let ids: Vec<AccountId> = buyers.iter().map(|b| b.account_id).collect();
    assert_eq!(m.money_in(&ids).await, 16 * 10 * PRICE);
    assert_eq!(every_order_in_the_log_is_final(&m.pool).await, (40, 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_one_key_place_one_order() {
    let m = market().await;
    let (_, listing) = m.stocked(5, PRICE).await;
    let buyer = m.account(vec![Role::Buyer], 10 * PRICE).await;
    let key = IdempotencyKey {
        key: format!("placeOrder:{}:retry-1", buyer.account_id),
        request_hash: "one lamp".into(),
    };
    let order_id = OrderId(Uuid::new_v5(&Uuid::NAMESPACE_OID, key.key.as_bytes()));
    let same = OrderRequest {
        order_id,
        buyer: buyer.clone(),
        wanted: vec![(listing, Quantity(1))],
        at: Utc::now(),
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (handler, barrier, same, key) = (
                m.handler.clone(),
                barrier.clone(),
                same.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                place_and_check_out(
                    &handler,
                    &marketplace_commands::CommandContext::new("test"),
                    same,
                    FeeRate::DEFAULT,
                    Some(key),
                )
                .await
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.expect("task").expect("an answer") {
            Idempotent::Fresh(done) => {
                fresh += 1;
                assert_eq!(done.state.status, OrderStatus::Confirmed);
            }
            Idempotent::Replayed(record) => assert_eq!(record.stream_id.id(), order_id.0),
        }
    }
    assert_eq!(fresh, 1, "exactly one of the duplicates placed the order");
    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!(l.reserved_total(), 1, "reserved once");
    assert_eq!(m.money_in(&[buyer.account_id]).await, 10 * PRICE);
    assert_eq!(
        m.wallet(buyer.account_id).await.escrow.len(),
        1,
        "held once"
    );

    // The same key for another order is refused, and writes nothing.
    let other = OrderRequest {
        wanted: vec![(listing, Quantity(2))],
        ..same
    };
    let reused = place_and_check_out(
        &m.handler,
        &marketplace_commands::CommandContext::new("test"),
        other,
        FeeRate::DEFAULT,
        Some(IdempotencyKey {
            request_hash: "two lamps".into(),
            ..key
        }),
    )
    .await;
    assert!(
        matches!(
            reused,
            Err(CheckoutError::Command(CommandError::IdempotencyKeyReused))
        ),
        "{reused:?}"
    );
    assert_eq!(every_order_in_the_log_is_final(&m.pool).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_crash_mid_batch_leaves_every_order_final_and_the_money_exact() {
    let cluster = EmbeddedPostgres::start_ephemeral().await.expect("cluster");
    cluster.ensure_database("market").await.expect("database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&cluster.database_url("market"))
        .await
        .expect("connect");
    marketplace_store::postgres::migrate(&pool)
        .await
        .expect("migrate");
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresEventStore::new(pool.clone()).await.expect("store"));
    let m = market_on(pool.clone(), store).await;
    let stock = 100_000;
    let (_, listing) = m.stocked(stock, PRICE).await;
    let mut buyers = Vec::new();
    for _ in 0..16 {
        buyers.push(m.account(vec![Role::Buyer], 10_000 * PRICE).await);
    }

    // Sixteen clients keep ordering on the hot listing, without keys: an
    // order whose answer was lost in the crash may or may not be in the
    // log, and either way it must be whole.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for buyer in buyers.clone() {
        let (handler, stop, answered) = (m.handler.clone(), stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut confirmed = Vec::new();
            let mut failed = 0usize;
            while !stop.load(Ordering::SeqCst) {
                match check_out(&handler, request(&buyer, listing)).await {
                    Ok(done) => {
                        assert_eq!(done.state.status, OrderStatus::Confirmed);
                        confirmed.push(done.state.id.expect("placed"));
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    // The database is down: try again a moment later.
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (confirmed, failed)
        }));
    }
    let wait_for = |n: usize| {
        let answered = answered.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            while answered.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "orders stopped being answered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(200).await;
    cluster
        .crash_and_restart()
        .await
        .expect("crash and restart");
    let after = answered.load(Ordering::SeqCst);
    wait_for(after + 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for c in clients {
        let (confirmed, _) = c.await.expect("client");
        acknowledged.extend(confirmed);
    }

    // Every order in the log is whole: placed with its verdict, and each
    // confirmed one holds its unit and its money.
    let (confirmed, rejected) = every_order_in_the_log_is_final(&pool).await;
    assert_eq!(
        rejected, 0,
        "deep stock and deep wallets: nothing is refused"
    );
    assert!(
        confirmed as usize >= acknowledged.len(),
        "every acknowledged order is in the log"
    );
    let fresh = CommandHandler::new(m.store.clone());
    for id in &acknowledged {
        let o = fresh.load::<Order>(id.0).await.expect("order").state;
        assert_eq!(o.status, OrderStatus::Confirmed);
    }
    let l = fresh
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!(
        i64::from(l.reserved_total()),
        confirmed,
        "one unit reserved per confirmed order, none for a lost one"
    );
    let mut money = 0;
    let mut escrows = 0;
    for b in &buyers {
        let a = fresh
            .load::<marketplace_domain::account::Account>(b.account_id.0)
            .await
            .expect("wallet")
            .state;
        money +=
            a.balance(&eur(0).currency).minor + a.escrow.values().map(|e| e.minor).sum::<i64>();
        escrows += a.escrow.len() as i64;
    }
    assert_eq!(money, 16 * 10_000 * PRICE, "money is conserved to the cent");
    assert_eq!(escrows, confirmed, "one hold per confirmed order");
}
