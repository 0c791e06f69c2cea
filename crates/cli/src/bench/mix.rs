//! The marketplace mix for benchmarks: the events a real marketplace
//! appends, written straight to the store in bulk (no command handling, no
//! sagas), so a log of millions of events fills in minutes.
//!
//! One *shop* is a seller with five listings (some digital), ten buyers who
//! deposit funds, and twenty orders through the whole life cycle the checkout
//! saga and the payout process would write: placed, stock reserved, funds
//! held, confirmed; most shipped (reservation committed) and delivered
//! (escrow released, payout and fee credited); some rejected (reservation
//! released) or cancelled (refund, release); and reviews, mostly approved.
//! About 200 events per shop, every event type of the domain represented.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Utc;
use marketplace_domain::account::{
    Account, AccountEvent, AccountRegistered, EscrowRefunded, EscrowReleased, FundsDeposited,
    FundsHeld, SaleCredited, SaleShare,
};
use marketplace_domain::listing::{
    Listing, ListingCreated, ListingKind, ListingPriceChanged, ListingPublished,
    ReservationCommitted, ReservationReleased, StockReserved,
};
use marketplace_domain::order::{
    LineSpec, Order, OrderCancelled, OrderConfirmed, OrderDelivered, OrderPlaced, OrderRejected,
    OrderShipped,
};
use marketplace_domain::review::{Review, ReviewApproved, ReviewRejected, ReviewSubmitted};
use marketplace_domain::values::*;
use marketplace_domain::Aggregate;
use marketplace_store::postgres::PostgresEventStore;
use marketplace_store::{EventStore, ExpectedRevision, NewEvent, StreamId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{bar, eur, event};

const CATEGORIES: [&str; 8] = [
    "home", "garden", "books", "games", "music", "tools", "fashion", "art",
];
const TAGS: [&str; 8] = [
    "sale", "eco", "new", "retro", "gift", "handmade", "vintage", "limited",
];

/// Appends shops until at least `events` events exist, with `writers`
/// concurrent writers.
pub async fn prefill(
    store: &PostgresEventStore,
    events: u64,
    writers: usize,
) -> anyhow::Result<()> {
    let pb = bar(events, "prefill");
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, written, pb) = (store.clone(), written.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            while written.load(Ordering::Relaxed) < events {
                let n = shop(&store, &mut rng).await?;
                written.fetch_add(n, Ordering::Relaxed);
                pb.inc(n);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    pb.finish_and_clear();
    Ok(())
}

/// Collects each stream's events, then appends them stream by stream.
#[derive(Default)]
struct Batch(Vec<(StreamId, Vec<NewEvent>)>);

impl Batch {
    fn push<A: Aggregate>(&mut self, id: Uuid, e: impl Into<A::Event>) -> anyhow::Result<()> {
        let stream = StreamId::new(A::CATEGORY, id)?;
        let ev = event(e.into())?;
        match self.0.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, v)) => v.push(ev),
            None => self.0.push((stream, vec![ev])),
        }
        Ok(())
    }

    async fn write(self, store: &PostgresEventStore) -> anyhow::Result<u64> {
        let mut n = 0;
        for (stream, events) in self.0 {
            n += events.len() as u64;
            store.append(&stream, ExpectedRevision::Any, events).await?;
        }
        Ok(n)
    }
}

fn account(id: Uuid, role: Role, n: usize) -> anyhow::Result<AccountEvent> {
    Ok(AccountRegistered {
        account_id: AccountId(id),
        email: Email::parse(&format!("{}-{n}@bench.example", id.simple()))?.into(),
        display_name: DisplayName::parse("Bench account")?.into(),
        password_hash: PasswordHash::from_phc("$argon2id$bench".into())?.into(),
        roles: vec![role],
        registered_at: Utc::now(),
    }
    .into())
}

struct Item {
    id: ListingId,
    kind: ListingKind,
    price: Money,
}

async fn shop(store: &PostgresEventStore, rng: &mut StdRng) -> anyhow::Result<u64> {
    let now = Utc::now();
    let mut b = Batch::default();
    let seller = Uuid::now_v7();
    b.push::<Account>(seller, account(seller, Role::Seller, 0)?)?;

    let mut items = Vec::new();
    for i in 0..5usize {
        let id = Uuid::now_v7();
        let kind = if i == 4 {
            ListingKind::Digital
        } else {
            ListingKind::Physical
        };
        let price = eur(rng.random_range(500..20_000))?;
        b.push::<Listing>(
            id,
            ListingCreated {
                listing_id: ListingId(id),
                seller_id: AccountId(seller),
                kind,
                title: Title::parse(&format!("{} item {i}", CATEGORIES[i % 8]))?,
                description: Description::parse("Generated by marketplace bench")?,
                category: Category::parse(CATEGORIES[rng.random_range(0..8)])?,
                tags: Tags::parse([TAGS[rng.random_range(0..8)], TAGS[rng.random_range(0..8)]])?,
                price: price.clone(),
                quantity: Quantity(if kind == ListingKind::Physical { 50 } else { 0 }),
                content_hash: (kind == ListingKind::Digital)
                    .then(|| ContentHash::parse(&format!("{:064x}", id.as_u128())))
                    .transpose()?,
                created_at: now,
            },
        )?;
        b.push::<Listing>(
            id,
            ListingPublished {
                listing_id: ListingId(id),
                published_at: now,
            },
        )?;
        let price = if i == 0 {
            let newer = eur(price.minor + 100)?;
            b.push::<Listing>(
                id,
                ListingPriceChanged {
                    listing_id: ListingId(id),
                    price: newer.clone(),
                    changed_at: now,
                },
            )?;
            newer
        } else {
            price
        };
        items.push(Item {
            id: ListingId(id),
            kind,
            price,
        });
    }

    let mut buyers = Vec::new();
    for n in 0..10 {
        let id = Uuid::now_v7();
        b.push::<Account>(id, account(id, Role::Buyer, n)?)?;
        b.push::<Account>(
            id,
            FundsDeposited {
                account_id: AccountId(id),
                deposit_id: Uuid::now_v7(),
                amount: eur(1_000_000)?,
                deposited_at: now,
            },
        )?;
        buyers.push(id);
    }

    for o in 0..20usize {
        let order = OrderId(Uuid::now_v7());
        let buyer = AccountId(buyers[o % buyers.len()]);
        let item = &items[rng.random_range(0..items.len())];
        let quantity = Quantity(rng.random_range(1..3));
        let total = item
            .price
            .checked_times(quantity.0)
            .ok_or_else(|| anyhow::anyhow!("overflow"))?;
        b.push::<Order>(
            order.0,
            OrderPlaced {
                order_id: order,
                buyer_id: buyer,
                seller_id: AccountId(seller),
                lines: vec![LineSpec {
                    listing_id: item.id,
                    seller_id: AccountId(seller),
                    kind: item.kind,
                    quantity: quantity.0,
                    unit_price: item.price.clone(),
                }],
                total: total.clone(),
                placed_at: now,
            },
        )?;
        let physical = item.kind == ListingKind::Physical;
        // 1 in 10 rejected at checkout.
        if o % 10 == 9 {
            if physical {
                b.push::<Listing>(
                    item.id.0,
                    StockReserved {
                        listing_id: item.id,
                        order_id: order,
                        quantity,
                        reserved_at: now,
                    },
                )?;
                b.push::<Listing>(
                    item.id.0,
                    ReservationReleased {
                        listing_id: item.id,
                        order_id: order,
                        quantity,
                        released_at: now,
                    },
                )?;
            }
            b.push::<Order>(
                order.0,
                OrderRejected {
                    order_id: order,
                    reason: Reason::fixed("insufficient funds"),
                    rejected_at: now,
                },
            )?;
            continue;
        }
        if physical {
            b.push::<Listing>(
                item.id.0,
                StockReserved {
                    listing_id: item.id,
                    order_id: order,
                    quantity,
                    reserved_at: now,
                },
            )?;
        }
        b.push::<Account>(
            buyer.0,
            FundsHeld {
                account_id: buyer,
                order_id: order,
                amount: total.clone(),
                held_at: now,
            },
        )?;
        b.push::<Order>(
            order.0,
            OrderConfirmed {
                order_id: order,
                confirmed_at: now,
            },
        )?;
        // 1 in 10 cancelled before shipping.
        if physical && o % 10 == 8 {
            b.push::<Order>(
                order.0,
                OrderCancelled {
                    order_id: order,
                    reason: Reason::fixed("cancelled by the buyer"),
                    cancelled_at: now,
                },
            )?;
            b.push::<Account>(
                buyer.0,
                EscrowRefunded {
                    account_id: buyer,
                    order_id: order,
                    amount: total.clone(),
                    refunded_at: now,
                },
            )?;
            b.push::<Listing>(
                item.id.0,
                ReservationReleased {
                    listing_id: item.id,
                    order_id: order,
                    quantity,
                    released_at: now,
                },
            )?;
            continue;
        }
        if physical {
            b.push::<Order>(
                order.0,
                OrderShipped {
                    order_id: order,
                    tracking_code: Some(TrackingCode::parse(&format!("TRK{o}"))?),
                    shipped_at: now,
                },
            )?;
            b.push::<Listing>(
                item.id.0,
                ReservationCommitted {
                    listing_id: item.id,
                    order_id: order,
                    quantity,
                    committed_at: now,
                },
            )?;
            if o % 10 == 7 {
                continue; // still on its way
            }
        }
        let (payout, fee) = FeeRate::DEFAULT.split(&total);
        b.push::<Order>(
            order.0,
            OrderDelivered {
                order_id: order,
                buyer_id: buyer,
                seller_id: AccountId(seller),
                payout: payout.clone(),
                fee: fee.clone(),
                delivered_at: now,
            },
        )?;
        b.push::<Account>(
            buyer.0,
            EscrowReleased {
                account_id: buyer,
                order_id: order,
                amount: total.clone(),
                released_at: now,
            },
        )?;
        b.push::<Account>(
            seller,
            SaleCredited {
                account_id: AccountId(seller),
                order_id: order,
                amount: payout,
                share: SaleShare::Payout,
                credited_at: now,
            },
        )?;
        b.push::<Account>(
            FEE_ACCOUNT_ID.0,
            SaleCredited {
                account_id: FEE_ACCOUNT_ID,
                order_id: order,
                amount: fee,
                share: SaleShare::Fee,
                credited_at: now,
            },
        )?;
        if o % 2 == 0 {
            let review = ReviewId::for_line(order, item.id);
            let rating = Rating::parse(rng.random_range(1..=5))?;
            b.push::<Review>(
                review.0,
                ReviewSubmitted {
                    review_id: review,
                    listing_id: item.id,
                    order_id: order,
                    author_id: buyer,
                    rating,
                    comment: ReviewComment::parse("Generated review")?.into(),
                    submitted_at: now,
                },
            )?;
            if o % 8 == 6 {
                b.push::<Review>(
                    review.0,
                    ReviewRejected {
                        review_id: review,
                        listing_id: item.id,
                        moderator_id: AccountId(seller),
                        reason: Reason::fixed("off-topic"),
                        rejected_at: now,
                    },
                )?;
            } else {
                b.push::<Review>(
                    review.0,
                    ReviewApproved {
                        review_id: review,
                        listing_id: item.id,
                        rating,
                        moderator_id: AccountId(seller),
                        approved_at: now,
                    },
                )?;
            }
        }
    }
    b.write(store).await
}
