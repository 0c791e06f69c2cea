//! Finding an account by email on the write side, for login: the email's
//! claim stream names the account, whose stream holds the password hash.
//! Reading the log (not a read model) means a login right after registering
//! never fails because a projection lags.

use marketplace_domain::account::Account;
use marketplace_domain::email_claim::{claim_id, EmailClaim};
use marketplace_domain::values::Email;

use crate::handler::{CommandHandler, LoadError};

/// The registered account holding `email`, if any.
pub async fn find_account_by_email(
    handler: &CommandHandler,
    email: &Email,
) -> Result<Option<Account>, LoadError> {
    let claim = handler.load::<EmailClaim>(claim_id(email)).await?;
    let Some(holder) = claim.state.claimant else {
        return Ok(None);
    };
    let account = handler.load::<Account>(holder.0).await?.state;
    Ok(account
        .is_registered()
        .then_some(account)
        .filter(|a| a.email.as_ref() == Some(email)))
}
