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
use crate::ratelimit::RateLimiter;
use crate::read_cache::ReadCache;
use crate::roles::CurrentRoles;

/// Everything resolvers and handlers need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The write side.
    pub handler: CommandHandler,
    /// The read models.
    pub pool: PgPool,
    /// How far projections have come (read-your-writes).
    pub progress: Progress,
    /// JWT issuing and checking.
    pub tokens: Tokens,
    /// Longest wait for a consistency token.
    pub consistency_wait: Duration,
    /// The marketplace fee taken on delivery.
    pub fee: FeeRate,
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
}

/// Every projection the API reads from.
pub const READ_MODELS: &[&str] = &[
    marketplace_projections::read_models::accounts::NAME,
    marketplace_projections::read_models::listings::NAME,
    marketplace_projections::read_models::orders::NAME,
    marketplace_projections::read_models::reviews::NAME,
    marketplace_projections::read_models::notifications::NAME,
];

impl AppState {
    /// Waits (bounded) until the named read models have passed `token`.
    pub async fn wait_for(&self, names: &[&str], token: Position) -> bool {
        self.progress
            .wait_for(names, token, self.consistency_wait)
            .await
    }
}
