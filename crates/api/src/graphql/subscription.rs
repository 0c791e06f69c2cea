//! Subscriptions over WebSocket (`graphql-transport-ws`), fed by
//! [`crate::live`] from committed events.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Subscription, ID};
use marketplace_projections::read_models::orders::{self, OrderRow};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use marketplace_consumers::trace;

use marketplace_domain::payment::{FailureKind, PaymentIntent as IntentState, PaymentStatus};

use super::payments::{visible_intent, PaymentIntent};
use super::read::{may_see_order, Notification, Order, OrderStatus};
use super::types::parse_id;
use super::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::live::OrderChange;
use crate::state::AppState;

/// Subscriptions one WebSocket connection may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 32;

/// The subscriptions a connection may still open (put in its connection
/// data by the WebSocket handler).
#[derive(Debug, Clone)]
pub struct SubscriptionBudget(Arc<Semaphore>);

impl Default for SubscriptionBudget {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_SUBSCRIPTIONS_PER_CONNECTION)))
    }
}

/// Takes one subscription slot of the caller's connection, if it has a
/// budget; the slot is freed when the returned permit is dropped.
fn take_slot(ctx: &Context<'_>) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    let Some(budget) = ctx.data_opt::<SubscriptionBudget>() else {
        return Ok(None);
    };
    budget.0.clone().try_acquire_owned().map(Some).map_err(|_| {
        ApiError::BadUserInput(format!(
            "a connection may hold at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions; \
             complete one first"
        ))
    })
}

/// The span of a WebSocket connection (put in its connection data by the
/// WebSocket handler): the parent of its subscriptions' spans. It continues
/// the trace of the upgrade request's `traceparent` header, or of the one
/// `ConnectionInit`'s payload carries.
#[derive(Debug, Clone)]
pub struct ConnectionTrace(pub tracing::Span);

/// The span of one subscription, open as long as it runs: a child of its
/// connection's.
fn subscription_span(ctx: &Context<'_>, name: &'static str) -> tracing::Span {
    let parent = ctx
        .data_opt::<ConnectionTrace>()
        .map_or_else(tracing::Span::current, |c| c.0.clone());
    tracing::info_span!(
        parent: &parent,
        "subscription",
        otel.name = format!("subscription {name}"),
        subscription = name,
    )
}

/// What one change of a watched order came to.
enum Push {
    /// The order as it now stands was sent.
    Sent,
    /// Nothing to send (the read model shows no change).
    Unchanged,
    /// The subscription is over (final status, error, or client gone).
    Done,
}

/// The span of one push: a child of the span that wrote the event behind
/// `change` (else of the subscription's), linked to the subscription; its
/// `sent` says whether the change was news to the client.
fn push_span(
    subscription: &'static str,
    id: uuid::Uuid,
    change: &OrderChange,
    parent: &tracing::Span,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: parent,
        "subscription.push",
        otel.name = format!("push {subscription}"),
        subscription,
        id = %id,
        position = change.position.0,
        sent = tracing::field::Empty,
    );
    if trace::follow(&span, change.traceparent.as_deref()) {
        if let Some(cx) = trace::traceparent_of(parent) {
            trace::link(&span, Some(&cx));
        }
    }
    span
}

/// Waits until the orders read model has folded `change`, reads the order
/// and sends it if it changed.
async fn push_order_change(
    state: &AppState,
    id: uuid::Uuid,
    change: &OrderChange,
    last: &mut OrderRow,
    tx: &mpsc::Sender<ApiResult<Order>>,
) -> Push {
    // Wait (in bounded steps, so a closed client is noticed) until the
    // read model has folded the change.
    while !state
        .progress
        .wait_for(&[orders::NAME], change.position, Duration::from_secs(5))
        .await
    {
        if tx.is_closed() {
            return Push::Done;
        }
    }
    let row = match orders::by_id(&state.pool, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Push::Unchanged,
        Err(e) => {
            let _ = tx.send(Err(ApiError::internal(e))).await;
            return Push::Done;
        }
    };
    if same_state(&row, last) {
        tracing::Span::current().record("sent", false);
        return Push::Unchanged;
    }
    *last = row;
    tracing::Span::current().record("sent", true);
    tracing::info!(status = %last.status, "pushing the order");
    if tx.send(Ok(Order::from(last.clone()))).await.is_err() || is_final(last) {
        return Push::Done;
    }
    Push::Sent
}

/// Every subscription.
#[derive(Debug, Default)]
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// One order as it stands now, then every change of it as the orders
    /// read model folds it (a burst of changes may arrive as its latest
    /// state). For its buyer, its seller, or an ADMIN. The subscription
    /// completes after a final status (DELIVERED, CANCELLED, REJECTED).
    async fn order_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<ReceiverStream<ApiResult<Order>>, ApiError> {
        let slot = take_slot(ctx)?;
        let state = ctx.data::<AppState>()?.clone();
        let live = state.live.clone();
        let viewer = ctx.data::<Viewer>()?.require()?.clone();
        let id = parse_id(&id, "id")?;
        // Watch first. Then every event of the order is either reported to
        // the watch (if the feed dispatches it from now on) or already in
        // the log's head now, which the read model is awaited to reach
        // before the order is read: no change falls between the two.
        let mut changes = live.watch_order(id);
        if !live.orders_feed_running(state.consistency_wait).await {
            return Err(ApiError::Conflict(
                "live updates are starting; subscribe again shortly".into(),
            ));
        }
        let head = state
            .handler
            .store()
            .head()
            .await
            .map_err(ApiError::internal)?;
        if !state.wait_for(&[orders::NAME], head).await {
            return Err(ApiError::Conflict(
                "the orders read model is behind the log; subscribe again shortly".into(),
            ));
        }
        let current = orders::by_id(&state.pool, id)
            .await?
            .filter(|o| may_see_order(&viewer, o))
            .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))?;
        let subscription = subscription_span(ctx, "orderUpdated");
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut last = current;
            if tx.send(Ok(Order::from(last.clone()))).await.is_err() || is_final(&last) {
                return;
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let change = changes.borrow_and_update().clone();
                // Each push is in the trace of the event that caused it,
                // linked to the subscription's span.
                let span = push_span("orderUpdated", id, &change, &subscription);
                match push_order_change(&state, id, &change, &mut last, &tx)
                    .instrument(span)
                    .await
                {
                    Push::Sent | Push::Unchanged => {}
                    Push::Done => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// One payment intent as it stands now, then every change of it; for
    /// its account or an ADMIN. Completes once it has SUCCEEDED, or FAILED
    /// as declined (an unconfirmed failure may still turn into a success).
    async fn payment_intent_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<ReceiverStream<ApiResult<PaymentIntent>>, ApiError> {
        let slot = take_slot(ctx)?;
        let state = ctx.data::<AppState>()?.clone();
        let viewer = ctx.data::<Viewer>()?.require()?.clone();
        let id = parse_id(&id, "id")?;
        // Watch first, then read: no change falls between the two.
        let mut changes = state.live.watch_order(id);
        if !state.live.orders_feed_running(state.consistency_wait).await {
            return Err(ApiError::Conflict(
                "live updates are starting; subscribe again shortly".into(),
            ));
        }
        let (current, _) = visible_intent(&state, &viewer, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no payment intent {id}")))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut last = current;
            if tx.send(Ok(PaymentIntent(last.clone()))).await.is_err() || intent_is_final(&last) {
                return;
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let now = match state.handler.load::<IntentState>(id).await {
                    Ok(loaded) => loaded.state,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::internal(e))).await;
                        return;
                    }
                };
                if now == last {
                    continue;
                }
                last = now;
                if tx.send(Ok(PaymentIntent(last.clone()))).await.is_err() || intent_is_final(&last)
                {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// The signed-in account's notifications as they are added.
    async fn notification_added(
        &self,
        ctx: &Context<'_>,
    ) -> Result<ReceiverStream<ApiResult<Notification>>, ApiError> {
        let live = ctx.data::<AppState>()?.live.clone();
        let viewer = ctx.data::<Viewer>()?.require()?;
        let slot = take_slot(ctx)?;
        let mut added = live.listen(viewer.sub);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = added.recv() => next,
                };
                match next {
                    Ok(row) => {
                        if tx
                            .send(Ok(Notification::from((*row).clone())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a notification subscriber fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

fn intent_is_final(intent: &IntentState) -> bool {
    match intent.status {
        Some(PaymentStatus::Succeeded) => true,
        Some(PaymentStatus::Failed) => {
            matches!(
                intent.failure,
                Some((FailureKind::Declined | FailureKind::NotAttempted, _))
            )
        }
        Some(PaymentStatus::Pending) | None => false,
    }
}

fn is_final(order: &OrderRow) -> bool {
    matches!(
        OrderStatus::from_name(&order.status),
        Ok(OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Rejected)
    )
}

fn same_state(a: &OrderRow, b: &OrderRow) -> bool {
    a.status == b.status
        && a.updated_at == b.updated_at
        && a.tracking_code == b.tracking_code
        && a.status_reason == b.status_reason
}
