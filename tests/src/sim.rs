//! A deterministic simulation of the mesh (`mesh-sim`): N nodes of the real mesh state
//! machine (`switchyard_gossip::machine`: foca, the replication and the health table, the
//! keys and every signature check) in one process, over a simulated network, on virtual
//! time. Nothing here sleeps or opens a socket: an event queue ordered by (virtual instant,
//! sequence) delivers each message after its link's latency and wakes each node when its
//! machine's next timer is due, so 1,000 nodes run faster than real time, and one seed gives
//! one run (the schedule, the losses, foca's and the machines' randomness).
//!
//! The network: one node per region in turn (the 13 region codes), a round trip between two
//! regions from the great-circle distance of their centres (`Region::fibre_rtt_ms`, 2 ms
//! within a region) plus up to 10 % jitter, loss per packet, and cuts between a region and
//! the rest. SWIM packets are datagrams (lost as they fall); replication messages are QUIC
//! streams (a lost packet costs one more round trip; across a cut they are lost). What a
//! node sends is counted as it would be on the wire: the payload, the IP, UDP and QUIC
//! headers of its packets, the peer's ACKs, QUIC keep-alives on every open link (at the
//! transport's interval) and a handshake whenever a link is opened, so that idle traffic is
//! what a real mesh of that size would send.
//!
//! Faults: crashes (and restarts under a new generation, with the same certificate), stalls
//! (a node that handles nothing for a while: what arrives waits in its inbox, its timers
//! fire late), loss and cuts. The figures: membership convergence, a health flip's reach,
//! crash detection, false downs (a running node declared down by a node it can reach), idle
//! traffic, and whether every table and every membership view agree at the end.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_geo::Region;
use switchyard_gossip::keys::Keys;
use switchyard_gossip::machine::{Machine, MemberEvent, Net, Start, StreamSink};
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::transport::{Inbound, Kind};
use switchyard_gossip::{
    LocalRow, MemberState, MeshConfig, MeshMetrics, NodeIdentity, Profile, Timings,
};
use tokio::time::Instant;

/// Nanoseconds of virtual time since the simulation began.
type Ns = u64;

const MS: Ns = 1_000_000;
const SEC: Ns = 1_000_000_000;

/// The node's mesh port, on every simulated address.
const PORT: u16 = 7946;
/// How many of the first nodes are everyone's seeds.
const SEEDS: usize = 3;
/// The virtual wall clock at the start (unix ms), which generations and epochs are set from.
const WALL_START_MS: u64 = 1_790_000_000_000;

/// Bytes on the wire around a QUIC packet: IPv4 (20) and UDP (8) headers, the QUIC short
/// header (1 + 8-byte connection id + packet number), a frame header and the AEAD tag.
const PACKET_OVERHEAD: u64 = 60;
/// The peer's ACK of an ack-eliciting packet (a packet of its own, at worst).
const ACK_BYTES: u64 = 50;
/// The largest QUIC payload per packet before path MTU discovery.
const PACKET_PAYLOAD: u64 = 1200;
/// A QUIC handshake with mutual TLS between two nodes, both ways: the client's padded
/// Initial, the server's flight with its certificate, the client's certificate and the
/// ACKs (about 2.5 kB each way with this mesh's ECDSA certificates).
const HANDSHAKE_BYTES: u64 = 5000;
/// A keep-alive: a PING packet and its ACK.
const KEEP_ALIVE_BYTES: u64 = 2 * 45;

/// The scenarios `mesh-sim` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing happens: convergence, idle traffic, no false downs.
    Steady,
    /// One node crashes: how fast everyone knows.
    Crash,
    /// Health flips at random nodes: how fast everyone has them.
    Flip,
    /// 5 % loss on every link, with flips.
    Loss5,
    /// 5 % of the nodes stall for 2 s each, at random times.
    Stall,
    /// A region is cut off from the rest for 20 s, then healed.
    Partition,
    /// 10 % of the nodes crash and come back 5 s later under a new generation.
    Churn,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Steady,
        Scenario::Crash,
        Scenario::Flip,
        Scenario::Loss5,
        Scenario::Stall,
        Scenario::Partition,
        Scenario::Churn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Crash => "crash",
            Scenario::Flip => "flip",
            Scenario::Loss5 => "loss5",
            Scenario::Stall => "stall",
            Scenario::Partition => "partition",
            Scenario::Churn => "churn",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|c| c.name()).collect();
                format!("unknown scenario {s:?}; one of {}", names.join(", "))
            })
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub seed: u64,
    pub scenario: Scenario,
    pub profile: Profile,
    /// How long the scenario's faults run, after the mesh converged.
    pub window: Duration,
    /// How long after the faults the mesh is left to settle before it is judged.
    pub settle: Duration,
}

impl Options {
    pub fn new(nodes: usize, seed: u64, scenario: Scenario) -> Options {
        Options {
            nodes,
            seed,
            scenario,
            profile: Profile::Lan,
            window: Duration::from_secs(60),
            settle: Duration::from_secs(30),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    pub scenario: Scenario,
    /// Seconds until every node held every other alive (None: not within the limit).
    pub converge_s: Option<f64>,
    /// Per flip, the time until 99 % of the running nodes had it; the 99th percentile (ms).
    pub flip_p99_ms: Option<f64>,
    /// Flips that never reached 99 % of the nodes.
    pub flips_lost: usize,
    /// The time until 99 % of the nodes held a crashed node down (s).
    pub crash_detect_p99_s: Option<f64>,
    /// foca's suspicion timeout for this size (s): what crash detection is judged against.
    pub suspicion_s: f64,
    /// Running nodes declared down by a node that could reach them, counted per (observer,
    /// node) pair.
    pub false_downs: usize,
    /// Expected downs: of crashed nodes, or across a cut.
    pub expected_downs: usize,
    /// Running nodes on the side that was not cut off declared down just after the heal:
    /// SWIM's downs are final for an identity, so the cut-off side's view of the rest spreads
    /// when the cut heals, and the nodes it names rejoin under a new generation.
    pub heal_downs: usize,
    /// Bytes each node sent per second on the wire while nothing happened (steady state,
    /// before the faults).
    pub bytes_per_node_s: f64,
    /// Of which the payload (SWIM packets and replication messages).
    pub payload_per_node_s: f64,
    /// Every running node holds every running writer's rows at the writer's own seq and
    /// epoch, at the end.
    pub rows_converged: bool,
    /// Running nodes' views that, at the end, hold a crashed node alive or a running node
    /// not alive (per observer and member).
    pub ghosts: usize,
    /// After a partition healed: seconds until every node held every other alive again.
    pub heal_converge_s: Option<f64>,
    /// Virtual seconds simulated, and the real seconds it took.
    pub virtual_s: f64,
    pub real_s: f64,
    /// Messages delivered.
    pub messages: u64,
    /// What happened, in order: (virtual seconds, what).
    pub log: Vec<(f64, String)>,
}

impl Report {
    /// The figures as one line of `key=value`.
    pub fn line(&self) -> String {
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "none".to_string(),
        };
        format!(
            "nodes={} seed={} scenario={} converge_s={} flip_p99_ms={} crash_detect_p99_s={} \
             suspicion_s={:.1} false_downs={} heal_downs={} bytes_per_node_s={:.0} rows_converged={} ghosts={} \
             heal_converge_s={} virtual_s={:.0} real_s={:.1}",
            self.nodes,
            self.seed,
            self.scenario,
            opt(self.converge_s, 2),
            opt(self.flip_p99_ms, 0),
            opt(self.crash_detect_p99_s, 2),
            self.suspicion_s,
            self.false_downs,
            self.heal_downs,
            self.bytes_per_node_s,
            self.rows_converged,
            self.ghosts,
            opt(self.heal_converge_s, 2),
            self.virtual_s,
            self.real_s,
        )
    }
}

/// The simulated network as one node's machine sees it.
struct SimNet {
    out: RefCell<Vec<(SocketAddr, Kind, Bytes)>>,
    topo: Rc<Topo>,
    region: Region,
}

impl Net for SimNet {
    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        self.out.borrow_mut().push((to, Kind::Swim, data));
    }

    fn send_stream(&self, to: SocketAddr, data: Bytes) {
        self.out.borrow_mut().push((to, Kind::Repl, data));
    }

    fn rtt(&self, peer: SocketAddr) -> Option<Duration> {
        let j = self.topo.index(peer)?;
        Some(Duration::from_nanos(
            self.topo.base_rtt(self.region, self.topo.regions[j]),
        ))
    }

    fn forget(&self, _peer: SocketAddr) {}

    fn retain(
        &self,
        _keep_addr: &dyn Fn(SocketAddr) -> bool,
        _keep_id: &dyn Fn(&str) -> bool,
        _grace: Duration,
    ) -> usize {
        0
    }

    fn close_where(&self, _close: &dyn Fn(&[u8]) -> bool, _reason: &'static [u8]) -> usize {
        0
    }

    fn link_count(&self) -> usize {
        0
    }

    fn stream_sink(&self) -> StreamSink {
        // Probe asks are never handed to a simulated node (it has no origins to probe).
        Arc::new(|_, _| {})
    }
}

/// Who is where: addresses and regions, and the round trip between regions.
struct Topo {
    addrs: Vec<SocketAddr>,
    regions: Vec<Region>,
    by_addr: HashMap<SocketAddr, usize>,
    rtt: [[Ns; 13]; 13],
}

impl Topo {
    fn new(n: usize) -> Topo {
        let addrs: Vec<SocketAddr> = (0..n).map(addr_of).collect();
        let regions = (0..n).map(|i| Region::ALL[i % Region::ALL.len()]).collect();
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let mut rtt = [[0; 13]; 13];
        for a in Region::ALL {
            for b in Region::ALL {
                rtt[a.index()][b.index()] = u64::from(a.fibre_rtt_ms(b).max(2)) * MS;
            }
        }
        Topo {
            addrs,
            regions,
            by_addr,
            rtt,
        }
    }

    fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    fn base_rtt(&self, a: Region, b: Region) -> Ns {
        self.rtt[a.index()][b.index()]
    }
}

/// Node `i`'s address: 10.0.0.0/8, one address each.
fn addr_of(i: usize) -> SocketAddr {
    let n = i as u32 + 1;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | n), PORT))
}

fn node_id(i: usize) -> String {
    format!("n{i:04}")
}

/// One simulated node.
struct Node {
    id: String,
    tls: NodeTls,
    cert: Bytes,
    rows: Vec<LocalRow>,
    machine: Option<Machine<SimNet>>,
    /// The generation of the running machine.
    generation: u64,
    /// Until when the node handles nothing.
    stalled_until: Option<Ns>,
    /// What arrived while it stalled, in order.
    backlog: VecDeque<(usize, Kind, Bytes)>,
    /// The wake-up queued for it, if any.
    wake_at: Option<Ns>,
    /// Bytes it sent in the measured idle window: on the wire, and of them the payload.
    sent: u64,
    payload: u64,
}

/// What happens at an instant.
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        kind: Kind,
        data: Bytes,
    },
    Wake(usize),
    Act(Action),
}

#[derive(Debug, Clone)]
enum Action {
    Start(usize),
    Crash(usize),
    Restart(usize),
    Stall(usize, Ns),
    Cut(Region),
    Heal,
    Flip(usize),
    Loss(f64),
    /// Start and end of the idle window in which traffic is measured.
    MeasureIdle(bool),
}

struct Item {
    at: Ns,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A flip being followed: which writer, up to which seq, and who has it.
struct Flip {
    writer: usize,
    seq: u64,
    epoch: u64,
    at: Ns,
    reached: Vec<Ns>,
    has: Vec<bool>,
}

/// The simulation.
pub struct Sim {
    opts: Options,
    topo: Rc<Topo>,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<Item>>,
    seq: u64,
    now: Ns,
    base: Instant,
    /// The network's randomness (jitter, loss).
    rng: StdRng,
    /// The faults' schedule, drawn apart from the network's randomness so that it is the
    /// same for a seed whatever the traffic.
    plan_rng: StdRng,
    loss: f64,
    /// The region cut off from the rest, if any.
    cut: Option<Region>,
    /// The last region cut off, and when it was healed.
    last_cut: Option<(Region, Option<Ns>)>,
    /// Per link (lower index first), when it last carried something: the transport's
    /// keep-alives run on it from then on (they come well within its idle timeout, so an
    /// opened link stays open).
    links: HashMap<(u32, u32), Ns>,
    keep_alive: Ns,
    /// The idle window measured, once it started (and ended).
    idle: Option<(Ns, Option<Ns>)>,
    flips: Vec<Flip>,
    /// When each crashed node went down, and who has held it down since (per observer).
    crashes: HashMap<usize, (Ns, u64, Vec<Option<Ns>>)>,
    false_downs: HashSet<(usize, String, u64)>,
    expected_downs: usize,
    heal_downs: usize,
    messages: u64,
    log: Vec<(f64, String)>,
}

impl Sim {
    /// Builds the nodes (a throwaway CA in `dir`, one certificate per node naming its
    /// region), none started yet.
    pub fn new(opts: Options, dir: &Path) -> anyhow::Result<Sim> {
        if opts.nodes < SEEDS + 2 {
            return Err(anyhow!("--nodes: at least {} nodes", SEEDS + 2));
        }
        let topo = Rc::new(Topo::new(opts.nodes));
        let named: Vec<(String, Region)> = topo
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| (node_id(i), *r))
            .collect();
        let certs = crate::harness::node_certs(dir, "sim", &named)?;
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let nodes = certs
            .into_iter()
            .enumerate()
            .map(|(i, tls)| {
                let cert = Bytes::from(
                    tls.own_cert()
                        .map(|c| c.der().to_vec())
                        .ok_or_else(|| anyhow!("node {i} has no certificate"))?,
                );
                Ok(Node {
                    id: node_id(i),
                    tls,
                    cert,
                    rows: initial_rows(&mut rng),
                    machine: None,
                    generation: 0,
                    stalled_until: None,
                    backlog: VecDeque::new(),
                    wake_at: None,
                    sent: 0,
                    payload: 0,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Sim {
            topo,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            base: Instant::now(),
            plan_rng: StdRng::seed_from_u64(opts.seed.wrapping_add(0x51_4d)),
            rng,
            loss: 0.0,
            cut: None,
            last_cut: None,
            links: HashMap::new(),
            keep_alive: tls::KEEP_ALIVE_INTERVAL.as_nanos() as Ns,
            idle: None,
            flips: Vec::new(),
            crashes: HashMap::new(),
            false_downs: HashSet::new(),
            expected_downs: 0,
            heal_downs: 0,
            messages: 0,
            log: Vec::new(),
            opts,
        })
    }

    fn timings(&self) -> Timings {
        Timings::for_profile(self.opts.profile, self.opts.nodes as u32)
    }

    fn instant(&self, at: Ns) -> Instant {
        self.base + Duration::from_nanos(at)
    }

    fn ns(&self, at: Instant) -> Ns {
        at.saturating_duration_since(self.base).as_nanos() as Ns
    }

    fn push(&mut self, at: Ns, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Item {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn note(&mut self, what: String) {
        self.log.push((self.now as f64 / SEC as f64, what));
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    /// Whether `a` and `b` can reach each other now.
    fn reachable(&self, a: usize, b: usize) -> bool {
        match self.cut {
            Some(r) => (self.topo.regions[a] == r) == (self.topo.regions[b] == r),
            None => true,
        }
    }

    /// Whether a heal at `healed` is recent: within a suspicion timeout and 5 s, in which
    /// downs decided before it may still arrive.
    fn since_heal(&self, healed: Ns) -> bool {
        self.now < healed + self.suspicion().as_nanos() as Ns + 5 * SEC
    }

    /// Whether a cut was healed lately.
    fn healed_lately(&self) -> bool {
        matches!(self.last_cut, Some((_, Some(h))) if self.since_heal(h))
    }

    /// Whether a cut separated `a` and `b` lately: a suspicion that began before the heal
    /// may end after it.
    fn cut_lately(&self, a: usize, b: usize) -> bool {
        let Some((r, healed)) = self.last_cut else {
            return false;
        };
        let across = (self.topo.regions[a] == r) != (self.topo.regions[b] == r);
        across && healed.is_none_or(|h| self.since_heal(h))
    }

    /// Starts node `i` (again): a new machine, a new generation, the same certificate.
    fn start(&mut self, i: usize) {
        let timings = self.timings();
        let now = self.now;
        let wall_ms = WALL_START_MS + now / MS;
        let node = &mut self.nodes[i];
        // A restart within the same millisecond still needs a newer generation.
        let generation = wall_ms.max(node.generation + 1);
        node.generation = generation;
        let region = self.topo.regions[i];
        let addr = self.topo.addrs[i];
        let cfg = MeshConfig {
            node_id: node.id.clone(),
            region,
            cluster: "sim".into(),
            listen: addr,
            advertise: None,
            seeds: self.topo.addrs[..SEEDS].to_vec(),
            profile: self.opts.profile,
            expected_size: self.opts.nodes as u32,
            timings,
            fingerprint: 1,
        };
        let keys = Arc::new(Keys::new(&node.tls));
        let identity = NodeIdentity::unsigned(node.id.clone(), region, addr, "sim", generation)
            .signed_by(keys.clone());
        let mut machine = Machine::new(
            cfg,
            Start {
                identity,
                net: SimNet {
                    out: RefCell::new(Vec::new()),
                    topo: self.topo.clone(),
                    region,
                },
                metrics: MeshMetrics::default(),
                keys,
                asks_tx: None,
                seed: self.opts.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation,
                now: self.base + Duration::from_nanos(now),
                wall_ms,
            },
        );
        machine.record_events();
        machine.set_local(self.base + Duration::from_nanos(now), node.rows.clone());
        node.machine = Some(machine);
        node.stalled_until = None;
        node.backlog.clear();
        self.after_call(i);
    }

    /// After node `i`'s machine was called: sends what it sent, notes what it saw, and
    /// queues its next wake-up.
    fn after_call(&mut self, i: usize) {
        let Some(m) = self.nodes[i].machine.as_mut() else {
            return;
        };
        let out = std::mem::take(&mut *m.net().out.borrow_mut());
        let events = m.take_events();
        let due = m.poll_timeout();
        for (to, kind, data) in out {
            self.send(i, to, kind, data);
        }
        for e in events {
            self.observe(i, e);
        }
        let at = self.ns(due).max(self.now + 1);
        if self.nodes[i].wake_at.is_none_or(|w| at < w) {
            self.nodes[i].wake_at = Some(at);
            self.push(at, Ev::Wake(i));
        }
    }

    fn send(&mut self, from: usize, to: SocketAddr, kind: Kind, data: Bytes) {
        let Some(to) = self.topo.index(to) else {
            return;
        };
        if to == from {
            return;
        }
        self.account(from, to, kind, data.len() as u64);
        if !self.reachable(from, to) {
            return;
        }
        let base = self
            .topo
            .base_rtt(self.topo.regions[from], self.topo.regions[to]);
        let one_way = base / 2 + self.rng.random_range(0..=base / 20);
        let delay = match kind {
            Kind::Swim => {
                if self.rng.random::<f64>() < self.loss {
                    return;
                }
                one_way
            }
            // A stream's lost packet is sent again after about a round trip.
            Kind::Repl => {
                let mut d = one_way;
                while self.rng.random::<f64>() < self.loss {
                    d += base + base / 4;
                }
                d
            }
        };
        let at = self.now + delay;
        self.push(
            at,
            Ev::Deliver {
                to,
                from,
                kind,
                data,
            },
        );
    }

    /// Counts what sending `len` bytes from `from` to `to` costs on the wire, both ways.
    fn account(&mut self, from: usize, to: usize, kind: Kind, len: u64) {
        let packets = len.div_ceil(PACKET_PAYLOAD).max(1);
        let mut sender = len + packets * PACKET_OVERHEAD;
        let mut receiver = ACK_BYTES * packets.min(2);
        if kind == Kind::Repl {
            // The stream's opening and its FIN, acknowledged.
            sender += 8;
        }
        let key = (from.min(to) as u32, from.max(to) as u32);
        let now = self.now;
        match self.links.insert(key, now) {
            Some(last) => {
                let kas = self.keep_alive_bytes(last, now);
                sender += kas / 2;
                receiver += kas / 2;
            }
            None => {
                sender += HANDSHAKE_BYTES / 2;
                receiver += HANDSHAKE_BYTES / 2;
            }
        }
        self.add_sent(from, sender, len);
        self.add_sent(to, receiver, 0);
    }

    /// Keep-alive bytes on a link idle from `from` to `to`, within the measured window.
    fn keep_alive_bytes(&self, from: Ns, to: Ns) -> u64 {
        let Some((w0, w1)) = self.idle else {
            return 0;
        };
        let k = self.keep_alive;
        let lo = from.max(w0);
        let hi = to.min(w1.unwrap_or(Ns::MAX));
        if hi <= lo {
            return 0;
        }
        // Keep-alives fall every k after `from`; count those inside [lo, hi).
        let count = (hi - from) / k - (lo - from).div_ceil(k).min((hi - from) / k);
        count * KEEP_ALIVE_BYTES
    }

    fn add_sent(&mut self, node: usize, wire: u64, payload: u64) {
        if self.idle.is_some_and(|(_, end)| end.is_none()) {
            self.nodes[node].sent += wire;
            self.nodes[node].payload += payload;
        }
    }

    fn observe(&mut self, observer: usize, e: MemberEvent) {
        let MemberEvent::Down(down) = e else {
            return;
        };
        let Some(j) = self.topo.index(down.addr) else {
            return;
        };
        // Any identity of the node's current run (foca renews it after a false down).
        let running_same = self.running(j) && down.generation >= self.nodes[j].generation;
        if !running_same || self.cut_lately(observer, j) {
            self.expected_downs += 1;
        } else if self.healed_lately() {
            // Spread from the side that was cut off, which held the rest down.
            self.heal_downs += 1;
        } else if self.reachable(observer, j) {
            if self
                .false_downs
                .insert((observer, down.id.clone(), down.generation))
            {
                let what = format!(
                    "false down: {} declared {} (running) down",
                    self.nodes[observer].id, down.id
                );
                self.note(what);
            }
        } else {
            self.expected_downs += 1;
        }
        let now = self.now;
        if let Some((_, generation, seen)) = self.crashes.get_mut(&j) {
            if *generation == down.generation && seen[observer].is_none() {
                seen[observer] = Some(now);
            }
        }
    }

    fn deliver(&mut self, to: usize, from: usize, kind: Kind, data: Bytes) {
        if !self.running(to) {
            return;
        }
        if self.nodes[to].stalled_until.is_some() {
            self.nodes[to].backlog.push_back((from, kind, data));
            return;
        }
        self.messages += 1;
        let now = self.instant(self.now);
        let msg = Inbound::new(
            self.topo.addrs[from],
            Some(self.nodes[from].id.clone()),
            Some(self.nodes[from].cert.clone()),
            kind,
            data,
        );
        if let Some(m) = self.nodes[to].machine.as_mut() {
            m.inbound(now, msg);
        }
        if kind == Kind::Repl {
            self.check_flips(to);
        }
        self.after_call(to);
    }

    /// Notes which followed flips node `i` now has.
    fn check_flips(&mut self, i: usize) {
        let now = self.now;
        let Some(m) = self.nodes[i].machine.as_ref() else {
            return;
        };
        for f in self.flips.iter_mut().filter(|f| !f.has[i]) {
            let writer = &self.nodes[f.writer].id;
            if m.table()
                .writer(writer)
                .is_some_and(|w| (w.epoch, w.seq) >= (f.epoch, f.seq))
            {
                f.has[i] = true;
                f.reached.push(now - f.at);
            }
        }
    }

    fn wake(&mut self, i: usize, at: Ns) {
        if self.nodes[i].wake_at != Some(at) {
            return;
        }
        self.nodes[i].wake_at = None;
        if let Some(until) = self.nodes[i].stalled_until {
            if self.now < until {
                return;
            }
            // Awake: first what waited in the inbox, then the timers that came due.
            self.nodes[i].stalled_until = None;
            let backlog = std::mem::take(&mut self.nodes[i].backlog);
            for (from, kind, data) in backlog {
                self.deliver(i, from, kind, data);
            }
        }
        let now = self.instant(self.now);
        if let Some(m) = self.nodes[i].machine.as_mut() {
            if m.poll_timeout() <= now {
                m.handle_timeout(now);
            }
        }
        self.after_call(i);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Crash(i) => {
                if let Some(_m) = self.nodes[i].machine.take() {
                    let generation = self.nodes[i].generation;
                    let n = self.nodes.len();
                    self.crashes
                        .insert(i, (self.now, generation, vec![None; n]));
                    self.nodes[i].wake_at = None;
                    let what = format!("crash {}", self.nodes[i].id);
                    self.note(what);
                }
            }
            Action::Start(i) => self.start(i),
            Action::Restart(i) => {
                if !self.running(i) {
                    self.start(i);
                    let what = format!("restart {}", self.nodes[i].id);
                    self.note(what);
                }
            }
            Action::Stall(i, d) => {
                if self.running(i) {
                    let what = format!(
                        "{} stalls for {:.1} s",
                        self.nodes[i].id,
                        d as f64 / SEC as f64
                    );
                    self.note(what);
                    let until = self.now + d;
                    self.nodes[i].stalled_until = Some(until);
                    self.nodes[i].wake_at = Some(until);
                    self.push(until, Ev::Wake(i));
                }
            }
            Action::Cut(r) => {
                self.cut = Some(r);
                self.last_cut = Some((r, None));
                self.note(format!("cut {} off", r.code()));
            }
            Action::Heal => {
                self.cut = None;
                if let Some((r, _)) = self.last_cut {
                    self.last_cut = Some((r, Some(self.now)));
                }
                self.note("heal".into());
            }
            Action::Flip(i) => self.flip(i),
            Action::Loss(p) => {
                self.loss = p;
                self.note(format!("loss {:.0} %", p * 100.0));
            }
            Action::MeasureIdle(start) => {
                if start {
                    self.idle = Some((self.now, None));
                } else if let Some((w0, _)) = self.idle {
                    self.idle = Some((w0, Some(self.now)));
                    // Keep-alives of links idle until the window's end.
                    let links: Vec<((u32, u32), Ns)> =
                        self.links.iter().map(|(k, v)| (*k, *v)).collect();
                    for ((a, b), last) in links {
                        let kas = self.keep_alive_bytes(last, self.now);
                        self.nodes[a as usize].sent += kas / 2;
                        self.nodes[b as usize].sent += kas / 2;
                    }
                }
            }
        }
    }

    /// Flips the first row of node `i` and follows the flip.
    fn flip(&mut self, i: usize) {
        if !self.running(i) {
            return;
        }
        let now = self.instant(self.now);
        let node = &mut self.nodes[i];
        let row = &mut node.rows[0];
        row.healthy = !row.healthy;
        row.last_change_ms = WALL_START_MS + self.now / MS;
        let rows = node.rows.clone();
        let Some(m) = node.machine.as_mut() else {
            return;
        };
        m.set_local(now, rows);
        let (epoch, seq) = m
            .table()
            .writer(&node.id)
            .map(|w| (w.epoch, w.seq))
            .unwrap_or_default();
        let n = self.nodes.len();
        let mut has = vec![false; n];
        has[i] = true;
        self.flips.push(Flip {
            writer: i,
            seq,
            epoch,
            at: self.now,
            reached: Vec::new(),
            has,
        });
        self.after_call(i);
    }

    /// Runs the queue up to `until`.
    fn run_until(&mut self, until: Ns) {
        while let Some(Reverse(item)) = self.queue.peek() {
            if item.at > until {
                break;
            }
            let Some(Reverse(item)) = self.queue.pop() else {
                break;
            };
            self.now = item.at;
            match item.ev {
                Ev::Deliver {
                    to,
                    from,
                    kind,
                    data,
                } => self.deliver(to, from, kind, data),
                Ev::Wake(i) => self.wake(i, item.at),
                Ev::Act(a) => self.act(a),
            }
        }
        self.now = until;
    }

    /// Whether every running node holds every other running node alive (and only those).
    fn converged(&self) -> bool {
        let running = self.nodes.iter().filter(|n| n.machine.is_some()).count();
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref())
            .all(|m| m.active_members() + 1 == running)
    }

    /// Runs until `done` holds (checked every 100 ms) or `limit`; the instant it held.
    fn run_until_true(&mut self, limit: Ns, done: impl Fn(&Sim) -> bool) -> Option<Ns> {
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= limit {
                return None;
            }
            self.run_until((self.now + 100 * MS).min(limit));
        }
    }

    /// Runs until converged or `limit`; the instant it converged.
    fn run_to_convergence(&mut self, limit: Ns) -> Option<Ns> {
        self.run_until_true(limit, Sim::converged)
    }

    /// Whether no node has member updates left to pass on.
    fn quiet(&self) -> bool {
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref())
            .all(|m| m.updates_backlog() == 0)
    }

    fn schedule(&mut self, at: Ns, a: Action) {
        self.push(at, Ev::Act(a));
    }

    /// Picks `k` distinct nodes that are not seeds.
    fn pick(&mut self, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (SEEDS..self.nodes.len()).collect();
        let mut out = Vec::with_capacity(k);
        for _ in 0..k.min(all.len()) {
            let j = self.plan_rng.random_range(0..all.len());
            out.push(all.swap_remove(j));
        }
        out
    }

    /// Runs the scenario and judges the outcome.
    pub fn run(mut self) -> Report {
        let real = std::time::Instant::now();
        let n = self.nodes.len();
        // Every node starts within the first second.
        for i in 0..n {
            let at = self.rng.random_range(0..SEC);
            self.push(at, Ev::Act(Action::Start(i)));
        }
        self.log.push((0.0, format!("{n} nodes start within 1 s")));
        self.run_until(SEC);
        let limit = 300 * SEC;
        let converged = self.run_to_convergence(limit);
        let converge_s = converged.map(|t| t as f64 / SEC as f64);
        match converge_s {
            Some(s) => self.note(format!("membership converged after {s:.2} s")),
            None => self.note("membership did not converge".into()),
        }
        // Idle traffic is measured for 20 s once foca has passed on every member update
        // (each is sent several times), before the faults.
        let limit = self.now + 300 * SEC;
        let drained = self.run_until_true(limit, Sim::quiet).unwrap_or(limit);
        self.note(format!(
            "every member update passed on after {:.2} s",
            drained as f64 / SEC as f64
        ));
        let t0 = self.now + SEC;
        self.schedule(t0, Action::MeasureIdle(true));
        self.schedule(t0 + 20 * SEC, Action::MeasureIdle(false));
        let w0 = t0 + 20 * SEC;
        let window = self.opts.window.as_nanos() as Ns;
        let w1 = w0 + window;
        let mut heal_converge_s = None;
        if let Some(heal) = self.plan(w0, w1) {
            self.run_until(heal);
            heal_converge_s = self
                .run_to_convergence(w1)
                .map(|t| (t - heal) as f64 / SEC as f64);
            match heal_converge_s {
                Some(s) => self.note(format!("membership converged {s:.2} s after the heal")),
                None => self.note("membership did not converge after the heal".into()),
            }
        }
        self.run_until(w1);
        let settle = self.opts.settle.as_nanos() as Ns;
        self.run_until(w1 + settle);
        let idle_s = 20.0;
        let idle_nodes: Vec<&Node> = self.nodes.iter().collect();
        let bytes_per_node_s = idle_nodes.iter().map(|n| n.sent as f64).sum::<f64>()
            / idle_nodes.len() as f64
            / idle_s;
        let payload_per_node_s = idle_nodes.iter().map(|n| n.payload as f64).sum::<f64>()
            / idle_nodes.len() as f64
            / idle_s;
        let flip_p99_ms = self.flip_p99();
        let flips_lost = self
            .flips
            .iter()
            .filter(|f| f.reached.len() + 1 < (n as f64 * 0.99).ceil() as usize)
            .count();
        let crash_detect_p99_s = self.crash_p99();
        let ghosts = self.ghosts();
        let rows_converged = self.rows_converged();
        let suspicion_s = self.suspicion().as_secs_f64();
        Report {
            nodes: n,
            seed: self.opts.seed,
            scenario: self.opts.scenario,
            converge_s,
            flip_p99_ms,
            flips_lost,
            crash_detect_p99_s,
            suspicion_s,
            false_downs: self.false_downs.len(),
            expected_downs: self.expected_downs,
            heal_downs: self.heal_downs,
            bytes_per_node_s,
            payload_per_node_s,
            rows_converged,
            ghosts,
            heal_converge_s,
            virtual_s: self.now as f64 / SEC as f64,
            real_s: real.elapsed().as_secs_f64(),
            messages: self.messages,
            log: self.log,
        }
    }

    /// foca's suspicion timeout at this size.
    fn suspicion(&self) -> Duration {
        self.timings().suspect_to_down_after
    }

    /// Schedules the scenario's faults between `w0` and `w1`; a partition's heal instant.
    fn plan(&mut self, w0: Ns, w1: Ns) -> Option<Ns> {
        let n = self.nodes.len();
        let span = w1 - w0;
        let flips = |sim: &mut Sim| {
            let mut t = w0 + SEC;
            while t + 10 * SEC < w1 {
                let i = sim.plan_rng.random_range(0..n);
                sim.schedule(t, Action::Flip(i));
                t += 2 * SEC;
            }
        };
        match self.opts.scenario {
            Scenario::Steady => None,
            Scenario::Crash => {
                let i = self.pick(1)[0];
                self.schedule(w0 + 5 * SEC, Action::Crash(i));
                None
            }
            Scenario::Flip => {
                flips(self);
                None
            }
            Scenario::Loss5 => {
                self.schedule(w0, Action::Loss(0.05));
                flips(self);
                self.schedule(w1, Action::Loss(0.0));
                None
            }
            Scenario::Stall => {
                let k = (n as f64 * 0.05).ceil() as usize;
                for i in self.pick(k) {
                    let at = self.sometime(w0, span, 5 * SEC);
                    self.schedule(at, Action::Stall(i, 2 * SEC));
                }
                let what = format!("{k} nodes stall 2 s each at random times");
                self.log.push((w0 as f64 / SEC as f64, what));
                None
            }
            Scenario::Partition => {
                self.schedule(w0 + 5 * SEC, Action::Cut(Region::Oc));
                let heal = w0 + 25 * SEC;
                self.schedule(heal, Action::Heal);
                Some(heal)
            }
            Scenario::Churn => {
                let k = (n as f64 * 0.10).ceil() as usize;
                for i in self.pick(k) {
                    let at = self.sometime(w0, span, 10 * SEC);
                    self.schedule(at, Action::Crash(i));
                    self.schedule(at + 5 * SEC, Action::Restart(i));
                }
                let what = format!("{k} nodes crash and restart 5 s later, at random times");
                self.log.push((w0 as f64 / SEC as f64, what));
                None
            }
        }
    }

    /// A random instant in the `span` from `w0`, leaving `margin` at its end.
    fn sometime(&mut self, w0: Ns, span: Ns, margin: Ns) -> Ns {
        w0 + self
            .plan_rng
            .random_range(0..span.saturating_sub(margin).max(1))
    }

    /// Per flip, the time until 99 % of the other nodes had it; their 99th percentile (ms).
    fn flip_p99(&self) -> Option<f64> {
        let others = self.nodes.len() - 1;
        let k = ((others as f64) * 0.99).ceil() as usize;
        let mut times: Vec<Ns> = self
            .flips
            .iter()
            .filter_map(|f| {
                let mut r = f.reached.clone();
                r.sort_unstable();
                r.get(k.saturating_sub(1)).copied()
            })
            .collect();
        percentile(&mut times, 0.99).map(|t| t as f64 / MS as f64)
    }

    /// Per crash, the time until 99 % of the running nodes held it down; the slowest (s).
    fn crash_p99(&self) -> Option<f64> {
        if self.opts.scenario != Scenario::Crash {
            return None;
        }
        let mut worst: Option<Ns> = None;
        for (&j, (at, _, seen)) in &self.crashes {
            let observers: Vec<usize> = (0..self.nodes.len())
                .filter(|&o| o != j && self.running(o))
                .collect();
            let mut times: Vec<Ns> = observers
                .iter()
                .filter_map(|&o| seen[o].map(|t| t - at))
                .collect();
            times.sort_unstable();
            let k = ((observers.len() as f64) * 0.99).ceil() as usize;
            let t = times.get(k.saturating_sub(1)).copied()?;
            worst = Some(worst.map_or(t, |w| w.max(t)));
        }
        worst.map(|t| t as f64 / SEC as f64)
    }

    /// Per running observer, members held alive that are not running under that identity,
    /// and running nodes not held alive.
    fn ghosts(&self) -> usize {
        let running: usize = self.nodes.iter().filter(|n| n.machine.is_some()).count();
        let mut ghosts = 0;
        for m in self.nodes.iter().filter_map(|n| n.machine.as_ref()) {
            let mut alive = 0;
            for (id, state) in m.membership() {
                if state == MemberState::Down {
                    continue;
                }
                let current = self.topo.index(id.addr).is_some_and(|j| {
                    self.nodes[j]
                        .machine
                        .as_ref()
                        .is_some_and(|m| m.identity().generation == id.generation)
                });
                if current {
                    alive += 1;
                } else {
                    ghosts += 1;
                }
            }
            ghosts += (running - 1).saturating_sub(alive);
        }
        ghosts
    }

    /// Whether every running node holds every running writer's rows as the writer does.
    fn rows_converged(&self) -> bool {
        let own: Vec<(&str, (u64, u64))> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let w = n.machine.as_ref()?.table().writer(&n.id)?;
                Some((n.id.as_str(), (w.epoch, w.seq)))
            })
            .collect();
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref())
            .all(|m| {
                own.iter()
                    .all(|(id, v)| m.table().writer(id).is_some_and(|w| (w.epoch, w.seq) == *v))
            })
    }
}

/// The nearest-rank percentile `p` of `values` (sorted here).
fn percentile(values: &mut [Ns], p: f64) -> Option<Ns> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64) * p).ceil() as usize;
    values.get(rank.clamp(1, values.len()) - 1).copied()
}

/// A node's rows: two pools of two origins, all up, with round trips drawn at random.
fn initial_rows(rng: &mut StdRng) -> Vec<LocalRow> {
    let mut rows = Vec::new();
    for pool in ["near", "far"] {
        for origin in ["a", "b"] {
            rows.push(LocalRow {
                pool: pool.into(),
                origin: origin.into(),
                healthy: true,
                rtt: Some(Duration::from_micros(rng.random_range(1_000..200_000))),
                last_change_ms: WALL_START_MS,
                reason: None,
                verdict: None,
            });
        }
    }
    rows
}
