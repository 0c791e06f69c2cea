//! `eraseAccount`: crypto-shredding an account's personal data (GDPR
//! art. 17), for its owner or an ADMIN.
//!
//! The data key is destroyed first, then `account.erased` is appended: if
//! the process dies between the two, the personal data is already
//! unreadable everywhere and a retry appends the event (erasing an erased
//! account's key again is a no-op). The read models drop what they showed
//! when they fold `account.erased`, in the transaction that moves their
//! checkpoint; orders, money and reviews stay.

use async_graphql::{Context, Object, ID};
use chrono::Utc;
use marketplace_commands::CommandContext;
use marketplace_domain::account::{Account as AccountAggregate, AccountCommand, EraseAccount};
use marketplace_domain::values::{AccountId, Role};

use super::commerce::CommandResult;
use super::mutation::command_error;
use super::types::parse_id;
use super::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The erasure mutation.
#[derive(Debug, Default)]
pub struct ErasureMutation;

#[Object]
impl ErasureMutation {
    /// Erases an account's personal data (its owner or an ADMIN): the email,
    /// display name and password hash become unreadable in every event and
    /// read model, the account can no longer sign in, and its email is free
    /// for a new registration. Orders, money and reviews stay.
    async fn erase_account(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CommandResult> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        let account_id = parse_id(&id, "id")?;
        if claims.sub != account_id && !claims.has(Role::Admin) {
            return Err(ApiError::Forbidden(
                "only the account's owner or an admin may erase it".into(),
            ));
        }
        let account = state
            .handler
            .load::<AccountAggregate>(account_id)
            .await
            .map_err(ApiError::internal)?;
        if !account.state.is_registered() {
            return Err(ApiError::NotFound("account not found".into()));
        }
        state
            .keyring
            .erase(account_id)
            .await
            .map_err(ApiError::internal)?;
        let done = state
            .handler
            .execute::<AccountAggregate>(
                account_id,
                &CommandContext::new(claims.sub.to_string()),
                &AccountCommand::Erase(EraseAccount {
                    by: AccountId(claims.sub),
                    at: Utc::now(),
                }),
            )
            .await
            .map_err(|e| {
                command_error(e, |r| match r {
                    marketplace_domain::account::AccountError::NotFound => {
                        ApiError::NotFound("account not found".into())
                    }
                    other => ApiError::Conflict(other.to_string()),
                })
            })?;
        state.roles.forget(account_id);
        // The account id only: nothing personal goes to the logs.
        tracing::info!(account = %account_id, by = %claims.sub, "account erased");
        Ok(CommandResult {
            consistency_token: done.position.to_string(),
            payment_intent: None,
        })
    }
}
