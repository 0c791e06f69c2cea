//! The roles an account holds now. A token says which roles its bearer had
//! when it was issued; the API trusts it for the signature and the account
//! id only, and looks the roles up here, on the write side (so a token
//! issued by `register` works at once, before any read model has caught
//! up). A token for an account that does not exist holds no role at all.
//!
//! Look-ups are cached for [`ROLES_TTL`], so a role taken away stops
//! working within that time on every replica; the cache holds at most
//! [`MAX_CACHED`] accounts and is cleared when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marketplace_commands::CommandHandler;
use marketplace_domain::account::Account;
use marketplace_domain::values::Role;
use uuid::Uuid;

/// How long a look-up is reused.
pub const ROLES_TTL: Duration = Duration::from_secs(5);
/// Most accounts cached at once.
pub const MAX_CACHED: usize = 50_000;

/// When each cached account's roles were looked up, and what they were.
type Cache = HashMap<Uuid, (Instant, Arc<[Role]>)>;

/// The current roles of accounts, cached briefly. Cheap to clone.
#[derive(Clone)]
pub struct CurrentRoles {
    handler: CommandHandler,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for CurrentRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentRoles").finish_non_exhaustive()
    }
}

impl CurrentRoles {
    /// Looks roles up through `handler`.
    pub fn new(handler: CommandHandler) -> Self {
        Self {
            handler,
            cache: Arc::default(),
        }
    }

    /// The roles `account` holds now: none if it does not exist.
    pub async fn of(&self, account: Uuid) -> Result<Arc<[Role]>, String> {
        let now = Instant::now();
        if let Some((at, roles)) = self.lock().get(&account) {
            if now.saturating_duration_since(*at) < ROLES_TTL {
                return Ok(roles.clone());
            }
        }
        let loaded = self
            .handler
            .load::<Account>(account)
            .await
            .map_err(|e| e.to_string())?;
        // An erased account keeps its money and orders but acts no more.
        let roles: Arc<[Role]> = if loaded.state.id.is_some() && !loaded.state.erased {
            loaded.state.roles.clone().into()
        } else {
            Arc::from(Vec::new())
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(account, (now, roles.clone()));
        Ok(roles)
    }

    /// Drops what is cached for `account` (after its roles changed).
    pub fn forget(&self, account: Uuid) {
        self.lock().remove(&account);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
