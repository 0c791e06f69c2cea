//! The marketplace API and binary: axum + async-graphql over the command
//! handlers and read models, plus the `marketplace` command line.
//!
//! Depends on every other crate (it is the composition root); nothing
//! depends on it except the end-to-end tests.
//!
//! Layout:
//! - [`cli`]: argument parsing and the one dispatch of subcommands
//!   (`serve` by default, `migrate`, `schema`, `bench`, `seed`,
//!   `accounts create-admin`, `projections status|rebuild|verify`).
//! - [`projections_cli`]: `marketplace projections …`: the read models'
//!   status (version, position, lag, state, rebuild progress), a rebuild
//!   without downtime with a progress bar, and verification against a
//!   rebuild from the log, table by table.
//! - [`application`]: `Application::build(settings)` wires store, command
//!   handler, projectors and HTTP; `run_until_stopped` serves.
//! - [`http`]: the routes (`/graphql`, GraphiQL, `/healthz`, `/readyz`,
//!   `/metrics`), auth header and consistency-token handling, the body
//!   size limit.
//! - [`metrics`]: the `/metrics` page — request latency histograms by
//!   operation, command outcomes/conflicts/retries, projection lag.
//! - [`graphiql`]: the self-hosted GraphiQL page and its embedded assets.
//! - [`ratelimit`]: per-client token buckets (per account, per IP for
//!   anonymous calls; every operation draws, a mutation per root field)
//!   and the failed-login throttle, behind `RATE_LIMITED`.
//! - [`read_cache`]: the first catalogue pages, listings and accounts by
//!   id, cached in process and invalidated by their read models' commits.
//! - [`roles`]: the roles an account holds now, looked up on the write side
//!   with a short cache: a token alone never grants a role.
//! - [`graphql`]: the schema of `api-contract.graphql` — types, queries,
//!   mutations, subscriptions.
//! - [`live`]: the feeds behind subscriptions (one log subscription per
//!   process, fanned out to WebSocket clients from committed events).
//! - [`error`]: the error taxonomy and its single mapping to
//!   `extensions.code`.
//! - [`auth`]: argon2 password hashing and JWT tokens.
//! - [`seed`]: `marketplace seed`, a realistic marketplace written through
//!   the command path, with the checkout saga and payout process in-process.
//! - [`config`], [`database`], [`state`], [`telemetry`], [`bench`].

pub mod admin;
pub mod application;
pub mod audit_cli;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod database;
pub mod error;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod live;
pub mod metrics;
pub mod projections_cli;
pub mod ratelimit;
pub mod read_cache;
pub mod roles;
pub mod seed;
pub mod state;
pub mod telemetry;

pub use application::Application;
pub use config::Settings;
