//! The contract of every stored event, and the codec between stored events
//! and domain events.
//!
//! Depends on `domain` only. `commands` and `projections` encode and decode
//! through here, never with ad-hoc `serde_json` calls, so that upcasting an
//! old schema version happens in exactly one place.
//!
//! Layout:
//! - `schemas/<event.type>/v<N>.json`: one JSON Schema per event type and
//!   version (the files are the contract; tests keep them honest).
//! - `fixtures/<event.type>/v<N>[-<name>].json`: stored documents of each
//!   version (at least one per version).
//! - [`codec`]: [`encode`] a domain event to (type, version, data) and
//!   [`decode`] stored data back, upcasting old versions first;
//!   [`decode_any`] decodes into [`marketplace_domain::Event`] by stream category.
//! - [`upcast`]: the registry of upcasters (old version → current), written
//!   as typed `v1` structs with `From<v1> for v2`.
//!
//! - [`personal`]: which fields of which events are personal
//!   ([`personal::PERSONAL`]), sealing them under their owner's data key
//!   and opening them again (`null`, i.e. erased, without the key), and
//!   the email index key that names claim streams. The keys themselves,
//!   and the event store that seals on append and opens on read, live in
//!   `marketplace-keys`.
//!
//! `README.md` explains how to add a version and its upcaster.

pub mod codec;
pub mod personal;
pub mod upcast;

pub use codec::{decode, decode_any, encode, CodecError, Encoded};
