//! The `marketplace` binary: one command line over the server, the
//! operator's commands and the tools.
//!
//! Depends on `api` (the server it serves, and its database and
//! configuration helpers), `keys` (the master and anchor keys), `commands`, `projections`, `store` and `domain`;
//! nothing depends on it. The tools live here, not in the API crate, and
//! reach the marketplace through the same use cases the API does: orders
//! are priced by `marketplace_commands::flows::place_order`, and the
//! process managers come from `marketplace_commands::process::managers`.
//!
//! Layout:
//! - [`cli`]: argument parsing and the one dispatch of subcommands
//!   (`serve` by default, `migrate`, `schema`, `accounts create-admin`,
//!   `projections …`, `audit …`, `keys rotate`, `seed`, `bench …`), and the
//!   keys every command reads with (`--master-key`, `--anchor-key`).
//! - [`projections`]: `marketplace projections …`: the read models' status
//!   (version, position, lag, state, rebuild progress), a rebuild without
//!   downtime with a progress bar, and verification against a rebuild from
//!   the log, table by table.
//! - [`audit`]: `marketplace audit …`: the log itself for auditors — hash
//!   chains, a stream's history, an aggregate as of a moment, a request's
//!   trace, a replay check of the read models, signed head anchors
//!   (`audit anchor`, `audit verify --anchor`).
//! - [`seed`]: `marketplace seed`, a realistic marketplace written through
//!   the command path, with the process managers running in-process.
//! - [`bench`]: `marketplace bench …`, throughput figures for BENCHMARKS.md.

pub mod audit;
pub mod bench;
pub mod cli;
pub mod projections;
pub mod seed;

pub use cli::{run, Cli};
