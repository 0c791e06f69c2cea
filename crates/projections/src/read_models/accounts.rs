//! The `accounts` read model: profiles and roles, by id.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_domain::account::AccountEvent;
use marketplace_store::RecordedEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::decode;
use crate::runtime::{Projection, ProjectionError};

/// Folds account events into `rm_accounts`.
#[derive(Debug, Clone, Copy)]
pub struct AccountsProjection;

/// Stable name.
pub const NAME: &str = "accounts";

#[async_trait]
impl Projection for AccountsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        1
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut ids = Vec::new();
        let mut emails = Vec::new();
        let mut names = Vec::new();
        let mut roles = Vec::new();
        let mut created = Vec::new();
        for e in events {
            match e.stream_id.category() {
                "account" => match decode::<AccountEvent>(e)? {
                    AccountEvent::Registered(r) => {
                        ids.push(r.account_id.0);
                        emails.push(r.email.as_str().to_owned());
                        names.push(r.display_name.as_str().to_owned());
                        // Postgres has no arrays of arrays of differing lengths;
                        // roles travel as a comma-joined string and are split in SQL.
                        roles.push(
                            r.roles
                                .iter()
                                .map(|r| role_name(*r))
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                        created.push(r.registered_at);
                    }
                    _ => {}
                },
                // Categories this read model does not show.
                "email" | "listing" => {}
                other => tracing::trace!(category = other, "accounts: category not projected"),
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO rm_accounts (account_id, email, display_name, roles, created_at) \
                 SELECT id, email, name, string_to_array(roles, ','), created \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
                      AS t(id, email, name, roles, created)",
            )
            .bind(ids)
            .bind(emails)
            .bind(names)
            .bind(roles)
            .bind(created)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

fn role_name(r: marketplace_domain::values::Role) -> &'static str {
    use marketplace_domain::values::Role;
    match r {
        Role::Buyer => "BUYER",
        Role::Seller => "SELLER",
        Role::Admin => "ADMIN",
    }
}

/// One account as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccountRow {
    /// Id.
    pub account_id: Uuid,
    /// Email.
    pub email: String,
    /// Public name.
    pub display_name: String,
    /// Roles: BUYER, SELLER, ADMIN.
    pub roles: Vec<String>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// Accounts by id, in one statement (for batching nested lookups).
pub async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, email, display_name, roles, created_at \
         FROM rm_accounts WHERE account_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// One account by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<AccountRow>, sqlx::Error> {
    Ok(by_ids(pool, &[id]).await?.pop())
}
