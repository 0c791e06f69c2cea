//! The `orders` read model: orders with their lines and status, by id and
//! as keyset pages of one buyer's or one seller's orders, newest first.
//!
//! `order.placed` inserts the order (PENDING) and its lines with the unit
//! prices of that moment; the later events move its status: CONFIRMED,
//! REJECTED or CANCELLED (with the reason), SHIPPED (with the tracking code,
//! if any), DELIVERED. A batch is folded in memory first: an order placed in
//! the batch is inserted in its latest status, and the others get one
//! multi-row `UPDATE` with the last status in log order.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_consumers::Envelope;
use marketplace_domain::order::OrderEvent;
use marketplace_domain::{AggregateKind, Event};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{limit_for, time_cursor, time_cursor_of, InvalidCursor, Page};
use crate::builds::Table;
use crate::runtime::{Projection, ProjectionError};

/// Stable name.
pub const NAME: &str = "orders";

/// The version of the tables and the fold below; bump it when either
/// changes, and the runtime rebuilds the read model without downtime.
pub const VERSION: i32 = 1;

/// The tables of [`VERSION`], created in each build's schema.
pub const TABLES: &[Table] = &[
    Table {
        name: "rm_orders",
        create: "CREATE TABLE rm_orders (
            order_id       UUID        PRIMARY KEY,
            buyer_id       UUID        NOT NULL,
            seller_id      UUID        NOT NULL,
            status         TEXT        NOT NULL,
            status_reason  TEXT,
            tracking_code  TEXT,
            total_minor    BIGINT      NOT NULL,
            currency       TEXT        NOT NULL,
            placed_at      TIMESTAMPTZ NOT NULL,
            updated_at     TIMESTAMPTZ NOT NULL
        )",
        // Keyset pages of one buyer's and one seller's orders, newest first.
        indexes: &[
            "CREATE INDEX IF NOT EXISTS rm_orders_buyer_idx \
             ON rm_orders (buyer_id, placed_at DESC, order_id DESC)",
            "CREATE INDEX IF NOT EXISTS rm_orders_seller_idx \
             ON rm_orders (seller_id, placed_at DESC, order_id DESC)",
        ],
    },
    Table {
        name: "rm_order_lines",
        create: "CREATE TABLE rm_order_lines (
            order_id          UUID    NOT NULL,
            line_no           INT     NOT NULL,
            listing_id        UUID    NOT NULL,
            quantity          INT     NOT NULL,
            unit_price_minor  BIGINT  NOT NULL,
            currency          TEXT    NOT NULL,
            PRIMARY KEY (order_id, line_no)
        )",
        indexes: &[],
    },
];

/// Folds order events into `rm_orders` and `rm_order_lines`.
#[derive(Debug, Clone, Copy)]
pub struct OrdersProjection;

struct NewOrder {
    id: Uuid,
    buyer: Uuid,
    seller: Uuid,
    status: &'static str,
    reason: Option<String>,
    tracking: Option<String>,
    total_minor: i64,
    currency: String,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Where a batch leaves one order: its last status in log order; the
/// reason and tracking code, once given, stay.
struct Transition {
    status: &'static str,
    reason: Option<String>,
    tracking: Option<String>,
    at: DateTime<Utc>,
}

fn transition(
    changes: &mut HashMap<Uuid, Transition>,
    order: Uuid,
    status: &'static str,
    reason: Option<String>,
    tracking: Option<String>,
    at: DateTime<Utc>,
) {
    let next = match changes.remove(&order) {
        Some(prev) => Transition {
            status,
            reason: reason.or(prev.reason),
            tracking: tracking.or(prev.tracking),
            at,
        },
        None => Transition {
            status,
            reason,
            tracking,
            at,
        },
    };
    changes.insert(order, next);
}

#[derive(Default)]
struct Lines {
    order: Vec<Uuid>,
    line_no: Vec<i32>,
    listing: Vec<Uuid>,
    quantity: Vec<i64>,
    price: Vec<i64>,
    currency: Vec<String>,
}

#[async_trait]
impl Projection for OrdersProjection {
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
        match aggregate {
            AggregateKind::Order => true,
            AggregateKind::Account
            | AggregateKind::EmailClaim
            | AggregateKind::Listing
            | AggregateKind::Payment
            | AggregateKind::Asset
            | AggregateKind::Review => false,
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut placed: Vec<NewOrder> = Vec::new();
        let mut lines = Lines::default();
        let mut changes: HashMap<Uuid, Transition> = HashMap::new();
        for e in events {
            match &e.event {
                Event::Order(order) => match order {
                    OrderEvent::Placed(p) => {
                        for (no, line) in (1..).zip(&p.lines) {
                            lines.order.push(p.order_id.0);
                            lines.line_no.push(no);
                            lines.listing.push(line.listing_id.0);
                            lines.quantity.push(i64::from(line.quantity));
                            lines.price.push(line.unit_price.minor);
                            lines
                                .currency
                                .push(line.unit_price.currency.as_str().to_owned());
                        }
                        placed.push(NewOrder {
                            id: p.order_id.0,
                            buyer: p.buyer_id.0,
                            seller: p.seller_id.0,
                            status: "PENDING",
                            reason: None,
                            tracking: None,
                            total_minor: p.total.minor,
                            currency: p.total.currency.as_str().to_owned(),
                            placed_at: p.placed_at,
                            updated_at: p.placed_at,
                        });
                    }
                    OrderEvent::Confirmed(c) => transition(
                        &mut changes,
                        c.order_id.0,
                        "CONFIRMED",
                        None,
                        None,
                        c.confirmed_at,
                    ),
                    OrderEvent::Rejected(r) => transition(
                        &mut changes,
                        r.order_id.0,
                        "REJECTED",
                        Some(r.reason.as_str().to_owned()),
                        None,
                        r.rejected_at,
                    ),
                    OrderEvent::Cancelled(c) => transition(
                        &mut changes,
                        c.order_id.0,
                        "CANCELLED",
                        Some(c.reason.as_str().to_owned()),
                        None,
                        c.cancelled_at,
                    ),
                    OrderEvent::Shipped(s) => transition(
                        &mut changes,
                        s.order_id.0,
                        "SHIPPED",
                        None,
                        s.tracking_code.as_ref().map(|t| t.as_str().to_owned()),
                        s.shipped_at,
                    ),
                    OrderEvent::Delivered(d) => transition(
                        &mut changes,
                        d.order_id.0,
                        "DELIVERED",
                        None,
                        None,
                        d.delivered_at,
                    ),
                },
                // Aggregates this read model does not show.
                Event::Account(_) | Event::EmailClaim(_) => {}
                Event::Listing(_) | Event::Payment(_) | Event::Asset(_) | Event::Review(_) => {}
            }
        }
        // Orders placed in this batch are inserted in their latest status
        // (in a valid log nothing precedes an order's placement).
        for order in &mut placed {
            if let Some(t) = changes.remove(&order.id) {
                order.status = t.status;
                order.reason = t.reason;
                order.tracking = t.tracking;
                order.updated_at = t.at;
            }
        }
        if !placed.is_empty() {
            insert_orders(tx, placed, lines).await?;
        }
        if !changes.is_empty() {
            let n = changes.len();
            let mut ids = Vec::with_capacity(n);
            let mut statuses = Vec::with_capacity(n);
            let mut reasons = Vec::with_capacity(n);
            let mut trackings = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            for (id, t) in changes {
                ids.push(id);
                statuses.push(t.status);
                reasons.push(t.reason);
                trackings.push(t.tracking);
                times.push(t.at);
            }
            sqlx::query(
                "UPDATE rm_orders o SET status = u.status, \
                     status_reason = COALESCE(u.reason, o.status_reason), \
                     tracking_code = COALESCE(u.tracking, o.tracking_code), \
                     updated_at = u.at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
                             $5::timestamptz[]) AS u(id, status, reason, tracking, at) \
                 WHERE o.order_id = u.id",
            )
            .bind(ids)
            .bind(statuses)
            .bind(reasons)
            .bind(trackings)
            .bind(times)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

async fn insert_orders(
    tx: &mut PgConnection,
    orders: Vec<NewOrder>,
    lines: Lines,
) -> Result<(), sqlx::Error> {
    let n = orders.len();
    let mut id = Vec::with_capacity(n);
    let mut buyer = Vec::with_capacity(n);
    let mut seller = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut tracking = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut placed = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    for o in orders {
        id.push(o.id);
        buyer.push(o.buyer);
        seller.push(o.seller);
        status.push(o.status);
        reason.push(o.reason);
        tracking.push(o.tracking);
        total.push(o.total_minor);
        currency.push(o.currency);
        placed.push(o.placed_at);
        updated.push(o.updated_at);
    }
    sqlx::query(
        "INSERT INTO rm_orders (order_id, buyer_id, seller_id, status, status_reason, \
             tracking_code, total_minor, currency, placed_at, updated_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                              $6::text[], $7::bigint[], $8::text[], $9::timestamptz[], \
                              $10::timestamptz[])",
    )
    .bind(id)
    .bind(buyer)
    .bind(seller)
    .bind(status)
    .bind(reason)
    .bind(tracking)
    .bind(total)
    .bind(currency)
    .bind(placed)
    .bind(updated)
    .execute(&mut *tx)
    .await?;
    if !lines.order.is_empty() {
        sqlx::query(
            "INSERT INTO rm_order_lines (order_id, line_no, listing_id, quantity, \
                 unit_price_minor, currency) \
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::bigint[], \
                                  $5::bigint[], $6::text[])",
        )
        .bind(lines.order)
        .bind(lines.line_no)
        .bind(lines.listing)
        .bind(lines.quantity)
        .bind(lines.price)
        .bind(lines.currency)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// One order as the API shows it (its lines come from [`lines_of`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct OrderRow {
    /// Id.
    pub order_id: Uuid,
    /// Who buys.
    pub buyer_id: Uuid,
    /// Who sells.
    pub seller_id: Uuid,
    /// PENDING, CONFIRMED, SHIPPED, DELIVERED, CANCELLED or REJECTED.
    pub status: String,
    /// Why REJECTED or CANCELLED.
    pub status_reason: Option<String>,
    /// The carrier's code, if given when shipped.
    pub tracking_code: Option<String>,
    /// Total in minor units.
    pub total_minor: i64,
    /// Currency code.
    pub currency: String,
    /// Placed.
    pub placed_at: DateTime<Utc>,
    /// Last status change.
    pub updated_at: DateTime<Utc>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderLineRow {
    /// The order.
    pub order_id: Uuid,
    /// Position in the order, from 1.
    pub line_no: i32,
    /// The listing bought.
    pub listing_id: Uuid,
    /// Units.
    pub quantity: i32,
    /// Unit price in minor units, as placed.
    pub unit_price_minor: i64,
    /// Currency code.
    pub currency: String,
}

const COLUMNS: &str = "order_id, buyer_id, seller_id, status, status_reason, tracking_code, \
    total_minor, currency, placed_at, updated_at";

/// One order by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rm_orders WHERE order_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The lines of several orders in one statement, ordered by order then
/// line number.
pub async fn lines_of(pool: &PgPool, order_ids: &[Uuid]) -> Result<Vec<OrderLineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, line_no, listing_id, quantity, unit_price_minor, currency \
         FROM rm_order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await
}

/// A page of `buyer`'s orders, newest first: `first` rows after `after`.
pub async fn for_buyer(
    pool: &PgPool,
    buyer: Uuid,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<OrderRow>, InvalidCursor>, sqlx::Error> {
    page(pool, "buyer_id", buyer, first, after).await
}

/// A page of `seller`'s orders, newest first: `first` rows after `after`.
pub async fn for_seller(
    pool: &PgPool,
    seller: Uuid,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<OrderRow>, InvalidCursor>, sqlx::Error> {
    page(pool, "seller_id", seller, first, after).await
}

/// Keyset page over (placed_at, order_id) descending; `party` is a column
/// name from this module, never input.
async fn page(
    pool: &PgPool,
    party: &'static str,
    id: Uuid,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<OrderRow>, InvalidCursor>, sqlx::Error> {
    let after = match time_cursor(after) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let (mut rows, total_count): (Vec<OrderRow>, i64) = super::page_and_total(
        pool,
        |qb| {
            qb.push(format!("SELECT {COLUMNS} FROM rm_orders WHERE {party} = "));
            qb.push_bind(id);
            if let Some((at, order)) = after {
                qb.push(" AND (placed_at, order_id) < (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(order)
                    .push(")");
            }
            qb.push(" ORDER BY placed_at DESC, order_id DESC LIMIT ")
                .push_bind(limit_for(first));
        },
        "placed_at DESC, order_id DESC",
        |qb| {
            qb.push(format!("SELECT count(*) FROM rm_orders WHERE {party} = "));
            qb.push_bind(id);
        },
    )
    .await?;
    let has_next_page = rows.len() > first;
    rows.truncate(first);
    Ok(Ok(Page {
        rows: rows
            .into_iter()
            .map(|r| {
                let c = time_cursor_of(r.placed_at, r.order_id);
                (r, c)
            })
            .collect(),
        has_next_page,
        total_count,
    }))
}

/// An order of `buyer`'s, CONFIRMED or later (shipped, delivered), with a
/// line of a listing of the asset `content_hash`: what lets a buyer
/// download it. Reads the listings read model's view for the hash.
pub async fn bought_content(
    pool: &PgPool,
    buyer: Uuid,
    content_hash: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT o.order_id FROM rm_orders o \
         JOIN rm_order_lines ol ON ol.order_id = o.order_id \
         JOIN rm_listings l ON l.listing_id = ol.listing_id \
         WHERE o.buyer_id = $1 AND l.content_hash = $2 \
           AND o.status IN ('CONFIRMED', 'SHIPPED', 'DELIVERED') \
         ORDER BY o.placed_at LIMIT 1",
    )
    .bind(buyer)
    .bind(content_hash)
    .fetch_optional(pool)
    .await
}
