//! Settling a deposit's payment intent: recording the provider's answer
//! and crediting the wallet, exactly once.
//!
//! Three parties may learn the answer — the deposit saga (the gateway's
//! reply), the provider's callback (possibly twice), and a retry that races
//! a late success — and each calls [`settle`]. The intent succeeds at most
//! once (its `decide` turns a repeated success into nothing), and the credit
//! is an `account.funds_deposited` whose event ids derive from the intent
//! alone ([`credit_context`]), so whoever appends it second, and whenever,
//! is recognised by the store as the same append. The account keeps no set
//! of the deposits it has seen.

use chrono::Utc;
use marketplace_domain::account::{Account, AccountCommand, AccountError, DepositFunds};
use marketplace_domain::payment::{
    FailureKind, PaymentCommand, PaymentError, PaymentIntent, PaymentStatus, RecordFailure,
    RecordSuccess,
};
use marketplace_domain::values::{PaymentIntentId, Reason};
use marketplace_store::Position;
use uuid::Uuid;

use crate::handler::{CommandContext, CommandError, CommandHandler, Executed};
use crate::payments::ChargeOutcome;

/// Why settling failed.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// Recording the answer on the intent failed.
    #[error("payment intent: {0}")]
    Intent(CommandError<PaymentError>),
    /// Crediting the wallet failed.
    #[error("credit: {0}")]
    Credit(CommandError<AccountError>),
}

/// The context of the credit for `intent`: its event ids derive from the
/// intent, so every party that credits it appends the very same event.
pub fn credit_context(intent: PaymentIntentId, correlation: &CommandContext) -> CommandContext {
    CommandContext {
        correlation_id: correlation.correlation_id,
        causation_id: correlation.causation_id,
        actor: correlation.actor.clone(),
        idempotency_key: None,
        event_id_seed: Some(Uuid::new_v5(&intent.0, b"credit")),
        traceparent: correlation.traceparent.clone(),
    }
}

/// Credits the wallet of a succeeded intent (a no-op for one that has not
/// succeeded). Safe to repeat, concurrently too.
pub async fn credit(
    handler: &CommandHandler,
    intent: &PaymentIntent,
    ctx: &CommandContext,
) -> Result<Option<Executed<Account>>, CommandError<AccountError>> {
    let (Some(id), Some(account), Some(amount), Some(PaymentStatus::Succeeded)) = (
        intent.id,
        intent.account_id,
        intent.amount.clone(),
        intent.status,
    ) else {
        return Ok(None);
    };
    let command = AccountCommand::Deposit(DepositFunds {
        deposit_id: id.0,
        amount,
        at: intent.updated_at.unwrap_or_else(Utc::now),
    });
    handler
        .execute::<Account>(account.0, &credit_context(id, ctx), &command)
        .await
        .map(Some)
}

/// What settling left.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The intent after the answer.
    pub intent: PaymentIntent,
    /// The position of the last event written or found (the credit's, when
    /// there is one): the consistency token.
    pub position: Position,
}

/// Records `outcome` on intent `id` and, on a capture, credits the wallet.
/// A pending outcome records nothing. `ctx` is the intent step's context
/// (a saga's seeded one, or a callback's).
pub async fn settle(
    handler: &CommandHandler,
    id: PaymentIntentId,
    outcome: &ChargeOutcome,
    ctx: &CommandContext,
) -> Result<Settled, SettleError> {
    let command = match outcome {
        ChargeOutcome::Captured { charge_ref, last4 } => {
            PaymentCommand::RecordSuccess(RecordSuccess {
                charge_ref: charge_ref.clone(),
                last4: last4.clone(),
                at: Utc::now(),
            })
        }
        ChargeOutcome::Declined { reason } => PaymentCommand::RecordFailure(RecordFailure {
            kind: FailureKind::Declined,
            reason: reason.clone(),
            at: Utc::now(),
        }),
        ChargeOutcome::Pending => {
            let loaded = handler
                .load::<PaymentIntent>(id.0)
                .await
                .map_err(|e| SettleError::Intent(e.into()))?;
            return Ok(Settled {
                intent: loaded.state,
                position: loaded.position,
            });
        }
    };
    let done = handler
        .execute::<PaymentIntent>(id.0, ctx, &command)
        .await
        .map_err(SettleError::Intent)?;
    let mut position = done.position;
    if let Some(credited) = credit(handler, &done.state, ctx)
        .await
        .map_err(SettleError::Credit)?
    {
        position = position.max(credited.position);
    }
    Ok(Settled {
        intent: done.state,
        position,
    })
}

/// Records that intent `id` got no answer: it fails as unconfirmed (no
/// answer before the deadline; a late success still credits) or as not
/// attempted (the breaker refused before anything was sent). A no-op once
/// settled.
pub async fn give_up(
    handler: &CommandHandler,
    id: PaymentIntentId,
    kind: FailureKind,
    reason: Reason,
    ctx: &CommandContext,
) -> Result<Executed<PaymentIntent>, CommandError<PaymentError>> {
    let command = PaymentCommand::RecordFailure(RecordFailure {
        kind,
        reason,
        at: Utc::now(),
    });
    handler.execute::<PaymentIntent>(id.0, ctx, &command).await
}
