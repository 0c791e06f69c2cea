//! The flash sale, written once and run on every event store backend: 50
//! buyers race for 20 units; exactly the stock is sold, every other order is
//! rejected as out of stock, and money is conserved to the cent through
//! checkout, delivery, payout and fees.

use std::sync::Arc;

use chrono::Utc;
use marketplace_commands::process::payout::PayoutProcess;
use marketplace_domain::listing::{Listing, ListingSpec};
use marketplace_domain::order::{Fulfil, Order, OrderCommand, OrderStatus, Step};
use marketplace_domain::values::*;

use super::*;

pub const STOCK: u32 = 20;
pub const BUYERS: usize = 50;
pub const PRICE: i64 = 12_999;

/// Runs the flash sale on `m` (whose checkout saga and payout process it
/// starts itself).
pub async fn sells_exactly_the_stock_and_conserves_money(m: Market) {
    let checkout = m.start_checkout(m.saga());
    let payout = m.start_payout(PayoutProcess::new(m.handler.clone()));

    let seller = m.account(vec![Role::Seller], 0).await;
    let listing = m
        .listing(
            &seller,
            ListingSpec::Physical {
                quantity: Quantity(STOCK),
            },
            PRICE,
        )
        .await;
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        buyers.push(m.account(vec![Role::Buyer], 50_000).await);
    }
    let deposits = 50_000 * BUYERS as i64;

    // 50 buyers, each on their own task, all at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(BUYERS));
    let tasks: Vec<_> = buyers
        .iter()
        .cloned()
        .map(|buyer| {
            let handler = m.handler.clone();
            let barrier = barrier.clone();
            let m2 = Market {
                pool: m.pool.clone(),
                store: m.store.clone(),
                handler,
            };
            tokio::spawn(async move {
                barrier.wait().await;
                m2.place(&buyer, listing, 1).await
            })
        })
        .collect();
    let mut orders = Vec::new();
    for t in tasks {
        orders.push(t.await.expect("buyer task"));
    }

    let settled_orders = m.wait_orders(&orders, settled).await;
    let confirmed: Vec<&Order> = settled_orders
        .iter()
        .filter(|o| o.status == OrderStatus::Confirmed)
        .collect();
    let rejected: Vec<&Order> = settled_orders
        .iter()
        .filter(|o| o.status == OrderStatus::Rejected)
        .collect();
    assert_eq!(confirmed.len(), STOCK as usize, "exactly the stock is sold");
    assert_eq!(rejected.len(), BUYERS - STOCK as usize);
    for o in &rejected {
        assert_eq!(
            o.status_reason.as_ref().map(|r| r.as_str()),
            Some("out of stock")
        );
    }
    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!(l.reserved_total(), STOCK, "confirmed orders hold the stock");
    assert_eq!(
        l.reserved.len(),
        STOCK as usize,
        "no reservation for a rejected order"
    );
    assert_eq!(l.available(), 0);

    let mut everyone: Vec<AccountId> = buyers.iter().map(|b| b.account_id).collect();
    everyone.push(seller.account_id);
    everyone.push(FEE_ACCOUNT_ID);
    assert_eq!(
        m.money_in(&everyone).await,
        deposits,
        "money conserved after checkout"
    );
    let escrowed: i64 = {
        let mut sum = 0;
        for b in &buyers {
            sum += m
                .wallet(b.account_id)
                .await
                .escrow
                .values()
                .map(|v| v.minor)
                .sum::<i64>();
        }
        sum
    };
    assert_eq!(escrowed, PRICE * i64::from(STOCK));

    // Ship and deliver every confirmed order: stock becomes sold, escrow
    // becomes payout and fee.
    for o in &confirmed {
        let id = o.id.expect("id");
        let buyer = buyers
            .iter()
            .find(|b| Some(b.account_id) == o.buyer_id)
            .expect("buyer");
        m.handler
            .execute::<Order>(
                id.0,
                &m.ctx(),
                &OrderCommand::Fulfil(Fulfil {
                    actor: seller.clone(),
                    step: Step::Ship(None),
                    at: Utc::now(),
                }),
            )
            .await
            .expect("ship");
        m.handler
            .execute::<Order>(
                id.0,
                &m.ctx(),
                &OrderCommand::Fulfil(Fulfil {
                    actor: buyer.clone(),
                    step: Step::ConfirmDelivery(FeeRate::DEFAULT),
                    at: Utc::now(),
                }),
            )
            .await
            .expect("deliver");
    }
    let (payout_each, fee_each) = FeeRate::DEFAULT.split(&eur(PRICE));
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let seller_wallet = m.wallet(seller.account_id).await;
        let l = m
            .handler
            .load::<Listing>(listing.0)
            .await
            .expect("listing")
            .state;
        if seller_wallet.credits == u64::from(STOCK) && l.sold == STOCK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "payouts did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let fees = loop {
        let f = m.wallet(FEE_ACCOUNT_ID).await;
        if f.credits == u64::from(STOCK) {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "fees did not arrive");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let l = m
        .handler
        .load::<Listing>(listing.0)
        .await
        .expect("listing")
        .state;
    assert_eq!((l.sold, l.reserved_total(), l.available()), (STOCK, 0, 0));
    assert_eq!(
        m.wallet(seller.account_id).await.balance(&eur(0).currency),
        eur(payout_each.minor * i64::from(STOCK))
    );
    assert_eq!(
        fees.balance(&eur(0).currency),
        eur(fee_each.minor * i64::from(STOCK))
    );
    assert_eq!(
        m.money_in(&everyone).await,
        deposits,
        "money conserved after payout"
    );

    checkout.abort();
    payout.abort();
}
