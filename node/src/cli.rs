//! The command line: `run`, `check`, `status`, `explain`, `geoip lookup|build`, `ca init`,
//! `cert issue` and `cert revoke`. Parsing and printing only; the work is in `App`, the status client, the
//! locator and gossip's certificate code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{App, StartOptions};
use crate::config::Config;
use crate::error::Error;
use crate::status;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Multi-region TCP load balancer: an edge node of the Switchyard mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a node: proxies its apps, probes origins, serves status. SIGHUP reloads the
    /// config; SIGTERM drains and stops.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validates a config file and exits non-zero with the location of the first error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The cluster's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Node certificates for the mesh's mutual TLS.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Explains how a node would steer a client now: its location, each pool considered,
    /// the origin.
    Explain {
        /// The load balancer whose steering to explain.
        #[arg(long, required_unless_present = "dns", conflicts_with = "dns")]
        lb: Option<String>,
        /// Or a name of the mesh's DNS zone: which nodes it is answered with, and why not
        /// the others.
        #[arg(long)]
        dns: Option<String>,
        #[arg(long)]
        client: std::net::IpAddr,
        #[arg(long, default_value = "127.0.0.1:9900", env = "SWITCHYARD_STATUS")]
        addr: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// GeoIP tools: look an address up, build a small database.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// Shows a node's status: apps, load balancers, pools and origin health.
    Status {
        /// The node's status_listen address.
        #[arg(long, default_value = "127.0.0.1:9900", env = "SWITCHYARD_STATUS")]
        addr: SocketAddr,
        /// Print the raw JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GeoipCommand {
    /// Country, subdivision and region of an address, and why.
    Lookup {
        ip: std::net::IpAddr,
        /// A MaxMind-format database (GeoLite2/GeoIP2, DB-IP lite, or one from `geoip build`).
        #[arg(long)]
        db: PathBuf,
    },
    /// Builds a small database from CSV lines `cidr,country[,subdivision[,lat,lon]]`, for
    /// private networks and tests.
    Build {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Creates a cluster CA: DIR/ca.crt and DIR/ca.key (mode 0600). Keep ca.key offline.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The cluster id, written into the CA's name.
        #[arg(long, default_value = "switchyard")]
        cluster: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issues a certificate for one node: OUT/ID.crt and OUT/ID.key (mode 0600).
    Issue {
        /// The directory holding ca.crt and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The node id, as in its [node] id.
        #[arg(long)]
        node: String,
        /// The one region the node may speak for, as in its [node] region (e.g. WEU). Peers
        /// drop its claims about any other, and it refuses to start configured for another.
        /// Without it the node may speak for any region (older certificates are like that).
        #[arg(long)]
        region: Option<switchyard_geo::Region>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Adds a node id or a certificate to a revocation list ([mesh] revoked), creating it if
    /// missing. Nodes refuse what it lists once they reload (SIGHUP).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["node", "serial", "cert"])))]
    Revoke {
        /// The revocation list file.
        #[arg(long)]
        list: PathBuf,
        /// Revoke every certificate naming this node id.
        #[arg(long)]
        node: Option<String>,
        /// Revoke one certificate by its serial, in hex (as `cert issue` prints it).
        #[arg(long)]
        serial: Option<String>,
        /// Revoke the certificate in this file, by its serial.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A one-shot command piped into `head` should end quietly when the pipe closes, as
        // other command-line tools do. `run` keeps Rust's default (SIGPIPE ignored), since a
        // proxy writes to sockets that close under it all the time.
        // SAFETY: setting a signal disposition to the default has no preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match &cli.command {
        Command::Check { config } => match Config::load(config) {
            Ok(cfg) => {
                println!(
                    "{}: ok (node {} in {}; {} monitors, {} pools, {} load balancers, {} apps)",
                    config.display(),
                    cfg.node.id,
                    cfg.node.region,
                    cfg.monitors.len(),
                    cfg.pools.len(),
                    cfg.load_balancers.len(),
                    cfg.apps.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.into()),
        },
        Command::Ca {
            command: CaCommand::Init { out, cluster },
        } => match switchyard_gossip::tls::init_ca(out, cluster) {
            Ok(p) => {
                println!(
                    "created the cluster CA: {} and {} (keep the key safe; it signs node certificates)",
                    p.cert.display(),
                    p.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.into()),
        },
        Command::Cert {
            command:
                CertCommand::Issue {
                    ca,
                    node,
                    region,
                    out,
                },
        } => match switchyard_gossip::tls::issue_cert_in(ca, node, *region, out) {
            Ok(p) => {
                let region = match region {
                    Some(r) => format!(" in region {r}"),
                    None => " (any region)".into(),
                };
                // The serial is what a revocation list names to revoke this one certificate.
                let serial = switchyard_gossip::tls::serial_of_file(&p.cert)
                    .map(|s| format!(", serial {s}"))
                    .unwrap_or_default();
                println!(
                    "issued a certificate for node {node}{region}{serial}: {} and {}",
                    p.cert.display(),
                    p.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.into()),
        },
        Command::Cert {
            command:
                CertCommand::Revoke {
                    list,
                    node,
                    serial,
                    cert,
                },
        } => {
            use switchyard_gossip::tls::Revocation;
            let what = match (node, serial, cert) {
                (Some(n), _, _) => Revocation::Node(n.clone()),
                (_, Some(s), _) => Revocation::Serial(s.clone()),
                (_, _, Some(c)) => Revocation::CertFile(c.clone()),
                // clap requires one of the three.
                _ => return fail_msg("say what to revoke: --node ID, --serial HEX or --cert FILE"),
            };
            match switchyard_gossip::tls::revoke(list, &what) {
                Ok(Some(entry)) => {
                    println!(
                        "added {entry} to {}; nodes refuse it once they reload (SIGHUP)",
                        list.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!("{} already revokes it", list.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.into()),
            }
        }
        Command::Geoip {
            command: GeoipCommand::Lookup { ip, db },
        } => {
            let cfg = crate::config::GeoConfig {
                database: Some(db.clone()),
                ..Default::default()
            };
            // The region a client gets with no database is the node's; here there is no
            // node, so say "unknown" instead of inventing one.
            match crate::locate::Locator::new(Some(&cfg), switchyard_geo::Region::Weu) {
                Ok(geo) => {
                    let l = geo.locate(*ip);
                    println!(
                        "{ip}: country {}, subdivision {}, region {} ({})",
                        l.country.as_deref().unwrap_or("unknown"),
                        l.subdivision.as_deref().unwrap_or("-"),
                        l.geo
                            .region
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        l.source.describe()
                    );
                    if let Some((lat, lon)) = l.geo.location {
                        println!("location {lat:.4}, {lon:.4}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Geoip {
            command: GeoipCommand::Build { from, out },
        } => {
            let csv = match std::fs::read_to_string(from) {
                Ok(c) => c,
                Err(e) => return fail_msg(&format!("{}: cannot read: {e}", from.display())),
            };
            match switchyard_geo::geoip::build(&csv, out) {
                Ok(summary) => {
                    println!(
                        "wrote {} ({} networks from {})",
                        out.display(),
                        summary.networks,
                        from.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail_msg(&e.to_string()),
            }
        }
        Command::Explain {
            lb,
            dns,
            client,
            addr,
            json,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail_msg(&format!("cannot start the runtime: {e}")),
            };
            type Render = fn(&str) -> serde_json::Result<String>;
            let (path, render): (String, Render) = match (lb, dns) {
                (Some(lb), _) => (format!("/v1/explain?lb={lb}&client={client}"), |body| {
                    serde_json::from_str::<crate::core::explain::Explanation>(body)
                        .map(|e| crate::core::explain::render(&e))
                }),
                (None, Some(name)) => (format!("/v1/explain?dns={name}&client={client}"), |body| {
                    serde_json::from_str::<crate::core::dns::DnsExplanation>(body)
                        .map(|e| crate::core::dns::render(&e))
                }),
                (None, None) => return fail_msg("explain what: give --lb NAME or --dns NAME"),
            };
            match rt.block_on(status::http_get(*addr, &path)) {
                Ok((200, body)) if *json => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Ok((200, body)) => match render(&body) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail_msg(&format!("{addr}: /v1/explain is not an explanation: {e}")),
                },
                Ok((_, body)) => fail_msg(body.trim()),
                Err(e) => fail(e),
            }
        }
        Command::Status { addr, json } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail_msg(&format!("cannot start the runtime: {e}")),
            };
            let result = rt.block_on(async {
                if *json {
                    let (code, body) = status::http_get(*addr, "/v1/status").await?;
                    if code != 200 {
                        return Err(Error::Status {
                            addr: *addr,
                            message: format!("/v1/status answered {code}"),
                        });
                    }
                    Ok(body)
                } else {
                    Ok(status::render(&status::fetch(*addr).await?))
                }
            });
            match result {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Run { config } => {
            init_tracing();
            let cfg = match Config::load(config) {
                Ok(c) => c,
                Err(e) => return fail(e.into()),
            };
            // With one usable CPU (a CPU mask or a cgroup quota), a current-thread runtime
            // runs everything on the one thread, without the multi-thread scheduler's
            // hand-offs between the main thread and its single worker: a few percent more
            // new connections per second, and a lower p99, when the proxy has a core to
            // itself (tests/bench).
            let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
            let mut builder = if one_cpu {
                tracing::info!("one usable CPU: running a current-thread runtime");
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail_msg(&format!("cannot start the runtime: {e}")),
            };
            match rt.block_on(run(cfg, config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

async fn run(cfg: Config, path: PathBuf) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let drain = cfg.node.drain_timeout;
    // Handlers first: a SIGHUP or SIGTERM that arrives while the node starts must not take
    // the default action (killing it).
    let sig =
        |k| signal(k).map_err(|e| Error::Reload(format!("cannot install a signal handler: {e}")));
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let app = App::start(
        cfg,
        StartOptions {
            config_path: Some(path),
            ..Default::default()
        },
    )
    .await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Errors are logged by reload; the old config keeps running.
                let _ = app.reload_from_file().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(
        "signal received; draining for up to {} (send it again to stop at once)",
        humantime::format_duration(drain)
    );
    tokio::select! {
        _ = app.shutdown(drain) => {}
        _ = term.recv() => {
            tracing::warn!("second signal; closing open connections now");
            app.shutdown(std::time::Duration::ZERO).await;
        }
        _ = int.recv() => {
            tracing::warn!("second signal; closing open connections now");
            app.shutdown(std::time::Duration::ZERO).await;
        }
    }
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn fail(e: Error) -> ExitCode {
    fail_msg(&e.to_string())
}

fn fail_msg(msg: &str) -> ExitCode {
    eprintln!("switchyard: {msg}");
    ExitCode::FAILURE
}
