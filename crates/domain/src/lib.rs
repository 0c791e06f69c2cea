//! The marketplace domain: aggregates as pure `decide`/`evolve` functions,
//! their commands and events, value types and errors.
//!
//! Nothing here does I/O: no Tokio, no SQL, no clock, no randomness. Time,
//! ids and looked-up facts (the acting account's roles, whether an email's
//! previous claimant exists) enter on the command, so every decision is a
//! plain function of (state, command) and is tested as given/when/then.
//! This crate depends on no other crate of the workspace.
//!
//! Layout:
//! - [`aggregate`]: the [`Aggregate`] trait and the given/when/then harness.
//! - [`event`]: [`DomainEvent`] (the stored name and version, defined once
//!   beside each event type) and [`EventSet`], the per-aggregate event enum.
//! - [`any_event`]: [`Event`], an event of any aggregate (one variant per
//!   aggregate), the one list of aggregates that consumers match on, and
//!   [`AggregateKind`], the same list without the events.
//! - [`values`]: validated value types (ids, [`values::Email`],
//!   [`values::Money`], …), and [`values::Personal`], a personal field of
//!   an event that reads as erased once its owner's key is destroyed.
//! - One folder per aggregate — [`account`] (with the wallet and escrow),
//!   [`email_claim`], [`listing`] (with stock), [`order`], [`payment`] (a
//!   deposit's payment intent at the provider), [`review`], and [`asset`]
//!   (a digital asset's stored file and its audit trail, in one file) —
//!   each with `command.rs`, `event.rs`, `state.rs`, `error.rs`, and
//!   `mod.rs` holding `decide`, `evolve` and their tests.

pub mod account;
pub mod aggregate;
pub mod any_event;
pub mod asset;
pub mod email_claim;
pub mod event;
pub mod listing;
pub mod order;
pub mod payment;
pub mod review;
pub mod values;

pub use aggregate::Aggregate;
pub use any_event::{AggregateKind, Event};
pub use event::{DecodeError, DomainEvent, EventSet};
