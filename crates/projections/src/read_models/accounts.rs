//! The `accounts` read model: profiles and roles, by id, and wallet
//! balances per currency.
//!
//! Balances are folded as deltas: a deposit adds, a hold (funds moving into
//! an order's escrow) subtracts, a refund of escrow adds back, and a sale
//! credit (a seller's payout or the marketplace fee) adds. Releasing escrow
//! changes no wallet: the buyer's wallet was already debited by the hold,
//! and the seller and fee account are paid by their own credits. The fee
//! account ([`marketplace_domain::values::FEE_ACCOUNT_ID`]) has a balance
//! but no profile row. Deltas are summed per (account, currency) in memory
//! and written with one multi-row upsert per batch. Each balance row keeps
//! the log position where its currency first reached the wallet (`since`),
//! so `Account.balance` can show the wallet's own currency: the first one it
//! held.
//!
//! Personal data (email, display name) arrives opened by the store, or
//! `null` once the account was erased; `account.erased` clears both in
//! the batch's transaction, the one that moves the checkpoint, so a
//! rebuild after an erasure (whose events read as erased from the start)
//! ends with the very same rows. Queries show an erased account as
//! [`ERASED_NAME`] with an empty email.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_consumers::Envelope;
use marketplace_domain::account::AccountEvent;
use marketplace_domain::values::{AccountId, Money};
use marketplace_domain::{AggregateKind, Event};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::builds::Table;
use crate::runtime::{Projection, ProjectionError};

/// Folds account events into `rm_accounts` and `rm_account_balances`.
#[derive(Debug, Clone, Copy)]
pub struct AccountsProjection;

/// Stable name.
pub const NAME: &str = "accounts";

/// The version of the tables and the fold below; bump it when either
/// changes, and the runtime rebuilds the read model without downtime.
pub const VERSION: i32 = 4;

/// The name an erased account shows under.
pub const ERASED_NAME: &str = "Erased account";

/// The tables of [`VERSION`], created in each build's schema.
pub const TABLES: &[Table] = &[
    Table {
        name: "rm_accounts",
        create: "CREATE TABLE rm_accounts (
            account_id    UUID        PRIMARY KEY,
            email         TEXT        UNIQUE,
            display_name  TEXT,
            roles         TEXT[]      NOT NULL,
            created_at    TIMESTAMPTZ NOT NULL,
            erased        BOOLEAN     NOT NULL DEFAULT false
        )",
        indexes: &[],
    },
    Table {
        name: "rm_account_balances",
        create: "CREATE TABLE rm_account_balances (
            account_id  UUID    NOT NULL,
            currency    TEXT    NOT NULL,
            minor       BIGINT  NOT NULL,
            since       BIGINT  NOT NULL,
            PRIMARY KEY (account_id, currency)
        )",
        indexes: &[],
    },
];

#[async_trait]
impl Projection for AccountsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        VERSION
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        match aggregate {
            AggregateKind::Account => true,
            AggregateKind::EmailClaim
            | AggregateKind::Listing
            | AggregateKind::Order
            | AggregateKind::Payment
            | AggregateKind::Asset
            | AggregateKind::Review => false,
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut ids = Vec::new();
        let mut emails = Vec::new();
        let mut names = Vec::new();
        let mut roles = Vec::new();
        let mut created = Vec::new();
        let mut erased_now: Vec<bool> = Vec::new();
        // Accounts erased in this batch whose row an earlier batch wrote.
        let mut erased = Vec::new();
        // (account, currency) -> (net change in minor units over the batch,
        // position of the first event that touched it).
        let mut balances: BTreeMap<(Uuid, String), (i64, i64)> = BTreeMap::new();
        for e in events {
            match &e.event {
                Event::Account(account) => match account {
                    AccountEvent::Registered(r) => {
                        ids.push(r.account_id.0);
                        emails.push(r.email.known().map(|m| m.as_str().to_owned()));
                        names.push(r.display_name.known().map(|n| n.as_str().to_owned()));
                        erased_now.push(false);
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
                    AccountEvent::FundsDeposited(d) => {
                        add(&mut balances, e, d.account_id, &d.amount, 1);
                    }
                    AccountEvent::FundsHeld(h) => {
                        add(&mut balances, e, h.account_id, &h.amount, -1)
                    }
                    AccountEvent::EscrowRefunded(r) => {
                        add(&mut balances, e, r.account_id, &r.amount, 1);
                    }
                    AccountEvent::SaleCredited(c) => {
                        add(&mut balances, e, c.account_id, &c.amount, 1)
                    }
                    // The hold already left the wallet; the credits pay out.
                    AccountEvent::EscrowReleased(_) => {}
                    AccountEvent::Erased(x) => {
                        match ids.iter().position(|id| *id == x.account_id.0) {
                            // Registered in this very batch: never write it.
                            Some(i) => {
                                emails[i] = None;
                                names[i] = None;
                                erased_now[i] = true;
                            }
                            None => erased.push(x.account_id.0),
                        }
                    }
                },
                // Aggregates this read model does not show.
                Event::EmailClaim(_)
                | Event::Listing(_)
                | Event::Order(_)
                | Event::Payment(_)
                | Event::Asset(_)
                | Event::Review(_) => {}
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO rm_accounts \
                     (account_id, email, display_name, roles, created_at, erased) \
                 SELECT id, email, name, string_to_array(roles, ','), created, erased \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
                             $5::timestamptz[], $6::bool[]) \
                      AS t(id, email, name, roles, created, erased)",
            )
            .bind(ids)
            .bind(emails)
            .bind(names)
            .bind(roles)
            .bind(created)
            .bind(erased_now)
            .execute(&mut *tx)
            .await?;
        }
        if !erased.is_empty() {
            sqlx::query(
                "UPDATE rm_accounts SET email = NULL, display_name = NULL, erased = true \
                 WHERE account_id = ANY($1)",
            )
            .bind(erased)
            .execute(&mut *tx)
            .await?;
        }
        if !balances.is_empty() {
            let mut ids = Vec::with_capacity(balances.len());
            let mut currencies = Vec::with_capacity(balances.len());
            let mut minors = Vec::with_capacity(balances.len());
            let mut since = Vec::with_capacity(balances.len());
            for ((id, currency), (minor, first)) in balances {
                ids.push(id);
                currencies.push(currency);
                minors.push(minor);
                since.push(first);
            }
            // Keys are unique within the batch, so each row is upserted once.
            sqlx::query(
                "INSERT INTO rm_account_balances (account_id, currency, minor, since) \
                 SELECT id, currency, minor, since \
                 FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
                      AS t(id, currency, minor, since) \
                 ON CONFLICT (account_id, currency) \
                 DO UPDATE SET minor = rm_account_balances.minor + EXCLUDED.minor, \
                               since = LEAST(rm_account_balances.since, EXCLUDED.since)",
            )
            .bind(ids)
            .bind(currencies)
            .bind(minors)
            .bind(since)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// Adds `sign × amount` to the batch's net change of `account`'s wallet,
/// noting where (event `e`) its currency first appeared in the batch.
fn add(
    balances: &mut BTreeMap<(Uuid, String), (i64, i64)>,
    e: &Envelope,
    account: AccountId,
    amount: &Money,
    sign: i64,
) {
    let position = i64::try_from(e.position.0).unwrap_or(i64::MAX);
    let (delta, since) = balances
        .entry((account.0, amount.currency.as_str().to_owned()))
        .or_insert((0, position));
    *delta = delta.saturating_add(sign.saturating_mul(amount.minor));
    *since = (*since).min(position);
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
    /// Email (empty once erased).
    pub email: String,
    /// Public name ([`ERASED_NAME`] once erased).
    pub display_name: String,
    /// Roles: BUYER, SELLER, ADMIN.
    pub roles: Vec<String>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// Whether its personal data was erased.
    pub erased: bool,
}

/// Accounts by id, in one statement (for batching nested lookups).
pub async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, COALESCE(email, '') AS email, \
                COALESCE(display_name, $2) AS display_name, roles, created_at, erased \
         FROM rm_accounts WHERE account_id = ANY($1)",
    )
    .bind(ids)
    .bind(ERASED_NAME)
    .fetch_all(pool)
    .await
}

/// One account by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<AccountRow>, sqlx::Error> {
    Ok(by_ids(pool, &[id]).await?.pop())
}

/// One account's wallet balances as (currency, minor units), by currency.
/// Empty if it never received money.
pub async fn balances(pool: &PgPool, account_id: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, minor FROM rm_account_balances WHERE account_id = $1 ORDER BY currency",
    )
    .bind(account_id)
    .fetch_all(pool)
    .await
}

/// One account's wallet balances as (currency, minor units), the currency
/// it held first first: the wallet's own currency leads.
pub async fn balances_oldest_first(
    pool: &PgPool,
    account_id: Uuid,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, minor FROM rm_account_balances WHERE account_id = $1 \
         ORDER BY since, currency",
    )
    .bind(account_id)
    .fetch_all(pool)
    .await
}

/// Wallet balances of several accounts in one statement (for batching
/// nested lookups), as (account, currency, minor units), ordered by account
/// then currency. Accounts without money have no rows.
pub async fn balances_of(
    pool: &PgPool,
    account_ids: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, currency, minor FROM rm_account_balances \
         WHERE account_id = ANY($1) ORDER BY account_id, currency",
    )
    .bind(account_ids)
    .fetch_all(pool)
    .await
}
