//! Current events of every type, built through the domain types with
//! realistic values.

use chrono::{DateTime, Utc};
use marketplace_domain::account::{
    AccountErased, AccountEvent, AccountRegistered, EscrowRefunded, EscrowReleased, FundsDeposited,
    FundsHeld, SaleCredited, SaleShare,
};
use marketplace_domain::asset::{AccessReason, AssetAccessGranted, AssetEvent, AssetUploaded};
use marketplace_domain::email_claim::{EmailClaimEvent, EmailClaimed};
use marketplace_domain::listing::{
    ListingCreated, ListingDelisted, ListingEvent, ListingKind, ListingPriceChanged,
    ListingPublished, ListingRestocked, ReservationCommitted, ReservationReleased, StockReserved,
};
use marketplace_domain::order::{
    LineSpec, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderPlaced,
    OrderRejected, OrderShipped,
};
use marketplace_domain::payment::{
    FailureKind, PaymentEvent, PaymentFailed, PaymentIntentCreated, PaymentSucceeded,
};
use marketplace_domain::review::{ReviewApproved, ReviewEvent, ReviewRejected, ReviewSubmitted};
use marketplace_domain::values::{
    AccountId, CardLast4, Category, ContentHash, ContentType, Currency, Description, DisplayName,
    Email, FeeRate, ListingId, Money, OrderId, PasswordHash, PaymentIntentId, ProviderRef,
    Quantity, Rating, Reason, ReviewComment, ReviewId, Role, Tags, Title, TrackingCode,
    FEE_ACCOUNT_ID,
};
use marketplace_event_schemas::{encode, Encoded};
use uuid::Uuid;

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("valid timestamp")
}

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("valid uuid")
}

fn money(minor: i64, currency: &str) -> Money {
    Money {
        minor,
        currency: Currency::parse(currency).expect("valid currency"),
    }
}

fn eur(minor: i64) -> Money {
    money(minor, "EUR")
}

fn buyer() -> AccountId {
    AccountId(id("01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f"))
}

fn seller() -> AccountId {
    AccountId(id("01932c4f-1b2c-7d3e-8f4a-5b6c7d8e9f01"))
}

fn admin() -> AccountId {
    AccountId(id("01932c40-0d1e-7f2a-8b3c-4d5e6f7a8b9c"))
}

fn lamp() -> ListingId {
    ListingId(id("01933a10-5e6f-7a8b-9c0d-1e2f3a4b5c6d"))
}

fn font() -> ListingId {
    ListingId(id("01933a12-7f80-7192-a3b4-c5d6e7f80912"))
}

fn order() -> OrderId {
    OrderId(id("01934b20-3c4d-7e5f-8a6b-7c8d9e0f1a2b"))
}

fn review() -> ReviewId {
    ReviewId(id("01935c30-4d5e-7f60-8172-839405a6b7c8"))
}

fn reason(s: &str) -> Reason {
    Reason::parse(s).expect("valid reason")
}

fn account_events() -> Vec<AccountEvent> {
    let hash = |salt: &str| {
        PasswordHash::from_phc(format!(
            "$argon2id$v=19$m=19456,t=2,p=1${salt}$0hM0pEUl4Z3H6y9n0rGJtV3iQe2Lw8kXc7bN5mA1sDo"
        ))
        .expect("valid phc")
    };
    vec![
        AccountRegistered {
            account_id: buyer(),
            email: Email::parse("  Ada.Lovelace@Example.ORG ")
                .expect("valid email")
                .into(),
            display_name: DisplayName::parse("Ada Lovelace")
                .expect("valid name")
                .into(),
            password_hash: hash("dGhpc2lzYXNhbHQxMjM").into(),
            roles: vec![Role::Buyer],
            registered_at: at("2024-10-01T08:15:42.311Z"),
        }
        .into(),
        AccountRegistered {
            account_id: admin(),
            email: Email::parse("moderation+eu@marketplace.example.com")
                .expect("valid email")
                .into(),
            display_name: DisplayName::parse("Zoë — Trust & Safety")
                .expect("valid name")
                .into(),
            password_hash: hash("YW5vdGhlcnNhbHQ0NTY").into(),
            roles: vec![Role::Buyer, Role::Seller, Role::Admin],
            registered_at: at("2024-09-30T23:59:59.999999Z"),
        }
        .into(),
        FundsDeposited {
            account_id: buyer(),
            deposit_id: id("01932c55-9a8b-7c6d-8e5f-4a3b2c1d0e9f"),
            amount: eur(10_000),
            deposited_at: at("2025-01-10T09:00:12.004Z"),
        }
        .into(),
        FundsDeposited {
            account_id: buyer(),
            deposit_id: id("01932c56-0000-7c6d-8e5f-4a3b2c1d0e9f"),
            amount: money(5_000, "JPY"),
            deposited_at: at("2025-01-10T09:00:12Z"),
        }
        .into(),
        FundsHeld {
            account_id: buyer(),
            order_id: order(),
            amount: eur(4_498),
            held_at: at("2025-01-12T19:22:31.870Z"),
        }
        .into(),
        EscrowReleased {
            account_id: buyer(),
            order_id: order(),
            amount: eur(4_498),
            released_at: at("2025-01-16T11:05:00.250Z"),
        }
        .into(),
        EscrowRefunded {
            account_id: buyer(),
            order_id: order(),
            amount: eur(4_498),
            refunded_at: at("2025-01-12T19:40:00Z"),
        }
        .into(),
        SaleCredited {
            account_id: seller(),
            order_id: order(),
            amount: eur(4_274),
            share: SaleShare::Payout,
            credited_at: at("2025-01-16T11:05:00.250Z"),
        }
        .into(),
        SaleCredited {
            account_id: FEE_ACCOUNT_ID,
            order_id: order(),
            amount: eur(224),
            share: SaleShare::Fee,
            credited_at: at("2025-01-16T11:05:00.250Z"),
        }
        .into(),
        AccountErased {
            account_id: buyer(),
            erased_by: admin(),
            erased_at: at("2026-12-01T09:00:00Z"),
        }
        .into(),
    ]
}

fn email_claim_events() -> Vec<EmailClaimEvent> {
    vec![EmailClaimed {
        account_id: buyer(),
        claimed_at: at("2024-10-01T08:15:42.311Z"),
    }
    .into()]
}

fn listing_events() -> Vec<ListingEvent> {
    let content = "ab12".repeat(16);
    vec![
        ListingCreated {
            listing_id: lamp(),
            seller_id: seller(),
            kind: ListingKind::Physical,
            title: Title::parse("Brass desk lamp, 1960s").expect("valid title"),
            description: Description::parse(
                "Original brass desk lamp with green glass shade.\n\tRewired in 2023.",
            )
            .expect("valid description"),
            category: Category::parse("Home & Living").expect("valid category"),
            tags: Tags::parse(["Vintage", "lighting", "vintage", "brass"]).expect("valid tags"),
            price: eur(1_999),
            quantity: Quantity(3),
            content_hash: None,
            created_at: at("2024-10-03T10:12:00Z"),
        }
        .into(),
        ListingCreated {
            listing_id: font(),
            seller_id: seller(),
            kind: ListingKind::Digital,
            title: Title::parse("Café crème — retro pixel font pack").expect("valid title"),
            description: Description::parse("").expect("valid description"),
            category: Category::parse("fonts").expect("valid category"),
            tags: Tags::default(),
            price: eur(500),
            quantity: Quantity(0),
            content_hash: Some(ContentHash::parse(&content.to_uppercase()).expect("valid hash")),
            created_at: at("2024-10-03T10:30:45.120Z"),
        }
        .into(),
        ListingPublished {
            listing_id: lamp(),
            published_at: at("2024-10-03T10:15:09.400Z"),
        }
        .into(),
        ListingPriceChanged {
            listing_id: lamp(),
            price: eur(2_249),
            changed_at: at("2025-02-01T07:00:00Z"),
        }
        .into(),
        ListingRestocked {
            listing_id: lamp(),
            quantity: Quantity(5),
            restocked_at: at("2025-01-20T13:45:30.002Z"),
        }
        .into(),
        ListingDelisted {
            listing_id: font(),
            delisted_at: at("2025-03-30T22:10:00Z"),
        }
        .into(),
        StockReserved {
            listing_id: lamp(),
            order_id: order(),
            quantity: Quantity(2),
            reserved_at: at("2025-01-12T19:22:31.870Z"),
        }
        .into(),
        ReservationReleased {
            listing_id: lamp(),
            order_id: order(),
            quantity: Quantity(2),
            released_at: at("2025-01-12T19:40:00Z"),
        }
        .into(),
        ReservationCommitted {
            listing_id: lamp(),
            order_id: order(),
            quantity: Quantity(2),
            committed_at: at("2025-01-16T11:05:00.250Z"),
        }
        .into(),
    ]
}

fn order_events() -> Vec<OrderEvent> {
    let total = eur(4_498);
    let (payout, fee) = FeeRate::DEFAULT.split(&total);
    vec![
        OrderPlaced {
            order_id: order(),
            buyer_id: buyer(),
            seller_id: seller(),
            lines: vec![
                LineSpec {
                    listing_id: lamp(),
                    seller_id: seller(),
                    kind: ListingKind::Physical,
                    quantity: 2,
                    unit_price: eur(1_999),
                },
                LineSpec {
                    listing_id: font(),
                    seller_id: seller(),
                    kind: ListingKind::Digital,
                    quantity: 1,
                    unit_price: eur(500),
                },
            ],
            total,
            placed_at: at("2025-01-12T19:22:30.994Z"),
        }
        .into(),
        OrderConfirmed {
            order_id: order(),
            confirmed_at: at("2025-01-12T19:22:32.105Z"),
        }
        .into(),
        OrderRejected {
            order_id: order(),
            reason: reason("insufficient funds"),
            rejected_at: at("2025-01-12T19:22:32.105Z"),
        }
        .into(),
        OrderCancelled {
            order_id: order(),
            reason: reason("Ordered the wrong colour, sorry!\nPlease refund."),
            cancelled_at: at("2025-01-12T19:40:00Z"),
        }
        .into(),
        OrderShipped {
            order_id: order(),
            tracking_code: Some(TrackingCode::parse("JJD000390007801234567").expect("valid")),
            shipped_at: at("2025-01-13T15:30:00Z"),
        }
        .into(),
        OrderShipped {
            order_id: order(),
            tracking_code: None,
            shipped_at: at("2025-01-13T15:30:00Z"),
        }
        .into(),
        OrderDelivered {
            order_id: order(),
            buyer_id: buyer(),
            seller_id: seller(),
            payout,
            fee,
            delivered_at: at("2025-01-16T11:05:00.250Z"),
        }
        .into(),
    ]
}

fn review_events() -> Vec<ReviewEvent> {
    let stars = |n| Rating::parse(n).expect("valid rating");
    vec![
        ReviewSubmitted {
            review_id: review(),
            listing_id: lamp(),
            order_id: order(),
            author_id: buyer(),
            rating: stars(5),
            comment: ReviewComment::parse(
                "Beautiful lamp, carefully packed and exactly as described. ★★★★★",
            )
            .expect("valid comment")
            .into(),
            submitted_at: at("2025-01-18T20:12:44.090Z"),
        }
        .into(),
        ReviewSubmitted {
            review_id: review(),
            listing_id: lamp(),
            order_id: order(),
            author_id: buyer(),
            rating: stars(1),
            comment: ReviewComment::parse("x").expect("valid comment").into(),
            submitted_at: at("2025-01-18T20:12:44Z"),
        }
        .into(),
        ReviewApproved {
            review_id: review(),
            listing_id: lamp(),
            rating: stars(5),
            moderator_id: admin(),
            approved_at: at("2025-01-19T09:03:11Z"),
        }
        .into(),
        ReviewRejected {
            review_id: review(),
            listing_id: lamp(),
            moderator_id: admin(),
            reason: reason("Contains a phone number; please keep contact details out of reviews."),
            rejected_at: at("2025-01-19T09:03:11Z"),
        }
        .into(),
    ]
}

fn payment_events() -> Vec<PaymentEvent> {
    let intent = PaymentIntentId(id("01932d10-1a2b-7c3d-8e4f-5a6b7c8d9e0f"));
    let token = |s: &str| ProviderRef::parse(s).expect("valid provider ref");
    vec![
        PaymentIntentCreated {
            intent_id: intent,
            account_id: buyer(),
            amount: eur(10_000),
            payment_token: Some(token("tok_visa_4242")),
            created_at: at("2026-12-01T09:00:12.004Z"),
        }
        .into(),
        PaymentIntentCreated {
            intent_id: intent,
            account_id: buyer(),
            amount: eur(1),
            payment_token: None,
            created_at: at("2026-12-01T09:00:12Z"),
        }
        .into(),
        PaymentSucceeded {
            intent_id: intent,
            account_id: buyer(),
            amount: eur(10_000),
            charge_ref: token("ch_01932d10"),
            last4: Some(CardLast4::parse("4242").expect("valid last4")),
            succeeded_at: at("2026-12-01T09:00:13.120Z"),
        }
        .into(),
        PaymentSucceeded {
            intent_id: intent,
            account_id: buyer(),
            amount: eur(10_000),
            charge_ref: token("sim_1"),
            last4: None,
            succeeded_at: at("2026-12-01T09:00:13Z"),
        }
        .into(),
        PaymentFailed {
            intent_id: intent,
            kind: FailureKind::Declined,
            reason: reason("card_declined: insufficient funds"),
            failed_at: at("2026-12-01T09:00:13.120Z"),
        }
        .into(),
        PaymentFailed {
            intent_id: intent,
            kind: FailureKind::NotAttempted,
            reason: reason("the payment provider is unavailable (circuit open)"),
            failed_at: at("2026-12-01T09:00:13Z"),
        }
        .into(),
        PaymentFailed {
            intent_id: intent,
            kind: FailureKind::Unconfirmed,
            reason: reason("the payment provider did not answer in time"),
            failed_at: at("2026-12-01T09:00:13Z"),
        }
        .into(),
    ]
}

fn asset_events() -> Vec<AssetEvent> {
    let hash = || {
        ContentHash::parse("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
            .expect("valid hash")
    };
    let mut out: Vec<AssetEvent> = vec![AssetUploaded {
        content_hash: hash(),
        size: 3_145_728,
        content_type: ContentType::parse("application/pdf").expect("valid type"),
        uploaded_by: seller(),
        uploaded_at: at("2026-12-01T09:00:12.004Z"),
    }
    .into()];
    for (account, reason) in [
        (seller(), AccessReason::Seller),
        (admin(), AccessReason::Admin),
        (buyer(), AccessReason::Buyer { order_id: order() }),
    ] {
        out.push(
            AssetAccessGranted {
                content_hash: hash(),
                account_id: account,
                reason,
                granted_at: at("2026-12-02T10:00:00Z"),
            }
            .into(),
        );
    }
    out
}

fn encoded<E: marketplace_domain::EventSet>(events: Vec<E>) -> Vec<Encoded> {
    events
        .iter()
        .map(|e| encode(e).unwrap_or_else(|err| panic!("encode {e:?}: {err}")))
        .map(super::sealed)
        .collect()
}

/// Every sample event, encoded with the crate's codec and its personal
/// fields sealed (under [`super::FIXTURE_KEY`]) as the store keeps them.
pub fn all() -> Vec<Encoded> {
    let mut out = encoded(account_events());
    out.extend(encoded(email_claim_events()));
    out.extend(encoded(listing_events()));
    out.extend(encoded(order_events()));
    out.extend(encoded(review_events()));
    out.extend(encoded(payment_events()));
    out.extend(encoded(asset_events()));
    out
}
