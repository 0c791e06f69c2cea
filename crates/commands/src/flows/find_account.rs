//! Finding an account by email on the write side, for login: the email's
//! claim stream names the account, whose stream holds the password hash.
//! Reading the log (not a read model) means a login right after registering
//! never fails because a projection lags.
//!
//! The claim stream is named by the keyed digest of the email; a claim made
//! before digests (a stream named by the unkeyed uuid v5) is looked up when
//! there is none.

use marketplace_domain::account::Account;
use marketplace_domain::email_claim::{claim_id, legacy_claim_id, EmailClaim};
use marketplace_domain::values::Email;
use uuid::Uuid;

use crate::handler::{CommandHandler, LoadError};

/// The claim stream ids of `email`: keyed (written now), then legacy.
pub fn claim_streams(handler: &CommandHandler, email: &Email) -> [Uuid; 2] {
    [
        claim_id(&handler.email_index().digest(email)),
        legacy_claim_id(email),
    ]
}

/// The registered, not erased, account holding `email`, if any.
pub async fn find_account_by_email(
    handler: &CommandHandler,
    email: &Email,
) -> Result<Option<Account>, LoadError> {
    for stream in claim_streams(handler, email) {
        let claim = handler.load::<EmailClaim>(stream).await?;
        let Some(holder) = claim.state.claimant else {
            continue;
        };
        let account = handler.load::<Account>(holder.0).await?.state;
        return Ok(account
            .is_registered()
            .then_some(account)
            .filter(|a| a.email.as_ref() == Some(email)));
    }
    Ok(None)
}
