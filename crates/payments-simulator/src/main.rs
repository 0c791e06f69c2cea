//! `payments-simulator --listen 127.0.0.1:8099 --callback-secret S`: the
//! test payment provider as a process, so the marketplace can be served
//! against it by hand (`--payments-url http://127.0.0.1:8099
//! --payments-callback-secret S --payments-callback-url
//! http://127.0.0.1:8080/payments/callback`). In memory only.

use anyhow::Context;
use clap::Parser;

/// A payment provider speaking the marketplace's gateway protocol.
#[derive(Debug, Parser)]
#[command(name = "payments-simulator", version)]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8099")]
    listen: std::net::SocketAddr,
    /// The secret its callbacks carry (`Authorization: Bearer`).
    #[arg(long, env = "PAYMENTS_SIMULATOR_CALLBACK_SECRET", default_value = "")]
    callback_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let simulator = payments_simulator::serve(listener, &args.callback_secret)?;
    println!("payments simulator listening: {}", simulator.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
