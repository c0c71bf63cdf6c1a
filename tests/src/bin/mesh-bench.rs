//! `mesh-bench`: a benchmark of the mesh (not a test). Starts N mesh members in one process on
//! 127.0.0.1 (each with its own certificate from a throwaway CA, seeds = the first node), waits
//! until every node sees N alive members, then measures
//!
//! 1. flip propagation: K times, a random node flips the health of one of its rows, and the
//!    time from `set_local` until every other node's `state()` shows the new value;
//! 2. idle traffic: the bytes each node sends (`switchyard_mesh_bytes_sent_total`, the QUIC
//!    payload: SWIM datagrams and replication streams) over S seconds with no changes, and,
//!    when the loopback carries only this process's traffic (`--lo-exclusive`, e.g. under
//!    `unshare -rn`), the bytes on the wire (IP + UDP + QUIC headers, ACKs, keep-alives).
//!
//! Prints a table and one JSON line (prefixed with nothing, starting with `{`). Exits 1 when
//! convergence, replication or a flip does not complete within `--deadline-secs`.
//!
//!     mesh-bench --nodes 50 [--flips 20] [--idle-secs 10] [--profile lan]

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use switchyard_geo::Region;
use switchyard_gossip::table::Digest;
use switchyard_gossip::wire::{Envelope, Msg};
use switchyard_gossip::{
    tls, LocalRow, MemberState, Mesh, MeshConfig, MeshMetrics, MeshState, Profile, Timings,
};
use switchyard_node::metrics::Metrics;
use switchyard_tests::rng::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

const POOL: &str = "bench";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Lan,
    Wan,
}

/// Mesh benchmark: convergence, flip propagation and idle traffic of N in-process members.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench")]
struct Args {
    /// Number of mesh members to start (2..=500).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=500))]
    nodes: u32,
    /// Health flips to measure (1..=10000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    flips: u32,
    /// Seconds of idle traffic to measure (1..=3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_secs: u64,
    /// SWIM timings profile (Timings::for_profile).
    #[arg(long, value_enum, default_value_t = ProfileArg::Lan)]
    profile: ProfileArg,
    /// Rows (origins) per node.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rows: u32,
    /// Bound on each phase (convergence, initial replication, each flip), in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    deadline_secs: u64,
    /// Seconds to wait after the flips before measuring idle traffic.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    settle_secs: u64,
    /// Seed of the choice of nodes and rows to flip (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Tokio worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
    /// The loopback interface carries only this process's traffic (a private network
    /// namespace, e.g. `unshare -rn`): report the bytes on the wire from /proc/net/dev too.
    #[arg(long)]
    lo_exclusive: bool,
    /// Seconds of steady RTT updates after the idle window (every node moves every row's
    /// RTT once a second), over which signatures made and verified are counted (0: skip).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    rtt_secs: u64,
    /// Milliseconds between two node starts (0: all at once).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    stagger_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t as usize);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Throwaway CA and certificates, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    id: String,
    mesh: Mesh,
    metrics: Metrics,
    rows: Vec<LocalRow>,
}

impl Node {
    fn counters(&self) -> Counters {
        Counters::parse(&self.metrics.encode())
    }
}

/// What a node's registry says about its mesh traffic.
#[derive(Debug, Default, Clone)]
struct Counters {
    bytes_sent: f64,
    /// Signatures this node made and verified (copied once a second by its housekeeping).
    sigs_made: f64,
    sigs_verified: f64,
    /// Messages sent, by type (swim, push, summary, digest, delta).
    sent: BTreeMap<String, f64>,
    /// Refusals, decode errors and received messages, as "name value", for diagnostics.
    other: Vec<String>,
}

impl Counters {
    fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if (name.starts_with("switchyard_mesh_refused")
                || name.starts_with("switchyard_mesh_decode_errors")
                || (name.starts_with("switchyard_mesh_messages")
                    && name.to_ascii_lowercase().contains("received")))
                && v > 0.0
            {
                c.other.push(format!("{name} {v}"));
            }
            if name == "switchyard_mesh_bytes_sent_total" {
                c.bytes_sent = v;
            } else if name == "switchyard_mesh_signatures_total{op=\"made\"}" {
                c.sigs_made = v;
            } else if name == "switchyard_mesh_signatures_total{op=\"verified\"}" {
                c.sigs_verified = v;
            } else if let Some(labels) = name.strip_prefix("switchyard_mesh_messages_total{") {
                if labels.contains("direction=\"sent\"") {
                    if let Some(t) = labels
                        .split("type=\"")
                        .nth(1)
                        .and_then(|s| s.split('"').next())
                    {
                        *c.sent.entry(t.to_string()).or_default() += v;
                    }
                }
            }
        }
        c
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn alive(s: &MeshState) -> usize {
    s.members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

/// The members a node does not see alive: "id:state" or "id:missing".
fn membership_gaps(s: &MeshState, ids: &[String]) -> String {
    let gaps: Vec<String> = ids
        .iter()
        .filter_map(|id| match s.members.iter().find(|m| &m.id == id) {
            None => Some(format!("{id}:missing")),
            Some(m) if m.state != MemberState::Alive => Some(format!("{id}:{}", m.state.as_str())),
            Some(_) => None,
        })
        .collect();
    if gaps.is_empty() {
        "everyone alive".into()
    } else {
        gaps.join(", ")
    }
}

/// Why a node does not see everyone alive: who it misses, what those think of it, and what
/// its mesh metrics say.
fn diagnose(nd: &Node, nodes: &[Node], ids: &[String]) {
    let gaps = membership_gaps(&nd.mesh.state().borrow(), ids);
    eprintln!("mesh-bench: {} does not see alive: {gaps}", nd.id);
    let c = nd.counters();
    eprintln!(
        "mesh-bench:   {} sent {:?}, {} bytes; {}",
        nd.id,
        c.sent,
        c.bytes_sent,
        c.other.join(", ")
    );
    for other in nodes {
        if other.id == nd.id || !gaps.contains(&format!("{}:", other.id)) {
            continue;
        }
        let st = other.mesh.state();
        let st = st.borrow();
        let view = st
            .members
            .iter()
            .find(|m| m.id == nd.id)
            .map(|m| {
                format!(
                    "{} (generation {}, rtt {:?})",
                    m.state.as_str(),
                    m.generation,
                    m.rtt
                )
            })
            .unwrap_or_else(|| "missing".into());
        let oc = other.counters();
        eprintln!(
            "mesh-bench:   {} sees {} as {view}; {} sees {} of {} alive; sent {:?}; {}",
            other.id,
            nd.id,
            other.id,
            alive(&st),
            ids.len(),
            oc.sent,
            oc.other.join(", ")
        );
    }
}

/// Every "observer->member:state" pair where the observer does not see the member alive.
fn pair_gaps(nodes: &[Node], ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for nd in nodes {
        let st = nd.mesh.state();
        let st = st.borrow();
        for id in ids {
            match st.members.iter().find(|m| &m.id == id) {
                None => out.push(format!("{}->{id}:missing", nd.id)),
                Some(m) if m.state != MemberState::Alive => {
                    out.push(format!("{}->{id}:{}", nd.id, m.state.as_str()))
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// Rows of pool `POOL` this node holds, over every live writer.
fn bench_rows(s: &MeshState) -> usize {
    s.writers
        .iter()
        .filter(|w| w.live)
        .map(|w| w.rows.iter().filter(|(r, _)| r.pool == POOL).count())
        .sum()
}

fn row_health(s: &MeshState, writer: &str, origin: &str) -> Option<bool> {
    s.writers
        .iter()
        .find(|w| w.node == writer)?
        .rows
        .iter()
        .find(|(r, _)| r.pool == POOL && r.origin == origin)
        .map(|(r, _)| r.healthy)
}

/// Waits, on every node's state, until `pred` holds; returns when each node first saw it
/// (None for the nodes that did not see it before `deadline`).
async fn wait_all<F>(
    receivers: Vec<watch::Receiver<Arc<MeshState>>>,
    deadline: Instant,
    pred: F,
) -> Vec<Option<Instant>>
where
    F: Fn(&MeshState) -> bool + Send + Sync + Clone + 'static,
{
    let mut tasks = Vec::with_capacity(receivers.len());
    for mut rx in receivers {
        let pred = pred.clone();
        tasks.push(tokio::spawn(async move {
            let seen = tokio::time::timeout_at(deadline, rx.wait_for(|s| pred(s))).await;
            let at = Instant::now();
            matches!(seen, Ok(Ok(_))).then_some(at)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.ok().flatten());
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Loopback tx bytes and packets, from /proc/net/dev (per network namespace).
fn lo_tx() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    let fields: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    Some((*fields.get(8)?, *fields.get(9)?))
}

/// UDP counters of this network namespace (/proc/net/snmp): datagrams in and out, and those
/// dropped on receive (InErrors, of which RcvbufErrors: a socket's receive buffer was full).
#[derive(Debug, Default, Clone, Copy)]
struct UdpSnmp {
    in_datagrams: u64,
    out_datagrams: u64,
    in_errors: u64,
    rcvbuf_errors: u64,
}

fn udp_snmp() -> Option<UdpSnmp> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(UdpSnmp {
        in_datagrams: get("InDatagrams")?,
        out_datagrams: get("OutDatagrams")?,
        in_errors: get("InErrors")?,
        rcvbuf_errors: get("RcvbufErrors")?,
    })
}

fn udp_delta(a: Option<UdpSnmp>, b: Option<UdpSnmp>) -> Option<UdpSnmp> {
    let (a, b) = (a?, b?);
    Some(UdpSnmp {
        in_datagrams: b.in_datagrams.saturating_sub(a.in_datagrams),
        out_datagrams: b.out_datagrams.saturating_sub(a.out_datagrams),
        in_errors: b.in_errors.saturating_sub(a.in_errors),
        rcvbuf_errors: b.rcvbuf_errors.saturating_sub(a.rcvbuf_errors),
    })
}

/// Receive drops of each UDP socket of the namespace, by local port (/proc/net/udp).
fn udp_socket_drops() -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return out;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = f
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let drops = f.last().and_then(|d| d.parse::<u64>().ok());
        if let (Some(port), Some(drops)) = (port, drops) {
            out.insert(port, drops);
        }
    }
    out
}

/// "node drops" for the nodes whose socket dropped the most, worst first.
fn worst_drops(nodes: &[Node], take: usize) -> String {
    let drops = udp_socket_drops();
    let mut v: Vec<(u64, &str)> = nodes
        .iter()
        .filter_map(|nd| Some((*drops.get(&nd.mesh.local_addr().port())?, nd.id.as_str())))
        .filter(|(d, _)| *d > 0)
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    let total: u64 = v.iter().map(|(d, _)| d).sum();
    let sockets = v.len();
    let shown: Vec<String> = v
        .iter()
        .take(take)
        .map(|(d, id)| format!("{id} {d}"))
        .collect();
    format!("{total} on {sockets} sockets; worst: {}", shown.join(", "))
}

/// Nodes that were declared down and rejoined under a new generation.
fn rejoined(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .filter(|nd| nd.mesh.state().borrow().local.generation != nd.mesh.identity().generation)
        .count()
}

/// The host's 1-minute load average: other work on the machine shares its cores with the bench.
fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Size of one anti-entropy digest this node sends, encoded as on the wire: one entry per
/// writer (node id, epoch = the writer's generation, seq).
fn digest_bytes(nd: &Node) -> Option<usize> {
    let st = nd.mesh.state();
    let entries = st
        .borrow()
        .members
        .iter()
        .map(|m| (m.id.clone(), m.generation, 4u64))
        .collect();
    let env = Envelope {
        cluster: "bench".into(),
        from: nd.id.clone(),
        msg: Msg::Digest {
            digest: Digest { entries },
            reply: false,
        },
    };
    switchyard_gossip::codec::encode(&env).ok().map(|v| v.len())
}

/// Size of one anti-entropy summary (the digest's fingerprint), encoded as on the wire.
fn summary_bytes(nd: &Node) -> Option<usize> {
    let env = Envelope {
        cluster: "bench".into(),
        from: nd.id.clone(),
        msg: Msg::Summary { fingerprint: 0 },
    };
    switchyard_gossip::codec::encode(&env).ok().map(|v| v.len())
}

/// CPU time of this process (user + system), from /proc/self/stat.
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at the state (field 3).
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture /proc reports in.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The region of node number `i`: the regions in turn.
fn region_of(i: usize) -> Region {
    Region::ALL[i % Region::ALL.len()]
}

/// The share of one core a node spends signing and verifying under steady RTT updates.
fn signing_share(r: &Report) -> f64 {
    let (made, verified) = r.rtt_sigs;
    let (sign, verify) = r.sig_cost_us;
    (made * sign + verified * verify) / 1e6 * 100.0
}

/// What one signature costs here, in microseconds of CPU: (sign, verify), measured over
/// `n` of each with a node's real key and certificate, on a claim of the size a batch of the
/// bench's rows makes.
fn signature_cost(node: &tls::NodeTls, n: u32) -> (f64, f64) {
    let signer = node.signer();
    let cert = node.own_cert().expect("a node certificate");
    let claim = vec![0x5a_u8; 1024];
    let sig = signer.sign(&claim);
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(signer.sign(std::hint::black_box(&claim)));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(cert.verifies(std::hint::black_box(&claim), &sig));
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    (sign_us, verify_us)
}

struct Report {
    nodes: usize,
    /// Microseconds per signature made and verified (see [`signature_cost`]).
    sig_cost_us: (f64, f64),
    profile: &'static str,
    threads: usize,
    convergence_ms: f64,
    /// When the median node first saw everyone alive.
    convergence_p50_ms: f64,
    replication_ms: f64,
    flips: Vec<f64>,
    deliveries: Vec<f64>,
    idle_secs: u64,
    idle_bps: Vec<f64>,
    idle_sent: BTreeMap<String, f64>,
    wire: Option<(f64, f64)>,
    cpu_percent: Option<f64>,
    alive_min_after: usize,
    rejoined_startup: usize,
    /// Host load average (1 min) at the start and at the end of the idle window.
    load: (Option<f64>, Option<f64>),
    /// Bytes of one anti-entropy digest.
    digest_bytes: Option<usize>,
    /// Bytes of one anti-entropy summary.
    summary_bytes: Option<usize>,
    rejoined_end: usize,
    stagger_ms: u64,
    /// UDP counters of the namespace, from the first start to convergence and over the run.
    udp_startup: Option<UdpSnmp>,
    udp_run: Option<UdpSnmp>,
    /// Signatures made and verified per node per second while idle (mean over nodes).
    idle_sigs: (f64, f64),
    /// The same under steady RTT updates, with the process CPU then.
    rtt_secs: u64,
    rtt_sigs: (f64, f64),
    rtt_cpu_percent: Option<f64>,
}

/// Signatures made and verified per node per second between two readings (mean over nodes).
fn sigs_per_node_sec(before: &[Counters], after: &[Counters], secs: f64) -> (f64, f64) {
    let n = before.len().max(1) as f64;
    let (made, verified) = before.iter().zip(after).fold((0.0, 0.0), |(m, v), (b, a)| {
        (
            m + a.sigs_made - b.sigs_made,
            v + a.sigs_verified - b.sigs_verified,
        )
    });
    (made / secs / n, verified / secs / n)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.nodes as usize;
    let deadline = Duration::from_secs(args.deadline_secs);
    let profile = match args.profile {
        ProfileArg::Lan => Profile::Lan,
        ProfileArg::Wan => Profile::Wan,
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let threads = args.threads.map(|t| t as usize).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    eprintln!(
        "mesh-bench: {n} nodes, profile {:?}, {} flips, {} s idle, seed {seed}, {threads} worker threads",
        args.profile, args.flips, args.idle_secs
    );

    let dir = TempDir(std::env::temp_dir().join(format!(
        "sy-mesh-bench-{}-{}",
        std::process::id(),
        unix_ms()
    )));
    let _ = std::fs::remove_dir_all(&dir.0);
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{i:03}")).collect();
    let named: Vec<(String, Region)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), region_of(i)))
        .collect();
    let certs = switchyard_tests::harness::node_certs(&dir.0, "bench", &named)?;
    let sig_cost_us = signature_cost(&certs[0], 2000);

    // ---- Start every node, seeds = the first node's address. ----
    let timings = Timings::for_profile(profile, args.nodes);
    let udp0 = udp_snmp();
    let load_start = load_avg();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut seed_addr = None;
    for (i, (id, tls)) in ids.iter().zip(&certs).enumerate() {
        if i > 0 && args.stagger_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.stagger_ms)).await;
        }
        let cfg = MeshConfig {
            node_id: id.clone(),
            region: region_of(i),
            cluster: "bench".into(),
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            seeds: seed_addr.into_iter().collect(),
            profile,
            expected_size: args.nodes,
            timings,
            fingerprint: 0,
        };
        let mut metrics = Metrics::new();
        let mesh_metrics = MeshMetrics::default();
        mesh_metrics.register(metrics.registry_mut());
        let mesh = Mesh::start(cfg, tls, mesh_metrics)
            .with_context(|| format!("starting mesh node {id}"))?;
        if seed_addr.is_none() {
            seed_addr = Some(mesh.local_addr());
        }
        let rows = (1..=args.rows)
            .map(|o| LocalRow {
                pool: POOL.into(),
                origin: format!("o{o}"),
                healthy: true,
                rtt: Some(Duration::from_micros(1000 + 100 * o as u64)),
                last_change_ms: unix_ms(),
                reason: None,
                verdict: None,
            })
            .collect();
        nodes.push(Node {
            id: id.clone(),
            mesh,
            metrics,
            rows,
        });
    }
    // Convergence counts from the last start (with --stagger-ms 0, all start within a few ms).
    let t_start = Instant::now();
    let receivers = |nodes: &[Node]| -> Vec<watch::Receiver<Arc<MeshState>>> {
        nodes.iter().map(|nd| nd.mesh.state()).collect()
    };

    // ---- Membership convergence. ----
    let mut waiting = tokio::spawn(wait_all(receivers(&nodes), t_start + deadline, move |s| {
        alive(s) == n
    }));
    // Progress once a second: how many nodes see everyone, and which (observer, member) pairs
    // are still not alive. Bounded by the deadline, which also bounds `waiting`.
    let mut progress =
        tokio::time::interval_at(t_start + Duration::from_secs(1), Duration::from_secs(1));
    let seen = loop {
        tokio::select! {
            seen = &mut waiting => break seen.context("convergence watchers")?,
            _ = progress.tick() => {
                let gaps = pair_gaps(&nodes, &ids);
                let done = nodes.iter().filter(|nd| alive(&nd.mesh.state().borrow()) == n).count();
                let shown: Vec<String> = gaps.iter().take(8).cloned().collect();
                eprintln!(
                    "mesh-bench:   {:>3.0} s: {done}/{n} nodes see everyone alive; {} pairs not yet{}{}",
                    t_start.elapsed().as_secs_f64(),
                    gaps.len(),
                    if shown.is_empty() { "" } else { ": " },
                    shown.join(", ")
                );
            }
        }
    };
    let udp_startup = udp_delta(udp0, udp_snmp());
    if seen.iter().any(Option::is_none) {
        if let Some(u) = udp_startup {
            eprintln!("mesh-bench: UDP since start: {u:?}");
        }
        eprintln!(
            "mesh-bench: UDP receive drops by socket: {}",
            worst_drops(&nodes, 5)
        );
        eprintln!(
            "mesh-bench: {} nodes were declared down and rejoined under a new generation",
            rejoined(&nodes)
        );
        let counts: Vec<usize> = nodes
            .iter()
            .map(|nd| alive(&nd.mesh.state().borrow()))
            .collect();
        let late = seen.iter().filter(|s| s.is_none()).count();
        for (nd, s) in nodes.iter().zip(&seen) {
            if s.is_none() {
                diagnose(nd, &nodes, &ids);
            }
        }
        bail!(
            "membership did not converge within {deadline:?}: {late} of {n} nodes do not see {n} alive members (alive counts seen: min {}, max {})",
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0)
        );
    }
    let converged = seen.iter().flatten().max().copied().unwrap_or(t_start);
    let convergence_ms = ms(converged - t_start);
    let mut per_node: Vec<f64> = seen.iter().flatten().map(|at| ms(*at - t_start)).collect();
    per_node.sort_by(f64::total_cmp);
    let convergence_p50_ms = percentile(&per_node, 0.5);
    let rejoined_startup = rejoined(&nodes);
    eprintln!(
        "mesh-bench: UDP receive drops by socket: {}",
        worst_drops(&nodes, 5)
    );
    eprintln!(
        "mesh-bench: membership converged in {convergence_ms:.0} ms ({rejoined_startup} nodes declared down and rejoined on the way; UDP {udp_startup:?})"
    );
    // What joining cost: counters are copied once a second, so wait for one more copy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let joined: Vec<Counters> = nodes.iter().map(Node::counters).collect();
    let mut sent: BTreeMap<String, f64> = BTreeMap::new();
    for c in &joined {
        for (k, v) in &c.sent {
            *sent.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!(
        "mesh-bench: to converge, per node: {:.0} signatures made, {:.0} verified; messages sent {}",
        joined.iter().map(|c| c.sigs_made).sum::<f64>() / n as f64,
        joined.iter().map(|c| c.sigs_verified).sum::<f64>() / n as f64,
        sent.iter()
            .map(|(k, v)| format!("{k} {:.0}", v / n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // ---- Every node publishes its rows; wait until everyone holds everyone's. ----
    let t_rows = Instant::now();
    for nd in &nodes {
        nd.mesh.set_local(nd.rows.clone());
    }
    let want = n * args.rows as usize;
    let seen = wait_all(receivers(&nodes), t_rows + deadline, move |s| {
        bench_rows(s) == want
    })
    .await;
    if seen.iter().any(Option::is_none) {
        let late = seen.iter().filter(|s| s.is_none()).count();
        bail!("initial rows did not replicate within {deadline:?}: {late} of {n} nodes do not hold all {want} rows");
    }
    let replication_ms = ms(seen.iter().flatten().max().copied().unwrap_or(t_rows) - t_rows);
    eprintln!("mesh-bench: {want} rows replicated to every node in {replication_ms:.0} ms");
    // Let the initial pushes and the digests they trigger die down.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ---- Flip propagation. ----
    let mut flips = Vec::with_capacity(args.flips as usize);
    let mut deliveries = Vec::with_capacity(args.flips as usize * (n - 1));
    for k in 0..args.flips {
        let i = rng.below(n);
        let j = rng.below(args.rows as usize);
        let writer = nodes[i].id.clone();
        let origin = nodes[i].rows[j].origin.clone();
        let healthy = !nodes[i].rows[j].healthy;
        let others: Vec<usize> = (0..n).filter(|&x| x != i).collect();
        let rxs: Vec<_> = others.iter().map(|&x| nodes[x].mesh.state()).collect();
        let (w, o) = (writer.clone(), origin.clone());
        let t0 = Instant::now();
        let watchers = tokio::spawn(wait_all(rxs, t0 + deadline, move |s| {
            row_health(s, &w, &o) == Some(healthy)
        }));
        // Let the watchers park on their receivers before the flip.
        tokio::time::sleep(Duration::from_millis(5)).await;
        {
            let nd = &mut nodes[i];
            nd.rows[j].healthy = healthy;
            nd.rows[j].last_change_ms = unix_ms();
            nd.rows[j].reason = (!healthy).then(|| "bench flip".to_string());
        }
        let t_flip = Instant::now();
        nodes[i].mesh.set_local(nodes[i].rows.clone());
        let seen = watchers.await.context("flip watchers")?;
        let late: Vec<&str> = seen
            .iter()
            .zip(&others)
            .filter(|(s, _)| s.is_none())
            .map(|(_, &x)| nodes[x].id.as_str())
            .collect();
        if !late.is_empty() {
            bail!(
                "flip {} ({writer} {POOL}/{origin} -> {}) did not reach {} of {} nodes within {deadline:?} (e.g. {})",
                k + 1,
                if healthy { "up" } else { "down" },
                late.len(),
                n - 1,
                late.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            );
        }
        // A watcher that saw the value before t_flip cannot happen (it is only set now);
        // saturating_duration_since keeps the arithmetic safe anyway.
        let per: Vec<f64> = seen
            .iter()
            .flatten()
            .map(|at| ms(at.saturating_duration_since(t_flip)))
            .collect();
        let worst = per.iter().copied().fold(0.0, f64::max);
        flips.push(worst);
        deliveries.extend(per);
        // Flips apart, so each one is measured on its own: 100-200 ms.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(100) as u64)).await;
    }
    flips.sort_by(f64::total_cmp);
    deliveries.sort_by(f64::total_cmp);
    eprintln!(
        "mesh-bench: {} flips, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        flips.len(),
        percentile(&flips, 0.5),
        percentile(&flips, 0.99),
        flips.last().copied().unwrap_or(f64::NAN)
    );

    // ---- Idle traffic. ----
    eprintln!(
        "mesh-bench: settling {} s, then measuring idle traffic for {} s",
        args.settle_secs, args.idle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    // bytes_sent is copied from the transport once a second by each node's housekeeping
    // tick; over a whole number of seconds the difference covers exactly that many ticks.
    let before: Vec<Counters> = nodes.iter().map(Node::counters).collect();
    let lo0 = lo_tx();
    let cpu0 = cpu_time();
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let after: Vec<Counters> = nodes.iter().map(Node::counters).collect();
    let lo1 = lo_tx();
    let cpu1 = cpu_time();
    let idle = t_idle.elapsed().as_secs_f64();
    let secs = args.idle_secs as f64;
    let idle_bps: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.bytes_sent - b.bytes_sent) / secs)
        .collect();
    let mut idle_sent: BTreeMap<String, f64> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        for (t, v) in &a.sent {
            let d = v - b.sent.get(t).copied().unwrap_or(0.0);
            *idle_sent.entry(t.clone()).or_default() += d / secs / n as f64;
        }
    }
    let wire = match (args.lo_exclusive, lo0, lo1) {
        (true, Some((b0, p0)), Some((b1, p1))) => Some((
            (b1 - b0) as f64 / idle / n as f64,
            (p1 - p0) as f64 / idle / n as f64,
        )),
        _ => None,
    };
    let cpu_percent = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() / idle * 100.0),
        _ => None,
    };
    let alive_min_after = nodes
        .iter()
        .map(|nd| alive(&nd.mesh.state().borrow()))
        .min()
        .unwrap_or(0);
    let digest = nodes.first().and_then(digest_bytes);
    let idle_sigs = sigs_per_node_sec(&before, &after, secs);

    // ---- Steady RTT updates: what signing costs. ----
    let (rtt_sigs, rtt_cpu_percent) = if args.rtt_secs > 0 {
        eprintln!(
            "mesh-bench: every node moves every RTT once a second for {} s",
            args.rtt_secs
        );
        let before: Vec<Counters> = nodes.iter().map(Node::counters).collect();
        let cpu0 = cpu_time();
        let t_rtt = Instant::now();
        for tick in 0..args.rtt_secs {
            // 2 ms up, then back: above the 1 ms replication threshold every time.
            let shift = if tick % 2 == 0 { 2_000 } else { 0 };
            for nd in &nodes {
                let rows: Vec<LocalRow> = nd
                    .rows
                    .iter()
                    .map(|r| LocalRow {
                        rtt: r.rtt.map(|d| d + Duration::from_micros(shift)),
                        ..r.clone()
                    })
                    .collect();
                nd.mesh.set_local(rows);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let elapsed = t_rtt.elapsed().as_secs_f64();
        let after: Vec<Counters> = nodes.iter().map(Node::counters).collect();
        let cpu = match (cpu0, cpu_time()) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64() / elapsed * 100.0),
            _ => None,
        };
        (
            sigs_per_node_sec(&before, &after, args.rtt_secs as f64),
            cpu,
        )
    } else {
        ((f64::NAN, f64::NAN), None)
    };

    let report = Report {
        nodes: n,
        profile: match profile {
            Profile::Lan => "lan",
            Profile::Wan => "wan",
        },
        threads,
        convergence_ms,
        convergence_p50_ms,
        replication_ms,
        flips,
        deliveries,
        idle_secs: args.idle_secs,
        idle_bps,
        idle_sent,
        wire,
        cpu_percent,
        alive_min_after,
        rejoined_startup,
        load: (load_start, load_avg()),
        digest_bytes: digest,
        summary_bytes: nodes.first().and_then(summary_bytes),
        rejoined_end: rejoined(&nodes),
        stagger_ms: args.stagger_ms,
        udp_startup: udp_startup.filter(|_| args.lo_exclusive),
        udp_run: udp_delta(udp0, udp_snmp()).filter(|_| args.lo_exclusive),
        idle_sigs,
        rtt_secs: args.rtt_secs,
        rtt_sigs,
        rtt_cpu_percent,
        sig_cost_us,
    };
    print_table(&report);
    println!("{}", json(&report));
    if alive_min_after != n {
        eprintln!("mesh-bench: warning: after the idle period a node saw only {alive_min_after} of {n} members alive");
    }
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn kbit(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 8.0 / 1000.0
}

fn print_table(r: &Report) {
    let row = |k: &str, v: String| println!("  {k:<44} {v}");
    println!(
        "mesh-bench: {} nodes ({} profile, one process, {} worker threads, loopback)",
        r.nodes, r.profile, r.threads
    );
    row(
        "membership convergence (all nodes / median)",
        format!(
            "{:.0} ms / {:.0} ms",
            r.convergence_ms, r.convergence_p50_ms
        ),
    );
    row(
        "initial rows replicated everywhere",
        format!("{:.0} ms", r.replication_ms),
    );
    row(
        &format!(
            "flip -> all {} others, p50 ({} flips)",
            r.nodes - 1,
            r.flips.len()
        ),
        format!("{:.1} ms", percentile(&r.flips, 0.5)),
    );
    row(
        "flip -> all others, p99",
        format!("{:.1} ms", percentile(&r.flips, 0.99)),
    );
    row(
        "flip -> all others, max",
        format!("{:.1} ms", max(&r.flips)),
    );
    row(
        "flip -> one peer, p50 / p99",
        format!(
            "{:.1} / {:.1} ms",
            percentile(&r.deliveries, 0.5),
            percentile(&r.deliveries, 0.99)
        ),
    );
    row(
        &format!("idle payload sent per node, mean ({} s)", r.idle_secs),
        format!(
            "{:.0} B/s = {:.2} kbit/s",
            mean(&r.idle_bps),
            kbit(mean(&r.idle_bps))
        ),
    );
    row(
        "idle payload sent per node, max",
        format!(
            "{:.0} B/s = {:.2} kbit/s",
            max(&r.idle_bps),
            kbit(max(&r.idle_bps))
        ),
    );
    let msgs: Vec<String> = r
        .idle_sent
        .iter()
        .map(|(t, v)| format!("{t} {v:.2}"))
        .collect();
    row("idle messages sent per node per s", msgs.join(", "));
    if let (Some(d), Some(su)) = (r.digest_bytes, r.summary_bytes) {
        let rate = |kind: &str| r.idle_sent.get(kind).copied().unwrap_or(0.0);
        let (sr, dr) = (rate("summary"), rate("digest"));
        let bytes = su as f64 * sr + d as f64 * dr;
        row(
            "of which anti-entropy (estimate)",
            format!(
                "summaries {su} B x {sr:.2}/s, digests {d} B x {dr:.2}/s = {bytes:.0} B/s = {:.2} kbit/s",
                kbit(bytes)
            ),
        );
    }
    match r.wire {
        Some((b, p)) => row(
            "idle on the wire per node (IP+UDP+QUIC)",
            format!("{b:.0} B/s = {:.2} kbit/s, {p:.1} packets/s", kbit(b)),
        ),
        None => row(
            "idle on the wire per node",
            "n/a (run with --lo-exclusive in a private netns)".into(),
        ),
    }
    row(
        "nodes declared down and rejoined (startup/all)",
        format!("{} / {}", r.rejoined_startup, r.rejoined_end),
    );
    if let (Some(a), Some(b)) = (r.udp_startup, r.udp_run) {
        row(
            "UDP receive drops, startup / whole run",
            format!(
                "{} / {} of {} / {} datagrams{}",
                a.in_errors,
                b.in_errors,
                a.in_datagrams,
                b.in_datagrams,
                if b.rcvbuf_errors == b.in_errors {
                    String::new()
                } else {
                    format!(" ({} / {} rcvbuf full)", a.rcvbuf_errors, b.rcvbuf_errors)
                }
            ),
        );
    }
    let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.2}"));
    row(
        "host load average (1 min), start / end",
        format!("{} / {}", load(r.load.0), load(r.load.1)),
    );
    if let Some(c) = r.cpu_percent {
        row("process CPU while idle", format!("{c:.1} % of one core"));
    }
    row(
        "signatures per node while idle, made / verified",
        format!("{:.2} / {:.2} per s", r.idle_sigs.0, r.idle_sigs.1),
    );
    if r.rtt_secs > 0 {
        row(
            "signatures per node, steady RTT updates",
            format!(
                "{:.2} made / {:.2} verified per s",
                r.rtt_sigs.0, r.rtt_sigs.1
            ),
        );
        if let Some(c) = r.rtt_cpu_percent {
            row(
                "process CPU, steady RTT updates",
                format!("{c:.1} % of one core"),
            );
        }
        let (sign, verify) = r.sig_cost_us;
        row(
            "one signature made / verified (CPU)",
            format!("{sign:.0} / {verify:.0} us"),
        );
        row(
            "signing's share per node, steady RTT updates",
            format!("{:.2} % of one core", signing_share(r)),
        );
    }
    row(
        "members alive after idle (min over nodes)",
        format!("{} of {}", r.alive_min_after, r.nodes),
    );
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

fn json(r: &Report) -> String {
    let mut fields: Vec<(String, String)> = vec![
        ("nodes".into(), r.nodes.to_string()),
        ("profile".into(), format!("\"{}\"", r.profile)),
        ("threads".into(), r.threads.to_string()),
        ("convergence_ms".into(), num(r.convergence_ms)),
        ("convergence_p50_ms".into(), num(r.convergence_p50_ms)),
        ("replication_ms".into(), num(r.replication_ms)),
        ("flips".into(), r.flips.len().to_string()),
        ("flip_p50_ms".into(), num(percentile(&r.flips, 0.5))),
        ("flip_p99_ms".into(), num(percentile(&r.flips, 0.99))),
        ("flip_max_ms".into(), num(max(&r.flips))),
        (
            "delivery_p50_ms".into(),
            num(percentile(&r.deliveries, 0.5)),
        ),
        (
            "delivery_p99_ms".into(),
            num(percentile(&r.deliveries, 0.99)),
        ),
        ("idle_secs".into(), r.idle_secs.to_string()),
        ("idle_bytes_per_sec_mean".into(), num(mean(&r.idle_bps))),
        ("idle_bytes_per_sec_max".into(), num(max(&r.idle_bps))),
        (
            "idle_kbit_per_sec_mean".into(),
            num(kbit(mean(&r.idle_bps))),
        ),
        ("idle_kbit_per_sec_max".into(), num(kbit(max(&r.idle_bps)))),
        (
            "idle_wire_bytes_per_sec_mean".into(),
            r.wire.map_or("null".into(), |w| num(w.0)),
        ),
        (
            "idle_wire_packets_per_sec_mean".into(),
            r.wire.map_or("null".into(), |w| num(w.1)),
        ),
        (
            "idle_cpu_percent".into(),
            r.cpu_percent.map_or("null".into(), num),
        ),
        ("alive_min_after_idle".into(), r.alive_min_after.to_string()),
        ("stagger_ms".into(), r.stagger_ms.to_string()),
        (
            "digest_bytes".into(),
            r.digest_bytes.map_or("null".into(), |d| d.to_string()),
        ),
        (
            "summary_bytes".into(),
            r.summary_bytes.map_or("null".into(), |d| d.to_string()),
        ),
        ("load_avg_start".into(), r.load.0.map_or("null".into(), num)),
        ("load_avg_end".into(), r.load.1.map_or("null".into(), num)),
        ("rejoined_startup".into(), r.rejoined_startup.to_string()),
        ("rejoined_total".into(), r.rejoined_end.to_string()),
        (
            "udp_rcv_drops_startup".into(),
            r.udp_startup
                .map_or("null".into(), |u| u.in_errors.to_string()),
        ),
        (
            "udp_rcv_drops_total".into(),
            r.udp_run.map_or("null".into(), |u| u.in_errors.to_string()),
        ),
    ];
    fields.extend([
        ("idle_sigs_made_per_node_sec".into(), num(r.idle_sigs.0)),
        ("idle_sigs_verified_per_node_sec".into(), num(r.idle_sigs.1)),
        ("rtt_secs".into(), r.rtt_secs.to_string()),
        ("rtt_sigs_made_per_node_sec".into(), num(r.rtt_sigs.0)),
        ("rtt_sigs_verified_per_node_sec".into(), num(r.rtt_sigs.1)),
        (
            "rtt_cpu_percent".into(),
            r.rtt_cpu_percent.map_or("null".into(), num),
        ),
        ("sign_us".into(), num(r.sig_cost_us.0)),
        ("verify_us".into(), num(r.sig_cost_us.1)),
        ("rtt_signing_percent_per_node".into(), num(signing_share(r))),
    ]);
    for (t, v) in &r.idle_sent {
        fields.push((format!("idle_{t}_msgs_per_sec"), num(*v)));
    }
    fields.push(("unix_ms".into(), unix_ms().to_string()));
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}
