//! The payout process: settles what the checkout saga set up, once the
//! order moves on.
//!
//! - `order.shipped`: the order's reservations are committed as sold.
//! - `order.delivered`: the buyer's escrow is released, the seller is
//!   credited the payout and the fee account the fee (the amounts were fixed
//!   on the order's `order.delivered`, so a repeat credits the same).
//! - `order.cancelled`: the escrow is refunded and the stock released.
//!
//! Each step is idempotent per order, so a repeat after a crash is harmless.

use async_trait::async_trait;
use chrono::Utc;
use marketplace_consumers::Envelope;
use marketplace_domain::account::{
    Account, AccountCommand, CreditSale, EscrowOutcome, SaleShare, SettleEscrow,
};
use marketplace_domain::listing::{EndReservation, Listing, ListingCommand, ReservationOutcome};
use marketplace_domain::order::{Order, OrderCancelled, OrderDelivered, OrderEvent, OrderShipped};
use marketplace_domain::values::{OrderId, FEE_ACCOUNT_ID};
use marketplace_domain::{Aggregate, AggregateKind, Event};

use super::{check_fault, FaultHook, ProcessError, ProcessManager};
use crate::handler::{CommandContext, CommandError, CommandHandler};

/// Name of the process (its checkpoint key and the actor of its commands).
pub const NAME: &str = "payout";

/// The payout process.
pub struct PayoutProcess {
    handler: CommandHandler,
    fault: Option<FaultHook>,
}

impl std::fmt::Debug for PayoutProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutProcess").finish()
    }
}

impl PayoutProcess {
    /// A process issuing commands through `handler`.
    pub fn new(handler: CommandHandler) -> Self {
        Self {
            handler,
            fault: None,
        }
    }

    /// Adds a fault hook (tests of crash recovery).
    pub fn with_fault(mut self, fault: FaultHook) -> Self {
        self.fault = Some(fault);
        self
    }

    async fn step<A: Aggregate>(
        &self,
        trigger: &Envelope,
        step: &str,
        id: uuid::Uuid,
        command: A::Command,
    ) -> Result<(), ProcessError> {
        let ctx = CommandContext::caused_by(trigger, NAME, step);
        match self.handler.execute::<A>(id, &ctx, &command).await {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(e)) => {
                // A refusal here means the books disagree with the order
                // (e.g. no escrow to settle): surfaced loudly, retried, never
                // skipped silently.
                Err(ProcessError::Command(format!("{step} refused: {e}")))
            }
            Err(e) => Err(ProcessError::command(e)),
        }
    }

    async fn end_reservations(
        &self,
        trigger: &Envelope,
        order_id: OrderId,
        outcome: ReservationOutcome,
    ) -> Result<(), ProcessError> {
        let order = self.handler.load::<Order>(order_id.0).await?;
        for line in &order.state.lines {
            self.step::<Listing>(
                trigger,
                &format!("end-reservation:{}", line.listing_id),
                line.listing_id.0,
                ListingCommand::EndReservation(EndReservation {
                    order_id,
                    outcome,
                    at: Utc::now(),
                }),
            )
            .await?;
        }
        Ok(())
    }

    async fn shipped(&self, trigger: &Envelope, e: &OrderShipped) -> Result<(), ProcessError> {
        self.end_reservations(trigger, e.order_id, ReservationOutcome::Committed)
            .await
    }

    async fn delivered(&self, trigger: &Envelope, e: &OrderDelivered) -> Result<(), ProcessError> {
        let now = Utc::now();
        self.step::<Account>(
            trigger,
            "release",
            e.buyer_id.0,
            AccountCommand::Settle(SettleEscrow {
                order_id: e.order_id,
                outcome: EscrowOutcome::Released,
                at: now,
            }),
        )
        .await?;
        check_fault(&self.fault, "after-release")?;
        self.step::<Account>(
            trigger,
            "payout",
            e.seller_id.0,
            AccountCommand::Credit(CreditSale {
                order_id: e.order_id,
                amount: e.payout.clone(),
                share: SaleShare::Payout,
                at: now,
            }),
        )
        .await?;
        check_fault(&self.fault, "after-payout")?;
        if e.fee.minor > 0 {
            self.step::<Account>(
                trigger,
                "fee",
                FEE_ACCOUNT_ID.0,
                AccountCommand::Credit(CreditSale {
                    order_id: e.order_id,
                    amount: e.fee.clone(),
                    share: SaleShare::Fee,
                    at: now,
                }),
            )
            .await?;
        }
        Ok(())
    }

    async fn cancelled(&self, trigger: &Envelope, e: &OrderCancelled) -> Result<(), ProcessError> {
        let order = self.handler.load::<Order>(e.order_id.0).await?;
        if let Some(buyer) = order.state.buyer_id {
            self.step::<Account>(
                trigger,
                "refund",
                buyer.0,
                AccountCommand::Settle(SettleEscrow {
                    order_id: e.order_id,
                    outcome: EscrowOutcome::Refunded,
                    at: Utc::now(),
                }),
            )
            .await?;
        }
        check_fault(&self.fault, "after-refund")?;
        self.end_reservations(trigger, e.order_id, ReservationOutcome::Released)
            .await
    }
}

/// What the payout process settles.
enum Settle<'a> {
    Shipped(&'a OrderShipped),
    Delivered(&'a OrderDelivered),
    Cancelled(&'a OrderCancelled),
}

/// What `event` calls for, if anything.
fn settle(event: &Event) -> Option<Settle<'_>> {
    match event {
        Event::Order(order) => match order {
            OrderEvent::Shipped(e) => Some(Settle::Shipped(e)),
            OrderEvent::Delivered(e) => Some(Settle::Delivered(e)),
            OrderEvent::Cancelled(e) => Some(Settle::Cancelled(e)),
            // The checkout saga's part of an order.
            OrderEvent::Placed(_) | OrderEvent::Confirmed(_) | OrderEvent::Rejected(_) => None,
        },
        Event::Account(_)
        | Event::EmailClaim(_)
        | Event::Listing(_)
        | Event::Payment(_)
        | Event::Asset(_)
        | Event::Review(_) => None,
    }
}

#[async_trait]
impl ProcessManager for PayoutProcess {
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
        settle(&event.event).is_some()
    }

    async fn handle(&self, event: &Envelope) -> Result<(), ProcessError> {
        match settle(&event.event) {
            Some(Settle::Shipped(e)) => self.shipped(event, e).await,
            Some(Settle::Delivered(e)) => self.delivered(event, e).await,
            Some(Settle::Cancelled(e)) => self.cancelled(event, e).await,
            None => Ok(()),
        }
    }
}
