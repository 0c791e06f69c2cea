//! The `notifications` read model: what each account is told, newest first.
//!
//! - To the buyer: order confirmed, rejected (with the reason), shipped
//!   (with the tracking code), delivered.
//! - To the seller: item sold (the order is confirmed), payout received.
//! - To the author: review approved, rejected (with the reason).
//!
//! Order and review events name only their order or review, so the fold
//! keeps two small lookup tables (who buys and sells each order, who wrote
//! each review), filled from `order.placed` and `review.submitted` before
//! the batch's notifications are resolved. A notification's id derives from
//! the event and the recipient, so each is inserted once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_consumers::Envelope;
use marketplace_domain::account::{AccountEvent, SaleShare};
use marketplace_domain::order::OrderEvent;
use marketplace_domain::review::ReviewEvent;
use marketplace_domain::values::{Currency, Money};
use marketplace_domain::{AggregateKind, Event};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{limit_for, time_cursor, time_cursor_of, InvalidCursor, Page};
use crate::builds::Table;
use crate::runtime::{Projection, ProjectionError};

/// Stable name.
pub const NAME: &str = "notifications";

/// The version of the tables and the fold below.
pub const VERSION: i32 = 1;

/// Namespace of notification ids (derived from event id and recipient).
const NOTIFICATION_NS: Uuid = Uuid::from_u128(0x6e6f_7469_6679_5000_8000_0000_0000_0001);

/// The tables of [`VERSION`].
pub const TABLES: &[Table] = &[
    Table {
        name: "rm_notifications",
        create: "CREATE TABLE rm_notifications (
            notification_id  UUID        PRIMARY KEY,
            account_id       UUID        NOT NULL,
            kind             TEXT        NOT NULL,
            message          TEXT        NOT NULL,
            read             BOOLEAN     NOT NULL DEFAULT false,
            created_at       TIMESTAMPTZ NOT NULL
        )",
        indexes: &["CREATE INDEX IF NOT EXISTS rm_notifications_account_idx \
             ON rm_notifications (account_id, created_at DESC, notification_id DESC)"],
    },
    Table {
        name: "rm_notification_orders",
        create: "CREATE TABLE rm_notification_orders (
            order_id     UUID   PRIMARY KEY,
            buyer_id     UUID   NOT NULL,
            seller_id    UUID   NOT NULL,
            total_minor  BIGINT NOT NULL,
            currency     TEXT   NOT NULL
        )",
        indexes: &[],
    },
    Table {
        name: "rm_notification_reviews",
        create: "CREATE TABLE rm_notification_reviews (
            review_id  UUID PRIMARY KEY,
            author_id  UUID NOT NULL
        )",
        indexes: &[],
    },
];

/// Folds order, account and review events into notifications.
#[derive(Debug, Clone, Copy)]
pub struct NotificationsProjection;

/// Who a notification goes to, before order and review parties are known.
enum To {
    Buyer(Uuid),
    Seller(Uuid),
    Author(Uuid),
    Account(Uuid),
}

struct Pending {
    event_id: Uuid,
    to: To,
    kind: &'static str,
    /// The message; `{total}` is replaced by the order's total.
    message: String,
    at: DateTime<Utc>,
}

fn amount(m: &Money) -> String {
    format!("{} {}", m.to_decimal_string(), m.currency.as_str())
}

#[async_trait]
impl Projection for NotificationsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        VERSION
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        can_notify(aggregate)
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut orders: Vec<(Uuid, Uuid, Uuid, i64, String)> = Vec::new();
        let mut reviews: Vec<(Uuid, Uuid)> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        for e in events {
            let short = |id: Uuid| id.simple().to_string()[..8].to_owned();
            match &e.event {
                Event::Order(order) => match order {
                    OrderEvent::Placed(p) => orders.push((
                        p.order_id.0,
                        p.buyer_id.0,
                        p.seller_id.0,
                        p.total.minor,
                        p.total.currency.as_str().to_owned(),
                    )),
                    OrderEvent::Confirmed(c) => {
                        let id = c.order_id.0;
                        pending.push(Pending {
                            event_id: e.event_id,
                            to: To::Buyer(id),
                            kind: "ORDER_CONFIRMED",
                            message: format!("Your order {} is confirmed ({{total}}).", short(id)),
                            at: c.confirmed_at,
                        });
                        pending.push(Pending {
                            event_id: e.event_id,
                            to: To::Seller(id),
                            kind: "ITEM_SOLD",
                            message: format!("You sold order {} ({{total}}).", short(id)),
                            at: c.confirmed_at,
                        });
                    }
                    OrderEvent::Rejected(r) => pending.push(Pending {
                        event_id: e.event_id,
                        to: To::Buyer(r.order_id.0),
                        kind: "ORDER_REJECTED",
                        message: format!(
                            "Your order {} was rejected: {}.",
                            short(r.order_id.0),
                            r.reason.as_str()
                        ),
                        at: r.rejected_at,
                    }),
                    OrderEvent::Shipped(s) => pending.push(Pending {
                        event_id: e.event_id,
                        to: To::Buyer(s.order_id.0),
                        kind: "ORDER_SHIPPED",
                        message: match &s.tracking_code {
                            Some(t) => format!(
                                "Your order {} has shipped (tracking {}).",
                                short(s.order_id.0),
                                t.as_str()
                            ),
                            None => format!("Your order {} has shipped.", short(s.order_id.0)),
                        },
                        at: s.shipped_at,
                    }),
                    OrderEvent::Delivered(d) => pending.push(Pending {
                        event_id: e.event_id,
                        to: To::Account(d.buyer_id.0),
                        kind: "ORDER_DELIVERED",
                        message: format!("Your order {} was delivered.", short(d.order_id.0)),
                        at: d.delivered_at,
                    }),
                    OrderEvent::Cancelled(_) => {}
                },
                Event::Account(account) => match account {
                    AccountEvent::SaleCredited(c) if c.share == SaleShare::Payout => {
                        pending.push(Pending {
                            event_id: e.event_id,
                            to: To::Account(c.account_id.0),
                            kind: "PAYOUT_RECEIVED",
                            message: format!(
                                "Payout received: {} for order {}.",
                                amount(&c.amount),
                                short(c.order_id.0)
                            ),
                            at: c.credited_at,
                        });
                    }
                    AccountEvent::SaleCredited(_)
                    | AccountEvent::Registered(_)
                    | AccountEvent::FundsDeposited(_)
                    | AccountEvent::FundsHeld(_)
                    | AccountEvent::EscrowReleased(_)
                    | AccountEvent::EscrowRefunded(_)
                    | AccountEvent::Erased(_) => {}
                },
                Event::Review(review) => match review {
                    ReviewEvent::Submitted(s) => reviews.push((s.review_id.0, s.author_id.0)),
                    ReviewEvent::Approved(a) => pending.push(Pending {
                        event_id: e.event_id,
                        to: To::Author(a.review_id.0),
                        kind: "REVIEW_APPROVED",
                        message: "Your review was approved and is now public.".into(),
                        at: a.approved_at,
                    }),
                    ReviewEvent::Rejected(r) => pending.push(Pending {
                        event_id: e.event_id,
                        to: To::Author(r.review_id.0),
                        kind: "REVIEW_REJECTED",
                        message: format!("Your review was rejected: {}.", r.reason.as_str()),
                        at: r.rejected_at,
                    }),
                },
                // Aggregates nobody is notified about.
                Event::Listing(_) | Event::EmailClaim(_) | Event::Payment(_) | Event::Asset(_) => {}
            }
        }
        // The parties of orders placed in this batch are known already
        // (checked out at placement, an order's placement and verdict
        // usually arrive together): only the others are looked up.
        let mut parties: std::collections::HashMap<Uuid, (Uuid, Uuid, i64, String)> = orders
            .iter()
            .map(|(o, b, s, t, c)| (*o, (*b, *s, *t, c.clone())))
            .collect();
        if !orders.is_empty() {
            let (ids, buyers, sellers, totals, currencies) = orders.into_iter().fold(
                (vec![], vec![], vec![], vec![], vec![]),
                |mut acc, (o, b, s, t, c)| {
                    acc.0.push(o);
                    acc.1.push(b);
                    acc.2.push(s);
                    acc.3.push(t);
                    acc.4.push(c);
                    acc
                },
            );
            sqlx::query(
                "INSERT INTO rm_notification_orders (order_id, buyer_id, seller_id, total_minor, currency) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[]) \
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(ids)
            .bind(buyers)
            .bind(sellers)
            .bind(totals)
            .bind(currencies)
            .execute(&mut *tx)
            .await?;
        }
        if !reviews.is_empty() {
            let (ids, authors): (Vec<Uuid>, Vec<Uuid>) = reviews.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_notification_reviews (review_id, author_id) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) ON CONFLICT (review_id) DO NOTHING",
            )
            .bind(ids)
            .bind(authors)
            .execute(&mut *tx)
            .await?;
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Resolve order parties and review authors in two statements.
        let mut order_ids: Vec<Uuid> = pending
            .iter()
            .filter_map(|p| match p.to {
                To::Buyer(o) | To::Seller(o) => Some(o),
                To::Author(_) | To::Account(_) => None,
            })
            .filter(|o| !parties.contains_key(o))
            .collect();
        order_ids.sort_unstable();
        order_ids.dedup();
        if !order_ids.is_empty() {
            parties.extend(
                sqlx::query_as::<_, (Uuid, Uuid, Uuid, i64, String)>(
                    "SELECT order_id, buyer_id, seller_id, total_minor, currency \
                     FROM rm_notification_orders WHERE order_id = ANY($1)",
                )
                .bind(&order_ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(o, b, s, t, c)| (o, (b, s, t, c))),
            );
        }
        let review_ids: Vec<Uuid> = pending
            .iter()
            .filter_map(|p| match p.to {
                To::Author(r) => Some(r),
                To::Buyer(_) | To::Seller(_) | To::Account(_) => None,
            })
            .collect();
        let authors: std::collections::HashMap<Uuid, Uuid> = if review_ids.is_empty() {
            std::collections::HashMap::new()
        } else {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "SELECT review_id, author_id FROM rm_notification_reviews \
                 WHERE review_id = ANY($1)",
            )
            .bind(&review_ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };

        let mut ids = Vec::new();
        let mut accounts = Vec::new();
        let mut kinds = Vec::new();
        let mut messages = Vec::new();
        let mut times = Vec::new();
        for p in pending {
            let (account, message) = match p.to {
                To::Account(a) => (Some(a), p.message),
                To::Author(r) => (authors.get(&r).copied(), p.message),
                To::Buyer(o) | To::Seller(o) => match parties.get(&o) {
                    Some((buyer, seller, total, currency)) => {
                        let total = Currency::parse(currency)
                            .map(|c| {
                                amount(&Money {
                                    minor: *total,
                                    currency: c,
                                })
                            })
                            .unwrap_or_else(|_| format!("{total} {currency}"));
                        let who = if matches!(p.to, To::Buyer(_)) {
                            *buyer
                        } else {
                            *seller
                        };
                        (Some(who), p.message.replace("{total}", &total))
                    }
                    None => (None, p.message),
                },
            };
            let Some(account) = account else {
                // The order or review was never placed in this log: a
                // corrupt history, not something to skip silently.
                return Err(ProjectionError::Inconsistent(format!(
                    "notifications: no recipient for {} (event {})",
                    p.kind, p.event_id
                )));
            };
            ids.push(notification_id(p.event_id, account));
            accounts.push(account);
            kinds.push(p.kind);
            messages.push(message);
            times.push(p.at);
        }
        sqlx::query(
            "INSERT INTO rm_notifications (notification_id, account_id, kind, message, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) \
             ON CONFLICT (notification_id) DO NOTHING",
        )
        .bind(ids)
        .bind(accounts)
        .bind(kinds)
        .bind(messages)
        .bind(times)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Whether events of `aggregate` can notify someone: the aggregates this
/// read model reads, and the events a live feed of notifications waits for.
pub fn can_notify(aggregate: AggregateKind) -> bool {
    match aggregate {
        AggregateKind::Order | AggregateKind::Account | AggregateKind::Review => true,
        AggregateKind::Listing
        | AggregateKind::EmailClaim
        | AggregateKind::Payment
        | AggregateKind::Asset => false,
    }
}

/// The id of the notification the event `event_id` gives `account`, if it
/// gives it one: deterministic, so a replay writes the same rows and a live
/// feed can look up what one committed event produced.
pub fn notification_id(event_id: Uuid, account: Uuid) -> Uuid {
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(event_id.as_bytes());
    name[16..].copy_from_slice(account.as_bytes());
    Uuid::new_v5(&NOTIFICATION_NS, &name)
}

/// The notifications among `ids` that exist (in no particular order).
pub async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT notification_id, account_id, kind, message, read, created_at \
         FROM rm_notifications WHERE notification_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// One notification.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Deserialize)]
pub struct NotificationRow {
    /// Id.
    pub notification_id: Uuid,
    /// Recipient.
    pub account_id: Uuid,
    /// ORDER_CONFIRMED, ORDER_REJECTED, ORDER_SHIPPED, ORDER_DELIVERED,
    /// ITEM_SOLD, PAYOUT_RECEIVED, REVIEW_APPROVED or REVIEW_REJECTED.
    pub kind: String,
    /// Text for people.
    pub message: String,
    /// Whether the recipient has read it.
    pub read: bool,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A page of `account`'s notifications, newest first.
pub async fn for_account(
    pool: &PgPool,
    account: Uuid,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<NotificationRow>, InvalidCursor>, sqlx::Error> {
    let after = match time_cursor(after) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let (mut rows, total_count): (Vec<NotificationRow>, i64) = super::page_and_total(
        pool,
        |qb| {
            qb.push(
                "SELECT notification_id, account_id, kind, message, read, created_at \
                 FROM rm_notifications WHERE account_id = ",
            );
            qb.push_bind(account);
            if let Some((at, id)) = after {
                qb.push(" AND (created_at, notification_id) < (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
            }
            qb.push(" ORDER BY created_at DESC, notification_id DESC LIMIT ")
                .push_bind(limit_for(first));
        },
        "created_at DESC, notification_id DESC",
        |qb| {
            qb.push("SELECT count(*) FROM rm_notifications WHERE account_id = ");
            qb.push_bind(account);
        },
    )
    .await?;
    let has_next_page = rows.len() > first;
    rows.truncate(first);
    Ok(Ok(Page {
        rows: rows
            .into_iter()
            .map(|r| {
                let c = time_cursor_of(r.created_at, r.notification_id);
                (r, c)
            })
            .collect(),
        has_next_page,
        total_count,
    }))
}
