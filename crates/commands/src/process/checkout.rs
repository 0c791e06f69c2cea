//! The checkout saga: `order.placed` → reserve stock for every line, hold
//! the buyer's funds, confirm; on any refusal reject the order with the
//! reason, then give back whatever it holds (reservations, escrow).
//!
//! Every step is idempotent: reserving or holding again for the same order
//! is a no-op, releasing what is not reserved is a no-op, and the verdict is
//! recorded once. So after a crash at any point, handling the same
//! `order.placed` again finishes the job without doing anything twice, and
//! a rejected order never leaves stock reserved.

use async_trait::async_trait;
use chrono::Utc;
use marketplace_consumers::Envelope;
use marketplace_domain::account::{
    Account, AccountCommand, AccountError, EscrowOutcome, HoldFunds, SettleEscrow,
};
use marketplace_domain::listing::{
    EndReservation, Listing, ListingCommand, ListingError, ReservationOutcome, ReserveStock,
};
use marketplace_domain::order::{
    CheckoutOutcome, CompleteCheckout, Order, OrderCommand, OrderEvent, OrderPlaced, OrderStatus,
};
use marketplace_domain::values::{FeeRate, Quantity, Reason};
use marketplace_domain::{AggregateKind, Event};

use super::{check_fault, FaultHook, ProcessError, ProcessManager};
use crate::handler::{CommandContext, CommandError, CommandHandler};

/// Name of the saga (its checkpoint key and the actor of its commands).
pub const NAME: &str = "checkout";

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
        match self
            .handler
            .execute::<Order>(order_id.0, &ctx, &verdict)
            .await
        {
            Ok(_) => {}
            // Decided meanwhile by another instance: its verdict stands.
            Err(CommandError::Rejected(e)) => {
                tracing::info!(order = %order_id, error = %e, "checkout verdict already recorded")
            }
            Err(e) => return Err(ProcessError::command(e)),
        }
        check_fault(&self.fault, "after-verdict")?;
        if self.status(placed).await? == OrderStatus::Rejected {
            self.compensate(trigger, placed).await?;
        }
        Ok(())
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
        Event::Account(_) | Event::EmailClaim(_) | Event::Listing(_) | Event::Review(_) => None,
    }
}

#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "every other refusal reads the same to the buyer"
)]
fn listing_reason(e: &ListingError) -> Reason {
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
fn account_reason(e: &AccountError) -> Reason {
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
}
