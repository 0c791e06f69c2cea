//! The account aggregate: registration, roles, and the wallet with escrow.
//!
//! Money moves only in integer minor units. A deposit adds to the wallet;
//! placing an order holds its total in escrow (never below zero); delivery
//! releases the escrow, which is then credited to the seller and the fee
//! account; cancellation or rejection refunds it. Every step after a hold is
//! keyed by the order, so a process manager that repeats a step after a
//! crash changes nothing: holding what is held and settling what was
//! settled lately are no-ops, and a repeated hold or credit carries the
//! event ids it was first stored with, which the store recognises. The
//! state keeps open escrows and a bounded memory of the last settled ones,
//! never every order it is done with, so it does not grow with the
//! account's history.

mod command;
mod error;
mod event;
mod state;

pub use command::{
    AccountCommand, CreditSale, DepositFunds, EraseAccount, EscrowOutcome, HoldFunds,
    RegisterAccount, RegistrationChannel, SaleShare, SettleEscrow,
};
pub use error::AccountError;
pub use event::{
    AccountErased, AccountEvent, AccountRegistered, EscrowRefunded, EscrowReleased, FundsDeposited,
    FundsHeld, SaleCredited,
};
pub use state::Account;

use crate::aggregate::Aggregate;
use crate::values::{Money, Role, FEE_ACCOUNT_ID};

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Register(c) => {
                if self.is_registered() {
                    return Err(AccountError::AlreadyRegistered);
                }
                let mut roles = c.roles.clone();
                if roles.is_empty() {
                    roles.push(Role::Buyer);
                }
                roles.sort();
                roles.dedup();
                if roles.contains(&Role::Admin) && c.channel == RegistrationChannel::SelfService {
                    return Err(AccountError::AdminNotSelfAssignable);
                }
                Ok(vec![AccountRegistered {
                    account_id: c.account_id,
                    email: c.email.clone().into(),
                    display_name: c.display_name.clone().into(),
                    password_hash: c.password_hash.clone().into(),
                    roles,
                    registered_at: c.at,
                }
                .into()])
            }
            AccountCommand::Deposit(c) => {
                let id = self.id.ok_or(AccountError::NotFound)?;
                if !c.amount.is_positive() {
                    return Err(AccountError::NonPositiveAmount);
                }
                self.balance(&c.amount.currency)
                    .checked_add(&c.amount)
                    .ok_or(AccountError::AmountTooLarge)?;
                Ok(vec![FundsDeposited {
                    account_id: id,
                    deposit_id: c.deposit_id,
                    amount: c.amount.clone(),
                    deposited_at: c.at,
                }
                .into()])
            }
            AccountCommand::Hold(c) => {
                let id = self.id.ok_or(AccountError::NotFound)?;
                if self.escrow.contains_key(&c.order_id) {
                    return Ok(vec![]);
                }
                if !c.amount.is_positive() {
                    return Err(AccountError::NonPositiveAmount);
                }
                let available = self.balance(&c.amount.currency);
                if available.minor < c.amount.minor {
                    return Err(AccountError::InsufficientFunds {
                        available,
                        required: c.amount.clone(),
                    });
                }
                Ok(vec![FundsHeld {
                    account_id: id,
                    order_id: c.order_id,
                    amount: c.amount.clone(),
                    held_at: c.at,
                }
                .into()])
            }
            AccountCommand::Settle(c) => {
                let id = self.id.ok_or(AccountError::NotFound)?;
                // Nothing held: settled lately (a repeated step: a no-op),
                // or never held (refused).
                let Some(amount) = self.escrow.get(&c.order_id).cloned() else {
                    if self.recently_settled.contains(&c.order_id) {
                        return Ok(vec![]);
                    }
                    return Err(AccountError::NoEscrow);
                };
                Ok(vec![match c.outcome {
                    EscrowOutcome::Released => EscrowReleased {
                        account_id: id,
                        order_id: c.order_id,
                        amount,
                        released_at: c.at,
                    }
                    .into(),
                    EscrowOutcome::Refunded => EscrowRefunded {
                        account_id: id,
                        order_id: c.order_id,
                        amount,
                        refunded_at: c.at,
                    }
                    .into(),
                }])
            }
            AccountCommand::Credit(c) => {
                // The fee account is the marketplace's own ledger: it has no
                // registration, every other credited account must exist.
                let id = match (self.id, c.share) {
                    (Some(id), _) => id,
                    (None, SaleShare::Fee) => FEE_ACCOUNT_ID,
                    (None, SaleShare::Payout) => return Err(AccountError::NotFound),
                };
                if c.amount.minor < 0 {
                    return Err(AccountError::NonPositiveAmount);
                }
                self.balance(&c.amount.currency)
                    .checked_add(&c.amount)
                    .ok_or(AccountError::AmountTooLarge)?;
                Ok(vec![SaleCredited {
                    account_id: id,
                    order_id: c.order_id,
                    amount: c.amount.clone(),
                    share: c.share,
                    credited_at: c.at,
                }
                .into()])
            }
            AccountCommand::Erase(c) => {
                let id = self.id.ok_or(AccountError::NotFound)?;
                if self.erased {
                    return Ok(vec![]);
                }
                Ok(vec![AccountErased {
                    account_id: id,
                    erased_by: c.by,
                    erased_at: c.at,
                }
                .into()])
            }
        }
    }

    fn evolve(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Registered(e) => {
                self.id = Some(e.account_id);
                self.email = e.email.known().cloned();
                self.display_name = e.display_name.known().cloned();
                self.roles = e.roles.clone();
                self.registered_at = Some(e.registered_at);
                self.password_hash = e.password_hash.known().cloned();
            }
            AccountEvent::FundsDeposited(e) => self.add(&e.amount),
            AccountEvent::FundsHeld(e) => {
                self.add(&Money {
                    minor: -e.amount.minor,
                    currency: e.amount.currency.clone(),
                });
                self.escrow.insert(e.order_id, e.amount.clone());
            }
            AccountEvent::EscrowReleased(e) => {
                self.escrow.remove(&e.order_id);
                self.settled(e.order_id);
            }
            AccountEvent::EscrowRefunded(e) => {
                self.escrow.remove(&e.order_id);
                self.settled(e.order_id);
                self.add(&e.amount);
            }
            AccountEvent::SaleCredited(e) => {
                self.credits += 1;
                self.add(&e.amount);
            }
            AccountEvent::Erased(_) => {
                self.email = None;
                self.display_name = None;
                self.password_hash = None;
                self.erased = true;
            }
        }
        self
    }

    const SNAPSHOT_VERSION: u32 = 1;

    /// Only accounts without personal data are snapshotted (a snapshot
    /// would outlive an erasure): the fee ledger, whose stream grows with
    /// every sale, is the one that needs it.
    fn snapshot(&self) -> Option<serde_json::Value> {
        if self.email.is_some() || self.display_name.is_some() || self.password_hash.is_some() {
            return None;
        }
        serde_json::to_value(self).ok()
    }

    fn from_snapshot(snapshot: serde_json::Value) -> Option<Self> {
        serde_json::from_value(snapshot).ok()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::given;
    use crate::values::{AccountId, Currency, DisplayName, Email, Money, OrderId, PasswordHash};

    fn register(roles: Vec<Role>, channel: RegistrationChannel) -> RegisterAccount {
        RegisterAccount {
            account_id: AccountId(Uuid::from_u128(1)),
            email: Email::parse("ada@example.com").expect("valid"),
            display_name: DisplayName::parse("Ada").expect("valid"),
            password_hash: PasswordHash::from_phc("$argon2id$v=19$x".into()).expect("valid"),
            roles,
            channel,
            at: chrono::Utc
                .with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
                .single()
                .expect("date"),
        }
    }

    fn registered(c: &RegisterAccount, roles: Vec<Role>) -> AccountEvent {
        AccountRegistered {
            account_id: c.account_id,
            email: c.email.clone().into(),
            display_name: c.display_name.clone().into(),
            password_hash: c.password_hash.clone().into(),
            roles,
            registered_at: c.at,
        }
        .into()
    }

    #[test]
    fn registers_a_buyer_by_default() {
        let c = register(vec![], RegistrationChannel::SelfService);
        let state = given::<Account>([])
            .when(AccountCommand::Register(c.clone()))
            .then_events([registered(&c, vec![Role::Buyer])]);
        assert!(state.is_registered());
        assert_eq!(state.roles, vec![Role::Buyer]);
    }

    #[test]
    fn registers_a_seller_who_also_buys_with_sorted_unique_roles() {
        let c = register(
            vec![Role::Seller, Role::Buyer, Role::Seller],
            RegistrationChannel::SelfService,
        );
        given::<Account>([])
            .when(AccountCommand::Register(c.clone()))
            .then_events([registered(&c, vec![Role::Buyer, Role::Seller])]);
    }

    #[test]
    fn refuses_a_self_assigned_admin_role() {
        given::<Account>([])
            .when(AccountCommand::Register(register(
                vec![Role::Admin],
                RegistrationChannel::SelfService,
            )))
            .then_error(AccountError::AdminNotSelfAssignable);
    }

    #[test]
    fn lets_an_operator_create_an_admin() {
        let c = register(vec![Role::Admin], RegistrationChannel::Operator);
        given::<Account>([])
            .when(AccountCommand::Register(c.clone()))
            .then_events([registered(&c, vec![Role::Admin])]);
    }

    #[test]
    fn refuses_to_register_the_same_account_twice() {
        let c = register(vec![], RegistrationChannel::SelfService);
        given::<Account>([registered(&c, vec![Role::Buyer])])
            .when(AccountCommand::Register(c))
            .then_error(AccountError::AlreadyRegistered);
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 27, 9, 0, 0)
            .single()
            .expect("date")
    }

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: Currency::parse("EUR").expect("valid"),
        }
    }

    const ORDER: OrderId = OrderId(Uuid::from_u128(900));

    fn opened() -> AccountEvent {
        registered(
            &register(vec![], RegistrationChannel::SelfService),
            vec![Role::Buyer],
        )
    }

    fn me() -> AccountId {
        AccountId(Uuid::from_u128(1))
    }

    fn deposited(minor: i64) -> AccountEvent {
        FundsDeposited {
            account_id: me(),
            deposit_id: Uuid::from_u128(5),
            amount: eur(minor),
            deposited_at: at(),
        }
        .into()
    }

    fn held(minor: i64) -> AccountEvent {
        FundsHeld {
            account_id: me(),
            order_id: ORDER,
            amount: eur(minor),
            held_at: at(),
        }
        .into()
    }

    fn deposit(minor: i64) -> AccountCommand {
        AccountCommand::Deposit(DepositFunds {
            deposit_id: Uuid::from_u128(5),
            amount: eur(minor),
            at: at(),
        })
    }

    fn hold(minor: i64) -> AccountCommand {
        AccountCommand::Hold(HoldFunds {
            order_id: ORDER,
            amount: eur(minor),
            at: at(),
        })
    }

    fn settle(outcome: EscrowOutcome) -> AccountCommand {
        AccountCommand::Settle(SettleEscrow {
            order_id: ORDER,
            outcome,
            at: at(),
        })
    }

    fn credit(share: SaleShare, minor: i64) -> AccountCommand {
        AccountCommand::Credit(CreditSale {
            order_id: ORDER,
            amount: eur(minor),
            share,
            at: at(),
        })
    }

    #[test]
    fn deposits_positive_amounts_into_the_wallet() {
        let state = given::<Account>([opened()])
            .when(deposit(2_500))
            .then_events([deposited(2_500)]);
        assert_eq!(state.balance(&eur(0).currency), eur(2_500));
    }

    #[test]
    fn refuses_zero_and_negative_deposits() {
        given::<Account>([opened()])
            .when(deposit(0))
            .then_error(AccountError::NonPositiveAmount);
        given::<Account>([opened()])
            .when(deposit(-1))
            .then_error(AccountError::NonPositiveAmount);
    }

    #[test]
    fn refuses_a_deposit_to_an_unknown_account() {
        given::<Account>([])
            .when(deposit(100))
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn refuses_a_deposit_that_would_overflow_the_balance() {
        given::<Account>([opened(), deposited(i64::MAX)])
            .when(deposit(1))
            .then_error(AccountError::AmountTooLarge);
    }

    #[test]
    fn holds_an_order_total_in_escrow_and_takes_it_from_the_balance() {
        let state = given::<Account>([opened(), deposited(5_000)])
            .when(hold(4_990))
            .then_events([held(4_990)]);
        assert_eq!(state.balance(&eur(0).currency), eur(10));
        assert_eq!(state.escrow.get(&ORDER), Some(&eur(4_990)));
    }

    #[test]
    fn refuses_to_hold_more_than_the_balance_so_it_never_goes_negative() {
        given::<Account>([opened(), deposited(1_000)])
            .when(hold(1_001))
            .then_error(AccountError::InsufficientFunds {
                available: eur(1_000),
                required: eur(1_001),
            });
    }

    #[test]
    fn holding_twice_for_one_order_is_a_no_op() {
        given::<Account>([opened(), deposited(5_000), held(1_000)])
            .when(hold(1_000))
            .then_events([]);
    }

    #[test]
    fn releases_escrow_once() {
        let released: AccountEvent = EscrowReleased {
            account_id: me(),
            order_id: ORDER,
            amount: eur(1_000),
            released_at: at(),
        }
        .into();
        let state = given::<Account>([opened(), deposited(5_000), held(1_000)])
            .when(settle(EscrowOutcome::Released))
            .then_events([released.clone()]);
        assert!(state.escrow.is_empty());
        assert_eq!(state.balance(&eur(0).currency), eur(4_000));
        given::<Account>([opened(), deposited(5_000), held(1_000), released])
            .when(settle(EscrowOutcome::Refunded))
            .then_events([]);
    }

    #[test]
    fn refunds_escrow_to_the_wallet() {
        let state = given::<Account>([opened(), deposited(5_000), held(1_000)])
            .when(settle(EscrowOutcome::Refunded))
            .then_events([EscrowRefunded {
                account_id: me(),
                order_id: ORDER,
                amount: eur(1_000),
                refunded_at: at(),
            }
            .into()]);
        assert_eq!(state.balance(&eur(0).currency), eur(5_000));
    }

    #[test]
    fn refuses_to_settle_an_escrow_never_held() {
        given::<Account>([opened()])
            .when(settle(EscrowOutcome::Released))
            .then_error(AccountError::NoEscrow);
    }

    /// The state does not remember which orders it was credited for (it
    /// would grow with every sale): a repeated credit step is stopped by the
    /// store, which recognises its event ids (see the command handler's
    /// tests), not by the aggregate.
    #[test]
    fn credits_a_seller_and_counts_the_credits() {
        let credited: AccountEvent = SaleCredited {
            account_id: me(),
            order_id: ORDER,
            amount: eur(950),
            share: SaleShare::Payout,
            credited_at: at(),
        }
        .into();
        let state = given::<Account>([opened()])
            .when(credit(SaleShare::Payout, 950))
            .then_events([credited.clone()]);
        assert_eq!(state.balance(&eur(0).currency), eur(950));
        assert_eq!(state.credits, 1);
        let state = given::<Account>([opened(), credited.clone()])
            .when(credit(SaleShare::Payout, 950))
            .then_events([credited]);
        assert_eq!(state.balance(&eur(0).currency), eur(1_900));
    }

    #[test]
    fn the_fee_ledger_needs_no_registration_but_a_payout_does() {
        given::<Account>([])
            .when(credit(SaleShare::Fee, 50))
            .then_events([SaleCredited {
                account_id: FEE_ACCOUNT_ID,
                order_id: ORDER,
                amount: eur(50),
                share: SaleShare::Fee,
                credited_at: at(),
            }
            .into()]);
        given::<Account>([])
            .when(credit(SaleShare::Payout, 50))
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn only_accounts_without_personal_data_are_snapshotted() {
        let person = given::<Account>([opened(), deposited(5_000), held(1_000)])
            .when(hold(1_000))
            .then_events([]);
        assert_eq!(person.snapshot(), None, "an account with an email");
        let credit = |n: u128| -> AccountEvent {
            SaleCredited {
                account_id: FEE_ACCOUNT_ID,
                order_id: OrderId(Uuid::from_u128(n)),
                amount: eur(50),
                share: SaleShare::Fee,
                credited_at: at(),
            }
            .into()
        };
        let fees = Account::replay(&(0..100).map(credit).collect::<Vec<_>>());
        assert_eq!(
            (fees.credits, fees.balance(&eur(0).currency)),
            (100, eur(5_000))
        );
        let back = Account::from_snapshot(fees.snapshot().expect("the fee ledger"));
        assert_eq!(back, Some(fees));
    }

    #[test]
    fn pins_the_stored_event_name() {
        use crate::event::DomainEvent;
        assert_eq!(AccountRegistered::NAME, "account.registered");
    }

    fn erase(by: u128) -> AccountCommand {
        AccountCommand::Erase(EraseAccount {
            by: AccountId(Uuid::from_u128(by)),
            at: chrono::Utc
                .with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
                .single()
                .expect("date"),
        })
    }

    #[test]
    fn erasing_forgets_the_personal_data_and_keeps_the_money() {
        let c = register(vec![], RegistrationChannel::SelfService);
        let deposit = FundsDeposited {
            account_id: c.account_id,
            deposit_id: Uuid::from_u128(9),
            amount: Money::parse_decimal("10.00", Currency::parse("EUR").expect("eur"))
                .expect("money"),
            deposited_at: c.at,
        };
        let state = given::<Account>([registered(&c, vec![Role::Buyer]), deposit.into()])
            .when(erase(1))
            .then_events([AccountErased {
                account_id: c.account_id,
                erased_by: AccountId(Uuid::from_u128(1)),
                erased_at: chrono::Utc
                    .with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
                    .single()
                    .expect("date"),
            }
            .into()]);
        assert!(state.erased);
        assert_eq!((&state.email, &state.display_name), (&None, &None));
        assert!(state.password_hash.is_none());
        assert_eq!(state.balances.values().sum::<i64>(), 1000);
        assert!(
            state.snapshot().is_some(),
            "nothing personal is left to keep out"
        );
    }

    #[test]
    fn erasing_twice_is_a_no_op_and_an_unknown_account_is_not_found() {
        let c = register(vec![], RegistrationChannel::SelfService);
        let erased = AccountErased {
            account_id: c.account_id,
            erased_by: c.account_id,
            erased_at: c.at,
        };
        given::<Account>([registered(&c, vec![Role::Buyer]), erased.into()])
            .when(erase(1))
            .then_events([]);
        given::<Account>([])
            .when(erase(1))
            .then_error(AccountError::NotFound);
    }

    #[test]
    fn an_erased_registration_replays_to_an_account_without_personal_data() {
        let c = register(vec![], RegistrationChannel::SelfService);
        let shredded = AccountRegistered {
            account_id: c.account_id,
            email: crate::values::Personal::Erased,
            display_name: crate::values::Personal::Erased,
            password_hash: crate::values::Personal::Erased,
            roles: vec![Role::Buyer],
            registered_at: c.at,
        };
        let state = Account::default().evolve(&shredded.into());
        assert!(state.is_registered());
        assert_eq!(state.email, None);
        assert!(state.snapshot().is_some());
    }
}
