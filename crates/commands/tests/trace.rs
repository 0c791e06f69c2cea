//! Audit reads on a real Postgres: one request traced across streams
//! through the checkout saga, and aggregates as of a position.

mod common;

use common::*;
use marketplace_commands::audit::{state_as_of, trace, AsOf};
use marketplace_consumers::Envelope;
use marketplace_domain::account::{Account, AccountEvent};
use marketplace_domain::listing::{ListingEvent, ListingSpec};
use marketplace_domain::order::{Order, OrderEvent, OrderStatus};
use marketplace_domain::values::*;
use marketplace_domain::{Aggregate, Event};
use marketplace_store::StreamId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_traced_through_the_saga_and_shown_as_of_any_position() {
    let m = market().await;
    let checkout = m.start_checkout(m.saga());
    let seller = m.account(vec![Role::Seller], 0).await;
    let buyer = m.account(vec![Role::Buyer], 5_000).await;
    let listing = m
        .listing(
            &seller,
            ListingSpec::Physical {
                quantity: Quantity(3),
            },
            1_000,
        )
        .await;
    let order = m.place(&buyer, listing, 2).await;
    m.wait_orders(&[order], |o| o.status == OrderStatus::Confirmed)
        .await;
    checkout.abort();

    let stream = StreamId::new(Order::CATEGORY, order.0).expect("stream");
    let events = m.store.read_stream(&stream, 0).await.expect("read");
    let placed = &events[0];
    let correlation = placed.metadata.correlation_id.expect("correlated");
    let traced = trace(&*m.store, correlation, &|_, _| {})
        .await
        .expect("trace");
    let steps: Vec<Event> = traced
        .iter()
        .map(|e| Envelope::decode(e).expect("decodes").event)
        .collect();
    assert!(
        matches!(
            steps.as_slice(),
            [
                Event::Order(OrderEvent::Placed(_)),
                Event::Listing(ListingEvent::StockReserved(_)),
                Event::Account(AccountEvent::FundsHeld(_)),
                Event::Order(OrderEvent::Confirmed(_)),
            ]
        ),
        "{steps:?}"
    );
    assert!(traced.windows(2).all(|w| w[0].position < w[1].position));
    assert!(traced[1..]
        .iter()
        .all(|e| e.metadata.causation_id == Some(placed.event_id)));

    // As of the placement: PENDING at revision 0; as of the confirmation:
    // CONFIRMED; before it existed: nothing.
    let (rev, then) = state_as_of(&*m.store, &stream, AsOf::Position(placed.position))
        .await
        .expect("as of")
        .expect("existed");
    assert_eq!((rev, then["status"].as_str()), (0, Some("PENDING")));
    let (rev, now) = state_as_of(&*m.store, &stream, AsOf::Position(events[1].position))
        .await
        .expect("as of")
        .expect("existed");
    assert_eq!((rev, now["status"].as_str()), (1, Some("CONFIRMED")));
    let before = state_as_of(
        &*m.store,
        &stream,
        AsOf::Position(marketplace_store::Position(placed.position.0 - 1)),
    )
    .await
    .expect("as of");
    assert!(before.is_none());
    // Every aggregate type works: the buyer's wallet before and after the hold.
    let wallet = StreamId::new(Account::CATEGORY, buyer.account_id.0).expect("stream");
    let (_, before_hold) = state_as_of(&*m.store, &wallet, AsOf::Position(placed.position))
        .await
        .expect("as of")
        .expect("existed");
    assert_eq!(before_hold["balances"]["EUR"], 5_000);
    let (_, after_hold) = state_as_of(&*m.store, &wallet, AsOf::Position(traced[3].position))
        .await
        .expect("as of")
        .expect("existed");
    assert_eq!(after_hold["balances"]["EUR"], 3_000);
}
