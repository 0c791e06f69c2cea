//! The one runtime for everything that consumes the event log: the
//! projections, the process managers and the live feeds.
//!
//! Every consumer reads the log through the same parts:
//! - [`envelope`]: [`Envelope`], a stored event decoded once (through the
//!   codec and its upcasters) into the typed [`marketplace_domain::Event`];
//!   [`decode_for`] decodes a batch for a consumer, passing over what it
//!   cannot decode and does not read.
//! - [`subscription`]: [`Subscription`], catch-up then live from a
//!   position, in batches, resubscribing after the last delivered event
//!   whenever the log fails. It never gives up; only shutdown ends it.
//! - [`retry`]: [`Backoff`], the one backoff policy (exponential, with
//!   jitter) for transient errors and failing events alike.
//! - [`leader`]: one leader per consumer across processes — a Postgres
//!   advisory lock on a dedicated connection plus a fencing generation.
//! - [`checkpoints`]: the `consumer_checkpoints` table (all its SQL).
//! - [`runner`]: [`Runner`], which runs a reacting consumer (a process
//!   manager, as a [`Handler`]): STANDBY → RUNNING → FAILED after bounded
//!   retries, with lanes, fenced checkpoints and a per-process
//!   [`Registry`] of states.
//! - [`trace`]: the W3C trace context events carry in their metadata:
//!   written from the span that decided an event, followed by the spans
//!   of whatever consumes it.
//! - [`status`]: the cluster-wide status of every consumer of
//!   [`checkpoints`] (state, position, lag, leader, last error).
//!
//! The projections' runtime (`marketplace_projections::runtime`) leads
//! builds with the same [`leader`], [`subscription`] and [`retry`] parts;
//! its checkpoints are per build and commit in the read model's own
//! transaction, so they live with the read models.

pub mod checkpoints;
pub mod envelope;
pub mod leader;
pub mod retry;
pub mod runner;
pub mod status;
pub mod subscription;
pub mod trace;

pub use checkpoints::{Checkpoints, Generation};
pub use envelope::{decode_for, DecodeFailure, Envelope};
pub use retry::{Backoff, Retry};
pub use runner::{Handler, HandlerError, LocalStatus, Registry, Runner, RunnerConfig, RunnerState};
pub use subscription::{Batching, Next, Subscription};
