//! The checkout saga and the payout process against a real Postgres: a
//! flash sale with concurrent buyers, and crashes between saga steps.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::Utc;
use common::*;
use marketplace_commands::process::payout::PayoutProcess;
use marketplace_domain::account::Account;
use marketplace_domain::listing::{Listing, ListingSpec};
use marketplace_domain::order::{Fulfil, Order, OrderCommand, OrderStatus, Step};
use marketplace_domain::values::*;
use marketplace_domain::Aggregate;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_sells_exactly_the_stock_and_conserves_money_to_the_cent() {
    flash_sale::sells_exactly_the_stock_and_conserves_money(market().await).await;
}

/// Runs the saga with a fault at `step` on its second call, in the middle
/// of one batch of four orders, shows the runner stops there (as a crash
/// would), restarts it without the fault, and
/// checks that every order ends decided with stock and funds consistent.
async fn crash_and_recover(step: &'static str, buyer_funds: i64) -> (Vec<Order>, Listing) {
    let m = market().await;
    let (_, listing) = m.stocked(3, 1_000).await;
    let mut buyers = Vec::new();
    let mut orders = Vec::new();
    for _ in 0..4 {
        let b = m.account(vec![Role::Buyer], buyer_funds).await;
        orders.push(m.place(&b, listing, 1).await);
        buyers.push(b);
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let faulty = m.saga().with_fault(Arc::new(move |at| {
        at == step && hook_calls.fetch_add(1, Ordering::SeqCst) == 1
    }));
    let mut crashed = m.start_checkout(faulty);
    let failed = crashed.failed().await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some(format!("fault injected at {step}").as_str()),
        "the saga stopped at the fault: {failed:?}"
    );
    crashed.abort();
    // The four orders are one batch: the crash leaves some undecided
    // (which ones depends on how the buyers' holds interleaved).
    let mut pending = 0;
    for o in &orders {
        if m.order(*o).await.status == OrderStatus::Pending {
            pending += 1;
        }
    }
    assert!(pending > 0, "the crash left orders undecided");

    let restarted = m.start_checkout(m.saga());
    let decided = m.wait_orders(&orders, settled).await;
    let confirmed: u32 = decided
        .iter()
        .filter(|o| o.status == OrderStatus::Confirmed)
        .count() as u32;
    // A rejected order gives its reservation back right after its verdict.
    let deadline = std::time::Instant::now() + DEADLINE;
    let l = loop {
        let l = m
            .handler
            .load::<Listing>(listing.0)
            .await
            .expect("listing")
            .state;
        if l.reserved_total() == confirmed || std::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    restarted.abort();
    assert_eq!(
        l.reserved_total(),
        confirmed,
        "reserved stock equals confirmed orders"
    );
    for (o, b) in decided.iter().zip(&buyers) {
        let w = m.wallet(b.account_id).await;
        let held = w.escrow.get(&o.id.expect("id")).map(|x| x.minor);
        match o.status {
            OrderStatus::Confirmed => assert_eq!(held, Some(1_000)),
            OrderStatus::Rejected => assert_eq!(held, None),
            s => panic!("undecided order {s:?}"),
        }
        assert_eq!(
            w.balance(&eur(0).currency).minor + held.unwrap_or(0),
            buyer_funds
        );
    }
    (decided, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_holding_funds_is_finished_on_restart_without_holding_twice() {
    let (orders, listing) = crash_and_recover("after-hold", 5_000).await;
    let statuses: Vec<_> = orders.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        [
            OrderStatus::Confirmed,
            OrderStatus::Confirmed,
            OrderStatus::Confirmed,
            OrderStatus::Rejected
        ]
    );
    assert_eq!(listing.available(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_reserving_for_a_buyer_who_cannot_pay_leaves_no_stock_reserved() {
    let (orders, listing) = crash_and_recover("after-reserve", 500).await;
    assert!(orders.iter().all(|o| o.status == OrderStatus::Rejected));
    assert!(orders
        .iter()
        .all(|o| o.status_reason.as_ref().map(|r| r.as_str()) == Some("insufficient funds")));
    assert_eq!(listing.reserved_total(), 0);
    assert_eq!(listing.available(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_interrupted_between_release_and_credit_pays_exactly_once_on_restart() {
    let m = market().await;
    let checkout = m.start_checkout(m.saga());
    let seller = m.account(vec![Role::Seller], 0).await;
    let buyer = m.account(vec![Role::Buyer], 10_000).await;
    let listing = m
        .listing(
            &seller,
            ListingSpec::Physical {
                quantity: Quantity(2),
            },
            2_000,
        )
        .await;
    let order = m.place(&buyer, listing, 2).await;
    m.wait_orders(&[order], |o| o.status == OrderStatus::Confirmed)
        .await;
    for (actor, step) in [
        (seller.clone(), Step::Ship(None)),
        (buyer.clone(), Step::ConfirmDelivery(FeeRate::DEFAULT)),
    ] {
        m.handler
            .execute::<Order>(
                order.0,
                &m.ctx(),
                &OrderCommand::Fulfil(Fulfil {
                    actor,
                    step,
                    at: Utc::now(),
                }),
            )
            .await
            .expect("fulfil");
    }

    // The payout process stops right after releasing the escrow, before
    // crediting anyone: the money is in flight.
    let mut crashed = m.start_payout(
        PayoutProcess::new(m.handler.clone()).with_fault(Arc::new(|at| at == "after-release")),
    );
    let failed = crashed.failed().await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some("fault injected at after-release")
    );
    crashed.abort();
    assert_eq!(m.wallet(seller.account_id).await.credits, 0);

    let restarted = m.start_payout(PayoutProcess::new(m.handler.clone()));
    let deadline = std::time::Instant::now() + DEADLINE;
    while m.wallet(FEE_ACCOUNT_ID).await.credits == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the payout did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (payout, fee) = FeeRate::DEFAULT.split(&eur(4_000));
    assert_eq!(
        m.wallet(seller.account_id).await.balance(&eur(0).currency),
        payout
    );
    assert_eq!(
        m.wallet(FEE_ACCOUNT_ID).await.balance(&eur(0).currency),
        fee
    );
    let everyone = [buyer.account_id, seller.account_id, FEE_ACCOUNT_ID];
    assert_eq!(m.money_in(&everyone).await, 10_000, "money conserved");
    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!((l.sold, l.reserved_total()), (2, 0));
    // Handling the delivery again (a second restart from an old checkpoint)
    // credits nothing twice.
    let seller_events = m
        .store
        .read_stream(
            &marketplace_store::StreamId::new(Account::CATEGORY, seller.account_id.0)
                .expect("stream"),
            0,
        )
        .await
        .expect("read")
        .len();
    restarted.abort();
    sqlx::query("UPDATE consumer_checkpoints SET position = 0 WHERE name = 'payout'")
        .execute(&m.pool)
        .await
        .expect("rewind");
    let replay = m.start_payout(PayoutProcess::new(m.handler.clone()));
    // Its last event of interest is the delivery.
    let delivered: i64 =
        sqlx::query_scalar("SELECT max(position) FROM events WHERE event_type = 'order.delivered'")
            .fetch_one(&m.pool)
            .await
            .expect("delivery");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let p: i64 =
            sqlx::query_scalar("SELECT position FROM consumer_checkpoints WHERE name = 'payout'")
                .fetch_one(&m.pool)
                .await
                .expect("checkpoint");
        if p >= delivered {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replay did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    replay.abort();
    checkout.abort();
    let after = m
        .store
        .read_stream(
            &marketplace_store::StreamId::new(Account::CATEGORY, seller.account_id.0)
                .expect("stream"),
            0,
        )
        .await
        .expect("read")
        .len();
    assert_eq!(
        after, seller_events,
        "a replayed delivery credits nothing twice"
    );
    assert_eq!(m.money_in(&everyone).await, 10_000);
}

/// Two saga instances (a stale leader and its successor during a takeover)
/// handle the same `order.placed` events at the same time, for orders some
/// of whose buyers cannot pay and more orders than stock. Whatever the
/// interleaving, every order ends CONFIRMED with its reservation and its
/// escrow, or REJECTED with neither, and stock is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_saga_instances_racing_on_the_same_orders_leave_nothing_held_for_a_rejected_one() {
    use marketplace_commands::process::ProcessManager;
    use marketplace_consumers::Envelope;
    use marketplace_store::StreamId;

    let m = market().await;
    let (_, listing) = m.stocked(6, 1_000).await;
    let mut placed = Vec::new();
    for i in 0..12 {
        // Every third buyer cannot pay.
        let funds = if i % 3 == 0 { 500 } else { 5_000 };
        let buyer = m.account(vec![Role::Buyer], funds).await;
        let order = m.place(&buyer, listing, 1).await;
        let stream = StreamId::new(Order::CATEGORY, order.0).expect("stream");
        let first = m.store.read_stream(&stream, 0).await.expect("read");
        let envelope = Envelope::decode(&first[0]).expect("decode");
        placed.push((order, buyer, envelope));
    }
    let (a, b) = (Arc::new(m.saga()), Arc::new(m.saga()));
    let mut races = Vec::new();
    for (_, _, envelope) in &placed {
        for saga in [a.clone(), b.clone()] {
            let envelope = envelope.clone();
            races.push(tokio::spawn(async move { saga.handle(&envelope).await }));
        }
    }
    for race in races {
        race.await.expect("task").expect("handled");
    }

    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    let mut confirmed = 0;
    for (order, buyer, _) in &placed {
        let o = m.order(*order).await;
        let w = m.wallet(buyer.account_id).await;
        let held = w.escrow.get(order).map(|x| x.minor);
        let reserved = l.reserved.get(order).copied();
        match o.status {
            OrderStatus::Confirmed => {
                confirmed += 1;
                assert_eq!((held, reserved), (Some(1_000), Some(1)), "{order}");
            }
            OrderStatus::Rejected => {
                assert_eq!((held, reserved), (None, None), "{order} keeps nothing");
            }
            s => panic!("order {order} undecided: {s:?}"),
        }
    }
    assert_eq!(l.reserved_total(), confirmed, "stock is exact");
    assert!((1..=6).contains(&confirmed), "{confirmed} confirmed");
}

/// Many reservations decided against one listing and appended together
/// keep their own outcomes: the first come are served, the rest refused as
/// out of stock, and deciding the same batch again appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_reservations_keeps_each_outcome_and_is_idempotent() {
    use marketplace_domain::listing::{ListingCommand, ListingError, ReserveStock};
    use marketplace_store::StreamId;

    let m = market().await;
    let (_, listing) = m.stocked(3, 1_000).await;
    let buyer = m.account(vec![Role::Buyer], 0).await;
    let orders: Vec<OrderId> = (0..5).map(|_| OrderId(uuid::Uuid::now_v7())).collect();
    let batch: Vec<_> = orders
        .iter()
        .map(|o| {
            (
                m.ctx(),
                ListingCommand::Reserve(ReserveStock {
                    order_id: *o,
                    buyer_id: buyer.account_id,
                    quantity: Quantity(1),
                    at: Utc::now(),
                }),
            )
        })
        .collect();
    let stream = StreamId::new(Listing::CATEGORY, listing.0).expect("stream");
    let before = m.store.read_stream(&stream, 0).await.expect("read").len();
    let outcomes = m
        .handler
        .execute_many::<Listing>(listing.0, &batch)
        .await
        .expect("batch");
    assert_eq!(outcomes[..3], [Ok(()), Ok(()), Ok(())]);
    for refused in &outcomes[3..] {
        assert!(
            matches!(refused, Err(ListingError::OutOfStock { available: 0, .. })),
            "{refused:?}"
        );
    }
    let after = m.store.read_stream(&stream, 0).await.expect("read").len();
    assert_eq!(
        after - before,
        3,
        "one event per reservation, in one append"
    );
    let again = m
        .handler
        .execute_many::<Listing>(listing.0, &batch)
        .await
        .expect("batch again");
    assert_eq!(again[..3], [Ok(()), Ok(()), Ok(())]);
    assert_eq!(
        m.store.read_stream(&stream, 0).await.expect("read").len(),
        after,
        "deciding the same batch again appends nothing"
    );
    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!(l.reserved_total(), 3);
    assert!(orders[..3].iter().all(|o| l.reserved.contains_key(o)));
}

/// Orders for several listings, interleaved in the log and handed to the
/// saga in one batch: each listing serves its orders first placed, first
/// served, side by side with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_orders_for_several_listings_are_served_in_order_per_listing() {
    let m = market().await;
    let seller = m.account(vec![Role::Seller], 0).await;
    let mut listings = Vec::new();
    for _ in 0..3 {
        listings.push(
            m.listing(
                &seller,
                ListingSpec::Physical {
                    quantity: Quantity(2),
                },
                1_000,
            )
            .await,
        );
    }
    let buyers = [
        m.account(vec![Role::Buyer], 1_000_000).await,
        m.account(vec![Role::Buyer], 1_000_000).await,
    ];
    // Before the saga runs, so that they reach it together: three rounds of
    // one order per listing, alternating buyers.
    let mut placed: Vec<(usize, OrderId)> = Vec::new();
    for round in 0..3 {
        for (n, l) in listings.iter().enumerate() {
            placed.push((n, m.place(&buyers[(round + n) % 2], *l, 1).await));
        }
    }
    let ids: Vec<OrderId> = placed.iter().map(|(_, id)| *id).collect();
    let _saga = m.start_checkout(m.saga());
    let orders = m.wait_orders(&ids, settled).await;
    let status: Vec<OrderStatus> = orders.iter().map(|o| o.status).collect();
    use OrderStatus::{Confirmed, Rejected};
    assert_eq!(
        status,
        [[Confirmed; 3], [Confirmed; 3], [Rejected; 3]].concat(),
        "first placed, first served on every listing"
    );
    for l in &listings {
        let state = m.handler.load::<Listing>(l.0).await.expect("load").state;
        assert_eq!((state.available(), state.reserved_total()), (0, 2));
    }
    let held: usize = futures::future::join_all(buyers.iter().map(|b| m.wallet(b.account_id)))
        .await
        .iter()
        .map(|w| w.escrow.len())
        .sum();
    assert_eq!(held, 6, "the six confirmed orders are held, nothing else");
    assert_eq!(
        m.money_in(&[buyers[0].account_id, buyers[1].account_id])
            .await,
        2_000_000,
        "money conserved"
    );
}
