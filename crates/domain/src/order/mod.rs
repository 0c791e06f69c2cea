//! The order aggregate: what a buyer bought, at which prices, and where the
//! order is between placement and delivery.
//!
//! `PlaceOrder` records the lines with the unit prices of that moment and
//! leaves the order PENDING. The checkout saga (in `commands`) reserves
//! stock and holds funds, then records its verdict with `CompleteCheckout`:
//! CONFIRMED, or REJECTED with a reason. Digital-only orders are delivered
//! on confirmation. Afterwards the buyer may cancel before shipping, the
//! seller ships, and the buyer confirms delivery, which splits the escrow
//! into the seller's payout and the marketplace fee.
//!
//! An order holds the listings of one seller and is paid in one currency; a
//! cart spanning several sellers becomes one order per seller.

mod command;
mod error;
mod event;
mod state;

pub use command::{
    CheckoutOutcome, CompleteCheckout, Fulfil, LineSpec, OrderCommand, PlaceOrder, Step,
};
pub use error::OrderError;
pub use event::{
    OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderPlaced, OrderRejected,
    OrderShipped,
};
pub use state::{Order, OrderStatus};

use chrono::{DateTime, Utc};

use crate::aggregate::Aggregate;
use crate::values::{FeeRate, Money, OrderId, Reason, Role};

/// Most lines in one order.
pub const MAX_LINES: usize = 50;

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place(c) => place(self, c),
            OrderCommand::CompleteCheckout(c) => {
                let id = self.id.ok_or(OrderError::NotFound)?;
                match (&c.outcome, self.status) {
                    (CheckoutOutcome::Confirmed { fee }, OrderStatus::Pending) => {
                        let mut events = vec![OrderConfirmed {
                            order_id: id,
                            confirmed_at: c.at,
                        }
                        .into()];
                        if self.is_digital_only() {
                            events.push(self.delivered(id, *fee, c.at)?);
                        }
                        Ok(events)
                    }
                    (CheckoutOutcome::Rejected(reason), OrderStatus::Pending) => {
                        Ok(vec![OrderRejected {
                            order_id: id,
                            reason: reason.clone(),
                            rejected_at: c.at,
                        }
                        .into()])
                    }
                    // The verdict is already recorded: a repeated step.
                    (CheckoutOutcome::Rejected(_), OrderStatus::Rejected)
                    | (
                        CheckoutOutcome::Confirmed { .. },
                        OrderStatus::Confirmed
                        | OrderStatus::Shipped
                        | OrderStatus::Delivered
                        | OrderStatus::Cancelled,
                    ) => Ok(vec![]),
                    (_, status) => Err(OrderError::WrongStatus { status }),
                }
            }
            OrderCommand::Fulfil(c) => {
                let id = self.id.ok_or(OrderError::NotFound)?;
                let is_buyer = self.buyer_id == Some(c.actor.account_id);
                let is_seller = self.seller_id == Some(c.actor.account_id);
                match &c.step {
                    Step::Cancel => {
                        if !is_buyer {
                            return Err(OrderError::NotTheBuyer);
                        }
                        self.expect(OrderStatus::Confirmed)?;
                        Ok(vec![OrderCancelled {
                            order_id: id,
                            reason: Reason::fixed("cancelled by the buyer"),
                            cancelled_at: c.at,
                        }
                        .into()])
                    }
                    Step::Ship(tracking_code) => {
                        if !is_seller {
                            return Err(OrderError::NotTheSeller);
                        }
                        if self.is_digital_only() {
                            return Err(OrderError::NothingToShip);
                        }
                        self.expect(OrderStatus::Confirmed)?;
                        Ok(vec![OrderShipped {
                            order_id: id,
                            tracking_code: tracking_code.clone(),
                            shipped_at: c.at,
                        }
                        .into()])
                    }
                    Step::ConfirmDelivery(fee) => {
                        if !is_buyer {
                            return Err(OrderError::NotTheBuyer);
                        }
                        self.expect(OrderStatus::Shipped)?;
                        Ok(vec![self.delivered(id, *fee, c.at)?])
                    }
                }
            }
        }
    }

    fn evolve(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::Placed(e) => {
                self.id = Some(e.order_id);
                self.buyer_id = Some(e.buyer_id);
                self.seller_id = Some(e.seller_id);
                self.lines = e.lines.clone();
                self.total = Some(e.total.clone());
                self.status = OrderStatus::Pending;
                self.placed_at = Some(e.placed_at);
                self.updated_at = Some(e.placed_at);
            }
            OrderEvent::Confirmed(e) => {
                self.status = OrderStatus::Confirmed;
                self.updated_at = Some(e.confirmed_at);
            }
            OrderEvent::Rejected(e) => {
                self.status = OrderStatus::Rejected;
                self.status_reason = Some(e.reason.clone());
                self.updated_at = Some(e.rejected_at);
            }
            OrderEvent::Cancelled(e) => {
                self.status = OrderStatus::Cancelled;
                self.status_reason = Some(e.reason.clone());
                self.updated_at = Some(e.cancelled_at);
            }
            OrderEvent::Shipped(e) => {
                self.status = OrderStatus::Shipped;
                self.tracking_code = e.tracking_code.clone();
                self.updated_at = Some(e.shipped_at);
            }
            OrderEvent::Delivered(e) => {
                self.status = OrderStatus::Delivered;
                self.updated_at = Some(e.delivered_at);
            }
        }
        self
    }
}

impl Order {
    fn expect(&self, status: OrderStatus) -> Result<(), OrderError> {
        if self.status == status {
            Ok(())
        } else {
            Err(OrderError::WrongStatus {
                status: self.status,
            })
        }
    }

    fn delivered(
        &self,
        id: OrderId,
        fee: FeeRate,
        at: DateTime<Utc>,
    ) -> Result<OrderEvent, OrderError> {
        let (Some(buyer_id), Some(seller_id), Some(total)) =
            (self.buyer_id, self.seller_id, self.total.as_ref())
        else {
            return Err(OrderError::NotFound);
        };
        let (payout, fee) = fee.split(total);
        Ok(OrderDelivered {
            order_id: id,
            buyer_id,
            seller_id,
            payout,
            fee,
            delivered_at: at,
        }
        .into())
    }
}

fn place(order: &Order, c: &PlaceOrder) -> Result<Vec<OrderEvent>, OrderError> {
    if order.status != OrderStatus::Absent {
        return Err(OrderError::AlreadyPlaced);
    }
    if !c.buyer.has(Role::Buyer) {
        return Err(OrderError::NotABuyer);
    }
    let first = c.lines.first().ok_or(OrderError::NoLines)?;
    if c.lines.len() > MAX_LINES {
        return Err(OrderError::TooManyLines);
    }
    let mut total = Money::zero(first.unit_price.currency.clone());
    let mut seen = std::collections::HashSet::new();
    for line in &c.lines {
        if !seen.insert(line.listing_id) {
            return Err(OrderError::DuplicateLine);
        }
        if line.quantity == 0 {
            return Err(OrderError::NonPositiveQuantity);
        }
        if line.seller_id != first.seller_id {
            return Err(OrderError::SeveralSellers);
        }
        if line.seller_id == c.buyer.account_id {
            return Err(OrderError::OwnListing);
        }
        if line.unit_price.currency != total.currency {
            return Err(OrderError::MixedCurrencies);
        }
        total = line
            .unit_price
            .checked_times(line.quantity)
            .and_then(|sub| total.checked_add(&sub))
            .ok_or(OrderError::TotalTooLarge)?;
    }
    Ok(vec![OrderPlaced {
        order_id: c.order_id,
        buyer_id: c.buyer.account_id,
        seller_id: first.seller_id,
        lines: c.lines.clone(),
        total,
        placed_at: c.at,
    }
    .into()])
}

#[cfg(test)]
mod tests;
