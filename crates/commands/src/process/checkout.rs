//! The checkout saga: `order.placed` → reserve stock for every line, hold
//! the buyer's funds, confirm; on any refusal reject the order with the
//! reason, then give back whatever it holds (reservations, escrow).
//!
//! Every step is idempotent: reserving or holding again for the same order
//! is a no-op, releasing what is not reserved is a no-op, and the verdict is
//! recorded once. So after a crash at any point, handling the same
//! `order.placed` again finishes the job without doing anything twice, and
//! a rejected order never leaves stock reserved.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use marketplace_consumers::{trace, Envelope};
use marketplace_domain::account::{
    Account, AccountCommand, AccountError, EscrowOutcome, HoldFunds, SettleEscrow,
};
use marketplace_domain::listing::{
    EndReservation, Listing, ListingCommand, ListingError, ReservationOutcome, ReserveStock,
};
use marketplace_domain::order::{
    CheckoutOutcome, CompleteCheckout, Order, OrderCommand, OrderEvent, OrderPlaced, OrderStatus,
};
use marketplace_domain::values::{AccountId, FeeRate, ListingId, Quantity, Reason};
use marketplace_domain::{AggregateKind, Event};

use tracing::Instrument;

use super::{check_fault, FaultHook, ProcessError, ProcessManager};
use crate::handler::{CommandContext, CommandError, CommandHandler};

/// Name of the saga (its checkpoint key and the actor of its commands).
pub const NAME: &str = "checkout";

/// Listings of one lane's batch checked out at once (each takes a few
/// connections for its steps).
const LISTINGS_AT_ONCE: usize = 16;

/// An order of a run after its reservation: its trigger, itself, and why
/// it could not be reserved (if so).
type Reserved<'a> = (&'a Envelope, &'a OrderPlaced, Option<Reason>);

/// The checkout saga.
pub struct CheckoutSaga {
    handler: CommandHandler,
    fee: FeeRate,
    fault: Option<FaultHook>,
}

impl std::fmt::Debug for CheckoutSaga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutSaga")
            .field("fee", &self.fee)
            .finish()
    }
}

impl CheckoutSaga {
    /// A saga issuing commands through `handler`; digital-only orders are
    /// delivered on confirmation with `fee`.
    pub fn new(handler: CommandHandler, fee: FeeRate) -> Self {
        Self {
            handler,
            fee,
            fault: None,
        }
    }

    /// Adds a fault hook (tests of crash recovery).
    pub fn with_fault(mut self, fault: FaultHook) -> Self {
        self.fault = Some(fault);
        self
    }

    async fn checkout(&self, trigger: &Envelope, placed: &OrderPlaced) -> Result<(), ProcessError> {
        self.checkout_in_step(trigger, placed)
            .instrument(super::step_span(NAME, trigger))
            .await
    }

    async fn checkout_in_step(
        &self,
        trigger: &Envelope,
        placed: &OrderPlaced,
    ) -> Result<(), ProcessError> {
        match self.status(placed).await? {
            OrderStatus::Pending => self.decide(trigger, placed).await,
            // Rejected, perhaps by another instance (a stale leader during a
            // takeover) or before a crash: make sure nothing stays held.
            OrderStatus::Rejected => self.compensate(trigger, placed).await,
            // Decided and moved on: a repeated delivery of the event.
            OrderStatus::Absent
            | OrderStatus::Confirmed
            | OrderStatus::Shipped
            | OrderStatus::Delivered
            | OrderStatus::Cancelled => Ok(()),
        }
    }

    async fn status(&self, placed: &OrderPlaced) -> Result<OrderStatus, ProcessError> {
        // A verdict never goes back to PENDING: a cached decided order
        // (one checked out at placement, in this process) needs no read.
        if let Some(order) = self.handler.cached::<Order>(placed.order_id.0) {
            if !matches!(order.status, OrderStatus::Absent | OrderStatus::Pending) {
                return Ok(order.status);
            }
        }
        Ok(self
            .handler
            .load::<Order>(placed.order_id.0)
            .await?
            .state
            .status)
    }

    /// Reserves every line, holds the funds, records the verdict — then
    /// looks at the verdict that stands: if the order ended REJECTED
    /// (here or by another instance), whatever this instance reserved or
    /// held is given back. Compensation only ever follows a recorded
    /// rejection, so a CONFIRMED order never loses its reservation, and
    /// every instance that took a step sees the verdict after it, so a
    /// REJECTED order never keeps one.
    async fn decide(&self, trigger: &Envelope, placed: &OrderPlaced) -> Result<(), ProcessError> {
        let order_id = placed.order_id;
        let now = Utc::now();
        let mut refusal: Option<Reason> = None;
        for line in &placed.lines {
            let ctx =
                CommandContext::caused_by(trigger, NAME, &format!("reserve:{}", line.listing_id));
            let reserve = ListingCommand::Reserve(ReserveStock {
                order_id,
                buyer_id: placed.buyer_id,
                quantity: Quantity(line.quantity),
                at: now,
            });
            match self
                .handler
                .execute::<Listing>(line.listing_id.0, &ctx, &reserve)
                .await
            {
                Ok(_) => check_fault(&self.fault, "after-reserve")?,
                Err(CommandError::Rejected(e)) => {
                    refusal = Some(listing_reason(&e));
                    break;
                }
                Err(e) => return Err(ProcessError::command(e)),
            }
        }
        self.finish(trigger, placed, refusal).await.map(|_| ())
    }

    /// The rest of a checkout once its lines are reserved (`refusal`: why
    /// one could not be): holds the funds if the order is still PENDING,
    /// records the verdict, and gives back what a REJECTED order holds.
    async fn finish(
        &self,
        trigger: &Envelope,
        placed: &OrderPlaced,
        mut refusal: Option<Reason>,
    ) -> Result<OrderStatus, ProcessError> {
        let order_id = placed.order_id;
        let now = Utc::now();
        // Funds are held only for an order still waiting for its verdict.
        if refusal.is_none() && self.status(placed).await? == OrderStatus::Pending {
            let ctx = CommandContext::caused_by(trigger, NAME, "hold");
            let hold = AccountCommand::Hold(HoldFunds {
                order_id,
                amount: placed.total.clone(),
                at: now,
            });
            match self
                .handler
                .execute::<Account>(placed.buyer_id.0, &ctx, &hold)
                .await
            {
                Ok(_) => check_fault(&self.fault, "after-hold")?,
                Err(CommandError::Rejected(e)) => refusal = Some(account_reason(&e)),
                Err(e) => return Err(ProcessError::command(e)),
            }
        }
        let outcome = match refusal {
            None => CheckoutOutcome::Confirmed { fee: self.fee },
            Some(reason) => CheckoutOutcome::Rejected(reason),
        };
        let ctx = CommandContext::caused_by(trigger, NAME, "verdict");
        let verdict = OrderCommand::CompleteCheckout(CompleteCheckout { outcome, at: now });
        let recorded = match self
            .handler
            .execute::<Order>(order_id.0, &ctx, &verdict)
            .await
        {
            // Ours stands: the state it left says which.
            Ok(done) if done.appended > 0 => Some(done.state.status),
            Ok(_) => None,
            // Decided meanwhile by another instance: its verdict stands.
            Err(CommandError::Rejected(e)) => {
                tracing::info!(order = %order_id, error = %e, "checkout verdict already recorded");
                None
            }
            Err(e) => return Err(ProcessError::command(e)),
        };
        check_fault(&self.fault, "after-verdict")?;
        let status = match recorded {
            Some(status) => status,
            None => self.status(placed).await?,
        };
        if status == OrderStatus::Rejected {
            self.compensate(trigger, placed).await?;
        }
        Ok(status)
    }

    /// Checks out a run of single-line orders for one listing, in log
    /// order: their reservations are decided one after another against the
    /// listing and appended together (first placed, first served); then
    /// each order's hold, verdict and compensation go on side by side, the
    /// orders of one buyer one after another.
    async fn checkout_run(&self, run: &[(&Envelope, &OrderPlaced)]) -> Result<(), ProcessError> {
        // One step span per order; the reservations shared by the run are
        // decided in one batch whose commands each carry their order's.
        let steps: std::collections::HashMap<uuid::Uuid, tracing::Span> = run
            .iter()
            .map(|(trigger, _)| (trigger.event_id, super::step_span(NAME, trigger)))
            .collect();
        let step = |trigger: &Envelope| {
            steps
                .get(&trigger.event_id)
                .cloned()
                .unwrap_or_else(tracing::Span::none)
        };
        self.checkout_run_in_steps(run, &step).await
    }

    async fn checkout_run_in_steps(
        &self,
        run: &[(&Envelope, &OrderPlaced)],
        step: &(dyn Fn(&Envelope) -> tracing::Span + Send + Sync),
    ) -> Result<(), ProcessError> {
        let Some(listing) = run
            .first()
            .and_then(|(_, p)| p.lines.first())
            .map(|l| l.listing_id)
        else {
            return Ok(());
        };
        let statuses =
            futures::future::try_join_all(run.iter().map(|(_, p)| self.status(p))).await?;
        let mut pending = Vec::with_capacity(run.len());
        for (&(trigger, placed), status) in run.iter().zip(statuses) {
            match status {
                OrderStatus::Pending => pending.push((trigger, placed)),
                OrderStatus::Rejected => {
                    self.compensate(trigger, placed)
                        .instrument(step(trigger))
                        .await?
                }
                OrderStatus::Absent
                | OrderStatus::Confirmed
                | OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Cancelled => {}
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Rounds: reserve for every candidate in one append; finish the
        // reserved (and the refused for another reason); an order refused
        // as out of stock waits for the next round if orders before it
        // gave their units back (their buyer could not pay), else it is
        // rejected. So the stock goes to the first placed who can pay.
        let mut candidates = pending;
        loop {
            let now = Utc::now();
            let reserves: Vec<(CommandContext, ListingCommand)> = candidates
                .iter()
                .map(|(trigger, placed)| {
                    let mut ctx =
                        CommandContext::caused_by(trigger, NAME, &format!("reserve:{listing}"));
                    ctx.traceparent = trace::traceparent_of(&step(trigger));
                    (
                        ctx,
                        ListingCommand::Reserve(ReserveStock {
                            order_id: placed.order_id,
                            buyer_id: placed.buyer_id,
                            quantity: Quantity(placed.lines.iter().map(|l| l.quantity).sum()),
                            at: now,
                        }),
                    )
                })
                .collect();
            let reserved = self
                .handler
                .execute_many::<Listing>(listing.0, &reserves)
                .await
                .map_err(ProcessError::command)?;
            let mut waiting = Vec::new();
            let mut decided: Vec<Reserved<'_>> = Vec::new();
            for ((trigger, placed), outcome) in candidates.into_iter().zip(reserved) {
                match outcome {
                    Ok(()) => {
                        check_fault(&self.fault, "after-reserve")?;
                        decided.push((trigger, placed, None));
                    }
                    Err(ListingError::OutOfStock { .. }) => waiting.push((trigger, placed)),
                    Err(e) => decided.push((trigger, placed, Some(listing_reason(&e)))),
                }
            }
            let freed = self.finish_all(decided, step).await?;
            if waiting.is_empty() {
                return Ok(());
            }
            if freed == 0 {
                let out_of_stock = waiting
                    .into_iter()
                    .map(|(t, p)| (t, p, Some(Reason::fixed("out of stock"))))
                    .collect();
                self.finish_all(out_of_stock, step).await?;
                return Ok(());
            }
            candidates = waiting;
        }
    }

    /// Checks out one listing's orders of a batch (with their places in
    /// the batch), in log order; a failure names the first one's place.
    async fn checkout_group(
        &self,
        group: Vec<(usize, &Envelope, &OrderPlaced)>,
    ) -> Result<(), (usize, ProcessError)> {
        let at = group.first().map_or(0, |(i, _, _)| *i);
        let outcome = match group.as_slice() {
            [(_, trigger, placed)] => self.checkout(trigger, placed).await,
            _ => {
                let run: Vec<(&Envelope, &OrderPlaced)> =
                    group.iter().map(|(_, e, p)| (*e, *p)).collect();
                self.checkout_run(&run).await
            }
        };
        outcome.map_err(|e| (at, e))
    }

    /// Finishes orders side by side, those of one buyer one after another;
    /// returns how many that held a reservation ended REJECTED (their units
    /// are back).
    async fn finish_all(
        &self,
        orders: Vec<Reserved<'_>>,
        step: &(dyn Fn(&Envelope) -> tracing::Span + Send + Sync),
    ) -> Result<usize, ProcessError> {
        let mut by_buyer: BTreeMap<AccountId, Vec<Reserved<'_>>> = BTreeMap::new();
        for order in orders {
            by_buyer.entry(order.1.buyer_id).or_default().push(order);
        }
        let freed =
            futures::future::try_join_all(by_buyer.into_values().map(|orders| async move {
                let mut freed = 0;
                for (trigger, placed, refusal) in orders {
                    let reserved = refusal.is_none();
                    let status = self
                        .finish(trigger, placed, refusal)
                        .instrument(step(trigger))
                        .await?;
                    if reserved && status == OrderStatus::Rejected {
                        freed += 1;
                    }
                }
                Ok::<usize, ProcessError>(freed)
            }))
            .await?;
        Ok(freed.into_iter().sum())
    }

    /// Gives back what a REJECTED order holds: every line's reservation and
    /// the buyer's escrow. Each step is a no-op when there is nothing to
    /// give back, so it can run any number of times.
    async fn compensate(
        &self,
        trigger: &Envelope,
        placed: &OrderPlaced,
    ) -> Result<(), ProcessError> {
        let order_id = placed.order_id;
        let now = Utc::now();
        for line in &placed.lines {
            let ctx =
                CommandContext::caused_by(trigger, NAME, &format!("release:{}", line.listing_id));
            let release = ListingCommand::EndReservation(EndReservation {
                order_id,
                outcome: ReservationOutcome::Released,
                at: now,
            });
            match self
                .handler
                .execute::<Listing>(line.listing_id.0, &ctx, &release)
                .await
            {
                Ok(_) | Err(CommandError::Rejected(ListingError::NotFound)) => {}
                Err(e) => return Err(ProcessError::command(e)),
            }
        }
        check_fault(&self.fault, "after-release")?;
        let ctx = CommandContext::caused_by(trigger, NAME, "refund");
        let refund = AccountCommand::Settle(SettleEscrow {
            order_id,
            outcome: EscrowOutcome::Refunded,
            at: now,
        });
        match self
            .handler
            .execute::<Account>(placed.buyer_id.0, &ctx, &refund)
            .await
        {
            // Nothing was held for it (refused before the hold).
            Ok(_) | Err(CommandError::Rejected(AccountError::NoEscrow)) => Ok(()),
            Err(e) => Err(ProcessError::command(e)),
        }
    }
}

/// The order this saga checks out, if `event` places one.
fn placed(event: &Event) -> Option<&OrderPlaced> {
    match event {
        Event::Order(order) => match order {
            OrderEvent::Placed(placed) => Some(placed),
            // Later steps of an order; this saga records them itself.
            OrderEvent::Confirmed(_)
            | OrderEvent::Rejected(_)
            | OrderEvent::Cancelled(_)
            | OrderEvent::Shipped(_)
            | OrderEvent::Delivered(_) => None,
        },
        Event::Account(_)
        | Event::EmailClaim(_)
        | Event::Listing(_)
        | Event::Payment(_)
        | Event::Asset(_)
        | Event::Review(_) => None,
    }
}

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "every other refusal reads the same to the buyer"
)]
pub(crate) fn listing_reason(e: &ListingError) -> Reason {
    match e {
        ListingError::OutOfStock { .. } => Reason::fixed("out of stock"),
        ListingError::OwnListing => Reason::fixed("sellers cannot buy their own listings"),
        _ => Reason::fixed("listing not available"),
    }
}

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "every other refusal reads the same to the buyer"
)]
pub(crate) fn account_reason(e: &AccountError) -> Reason {
    match e {
        AccountError::InsufficientFunds { .. } => Reason::fixed("insufficient funds"),
        _ => Reason::fixed("payment failed"),
    }
}

#[async_trait]
impl ProcessManager for CheckoutSaga {
    fn name(&self) -> &'static str {
        NAME
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

    fn wants(&self, event: &Envelope) -> bool {
        placed(&event.event).is_some()
    }

    /// Orders for the same (first) listing are checked out one after
    /// another, first placed first served; other listings run beside them.
    fn lane(&self, event: &Envelope) -> u64 {
        match placed(&event.event).and_then(|p| p.lines.first()) {
            Some(line) => super::hash(line.listing_id.0.as_bytes()),
            None => super::hash(event.stream_id.as_str().as_bytes()),
        }
    }

    async fn handle(&self, event: &Envelope) -> Result<(), ProcessError> {
        match placed(&event.event) {
            Some(placed) => self.checkout(event, placed).await,
            None => Ok(()),
        }
    }

    /// The single-line orders of a batch are grouped by listing, in log
    /// order within each group, and the groups are checked out side by
    /// side ([`CheckoutSaga::checkout_run`]): first placed, first served
    /// per listing, and no order waits behind another listing's. An order
    /// of several lines is checked out alone, after everything before it
    /// and before everything after it. A failure is reported at the first
    /// order of the earliest group that failed (the steps of any group done
    /// after it are repeated, which changes nothing).
    async fn handle_many(&self, events: &[&Envelope]) -> Result<(), (usize, ProcessError)> {
        let orders: Vec<(usize, &Envelope, &OrderPlaced)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| placed(&e.event).map(|p| (i, *e, p)))
            .collect();
        let single = |p: &OrderPlaced| match p.lines.as_slice() {
            [line] => Some(line.listing_id),
            _ => None,
        };
        let mut k = 0;
        while k < orders.len() {
            let (at, trigger, first) = orders[k];
            if single(first).is_none() {
                self.checkout(trigger, first).await.map_err(|e| (at, e))?;
                k += 1;
                continue;
            }
            let end = orders[k..]
                .iter()
                .position(|(_, _, p)| single(p).is_none())
                .map_or(orders.len(), |n| k + n);
            let mut groups: BTreeMap<ListingId, Vec<(usize, &Envelope, &OrderPlaced)>> =
                BTreeMap::new();
            for &(i, e, p) in &orders[k..end] {
                if let Some(listing) = single(p) {
                    groups.entry(listing).or_default().push((i, e, p));
                }
            }
            let runs: Vec<_> = groups
                .into_values()
                .map(|group| self.checkout_group(group))
                .collect();
            let failed = futures::stream::iter(runs)
                .buffer_unordered(LISTINGS_AT_ONCE)
                .collect::<Vec<Result<(), (usize, ProcessError)>>>()
                .await
                .into_iter()
                .filter_map(Result::err)
                .min_by_key(|(at, _)| *at);
            if let Some(failure) = failed {
                return Err(failure);
            }
            k = end;
        }
        Ok(())
    }
}
