//! Command handling: load → decide → append, with bounded, jittered retries on
//! optimistic-concurrency conflicts, and the flows that span aggregates.
//!
//! Depends on `domain` (decisions), `event-schemas` (encoding), `store`
//! (the [`marketplace_store::EventStore`] port) and `consumers` (the typed
//! envelope the process managers receive); never on a concrete backend,
//! projections or the API.
//!
//! Layout:
//! - [`handler`]: [`CommandHandler::execute`], the one generic path every
//!   command takes, with [`CommandContext`] (correlation, causation, actor)
//!   and the [`CommandError`] taxonomy.
//!   [`CommandHandler::execute_idempotent`] runs a command once per client
//!   idempotency key (recorded by the store in the append's transaction).
//!   [`CommandHandler::with_email_index`] gives it the key that names email
//!   claim streams (an HMAC of the email; the server sets the key table's).
//! - [`stats`]: counters of command outcomes, conflicts and retries per
//!   aggregate category (the API's `/metrics` reads them).
//! - [`audit`]: a stream's history with the state after each event, and an
//!   aggregate as of a moment (events decoded as the live system does).
//! - `hot`: hot streams — commands for a stream with a command in flight
//!   queue in process and are decided and appended together, each with its
//!   own outcome ([`CommandHandler::execute`]).
//! - `cache`: the aggregate cache — recent states with their revision, so
//!   a command reads only its stream's tail. After a miss the handler
//!   starts from the store's snapshot of a snapshotted aggregate (listings,
//!   the fee ledger), taken every [`handler::DEFAULT_SNAPSHOT_EVERY`] events.
//!   Saga steps derive their event ids from the step, so a repeated step is
//!   recognised by the store and the aggregates keep no "already done" sets.
//! - [`flows`]: one file per use case that spans aggregates or that the API
//!   and the tools share — registering an account (claim the email, then
//!   open the account; an erased account's email is free again), finding
//!   an account to log in, pricing a new order's lines, checking an order
//!   out in its placement's own atomic multi-stream append (`checkout`:
//!   hot listings batch per listing, each order keeping its own outcome;
//!   the saga's path where the store has no such append), settling a
//!   deposit's payment intent (record, then credit once). Erasure itself is
//!   the API's (`eraseAccount`): it destroys the data key, which lives
//!   outside this crate, then runs `AccountCommand::Erase`.
//! - [`payments`]: the [`payments::PaymentGateway`] port, its simulated
//!   adapter, and [`payments::ProtectedGateway`] (the `failsafe` circuit
//!   breaker plus retries with backoff, jitter and a deadline).
//! - [`process`]: process managers (sagas) with their own checkpoints: the
//!   checkout saga, the payout process and the deposit saga, the one list of them
//!   ([`process::managers`]), and the runner that feeds them the log.

pub mod audit;
mod cache;
pub mod flows;
pub mod handler;
mod hot;
pub mod payments;
pub mod process;
pub mod stats;

pub use handler::{
    CommandContext, CommandError, CommandHandler, Executed, Idempotent, LoadError, Loaded,
    RetryPolicy, DEFAULT_CACHE_CAPACITY,
};
