//! Mutations of the marketplace's business: wallets, listing changes,
//! orders and reviews. Each validates its input, checks who may act (the
//! domain checks ownership again), runs one command, and returns a
//! consistency token.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::Utc;
use marketplace_commands::flows::checkout::{place_and_check_out, CheckoutError, OrderRequest};
use marketplace_commands::flows::place_order::{price_lines, PriceLinesError};
use marketplace_commands::{CommandContext, CommandError, Executed, Idempotent};
use marketplace_domain::listing::{
    Change, Listing as ListingAggregate, ListingCommand, SellerChange,
};
use marketplace_domain::order::{
    Fulfil, Order as OrderAggregate, OrderCommand, OrderError, PlaceOrder, Step, MAX_LINES,
};
use marketplace_domain::review::{
    Decision, ModerateReview as ModerateCommand, OrderFacts, Review as ReviewAggregate,
    ReviewCommand, ReviewError, SubmitReview,
};
use marketplace_domain::values::{
    ListingId, OrderId, Quantity, Rating, Reason, ReviewComment, ReviewId, Role, TrackingCode,
};
use marketplace_domain::Aggregate;
use marketplace_store::{IdempotencyKey, Position};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::mutation::{command_error, listing_after, listing_error, validate_idempotency_key};
use super::read::{order_after, review_after, Order, OrderPayload, ReviewPayload};
use super::types::{parse_id, ListingPayload, MoneyInput};
use super::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Namespace of ids derived from idempotency keys (orders, deposits).
const IDEMPOTENT_NS: Uuid = Uuid::from_u128(0x1d3a_7c55_4f0b_4a3e_8e61_6f72_6465_0001);

/// A mutation's bare result.
#[derive(SimpleObject, Debug, Clone)]
pub struct CommandResult {
    /// Send as `X-Consistency-Token` to read this write.
    pub consistency_token: String,
    /// `depositFunds` only: the deposit's payment intent as it stands.
    pub payment_intent: Option<super::payments::PaymentIntent>,
}

/// One line of a new order.
#[derive(InputObject, Debug, Clone)]
pub struct OrderLineInput {
    /// The listing.
    pub listing_id: ID,
    /// Units (1 or more).
    pub quantity: i32,
}

/// A new order.
#[derive(InputObject, Debug, Clone)]
pub struct PlaceOrderInput {
    /// What to buy: listings of one seller.
    pub lines: Vec<OrderLineInput>,
}

/// A new review.
#[derive(InputObject, Debug, Clone)]
pub struct SubmitReviewInput {
    /// The listing reviewed.
    pub listing_id: ID,
    /// The delivered order it was bought in.
    pub order_id: ID,
    /// 1 to 5.
    pub rating: i32,
    /// Text.
    pub comment: String,
}

/// An admin's decision.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ModerationDecision {
    /// Show it and count it.
    Approve,
    /// Hide it (a reason is required).
    Reject,
}

/// The hash an idempotency key is bound to: the operation and its input.
fn request_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// A key scoped to the caller and the operation.
fn scoped_key(op: &str, caller: Uuid, key: &str, hash: String) -> IdempotencyKey {
    IdempotencyKey {
        key: format!("{op}:{caller}:{key}"),
        request_hash: hash,
    }
}

/// Runs `command`, once per idempotency key when one is given. Returns the
/// aggregate id and the consistency token (of the first run, on a replay).
pub(crate) async fn run_keyed<A: Aggregate>(
    state: &AppState,
    id: Uuid,
    ctx: &CommandContext,
    command: &A::Command,
    key: Option<IdempotencyKey>,
    rejected: impl FnOnce(A::Error) -> ApiError,
) -> ApiResult<(Uuid, Position)> {
    match execute_keyed::<A>(state, id, ctx, command, key, rejected).await? {
        Idempotent::Fresh(Executed { position, .. }) => Ok((id, position)),
        Idempotent::Replayed(record) => Ok((record.stream_id.id(), record.position)),
    }
}

/// Like [`run_keyed`], with what the command left: the aggregate's state
/// when it ran now, the first use's record when the key replays it.
pub(crate) async fn execute_keyed<A: Aggregate>(
    state: &AppState,
    id: Uuid,
    ctx: &CommandContext,
    command: &A::Command,
    key: Option<IdempotencyKey>,
    rejected: impl FnOnce(A::Error) -> ApiError,
) -> ApiResult<Idempotent<Executed<A>>> {
    let result = match key {
        Some(key) => {
            state
                .handler
                .execute_idempotent::<A>(id, ctx, command, key)
                .await
        }
        None => state
            .handler
            .execute::<A>(id, ctx, command)
            .await
            .map(Idempotent::Fresh),
    };
    result.map_err(|e| command_error(e, rejected))
}

fn order_error(e: OrderError) -> ApiError {
    match e {
        OrderError::NotFound => ApiError::NotFound(e.to_string()),
        OrderError::NotABuyer | OrderError::NotTheBuyer | OrderError::NotTheSeller => {
            ApiError::Forbidden(e.to_string())
        }
        OrderError::NoLines
        | OrderError::TooManyLines
        | OrderError::DuplicateLine
        | OrderError::NonPositiveQuantity
        | OrderError::SeveralSellers
        | OrderError::MixedCurrencies
        | OrderError::OwnListing
        | OrderError::TotalTooLarge => ApiError::BadUserInput(e.to_string()),
        OrderError::AlreadyPlaced | OrderError::WrongStatus { .. } | OrderError::NothingToShip => {
            ApiError::Conflict(e.to_string())
        }
    }
}

fn review_error(e: ReviewError) -> ApiError {
    match e {
        ReviewError::NotFound | ReviewError::OrderNotFound => ApiError::NotFound(e.to_string()),
        ReviewError::NotTheBuyer | ReviewError::NotAnAdmin => ApiError::Forbidden(e.to_string()),
        ReviewError::ListingNotInOrder | ReviewError::ReasonRequired => {
            ApiError::BadUserInput(e.to_string())
        }
        ReviewError::AlreadyReviewed
        | ReviewError::AlreadyModerated
        | ReviewError::NotDelivered => ApiError::Conflict(e.to_string()),
    }
}

fn quantity(raw: i32) -> ApiResult<Quantity> {
    let q = Quantity::parse(i64::from(raw))?;
    if q.0 == 0 {
        return Err(ApiError::BadUserInput("quantity must be positive".into()));
    }
    Ok(q)
}

/// The business mutations.
#[derive(Debug, Default)]
pub struct CommerceMutation;

#[Object]
impl CommerceMutation {
    /// Adds funds to the signed-in account's wallet, charged through the
    /// payment provider: records a payment intent and answers with its
    /// state once settled (or still PENDING after a bounded wait). While the
    /// provider is down (its circuit breaker open) it answers UNAVAILABLE
    /// with `Retry-After`, recording nothing. `paymentToken` is the
    /// provider's token for the payment method (never card data).
    async fn deposit_funds(
        &self,
        ctx: &Context<'_>,
        amount: MoneyInput,
        idempotency_key: Option<String>,
        payment_token: Option<String>,
    ) -> ApiResult<CommandResult> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        validate_idempotency_key(&idempotency_key)?;
        let money = amount.to_domain()?;
        let key = idempotency_key.as_deref().map(|k| {
            let hash = request_hash(&[
                &money.minor.to_string(),
                money.currency.as_str(),
                payment_token.as_deref().unwrap_or(""),
            ]);
            scoped_key("depositFunds", claims.sub, k, hash)
        });
        let intent_id = match &key {
            Some(k) => Uuid::new_v5(&IDEMPOTENT_NS, k.key.as_bytes()),
            None => Uuid::now_v7(),
        };
        let mut cctx = CommandContext::new(claims.sub.to_string());
        cctx.idempotency_key = idempotency_key;
        super::payments::deposit_funds(state, claims, money, payment_token, intent_id, cctx, key)
            .await
    }

    /// Changes the price of the signed-in seller's listing (orders already
    /// placed keep their prices).
    async fn update_listing_price(
        &self,
        ctx: &Context<'_>,
        id: ID,
        price: MoneyInput,
    ) -> ApiResult<ListingPayload> {
        let price = price.to_domain()?;
        change_listing(ctx, &id, Change::Price(price)).await
    }

    /// Adds units to a PHYSICAL listing's stock.
    async fn restock_listing(
        &self,
        ctx: &Context<'_>,
        id: ID,
        quantity: i32,
    ) -> ApiResult<ListingPayload> {
        let q = self::quantity(quantity)?;
        change_listing(ctx, &id, Change::Restock(q)).await
    }

    /// Withdraws a published listing from sale.
    async fn delist_listing(&self, ctx: &Context<'_>, id: ID) -> ApiResult<ListingPayload> {
        change_listing(ctx, &id, Change::Delist).await
    }

    /// Places an order at today's prices and checks it out: stock is
    /// reserved for every line and the buyer's funds are held, or the
    /// order is REJECTED with a `statusReason` (out of stock, insufficient
    /// funds, …) and nothing is held. On the Postgres event store this is
    /// decided in the placement's own atomic append, so the answer is
    /// already CONFIRMED or REJECTED. On KurrentDB (or with
    /// `--checkout-in-saga`) the order is PENDING until the checkout saga
    /// decides it a moment later: follow the consistency token, query the
    /// order, or subscribe to see the outcome.
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        input: PlaceOrderInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<OrderPayload> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        validate_idempotency_key(&idempotency_key)?;
        if input.lines.is_empty() || input.lines.len() > MAX_LINES {
            return Err(ApiError::BadUserInput(format!(
                "an order has 1 to {MAX_LINES} lines"
            )));
        }
        let mut wanted = Vec::with_capacity(input.lines.len());
        for line in &input.lines {
            wanted.push((
                ListingId(parse_id(&line.listing_id, "listingId")?),
                quantity(line.quantity)?,
            ));
        }
        let key = idempotency_key.as_deref().map(|k| {
            let parts: Vec<String> = wanted.iter().map(|(l, q)| format!("{l}x{}", q.0)).collect();
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            scoped_key("placeOrder", claims.sub, k, request_hash(&refs))
        });
        let order_id = match &key {
            Some(k) => Uuid::new_v5(&IDEMPOTENT_NS, k.key.as_bytes()),
            None => Uuid::now_v7(),
        };
        let mut cctx = CommandContext::new(claims.sub.to_string());
        cctx.idempotency_key = idempotency_key;
        // A fresh order is answered from the state its placement left (what
        // the read model will hold at the token): no wait for the
        // projection on the hot path. A replayed key reads the read model.
        let placed = if state.checkout_at_placement {
            let request = OrderRequest {
                order_id: OrderId(order_id),
                buyer: claims.actor(),
                wanted,
                at: Utc::now(),
            };
            place_and_check_out(&state.handler, &cctx, request, state.fee, key)
                .await
                .map_err(|e| match e {
                    CheckoutError::ListingNotFound(_) => ApiError::NotFound(e.to_string()),
                    CheckoutError::Command(e) => command_error(e, order_error),
                })?
        } else {
            let lines = price_lines(&state.handler, &wanted)
                .await
                .map_err(|e| match e {
                    PriceLinesError::ListingNotFound(_) => ApiError::NotFound(e.to_string()),
                    PriceLinesError::Load(e) => ApiError::internal(e),
                })?;
            let command = OrderCommand::Place(PlaceOrder {
                order_id: OrderId(order_id),
                buyer: claims.actor(),
                lines,
                at: Utc::now(),
            });
            execute_keyed::<OrderAggregate>(state, order_id, &cctx, &command, key, order_error)
                .await?
        };
        match placed {
            Idempotent::Fresh(done) => match Order::placed(&done.state, done.position) {
                Some(order) if done.appended > 0 => Ok(OrderPayload {
                    order: Some(order),
                    consistency_token: done.position.to_string(),
                }),
                _ => order_after(state, order_id, done.position).await,
            },
            Idempotent::Replayed(record) => {
                order_after(state, record.stream_id.id(), record.position).await
            }
        }
    }

    /// The buyer cancels a CONFIRMED order before shipping: funds are
    /// refunded and stock released.
    async fn cancel_order(&self, ctx: &Context<'_>, id: ID) -> ApiResult<OrderPayload> {
        fulfil(ctx, &id, Step::Cancel).await
    }

    /// The seller ships a CONFIRMED order (DIGITAL-only orders are
    /// delivered on confirmation and need no shipping).
    async fn ship_order(
        &self,
        ctx: &Context<'_>,
        id: ID,
        tracking_code: Option<String>,
    ) -> ApiResult<OrderPayload> {
        let code = tracking_code
            .as_deref()
            .map(TrackingCode::parse)
            .transpose()?;
        fulfil(ctx, &id, Step::Ship(code)).await
    }

    /// The buyer confirms delivery: the escrow goes to the seller, less the
    /// marketplace fee.
    async fn confirm_delivery(&self, ctx: &Context<'_>, id: ID) -> ApiResult<OrderPayload> {
        let fee = ctx.data::<AppState>()?.fee;
        fulfil(ctx, &id, Step::ConfirmDelivery(fee)).await
    }

    /// The buyer of a DELIVERED order reviews one of its listings, once.
    /// Reviews wait for moderation before they are shown.
    async fn submit_review(
        &self,
        ctx: &Context<'_>,
        input: SubmitReviewInput,
    ) -> ApiResult<ReviewPayload> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        let listing_id = ListingId(parse_id(&input.listing_id, "listingId")?);
        let order_id = OrderId(parse_id(&input.order_id, "orderId")?);
        let rating = Rating::parse(i64::from(input.rating))?;
        let comment = ReviewComment::parse(&input.comment)?;
        let order = state
            .handler
            .load::<OrderAggregate>(order_id.0)
            .await
            .map_err(ApiError::internal)?
            .state;
        let facts = order.buyer_id.map(|buyer_id| OrderFacts {
            order_id,
            buyer_id,
            status: order.status,
            listing_ids: order.lines.iter().map(|l| l.listing_id).collect(),
        });
        let review_id = ReviewId::for_line(order_id, listing_id);
        let command = ReviewCommand::Submit(SubmitReview {
            author: claims.actor(),
            listing_id,
            order: facts,
            rating,
            comment,
            at: Utc::now(),
        });
        let done = state
            .handler
            .execute::<ReviewAggregate>(
                review_id.0,
                &CommandContext::new(claims.sub.to_string()),
                &command,
            )
            .await
            .map_err(|e| command_error(e, review_error))?;
        review_after(state, review_id.0, done.position).await
    }

    /// An ADMIN approves or rejects (with a reason) a PENDING review.
    async fn moderate_review(
        &self,
        ctx: &Context<'_>,
        id: ID,
        decision: ModerationDecision,
        reason: Option<String>,
    ) -> ApiResult<ReviewPayload> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        if !claims.has(Role::Admin) {
            return Err(ApiError::Forbidden("only admins moderate reviews".into()));
        }
        let review_id = parse_id(&id, "id")?;
        let reason = reason.as_deref().map(Reason::parse).transpose()?;
        let decision = match decision {
            ModerationDecision::Approve => Decision::Approve,
            ModerationDecision::Reject => Decision::Reject(reason),
        };
        let done = state
            .handler
            .execute::<ReviewAggregate>(
                review_id,
                &CommandContext::new(claims.sub.to_string()),
                &ReviewCommand::Moderate(ModerateCommand {
                    moderator: claims.actor(),
                    decision,
                    at: Utc::now(),
                }),
            )
            .await
            .map_err(|e| command_error(e, review_error))?;
        review_after(state, review_id, done.position).await
    }
}

async fn change_listing(ctx: &Context<'_>, id: &ID, change: Change) -> ApiResult<ListingPayload> {
    let state = ctx.data::<AppState>()?;
    let claims = ctx.data::<Viewer>()?.require()?;
    let listing_id = parse_id(id, "id")?;
    let done = state
        .handler
        .execute::<ListingAggregate>(
            listing_id,
            &CommandContext::new(claims.sub.to_string()),
            &ListingCommand::Change(SellerChange {
                actor: claims.actor(),
                change,
                at: Utc::now(),
            }),
        )
        .await
        .map_err(|e| command_error(e, listing_error))?;
    listing_after(state, listing_id, done.position).await
}

async fn fulfil(ctx: &Context<'_>, id: &ID, step: Step) -> ApiResult<OrderPayload> {
    let state = ctx.data::<AppState>()?;
    let claims = ctx.data::<Viewer>()?.require()?;
    let order_id = parse_id(id, "id")?;
    let done = state
        .handler
        .execute::<OrderAggregate>(
            order_id,
            &CommandContext::new(claims.sub.to_string()),
            &OrderCommand::Fulfil(Fulfil {
                actor: claims.actor(),
                step,
                at: Utc::now(),
            }),
        )
        .await
        .map_err(|e| match e {
            // Not a participant: do not reveal whether the order exists.
            CommandError::Rejected(OrderError::NotFound) => {
                ApiError::NotFound("order not found".into())
            }
            other => command_error(other, order_error),
        })?;
    order_after(state, order_id, done.position).await
}
