//! The mesh task: the one task that owns foca (SWIM membership) and the replicated health
//! table. It turns what the transport receives into foca input and table merges, delivers
//! every foca timer in due order through tokio's clock, pushes local health flips to every
//! peer at once, batches RTT updates, runs anti-entropy with a random peer, and publishes a
//! `MeshState` that the node builds its view from.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, Timer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use switchyard_geo::Region;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::codec::{self, FocaCodec};
use crate::identity::NodeIdentity;
use crate::table::{Batch, Change, Digest, Row, Table};
use crate::tls::NodeTls;
use crate::transport::{Faults, Inbound, Kind, Transport};
use crate::GossipError;

/// Largest SWIM packet: quinn allows 1162-byte datagrams right after the handshake, before
/// path MTU discovery raises it.
pub const MAX_SWIM_PACKET: usize = 1100;

/// How SWIM is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Lan,
    Wan,
}

/// Timings of membership and replication. `Timings::for_profile` gives the defaults; tests
/// shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down_after: Duration,
    /// How often seeds and members believed down are announced to, so a healed partition
    /// merges by itself.
    pub announce_period: Duration,
    pub anti_entropy_period: Duration,
    pub rtt_batch: Duration,
}

impl Timings {
    /// Detects a crashed node within about 10 s at 50 nodes on a LAN, and tolerates a node
    /// that stalls for 2 s (the suspicion lasts longer than that).
    pub fn for_profile(profile: Profile, expected_size: u32) -> Timings {
        let size = NonZeroU32::new(expected_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let foca = match profile {
            Profile::Lan => foca::Config::new_lan(size),
            Profile::Wan => foca::Config::new_wan(size),
        };
        Timings {
            probe_period: foca.probe_period,
            probe_rtt: foca.probe_rtt,
            // Never below 3 s: a 2 s stall must not become a false down.
            suspect_to_down_after: foca.suspect_to_down_after.max(Duration::from_secs(3)),
            announce_period: match profile {
                Profile::Lan => Duration::from_secs(5),
                Profile::Wan => Duration::from_secs(15),
            },
            anti_entropy_period: Duration::from_millis(1500),
            rtt_batch: Duration::from_millis(100),
        }
    }

    fn foca_config(&self, profile: Profile, expected_size: u32) -> foca::Config {
        let size = NonZeroU32::new(expected_size.max(2)).unwrap_or(NonZeroU32::MIN);
        let mut c = match profile {
            Profile::Lan => foca::Config::new_lan(size),
            Profile::Wan => foca::Config::new_wan(size),
        };
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
        // News of a member is repeated twice as often as foca's default: with 50 nodes
        // joining at once, 6 repetitions left some pairs unaware of each other for up to a
        // minute; 12 converges in under 2 s at no measurable idle cost (mesh benchmark).
        c.max_transmissions = c
            .max_transmissions
            .saturating_mul(std::num::NonZeroU8::new(2).unwrap_or(std::num::NonZeroU8::MIN));
        // Down members are forgotten after a while; a restarted node rejoins under a new
        // generation anyway.
        c.remove_down_after = Some(Duration::from_secs(3600));
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_period,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

/// What a mesh node needs to start.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub node_id: String,
    pub region: Region,
    pub cluster: String,
    pub listen: SocketAddr,
    /// The address peers reach this node at; defaults to the bound address.
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub profile: Profile,
    pub expected_size: u32,
    pub timings: Timings,
    /// Fingerprint of this node's config, gossiped for drift detection.
    pub fingerprint: u64,
}

/// A member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub id: String,
    pub region: Region,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub generation: u64,
    pub rtt: Option<Duration>,
}

/// One writer's rows as this node holds them.
#[derive(Debug, Clone)]
pub struct WriterSnapshot {
    pub node: String,
    pub region: Region,
    pub fingerprint: u64,
    /// The writer is this node, or a member SWIM believes alive or suspect. Rows of a down
    /// writer stop counting until it comes back.
    pub live: bool,
    pub rows: Vec<(Row, Duration)>,
}

/// What the node reads: membership and every writer's rows.
#[derive(Debug, Clone)]
pub struct MeshState {
    pub local: NodeIdentity,
    pub members: Vec<MemberInfo>,
    pub writers: Vec<WriterSnapshot>,
}

/// One local health row, as the node hands it to the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    pub pool: String,
    pub origin: String,
    pub healthy: bool,
    pub rtt: Option<Duration>,
    pub last_change_ms: u64,
    pub reason: Option<String>,
}

/// Replication messages, on streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub cluster: String,
    pub from: String,
    pub msg: Msg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// The sender's own changed rows.
    Push(Batch),
    /// What the sender holds; the receiver answers with what the sender lacks, and, unless
    /// `reply`, with its own digest when the sender holds something newer.
    Digest {
        digest: Digest,
        reply: bool,
    },
    Delta(Vec<Batch>),
    /// Anti-entropy's opening: the fingerprint of the sender's digest. A receiver whose own
    /// digest differs answers with its [`Msg::Digest`], which starts the usual exchange.
    /// (Appended last, so older nodes still decode every other message.)
    Summary {
        fingerprint: u64,
    },
}

enum Cmd {
    SetLocal(Vec<LocalRow>),
    SetFingerprint(u64),
    Leave(oneshot::Sender<()>),
    Stop,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Dir {
    Sent,
    Received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MsgLabels {
    direction: Dir,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The mesh's metrics, registered in the node's one registry.
#[derive(Clone, Default)]
pub struct MeshMetrics {
    members: Family<StateLabels, Gauge>,
    messages: Family<MsgLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    decode_errors: Counter,
    oldest_row_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    bytes_sent: Counter,
    bytes_received: Counter,
}

impl MeshMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mesh");
        r.register("members", "Mesh members by state", self.members.clone());
        r.register(
            "messages",
            "Mesh messages by direction and type",
            self.messages.clone(),
        );
        r.register(
            "refused",
            "Peers or messages refused (wrong_ca, wrong_id, wrong_cluster)",
            self.refused.clone(),
        );
        r.register(
            "decode_errors",
            "Mesh messages that failed to decode",
            self.decode_errors.clone(),
        );
        r.register(
            "oldest_row_age_seconds",
            "Age of the oldest replicated health row",
            self.oldest_row_age.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes sent to peers (QUIC payload)",
            self.bytes_sent.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes received from peers (QUIC payload)",
            self.bytes_received.clone(),
        );
    }

    fn msg(&self, direction: Dir, r#type: &'static str) {
        self.messages
            .get_or_create(&MsgLabels { direction, r#type })
            .inc();
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// A running mesh member.
pub struct Mesh {
    tx: mpsc::Sender<Cmd>,
    state: watch::Receiver<Arc<MeshState>>,
    transport: Arc<Transport>,
    identity: NodeIdentity,
}

impl Mesh {
    /// Binds the QUIC endpoint, joins through the seeds, and starts the mesh task.
    pub fn start(
        cfg: MeshConfig,
        tls: &NodeTls,
        metrics: MeshMetrics,
    ) -> Result<Mesh, GossipError> {
        if tls.node_id() != cfg.node_id {
            return Err(GossipError::Identity(format!(
                "the node certificate is for {:?} but [node] id is {:?}; issue a certificate for this node with `switchyard cert issue --node {}`",
                tls.node_id(),
                cfg.node_id,
                cfg.node_id
            )));
        }
        let (inbox_tx, inbox) = mpsc::channel(4096);
        let transport = Transport::bind(cfg.listen, tls, inbox_tx)?;
        let bound = transport.local_addr();
        let addr = cfg.advertise.unwrap_or(bound);
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let identity = NodeIdentity {
            id: cfg.node_id.clone(),
            region: cfg.region,
            addr,
            cluster: cfg.cluster.clone(),
            generation,
        };
        let table = Table::new(cfg.node_id.clone(), cfg.region, generation, cfg.fingerprint);
        let foca = Foca::new(
            identity.clone(),
            cfg.timings.foca_config(cfg.profile, cfg.expected_size),
            rand010::make_rng::<rand010::rngs::StdRng>(),
            FocaCodec,
        );
        let initial = Arc::new(MeshState {
            local: identity.clone(),
            members: Vec::new(),
            writers: Vec::new(),
        });
        let (state_tx, state) = watch::channel(initial);
        let (tx, rx) = mpsc::channel(1024);
        let task = Task {
            cfg,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            table,
            transport: transport.clone(),
            members: HashMap::new(),
            state_tx,
            metrics,
            last_pushed: 0,
            rtt_due: None,
            rng: StdRng::from_os_rng(),
            suspect_since: HashMap::new(),
            leaving: false,
        };
        tokio::spawn(task.run(rx, inbox));
        Ok(Mesh {
            tx,
            state,
            transport,
            identity,
        })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Replaces this node's health rows; flips go to every peer at once.
    pub fn set_local(&self, rows: Vec<LocalRow>) {
        // Closed means the mesh has stopped (shutdown): nothing to tell anyone.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Cmd::SetLocal(rows)) {
            tracing::warn!("mesh command queue full; a health update waits for the next one");
        }
    }

    pub fn set_fingerprint(&self, fp: u64) {
        let _ = self.tx.try_send(Cmd::SetFingerprint(fp));
    }

    /// The latest mesh state, and changes to it.
    pub fn state(&self) -> watch::Receiver<Arc<MeshState>> {
        self.state.clone()
    }

    /// Fault injection for tests: traffic to and from blocked peers is dropped.
    pub fn faults(&self) -> &Faults {
        &self.transport.faults
    }

    /// Stops at once without telling anyone, as a crash would: peers find out by probing.
    pub async fn kill(&self) {
        let _ = self.tx.send(Cmd::Stop).await;
        self.transport.close().await;
    }

    /// Leaves the cluster cleanly (peers learn at once instead of suspecting), then closes.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        // The leave messages are queued on the links; let them go out before closing.
        self.transport.flush(Duration::from_millis(500)).await;
        self.transport.close().await;
    }
}

type TimerKey = (Instant, u64);

struct Task {
    cfg: MeshConfig,
    foca: Foca<NodeIdentity, FocaCodec, rand010::rngs::StdRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<NodeIdentity>,
    /// Every foca timer, by due time then arrival: foca needs each one delivered, in order.
    timers: BTreeMap<TimerKey, Timer<NodeIdentity>>,
    timer_seq: u64,
    table: Table,
    transport: Arc<Transport>,
    /// Members by node id, as foca last told us.
    members: HashMap<String, (NodeIdentity, MemberState)>,
    state_tx: watch::Sender<Arc<MeshState>>,
    metrics: MeshMetrics,
    /// Local seq already pushed to peers.
    last_pushed: u64,
    rtt_due: Option<Instant>,
    rng: StdRng,
    /// Since when each member has been suspect. Foca drops its suspicion timers when this
    /// node renews its identity, which can leave a member suspect forever; the watchdog
    /// declares such a member down, and it rejoins under a new generation.
    suspect_since: HashMap<String, Instant>,
    leaving: bool,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, mut inbox: mpsc::Receiver<Inbound>) {
        let start = Instant::now();
        let mut announce = tokio::time::interval_at(start, self.cfg.timings.announce_period);
        let mut anti_entropy = Box::pin(tokio::time::sleep(self.jittered_ae()));
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        self.publish();
        loop {
            let next_timer = self.timers.keys().next().map(|(due, _)| *due);
            let rtt_due = self.rtt_due;
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::SetLocal(rows)) => self.set_local(rows),
                    Some(Cmd::SetFingerprint(fp)) => {
                        self.table.set_fingerprint(fp);
                        self.publish();
                    }
                    Some(Cmd::Leave(done)) => {
                        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
                            tracing::debug!("leave: {e}");
                        }
                        self.leaving = true;
                        self.drain();
                        let _ = done.send(());
                        return;
                    }
                    Some(Cmd::Stop) | None => return,
                },
                msg = inbox.recv() => {
                    let Some(msg) = msg else { return };
                    self.inbound(msg);
                }
                _ = sleep_until_opt(next_timer) => self.fire_timers(),
                _ = sleep_until_opt(rtt_due) => {
                    self.rtt_due = None;
                    self.push_local();
                }
                _ = announce.tick() => self.announce(),
                _ = &mut anti_entropy => {
                    anti_entropy.as_mut().reset(Instant::now() + self.jittered_ae());
                    self.anti_entropy();
                }
                _ = housekeeping.tick() => {
                    let s = &self.transport.stats;
                    self.metrics.bytes_sent.inner().store(s.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
                    self.metrics.bytes_received.inner().store(s.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
                    // Handshakes refused by TLS (no certificate from the cluster CA) are
                    // counted by the transport.
                    self.metrics
                        .refused
                        .get_or_create(&ReasonLabels { reason: "wrong_ca" })
                        .inner()
                        .store(s.refused.load(Ordering::Relaxed), Ordering::Relaxed);
                    if let Some(age) = self.table.oldest_row_age(Instant::now()) {
                        self.metrics.oldest_row_age.set(age.as_secs_f64());
                    }
                    // Foca reports ups and downs, not suspicions: look at the whole state.
                    self.sync_members();
                    self.suspicion_watchdog();
                    // RTTs to peers change without membership events.
                    self.publish();
                }
            }
        }
    }

    fn jittered_ae(&mut self) -> Duration {
        let base = self.cfg.timings.anti_entropy_period;
        base.mul_f64(0.75 + self.rng.random::<f64>() * 0.5)
    }

    /// Sends, schedules and notifies whatever foca asked for.
    fn drain(&mut self) {
        let mut changed = false;
        while let Some((dst, data)) = self.rt.to_send() {
            self.metrics.msg(Dir::Sent, "swim");
            self.transport.send_datagram(dst.addr, data);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers
                .insert((Instant::now() + after, self.timer_seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            changed = true;
            self.notify(n);
        }
        if changed {
            self.sync_members();
            self.publish();
        }
    }

    fn notify(&mut self, n: OwnedNotification<NodeIdentity>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(member = %id.id, region = %id.region, addr = %id.addr, generation = id.generation, "member up");
                // A newcomer (or a returning member) gets what it lacks at once.
                self.send_digest(id.addr, false);
            }
            OwnedNotification::MemberDown(id) => {
                tracing::warn!(member = %id.id, "member down");
            }
            OwnedNotification::Rename(old, new) => {
                tracing::info!(member = %new.id, old = old.generation, new = new.generation, "member rejoined under a new generation");
                if old.addr != new.addr {
                    self.transport.forget(old.addr);
                }
            }
            OwnedNotification::Rejoin(me) => {
                tracing::warn!(
                    generation = me.generation,
                    "this node was declared down; rejoined under a new generation"
                );
            }
            OwnedNotification::Active => tracing::info!("joined the mesh"),
            OwnedNotification::Idle => tracing::warn!("no other member is reachable"),
            // Leaving declares this node down on purpose.
            OwnedNotification::Defunct if self.leaving => tracing::info!("left the mesh"),
            OwnedNotification::Defunct => {
                tracing::error!("this node was declared down and cannot rejoin")
            }
        }
    }

    /// Refreshes the member map from foca's full membership state.
    fn sync_members(&mut self) {
        self.members.clear();
        let mut counts = [0i64; 3];
        for m in self.foca.iter_membership_state() {
            let state = match m.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            counts[state as usize] += 1;
            let id = m.id().clone();
            if state == MemberState::Suspect {
                self.suspect_since
                    .entry(id.id.clone())
                    .or_insert_with(Instant::now);
            } else {
                self.suspect_since.remove(&id.id);
            }
            // Keep the newest generation of a node id.
            match self.members.get(&id.id) {
                Some((old, _)) if old.generation >= id.generation => {}
                _ => {
                    self.members.insert(id.id.clone(), (id, state));
                }
            }
        }
        for (i, s) in [MemberState::Alive, MemberState::Suspect, MemberState::Down]
            .iter()
            .enumerate()
        {
            self.metrics
                .members
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(counts[i]);
        }
    }

    fn suspicion_watchdog(&mut self) {
        let now = Instant::now();
        let limit = self.cfg.timings.suspect_to_down_after * 2 + self.cfg.timings.probe_period;
        let stuck: Vec<foca::Member<NodeIdentity>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .filter(|m| {
                self.suspect_since
                    .get(&m.id().id)
                    .is_some_and(|since| now.saturating_duration_since(*since) > limit)
            })
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        if stuck.is_empty() {
            return;
        }
        for m in &stuck {
            tracing::info!(member = %m.id().id, "suspect for too long; declaring it down");
            self.suspect_since.remove(&m.id().id);
        }
        if let Err(e) = self.foca.apply_many(stuck.into_iter(), true, &mut self.rt) {
            tracing::debug!("watchdog: {e}");
        }
        self.drain();
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((&key, _)) = self.timers.iter().next() {
            if key.0 > now {
                break;
            }
            if let Some(timer) = self.timers.remove(&key) {
                if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                    tracing::debug!("foca timer: {e}");
                }
            }
        }
        self.drain();
    }

    fn announce(&mut self) {
        let alive: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|(_, s)| *s != MemberState::Down)
            .map(|(id, _)| id.addr)
            .collect();
        let me = self.foca.identity().addr;
        for seed in self.cfg.seeds.clone() {
            if seed == me || alive.contains(&seed) {
                continue;
            }
            // A seed is known by address only; its identity arrives with its reply.
            let placeholder = NodeIdentity {
                id: String::new(),
                region: self.cfg.region,
                addr: seed,
                cluster: self.cfg.cluster.clone(),
                generation: 0,
            };
            if let Err(e) = self.foca.announce(placeholder, &mut self.rt) {
                tracing::debug!("announce: {e}");
            }
        }
        self.drain();
    }

    fn inbound(&mut self, msg: Inbound) {
        let Some(peer_id) = msg.peer_id.clone() else {
            self.metrics.refuse("wrong_id");
            return;
        };
        match msg.kind {
            Kind::Swim => {
                self.metrics.msg(Dir::Received, "swim");
                // Check the claim before foca sees anything: the sender must be the node its
                // certificate names, in our cluster.
                let header = {
                    let mut buf: &[u8] = &msg.data;
                    foca::Codec::decode_header(&mut FocaCodec, &mut buf)
                };
                let header = match header {
                    Ok(h) => h,
                    Err(_) => {
                        self.metrics.decode_errors.inc();
                        return;
                    }
                };
                if header.src.cluster != self.cfg.cluster {
                    self.metrics.refuse("wrong_cluster");
                    return;
                }
                if header.src.id != peer_id {
                    self.metrics.refuse("wrong_id");
                    tracing::warn!(claimed = %header.src.id, certificate = %peer_id, from = %msg.from, "peer claims another node's id; dropped");
                    return;
                }
                // An announce to a seed, which the sender knew by address only, names an
                // empty id; it is for us, so address it to us as foca expects.
                let mut data = msg.data.clone();
                if header.message == foca::Message::Announce && header.dst.id.is_empty() {
                    let mut fixed = header.clone();
                    fixed.dst = self.foca.identity().clone();
                    let mut buf = Vec::with_capacity(msg.data.len() + 64);
                    if foca::Codec::encode_header(&mut FocaCodec, &fixed, &mut buf).is_err() {
                        self.metrics.decode_errors.inc();
                        return;
                    }
                    data = Bytes::from(buf);
                }
                if let Err(e) = self.foca.handle_data(&data, &mut self.rt) {
                    self.metrics.decode_errors.inc();
                    tracing::debug!(from = %msg.from, "swim packet dropped: {e}");
                }
                self.drain();
            }
            Kind::Repl => {
                let env: Envelope = match codec::decode(&msg.data) {
                    Ok(e) => e,
                    Err(e) => {
                        self.metrics.decode_errors.inc();
                        tracing::debug!(from = %msg.from, "replication message dropped: {e}");
                        return;
                    }
                };
                if env.cluster != self.cfg.cluster {
                    self.metrics.refuse("wrong_cluster");
                    return;
                }
                if env.from != peer_id {
                    self.metrics.refuse("wrong_id");
                    return;
                }
                self.replication(env, msg.from);
            }
        }
    }

    fn replication(&mut self, env: Envelope, from: SocketAddr) {
        let now = Instant::now();
        let mut changed = false;
        match env.msg {
            Msg::Push(batch) => {
                self.metrics.msg(Dir::Received, "push");
                if batch.node != env.from {
                    self.metrics.refuse("wrong_id");
                    return;
                }
                changed |= self.apply(batch, now);
            }
            Msg::Delta(batches) => {
                self.metrics.msg(Dir::Received, "delta");
                for b in batches {
                    changed |= self.apply(b, now);
                }
            }
            Msg::Summary { fingerprint } => {
                self.metrics.msg(Dir::Received, "summary");
                if fingerprint != self.table.digest().fingerprint() {
                    self.send_digest(from, false);
                }
            }
            Msg::Digest { digest, reply } => {
                self.metrics.msg(Dir::Received, "digest");
                // One batch a message keeps each under the size limit however large the mesh.
                for batch in self.table.delta(&digest) {
                    self.send_to(from, Msg::Delta(vec![batch]), "delta");
                }
                if !reply && self.they_have_newer(&digest) {
                    let ours = self.table.digest();
                    self.send_to(
                        from,
                        Msg::Digest {
                            digest: ours,
                            reply: true,
                        },
                        "digest",
                    );
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    fn apply(&mut self, batch: Batch, now: Instant) -> bool {
        match self.table.apply(batch, now) {
            Ok(applied) => {
                if let Some(epoch) = applied.local_epoch_bumped {
                    // The mesh remembered a newer run of this node id (a clock that went back,
                    // or two nodes sharing an id): our rows now carry a newer epoch; push all.
                    tracing::warn!(
                        epoch,
                        "peers held newer rows of this node id; moved to a newer epoch"
                    );
                    self.last_pushed = 0;
                    self.push_local();
                }
                applied.changed
            }
            Err(e) => {
                self.metrics.decode_errors.inc();
                tracing::debug!("batch refused: {e}");
                false
            }
        }
    }

    fn they_have_newer(&self, theirs: &Digest) -> bool {
        let ours = self.table.digest();
        theirs.entries.iter().any(|(node, epoch, seq)| {
            match ours.entries.iter().find(|(n, _, _)| n == node) {
                None => true,
                Some((_, e, s)) => epoch > e || (epoch == e && seq > s),
            }
        })
    }

    fn set_local(&mut self, rows: Vec<LocalRow>) {
        let now = Instant::now();
        let mut flip = false;
        let mut rtt = false;
        for r in rows {
            let rtt_us = r
                .rtt
                .map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32);
            match self.table.set_local(
                &r.pool,
                &r.origin,
                r.healthy,
                rtt_us,
                r.last_change_ms,
                r.reason.as_deref(),
                now,
            ) {
                Some(Change::Flip) => flip = true,
                Some(Change::Rtt) => rtt = true,
                None => {}
            }
        }
        if flip {
            self.rtt_due = None;
            self.push_local();
        } else if rtt && self.rtt_due.is_none() {
            self.rtt_due = Some(now + self.cfg.timings.rtt_batch);
        }
        if flip || rtt {
            self.publish();
        }
    }

    /// Sends every local change not yet pushed to every live member.
    fn push_local(&mut self) {
        let seq = self.table.local_seq();
        if seq == self.last_pushed {
            return;
        }
        let batch = self.table.local_since(self.last_pushed);
        self.last_pushed = seq;
        let peers: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|(_, s)| *s != MemberState::Down)
            .map(|(id, _)| id.addr)
            .collect();
        let Some(data) = self.encode(Msg::Push(batch)) else {
            return;
        };
        for p in peers {
            self.metrics.msg(Dir::Sent, "push");
            self.transport.send_stream(p, data.clone());
        }
    }

    fn anti_entropy(&mut self) {
        let live: Vec<NodeIdentity> = self
            .members
            .values()
            .filter(|(_, s)| *s == MemberState::Alive)
            .map(|(id, _)| id.clone())
            .collect();
        if live.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..live.len());
        let fingerprint = self.table.digest().fingerprint();
        self.send_to(live[pick].addr, Msg::Summary { fingerprint }, "summary");
    }

    fn send_digest(&mut self, peer: SocketAddr, reply: bool) {
        let digest = self.table.digest();
        self.send_to(peer, Msg::Digest { digest, reply }, "digest");
    }

    fn send_to(&mut self, peer: SocketAddr, msg: Msg, kind: &'static str) {
        if let Some(data) = self.encode(msg) {
            self.metrics.msg(Dir::Sent, kind);
            self.transport.send_stream(peer, data);
        }
    }

    fn encode(&self, msg: Msg) -> Option<Bytes> {
        let env = Envelope {
            cluster: self.cfg.cluster.clone(),
            from: self.cfg.node_id.clone(),
            msg,
        };
        match codec::encode(&env) {
            Ok(v) => Some(Bytes::from(v)),
            Err(e) => {
                tracing::error!("cannot encode a replication message: {e}");
                None
            }
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let local = self.foca.identity().clone();
        let mut members: Vec<MemberInfo> = self
            .members
            .values()
            .map(|(id, state)| MemberInfo {
                id: id.id.clone(),
                region: id.region,
                addr: id.addr,
                state: *state,
                generation: id.generation,
                rtt: self.transport.rtt(id.addr),
            })
            .collect();
        members.push(MemberInfo {
            id: local.id.clone(),
            region: local.region,
            addr: local.addr,
            state: MemberState::Alive,
            generation: local.generation,
            rtt: None,
        });
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let writers = self
            .table
            .writers()
            .map(|w| {
                let live = w.node == local.id
                    || self
                        .members
                        .get(w.node)
                        .is_some_and(|(_, s)| *s != MemberState::Down);
                WriterSnapshot {
                    node: w.node.to_string(),
                    region: w.region,
                    fingerprint: w.fingerprint,
                    live,
                    rows: w
                        .rows
                        .map(|(row, at)| (row.clone(), now.saturating_duration_since(at)))
                        .collect(),
                }
            })
            .collect();
        self.state_tx.send_replace(Arc::new(MeshState {
            local,
            members,
            writers,
        }));
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
