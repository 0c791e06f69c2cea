//! The `marketplace` binary: see `marketplace --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    marketplace_api::telemetry::init("info,sqlx=warn,tower_http=warn");
    let cli = marketplace_cli::Cli::parse();
    match marketplace_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
