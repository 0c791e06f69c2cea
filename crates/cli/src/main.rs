//! The `marketplace` binary: see `marketplace --help`.

use clap::Parser;

/// mimalloc rather than glibc's malloc: under a flash sale a third of the
/// server's CPU went to glibc's arena locking and consolidation (`perf` of
/// `bench checkout`, BENCHMARKS.md), and mimalloc hands freed memory back
/// to the system instead of keeping it in per-thread arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use marketplace_api::telemetry::{self, TracingSettings};
    let telemetry = telemetry::init(
        "info,sqlx=warn,tower_http=warn",
        &TracingSettings::from_env(),
    );
    let cli = marketplace_cli::Cli::parse();
    let result = marketplace_cli::run(cli).await;
    // The last spans are sent before the process exits (it blocks: off
    // the runtime's threads).
    let _ = tokio::task::spawn_blocking(|| telemetry.shutdown()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
