//! Deposits through the payment gateway: the `PaymentIntent` type, the
//! `paymentIntent` query, and what `depositFunds` does.
//!
//! `depositFunds` refuses at once, with `UNAVAILABLE` and the seconds
//! until the breaker lets a call through, while the gateway's breaker is
//! open (nothing is recorded). Otherwise it records the intent, which the
//! deposit saga charges, and waits (bounded) for it to settle; on success
//! it credits the wallet itself — the very event the saga would append,
//! recognised by the store whoever comes second — so the consistency token
//! it returns covers the credit. An intent still pending when the wait
//! ends is returned PENDING: clients follow it with `paymentIntent` or the
//! `paymentIntentUpdated` subscription, as they follow orders. An intent
//! the charging process's breaker refused before sending anything (in a
//! split deployment the saga runs in a projector process, with its own
//! breaker) is answered `UNAVAILABLE` as well, with the cool-down as
//! `Retry-After`.
//!
//! Intents are read from the write side (one short stream per intent),
//! visible to their account and to ADMINs.

use std::time::Duration;

use async_graphql::{Context, Enum, Object, ID};
use chrono::{DateTime, Utc};
use marketplace_commands::flows::deposit;
use marketplace_commands::CommandContext;
use marketplace_domain::payment::{
    CreateIntent, FailureKind, PaymentCommand, PaymentError, PaymentIntent as IntentState,
    PaymentStatus,
};
use marketplace_domain::values::{Money as DomainMoney, PaymentIntentId, ProviderRef, Role};
use marketplace_store::{IdempotencyKey, Position};
use tokio::time::Instant;
use uuid::Uuid;

use super::commerce::{run_keyed, CommandResult};
use super::types::{parse_id, Money};
use super::Viewer;
use crate::auth::Claims;
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::retry_after_seconds;
use crate::state::AppState;

/// Where a payment intent stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum PaymentIntentStatus {
    /// Recorded; the provider has not answered for good yet.
    Pending,
    /// Captured: the wallet is credited.
    Succeeded,
    /// Declined, or not confirmed in time (`failureReason` says which).
    Failed,
}

/// One deposit's charge at the payment provider.
#[derive(Clone, Debug)]
pub struct PaymentIntent(pub IntentState);

#[Object]
impl PaymentIntent {
    /// Its id.
    async fn id(&self) -> ID {
        ID(self.0.id.map(|i| i.0.to_string()).unwrap_or_default())
    }

    /// Where it stands.
    async fn status(&self) -> PaymentIntentStatus {
        match self.0.status {
            Some(PaymentStatus::Succeeded) => PaymentIntentStatus::Succeeded,
            Some(PaymentStatus::Failed) => PaymentIntentStatus::Failed,
            Some(PaymentStatus::Pending) | None => PaymentIntentStatus::Pending,
        }
    }

    /// The amount to credit.
    async fn amount(&self) -> Option<Money> {
        self.0
            .amount
            .as_ref()
            .map(|m| Money::from_minor(m.minor, m.currency.as_str()))
    }

    /// Why it failed (FAILED only).
    async fn failure_reason(&self) -> Option<String> {
        self.0.failure.as_ref().map(|(_, r)| r.to_string())
    }

    /// The card's last four digits, if the provider reported them. No other
    /// card data is ever stored.
    async fn card_last4(&self) -> Option<String> {
        self.0.last4.as_ref().map(ToString::to_string)
    }

    /// When it was recorded.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        self.0.created_at
    }

    /// When it last changed.
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.0.updated_at
    }
}

/// Whether `viewer` may see `intent`.
pub fn may_see_intent(viewer: &Claims, intent: &IntentState) -> bool {
    intent.account_id.is_some_and(|a| a.0 == viewer.sub) || viewer.has(Role::Admin)
}

/// Loads intent `id` for `viewer`, `None` if absent or not theirs.
pub async fn visible_intent(
    state: &AppState,
    viewer: &Claims,
    id: Uuid,
) -> ApiResult<Option<(IntentState, Position)>> {
    let loaded = state
        .handler
        .load::<IntentState>(id)
        .await
        .map_err(ApiError::internal)?;
    Ok(
        (loaded.state.id.is_some() && may_see_intent(viewer, &loaded.state))
            .then_some((loaded.state, loaded.position)),
    )
}

/// Queries over payment intents.
#[derive(Debug, Default)]
pub struct PaymentQuery;

#[Object]
impl PaymentQuery {
    /// One payment intent: for its account, or an ADMIN.
    async fn payment_intent(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<PaymentIntent>> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?.require()?;
        let id = parse_id(&id, "id")?;
        Ok(visible_intent(state, viewer, id)
            .await?
            .map(|(intent, _)| PaymentIntent(intent)))
    }
}

fn payment_error(e: PaymentError) -> ApiError {
    match e {
        PaymentError::AlreadyExists
        | PaymentError::AlreadyDeclined
        | PaymentError::NeverCharged => ApiError::Conflict(e.to_string()),
        PaymentError::NotFound => ApiError::NotFound(e.to_string()),
        PaymentError::NonPositiveAmount => ApiError::BadUserInput(e.to_string()),
    }
}

/// `depositFunds`: see the module documentation. `key` is the scoped
/// idempotency key (the intent's id derives from it).
pub(crate) async fn deposit_funds(
    state: &AppState,
    claims: &Claims,
    money: DomainMoney,
    payment_token: Option<String>,
    intent_id: Uuid,
    cctx: CommandContext,
    key: Option<IdempotencyKey>,
) -> ApiResult<CommandResult> {
    let payment_token = payment_token
        .as_deref()
        .map(ProviderRef::parse)
        .transpose()?;
    // What the credit will check, checked before anything is charged: a
    // capture the wallet could not take would be money in limbo.
    let wallet = state
        .handler
        .load::<marketplace_domain::account::Account>(claims.sub)
        .await
        .map_err(ApiError::internal)?;
    if !wallet.state.is_registered() {
        return Err(ApiError::NotFound("account not found".into()));
    }
    if wallet
        .state
        .balance(&money.currency)
        .checked_add(&money)
        .is_none()
    {
        return Err(ApiError::BadUserInput("the amount is too large".into()));
    }
    if let Some(wait) = state.payments.gateway.refuses() {
        return Err(ApiError::Unavailable {
            message: "the payment provider is unavailable; retry later".into(),
            retry_after_seconds: retry_after_seconds(wait),
        });
    }
    // Watch before writing: every later event of the intent is reported.
    let mut changes = state.live.watch_order(intent_id);
    let command = PaymentCommand::Create(CreateIntent {
        intent_id: PaymentIntentId(intent_id),
        account_id: marketplace_domain::values::AccountId(claims.sub),
        amount: money,
        payment_token,
        at: Utc::now(),
    });
    let (_, mut position) =
        run_keyed::<IntentState>(state, intent_id, &cctx, &command, key, payment_error).await?;
    let deadline = Instant::now() + state.payments.settle_wait;
    let intent = loop {
        let loaded = state
            .handler
            .load::<IntentState>(intent_id)
            .await
            .map_err(ApiError::internal)?;
        position = position.max(loaded.position);
        if loaded.state.status != Some(PaymentStatus::Pending) {
            break loaded.state;
        }
        let wake = tokio::time::timeout_at(deadline, changes.changed()).await;
        match wake {
            Ok(Ok(())) => {}
            // The deadline passed, or no feed runs here: poll once more
            // at most, briefly, then answer with what is recorded.
            Ok(Err(_)) | Err(_) => {
                if Instant::now() >= deadline {
                    break loaded.state;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The breaker of the process that charges (this one, or a projector
    // process in a split deployment) refused before sending anything: the
    // same answer as this process's own fast-fail.
    if matches!(intent.failure, Some((FailureKind::NotAttempted, _))) {
        let wait = state
            .payments
            .gateway
            .refuses()
            .unwrap_or(state.payments.cool_down);
        return Err(ApiError::Unavailable {
            message: "the payment provider is unavailable; retry later".into(),
            retry_after_seconds: retry_after_seconds(wait),
        });
    }
    let credited = deposit::credit(&state.handler, &intent, &cctx)
        .await
        .map_err(|e| match e {
            marketplace_commands::CommandError::Rejected(refusal) => {
                ApiError::Conflict(format!("the deposit could not be credited: {refusal}"))
            }
            e => ApiError::internal(format!("credit: {e}")),
        })?;
    if let Some(done) = credited {
        position = position.max(done.position);
    }
    Ok(CommandResult {
        consistency_token: position.to_string(),
        payment_intent: Some(PaymentIntent(intent)),
    })
}
