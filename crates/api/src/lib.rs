//! The marketplace server: axum + async-graphql over the command handlers
//! and read models.
//!
//! It is the server's composition root: it depends on `commands`,
//! `projections`, `store`, `event-schemas`, `domain` and `embedded-postgres`.
//! Only the `marketplace` binary (`crates/cli`, which also holds the
//! operator commands and the tools) and the end-to-end tests depend on it.
//!
//! Layout:
//! - [`application`]: `Application::build(settings)` wires store, command
//!   handler, projectors and HTTP; `run_until_stopped` serves.
//! - [`http`]: the routes (`/graphql`, GraphiQL, `/healthz`, `/readyz`,
//!   `/metrics`; a projector-only process serves the last three; the
//!   provider's `POST /payments/callback`; `PUT /assets` and
//!   `GET /assets/{hash}`), auth header and consistency-token handling, the
//!   body size limit.
//! - [`metrics`]: the `/metrics` page — request latency histograms by
//!   operation, command outcomes/conflicts/retries, projection and consumer
//!   lag, the connection pool's use, the payment gateway's breaker, corrupted
//!   asset downloads.
//! - [`assets`]: digital assets' files in object storage (`object_store`:
//!   a local directory or S3), keyed by SHA-256; the streamed, hashed
//!   upload and the access-checked, re-verified, ranged download behind
//!   `PUT /assets` and `GET /assets/{hash}`.
//! - [`payments`]: the payment provider's HTTP protocol (documented there)
//!   and its adapter, and [`payments::Payments`]: the configured gateway
//!   behind its circuit breaker, and the provider callbacks' secret.
//!   `POST /payments/callback` and `depositFunds` settle intents through
//!   `marketplace_commands::flows::deposit`.
//! - [`graphiql`]: the self-hosted GraphiQL page and its embedded assets.
//! - [`ratelimit`]: per-client token buckets (per account, per IP for
//!   anonymous calls; every operation draws, a mutation per root field)
//!   and the failed-login throttle, behind `RATE_LIMITED`.
//! - [`proxy`]: the `--trusted-proxy` networks, and the client address
//!   behind them (the right-most untrusted `X-Forwarded-For` entry).
//! - [`documents`]: parsed GraphQL documents kept by their text, so a
//!   repeated operation is not parsed again.
//! - [`read_cache`]: the first catalogue pages, listings and accounts by
//!   id, cached in process and invalidated by their read models' commits.
//! - [`replicas`]: `--read-database-url`: GraphQL reads of the read models
//!   from Postgres hot standbys, a consistency token honoured on one only
//!   once it has replayed past the token's commit (else the primary
//!   answers), and a replica that is down never failing a read.
//! - [`roles`]: the roles an account holds now, looked up on the write side
//!   with a short cache: a token alone never grants a role.
//! - [`graphql`]: the schema of `api-contract.graphql` — types, queries,
//!   mutations, subscriptions.
//! - [`live`]: the feeds behind subscriptions (one log subscription per
//!   process, fanned out to WebSocket clients from committed events).
//! - [`error`]: the error taxonomy and its single mapping to
//!   `extensions.code`.
//! - [`auth`]: argon2 password hashing and JWT tokens.
//! - [`admin`]: operator actions that never go through the public API
//!   (creating an ADMIN account).
//! - [`anchors`]: where signed head anchors go (a file).
//! - [`shutdown`]: the drain, finish and stop phases of a graceful stop
//!   (unready, `Connection: close`, WebSockets closed with 1012, in-flight
//!   requests finished within a grace period, leaders' locks released).
//! - [`config`] (the master key: `MARKETPLACE_MASTER_KEY`, or a development
//!   key generated under the data directory), [`database`] (`DATABASE_URL`
//!   or the embedded cluster, migrations, the event store behind the
//!   sealing store of `marketplace-keys`), [`state`].
//! - [`telemetry`]: logs, and OpenTelemetry traces over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the process-wide subscriber, its
//!   flush on shutdown).
//! - `graphql::erasure`: `eraseAccount`, crypto-shredding for the owner or
//!   an ADMIN.

pub mod admin;
pub mod anchors;
pub mod application;
pub mod assets;
pub mod auth;
pub mod config;
pub mod database;
pub mod documents;
pub mod error;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod live;
pub mod metrics;
pub mod payments;
pub mod proxy;
pub mod ratelimit;
pub mod read_cache;
pub mod replicas;
pub mod roles;
pub mod shutdown;
pub mod state;
pub mod telemetry;

pub use application::Application;
pub use config::Settings;
