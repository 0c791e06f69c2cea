//! Operator actions that never go through the public API.

use chrono::Utc;
use marketplace_commands::flows::register::{register, RegisterError, Registration};
use marketplace_commands::CommandContext;
use marketplace_domain::account::RegistrationChannel;
use marketplace_domain::values::{DisplayName, Email, Role};
use marketplace_keys::MasterKey;

use crate::auth::{hash_password, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::database::{connect, migrate};

/// Creates an ADMIN account through the registration flow (unique email),
/// as the operator. Returns its id.
/// `master` must be the master key the marketplace serves with.
pub async fn create_admin(
    database_url: &str,
    master: &MasterKey,
    email: &str,
    password: &str,
    display_name: &str,
) -> anyhow::Result<uuid::Uuid> {
    let postgres = crate::config::EventStoreChoice::Postgres;
    create_admin_in(
        database_url,
        &postgres,
        master,
        email,
        password,
        display_name,
    )
    .await
}

/// [`create_admin`] with the event log in `event_store`.
pub async fn create_admin_in(
    database_url: &str,
    event_store: &crate::config::EventStoreChoice,
    master: &MasterKey,
    email: &str,
    password: &str,
    display_name: &str,
) -> anyhow::Result<uuid::Uuid> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let display_name = DisplayName::parse(display_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        anyhow::bail!("the password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters");
    }
    let password_hash = hash_password(password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = connect(database_url, 4).await?;
    migrate(&pool).await?;
    let store = crate::database::open_event_store(&pool, event_store, master).await?;
    let handler = crate::database::command_handler(&store).await?;
    let registered = register(
        &handler,
        &CommandContext::new("operator"),
        Registration {
            email,
            display_name,
            password_hash,
            roles: vec![Role::Admin],
            channel: RegistrationChannel::Operator,
        },
        Utc::now(),
    )
    .await
    .map_err(|e| match e {
        RegisterError::EmailTaken(_) => {
            anyhow::anyhow!("an account with this email already exists")
        }
        other => anyhow::anyhow!("could not create the admin: {other}"),
    })?;
    pool.close().await;
    Ok(registered.account_id.0)
}
