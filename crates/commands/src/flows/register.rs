//! Registering an account: claim the email, then open the account.
//!
//! The claim stream (`email-<uuid of the email's keyed digest>`) is what
//! makes emails unique: two registrations racing for one email conflict on
//! it, and the loser's retry sees the winner's claim and is refused
//! `EmailTaken`. A claim made before digests (a legacy stream named by the
//! unkeyed uuid v5) still counts while its account holds the email. A claim
//! whose account was erased is free at once.

use chrono::{DateTime, Utc};
use marketplace_domain::account::{
    Account, AccountCommand, AccountError, RegisterAccount, RegistrationChannel,
};
use marketplace_domain::email_claim::{ClaimEmail, EmailClaim, EmailClaimCommand, EmailClaimError};
use marketplace_domain::values::{AccountId, DisplayName, Email, PasswordHash, Role};
use marketplace_domain::Aggregate;
use marketplace_store::Position;
use uuid::Uuid;

use crate::flows::find_account::claim_streams;
use crate::handler::{CommandContext, CommandError, CommandHandler, LoadError};

/// What a new account is opened with.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Normalised email.
    pub email: Email,
    /// Public name.
    pub display_name: DisplayName,
    /// argon2 hash of the password.
    pub password_hash: PasswordHash,
    /// Requested roles (empty: BUYER).
    pub roles: Vec<Role>,
    /// Self-service or operator.
    pub channel: RegistrationChannel,
}

/// A registered account.
#[derive(Clone, Debug)]
pub struct Registered {
    /// Its id.
    pub account_id: AccountId,
    /// Its state.
    pub account: Account,
    /// Consistency token.
    pub position: Position,
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The email belongs to another account.
    #[error(transparent)]
    EmailTaken(EmailClaimError),
    /// The account aggregate refused.
    #[error(transparent)]
    Rejected(AccountError),
    /// Contention or infrastructure failure.
    #[error("{0}")]
    Failed(String, #[source] Option<marketplace_store::StoreError>),
    /// Retries ran out.
    #[error("too much contention registering this email; try again")]
    Conflict,
}

impl From<LoadError> for RegisterError {
    fn from(e: LoadError) -> Self {
        RegisterError::from(CommandError::<std::convert::Infallible>::from(e))
    }
}

impl<E: std::fmt::Display> From<CommandError<E>> for RegisterError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Conflict { .. } => RegisterError::Conflict,
            CommandError::Store(s) => RegisterError::Failed(s.to_string(), Some(s)),
            other => RegisterError::Failed(other.to_string(), None),
        }
    }
}

/// Registers an account at time `now`.
pub async fn register(
    handler: &CommandHandler,
    ctx: &CommandContext,
    registration: Registration,
    now: DateTime<Utc>,
) -> Result<Registered, RegisterError> {
    let account_id = AccountId(Uuid::now_v7());
    let [claim_stream, legacy_stream] = claim_streams(handler, &registration.email);
    let command = AccountCommand::Register(RegisterAccount {
        account_id,
        email: registration.email.clone(),
        display_name: registration.display_name,
        password_hash: registration.password_hash,
        roles: registration.roles,
        channel: registration.channel,
        at: now,
    });
    // Decide the registration against a fresh account first (decide is pure),
    // so a refused registration never leaves a claim behind.
    Account::default()
        .decide(&command)
        .map_err(RegisterError::Rejected)?;

    // A claim from before keyed digests holds while its account holds the
    // email (it was registered, and not erased since).
    let legacy = handler.load::<EmailClaim>(legacy_stream).await?;
    if let Some(holder) = legacy.state.claimant {
        let account = handler.load::<Account>(holder.0).await?.state;
        if account.is_registered() && !account.erased {
            return Err(RegisterError::EmailTaken(EmailClaimError::EmailTaken));
        }
    }

    // Look up the facts the claim decision needs: does the current
    // claimant exist, and was it erased?
    let claim = handler.load::<EmailClaim>(claim_stream).await?;
    let (current_claimant_registered, current_claimant_erased) = match claim.state.claimant {
        Some(holder) => {
            let account = handler.load::<Account>(holder.0).await?.state;
            (account.is_registered(), account.erased)
        }
        None => (false, false),
    };
    handler
        .execute::<EmailClaim>(
            claim_stream,
            ctx,
            &EmailClaimCommand::Claim(ClaimEmail {
                account_id,
                current_claimant_registered,
                current_claimant_erased,
                at: now,
            }),
        )
        .await
        .map_err(|e| match e {
            CommandError::Rejected(r) => RegisterError::EmailTaken(r),
            other => other.into(),
        })?;

    let opened = handler
        .execute::<Account>(account_id.0, ctx, &command)
        .await
        .map_err(|e| match e {
            CommandError::Rejected(r) => RegisterError::Rejected(r),
            other => other.into(),
        })?;
    Ok(Registered {
        account_id,
        account: opened.state,
        position: opened.position,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use marketplace_store::InMemoryEventStore;

    use super::*;
    use crate::flows::find_account::find_account_by_email;

    fn registration(email: &str) -> Registration {
        Registration {
            email: Email::parse(email).expect("valid"),
            display_name: DisplayName::parse("Ada").expect("valid"),
            password_hash: PasswordHash::from_phc("$argon2id$v=19$x".into()).expect("valid"),
            roles: vec![Role::Seller],
            channel: RegistrationChannel::SelfService,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_one_of_many_racing_registrations_gets_an_email() {
        let handler = CommandHandler::new(Arc::new(InMemoryEventStore::new()));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let handler = handler.clone();
                tokio::spawn(async move {
                    register(
                        &handler,
                        &CommandContext::default(),
                        registration("Ada@Example.com"),
                        Utc::now(),
                    )
                    .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.expect("join") {
                Ok(r) => winners.push(r.account_id),
                Err(RegisterError::EmailTaken(EmailClaimError::EmailTaken)) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1);
        let found =
            find_account_by_email(&handler, &Email::parse("ada@example.com").expect("valid"))
                .await
                .expect("find")
                .expect("registered");
        assert_eq!(found.id, Some(winners[0]));
        assert!(found.password_hash.is_some());
    }

    #[tokio::test]
    async fn a_refused_registration_claims_nothing() {
        let store = InMemoryEventStore::new();
        let handler = CommandHandler::new(Arc::new(store.clone()));
        let mut admin = registration("root@example.com");
        admin.roles = vec![Role::Admin];
        let r = register(&handler, &CommandContext::default(), admin, Utc::now()).await;
        assert!(matches!(
            r,
            Err(RegisterError::Rejected(
                AccountError::AdminNotSelfAssignable
            ))
        ));
        use marketplace_store::EventStore;
        assert_eq!(store.head().await.expect("head"), Position::START);
    }

    #[tokio::test]
    async fn an_unknown_email_finds_nothing() {
        let handler = CommandHandler::new(Arc::new(InMemoryEventStore::new()));
        let email = Email::parse("nobody@example.com").expect("valid");
        assert!(find_account_by_email(&handler, &email)
            .await
            .expect("find")
            .is_none());
    }

    #[tokio::test]
    async fn an_erased_accounts_email_can_register_again() {
        use marketplace_domain::account::EraseAccount;
        let handler = CommandHandler::new(Arc::new(InMemoryEventStore::new()));
        let ctx = CommandContext::default();
        let first = register(&handler, &ctx, registration("ada@example.com"), Utc::now())
            .await
            .expect("first");
        assert!(matches!(
            register(&handler, &ctx, registration("ada@example.com"), Utc::now()).await,
            Err(RegisterError::EmailTaken(_))
        ));
        handler
            .execute::<Account>(
                first.account_id.0,
                &ctx,
                &AccountCommand::Erase(EraseAccount {
                    by: first.account_id,
                    at: Utc::now(),
                }),
            )
            .await
            .expect("erase");
        let email = Email::parse("ada@example.com").expect("valid");
        let found = find_account_by_email(&handler, &email).await.expect("find");
        assert!(found.is_none(), "an erased account cannot log in");
        let second = register(&handler, &ctx, registration("ada@example.com"), Utc::now())
            .await
            .expect("the email is free again");
        assert_ne!(second.account_id, first.account_id);
        let found = find_account_by_email(&handler, &email)
            .await
            .expect("find")
            .expect("the new account");
        assert_eq!(found.id, Some(second.account_id));
    }
}
