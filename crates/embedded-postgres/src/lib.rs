//! A private PostgreSQL cluster, started from the system's server binaries,
//! and the test-database helper built on it.
//!
//! This is a tool, not a port: it depends on nothing of the marketplace.
//! The `marketplace` binary uses it when `DATABASE_URL` is unset, and every
//! crate's tests use it (through `testdb`) for a throwaway cluster. The event
//! store knows nothing of it; it only ever receives a URL.
//!
//! Layout:
//! - [`launcher`]: [`EmbeddedPostgres`], the handle of a running cluster:
//!   [`start_or_reuse`](EmbeddedPostgres::start_or_reuse) a persistent one
//!   under a data directory, or [`start_ephemeral`](EmbeddedPostgres::start_ephemeral)
//!   a throwaway one tuned for speed, or [`start_standby`](EmbeddedPostgres::start_standby)
//!   a hot standby of a running one; [`stop`](EmbeddedPostgres::stop) it, or
//!   [`crash_and_restart`](EmbeddedPostgres::crash_and_restart) it (immediate
//!   shutdown, then a start on the same port and data) to test recovery.
//!   Also [`PgBinaries`] (where `initdb` and `postgres` are found) and
//!   [`EmbeddedError`].
//! - `testdb` (feature `testing`): `TestDatabase::create()` gives each test a fresh, empty database on one cluster per test
//!   process — the one `DATABASE_URL` names, or an ephemeral embedded one.
//!   It panics instead of returning errors: it is test support. `start_test_standby`
//!   clones that cluster into a hot standby (a real streaming replica) for tests of
//!   read replicas.

pub mod launcher;

#[cfg(any(test, feature = "testing"))]
pub mod testdb;

pub use launcher::{ClusterLifetime, EmbeddedError, EmbeddedPostgres, PgBinaries, BINDIR_ENV};
