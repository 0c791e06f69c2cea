//! The read side: the projector runtime and the Postgres read models it
//! maintains.
//!
//! Depends on `store` (the log, through the `EventStore` port),
//! `event-schemas` (decoding) and `domain` (event types). Never on
//! `commands` or the API. GraphQL resolvers call the query functions that
//! live beside each read model here.
//!
//! Layout:
//! - [`runtime`]: [`ProjectorRuntime`] subscribes from a projection's
//!   checkpoint, batches by count or time, and commits the read-model rows
//!   and the new checkpoint in one transaction (exactly once, fenced).
//! - [`progress`]: [`Progress`], how far each projection has come, so a
//!   query carrying a consistency token can wait for its own writes.
//! - [`read_models`]: one module per read model with its batch fold and its
//!   queries: [`read_models::accounts`] (profiles and wallet balances),
//!   [`read_models::listings`] (the catalogue, with stock and rating),
//!   [`read_models::orders`] (orders and their lines, per buyer and seller)
//!   and [`read_models::reviews`] (reviews per listing and the moderation
//!   queue). [`all`] lists them.
//! - `migrations/`: the read models' SQL.

pub mod progress;
pub mod read_models;
pub mod runtime;

pub use progress::Progress;
pub use runtime::{Projection, ProjectionError, ProjectorRuntime, RuntimeConfig};

/// Applies the read-model migrations (idempotent; safe from several processes).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // The event store keeps its own migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// Every projection the marketplace runs.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(read_models::accounts::AccountsProjection),
        std::sync::Arc::new(read_models::listings::ListingsProjection),
        std::sync::Arc::new(read_models::orders::OrdersProjection),
        std::sync::Arc::new(read_models::reviews::ReviewsProjection),
    ]
}
