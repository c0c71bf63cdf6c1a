//! `test-origin`: runs a [`TestOrigin`] as a process, so testnet.sh can put
//! stand-in origins behind Switchyard nodes.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_tests::origin::{parse_duration, OriginConfig, TestOrigin};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// A stand-in origin: greets each connection with its name, then echoes.
#[derive(Debug, Parser)]
#[command(name = "test-origin")]
struct Args {
    /// Written as the first line of every connection and in health responses.
    #[arg(long)]
    name: String,
    /// Data (greeting + echo) address.
    #[arg(long)]
    listen: SocketAddr,
    /// HTTP health-check address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Status code for health responses.
    #[arg(long, default_value_t = 200, requires = "http",
          value_parser = clap::value_parser!(u16).range(100..=999))]
    http_status: u16,
    /// Delay before answering health requests: 250ms, 2s, or milliseconds.
    #[arg(long, requires = "http", value_parser = parse_duration)]
    http_delay: Option<Duration>,
    /// Expect a PROXY protocol v1/v2 header on each data connection.
    #[arg(long)]
    accept_proxy: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // testnet.sh redirects logs to files; keep escape codes out of them.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One line, without the backtrace anyhow adds under RUST_BACKTRACE.
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-origin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Install handlers before listening, so a signal sent as soon as the
    // port answers isn't lost to the default (abrupt) disposition.
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;

    let mut origin = TestOrigin::start(OriginConfig {
        name: args.name,
        listen: args.listen,
        http: args.http,
        accept_proxy: args.accept_proxy,
    })
    .await
    .context("start test origin")?;
    origin.set_http_status(args.http_status);
    if let Some(delay) = args.http_delay {
        origin.set_http_delay(delay);
    }
    let http = origin
        .http_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        name = %origin.name(),
        data = %origin.addr(),
        http = %http,
        accept_proxy = args.accept_proxy,
        "test origin listening"
    );

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    tracing::info!(name = %origin.name(), "stopping");
    origin.stop().await;
    Ok(())
}
