//! `kurrentdb-testserver --listen 127.0.0.1:2113`: the wire-compatible test
//! server as a process, so the marketplace can be served against it by hand
//! (`--event-store "kurrentdb://127.0.0.1:2113?tls=false"`). In memory only.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

/// A wire-compatible, in-memory KurrentDB for tests and local runs.
#[derive(Debug, Parser)]
#[command(name = "kurrentdb-testserver", version)]
struct Args {
    /// Address to listen on (plaintext gRPC).
    #[arg(long, default_value = "127.0.0.1:2113")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let server = kurrentdb_testserver::serve(listener, Arc::new(kurrentdb_testserver::Log::new()))?;
    println!(
        "kurrentdb test server (in memory, plaintext) listening: {}",
        server.connection_string()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
