//! The one runtime for everything that consumes the event log: the
//! projections, the process managers and the live feeds.
//!
//! Layout:
//! - [`envelope`]: [`Envelope`], a stored event decoded once (through the
//!   codec and its upcasters) into the typed [`marketplace_domain::Event`].

pub mod envelope;

pub use envelope::{DecodeFailure, Envelope};
