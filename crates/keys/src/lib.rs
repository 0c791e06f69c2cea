//! Keys outside the log: crypto-shredding of personal data, the email
//! index key, and signed anchors of the log's head (DESIGN.md §6b).
//!
//! Depends on `store` (the [`marketplace_store::EventStore`] port it wraps)
//! and `event-schemas` (which fields are personal, and the sealing of
//! them); `api` and `cli` compose it. No other crate holds a key: the
//! command handler, the consumers and the audits read and write the log
//! through [`SealingStore`] and see personal fields opened, or erased.
//!
//! Layout:
//! - [`keyring`]: [`MasterKey`] (from configuration), [`Keyring`] — the
//!   `data_keys` table (one data key per person, wrapped under the master
//!   key; erasure destroys it and leaves a tombstone) and the email index
//!   key, the master key's rotation ([`Keyring::rotate`], which re-wraps
//!   keys and never touches an event), and its migrations.
//! - [`sealing`]: [`SealingStore`], the event store decorator that seals
//!   personal fields on append and opens them (one key query per batch,
//!   no cache, so an erasure is seen by every process at once) on read;
//!   [`SealingStore::raw`] gives the sealed events for `audit verify`.
//! - [`anchor`]: Ed25519-signed head checkpoints ([`Anchor`]), anchor
//!   files, and checking the log against them ([`anchor::check`]).
//!
//! Known differences: on the KurrentDB backend the key table still lives
//! in the read models' Postgres (the log and its keys are apart, as they
//! must be), and anchors find events by scanning (positions are sparse).
//! Erasure cannot reach copies outside the database: Postgres WAL
//! archives and backups keep the wrapped key until they expire (it stays
//! encrypted under the master key there).

pub mod anchor;
pub mod keyring;
pub mod sealing;

pub use anchor::{Anchor, AnchorKey};
pub use keyring::{migrate, KeyError, KeyState, Keyring, MasterKey, Rotation};
pub use sealing::SealingStore;
