//! The one runtime for everything that consumes the event log: the
//! projections, the process managers and the live feeds.
//!
//! Layout:
//! - [`envelope`]: [`Envelope`], a stored event decoded once (through the
//!   codec and its upcasters) into the typed [`marketplace_domain::Event`];
//!   [`decode_for`] decodes a batch for a consumer, passing over what it
//!   cannot decode and does not read.

pub mod envelope;

pub use envelope::{decode_for, DecodeFailure, Envelope};
