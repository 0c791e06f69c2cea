use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::*;
use crate::aggregate::given;
use crate::listing::ListingKind;
use crate::values::{AccountId, Actor, Currency, ListingId, TrackingCode};

const ORDER: OrderId = OrderId(Uuid::from_u128(900));

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
        .single()
        .expect("date")
}

fn eur(minor: i64) -> Money {
    Money {
        minor,
        currency: Currency::parse("EUR").expect("valid"),
    }
}

fn buyer() -> Actor {
    Actor {
        account_id: AccountId(Uuid::from_u128(1)),
        roles: vec![Role::Buyer],
    }
}

fn seller() -> Actor {
    Actor {
        account_id: AccountId(Uuid::from_u128(2)),
        roles: vec![Role::Seller],
    }
}

fn line(listing: u128, kind: ListingKind, quantity: u32, price: Money) -> LineSpec {
    LineSpec {
        listing_id: ListingId(Uuid::from_u128(listing)),
        seller_id: seller().account_id,
        kind,
        quantity,
        unit_price: price,
    }
}

fn place(lines: Vec<LineSpec>) -> OrderCommand {
    OrderCommand::Place(PlaceOrder {
        order_id: ORDER,
        buyer: buyer(),
        lines,
        at: at(),
    })
}

fn placed(lines: Vec<LineSpec>, total: i64) -> OrderEvent {
    OrderPlaced {
        order_id: ORDER,
        buyer_id: buyer().account_id,
        seller_id: seller().account_id,
        lines,
        total: eur(total),
        placed_at: at(),
    }
    .into()
}

fn physical() -> Vec<LineSpec> {
    vec![
        line(10, ListingKind::Physical, 2, eur(1_000)),
        line(11, ListingKind::Physical, 1, eur(499)),
    ]
}

fn confirmed() -> OrderEvent {
    OrderConfirmed {
        order_id: ORDER,
        confirmed_at: at(),
    }
    .into()
}

fn shipped() -> OrderEvent {
    OrderShipped {
        order_id: ORDER,
        tracking_code: Some(TrackingCode::parse("TRK1").expect("valid")),
        shipped_at: at(),
    }
    .into()
}

fn checkout(outcome: CheckoutOutcome) -> OrderCommand {
    OrderCommand::CompleteCheckout(CompleteCheckout { outcome, at: at() })
}

fn fulfil(actor: Actor, step: Step) -> OrderCommand {
    OrderCommand::Fulfil(Fulfil {
        actor,
        step,
        at: at(),
    })
}

fn confirm() -> CheckoutOutcome {
    CheckoutOutcome::Confirmed {
        fee: FeeRate::DEFAULT,
    }
}

#[test]
fn places_an_order_pending_with_the_prices_of_the_moment_and_their_total() {
    let state = given::<Order>([])
        .when(place(physical()))
        .then_events([placed(physical(), 2_499)]);
    assert_eq!(state.status, OrderStatus::Pending);
    assert_eq!(state.total, Some(eur(2_499)));
}

#[test]
fn refuses_orders_that_break_the_placement_rules() {
    let cases: Vec<(Vec<LineSpec>, OrderError)> = vec![
        (vec![], OrderError::NoLines),
        (
            vec![line(10, ListingKind::Physical, 0, eur(1))],
            OrderError::NonPositiveQuantity,
        ),
        (
            vec![
                line(10, ListingKind::Physical, 1, eur(1)),
                line(10, ListingKind::Physical, 1, eur(1)),
            ],
            OrderError::DuplicateLine,
        ),
        (
            vec![
                line(10, ListingKind::Physical, 1, eur(1)),
                LineSpec {
                    seller_id: AccountId(Uuid::from_u128(3)),
                    ..line(11, ListingKind::Physical, 1, eur(1))
                },
            ],
            OrderError::SeveralSellers,
        ),
        (
            vec![
                line(10, ListingKind::Physical, 1, eur(1)),
                line(
                    11,
                    ListingKind::Physical,
                    1,
                    Money {
                        minor: 1,
                        currency: Currency::parse("USD").expect("valid"),
                    },
                ),
            ],
            OrderError::MixedCurrencies,
        ),
        (
            vec![line(10, ListingKind::Physical, 2, eur(i64::MAX))],
            OrderError::TotalTooLarge,
        ),
        (
            (0..=MAX_LINES as u128)
                .map(|i| line(i, ListingKind::Digital, 1, eur(1)))
                .collect(),
            OrderError::TooManyLines,
        ),
    ];
    for (lines, error) in cases {
        given::<Order>([]).when(place(lines)).then_error(error);
    }
}

#[test]
fn refuses_a_seller_buying_their_own_listing_and_accounts_without_buyer_role() {
    given::<Order>([])
        .when(OrderCommand::Place(PlaceOrder {
            order_id: ORDER,
            buyer: Actor {
                account_id: seller().account_id,
                roles: vec![Role::Buyer, Role::Seller],
            },
            lines: physical(),
            at: at(),
        }))
        .then_error(OrderError::OwnListing);
    given::<Order>([])
        .when(OrderCommand::Place(PlaceOrder {
            order_id: ORDER,
            buyer: seller(),
            lines: physical(),
            at: at(),
        }))
        .then_error(OrderError::NotABuyer);
    given::<Order>([placed(physical(), 2_499)])
        .when(place(physical()))
        .then_error(OrderError::AlreadyPlaced);
}

#[test]
fn the_saga_confirms_a_pending_order_once() {
    let state = given::<Order>([placed(physical(), 2_499)])
        .when(checkout(confirm()))
        .then_events([confirmed()]);
    assert_eq!(state.status, OrderStatus::Confirmed);
    given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(checkout(confirm()))
        .then_events([]);
}

#[test]
fn the_saga_rejects_with_a_reason_once_and_never_after_confirming() {
    let reason = Reason::fixed("out of stock");
    let rejected: OrderEvent = OrderRejected {
        order_id: ORDER,
        reason: reason.clone(),
        rejected_at: at(),
    }
    .into();
    let state = given::<Order>([placed(physical(), 2_499)])
        .when(checkout(CheckoutOutcome::Rejected(reason.clone())))
        .then_events([rejected.clone()]);
    assert_eq!(state.status_reason, Some(reason.clone()));
    given::<Order>([placed(physical(), 2_499), rejected.clone()])
        .when(checkout(CheckoutOutcome::Rejected(reason.clone())))
        .then_events([]);
    given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(checkout(CheckoutOutcome::Rejected(reason)))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Confirmed,
        });
    given::<Order>([placed(physical(), 2_499), rejected])
        .when(checkout(confirm()))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Rejected,
        });
}

#[test]
fn digital_only_orders_are_delivered_on_confirmation_with_the_fee_split() {
    let lines = vec![line(10, ListingKind::Digital, 1, eur(1_999))];
    let state = given::<Order>([placed(lines.clone(), 1_999)])
        .when(checkout(confirm()))
        .then_events([
            confirmed(),
            OrderDelivered {
                order_id: ORDER,
                buyer_id: buyer().account_id,
                seller_id: seller().account_id,
                payout: eur(1_900),
                fee: eur(99),
                delivered_at: at(),
            }
            .into(),
        ]);
    assert_eq!(state.status, OrderStatus::Delivered);
    given::<Order>([placed(lines, 1_999), confirmed()])
        .when(fulfil(seller(), Step::Ship(None)))
        .then_error(OrderError::NothingToShip);
}

#[test]
fn the_buyer_cancels_a_confirmed_order_before_shipping_only() {
    let state = given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(fulfil(buyer(), Step::Cancel))
        .then_events([OrderCancelled {
            order_id: ORDER,
            reason: Reason::fixed("cancelled by the buyer"),
            cancelled_at: at(),
        }
        .into()]);
    assert_eq!(state.status, OrderStatus::Cancelled);
    given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(fulfil(seller(), Step::Cancel))
        .then_error(OrderError::NotTheBuyer);
    given::<Order>([placed(physical(), 2_499), confirmed(), shipped()])
        .when(fulfil(buyer(), Step::Cancel))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Shipped,
        });
    given::<Order>([placed(physical(), 2_499)])
        .when(fulfil(buyer(), Step::Cancel))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Pending,
        });
}

#[test]
fn only_the_seller_ships_a_confirmed_order() {
    let tracking = Some(TrackingCode::parse("TRK1").expect("valid"));
    let state = given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(fulfil(seller(), Step::Ship(tracking.clone())))
        .then_events([shipped()]);
    assert_eq!(state.tracking_code, tracking);
    given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(fulfil(buyer(), Step::Ship(None)))
        .then_error(OrderError::NotTheSeller);
    given::<Order>([placed(physical(), 2_499)])
        .when(fulfil(seller(), Step::Ship(None)))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Pending,
        });
}

#[test]
fn the_buyer_confirms_delivery_of_a_shipped_order_and_the_escrow_is_split() {
    let state = given::<Order>([placed(physical(), 2_499), confirmed(), shipped()])
        .when(fulfil(buyer(), Step::ConfirmDelivery(FeeRate::DEFAULT)))
        .then_events([OrderDelivered {
            order_id: ORDER,
            buyer_id: buyer().account_id,
            seller_id: seller().account_id,
            payout: eur(2_375),
            fee: eur(124),
            delivered_at: at(),
        }
        .into()]);
    assert_eq!(state.status, OrderStatus::Delivered);
    given::<Order>([placed(physical(), 2_499), confirmed(), shipped()])
        .when(fulfil(seller(), Step::ConfirmDelivery(FeeRate::DEFAULT)))
        .then_error(OrderError::NotTheBuyer);
    given::<Order>([placed(physical(), 2_499), confirmed()])
        .when(fulfil(buyer(), Step::ConfirmDelivery(FeeRate::DEFAULT)))
        .then_error(OrderError::WrongStatus {
            status: OrderStatus::Confirmed,
        });
}

#[test]
fn unknown_orders_are_not_found() {
    given::<Order>([])
        .when(fulfil(buyer(), Step::Cancel))
        .then_error(OrderError::NotFound);
    given::<Order>([])
        .when(checkout(confirm()))
        .then_error(OrderError::NotFound);
}
