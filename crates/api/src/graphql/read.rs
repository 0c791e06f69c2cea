//! Orders and reviews as the API shows them, read from their read models,
//! with the visibility rules of the contract: an order is visible to its
//! buyer, its seller and ADMINs; a review is public once APPROVED, and
//! visible to its author and ADMINs before.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, Enum, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use marketplace_domain::values::Role as DomainRole;
use marketplace_projections::read_models::notifications;
use marketplace_projections::read_models::orders::{self, OrderLineRow, OrderRow};
use marketplace_projections::read_models::reviews::{self, ReviewRow};
use marketplace_projections::read_models::Page;
use marketplace_store::Position;
use uuid::Uuid;

use super::types::{account_named, listing_named, Account, Listing, Money, PageInfo, Seen};
use super::Viewer;
use crate::auth::Claims;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Order status.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Checkout in progress.
    Pending,
    /// Stock reserved, funds in escrow.
    Confirmed,
    /// On its way.
    Shipped,
    /// Received; seller paid.
    Delivered,
    /// Cancelled by the buyer; refunded.
    Cancelled,
    /// Refused at checkout.
    Rejected,
}

impl OrderStatus {
    pub(crate) fn from_name(s: &str) -> ApiResult<Self> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "CONFIRMED" => Self::Confirmed,
            "SHIPPED" => Self::Shipped,
            "DELIVERED" => Self::Delivered,
            "CANCELLED" => Self::Cancelled,
            "REJECTED" => Self::Rejected,
            other => return Err(ApiError::internal(format!("unknown order status {other}"))),
        })
    }
}

/// Review status.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReviewStatus {
    /// Waiting for moderation.
    Pending,
    /// Shown.
    Approved,
    /// Hidden.
    Rejected,
}

/// An order: its read-model row, and what is known of it without the read
/// model when it was just placed and is answered from the write side (see
/// [`Order::placed`]).
#[derive(Debug, Clone)]
pub struct Order(pub OrderRow, pub Option<Placed>);

/// An order answered from the state its placement left: its lines, and
/// the log position the placement reached. The accounts and listings it
/// names were written before it, so their read models show them once
/// they have passed that position, which they may not have yet: the
/// answer does not wait for them unless it has to (see [`Seen`]).
#[derive(Debug, Clone)]
pub struct Placed {
    lines: Vec<OrderLineRow>,
    at: Position,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        Self(row, None)
    }
}

impl Order {
    /// An order as its placement left it, from the aggregate the command
    /// produced: exactly what the orders read model holds for it at that
    /// position (timestamps cut to Postgres' microseconds), so `placeOrder`
    /// answers without waiting for the projection.
    pub fn placed(order: &marketplace_domain::order::Order, at: Position) -> Option<Self> {
        let micros = |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros());
        let id = order.id?.0;
        let total = order.total.as_ref()?;
        let placed_at = micros(order.placed_at?)?;
        let row = OrderRow {
            order_id: id,
            buyer_id: order.buyer_id?.0,
            seller_id: order.seller_id?.0,
            status: status_name(order.status)?.to_owned(),
            status_reason: order.status_reason.as_ref().map(|r| r.as_str().to_owned()),
            tracking_code: order.tracking_code.as_ref().map(|t| t.as_str().to_owned()),
            total_minor: total.minor,
            currency: total.currency.as_str().to_owned(),
            placed_at,
            updated_at: order.updated_at.and_then(micros).unwrap_or(placed_at),
        };
        let lines = order
            .lines
            .iter()
            .zip(1..)
            .map(|(line, line_no)| OrderLineRow {
                order_id: id,
                line_no,
                listing_id: line.listing_id.0,
                quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
                unit_price_minor: line.unit_price.minor,
                currency: line.unit_price.currency.as_str().to_owned(),
            })
            .collect();
        Some(Self(row, Some(Placed { lines, at })))
    }

    /// Where it was seen, for the accounts and listings it names.
    fn seen(&self) -> Seen {
        self.1
            .as_ref()
            .map_or(Seen::In(orders::NAME), |p| Seen::At(p.at))
    }
}

/// One line of an order, and the position its order was answered at when
/// that was from the write side.
#[derive(Debug, Clone)]
pub struct OrderLine(pub OrderLineRow, pub Option<Position>);

#[Object]
impl OrderLine {
    /// The listing bought (as it is now; the price paid is `unitPrice`).
    async fn listing(&self, ctx: &Context<'_>) -> ApiResult<Listing> {
        let seen = self.1.map_or(Seen::In(orders::NAME), Seen::At);
        listing_named(ctx, self.0.listing_id, seen).await
    }

    async fn quantity(&self) -> i32 {
        self.0.quantity
    }

    /// The unit price when the order was placed.
    async fn unit_price(&self) -> Money {
        Money::from_minor(self.0.unit_price_minor, &self.0.currency)
    }
}

/// Batches the lines of many orders (of one request, and of requests
/// running at the same time) into one statement.
pub struct OrderLinesLoader(pub sqlx::PgPool);

impl Loader<Uuid> for OrderLinesLoader {
    type Value = Vec<OrderLineRow>;
    type Error = std::sync::Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderLineRow>>, Self::Error> {
        let mut lines: HashMap<Uuid, Vec<OrderLineRow>> = HashMap::new();
        for line in orders::lines_of(&self.0, keys)
            .await
            .map_err(std::sync::Arc::new)?
        {
            lines.entry(line.order_id).or_default().push(line);
        }
        Ok(lines)
    }
}

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.order_id.to_string())
    }

    async fn buyer(&self, ctx: &Context<'_>) -> ApiResult<Account> {
        account_named(ctx, self.0.buyer_id, self.seen()).await
    }

    /// The seller of every line.
    async fn seller(&self, ctx: &Context<'_>) -> ApiResult<Account> {
        account_named(ctx, self.0.seller_id, self.seen()).await
    }

    #[graphql(complexity = "marketplace_domain::order::MAX_LINES * child_complexity")]
    async fn lines(&self, ctx: &Context<'_>) -> ApiResult<Vec<OrderLine>> {
        if let Some(placed) = &self.1 {
            let at = Some(placed.at);
            return Ok(placed
                .lines
                .iter()
                .map(|line| OrderLine(line.clone(), at))
                .collect());
        }
        Ok(ctx
            .data_unchecked::<DataLoader<OrderLinesLoader>>()
            .load_one(self.0.order_id)
            .await
            .map_err(ApiError::internal)?
            .unwrap_or_default()
            .into_iter()
            .map(|line| OrderLine(line, None))
            .collect())
    }

    async fn total(&self) -> Money {
        Money::from_minor(self.0.total_minor, &self.0.currency)
    }

    async fn status(&self) -> ApiResult<OrderStatus> {
        OrderStatus::from_name(&self.0.status)
    }

    /// Why REJECTED or CANCELLED.
    async fn status_reason(&self) -> Option<String> {
        self.0.status_reason.clone()
    }

    async fn tracking_code(&self) -> Option<String> {
        self.0.tracking_code.clone()
    }

    async fn placed_at(&self) -> DateTime<Utc> {
        self.0.placed_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// A review.
#[derive(Debug, Clone)]
pub struct Review(pub ReviewRow);

#[Object]
impl Review {
    async fn id(&self) -> ID {
        ID(self.0.review_id.to_string())
    }

    async fn listing(&self, ctx: &Context<'_>) -> ApiResult<Listing> {
        listing_named(ctx, self.0.listing_id, Seen::In(reviews::NAME)).await
    }

    async fn author(&self, ctx: &Context<'_>) -> ApiResult<Account> {
        account_named(ctx, self.0.author_id, Seen::In(reviews::NAME)).await
    }

    async fn rating(&self) -> i32 {
        self.0.rating
    }

    async fn comment(&self) -> String {
        self.0.comment.clone()
    }

    async fn status(&self) -> ApiResult<ReviewStatus> {
        Ok(match self.0.status.as_str() {
            "PENDING" => ReviewStatus::Pending,
            "APPROVED" => ReviewStatus::Approved,
            "REJECTED" => ReviewStatus::Rejected,
            other => return Err(ApiError::internal(format!("unknown review status {other}"))),
        })
    }

    /// Why an ADMIN rejected it (author and ADMINs only).
    async fn rejection_reason(&self, ctx: &Context<'_>) -> Option<String> {
        let viewer = ctx.data_opt::<Viewer>().and_then(|v| v.0.as_deref());
        viewer
            .filter(|c| c.sub == self.0.author_id || c.has(DomainRole::Admin))
            .and(self.0.rejection_reason.clone())
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// An order mutation's result.
#[derive(SimpleObject, Debug, Clone)]
pub struct OrderPayload {
    /// The order, once the orders read model shows it (null if it did not
    /// catch up in time).
    pub order: Option<Order>,
    /// Send as `X-Consistency-Token` to read this write.
    pub consistency_token: String,
}

/// A review mutation's result.
#[derive(SimpleObject, Debug, Clone)]
pub struct ReviewPayload {
    /// The review, once the reviews read model shows it.
    pub review: Option<Review>,
    /// Send as `X-Consistency-Token` to read this write.
    pub consistency_token: String,
}

macro_rules! connection {
    ($conn:ident, $edge:ident, $node:ty) => {
        /// A page.
        #[derive(SimpleObject, Debug, Clone)]
        pub struct $conn {
            /// The rows.
            pub edges: Vec<$edge>,
            /// Paging.
            pub page_info: PageInfo,
            /// Rows in all.
            pub total_count: i32,
        }

        /// A row with its cursor.
        #[derive(SimpleObject, Debug, Clone)]
        pub struct $edge {
            /// The row.
            pub node: $node,
            /// Opaque cursor.
            pub cursor: String,
        }

        impl $conn {
            /// A connection of a read-model page, each row made a node.
            pub fn from_page<R>(page: Page<R>, node: impl Fn(R) -> $node) -> Self {
                let end_cursor = page.rows.last().map(|(_, c)| c.clone());
                Self {
                    edges: page
                        .rows
                        .into_iter()
                        .map(|(r, cursor)| $edge {
                            node: node(r),
                            cursor,
                        })
                        .collect(),
                    page_info: PageInfo {
                        has_next_page: page.has_next_page,
                        end_cursor,
                    },
                    total_count: i32::try_from(page.total_count).unwrap_or(i32::MAX),
                }
            }
        }
    };
}

connection!(OrderConnection, OrderEdge, Order);
connection!(NotificationConnection, NotificationEdge, Notification);

/// Something an account was told.
#[derive(SimpleObject, Debug, Clone)]
pub struct Notification {
    /// Id.
    pub id: ID,
    /// ORDER_CONFIRMED, ORDER_REJECTED, ORDER_SHIPPED, ORDER_DELIVERED,
    /// ITEM_SOLD, PAYOUT_RECEIVED, REVIEW_APPROVED or REVIEW_REJECTED.
    pub kind: String,
    /// Text for people.
    pub message: String,
    /// Whether it was read.
    pub read: bool,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<notifications::NotificationRow> for Notification {
    fn from(r: notifications::NotificationRow) -> Self {
        Notification {
            id: ID(r.notification_id.to_string()),
            kind: r.kind,
            message: r.message,
            read: r.read,
            created_at: r.created_at,
        }
    }
}
connection!(ReviewConnection, ReviewEdge, Review);

/// Builds a connection from a read-model page.
pub fn order_connection(page: Page<OrderRow>) -> OrderConnection {
    OrderConnection::from_page(page, Order::from)
}

/// Builds a connection from a read-model page.
pub fn review_connection(page: Page<ReviewRow>) -> ReviewConnection {
    ReviewConnection::from_page(page, Review)
}

/// Whether `viewer` may see `order`.
pub fn may_see_order(viewer: &Claims, order: &OrderRow) -> bool {
    viewer.sub == order.buyer_id || viewer.sub == order.seller_id || viewer.has(DomainRole::Admin)
}

/// Reads an order back after a write, once the orders read model has it.
pub async fn order_after(
    state: &AppState,
    id: Uuid,
    position: Position,
) -> ApiResult<OrderPayload> {
    let order = if state.wait_for(&[orders::NAME], position).await {
        orders::by_id(&state.pool, id).await?.map(Order::from)
    } else {
        None
    };
    Ok(OrderPayload {
        order,
        consistency_token: position.to_string(),
    })
}

/// Reads a review back after a write, once the reviews read model has it.
pub async fn review_after(
    state: &AppState,
    id: Uuid,
    position: Position,
) -> ApiResult<ReviewPayload> {
    let review = if state.wait_for(&[reviews::NAME], position).await {
        reviews::by_id(&state.pool, id).await?.map(Review)
    } else {
        None
    };
    Ok(ReviewPayload {
        review,
        consistency_token: position.to_string(),
    })
}

/// Queries over orders and reviews.
#[derive(Debug, Default)]
pub struct CommerceQuery;

#[Object]
impl CommerceQuery {
    /// One order: for its buyer, its seller, or an ADMIN.
    async fn order(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Order>> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        let Ok(id) = Uuid::try_parse(id.as_str()) else {
            return Err(ApiError::BadUserInput("id is not a valid id".into()));
        };
        Ok(orders::by_id(&state.pool, id)
            .await?
            .filter(|o| may_see_order(viewer, o))
            .map(Order::from))
    }

    /// The signed-in buyer's orders, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn my_orders(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<OrderConnection> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        let first = super::query::page_size(first)?;
        let page = orders::for_buyer(&state.pool, viewer.sub, first, after.as_deref()).await??;
        Ok(order_connection(page))
    }

    /// Orders containing the signed-in seller's listings, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn seller_orders(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<OrderConnection> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        let first = super::query::page_size(first)?;
        let page = orders::for_seller(&state.pool, viewer.sub, first, after.as_deref()).await??;
        Ok(order_connection(page))
    }

    /// A listing's reviews: APPROVED ones, or all of them for an ADMIN.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        listing_id: ID,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<ReviewConnection> {
        let state = ctx.data::<AppState>()?;
        let admin = ctx
            .data::<Viewer>()?
            .0
            .as_deref()
            .is_some_and(|c| c.has(DomainRole::Admin));
        let listing_id = super::types::parse_id(&listing_id, "listingId")?;
        let first = super::query::page_size(first)?;
        let page =
            reviews::for_listing(&state.pool, listing_id, admin, first, after.as_deref()).await??;
        Ok(review_connection(page))
    }

    /// The signed-in account's notifications, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<NotificationConnection> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        let first = super::query::page_size(first)?;
        let page =
            notifications::for_account(&state.pool, viewer.sub, first, after.as_deref()).await??;
        Ok(NotificationConnection::from_page(page, Notification::from))
    }

    /// PENDING reviews, oldest first: the moderation queue (ADMIN only).
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn moderation_queue(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<ReviewConnection> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        if !viewer.has(DomainRole::Admin) {
            return Err(ApiError::Forbidden("only admins moderate reviews".into()));
        }
        let first = super::query::page_size(first)?;
        let page = reviews::pending(&state.pool, first, after.as_deref()).await??;
        Ok(review_connection(page))
    }
}

/// A log consumer's health (a projection or a process manager), as the
/// contract's `ProjectionStatus`.
#[derive(SimpleObject, Debug, Clone)]
pub struct ProjectionStatus {
    /// Stable name.
    pub name: String,
    /// PROJECTION (a read model) or PROCESS_MANAGER (a saga).
    pub kind: String,
    /// Whether some process leads it right now.
    pub has_leader: bool,
    /// Version of its checkpoint.
    pub version: i32,
    /// Its checkpoint (a log position).
    pub position: String,
    /// Events not yet folded.
    pub lag_events: i32,
    /// Age in seconds of the oldest event not yet folded.
    pub lag_seconds: f64,
    /// RUNNING, STANDBY, FAILED or STOPPED.
    pub state: String,
    /// 0..1 while a rebuild runs.
    pub rebuild_progress: Option<f64>,
    /// The last failure (FAILED), with its position.
    pub last_error: Option<String>,
    /// The event it failed on.
    pub failed_position: Option<String>,
}

/// Operations queries (ADMIN only).
#[derive(Debug, Default)]
pub struct OpsQuery;

#[Object]
impl OpsQuery {
    /// Every log consumer's version, position, lag and state: the read
    /// models, then the process managers (`kind`).
    async fn projections(&self, ctx: &Context<'_>) -> ApiResult<Vec<ProjectionStatus>> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        if !viewer.has(DomainRole::Admin) {
            return Err(ApiError::Forbidden("projections are for admins".into()));
        }
        let all = marketplace_projections::status::status(&state.pool, &**state.handler.store())
            .await
            .map_err(ApiError::internal)?;
        Ok(all
            .into_iter()
            .map(|p| ProjectionStatus {
                name: p.name,
                kind: p.kind.as_str().to_owned(),
                has_leader: p.has_leader,
                version: p.version,
                position: p.position.to_string(),
                lag_events: i32::try_from(p.lag_events).unwrap_or(i32::MAX),
                lag_seconds: p.lag_seconds,
                state: p.state.as_str().to_owned(),
                rebuild_progress: p.rebuild_progress,
                last_error: p.last_error,
                failed_position: p.failed_position.map(|f| f.to_string()),
            })
            .collect())
    }
}

/// One stored event, for audits.
#[derive(SimpleObject, Debug, Clone)]
pub struct RecordedEvent {
    /// Its stream, `<category>-<uuid>`.
    pub stream_id: String,
    /// Its place in the stream.
    pub revision: i32,
    /// Its place in the global log (opaque, ordered).
    pub position: String,
    /// Unique id.
    pub event_id: ID,
    /// Stored name, e.g. `order.placed`.
    pub event_type: String,
    /// Version of its JSON Schema.
    pub schema_version: i32,
    /// The payload as JSON text (secrets redacted).
    pub data: String,
    /// Metadata as JSON text: actor, correlation, causation, hash chain.
    pub metadata: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The aggregate's state after it, as JSON text (when asked for).
    pub state_after: Option<String>,
}

/// Audit queries over the event log itself (ADMIN only).
#[derive(Debug, Default)]
pub struct AuditQuery;

fn require_admin<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Claims> {
    let viewer = ctx.data::<Viewer>()?.require()?;
    if viewer.has(DomainRole::Admin) {
        Ok(viewer)
    } else {
        Err(ApiError::Forbidden("audit queries are for admins".into()))
    }
}

#[Object]
impl AuditQuery {
    /// Every event of a stream, oldest first, optionally with the
    /// aggregate's state after each.
    #[graphql(complexity = "super::PAGE_COST + super::HISTORY_COST_ROWS * child_complexity")]
    async fn stream_history(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        with_state: Option<bool>,
    ) -> ApiResult<Vec<RecordedEvent>> {
        let state = ctx.data::<AppState>()?;
        require_admin(ctx)?;
        let stream = marketplace_store::StreamId::parse(&stream_id).map_err(|_| {
            ApiError::BadUserInput("streamId must look like <category>-<uuid>".into())
        })?;
        let entries = marketplace_commands::audit::history(
            &**state.handler.store(),
            &stream,
            with_state.unwrap_or(false),
        )
        .await
        .map_err(|e| match e {
            marketplace_commands::audit::AuditError::UnknownCategory(c) => {
                ApiError::BadUserInput(format!("no aggregate keeps streams of category {c:?}"))
            }
            other => ApiError::internal(other),
        })?;
        Ok(entries
            .into_iter()
            .map(|h| RecordedEvent {
                stream_id: h.event.stream_id.as_str().to_owned(),
                revision: i32::try_from(h.event.revision).unwrap_or(i32::MAX),
                position: h.event.position.to_string(),
                event_id: ID(h.event.event_id.to_string()),
                recorded_at: h.event.recorded_at(),
                event_type: h.event.event_type,
                schema_version: i32::try_from(h.event.schema_version).unwrap_or(i32::MAX),
                data: h.event.data.to_string(),
                metadata: serde_json::to_string(&h.event.metadata).unwrap_or_default(),
                state_after: h.state_after.map(|s| s.to_string()),
            })
            .collect())
    }

    /// An order as it stood at `at` (null if it was not placed yet).
    async fn order_as_of(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: DateTime<Utc>,
    ) -> ApiResult<Option<Order>> {
        let state = ctx.data::<AppState>()?;
        require_admin(ctx)?;
        let id = super::types::parse_id(&id, "id")?;
        let order = marketplace_commands::audit::as_of::<marketplace_domain::order::Order>(
            &**state.handler.store(),
            id,
            at,
        )
        .await
        .map_err(ApiError::internal)?;
        Ok(order.and_then(|o| {
            let status = match o.status {
                marketplace_domain::order::OrderStatus::Absent => return None,
                s => serde_json::to_value(s).ok()?.as_str()?.to_owned(),
            };
            let total = o.total.clone()?;
            Some(Order::from(OrderRow {
                order_id: o.id?.0,
                buyer_id: o.buyer_id?.0,
                seller_id: o.seller_id?.0,
                status,
                status_reason: o.status_reason.map(|r| r.as_str().to_owned()),
                tracking_code: o.tracking_code.map(|t| t.as_str().to_owned()),
                total_minor: total.minor,
                currency: total.currency.as_str().to_owned(),
                placed_at: o.placed_at?,
                updated_at: o.updated_at?,
            }))
        }))
    }
}

/// How the orders read model names `status`; `None` for an order not
/// placed.
fn status_name(status: marketplace_domain::order::OrderStatus) -> Option<&'static str> {
    use marketplace_domain::order::OrderStatus;
    Some(match status {
        OrderStatus::Absent => return None,
        OrderStatus::Pending => "PENDING",
        OrderStatus::Confirmed => "CONFIRMED",
        OrderStatus::Rejected => "REJECTED",
        OrderStatus::Shipped => "SHIPPED",
        OrderStatus::Delivered => "DELIVERED",
        OrderStatus::Cancelled => "CANCELLED",
    })
}
