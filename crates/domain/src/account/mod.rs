//! The account aggregate: registration and roles. (Wallets arrive with the
//! marketplace domain.)

mod command;
mod error;
mod event;
mod state;

pub use command::{AccountCommand, RegisterAccount, RegistrationChannel};
pub use error::AccountError;
pub use event::{AccountEvent, AccountRegistered};
pub use state::Account;

use crate::aggregate::Aggregate;
use crate::values::Role;

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
                    email: c.email.clone(),
                    display_name: c.display_name.clone(),
                    password_hash: c.password_hash.clone(),
                    roles,
                    registered_at: c.at,
                }
                .into()])
            }
        }
    }

    fn evolve(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Registered(e) => {
                self.id = Some(e.account_id);
                self.email = Some(e.email.clone());
                self.display_name = Some(e.display_name.clone());
                self.roles = e.roles.clone();
                self.registered_at = Some(e.registered_at);
                self.password_hash = Some(e.password_hash.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::given;
    use crate::values::{AccountId, DisplayName, Email, PasswordHash};

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
            email: c.email.clone(),
            display_name: c.display_name.clone(),
            password_hash: c.password_hash.clone(),
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

    #[test]
    fn pins_the_stored_event_name() {
        use crate::event::DomainEvent;
        assert_eq!(AccountRegistered::NAME, "account.registered");
    }
}
