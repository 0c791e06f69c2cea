//! Checking an order out as it is placed: the order, its lines'
//! reservations, the buyer's hold and the verdict decided together and
//! written in **one** atomic append across streams, each stream at the
//! revision it was decided on ([`marketplace_store::EventStore::append_streams`]). The
//! `placeOrder` answer is then final: CONFIRMED or REJECTED, never PENDING.
//!
//! - **Same decisions as the saga.** The order's `decide` places it; each
//!   line's listing `decide`s the reservation; the buyer's account `decide`s
//!   the hold; the order `decide`s the verdict. A refusal anywhere rejects
//!   the order with the saga's reasons, and then nothing is reserved or
//!   held: the rejected order's stream is all that is written.
//! - **Hot listings batch.** Orders for one listing that arrive while
//!   another batch of that listing is being appended queue in process (the
//!   handler's hot streams, [`crate::hot`]); they are then decided one after
//!   another, first come first served, against the listing's latest state
//!   and the buyers' accounts, and appended in one append. Each order keeps
//!   its own outcome and its own consistency token.
//! - **Correct across processes** through the expected revisions: a
//!   conflict on any stream decides the batch again on reloaded states.
//!   Decisions are taken on cached states without a read; a batch that
//!   refused anything on a state it did not read to the stream's end is
//!   decided again on states that it did (a refusal is checked by no
//!   append of the stream that caused it).
//! - **Crash safety** is the store's: the append commits whole or not at
//!   all, so an order either exists with its verdict and its effects, or
//!   not at all. A client retry with the same idempotency key finds the
//!   first outcome.
//!
//! Backends without the multi-stream append (KurrentDB through its Rust
//! client) keep the checkout saga ([`crate::process::checkout`]); callers
//! ask [`checks_out_at_placement`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use marketplace_domain::account::{Account, AccountCommand, AccountEvent, HoldFunds};
use marketplace_domain::listing::{Listing, ListingCommand, ListingEvent, ReserveStock};
use marketplace_domain::order::{
    CheckoutOutcome, CompleteCheckout, Order, OrderCommand, OrderError, PlaceOrder,
};
use marketplace_domain::values::{AccountId, Actor, FeeRate, ListingId, OrderId, Quantity, Reason};
use marketplace_domain::Aggregate;
use marketplace_store::{
    AppendOutcome, ExpectedRevision, IdempotencyKey, NewEvent, Position, StoreError, StreamAppend,
    StreamId,
};
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::flows::place_order::line_of;
use crate::handler::{
    command_span, stream_of, to_new_event, CommandContext, CommandError, CommandHandler, Executed,
    Idempotent, Loaded,
};
use crate::process::checkout::{account_reason, listing_reason};
use crate::stats::Outcome;

/// An order as the buyer asks for it: the listings and units, priced when
/// it is decided.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderRequest {
    /// The new order's id.
    pub order_id: OrderId,
    /// The buyer.
    pub buyer: Actor,
    /// Listings and units, in the buyer's order.
    pub wanted: Vec<(ListingId, Quantity)>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Why an order could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No listing has this id: the caller's mistake (NOT_FOUND).
    #[error("listing {0} not found")]
    ListingNotFound(ListingId),
    /// The order itself was refused, or the command failed.
    #[error(transparent)]
    Command(#[from] CommandError<OrderError>),
}

/// Whether orders placed through `handler` are checked out in their
/// placement's append (the store has atomic multi-stream appends), rather
/// than by the checkout saga.
pub fn checks_out_at_placement(handler: &CommandHandler) -> bool {
    handler.store().multi_stream_appends()
}

/// One order waiting for its listing's batch.
pub(crate) struct QueuedCheckout {
    ctx: CommandContext,
    request: OrderRequest,
    fee: FeeRate,
    reply: oneshot::Sender<Result<Executed<Order>, CheckoutError>>,
}

/// Places `request` and checks it out in one append (see the module
/// docs); with `key`, once per idempotency key, as
/// [`CommandHandler::execute_idempotent`]. The order that comes back is
/// CONFIRMED (digital-only: DELIVERED) or REJECTED with its reason.
///
/// Needs a store with [`marketplace_store::EventStore::multi_stream_appends`]; on any other
/// it fails with [`StoreError::Unsupported`].
pub async fn place_and_check_out(
    handler: &CommandHandler,
    ctx: &CommandContext,
    request: OrderRequest,
    fee: FeeRate,
    key: Option<IdempotencyKey>,
) -> Result<Idempotent<Executed<Order>>, CheckoutError> {
    let span = command_span(
        Order::CATEGORY,
        &stream_of::<Order>(request.order_id.0),
        ctx,
    );
    let ctx = ctx.traced(&span).into_owned();
    async move {
        match (&key, request.wanted.as_slice()) {
            (None, [(listing, _)]) => {
                let stream = stream_of::<Listing>(listing.0);
                let (reply, outcome) = oneshot::channel();
                let queued = handler.checkout_hot().join(&stream, || QueuedCheckout {
                    ctx: ctx.clone(),
                    request: request.clone(),
                    fee,
                    reply,
                });
                if queued {
                    return match outcome.await {
                        Ok(result) => result.map(Idempotent::Fresh),
                        // The batch's task went away: alone, then.
                        Err(_) => alone(handler, &ctx, &request, fee, None).await,
                    };
                }
                let _hand_over = HandOver {
                    handler: handler.clone(),
                    stream,
                };
                alone(handler, &ctx, &request, fee, None).await
            }
            // With a key (one per append) or several listings: alone.
            _ => alone(handler, &ctx, &request, fee, key).await,
        }
    }
    .instrument(span)
    .await
}

/// Checks out one order in an append of its own.
async fn alone(
    handler: &CommandHandler,
    ctx: &CommandContext,
    request: &OrderRequest,
    fee: FeeRate,
    key: Option<IdempotencyKey>,
) -> Result<Idempotent<Executed<Order>>, CheckoutError> {
    // With a key, event ids derive from it (as for every keyed command).
    let ctx = match &key {
        Some(k) => handler.keyed_context(ctx, k),
        None => ctx.clone(),
    };
    let replay = |record: marketplace_store::IdempotencyRecord, key: &IdempotencyKey| {
        if record.request_hash == key.request_hash {
            Ok(Idempotent::Replayed(record))
        } else {
            Err(CheckoutError::Command(CommandError::IdempotencyKeyReused))
        }
    };
    // The first use's record, if the key was used (checked before
    // deciding, and again when a duplicate won the race).
    let recorded = || async {
        match &key {
            Some(key) => handler
                .idempotency_record(key)
                .await
                .map_err(|e| CheckoutError::Command(CommandError::Store(e))),
            None => Ok(None),
        }
    };
    if let (Some(record), Some(key)) = (recorded().await?, &key) {
        return replay(record, key);
    }
    let batch = [(ctx, request.clone(), fee)];
    match decide_and_append(handler, &batch, key.as_ref()).await {
        Ok(mut outcomes) => match outcomes.pop() {
            Some(outcome) => outcome.map(Idempotent::Fresh),
            None => Err(CheckoutError::Command(CommandError::Store(
                StoreError::Backend("a checkout batch lost its order".into()),
            ))),
        },
        Err(CheckoutError::Command(CommandError::Store(StoreError::IdempotencyKeyUsed(
            record,
        )))) => match &key {
            Some(key) => replay(*record, key),
            None => Err(CheckoutError::Command(CommandError::Store(
                StoreError::IdempotencyKeyUsed(record),
            ))),
        },
        // The order stream exists: a concurrent duplicate with this key
        // won; its record is visible now.
        Err(e @ CheckoutError::Command(CommandError::Conflict { .. })) => {
            match (recorded().await?, &key) {
                (Some(record), Some(key)) => replay(record, key),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Hands a listing over to what queued behind its leading checkout.
struct HandOver {
    handler: CommandHandler,
    stream: StreamId,
}

impl Drop for HandOver {
    fn drop(&mut self) {
        let queued = self
            .handler
            .checkout_hot()
            .take::<QueuedCheckout>(&self.stream);
        if queued.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(self.handler.clone(), self.stream.clone(), queued));
        }
        // No runtime: the waiting callers see their batch gone and run alone.
    }
}

/// Runs what queued behind a listing's checkout, batch after batch, until
/// nothing waits.
async fn drain(handler: CommandHandler, stream: StreamId, mut queued: Vec<QueuedCheckout>) {
    while !queued.is_empty() {
        let span = tracing::info_span!("command.batch", aggregate = "checkout", stream = %stream);
        for q in queued
            .iter()
            .take(marketplace_consumers::trace::SPANS_PER_BATCH)
        {
            marketplace_consumers::trace::link(&span, q.ctx.traceparent.as_deref());
        }
        run_queued(&handler, queued).instrument(span).await;
        queued = handler.checkout_hot().take::<QueuedCheckout>(&stream);
    }
}

/// Decides a batch and answers each order; a batch that failed as a whole
/// runs its orders one by one, so each gets its own error.
async fn run_queued(handler: &CommandHandler, queued: Vec<QueuedCheckout>) {
    let batch: Vec<(CommandContext, OrderRequest, FeeRate)> = queued
        .iter()
        .map(|q| (q.ctx.clone(), q.request.clone(), q.fee))
        .collect();
    match decide_and_append(handler, &batch, None).await {
        Ok(outcomes) => {
            for (q, outcome) in queued.into_iter().zip(outcomes) {
                let _ = q.reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, orders = queued.len(), "a checkout batch failed; one by one");
            for q in queued {
                let result = alone(handler, &q.ctx, &q.request, q.fee, None)
                    .await
                    .and_then(|done| match done {
                        Idempotent::Fresh(done) => Ok(done),
                        Idempotent::Replayed(_) => {
                            Err(CheckoutError::Command(CommandError::IdempotencyKeyReused))
                        }
                    });
                let _ = q.reply.send(result);
            }
        }
    }
}

/// An aggregate being decided on in a batch: where it was loaded, where
/// the batch has taken it, and the events for its stream.
struct Working<A> {
    state: A,
    base: Option<u64>,
    /// The position of the stream's last event when loaded.
    position: Position,
    revision: Option<u64>,
    /// Read to the stream's end (not only the cache).
    verified: bool,
    events: Vec<NewEvent>,
}

impl<A: Aggregate> Working<A> {
    fn from(loaded: Loaded<A>, verified: bool) -> Self {
        Self {
            state: loaded.state,
            base: loaded.revision,
            position: loaded.position,
            revision: loaded.revision,
            verified,
            events: Vec::new(),
        }
    }

    /// Applies `events` (decided by `ctx`) to the state and queues them.
    fn apply(
        &mut self,
        stream: &StreamId,
        ctx: &CommandContext,
        events: &[A::Event],
    ) -> Result<(), CommandError<OrderError>> {
        for (i, e) in events.iter().enumerate() {
            self.events
                .push(to_new_event(e, ctx, ctx.event_id(stream, i)).map_err(CommandError::from)?);
            self.revision = Some(self.revision.map_or(0, |r| r + 1));
        }
        let state = std::mem::take(&mut self.state);
        self.state = events.iter().fold(state, |s, e| s.evolve(e));
        Ok(())
    }

    fn expected(&self) -> ExpectedRevision {
        self.base
            .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
    }

    /// Whether a refusal decided on this state may be stale and must be
    /// decided again on the latest: the state came from the cache without
    /// reading its stream's end, and the batch has not moved it, so no
    /// append of the batch checks it (a restock, a price change or a
    /// deposit in another process). A confirmation needs no such check: it
    /// appends with [`Self::expected`]. The same rule as the handler's
    /// single commands (`CommandHandler::execute`).
    fn unchecked(&self) -> bool {
        !self.verified && self.events.is_empty()
    }

    /// Reads `A` with id `id` on from where this state was taken to its
    /// stream's end; nothing of the batch is lost, since it has not moved
    /// the state ([`Self::unchecked`]).
    async fn catch_up(&mut self, handler: &CommandHandler, id: Uuid) -> Result<(), CheckoutError> {
        let loaded = Loaded {
            state: std::mem::take(&mut self.state),
            revision: self.base,
            position: self.position,
        };
        let latest = handler
            .caught_up::<A>(id, loaded)
            .await
            .map_err(CommandError::from)?;
        *self = Working::from(latest, true);
        Ok(())
    }
}

/// What a batch decided for one order.
enum Decided {
    /// The order's state after its verdict, and its stream's events.
    Order(Order, Vec<NewEvent>),
    /// Refused before anything was decided.
    Refused(CheckoutError),
}

/// Decides `batch` in order and appends it in one append; retries
/// conflicts with the handler's policy. One outcome per order.
async fn decide_and_append(
    handler: &CommandHandler,
    batch: &[(CommandContext, OrderRequest, FeeRate)],
    key: Option<&IdempotencyKey>,
) -> Result<Vec<Result<Executed<Order>, CheckoutError>>, CheckoutError> {
    let retry = handler.retry_policy();
    for attempt in 1..=retry.max_attempts {
        let read_to_end = attempt > 1;
        // Each listing as cached (taken rather than copied, no read) on a
        // first attempt, read to its end on a retry. A listing the batch
        // moves is checked by its append's expected revision; one that a
        // refusal was decided on without moving it is read to its end
        // then, and the order decided again (`decide_batch`).
        let mut listings = BTreeMap::new();
        let mut wanted: Vec<ListingId> = Vec::new();
        for (_, request, _) in batch {
            wanted.extend(request.wanted.iter().map(|&(l, _)| l));
        }
        for listing in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = listings.entry(listing) {
                let (loaded, verified) = if read_to_end {
                    (handler.take_latest::<Listing>(listing.0).await, true)
                } else {
                    match handler.taken_for_decision::<Listing>(listing.0).await {
                        Ok((loaded, verified)) => (Ok(loaded), verified),
                        Err(e) => (Err(e), false),
                    }
                };
                let loaded = loaded.map_err(CommandError::from)?;
                slot.insert(Working::from(loaded, verified));
            }
        }
        let (listings, accounts, decided) =
            decide_batch(handler, batch, listings, read_to_end).await?;

        // The append: each order's stream, then each listing and account
        // the batch moved.
        let mut parts: Vec<StreamAppend> = Vec::new();
        let mut orders: Vec<usize> = Vec::new();
        for (i, d) in decided.iter().enumerate() {
            if let Decided::Order(state, events) = d {
                if let Some(id) = state.id {
                    parts.push(StreamAppend {
                        stream: stream_of::<Order>(id.0),
                        expected: ExpectedRevision::NoStream,
                        events: events.clone(),
                    });
                    orders.push(i);
                }
            }
        }
        // What the batch did not move goes back to the cache as it was.
        let (moved_listings, unmoved): (Vec<_>, Vec<_>) = listings
            .into_iter()
            .partition(|(_, w)| !w.events.is_empty());
        for (id, w) in unmoved {
            if let Some(revision) = w.base {
                handler.put_back::<Listing>(id.0, w.state, revision, w.position);
            }
        }
        let (moved_accounts, unmoved): (Vec<_>, Vec<_>) = accounts
            .into_iter()
            .partition(|(_, w)| !w.events.is_empty());
        for (id, w) in unmoved {
            if let Some(revision) = w.base {
                handler.put_back::<Account>(id.0, w.state, revision, w.position);
            }
        }
        for (id, w) in &moved_listings {
            parts.push(StreamAppend {
                stream: stream_of::<Listing>(id.0),
                expected: w.expected(),
                events: w.events.clone(),
            });
        }
        for (id, w) in &moved_accounts {
            parts.push(StreamAppend {
                stream: stream_of::<Account>(id.0),
                expected: w.expected(),
                events: w.events.clone(),
            });
        }
        if parts.is_empty() {
            return Ok(answers(handler, decided, &[], Position::START));
        }
        let appended = match handler.append_streams_retrying_transient(parts, key).await {
            Ok(outcomes) => outcomes,
            Err(StoreError::WrongExpectedRevision { stream, .. }) => {
                tracing::debug!(%stream, attempt, "conflict on a checkout batch; reloading");
                handler.stats().conflict(Order::CATEGORY);
                if read_to_end && attempt < retry.max_attempts {
                    handler.stats().retry(Order::CATEGORY);
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
                continue;
            }
            Err(e) => return Err(CheckoutError::Command(CommandError::Store(e))),
        };
        let top = appended
            .iter()
            .map(|o| o.position)
            .max()
            .unwrap_or(Position::START);
        // Cache what the append left: the listings and accounts at their
        // new revisions, each order at its own.
        let mut rest = appended[orders.len()..].iter();
        for ((id, w), outcome) in moved_listings.into_iter().zip(rest.by_ref()) {
            handler.remember::<Listing>(id.0, w.state, w.base, *outcome);
        }
        for ((id, w), outcome) in moved_accounts.into_iter().zip(rest) {
            handler.remember::<Account>(id.0, w.state, w.base, *outcome);
        }
        return Ok(answers(handler, decided, &appended[..orders.len()], top));
    }
    let stream = batch
        .first()
        .and_then(|(_, r, _)| r.wanted.first())
        .map_or_else(
            || stream_of::<Order>(Uuid::nil()),
            |(l, _)| stream_of::<Listing>(l.0),
        );
    Err(CheckoutError::Command(CommandError::Conflict {
        stream,
        attempts: retry.max_attempts,
    }))
}

/// The listings and accounts of a batch, and what it decided per order.
type BatchDecision = (
    BTreeMap<ListingId, Working<Listing>>,
    BTreeMap<AccountId, Working<Account>>,
    Vec<Decided>,
);

/// Decides every order of `batch` in turn against the working states.
async fn decide_batch(
    handler: &CommandHandler,
    batch: &[(CommandContext, OrderRequest, FeeRate)],
    mut listings: BTreeMap<ListingId, Working<Listing>>,
    read_to_end: bool,
) -> Result<BatchDecision, CheckoutError> {
    let mut accounts: BTreeMap<AccountId, Working<Account>> = BTreeMap::new();
    let mut decided = Vec::with_capacity(batch.len());
    for (ctx, request, fee) in batch {
        let order_stream = stream_of::<Order>(request.order_id.0);
        let buyer = request.buyer.account_id;
        // A refusal decided on a listing that was not read to its end and
        // that no append of this batch checks (the batch moved nothing of
        // it) may be stale (a restock or a price change in another
        // process): that listing is read to its end and the order decided
        // again, once.
        let decision = loop {
            let decision =
                decide_order(handler, ctx, request, &listings, &mut accounts, read_to_end).await?;
            let refused = match &decision {
                OrderDecision::Refused(_) => true,
                OrderDecision::Decided { refusal, .. } => refusal.is_some(),
            };
            let stale = if refused {
                unverified(request, &listings)
            } else {
                Vec::new()
            };
            if stale.is_empty() {
                break decision;
            }
            catch_up(handler, &mut listings, &stale).await?;
        };
        let (mut order, refusal, reservations, hold) = match decision {
            OrderDecision::Refused(e) => {
                decided.push(Decided::Refused(e));
                continue;
            }
            OrderDecision::Decided {
                order,
                refusal,
                reservations,
                hold,
            } => (*order, refusal, reservations, hold),
        };
        let outcome = match refusal {
            None => CheckoutOutcome::Confirmed { fee: *fee },
            Some(reason) => CheckoutOutcome::Rejected(reason),
        };
        let verdict = OrderCommand::CompleteCheckout(CompleteCheckout {
            outcome: outcome.clone(),
            at: request.at,
        });
        let verdict_events = order
            .state
            .decide(&verdict)
            .map_err(CommandError::Rejected)?;
        // The verdict's events follow the placement's in the order stream.
        for (index, e) in (order.events.len()..).zip(&verdict_events) {
            order.events.push(
                to_new_event(e, ctx, ctx.event_id(&order_stream, index))
                    .map_err(CommandError::from)?,
            );
        }
        order.state = verdict_events
            .iter()
            .fold(std::mem::take(&mut order.state), |s, e| s.evolve(e));
        if matches!(outcome, CheckoutOutcome::Confirmed { .. }) {
            for (listing_id, events) in reservations {
                if let Some(w) = listings.get_mut(&listing_id) {
                    w.apply(&stream_of::<Listing>(listing_id.0), ctx, &events)?;
                }
            }
            if let Some(w) = accounts.get_mut(&buyer) {
                w.apply(&stream_of::<Account>(buyer.0), ctx, &hold)?;
            }
        }
        decided.push(Decided::Order(order.state, order.events));
    }
    Ok((listings, accounts, decided))
}

/// What deciding one order against a batch's working states gave.
enum OrderDecision {
    /// Refused before anything was decided (no such listing, an invalid
    /// order).
    Refused(CheckoutError),
    /// Placed: the order with its placement's events, the refusal that
    /// rejects it (if any), and, for a confirmation, the reservations and
    /// the hold to apply.
    Decided {
        order: Box<Working<Order>>,
        refusal: Option<Reason>,
        reservations: Vec<(ListingId, Vec<ListingEvent>)>,
        hold: Vec<AccountEvent>,
    },
}

/// Places `request` and decides its reservations and hold against the
/// working states, without changing them: a refusal leaves nothing behind.
/// The buyer's account joins `accounts` (cached, or read on a retry).
async fn decide_order(
    handler: &CommandHandler,
    ctx: &CommandContext,
    request: &OrderRequest,
    listings: &BTreeMap<ListingId, Working<Listing>>,
    accounts: &mut BTreeMap<AccountId, Working<Account>>,
    read_to_end: bool,
) -> Result<OrderDecision, CheckoutError> {
    // Price the lines from the listings as they stand.
    let mut lines = Vec::with_capacity(request.wanted.len());
    for &(listing_id, quantity) in &request.wanted {
        match listings
            .get(&listing_id)
            .and_then(|w| line_of(&w.state, listing_id, quantity))
        {
            Some(line) => lines.push(line),
            None => {
                return Ok(OrderDecision::Refused(CheckoutError::ListingNotFound(
                    listing_id,
                )))
            }
        }
    }
    let order_stream = stream_of::<Order>(request.order_id.0);
    let place = OrderCommand::Place(PlaceOrder {
        order_id: request.order_id,
        buyer: request.buyer.clone(),
        lines,
        at: request.at,
    });
    let mut order = Working::from(
        Loaded {
            state: Order::default(),
            revision: None,
            position: Position::START,
        },
        true,
    );
    let placed = match order.state.decide(&place) {
        Ok(events) => events,
        Err(refusal) => {
            return Ok(OrderDecision::Refused(CheckoutError::Command(
                CommandError::Rejected(refusal),
            )))
        }
    };
    order.apply(&order_stream, ctx, &placed)?;

    // Reserve every line, then hold the total.
    let mut refusal = None;
    let mut reservations = Vec::with_capacity(request.wanted.len());
    for &(listing_id, quantity) in &request.wanted {
        let Some(w) = listings.get(&listing_id) else {
            continue;
        };
        let reserve = ListingCommand::Reserve(ReserveStock {
            order_id: request.order_id,
            buyer_id: request.buyer.account_id,
            quantity,
            at: request.at,
        });
        match w.state.decide(&reserve) {
            Ok(events) => reservations.push((listing_id, events)),
            Err(e) => {
                refusal = Some(listing_reason(&e));
                break;
            }
        }
    }
    let buyer = request.buyer.account_id;
    let mut hold = Vec::new();
    if refusal.is_none() {
        if let std::collections::btree_map::Entry::Vacant(slot) = accounts.entry(buyer) {
            let (loaded, verified) = if read_to_end {
                handler.loaded_for_decision::<Account>(buyer.0, true).await
            } else {
                handler.taken_for_decision::<Account>(buyer.0).await
            }
            .map_err(CommandError::from)?;
            slot.insert(Working::from(loaded, verified));
        }
        let Some(amount) = order.state.total.clone() else {
            return Err(CheckoutError::Command(CommandError::Rejected(
                OrderError::NoLines,
            )));
        };
        let hold_funds = AccountCommand::Hold(HoldFunds {
            order_id: request.order_id,
            amount,
            at: request.at,
        });
        if let Some(w) = accounts.get_mut(&buyer) {
            let mut decision = w.state.decide(&hold_funds);
            if decision.is_err() && w.unchecked() {
                w.catch_up(handler, buyer.0).await?;
                decision = w.state.decide(&hold_funds);
            }
            match decision {
                Ok(events) => hold = events,
                Err(e) => refusal = Some(account_reason(&e)),
            }
        }
    }
    Ok(OrderDecision::Decided {
        order: Box::new(order),
        refusal,
        reservations,
        hold,
    })
}

/// The listings of `request` that were decided on as cached (not read to
/// their end) and that the batch has not moved, so that no append checks
/// them.
fn unverified(
    request: &OrderRequest,
    listings: &BTreeMap<ListingId, Working<Listing>>,
) -> Vec<ListingId> {
    let mut stale: Vec<ListingId> = request
        .wanted
        .iter()
        .map(|&(l, _)| l)
        .filter(|l| listings.get(l).is_some_and(Working::unchecked))
        .collect();
    stale.dedup();
    stale
}

/// Reads each of `stale` (unmoved working listings) to its stream's end.
async fn catch_up(
    handler: &CommandHandler,
    listings: &mut BTreeMap<ListingId, Working<Listing>>,
    stale: &[ListingId],
) -> Result<(), CheckoutError> {
    for id in stale {
        if let Some(w) = listings.get_mut(id) {
            w.catch_up(handler, id.0).await?;
        }
    }
    Ok(())
}

/// Each order's answer once its batch is appended (`appended`: the
/// orders' own stream outcomes, in order), counted in the stats.
fn answers(
    handler: &CommandHandler,
    decided: Vec<Decided>,
    appended: &[AppendOutcome],
    top: Position,
) -> Vec<Result<Executed<Order>, CheckoutError>> {
    let mut appended = appended.iter();
    let mut out = Vec::with_capacity(decided.len());
    for d in decided {
        match d {
            Decided::Order(state, events) => {
                handler.stats().outcome(Order::CATEGORY, Outcome::Appended);
                if let (Some(id), Some(outcome)) = (state.id, appended.next()) {
                    handler.remember::<Order>(id.0, state.clone(), None, *outcome);
                }
                out.push(Ok(Executed {
                    state,
                    appended: events.len(),
                    position: top,
                }));
            }
            Decided::Refused(e) => {
                handler.stats().outcome(Order::CATEGORY, Outcome::Rejected);
                out.push(Err(e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use marketplace_domain::account::{DepositFunds, RegisterAccount, RegistrationChannel};
    use marketplace_domain::listing::{CreateListing, ListingSpec, PublishListing};
    use marketplace_domain::order::OrderStatus;
    use marketplace_domain::values::{
        Category, Currency, Description, DisplayName, Email, Money, PasswordHash, Role, Tags, Title,
    };
    use marketplace_store::{EventStore, InMemoryEventStore};

    use super::*;

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: Currency::parse("EUR").expect("valid"),
        }
    }

    async fn account(handler: &CommandHandler, roles: &[Role], deposit: i64) -> Actor {
        let id = AccountId(Uuid::now_v7());
        let ctx = CommandContext::new("test");
        let register = AccountCommand::Register(RegisterAccount {
            account_id: id,
            email: Email::parse(&format!("{}@example.com", id.0.simple())).expect("email"),
            display_name: DisplayName::parse("Someone").expect("name"),
            password_hash: PasswordHash::from_phc("$argon2id$v=19$test".into()).expect("hash"),
            roles: roles.to_vec(),
            channel: RegistrationChannel::SelfService,
            at: Utc::now(),
        });
        let roles = handler
            .execute::<Account>(id.0, &ctx, &register)
            .await
            .expect("register")
            .state
            .roles;
        if deposit > 0 {
            let deposit = AccountCommand::Deposit(DepositFunds {
                deposit_id: Uuid::now_v7(),
                amount: eur(deposit),
                at: Utc::now(),
            });
            handler
                .execute::<Account>(id.0, &ctx, &deposit)
                .await
                .expect("deposit");
        }
        Actor {
            account_id: id,
            roles,
        }
    }

    async fn listing(handler: &CommandHandler, seller: &Actor, stock: u32) -> ListingId {
        let id = ListingId(Uuid::now_v7());
        let ctx = CommandContext::new("test");
        let create = ListingCommand::Create(CreateListing {
            listing_id: id,
            actor: seller.clone(),
            spec: ListingSpec::Physical {
                quantity: Quantity(stock),
            },
            title: Title::parse("Lamp").expect("valid"),
            description: Description::parse("").expect("valid"),
            category: Category::parse("home").expect("valid"),
            tags: Tags::default(),
            price: eur(1_000),
            at: Utc::now(),
        });
        handler
            .execute::<Listing>(id.0, &ctx, &create)
            .await
            .expect("create");
        let publish = ListingCommand::Publish(PublishListing {
            actor: seller.clone(),
            at: Utc::now(),
        });
        handler
            .execute::<Listing>(id.0, &ctx, &publish)
            .await
            .expect("publish");
        id
    }

    fn order(buyer: &Actor, listing: ListingId) -> (CommandContext, OrderRequest, FeeRate) {
        (
            CommandContext::new(buyer.account_id.to_string()),
            OrderRequest {
                order_id: OrderId(Uuid::now_v7()),
                buyer: buyer.clone(),
                wanted: vec![(listing, Quantity(1))],
                at: Utc::now(),
            },
            FeeRate::DEFAULT,
        )
    }

    fn status(outcome: &Result<Executed<Order>, CheckoutError>) -> (OrderStatus, Option<&str>) {
        match outcome {
            Ok(done) => (
                done.state.status,
                done.state.status_reason.as_ref().map(|r| r.as_str()),
            ),
            Err(e) => panic!("refused: {e}"),
        }
    }

    /// Decides one order of `buyer` for `lamp` on `handler` (whose cache
    /// predates a change made elsewhere) and asserts it is confirmed.
    async fn assert_confirmed(handler: &CommandHandler, buyer: &Actor, lamp: ListingId, why: &str) {
        let done = decide_and_append(handler, &[order(buyer, lamp)], None)
            .await
            .expect("append");
        assert_eq!(status(&done[0]), (OrderStatus::Confirmed, None), "{why}");
    }

    #[tokio::test]
    async fn a_batch_is_decided_in_order_in_one_append_and_keeps_each_outcome() {
        let store = Arc::new(InMemoryEventStore::new());
        let handler = CommandHandler::new(store.clone());
        let seller = account(&handler, &[Role::Seller, Role::Buyer], 0).await;
        let lamp = listing(&handler, &seller, 3).await;
        let rich: Vec<Actor> =
            futures::future::join_all((0..4).map(|_| account(&handler, &[Role::Buyer], 10_000)))
                .await;
        let poor = account(&handler, &[Role::Buyer], 10).await;
        let unknown = ListingId(Uuid::now_v7());
        let batch = vec![
            order(&rich[0], lamp),
            order(&poor, lamp),
            order(&rich[1], lamp),
            order(&rich[0], lamp),
            order(&rich[2], lamp),
            order(&rich[3], unknown),
            order(&seller, lamp),
        ];
        let head = store.head().await.expect("head");

        let outcomes = decide_and_append(&handler, &batch, None)
            .await
            .expect("the batch is appended");

        assert_eq!(outcomes.len(), 7, "one outcome per order");
        assert_eq!(status(&outcomes[0]), (OrderStatus::Confirmed, None));
        assert_eq!(
            status(&outcomes[1]),
            (OrderStatus::Rejected, Some("insufficient funds")),
            "a buyer who cannot pay takes no unit"
        );
        assert_eq!(status(&outcomes[2]), (OrderStatus::Confirmed, None));
        assert_eq!(
            status(&outcomes[3]),
            (OrderStatus::Confirmed, None),
            "a buyer's second order holds from what the first left"
        );
        assert_eq!(
            status(&outcomes[4]),
            (OrderStatus::Rejected, Some("out of stock")),
            "first come, first served"
        );
        assert!(
            matches!(&outcomes[5], Err(CheckoutError::ListingNotFound(id)) if *id == unknown),
            "{:?}",
            outcomes[5].as_ref().err()
        );
        assert!(
            matches!(
                &outcomes[6],
                Err(CheckoutError::Command(CommandError::Rejected(
                    OrderError::OwnListing
                )))
            ),
            "{:?}",
            outcomes[6].as_ref().err()
        );
        // One append: five orders of two events, three reservations and
        // three holds (rich[0]'s two in one part), every token the same.
        let written = store.read_all(head, 100).await.expect("read");
        assert_eq!(written.len(), 16);
        let tokens: Vec<Position> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().map(|d| d.position))
            .collect();
        assert!(
            tokens.iter().all(|t| *t == written[15].position),
            "{tokens:?}"
        );
        let l = handler.load::<Listing>(lamp.0).await.expect("lamp").state;
        assert_eq!((l.reserved_total(), l.available()), (3, 0));
        let held = handler
            .load::<Account>(rich[0].account_id.0)
            .await
            .expect("wallet")
            .state;
        assert_eq!(held.escrow.len(), 2);
        assert_eq!(held.balance(&eur(0).currency).minor, 8_000);
        let poor = handler
            .load::<Account>(poor.account_id.0)
            .await
            .expect("wallet")
            .state;
        assert!(poor.escrow.is_empty());
    }

    #[tokio::test]
    async fn a_refusal_on_a_stale_cached_state_is_decided_again_on_the_latest() {
        let store = Arc::new(InMemoryEventStore::new());
        let handler = CommandHandler::new(store.clone());
        let seller = account(&handler, &[Role::Seller, Role::Buyer], 0).await;
        let lamp = listing(&handler, &seller, 1).await;
        let buyer = account(&handler, &[Role::Buyer], 10_000).await;
        // The first unit sells; this handler caches the sold-out lamp.
        let first = decide_and_append(&handler, &[order(&buyer, lamp)], None)
            .await
            .expect("append");
        assert_eq!(status(&first[0]).0, OrderStatus::Confirmed);
        // Another process restocks it; this handler's cache does not know.
        let other = CommandHandler::new(store.clone());
        let restock = ListingCommand::Change(marketplace_domain::listing::SellerChange {
            actor: seller.clone(),
            change: marketplace_domain::listing::Change::Restock(Quantity(1)),
            at: Utc::now(),
        });
        other
            .execute::<Listing>(lamp.0, &CommandContext::new("test"), &restock)
            .await
            .expect("restock");

        assert_confirmed(
            &handler,
            &buyer,
            lamp,
            "not refused as out of stock on the stale state",
        )
        .await;
    }

    /// Changes the lamp's price through `other` (another process, whose
    /// append the first handler's cache does not see).
    async fn reprice(other: &CommandHandler, seller: &Actor, lamp: ListingId, minor: i64) {
        let change = ListingCommand::Change(marketplace_domain::listing::SellerChange {
            actor: seller.clone(),
            change: marketplace_domain::listing::Change::Price(eur(minor)),
            at: Utc::now(),
        });
        other
            .execute::<Listing>(lamp.0, &CommandContext::new("test"), &change)
            .await
            .expect("reprice");
    }

    async fn balance(handler: &CommandHandler, buyer: &Actor) -> i64 {
        let fresh = CommandHandler::new(handler.store().clone());
        fresh
            .load::<Account>(buyer.account_id.0)
            .await
            .expect("wallet")
            .state
            .balance(&eur(0).currency)
            .minor
    }

    #[tokio::test]
    async fn a_refusal_on_a_cached_price_that_fell_elsewhere_is_decided_again_on_the_latest() {
        let store = Arc::new(InMemoryEventStore::new());
        let handler = CommandHandler::new(store.clone());
        let seller = account(&handler, &[Role::Seller], 0).await;
        // This handler created the lamp at 10.00 and holds it cached.
        let lamp = listing(&handler, &seller, 5).await;
        let buyer = account(&handler, &[Role::Buyer], 600).await;
        reprice(&CommandHandler::new(store.clone()), &seller, lamp, 500).await;

        assert_confirmed(
            &handler,
            &buyer,
            lamp,
            "not refused for funds on the stale price of 10.00",
        )
        .await;
        assert_eq!(balance(&handler, &buyer).await, 100, "held at the new 5.00");
    }

    #[tokio::test]
    async fn a_confirmation_on_a_cached_price_that_rose_elsewhere_is_charged_the_latest() {
        let store = Arc::new(InMemoryEventStore::new());
        let handler = CommandHandler::new(store.clone());
        let seller = account(&handler, &[Role::Seller], 0).await;
        let lamp = listing(&handler, &seller, 5).await;
        let buyers: Vec<Actor> =
            futures::future::join_all((0..2).map(|_| account(&handler, &[Role::Buyer], 5_000)))
                .await;
        reprice(&CommandHandler::new(store.clone()), &seller, lamp, 2_000).await;

        // Decided on the cached 10.00, the batch's append to the lamp
        // expects a revision the repricing moved: it conflicts, and the
        // batch is decided again on the lamp read to its end.
        let done = decide_and_append(
            &handler,
            &[order(&buyers[0], lamp), order(&buyers[1], lamp)],
            None,
        )
        .await
        .expect("append");

        for (outcome, buyer) in done.iter().zip(&buyers) {
            assert_eq!(status(outcome), (OrderStatus::Confirmed, None));
            assert_eq!(balance(&handler, buyer).await, 3_000, "held at 20.00");
        }
        let l = CommandHandler::new(store.clone())
            .load::<Listing>(lamp.0)
            .await
            .expect("lamp")
            .state;
        assert_eq!((l.reserved_total(), l.available()), (2, 3));
    }

    #[tokio::test]
    async fn a_refusal_on_a_cached_wallet_that_was_funded_elsewhere_is_decided_again() {
        let store = Arc::new(InMemoryEventStore::new());
        let handler = CommandHandler::new(store.clone());
        let seller = account(&handler, &[Role::Seller], 0).await;
        let lamp = listing(&handler, &seller, 5).await;
        // This handler registered the buyer with 5.00 and holds the wallet.
        let buyer = account(&handler, &[Role::Buyer], 500).await;
        let deposit = AccountCommand::Deposit(DepositFunds {
            deposit_id: Uuid::now_v7(),
            amount: eur(1_000),
            at: Utc::now(),
        });
        CommandHandler::new(store.clone())
            .execute::<Account>(buyer.account_id.0, &CommandContext::new("test"), &deposit)
            .await
            .expect("deposit elsewhere");

        assert_confirmed(
            &handler,
            &buyer,
            lamp,
            "not refused for funds on the cached 5.00",
        )
        .await;
        assert_eq!(balance(&handler, &buyer).await, 500);
    }

    #[tokio::test]
    async fn a_long_stream_folded_without_a_snapshot_gets_one() {
        use marketplace_domain::listing::{ListingEvent, ReservationCommitted, StockReserved};
        let store = Arc::new(InMemoryEventStore::new());
        let setup = CommandHandler::new(store.clone());
        let seller = account(&setup, &[Role::Seller], 0).await;
        let lamp = listing(&setup, &seller, 5_000).await;
        let buyer = account(&setup, &[Role::Buyer], 10_000).await;
        // 1,200 past orders written straight to the log: no snapshot.
        let stream = stream_of::<Listing>(lamp.0);
        let ctx = CommandContext::new("test");
        let mut past = Vec::new();
        for _ in 0..600 {
            let order_id = OrderId(Uuid::now_v7());
            for e in [
                ListingEvent::StockReserved(StockReserved {
                    listing_id: lamp,
                    order_id,
                    quantity: Quantity(1),
                    reserved_at: Utc::now(),
                }),
                ListingEvent::ReservationCommitted(ReservationCommitted {
                    listing_id: lamp,
                    order_id,
                    quantity: Quantity(1),
                    committed_at: Utc::now(),
                }),
            ] {
                past.push(to_new_event(&e, &ctx, Uuid::now_v7()).expect("encode"));
            }
        }
        store
            .append(&stream, ExpectedRevision::Any, past)
            .await
            .expect("append the past");
        let before = store
            .read_snapshot(&stream)
            .await
            .expect("read")
            .map(|s| s.revision);

        // A fresh process checks an order out: it folds the whole stream.
        let fresh = CommandHandler::new(store.clone());
        let done = decide_and_append(&fresh, &[order(&buyer, lamp)], None)
            .await
            .expect("append");
        assert_eq!(status(&done[0]).0, OrderStatus::Confirmed);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let snapshot = store.read_snapshot(&stream).await.expect("read");
            if let Some(s) = snapshot.filter(|s| Some(s.revision) != before && s.revision >= 1_200)
            {
                let state = Listing::from_snapshot(s.state).expect("reads");
                assert_eq!(state.sold, 600);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot of the long fold"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
