//! Application state shared by every request.

use std::sync::Arc;
use std::time::Duration;

use marketplace_commands::CommandHandler;
use marketplace_domain::values::FeeRate;
use marketplace_projections::Progress;
use marketplace_store::Position;
use sqlx::PgPool;

use crate::auth::Tokens;
use crate::live::Live;
use crate::metrics::RequestRegistry;
use crate::proxy::TrustedProxies;
use crate::ratelimit::RateLimiter;
use crate::read_cache::ReadCache;
use crate::roles::CurrentRoles;

/// Everything resolvers and handlers need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The write side.
    pub handler: CommandHandler,
    /// The read models: the primary's pool, except in the state a read
    /// replica's schema runs with ([`AppState::on_replica`]), where it is
    /// that replica's. Checkpoints, projections' status and the write side
    /// always use the primary (only queries that read nothing but read
    /// models run on a replica).
    pub pool: PgPool,
    /// How far projections have come (read-your-writes).
    pub progress: Progress,
    /// JWT issuing and checking.
    pub tokens: Tokens,
    /// Longest wait for a consistency token.
    pub consistency_wait: Duration,
    /// The marketplace fee taken on delivery.
    pub fee: FeeRate,
    /// Whether `placeOrder` decides the checkout in the placement's append
    /// (the store can, and `--checkout-in-saga` is off).
    pub checkout_at_placement: bool,
    /// Live feeds for subscriptions.
    pub live: Live,
    /// GraphQL request latencies, for `/metrics`.
    pub requests: Arc<RequestRegistry>,
    /// Per-client rate limits and the failed-login throttle.
    pub limiter: Arc<RateLimiter>,
    /// The roles accounts hold now (tokens are not trusted for them).
    pub roles: CurrentRoles,
    /// Hot reads, invalidated by their read models' commits.
    pub cache: Arc<ReadCache>,
    /// What this process's process-manager runners are doing.
    pub consumers: marketplace_consumers::Registry,
    /// The proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The key table (erasure destroys data keys here).
    pub keyring: marketplace_keys::Keyring,
    /// The payment gateway (behind its breaker) and callback settings.
    pub payments: crate::payments::Payments,
    /// Digital assets' files.
    pub assets: crate::assets::Assets,
    /// Raised when the process starts to stop (see [`crate::shutdown`]).
    pub stopping: crate::shutdown::Stopping,
    /// The read replicas (none unless `--read-database-url`).
    pub replicas: crate::replicas::Replicas,
}

/// Every projection the API reads from.
pub const READ_MODELS: &[&str] = &[
    marketplace_projections::read_models::accounts::NAME,
    marketplace_projections::read_models::listings::NAME,
    marketplace_projections::read_models::orders::NAME,
    marketplace_projections::read_models::reviews::NAME,
    marketplace_projections::read_models::notifications::NAME,
];

/// The read models an API replica cannot serve without: the catalogue,
/// accounts and orders. `/readyz` fails when one of them is not RUNNING;
/// the others (reviews, notifications) only degrade the queries that read
/// them.
pub const REQUIRED_READ_MODELS: &[&str] = &[
    marketplace_projections::read_models::accounts::NAME,
    marketplace_projections::read_models::listings::NAME,
    marketplace_projections::read_models::orders::NAME,
];

/// The read model a field reads, wherever it appears in a selection (a
/// listing's `seller` is an account, an order line's `listing` a listing);
/// `None` for fields that read nothing more than their parent (scalars,
/// edges, an order's lines).
pub fn read_model_of(field: &str) -> Option<&'static str> {
    use marketplace_projections::read_models::{
        accounts, listings, notifications, orders, reviews,
    };
    match field {
        "me" | "seller" | "buyer" | "author" => Some(accounts::NAME),
        "listing" | "listings" => Some(listings::NAME),
        "order" | "myOrders" | "sellerOrders" => Some(orders::NAME),
        "reviews" | "moderationQueue" => Some(reviews::NAME),
        "notifications" => Some(notifications::NAME),
        _ => None,
    }
}

/// Whether a root field is known to read no read model at all (the log,
/// the projections' own status, introspection). Any other root field
/// that [`read_model_of`] does not name is assumed to read them all.
pub fn reads_no_read_model(root_field: &str) -> bool {
    matches!(
        root_field,
        "projections" | "streamHistory" | "orderAsOf" | "__typename" | "__schema" | "__type"
    )
}

impl AppState {
    /// The state a query answered by replica `i` runs with: its read
    /// models read from the replica, through a read-only view of the read
    /// cache (a replica's rows must not be cached under the primary's
    /// positions). `None` if there is no such replica.
    pub fn on_replica(&self, i: usize) -> Option<AppState> {
        let pool = self.replicas.pool(i)?;
        Some(AppState {
            pool,
            cache: Arc::new(self.cache.read_only()),
            ..self.clone()
        })
    }

    /// Waits (bounded) until the named read models have passed `token`.
    pub async fn wait_for(&self, names: &[&str], token: Position) -> bool {
        self.progress
            .wait_for(names, token, self.consistency_wait)
            .await
    }
}
