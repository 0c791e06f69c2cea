//! The `marketplace` binary: see `marketplace --help`.

use clap::Parser;

/// mimalloc rather than glibc's malloc: under a flash sale a third of the
/// server's CPU went to glibc's arena locking and consolidation (`perf` of
/// `bench checkout`, BENCHMARKS.md). It hands freed memory back to the
/// system, unless the command keeps a heap reserve (`marketplace_cli::heap`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = marketplace_cli::Cli::parse();
    // Before any thread starts: a heap reserve needs the allocator to keep
    // freed memory, which it only reads from its environment at load.
    let exec_failure = (cli.heap_reserve() > 0)
        .then(marketplace_cli::heap::keep_freed_memory)
        .flatten();
    run(cli, exec_failure)
}

#[tokio::main]
async fn run(cli: marketplace_cli::Cli, exec_failure: Option<String>) -> std::process::ExitCode {
    use marketplace_api::telemetry::{self, TracingSettings};
    let telemetry = telemetry::init(
        "info,sqlx=warn,tower_http=warn",
        &TracingSettings::from_env(),
    );
    let result = marketplace_cli::run(cli, exec_failure).await;
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
