//! State of the account aggregate.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::values::{AccountId, Currency, DisplayName, Email, Money, OrderId, PasswordHash, Role};

/// An account as its events leave it. `None` fields mean "not registered".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Its id, once registered.
    pub id: Option<AccountId>,
    /// Its email.
    pub email: Option<Email>,
    /// Its public name.
    pub display_name: Option<DisplayName>,
    /// Its roles.
    pub roles: Vec<Role>,
    /// When it was opened.
    pub registered_at: Option<DateTime<Utc>>,
    /// The argon2 hash login verifies against; never shown in audit output.
    #[serde(skip_serializing, default)]
    pub password_hash: Option<PasswordHash>,
    /// Available funds per currency, in minor units; never negative.
    pub balances: BTreeMap<Currency, i64>,
    /// Funds held for orders not settled yet (open escrows only: the state
    /// does not grow with the orders it is done with).
    pub escrow: BTreeMap<OrderId, Money>,
    /// The orders whose escrow was settled last (released or refunded), at
    /// most [`Account::RECENTLY_SETTLED`]: tells a repeated step (a no-op)
    /// from settling an escrow never held (a refusal).
    #[serde(default)]
    pub recently_settled: VecDeque<OrderId>,
    /// How many sales this account was credited for (payouts or fees).
    pub credits: u64,
    /// Whether its personal data was erased.
    #[serde(default)]
    pub erased: bool,
}

impl Account {
    /// Whether the account exists.
    pub fn is_registered(&self) -> bool {
        self.id.is_some()
    }

    /// The available balance in `currency`.
    pub fn balance(&self, currency: &Currency) -> Money {
        Money {
            minor: self.balances.get(currency).copied().unwrap_or(0),
            currency: currency.clone(),
        }
    }

    /// How many settled escrows an account remembers.
    pub const RECENTLY_SETTLED: usize = 1_024;

    pub(super) fn settled(&mut self, order: OrderId) {
        self.recently_settled.push_back(order);
        if self.recently_settled.len() > Self::RECENTLY_SETTLED {
            self.recently_settled.pop_front();
        }
    }

    pub(super) fn add(&mut self, amount: &Money) {
        *self.balances.entry(amount.currency.clone()).or_insert(0) += amount.minor;
    }
}
