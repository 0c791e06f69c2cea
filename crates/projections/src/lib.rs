//! The read side: the projector runtime and the Postgres read models it
//! maintains.
//!
//! Depends on `store` (the log, through the `EventStore` port),
//! `event-schemas` (decoding) and `domain` (event types). Never on
//! `commands` or the API. GraphQL resolvers call the query functions that
//! live beside each read model here.
//!
//! Layout:
//! - [`runtime`]: [`ProjectorRuntime`] runs each projection: one leader per
//!   projection across processes (the others stand by), subscribing from
//!   its checkpoint, batching by count or time, and committing the
//!   read-model rows and the new checkpoint in one fenced transaction
//!   (exactly once). A handler that keeps failing marks the projection
//!   FAILED at that event instead of skipping it.
//! - [`leader`]: the per-projection advisory lock that elects the leader.
//! - [`progress`]: [`Progress`], how far each projection has come in this
//!   process (so a query carrying a consistency token can wait for its own
//!   writes) and what each local runner is doing (RUNNING, STANDBY, FAILED,
//!   STOPPED).
//! - [`status`]: [`status::status`], every projection's state, position,
//!   failure and lag (in events and seconds), readable from any process.
//! - [`read_models`]: one module per read model with its batch fold and its
//!   queries: [`read_models::accounts`] (profiles and wallet balances),
//!   [`read_models::listings`] (the catalogue, with stock and rating),
//!   [`read_models::orders`] (orders and their lines, per buyer and seller)
//!   and [`read_models::reviews`] (reviews per listing and the moderation
//!   queue). [`all`] lists them.
//! - `migrations/`: the read models' SQL and the `projection_checkpoints`
//!   table (position, generation, state, failure).

pub mod leader;
pub mod progress;
pub mod read_models;
pub mod runtime;
pub mod status;

pub use progress::{Progress, ProjectionState, RunnerStatus};
pub use runtime::{Generation, Projection, ProjectionError, ProjectorRuntime, RuntimeConfig};
pub use status::ProjectionStatus;

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
