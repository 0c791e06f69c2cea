//! The read side: the projector runtime and the Postgres read models it
//! maintains.
//!
//! Depends on `store` (the log, through the `EventStore` port),
//! `consumers` (each event decoded once into a typed envelope, through
//! `event-schemas`) and `domain` (event types). Never on `commands` or the
//! API. GraphQL resolvers call the query functions that
//! live beside each read model here.
//!
//! Layout:
//! - [`runtime`]: [`ProjectorRuntime`] runs each projection: one leader per
//!   build across processes (the others stand by), subscribing from its
//!   checkpoint, batching by count or time, and committing the read-model
//!   rows and the new checkpoint in one fenced transaction (exactly once).
//!   A handler that keeps failing marks the projection FAILED at that event
//!   instead of skipping it. When a projection's `VERSION` is newer than its
//!   live build, its runners rebuild it beside the live one (bulk load,
//!   then indexes, then live batching) and switch it in once it has caught
//!   up, without downtime; [`ProjectorRuntime::rebuild`] forces such a
//!   rebuild (`marketplace projections rebuild NAME`). Its module
//!   documentation is the design; `runtime/mod.rs` holds the runner's
//!   lifecycle (leader, standby, FAILED), `lead.rs` the batch loop,
//!   `commit.rs` the fenced commit and `rebuild.rs` the rebuild and switch.
//! - [`builds`]: each version of a projection in its own schema
//!   (`rm_<name>_v<N>`), the stable views in `public` that the queries read
//!   (`rm_listings`, …), installing, creating, switching and dropping
//!   builds. It is the one module with SQL on `projection_checkpoints`
//!   (takeover, fenced checkpoint moves, state marks, the switch's rows,
//!   the rows the status reads).
//! - [`verify`]: [`verify::verify`] rebuilds every read model into scratch
//!   schemas and compares checksums with the live builds, table by table.
//! - leadership: the per-build advisory lock that elects the leader is
//!   `marketplace_consumers::leader` (namespace `PROJECTION_LOCKS`), shared
//!   with the process managers; backoff and subscriptions are shared too.
//! - [`progress`]: [`Progress`], how far each projection has come in this
//!   process (so a query carrying a consistency token can wait for its own
//!   writes) and what each local runner is doing (RUNNING, STANDBY, FAILED,
//!   STOPPED).
//! - [`status`]: [`status::status`], every projection's state, position,
//!   failure and lag (in events and seconds), readable from any process.
//! - [`read_models`]: one module per read model with its batch fold (over
//!   typed envelopes, matched exhaustively: wildcard arms are denied there)
//!   and its queries: [`read_models::accounts`] (profiles and wallet balances),
//!   [`read_models::listings`] (the catalogue, with stock and rating),
//!   [`read_models::orders`] (orders and their lines, per buyer and seller)
//!   [`read_models::notifications`] (what buyers, sellers and authors are
//!   told), and [`read_models::reviews`] (reviews per listing and the moderation
//!   queue). [`all`] lists them. Each owns its `VERSION` and the DDL of
//!   that version's tables ([`builds::Table`]: tables, and secondary
//!   indexes apart so that a bulk load creates them last); its queries read
//!   the stable views and never change for a rebuild.
//! - `migrations/`: the `projection_checkpoints` table (one row per build:
//!   schema, live, position, generation, state, failure) and the history of
//!   the read models' tables, which the builds' schemas took over.

pub mod builds;
pub mod progress;
pub mod read_models;
pub mod runtime;
pub mod status;
pub mod verify;

pub use builds::{Build, Table};
pub use progress::{Progress, ProjectionState, RebuildProgress, RunnerStatus, WalLsn};
pub use runtime::{
    Generation, Projection, ProjectionError, ProjectorRuntime, RebuildReport, RuntimeConfig,
};
pub use status::{ProjectionStatus, RebuildStatus};
pub use verify::{ProjectionCheck, TableCheck};

/// Applies the read-model migrations, then gives every projection of
/// [`all`] without a live build its first one (schema, tables, indexes and
/// views) and drops retired builds (idempotent; safe from several
/// processes). A projection whose live build is older than its code is
/// left to its runners, which rebuild it without downtime.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // The event store keeps its own migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    // The process managers' checkpoints, which the status reads too.
    marketplace_consumers::checkpoints::migrate(pool).await?;
    builds::install(pool, &all()).await?;
    Ok(())
}

/// Every projection the marketplace runs.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(read_models::accounts::AccountsProjection),
        std::sync::Arc::new(read_models::listings::ListingsProjection),
        std::sync::Arc::new(read_models::orders::OrdersProjection),
        std::sync::Arc::new(read_models::reviews::ReviewsProjection),
        std::sync::Arc::new(read_models::notifications::NotificationsProjection),
    ]
}
