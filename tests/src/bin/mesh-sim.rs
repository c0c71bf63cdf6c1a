//! `mesh-sim`: the mesh's real state machines (foca, replication, the health table, every
//! signature check) for N nodes in one process, on virtual time over a simulated WAN
//! (`switchyard_tests::sim`). Prints what happened, a table of figures and, last, one line
//! of `key=value` figures. The same seed gives the same run.
//!
//!     mesh-sim --nodes 1000 --seed 1 --scenario steady

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_gossip::Profile;
use switchyard_tests::sim::{Options, Report, Scenario, Sim};

/// Deterministic simulation of the mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh-sim")]
struct Args {
    /// Nodes to simulate (5..=5000), one per region in turn.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(5..=5000))]
    nodes: u32,
    /// Seeds every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// steady, crash, flip, loss5, stall, partition or churn.
    #[arg(long, default_value = "steady")]
    scenario: Scenario,
    /// SWIM tuning: lan (the node's default) or wan.
    #[arg(long, default_value = "lan", value_parser = parse_profile)]
    profile: Profile,
    /// Seconds the scenario's faults run (10..=3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=3600))]
    window_secs: u64,
    /// Seconds the mesh settles after the faults before it is judged (5..=3600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    settle_secs: u64,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    match s {
        "lan" => Ok(Profile::Lan),
        "wan" => Ok(Profile::Wan),
        _ => Err(format!("unknown profile {s:?}; lan or wan")),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // Off unless asked for: 1,000 nodes' logs would drown the figures.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::temp_dir().join(format!("mesh-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut opts = Options::new(args.nodes as usize, args.seed, args.scenario);
    opts.profile = args.profile;
    opts.window = Duration::from_secs(args.window_secs);
    opts.settle = Duration::from_secs(args.settle_secs);
    let sim = Sim::new(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let report = sim?.run();
    print(&report);
    Ok(())
}

fn print(r: &Report) {
    println!(
        "mesh-sim: {} nodes, seed {}, scenario {}",
        r.nodes, r.seed, r.scenario
    );
    println!();
    for (t, what) in r.log.iter().take(40) {
        println!("  {t:>8.2} s  {what}");
    }
    if r.log.len() > 40 {
        println!("  ... and {} more events", r.log.len() - 40);
    }
    println!();
    let opt = |v: Option<f64>, unit: &str| match v {
        Some(v) => format!("{v:.2} {unit}"),
        None => "-".to_string(),
    };
    let rows = [
        ("membership converged", opt(r.converge_s, "s")),
        (
            "flip at 99 % of nodes (p99 over flips)",
            opt(r.flip_p99_ms, "ms"),
        ),
        ("flips that never reached 99 %", r.flips_lost.to_string()),
        (
            "crash known to 99 % of nodes",
            opt(r.crash_detect_p99_s, "s"),
        ),
        ("suspicion timeout", format!("{:.2} s", r.suspicion_s)),
        ("false downs", r.false_downs.to_string()),
        (
            "expected downs (crashed, cut off)",
            r.expected_downs.to_string(),
        ),
        (
            "downs spread by a heal (then rejoined)",
            r.heal_downs.to_string(),
        ),
        (
            "idle traffic per node, on the wire",
            format!(
                "{:.0} B/s ({:.1} kbit/s)",
                r.bytes_per_node_s,
                r.bytes_per_node_s * 8.0 / 1000.0
            ),
        ),
        (
            "  of which payload",
            format!("{:.0} B/s", r.payload_per_node_s),
        ),
        ("rows converged at the end", r.rows_converged.to_string()),
        ("ghost or missing members at the end", r.ghosts.to_string()),
        ("membership after the heal", opt(r.heal_converge_s, "s")),
        ("messages delivered", r.messages.to_string()),
        (
            "virtual / real time",
            format!("{:.0} s / {:.1} s", r.virtual_s, r.real_s),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<42} {v}");
    }
    println!();
    println!("{}", r.line());
}
