//! `chaos-soak`: the chaos soak of the WAN testbed (issue 14), run through
//! `tests/chaos-soak.sh` on a testnet that `./testnet.sh up --wan` brought up.
//!
//! It keeps client load running through every node and every app of the manifest, from the
//! client address of every region (inside that region's namespace), for a bounded time, while
//! a seeded schedule (the same seed gives the same schedule) flaps origins, cuts, slows and
//! heals WAN links, makes them lossy, kills nodes with SIGKILL and restarts them, stops and
//! starts them gracefully, sends SIGHUP with a valid changed config and with an invalid one
//! (which must be refused, the old config kept), and replaces the GeoIP database (a good one,
//! picked up by the node's file watch or by SIGHUP, and a bad one, which must be refused).
//!
//! Every connection is recorded (`.testnet/chaos-soak/connections.csv`). At the end it
//! judges each failed connection against the detection windows derived from the testnet's
//! config ([`Windows`]): a failure that overlaps the window a fault opens, for the connections
//! that fault can reach, is expected; any other is a failure outside the windows. It prints a
//! table (connections attempted, failed, failed outside the windows, cut by a reload, bytes
//! echoed wrongly, reload checks, panics in the logs, each node's memory at start and end)
//! and the schedule it ran, and exits 1 when a target is missed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use switchyard_node::status::Status;
use switchyard_tests::harness;
use switchyard_tests::origin::{connect_from, parse_duration, read_line};
use switchyard_tests::rng::Rng;
use switchyard_tests::topology::{self, Mode, NodeFiles, Topology, REGION_NAMES, WAN_RTT};
use switchyard_tests::wan;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const STATE: &str = ".testnet";
const MANIFEST: &str = ".testnet/manifest.json";
const OUT: &str = ".testnet/chaos-soak";
const GEO_CSV: &str = ".testnet/geo.csv";
const GEO_DB: &str = ".testnet/geo.mmdb";

/// Load runs this long before the first fault, so the start figures (memory) are of a node
/// under load, and after the last, so that recovery is seen.
const WARMUP: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(15);
/// A short connection's whole life: connect, greeting, echo. Long enough for SYN retransmits
/// (1 s, then 3 s) over a lossy or slowed link; a connection that needs longer has failed.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two short connections of one loop (uniform in this range).
const SHORT_PAUSE_MS: (u64, u64) = (1000, 2500);
/// A long-lived connection's echo round every this often...
const LONG_PING: Duration = Duration::from_secs(2);
/// ...which may stall this long: longer than the longest cut in the schedule plus TCP's
/// retransmission backoff after the heal, so that a connection across a cut link survives it.
const LONG_STALL: Duration = Duration::from_secs(40);
/// At most this many connections per load loop, whatever the duration (a loop makes one every
/// 1 to 2.5 s, so this bound is never reached in a run of the sizes here unless a clock is off).
const MAX_PER_LOOP: u64 = 2000;
/// At most this many reopenings of one long-lived connection.
const MAX_LONG_REOPEN: u64 = 500;
/// Log lines that say a reload's outcome (node/src/app.rs, node/src/locate.rs).
const LOG_RELOADED: &str = "config reloaded";
const LOG_REFUSED: &str = "config reload refused";
const LOG_GEO_RELOADED: &str = "GeoIP database reloaded";
const LOG_GEO_REFUSED: &str = "GeoIP database not reloaded";
/// How a node's file watch polls the GeoIP database (node/src/app.rs: every 5 s).
const GEO_POLL: Duration = Duration::from_secs(5);
/// How long a node has to log a SIGHUP's outcome, and a GeoIP replacement's (two polls).
const HUP_WAIT: Duration = Duration::from_secs(10);
const GEO_WAIT: Duration = Duration::from_secs(13);
/// Peers asked to confirm an origin down have the monitor's timeout plus this to answer
/// (README, "How health and steering work").
const ASK_GRACE: Duration = Duration::from_secs(2);
/// A busy 2-core machine (three nodes, six origins, the emulator, this load and other
/// builds): timers and processes run late. The node itself calls a timer 500 ms late
/// overloaded; each window gets this much on top of what the config gives.
const SLACK: Duration = Duration::from_secs(3);
/// After the load stops, the mesh has this long to settle (every row back up, every
/// connection closed): the origin window and then some.
const END_SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "chaos-soak")]
struct Args {
    /// How long the schedule runs (chaos); load also runs 10 s before and 15 s after.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// The schedule's seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the schedule for this seed and duration, and exit (no testnet needed).
    #[arg(long)]
    print_schedule: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1)
    });
    let nodes: Vec<String> = topology::NODES.iter().map(|n| n.0.to_string()).collect();
    let origins: Vec<String> = Topology::new(Mode::Wan)
        .origins
        .iter()
        .map(|o| o.name.clone())
        .collect();
    let plan = schedule(seed, args.duration, &nodes, &origins);
    if args.print_schedule {
        print!("{}", plan.describe());
        return ExitCode::SUCCESS;
    }
    match run(seed, args.duration, plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

// ---- The seeded schedule ------------------------------------------------------------------------

/// The schedule's RNG for `seed` (the seed is mixed, so small seeds differ widely).
fn seeded(seed: u64) -> Rng {
    Rng(seed ^ 0x5157_4f41_4b53_4f41)
}

/// A config that a SIGHUP must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// Not TOML.
    Syntax,
    /// TOML, but a load balancer names a pool that does not exist.
    UnknownPool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Stop an origin, start it again after `down`.
    OriginFlap { origin: String, down: Duration },
    /// `wan cut A B`, `wan heal A B` after `hold`.
    Cut {
        a: &'static str,
        b: &'static str,
        hold: Duration,
    },
    /// `wan set A B rtt`, back to the default after `hold`.
    Slow {
        a: &'static str,
        b: &'static str,
        rtt: Duration,
        hold: Duration,
    },
    /// `wan loss A B pct`, back to 0 % after `hold`.
    Loss {
        a: &'static str,
        b: &'static str,
        percent: u32,
        hold: Duration,
    },
    /// SIGKILL a node, `node up` after `down`.
    Kill { node: String, down: Duration },
    /// `node down` (SIGTERM: drain, leave the mesh), `node up` after `down`.
    Stop { node: String, down: Duration },
    /// Write config variant `variant` (changed from the running one) and SIGHUP: applied.
    HupValid { node: String, variant: usize },
    /// Write an invalid config and SIGHUP: refused, the running config kept; then the
    /// valid file is put back.
    HupInvalid { node: String, invalid: Invalid },
    /// Replace the GeoIP database with a fresh build; picked up by SIGHUP or by the nodes'
    /// file watch.
    GeoReplace { hup: bool },
    /// Replace the GeoIP database with a file that is not one: every node keeps the old
    /// one; then a good one again.
    GeoBad,
}

/// How many kinds of action there are: every round of the schedule has each once.
const KINDS: usize = 10;

impl Action {
    /// About how long it takes, for planning the schedule's offsets.
    fn estimate(&self) -> Duration {
        let s = Duration::from_secs;
        match self {
            Action::OriginFlap { down, .. } => *down + s(1),
            Action::Cut { hold, .. } | Action::Slow { hold, .. } | Action::Loss { hold, .. } => {
                *hold + s(1)
            }
            // Restarting: ready, then joining the mesh across the WAN.
            Action::Kill { down, .. } => *down + s(7),
            // The drain (topology::DRAIN_TIMEOUT: long-lived connections keep it to the end).
            Action::Stop { down, .. } => topology::DRAIN_TIMEOUT + *down + s(7),
            Action::HupValid { .. } => s(2),
            Action::HupInvalid { .. } => s(3),
            Action::GeoReplace { .. } => GEO_POLL + s(2),
            Action::GeoBad => GEO_POLL * 2 + s(3),
        }
    }

    fn describe(&self) -> String {
        let ms = |d: &Duration| topology::duration_str(*d);
        match self {
            Action::OriginFlap { origin, down } => {
                format!("origin down {origin}, up after {}", ms(down))
            }
            Action::Cut { a, b, hold } => format!("wan cut {a} {b}, heal after {}", ms(hold)),
            Action::Slow { a, b, rtt, hold } => {
                format!("wan set {a} {b} {}, back after {}", ms(rtt), ms(hold))
            }
            Action::Loss {
                a,
                b,
                percent,
                hold,
            } => {
                format!("wan loss {a} {b} {percent}%, 0% after {}", ms(hold))
            }
            Action::Kill { node, down } => format!("kill -9 {node}, node up after {}", ms(down)),
            Action::Stop { node, down } => {
                format!("node down {node} (graceful), node up after {}", ms(down))
            }
            Action::HupValid { node, variant } => {
                format!(
                    "SIGHUP {node} with a valid changed config: {}",
                    VARIANTS[*variant]
                )
            }
            Action::HupInvalid { node, invalid } => format!(
                "SIGHUP {node} with an invalid config ({}): must be refused",
                match invalid {
                    Invalid::Syntax => "not TOML",
                    Invalid::UnknownPool => "a load balancer names no such pool",
                }
            ),
            Action::GeoReplace { hup: true } => {
                "replace the GeoIP database, then SIGHUP every node".into()
            }
            Action::GeoReplace { hup: false } => {
                "replace the GeoIP database (the nodes' file watch picks it up)".into()
            }
            Action::GeoBad => {
                "replace the GeoIP database with a bad file (must be refused), then a good one"
                    .into()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// Planned offset from the start of the chaos.
    at: Duration,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    seed: u64,
    duration: Duration,
    /// Never killed or stopped, so one node's memory is seen over the whole run.
    witness: String,
    steps: Vec<Step>,
}

impl Plan {
    fn describe(&self) -> String {
        let mut s = format!(
            "schedule: seed {}, {} of chaos, {} steps ({} never restarted: its memory spans the run)\n",
            self.seed,
            topology::duration_str(self.duration),
            self.steps.len(),
            self.witness
        );
        for (i, st) in self.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:>3}  +{:>6.1}s  {}",
                i + 1,
                st.at.as_secs_f64(),
                st.action.describe()
            );
        }
        s
    }
}

/// The config variants a valid SIGHUP switches between (index 0 is what `up` wrote).
const VARIANTS: [&str; 4] = [
    "the config testnet.sh wrote",
    "monitor retries 1 -> 2",
    "drain_timeout 5s -> 6s",
    "load balancer failover: relay = \"fastest\"",
];

/// The topology of config variant `v` (see [`VARIANTS`]).
fn variant(v: usize) -> Topology {
    let mut t = Topology::new(Mode::Wan);
    match v {
        1 => t.monitor.retries = 2,
        2 => t.drain_timeout = Duration::from_secs(6),
        3 => {
            if let Some(lb) = t.load_balancers.iter_mut().find(|l| l.name == "failover") {
                lb.relay = Some("fastest".into());
            }
        }
        _ => {}
    }
    t
}

/// The schedule for `seed`: rounds, each with every kind of action once in a seeded order
/// and with seeded targets and durations, until the next step would not fit in `duration`
/// (the first round always runs whole, so every kind happens at least once).
fn schedule(seed: u64, duration: Duration, nodes: &[String], origins: &[String]) -> Plan {
    let mut rng = seeded(seed);
    let witness = rng.pick(nodes).clone();
    let restartable: Vec<String> = nodes.iter().filter(|n| **n != witness).cloned().collect();
    let pairs: Vec<(&'static str, &'static str)> = WAN_RTT.iter().map(|p| (p.0, p.1)).collect();
    let secs = Duration::from_secs;
    let mut steps = Vec::new();
    let mut at = Duration::ZERO;
    // Each node's config variant as the schedule leaves it, so a valid SIGHUP always changes it.
    let mut current: BTreeMap<String, usize> = nodes.iter().map(|n| (n.clone(), 0)).collect();
    for round in 0.. {
        let mut kinds: Vec<usize> = (0..KINDS).collect();
        rng.shuffle(&mut kinds);
        for kind in kinds {
            let hold = secs(rng.range(5, 10));
            let (a, b) = *rng.pick(&pairs);
            let action = match kind {
                0 => Action::OriginFlap {
                    origin: rng.pick(origins).clone(),
                    down: hold,
                },
                1 => Action::Cut { a, b, hold },
                2 => Action::Slow {
                    a,
                    b,
                    rtt: Duration::from_millis(50 * rng.range(5, 8)),
                    hold,
                },
                3 => Action::Loss {
                    a,
                    b,
                    percent: rng.range(2, 5) as u32,
                    hold,
                },
                4 => Action::Kill {
                    node: rng.pick(&restartable).clone(),
                    down: secs(rng.range(3, 6)),
                },
                5 => Action::Stop {
                    node: rng.pick(&restartable).clone(),
                    down: secs(rng.range(3, 6)),
                },
                6 => {
                    let node = rng.pick(nodes).clone();
                    let now = current[&node];
                    let v =
                        (now + rng.range(1, VARIANTS.len() as u64 - 1) as usize) % VARIANTS.len();
                    current.insert(node.clone(), v);
                    Action::HupValid { node, variant: v }
                }
                7 => Action::HupInvalid {
                    node: rng.pick(nodes).clone(),
                    invalid: *rng.pick(&[Invalid::Syntax, Invalid::UnknownPool]),
                },
                8 => Action::GeoReplace {
                    hup: rng.next() % 2 == 0,
                },
                _ => Action::GeoBad,
            };
            let need = action.estimate();
            if round > 0 && at + need > duration {
                return Plan {
                    seed,
                    duration,
                    witness,
                    steps,
                };
            }
            steps.push(Step { at, action });
            at += need + secs(rng.range(2, 3));
        }
    }
    unreachable!("the loop returns once the schedule is full")
}

// ---- Detection windows --------------------------------------------------------------------------

/// How long after a fault a connection may fail and be expected to, derived from the
/// testnet's config (tests/src/topology.rs, WAN mode) and the node's documented behaviour.
#[derive(Debug, Clone)]
struct Windows {
    /// An origin going down, until every node's view (its own, and its peers' through the
    /// mesh) steers around it.
    origin: Duration,
    /// A node gone (killed or stopped), until its peers stop relaying through it.
    swim: Duration,
    /// A link cut, healed, slowed or lossy: origins across it change health as seen from the
    /// nodes at its ends, and relay paths through it change.
    path: Duration,
    /// After a restarted node is ready and back in the mesh (what `node up` waits for).
    back: Duration,
    /// A long-lived connection that ends this soon after a reload of its node was cut by it.
    reload: Duration,
    /// What each window is made of, for the output.
    why: Vec<String>,
}

fn windows() -> Windows {
    let t = Topology::new(Mode::Wan);
    let m = &t.monitor;
    let retries = (0..VARIANTS.len())
        .map(|v| variant(v).monitor.retries)
        .max()
        .unwrap_or(m.retries);
    let max_rtt = WAN_RTT
        .iter()
        .map(|p| p.2)
        .chain([Duration::from_millis(400)])
        .max()
        .unwrap_or_default();
    let mesh = &t.mesh;
    let s = |d: Duration| format!("{:.1}s", d.as_secs_f64());
    // The node's own monitor: a probe round at most `interval` after the fault (never late),
    // then the attempt and its retries, each up to `timeout`.
    let detect = m.interval + m.timeout * (retries + 1);
    // Then its peers confirm (the monitor's timeout plus ASK_GRACE), and the verdict reaches
    // the other nodes by anti-entropy across the WAN.
    let spread = m.timeout + ASK_GRACE + mesh.anti_entropy_interval + max_rtt;
    let origin = detect + spread + SLACK;
    // SWIM: a probe period to notice, the probe's timeout, suspicion, and a period to
    // disseminate; a relay that gets no answer gives up after twice the round trip plus 1 s.
    let swim_detect = mesh.probe_period * 2 + mesh.probe_timeout + mesh.suspect_timeout;
    let relay_giveup = max_rtt * 2 + Duration::from_secs(1);
    let swim = swim_detect + relay_giveup + SLACK;
    let path = origin.max(swim);
    let back = SLACK;
    let reload = GEO_POLL + SLACK;
    let why = vec![
        format!(
            "origin down: {} = monitor interval {} + (retries {} + 1) x timeout {} [own probes] + timeout {} + {} [peers confirm] + anti-entropy {} + RTT {} [to every node] + slack {}",
            s(origin), s(m.interval), retries, s(m.timeout), s(m.timeout), s(ASK_GRACE),
            s(mesh.anti_entropy_interval), s(max_rtt), s(SLACK)
        ),
        format!(
            "node gone (for the other nodes' relays): {} = 2 x probe period {} + probe timeout {} + suspect timeout {} [SWIM] + 2 x RTT {} + 1s [relay gives up] + slack {}",
            s(swim), s(mesh.probe_period), s(mesh.probe_timeout), s(mesh.suspect_timeout),
            s(max_rtt), s(SLACK)
        ),
        format!(
            "node down (its own clients): from the kill or SIGTERM until `node up` returns (ready, in the mesh) + {}",
            s(back)
        ),
        format!(
            "link cut, slowed or lossy: {} (the larger of the two above) after it starts and after it ends, for every connection; a cut or lossy link between the client's region and its node's region: for as long as it lasts, + {}",
            s(path), s(SLACK)
        ),
        format!(
            "SIGHUP and GeoIP replacement: none (a failure there is a failure); a connection of the node that ends within {} after its reload counts as cut by the reload (GeoIP: the nodes' {} file watch + slack)",
            s(reload), s(GEO_POLL)
        ),
    ];
    Windows {
        origin,
        swim,
        path,
        back,
        reload,
        why,
    }
}

/// Which connections a fault's window covers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    All,
    /// Connections through this node (index).
    Node(usize),
    /// Connections whose client and node are on the two ends of this link (region indices).
    ClientPath(usize, usize),
    /// Connections whose client or node is at either end of this link.
    Touching(usize, usize),
}

impl Scope {
    /// Narrower scopes first.
    fn rank(self) -> u8 {
        match self {
            Scope::Node(_) => 0,
            Scope::ClientPath(..) => 1,
            Scope::Touching(..) => 2,
            Scope::All => 3,
        }
    }
}

/// A span of time in which failures of connections in `scope` are expected.
#[derive(Debug, Clone)]
struct Excuse {
    scope: Scope,
    from: f64,
    to: f64,
    /// The step that opened it (1-based, as printed).
    step: usize,
}

/// A reload: a connection of `node` (None: every node) ending soon after was cut by it.
#[derive(Debug, Clone)]
struct Reload {
    at: f64,
    node: Option<usize>,
    step: usize,
}

// ---- The testnet ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct NodeInfo {
    id: String,
    region: usize,
    status: SocketAddr,
    /// (app, address), in manifest order.
    apps: Vec<(String, SocketAddr)>,
}

#[derive(Debug, Clone)]
struct Manifest {
    nodes: Vec<NodeInfo>,
    /// Per region index: the client's address and the namespace.
    clients: Vec<(IpAddr, String)>,
}

fn region_index(name: &str) -> Result<usize> {
    REGION_NAMES
        .iter()
        .position(|r| *r == name)
        .ok_or_else(|| anyhow!("unknown region {name}"))
}

fn read_manifest() -> Result<Manifest> {
    let text = std::fs::read_to_string(MANIFEST)
        .with_context(|| format!("read {MANIFEST}; is the testnet up (./testnet.sh up --wan)?"))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("parse the manifest")?;
    if v["mode"] != "wan" {
        bail!("{MANIFEST} is not of a WAN testnet; start one with ./testnet.sh up --wan");
    }
    let mut nodes = Vec::new();
    for n in v["nodes"].as_array().context("manifest: nodes")? {
        let apps = n["apps"]
            .as_object()
            .context("manifest: apps")?
            .iter()
            .map(|(k, a)| {
                let addr = a.as_str().unwrap_or("").parse().context("an app address")?;
                Ok((k.clone(), addr))
            })
            .collect::<Result<Vec<_>>>()?;
        nodes.push(NodeInfo {
            id: n["id"].as_str().context("manifest: node id")?.to_string(),
            region: region_index(n["region"].as_str().unwrap_or(""))?,
            status: n["status"]
                .as_str()
                .unwrap_or("")
                .parse()
                .context("a status address")?,
            apps,
        });
    }
    let mut clients = Vec::new();
    for r in REGION_NAMES {
        let ip = v["clients"][r]
            .as_str()
            .with_context(|| format!("manifest: the {r} client"))?
            .parse()
            .context("a client address")?;
        let ns = v["netns"][r]
            .as_str()
            .with_context(|| format!("manifest: the {r} namespace"))?
            .to_string();
        clients.push((ip, ns));
    }
    Ok(Manifest { nodes, clients })
}

/// The testnet as the soak drives it: `testnet` commands, signals, files, logs.
struct Bed {
    root: PathBuf,
    bin: PathBuf,
    t0: Instant,
    commands: Mutex<File>,
}

impl Bed {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Runs `testnet ARGS` (what `./testnet.sh ARGS` runs); its output goes to commands.log.
    fn testnet(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(self.bin.join("testnet"))
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .context("run testnet")?;
        let mut log = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(log, "[{:7.1}s] ./testnet.sh {}", self.now(), args.join(" "));
        let _ = log.write_all(&out.stdout);
        let _ = log.write_all(&out.stderr);
        if !out.status.success() {
            bail!(
                "./testnet.sh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn log_path(name: &str) -> PathBuf {
        Path::new(STATE).join(format!("{name}.log"))
    }

    /// The pid of node `id` if it runs (its pid file names a process running its config).
    fn pid(id: &str) -> Option<u32> {
        let pidfile = Path::new(STATE).join(format!("{id}.pid"));
        wan::pid_running(&pidfile, &format!(" run --config {STATE}/{id}.toml"))
    }

    fn signal(id: &str, sig: libc::c_int) -> Result<u32> {
        let pid = Bed::pid(id).ok_or_else(|| anyhow!("{id} is not running"))?;
        // SAFETY: kill has no memory-safety preconditions; the pid file names this node.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(pid)
    }

    fn log_len(name: &str) -> u64 {
        std::fs::metadata(Bed::log_path(name)).map_or(0, |m| m.len())
    }

    /// The log of `name` from byte `from` on.
    fn log_since(name: &str, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(Bed::log_path(name)) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let mut bytes = Vec::new();
                let _ = f.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    }

    /// Waits (bounded) until `name`'s log, from byte `from`, has one of `needles`; which.
    fn wait_log(name: &str, from: u64, needles: &[&str], within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let text = Bed::log_since(name, from);
            if let Some(n) = needles.iter().find(|n| text.contains(**n)) {
                return Some(n.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn config_path(id: &str) -> PathBuf {
        Path::new(STATE).join(format!("{id}.toml"))
    }

    /// Node `id`'s config text in variant `v`, as testnet.sh writes it (same files).
    fn config_text(&self, id: &str, v: usize) -> Result<String> {
        let files = NodeFiles::under(
            &self.root.join(STATE).join("certs"),
            id,
            &self.root.join(GEO_DB),
        );
        let t = variant(v);
        t.node_config(id, &files)
            .map_err(|e| anyhow!("config variant {v} of {id} is invalid: {e}"))?;
        Ok(t.node_config_text(
            id,
            &files,
            &format!(
                "Written by ./testnet.sh up; chaos-soak variant {v}: {}.",
                VARIANTS[v]
            ),
        ))
    }

    fn invalid_text(&self, id: &str, invalid: Invalid) -> Result<String> {
        let files = NodeFiles::under(
            &self.root.join(STATE).join("certs"),
            id,
            &self.root.join(GEO_DB),
        );
        let mut t = Topology::new(Mode::Wan);
        let text = match invalid {
            Invalid::Syntax => format!(
                "{}\n[node\nid = \"half a table header\"\n",
                t.node_config_text(id, &files, "chaos-soak: not TOML at the end")
            ),
            Invalid::UnknownPool => {
                t.load_balancers[0].default_pools = vec!["nowhere".into()];
                t.node_config_text(id, &files, "chaos-soak: a load balancer names no pool")
            }
        };
        if switchyard_node::Config::parse(&text, None).is_ok() {
            bail!("the invalid config ({invalid:?}) parses: the soak's own bug");
        }
        Ok(text)
    }
}

impl Bed {
    /// Node `i`'s status document, asked inside its region's namespace.
    fn status_of(&self, man: &Manifest, i: usize) -> Result<Status> {
        let n = &man.nodes[i];
        let netns = &man.clients[n.region].1;
        harness::node_status(&self.bin.join("switchyard"), Some(netns), n.status)
    }

    /// What keeps the mesh from having settled (nothing, once it has): a node that does not
    /// answer, a member not alive, an origin down in some observer's view, a sick node,
    /// config drift, or a connection still open.
    fn unsettled(&self, man: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in man.nodes.iter().enumerate() {
            let s = match self.status_of(man, i) {
                Ok(s) => s,
                Err(e) => {
                    out.push(format!("{}: {e:#}", n.id));
                    continue;
                }
            };
            for m in &man.nodes {
                let state = s
                    .members
                    .iter()
                    .find(|x| x.id == m.id)
                    .map(|x| x.state.as_str());
                if state != Some("alive") {
                    out.push(format!(
                        "{} lists {} as {}",
                        n.id,
                        m.id,
                        state.unwrap_or("absent")
                    ));
                }
            }
            if s.node.sick.is_some() {
                out.push(format!("{} is sick", n.id));
            }
            for d in &s.drift {
                out.push(format!("{} has config drift with {}", n.id, d.node));
            }
            for app in s.apps.iter().filter(|a| a.active != 0) {
                out.push(format!(
                    "{} app {}: {} connections open",
                    n.id, app.name, app.active
                ));
            }
            for pool in &s.pools {
                for o in &pool.origins {
                    if o.active != 0 {
                        out.push(format!(
                            "{} {}/{}: {} connections open",
                            n.id, pool.name, o.name, o.active
                        ));
                    }
                    for obs in o.observers.iter().filter(|o| !o.1.healthy).map(|o| o.0) {
                        out.push(format!(
                            "{} sees {}/{} down as {obs} sees it",
                            n.id, pool.name, o.name
                        ));
                    }
                    if o.observers.len() != man.nodes.len() {
                        out.push(format!(
                            "{} has {} observers of {}/{}, not {}",
                            n.id,
                            o.observers.len(),
                            pool.name,
                            o.name,
                            man.nodes.len()
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Where each of `names`' logs ends now, to read what comes after.
fn log_marks(names: &[String]) -> Vec<(String, u64)> {
    names.iter().map(|n| (n.clone(), Bed::log_len(n))).collect()
}

/// Writes through a temporary file and a rename, so a node never reads half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("soak-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---- Load -------------------------------------------------------------------------------------

/// One client connection, as recorded.
#[derive(Debug, Clone)]
struct Rec {
    start: f64,
    end: f64,
    /// The last moment it was known to work (a long-lived connection's last echo).
    last_ok: f64,
    client: usize,
    node: usize,
    app: usize,
    long: bool,
    ok: bool,
    /// Where it failed: connect, greeting, echo.
    stage: &'static str,
    error: String,
    origin: String,
    /// Bytes sent and echoed back intact.
    bytes_ok: u64,
    /// An echo that came back different from what was sent (never excused).
    corrupt: bool,
    /// Echo rounds a long-lived connection completed.
    rounds: u64,
}

impl Rec {
    /// A connection starting now, working until it is known not to.
    fn new(client: usize, node: usize, app: usize, long: bool, start: f64) -> Rec {
        Rec {
            start,
            end: start,
            last_ok: start,
            client,
            node,
            app,
            long,
            ok: true,
            stage: "",
            error: String::new(),
            origin: String::new(),
            bytes_ok: 0,
            corrupt: false,
            rounds: 0,
        }
    }
}

struct Load {
    t0: Instant,
    stop: watch::Receiver<bool>,
    recs: Mutex<Vec<Rec>>,
}

impl Load {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn push(&self, r: Rec) {
        self.recs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
    }
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// What one loop connects to.
#[derive(Debug, Clone)]
struct Target {
    client: usize,
    from: IpAddr,
    node: usize,
    app: usize,
    addr: SocketAddr,
}

/// Sleeps `d`, or less when the soak stops; whether it is still running.
async fn nap(load: &Load, d: Duration) -> bool {
    let mut stop = load.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    !load.stopped()
}

fn failed(rec: &mut Rec, stage: &'static str, e: impl std::fmt::Display) {
    rec.ok = false;
    rec.stage = stage;
    rec.error = e.to_string();
}

/// One short connection: greeting, then a payload echoed back whole.
async fn short_once(load: &Load, t: &Target, rng: &mut Rng) -> Rec {
    let mut rec = Rec::new(t.client, t.node, t.app, false, load.now());
    let len = rng.range(256, 4096) as usize;
    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let work = async {
        let stream = match connect_from(t.addr, Some(t.from)).await {
            Ok(s) => s,
            Err(e) => return failed(&mut rec, "connect", e),
        };
        let mut reader = BufReader::new(stream);
        match read_line(&mut reader).await {
            Ok(name) => rec.origin = name,
            Err(e) => return failed(&mut rec, "greeting", e),
        }
        let exchange = async {
            reader.get_mut().write_all(&payload).await?;
            reader.get_mut().shutdown().await?;
            let mut back = Vec::new();
            reader.read_to_end(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        match exchange.await {
            Ok(back) => {
                let same = back.len().min(payload.len());
                if back[..same] != payload[..same] || back.len() > payload.len() {
                    rec.corrupt = true;
                    failed(&mut rec, "echo", "the echo differs from what was sent");
                } else if back.len() < payload.len() {
                    failed(
                        &mut rec,
                        "echo",
                        format!("echo truncated: {} of {} bytes", back.len(), payload.len()),
                    );
                } else {
                    rec.bytes_ok = back.len() as u64;
                }
            }
            Err(e) => failed(&mut rec, "echo", e),
        }
    };
    if tokio::time::timeout(SHORT_TIMEOUT, work).await.is_err() {
        let stage = if rec.origin.is_empty() {
            "connect"
        } else {
            "echo"
        };
        failed(
            &mut rec,
            stage,
            format!("timed out after {SHORT_TIMEOUT:?}"),
        );
    }
    rec.end = load.now();
    if rec.ok {
        rec.last_ok = rec.end;
    }
    rec
}

/// One long-lived connection: greeting, then an echo round every LONG_PING until the soak
/// stops (ok) or the connection fails.
async fn long_once(load: &Load, t: &Target, rng: &mut Rng) -> Rec {
    let mut rec = Rec::new(t.client, t.node, t.app, true, load.now());
    let opened = tokio::time::timeout(SHORT_TIMEOUT, async {
        let stream = connect_from(t.addr, Some(t.from))
            .await
            .map_err(|e| ("connect", e))?;
        let mut reader = BufReader::new(stream);
        let name = read_line(&mut reader).await.map_err(|e| ("greeting", e))?;
        Ok::<_, (&'static str, std::io::Error)>((reader, name))
    })
    .await;
    let mut reader = match opened {
        Ok(Ok((r, name))) => {
            rec.origin = name;
            rec.last_ok = load.now();
            r
        }
        Ok(Err((stage, e))) => {
            failed(&mut rec, stage, e);
            rec.end = load.now();
            return rec;
        }
        Err(_) => {
            failed(
                &mut rec,
                "connect",
                format!("timed out after {SHORT_TIMEOUT:?}"),
            );
            rec.end = load.now();
            return rec;
        }
    };
    let mut stop = load.stop.clone();
    loop {
        if !nap(load, LONG_PING).await {
            break;
        }
        let ping: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
        let round = async {
            reader.get_mut().write_all(&ping).await?;
            let mut back = vec![0u8; ping.len()];
            reader.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        let res = tokio::select! {
            r = tokio::time::timeout(LONG_STALL, round) => r,
            // The soak's end: a round in flight is not a failure.
            _ = stop.wait_for(|s| *s) => break,
        };
        match res {
            Ok(Ok(back)) if back == ping => {
                rec.rounds += 1;
                rec.bytes_ok += ping.len() as u64;
                rec.last_ok = load.now();
            }
            Ok(Ok(_)) => {
                rec.corrupt = true;
                failed(&mut rec, "echo", "the echo differs from what was sent");
                break;
            }
            Ok(Err(e)) => {
                failed(&mut rec, "echo", e);
                break;
            }
            Err(_) => {
                failed(&mut rec, "echo", format!("no echo within {LONG_STALL:?}"));
                break;
            }
        }
    }
    let _ = reader.get_mut().shutdown().await;
    rec.end = load.now();
    rec
}

async fn short_loop(load: Arc<Load>, t: Target, seed: u64) {
    let mut rng = seeded(seed);
    // Loops start spread over the first pause, not all at once.
    if !nap(&load, Duration::from_millis(rng.range(0, SHORT_PAUSE_MS.1))).await {
        return;
    }
    for _ in 0..MAX_PER_LOOP {
        let rec = short_once(&load, &t, &mut rng).await;
        load.push(rec);
        let pause = Duration::from_millis(rng.range(SHORT_PAUSE_MS.0, SHORT_PAUSE_MS.1));
        if !nap(&load, pause).await {
            return;
        }
    }
}

async fn long_loop(load: Arc<Load>, t: Target, seed: u64) {
    let mut rng = seeded(seed);
    for _ in 0..MAX_LONG_REOPEN {
        let rec = long_once(&load, &t, &mut rng).await;
        load.push(rec);
        // Open a new one after a failure, as a client would.
        if !nap(&load, Duration::from_secs(1)).await {
            return;
        }
    }
}

/// Runs region `client`'s load on a thread inside its namespace (so its connections leave
/// from its client address, across the WAN to other regions' nodes), until `stop`.
fn region_load(
    load: Arc<Load>,
    netns: String,
    targets: Vec<(Target, bool)>,
    seed: u64,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        let path = format!("/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on an fd we hold; it moves only this thread, which makes every socket
        // of this region's load.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the load")?;
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, (t, long)) in targets.into_iter().enumerate() {
                let seed = seed.wrapping_mul(1000).wrapping_add(i as u64);
                if long {
                    tasks.spawn(long_loop(load.clone(), t, seed));
                } else {
                    tasks.spawn(short_loop(load.clone(), t, seed));
                }
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(())
    })
}

// ---- Running the schedule ---------------------------------------------------------------------

/// What the schedule did, for judging.
#[derive(Debug, Clone, Default)]
struct Ran {
    excuses: Vec<Excuse>,
    reloads: Vec<Reload>,
    /// (step, what was checked, whether it held).
    checks: Vec<(usize, String, bool)>,
    /// (step, actual start, actual end, text).
    timeline: Vec<(usize, f64, f64, String)>,
}

struct Runner<'a> {
    bed: &'a Bed,
    man: &'a Manifest,
    win: &'a Windows,
    ran: Ran,
    /// Each node's config variant as written now.
    variant: BTreeMap<String, usize>,
}

impl Runner<'_> {
    fn node_index(&self, id: &str) -> usize {
        self.man.nodes.iter().position(|n| n.id == id).unwrap_or(0)
    }

    fn excuse(&mut self, step: usize, scope: Scope, from: f64, to: f64) {
        self.ran.excuses.push(Excuse {
            scope,
            from,
            to,
            step,
        });
    }

    fn check(&mut self, step: usize, what: String, held: bool) {
        if !held {
            println!("  CHECK FAILED: {what}");
        }
        self.ran.checks.push((step, what, held));
    }

    fn running_nodes(&self) -> Vec<String> {
        self.man
            .nodes
            .iter()
            .filter(|n| Bed::pid(&n.id).is_some())
            .map(|n| n.id.clone())
            .collect()
    }

    /// Brings node `id` back with `node up`, once more if the first try fails.
    fn node_up(&mut self, step: usize, id: &str) {
        let first = self.bed.testnet(&["node", "up", id]);
        let ok = first.is_ok() || self.bed.testnet(&["node", "up", id]).is_ok();
        let why = first
            .err()
            .map(|e| format!(" (first try: {e:#})"))
            .unwrap_or_default();
        self.check(step, format!("{id} came back with node up{why}"), ok);
    }

    fn run_step(&mut self, step: usize, action: &Action) -> Result<()> {
        let w = self.win.clone();
        let secs = |d: Duration| d.as_secs_f64();
        let bed = self.bed;
        let start = bed.now();
        match action {
            Action::OriginFlap { origin, down } => {
                bed.testnet(&["origin", "down", origin])?;
                self.excuse(step, Scope::All, start, start + secs(w.origin));
                std::thread::sleep(*down);
                bed.testnet(&["origin", "up", origin])?;
            }
            Action::Cut { a, b, hold } => {
                let (ia, ib) = (region_index(a)?, region_index(b)?);
                bed.testnet(&["wan", "cut", a, b])?;
                std::thread::sleep(*hold);
                bed.testnet(&["wan", "heal", a, b])?;
                let end = bed.now();
                self.excuse(step, Scope::ClientPath(ia, ib), start, end + secs(SLACK));
                self.excuse(step, Scope::All, start, start + secs(w.path));
                self.excuse(step, Scope::All, end, end + secs(w.path));
            }
            Action::Slow { a, b, rtt, hold } => {
                let default = WAN_RTT
                    .iter()
                    .find(|p| (p.0, p.1) == (*a, *b))
                    .map(|p| p.2)
                    .ok_or_else(|| anyhow!("no default RTT for {a}-{b}"))?;
                bed.testnet(&["wan", "set", a, b, &topology::duration_str(*rtt)])?;
                std::thread::sleep(*hold);
                bed.testnet(&["wan", "set", a, b, &topology::duration_str(default)])?;
                let end = bed.now();
                self.excuse(step, Scope::All, start, start + secs(w.path));
                self.excuse(step, Scope::All, end, end + secs(w.path));
            }
            Action::Loss {
                a,
                b,
                percent,
                hold,
            } => {
                let (ia, ib) = (region_index(a)?, region_index(b)?);
                bed.testnet(&["wan", "loss", a, b, &format!("{percent}%")])?;
                std::thread::sleep(*hold);
                bed.testnet(&["wan", "loss", a, b, "0%"])?;
                let end = bed.now();
                // Probes across a lossy link may fail a round at any time while it lasts, and
                // each such flip is an origin health change the nodes at its ends follow.
                self.excuse(step, Scope::Touching(ia, ib), start, end + secs(w.path));
                self.excuse(step, Scope::All, start, start + secs(w.path));
                self.excuse(step, Scope::All, end, end + secs(w.path));
            }
            Action::Kill { node, down } => {
                let n = self.node_index(node);
                let pid = Bed::signal(node, libc::SIGKILL)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while wan::pid_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(*down);
                self.node_up(step, node);
                let end = bed.now();
                self.excuse(step, Scope::Node(n), start, end + secs(w.back));
                self.excuse(step, Scope::All, start, start + secs(w.swim));
            }
            Action::Stop { node, down } => {
                let n = self.node_index(node);
                bed.testnet(&["node", "down", node])?;
                std::thread::sleep(*down);
                self.node_up(step, node);
                let end = bed.now();
                self.excuse(step, Scope::Node(n), start, end + secs(w.back));
                self.excuse(step, Scope::All, start, start + secs(w.swim));
            }
            Action::HupValid { node, variant } => {
                let n = self.node_index(node);
                let text = bed.config_text(node, *variant)?;
                write_atomic(&Bed::config_path(node), text.as_bytes())?;
                self.variant.insert(node.clone(), *variant);
                let marks = log_marks(std::slice::from_ref(node));
                let at = bed.now();
                Bed::signal(node, libc::SIGHUP)?;
                self.ran.reloads.push(Reload {
                    at,
                    node: Some(n),
                    step,
                });
                let what = "applied the valid config on SIGHUP";
                self.expect_logs(
                    step,
                    &marks,
                    &[LOG_RELOADED, LOG_REFUSED],
                    LOG_RELOADED,
                    HUP_WAIT,
                    what,
                );
            }
            Action::HupInvalid { node, invalid } => {
                let n = self.node_index(node);
                let text = bed.invalid_text(node, *invalid)?;
                let path = Bed::config_path(node);
                write_atomic(&path, text.as_bytes())?;
                let marks = log_marks(std::slice::from_ref(node));
                let at = bed.now();
                let sent = Bed::signal(node, libc::SIGHUP);
                let what = format!("refused the invalid config ({invalid:?}) and kept its own");
                if sent.is_ok() {
                    self.ran.reloads.push(Reload {
                        at,
                        node: Some(n),
                        step,
                    });
                    self.expect_logs(
                        step,
                        &marks,
                        &[LOG_RELOADED, LOG_REFUSED],
                        LOG_REFUSED,
                        HUP_WAIT,
                        &what,
                    );
                }
                // The valid file back, whatever happened, so a restart finds it.
                let valid = bed.config_text(node, self.variant[node])?;
                write_atomic(&path, valid.as_bytes())?;
                sent?;
            }
            Action::GeoReplace { hup } => {
                let nodes = self.running_nodes();
                let marks = log_marks(&nodes);
                self.build_geo()?;
                let at = bed.now();
                self.ran.reloads.push(Reload {
                    at,
                    node: None,
                    step,
                });
                let (want, what) = if *hup {
                    for n in &nodes {
                        Bed::signal(n, libc::SIGHUP)?;
                    }
                    (LOG_RELOADED, "took the new GeoIP database on SIGHUP")
                } else {
                    (
                        LOG_GEO_RELOADED,
                        "took the new GeoIP database from its file watch",
                    )
                };
                let outcomes = [want, LOG_REFUSED, LOG_GEO_REFUSED];
                self.expect_logs(step, &marks, &outcomes, want, GEO_WAIT, what);
            }
            Action::GeoBad => {
                let nodes = self.running_nodes();
                let marks = log_marks(&nodes);
                let bad = b"chaos-soak: this is not a MaxMind database\n";
                write_atomic(&bed.root.join(GEO_DB), bad)?;
                let at = bed.now();
                self.ran.reloads.push(Reload {
                    at,
                    node: None,
                    step,
                });
                let outcomes = [LOG_GEO_REFUSED, LOG_GEO_RELOADED];
                let what = "refused the bad GeoIP database and kept the old one";
                self.expect_logs(step, &marks, &outcomes, LOG_GEO_REFUSED, GEO_WAIT, what);
                let marks = log_marks(&nodes);
                self.build_geo()?;
                let what = "took the good GeoIP database again";
                self.expect_logs(step, &marks, &outcomes, LOG_GEO_RELOADED, GEO_WAIT, what);
            }
        }
        self.ran
            .timeline
            .push((step, start, bed.now(), action.describe()));
        Ok(())
    }

    /// Waits (bounded) until each log, past its mark, says one of `outcomes`, and checks that
    /// it says `want`; `what` says what that means, after the node's name.
    fn expect_logs(
        &mut self,
        step: usize,
        marks: &[(String, u64)],
        outcomes: &[&str],
        want: &str,
        within: Duration,
        what: &str,
    ) {
        for (n, mark) in marks {
            let got = Bed::wait_log(n, *mark, outcomes, within);
            let seen = got.as_deref().unwrap_or("nothing in time");
            self.check(
                step,
                format!("{n} {what} (log: {seen})"),
                got.as_deref() == Some(want),
            );
        }
    }

    /// Builds the GeoIP database afresh from the testnet's CSV and puts it in place.
    fn build_geo(&self) -> Result<()> {
        let fresh = self.bed.root.join(STATE).join("geo.mmdb.soak-new");
        let out = Command::new(self.bed.bin.join("switchyard"))
            .args(["geoip", "build", "--from", GEO_CSV, "--out"])
            .arg(&fresh)
            .current_dir(&self.bed.root)
            .stdin(Stdio::null())
            .output()
            .context("run switchyard geoip build")?;
        if !out.status.success() {
            bail!(
                "switchyard geoip build failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::fs::rename(&fresh, self.bed.root.join(GEO_DB)).context("replace the GeoIP database")
    }
}

// ---- The run ------------------------------------------------------------------------------------

/// RSS samples: (time, node index, pid, KiB).
type Samples = Arc<Mutex<Vec<(f64, usize, u32, u64)>>>;

fn run(seed: u64, duration: Duration, plan: Plan) -> Result<bool> {
    if !wan::is_root() {
        bail!("needs root (it runs clients inside the testbed's namespaces); run tests/chaos-soak.sh as root");
    }
    let root = std::env::current_dir().context("the current directory")?;
    let bin = harness::bin_dir().context("the path of this binary")?;
    let man = read_manifest()?;
    std::fs::create_dir_all(OUT).with_context(|| format!("create {OUT}"))?;
    let t0 = Instant::now();
    let bed = Bed {
        root,
        bin,
        t0,
        commands: Mutex::new(File::create(Path::new(OUT).join("commands.log"))?),
    };
    for n in &man.nodes {
        if Bed::pid(&n.id).is_none() {
            bail!(
                "{} is not running; start the testnet afresh (./testnet.sh up --wan)",
                n.id
            );
        }
    }
    let win = windows();
    print!("{}", plan.describe());
    println!("detection windows (from the WAN testnet's config, tests/src/topology.rs):");
    for w in &win.why {
        println!("  - {w}");
    }

    // Where each log starts, for panics and reload checks.
    let mut names: Vec<String> = man.nodes.iter().map(|n| n.id.clone()).collect();
    names.extend(
        Topology::new(Mode::Wan)
            .origins
            .iter()
            .map(|o| o.name.clone()),
    );
    let log_starts: Vec<(String, u64)> =
        names.iter().map(|n| (n.clone(), Bed::log_len(n))).collect();

    // Load: per client region, a short loop to every app of every node; per node, a
    // long-lived connection to each of its apps from its own region's client.
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = Arc::new(Load {
        t0,
        stop: stop_rx,
        recs: Mutex::new(Vec::new()),
    });
    let mut threads = Vec::new();
    for (ci, (ip, ns)) in man.clients.iter().enumerate() {
        let mut targets = Vec::new();
        for (ni, node) in man.nodes.iter().enumerate() {
            for (ai, (_, addr)) in node.apps.iter().enumerate() {
                let t = Target {
                    client: ci,
                    from: *ip,
                    node: ni,
                    app: ai,
                    addr: *addr,
                };
                if node.region == ci {
                    targets.push((t.clone(), true));
                }
                targets.push((t, false));
            }
        }
        threads.push(region_load(
            load.clone(),
            ns.clone(),
            targets,
            seed ^ (ci as u64 + 1),
        ));
    }
    let loops: usize = man.nodes.iter().map(|n| n.apps.len()).sum::<usize>() * man.clients.len();
    println!(
        "load: {loops} loops of short connections (every region's client to every app of every node, one every {}-{} ms each) and {} long-lived connections (each node's apps from its own region)",
        SHORT_PAUSE_MS.0,
        SHORT_PAUSE_MS.1,
        man.nodes.iter().map(|n| n.apps.len()).sum::<usize>()
    );

    // Memory: every node's RSS every 2 s.
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        let ids: Vec<String> = man.nodes.iter().map(|n| n.id.clone()).collect();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let now = t0.elapsed().as_secs_f64();
                for (i, id) in ids.iter().enumerate() {
                    if let Some((pid, kib)) = Bed::pid(id).and_then(|p| Some((p, rss_kib(p)?))) {
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((now, i, pid, kib));
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };

    println!(
        "\n[{:7.1}s] warm-up: load only, {}s",
        bed.now(),
        WARMUP.as_secs()
    );
    std::thread::sleep(WARMUP);
    let chaos_start = bed.now();
    let mut runner = Runner {
        bed: &bed,
        man: &man,
        win: &win,
        ran: Ran::default(),
        variant: man.nodes.iter().map(|n| (n.id.clone(), 0)).collect(),
    };
    let mut broken = Vec::new();
    for (i, st) in plan.steps.iter().enumerate() {
        let due = chaos_start + st.at.as_secs_f64();
        let wait = due - bed.now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        println!(
            "[{:7.1}s] step {:>3}: {}",
            bed.now(),
            i + 1,
            st.action.describe()
        );
        if let Err(e) = runner.run_step(i + 1, &st.action) {
            println!("  STEP FAILED: {e:#}");
            broken.push(format!("step {}: {e:#}", i + 1));
        }
    }
    let chaos_end = (chaos_start + duration.as_secs_f64()).max(bed.now());
    let wait = chaos_end - bed.now();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    println!(
        "[{:7.1}s] settle: load only, {}s",
        bed.now(),
        SETTLE.as_secs()
    );
    std::thread::sleep(SETTLE);
    let _ = stop_tx.send(true);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => broken.push(format!("load: {e:#}")),
            Err(_) => broken.push("load: a load thread panicked".into()),
        }
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let end = bed.now();

    // The end: every node back on the config testnet.sh wrote (reloaded, so that no config
    // drift is left), then the mesh must settle: everything runs, every node lists every
    // member alive and sees every origin up from every observer, no node is sick, and with
    // the load stopped no connection is left open anywhere.
    let steps = plan.steps.len() + 1;
    for n in &man.nodes {
        if runner.variant[&n.id] != 0 {
            let text = bed.config_text(&n.id, 0)?;
            write_atomic(&Bed::config_path(&n.id), text.as_bytes())?;
            let marks = log_marks(std::slice::from_ref(&n.id));
            Bed::signal(&n.id, libc::SIGHUP)?;
            let what = "went back to the config testnet.sh wrote on SIGHUP";
            let outcomes = [LOG_RELOADED, LOG_REFUSED];
            runner.expect_logs(steps, &marks, &outcomes, LOG_RELOADED, HUP_WAIT, what);
        }
    }
    let status = bed.testnet(&["status"]);
    runner.check(
        steps,
        format!(
            "every node and origin runs and answers status at the end{}",
            status
                .as_ref()
                .err()
                .map(|e| format!(" ({e:#})"))
                .unwrap_or_default()
        ),
        status.is_ok(),
    );
    let settling = Instant::now();
    let mut problems = bed.unsettled(&man);
    while !problems.is_empty() && settling.elapsed() < END_SETTLE {
        std::thread::sleep(Duration::from_secs(1));
        problems = bed.unsettled(&man);
    }
    if problems.is_empty() {
        println!(
            "[{:7.1}s] end state: every member alive, every origin up from every observer, no drift, no connection open ({:.1}s after the load stopped)",
            bed.now(),
            settling.elapsed().as_secs_f64()
        );
    }
    runner.check(
        steps,
        format!(
            "the mesh settled within {}s after the load stopped{}",
            END_SETTLE.as_secs(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        ),
        problems.is_empty(),
    );

    let recs = std::mem::take(&mut *load.recs.lock().unwrap_or_else(PoisonError::into_inner));
    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let report = Report::new(&man, &recs, &runner.ran, &win, &samples, &log_starts, end);
    write_records(&man, &recs, &report)?;
    let ok = report.print(&plan, &man, &runner.ran, &broken);
    Ok(ok && broken.is_empty())
}

// ---- Judging and the table -------------------------------------------------------------------

/// What happened to one failed connection.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ok,
    /// Inside a window (the step that opened it).
    Expected(usize),
    /// Outside every window, and ending soon after a reload of its node (the step).
    CutByReload(usize),
    Unexpected,
}

impl Verdict {
    fn label(&self) -> String {
        match self {
            Verdict::Ok => "ok".to_string(),
            Verdict::Expected(s) => format!("expected (step {s})"),
            Verdict::CutByReload(s) => format!("CUT BY RELOAD (step {s})"),
            Verdict::Unexpected => "OUTSIDE THE WINDOWS".to_string(),
        }
    }
}

fn covers(scope: Scope, r: &Rec, node_region: usize) -> bool {
    match scope {
        Scope::All => true,
        Scope::Node(n) => r.node == n,
        Scope::ClientPath(a, b) => {
            (r.client, node_region) == (a, b) || (r.client, node_region) == (b, a)
        }
        Scope::Touching(a, b) => [r.client, node_region].iter().any(|x| *x == a || *x == b),
    }
}

fn judge(r: &Rec, node_region: usize, ran: &Ran, reload_window: f64) -> Verdict {
    if r.ok {
        return Verdict::Ok;
    }
    // From the last moment it worked to the moment it was given up on.
    let (from, to) = (r.last_ok, r.end);
    if !r.corrupt {
        // The most specific window that reaches it names the step (a node down rather than a
        // link cut whose window for every connection is still open), then the latest opened.
        if let Some(e) = ran
            .excuses
            .iter()
            .filter(|e| covers(e.scope, r, node_region) && from <= e.to && e.from <= to)
            .min_by(|a, b| (a.scope.rank().cmp(&b.scope.rank())).then(b.from.total_cmp(&a.from)))
        {
            return Verdict::Expected(e.step);
        }
    }
    if let Some(rl) = ran.reloads.iter().find(|rl| {
        rl.node.is_none_or(|n| n == r.node) && rl.at <= to && from <= rl.at + reload_window
    }) {
        return Verdict::CutByReload(rl.step);
    }
    Verdict::Unexpected
}

struct Report {
    verdicts: Vec<Verdict>,
    panics: Vec<(String, usize)>,
    /// Per node: (start pid, start KiB, end pid, end KiB, the longest-lived process's pid,
    /// first KiB after its warm-up, last KiB, seconds it was sampled).
    memory: Vec<Memory>,
    /// Long-lived connections open across a reload of their node: (survived, cut).
    reload_crossings: (u64, u64),
    /// Connections whose echo came back different from what was sent.
    corrupt: usize,
    /// A line per failure outside the windows.
    outside: Vec<String>,
    /// Each connection's end, in the order of `verdicts`.
    ends: Vec<f64>,
    end: f64,
}

#[derive(Debug, Clone, Default)]
struct Memory {
    start: (u32, u64),
    end: (u32, u64),
    /// The longest-lived process: pid, first and last KiB, seconds between.
    longest: (u32, u64, u64, f64),
    processes: usize,
}

/// Growth of a node's RSS over a process's life beyond this is not noise: allocator arenas
/// and caches settle within the first seconds, and the load is steady.
const RSS_NOISE_KIB: u64 = 16 * 1024;
const RSS_NOISE_FRACTION: f64 = 0.5;

impl Report {
    fn new(
        man: &Manifest,
        recs: &[Rec],
        ran: &Ran,
        win: &Windows,
        samples: &[(f64, usize, u32, u64)],
        log_starts: &[(String, u64)],
        end: f64,
    ) -> Report {
        let reload_window = win.reload.as_secs_f64();
        let verdicts: Vec<Verdict> = recs
            .iter()
            .map(|r| judge(r, man.nodes[r.node].region, ran, reload_window))
            .collect();
        let mut crossings = (0, 0);
        for rl in &ran.reloads {
            for (r, v) in recs.iter().zip(&verdicts) {
                let v: &Verdict = v;
                if !r.long || rl.node.is_some_and(|n| n != r.node) || r.start > rl.at {
                    continue;
                }
                if r.ok && r.end >= rl.at + reload_window || r.last_ok >= rl.at + reload_window {
                    crossings.0 += 1;
                } else if matches!(v, Verdict::CutByReload(_)) {
                    crossings.1 += 1;
                }
            }
        }
        let panics = log_starts
            .iter()
            .map(|(name, from)| {
                let text = Bed::log_since(name, *from);
                (name.clone(), text.matches("panicked at").count())
            })
            .collect();
        let memory = (0..man.nodes.len())
            .map(|i| {
                let mine: Vec<&(f64, usize, u32, u64)> =
                    samples.iter().filter(|s| s.1 == i).collect();
                let mut m = Memory::default();
                if let (Some(f), Some(l)) = (mine.first(), mine.last()) {
                    m.start = (f.2, f.3);
                    m.end = (l.2, l.3);
                }
                let mut pids: Vec<u32> = mine.iter().map(|s| s.2).collect();
                pids.dedup();
                m.processes = pids.len();
                for pid in pids {
                    let life: Vec<&&(f64, usize, u32, u64)> =
                        mine.iter().filter(|s| s.2 == pid).collect();
                    let (Some(first), Some(last)) = (life.first(), life.last()) else {
                        continue;
                    };
                    // From WARMUP into its life: a process just started is still growing.
                    let settled = life
                        .iter()
                        .find(|s| s.0 >= first.0 + WARMUP.as_secs_f64())
                        .unwrap_or(first);
                    let span = last.0 - settled.0;
                    if span > m.longest.3 {
                        m.longest = (pid, settled.3, last.3, span);
                    }
                }
                m
            })
            .collect();
        let corrupt = recs.iter().filter(|r| r.corrupt).count();
        let outside = recs
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| matches!(v, Verdict::Unexpected | Verdict::CutByReload(_)))
            .map(|(r, v)| {
                let node = &man.nodes[r.node];
                format!(
                    "{:7.1}s-{:7.1}s  {} client -> {} {} ({}): {} at {}: {} [{}]",
                    r.last_ok,
                    r.end,
                    REGION_NAMES[r.client],
                    node.id,
                    node.apps[r.app].0,
                    if r.long { "long-lived" } else { "short" },
                    if r.origin.is_empty() {
                        "no origin"
                    } else {
                        &r.origin
                    },
                    r.stage,
                    r.error,
                    v.label()
                )
            })
            .collect();
        Report {
            verdicts,
            panics,
            memory,
            reload_crossings: crossings,
            corrupt,
            outside,
            ends: recs.iter().map(|r| r.end).collect(),
            end,
        }
    }

    fn grew(m: &Memory) -> bool {
        let (_, first, last, _) = m.longest;
        last > first + RSS_NOISE_KIB && last as f64 > first as f64 * (1.0 + RSS_NOISE_FRACTION)
    }

    /// Prints the table, the schedule as it ran, and what missed; whether every target held.
    fn print(&self, plan: &Plan, man: &Manifest, ran: &Ran, broken: &[String]) -> bool {
        let count = |f: &dyn Fn(&Verdict) -> bool| self.verdicts.iter().filter(|v| f(v)).count();
        let attempted = self.verdicts.len();
        let failed = count(&|v| *v != Verdict::Ok);
        let expected = count(&|v| matches!(v, Verdict::Expected(_)));
        let cut = count(&|v| matches!(v, Verdict::CutByReload(_)));
        let outside = count(&|v| matches!(v, Verdict::Unexpected | Verdict::CutByReload(_)));
        let recs_corrupt = self.corrupt;
        let panics: usize = self.panics.iter().map(|p| p.1).sum();
        let checks_failed = ran.checks.iter().filter(|c| !c.2).count();
        let grown: Vec<&str> = self
            .memory
            .iter()
            .zip(&man.nodes)
            .filter(|(m, _)| Report::grew(m))
            .map(|(_, n)| n.id.as_str())
            .collect();

        println!(
            "\n== schedule as it ran (seed {}, witness {})",
            plan.seed, plan.witness
        );
        println!("  step   started -    ended   (failures its windows hold: how many, the last ending how long after the step started)");
        for (step, from, to, what) in &ran.timeline {
            let held: Vec<f64> = self
                .verdicts
                .iter()
                .zip(&self.ends)
                .filter(|(v, _)| **v == Verdict::Expected(*step))
                .map(|(_, end)| end - from)
                .collect();
            let last = held.iter().copied().fold(0.0, f64::max);
            println!(
                "  {step:>3}  {from:7.1}s - {to:7.1}s  {what}  [{} failures{}]",
                held.len(),
                if held.is_empty() {
                    String::new()
                } else {
                    format!(", last +{last:.1}s")
                }
            );
        }
        if !self.outside.is_empty() {
            println!(
                "\n== failures outside the windows ({}; the first 30)",
                self.outside.len()
            );
            for line in self.outside.iter().take(30) {
                println!("  {line}");
            }
        }
        let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
        println!(
            "\n== chaos soak: seed {}, {:.0}s of chaos, {} steps, {:.0}s in all",
            plan.seed,
            plan.duration.as_secs_f64(),
            plan.steps.len(),
            self.end
        );
        println!("  {:<52} {:>8}", "connections attempted", attempted);
        println!("  {:<52} {:>8}", "  failed", failed);
        println!(
            "  {:<52} {:>8}",
            "  failed inside a detection window (expected)", expected
        );
        println!(
            "  {:<52} {:>8}  target 0  {}",
            "  failed outside the windows",
            outside,
            mark(outside == 0)
        );
        println!(
            "  {:<52} {:>8}  target 0  {}",
            "  cut by a reload (SIGHUP, GeoIP)",
            cut,
            mark(cut == 0)
        );
        println!(
            "  {:<52} {:>8}  target 0  {}",
            "  bytes echoed wrongly (connections)",
            recs_corrupt,
            mark(recs_corrupt == 0)
        );
        println!(
            "  {:<52} {:>8}",
            "long-lived connections open across a reload, kept", self.reload_crossings.0
        );
        println!(
            "  {:<52} {:>8}  target 0  {}",
            "checks failed (reloads, restarts, the end state)",
            checks_failed,
            mark(checks_failed == 0)
        );
        println!(
            "  {:<52} {:>8}  target 0  {}",
            "panics in the logs (nodes and origins)",
            panics,
            mark(panics == 0)
        );
        println!("  memory (RSS, MiB)   start -> end of the soak      longest-lived process: after its warm-up -> end");
        for (m, n) in self.memory.iter().zip(&man.nodes) {
            let mib = |k: u64| k as f64 / 1024.0;
            println!(
                "    {:<10} {:>6.1} -> {:>6.1} ({} process{})   pid {}: {:>6.1} -> {:>6.1} over {:>4.0}s  {}",
                n.id,
                mib(m.start.1),
                mib(m.end.1),
                m.processes,
                if m.processes == 1 { "" } else { "es" },
                m.longest.0,
                mib(m.longest.1),
                mib(m.longest.2),
                m.longest.3,
                mark(!Report::grew(m))
            );
        }
        println!(
            "  memory target: no process grows by more than {} MiB and {:.0} % after its first {}s",
            RSS_NOISE_KIB / 1024,
            RSS_NOISE_FRACTION * 100.0,
            WARMUP.as_secs()
        );
        for c in ran.checks.iter().filter(|c| !c.2) {
            println!("  check failed (step {}): {}", c.0, c.1);
        }
        for b in broken {
            println!("  soak error: {b}");
        }
        println!("  every connection: {OUT}/connections.csv; the commands run: {OUT}/commands.log");
        let ok = outside == 0
            && recs_corrupt == 0
            && checks_failed == 0
            && panics == 0
            && grown.is_empty();
        println!(
            "chaos-soak: {}",
            if ok && broken.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        ok
    }
}

/// Writes every connection, with its verdict, to connections.csv.
fn write_records(man: &Manifest, recs: &[Rec], report: &Report) -> Result<()> {
    let path = Path::new(OUT).join("connections.csv");
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut f = std::io::BufWriter::new(file);
    writeln!(
        f,
        "start_s,end_s,last_ok_s,client_region,node,app,kind,outcome,verdict,stage,error,origin,bytes_echoed_ok,echo_rounds"
    )?;
    for (r, v) in recs.iter().zip(&report.verdicts) {
        let node = &man.nodes[r.node];
        writeln!(
            f,
            "{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{}",
            r.start,
            r.end,
            r.last_ok,
            REGION_NAMES[r.client],
            node.id,
            node.apps[r.app].0,
            if r.long { "long" } else { "short" },
            if r.ok { "ok" } else { "failed" },
            v.label(),
            r.stage,
            r.error.replace(',', ";"),
            r.origin,
            r.bytes_ok,
            r.rounds
        )?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, secs: u64) -> Plan {
        let nodes: Vec<String> = topology::NODES.iter().map(|n| n.0.to_string()).collect();
        let origins: Vec<String> = Topology::new(Mode::Wan)
            .origins
            .iter()
            .map(|o| o.name.clone())
            .collect();
        schedule(seed, Duration::from_secs(secs), &nodes, &origins)
    }

    fn kind(a: &Action) -> usize {
        match a {
            Action::OriginFlap { .. } => 0,
            Action::Cut { .. } => 1,
            Action::Slow { .. } => 2,
            Action::Loss { .. } => 3,
            Action::Kill { .. } => 4,
            Action::Stop { .. } => 5,
            Action::HupValid { .. } => 6,
            Action::HupInvalid { .. } => 7,
            Action::GeoReplace { .. } => 8,
            Action::GeoBad => 9,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(plan(7, 600), plan(7, 600));
        assert_eq!(plan(7, 600).describe(), plan(7, 600).describe());
        assert_ne!(plan(7, 600).steps, plan(8, 600).steps);
    }

    #[test]
    fn every_kind_runs_even_in_a_short_run_and_a_long_run_fits_its_duration() {
        for seed in 0..20 {
            let short = plan(seed, 30);
            let mut kinds: Vec<usize> = short.steps.iter().map(|s| kind(&s.action)).collect();
            kinds.sort_unstable();
            assert_eq!(kinds, (0..KINDS).collect::<Vec<_>>(), "seed {seed}");
            let long = plan(seed, 600);
            assert!(
                long.steps.len() > 3 * KINDS,
                "seed {seed}: {}",
                long.steps.len()
            );
            let last = long.steps.last().unwrap();
            assert!(last.at + last.action.estimate() <= Duration::from_secs(600));
        }
    }

    #[test]
    fn the_witness_is_never_restarted_and_a_valid_sighup_always_changes_the_config() {
        for seed in 0..20 {
            let p = plan(seed, 600);
            let mut current: BTreeMap<String, usize> = BTreeMap::new();
            for s in &p.steps {
                match &s.action {
                    Action::Kill { node, .. } | Action::Stop { node, .. } => {
                        assert_ne!(*node, p.witness, "seed {seed}")
                    }
                    Action::HupValid { node, variant } => {
                        let before = current.insert(node.clone(), *variant).unwrap_or(0);
                        assert_ne!(before, *variant, "seed {seed}: {node}");
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn every_config_variant_is_valid_and_differs() {
        let files = NodeFiles::under(Path::new("/x/certs"), "edge-weu", Path::new("/x/geo.mmdb"));
        let texts: Vec<String> = (0..VARIANTS.len())
            .map(|v| {
                variant(v).node_config("edge-weu", &files).unwrap();
                variant(v).node_config_text("edge-weu", &files, "")
            })
            .collect();
        for i in 0..texts.len() {
            for j in i + 1..texts.len() {
                assert_ne!(texts[i], texts[j], "variants {i} and {j}");
            }
        }
    }

    fn rec(client: usize, node: usize, from: f64, to: f64) -> Rec {
        let mut r = Rec::new(client, node, 0, false, from);
        r.end = to;
        failed(&mut r, "connect", "refused");
        r
    }

    #[test]
    fn a_failure_is_excused_only_inside_a_window_that_reaches_it() {
        let ran = Ran {
            excuses: vec![
                Excuse {
                    scope: Scope::Node(1),
                    from: 10.0,
                    to: 20.0,
                    step: 1,
                },
                Excuse {
                    scope: Scope::ClientPath(0, 2),
                    from: 30.0,
                    to: 40.0,
                    step: 2,
                },
            ],
            reloads: vec![Reload {
                at: 50.0,
                node: Some(2),
                step: 3,
            }],
            ..Ran::default()
        };
        use Verdict::{CutByReload, Expected, Unexpected};
        // (client region, node = its region, from, to, verdict)
        let cases = [
            // Node 1 down: its connections, while it is down; in flight when it went.
            (0, 1, 12.0, 13.0, Expected(1)),
            (0, 0, 12.0, 13.0, Unexpected),
            (0, 1, 5.0, 10.5, Expected(1)),
            (0, 1, 21.0, 22.0, Unexpected),
            // A cut between regions 0 and 2: clients of one on the node of the other.
            (2, 0, 31.0, 32.0, Expected(2)),
            (0, 2, 31.0, 32.0, Expected(2)),
            (1, 2, 31.0, 32.0, Unexpected),
            // Soon after a reload of its node, and nothing else: cut by the reload.
            (2, 2, 49.0, 52.0, CutByReload(3)),
            (2, 1, 49.0, 52.0, Unexpected),
        ];
        for (client, node, from, to, want) in cases {
            let r = rec(client, node, from, to);
            assert_eq!(judge(&r, node, &ran, 5.0), want, "{client} {node} {from}");
        }
        // Two windows of one scope: the later one names the step.
        let mut two = ran.clone();
        two.excuses.push(Excuse {
            scope: Scope::Node(1),
            from: 15.0,
            to: 25.0,
            step: 4,
        });
        assert_eq!(
            judge(&rec(0, 1, 16.0, 17.0), 1, &two, 5.0),
            Verdict::Expected(4)
        );
        // Wrong bytes are never excused.
        let mut bad = rec(0, 1, 12.0, 13.0);
        bad.corrupt = true;
        assert_eq!(judge(&bad, 1, &ran, 5.0), Verdict::Unexpected);
    }
}
