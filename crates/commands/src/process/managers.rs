//! The list of process managers the marketplace runs, written once: `serve`
//! runs these, and so does `marketplace seed` while it seeds.

use std::sync::Arc;

use marketplace_domain::values::FeeRate;

use super::checkout::CheckoutSaga;
use super::deposit::DepositSaga;
use super::payout::PayoutProcess;
use super::ProcessManager;
use crate::handler::CommandHandler;
use crate::payments::PaymentGateway;

/// Every process manager, issuing its commands through `handler`. `fee` is
/// the marketplace fee the checkout saga takes on the digital-only orders it
/// delivers on confirmation; deposits are charged through `gateway`.
pub fn managers(
    handler: &CommandHandler,
    fee: FeeRate,
    gateway: Arc<dyn PaymentGateway>,
) -> Vec<Arc<dyn ProcessManager>> {
    vec![
        Arc::new(CheckoutSaga::new(handler.clone(), fee)),
        Arc::new(PayoutProcess::new(handler.clone())),
        Arc::new(DepositSaga::new(handler.clone(), gateway)),
    ]
}
