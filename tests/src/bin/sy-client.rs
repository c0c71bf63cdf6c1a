//! `sy-client`: a one-shot client for test origins, so testnet.sh can check
//! which origin a connection through Switchyard reached.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard_tests::origin::{connect_from, parse_duration, read_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::error::Elapsed;
use tokio::time::{timeout_at, Instant};

/// Connects to ADDR and prints the first line received (a test origin's name).
/// With --send, then writes TEXT, half-closes, and prints what comes back.
#[derive(Debug, Parser)]
#[command(name = "sy-client")]
struct Args {
    /// Address to connect to, e.g. 127.0.0.1:10001.
    addr: SocketAddr,
    /// Local source IP to connect from.
    #[arg(long)]
    from: Option<IpAddr>,
    /// Give up after this long, in total: 5s, 250ms, or milliseconds.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Text to send after the first line.
    #[arg(long)]
    send: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sy-client: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let addr = args.addr;
    let deadline = Instant::now() + args.timeout;
    let limit = args.timeout;

    let stream = step(
        &format!("connect to {addr}"),
        limit,
        timeout_at(deadline, connect_from(addr, args.from)).await,
    )?;
    let mut reader = BufReader::new(stream);
    let first = step(
        &format!("read first line from {addr}"),
        limit,
        timeout_at(deadline, read_line(&mut reader)).await,
    )?;
    println!("{first}");

    if let Some(text) = &args.send {
        let exchange = async {
            reader.get_mut().write_all(text.as_bytes()).await?;
            reader.get_mut().shutdown().await?;
            let mut back = Vec::new();
            // Through the BufReader: it may already hold echoed bytes.
            reader.read_to_end(&mut back).await?;
            Ok(back)
        };
        let back = step(
            &format!("exchange with {addr}"),
            limit,
            timeout_at(deadline, exchange).await,
        )?;
        let back = String::from_utf8_lossy(&back);
        println!("{}", back.strip_suffix('\n').unwrap_or(&back));
    }
    Ok(())
}

/// Labels a step's failure so the message says where it got stuck.
fn step<T>(what: &str, limit: Duration, res: Result<io::Result<T>, Elapsed>) -> Result<T, String> {
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Err(_) => Err(format!("{what}: timed out after {limit:?}")),
    }
}

/// `Connection refused (os error 111)` reads oddly mid-sentence; print
/// `connection refused`.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}
