//! Command handling: load → decide → append, with bounded, jittered retries on
//! optimistic-concurrency conflicts, and the flows that span aggregates.
//!
//! Depends on `domain` (decisions), `event-schemas` (encoding) and `store`
//! (the [`marketplace_store::EventStore`] port); never on a concrete backend,
//! projections or the API.
//!
//! Layout:
//! - [`handler`]: [`CommandHandler::execute`], the one generic path every
//!   command takes, with [`CommandContext`] (correlation, causation, actor)
//!   and the [`CommandError`] taxonomy.
//! - [`flows`]: one file per multi-step use case — registering an account
//!   (claim the email, then open the account) and finding an account to log
//!   in.

pub mod flows;
pub mod handler;

pub use handler::{
    CommandContext, CommandError, CommandHandler, Executed, LoadError, Loaded, RetryPolicy,
};
