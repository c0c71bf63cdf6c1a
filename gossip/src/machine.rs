//! The mesh's state machine, with no I/O: foca (SWIM membership), the replicated health table
//! and the keys, driven by what arrives ([`Machine::inbound`]), what the node asks
//! ([`Machine::set_local`] and the like) and time ([`Machine::handle_timeout`]), with the
//! current instant and a seeded random generator passed in. What it sends goes through a
//! [`Net`], which the mesh task implements with the QUIC transport and the simulator
//! (`mesh-sim`) with a simulated network, so that 1,000 nodes of the real code run in one
//! process on virtual time, and the same seed gives the same run.
//!
//! Nothing a peer relays is believed on the peer's word: every SWIM identity in a packet (the
//! sender's, those its message names, every piggybacked member update) must carry the
//! signature of the node it is about, and every health-row batch its writer's seal (`keys`,
//! `table`). What fails is dropped and counted (`refused{reason}`); what names a node whose
//! certificate is not known yet is dropped too, and the certificate is asked of the peer
//! that sent it (member updates wait for it, a few hundred at most, and are then applied).
//!
//! It also keeps the per-peer bounds that need the membership: foca admits any member a
//! packet mentions, so updates about members beyond [`MeshConfig::max_members`] are cut out
//! of each SWIM packet before foca sees it; nothing is sent to an identity foca has not
//! admitted (a ping-req names its target); and links of peers that are no longer members are
//! closed. Each bound hit is counted (`mesh_bound_hits_total{bound}`) and logged at most once
//! a minute.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use foca::{AccumulatingRuntime, Foca, Member, NoCustomBroadcast, OwnedNotification, Timer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::asks::StreamSink;
use crate::asks::{Answer, Outstanding, ProbeAsk, Refusal, Reply, Serving};
use crate::codec::{self, FocaCodec};
use crate::config::MeshConfig;
use crate::identity::NodeIdentity;
use crate::keys::{Keys, Replaced, Source, MAX_AHEAD_MS};
use crate::metrics::{Dir, MeshMetrics, BOUNDS};
use crate::state::{LocalRow, MemberInfo, MemberState, MeshState, WriterSnapshot};
use crate::table::{
    valid_name, Advert, Batch, Change, Ignored, Observation, SealRefusal, Table, TableError,
};
use crate::tls::NodeTls;
use crate::transport::{Inbound, Kind};
use crate::wire::{Envelope, Msg, MAX_CERTS_PER_MESSAGE};

/// Member updates held while the certificate of the node they are about is fetched.
const MAX_PENDING: usize = 256;

/// How often one node's certificate, or a catch-up from one peer, is asked for at most.
const ASK_EVERY: Duration = Duration::from_millis(500);

/// Most outstanding asks remembered (certificates by node, catch-ups by peer).
const MAX_ASKS: usize = 4096;

/// A link whose peer is not a member is closed after this long: time enough for a joining
/// peer's first packets to make it one.
const LINK_GRACE: Duration = Duration::from_secs(10);

/// A bound hit is logged at most this often (per bound); the counter counts every hit.
const BOUND_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How often the membership is looked at whole (suspicions, links, bounds).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Where the machine's messages go, and what it asks of its links: the QUIC transport in a
/// node, a simulated network in `mesh-sim`.
pub trait Net {
    /// A SWIM packet (unreliable, unordered).
    fn send_datagram(&self, to: SocketAddr, data: Bytes);
    /// A replication message (reliable, one stream each).
    fn send_stream(&self, to: SocketAddr, data: Bytes);
    /// The round-trip time to `peer` while a link to it is up and answers.
    fn rtt(&self, peer: SocketAddr) -> Option<Duration>;
    /// Closes the link to `peer`.
    fn forget(&self, peer: SocketAddr);
    /// Closes links older than `grace` that neither `keep_addr` nor `keep_id` keeps.
    fn retain(
        &self,
        keep_addr: &dyn Fn(SocketAddr) -> bool,
        keep_id: &dyn Fn(&str) -> bool,
        grace: Duration,
    ) -> usize;
    /// Closes the connections whose peer certificate (DER) `close` picks.
    fn close_where(&self, close: &dyn Fn(&[u8]) -> bool, reason: &'static [u8]) -> usize;
    /// Links open now.
    fn link_count(&self) -> usize;
    /// Where the answer to a peer's probe ask is sent from, after the machine handed the ask
    /// over (it outlives the call).
    fn stream_sink(&self) -> StreamSink;
}

type TimerKey = (Instant, u64);

/// Whether an epoch or a generation (a start time in unix ms) is too far ahead of `now_ms`.
pub(crate) fn too_far_ahead(stamp: u64, now_ms: u64) -> bool {
    stamp > now_ms.saturating_add(MAX_AHEAD_MS)
}

/// The identities a SWIM message names besides its sender and receiver.
fn named_in(message: &foca::Message<NodeIdentity>) -> Option<&NodeIdentity> {
    match message {
        foca::Message::PingReq { target, .. } | foca::Message::IndirectAck { target, .. } => {
            Some(target)
        }
        foca::Message::IndirectPing { origin, .. } | foca::Message::ForwardedAck { origin, .. } => {
            Some(origin)
        }
        _ => None,
    }
}

/// One mesh node's membership and health table, with no I/O of its own.
pub struct Machine<N: Net> {
    cfg: MeshConfig,
    foca: Foca<NodeIdentity, FocaCodec, rand010::rngs::StdRng, NoCustomBroadcast>,
    rt: AccumulatingRuntime<NodeIdentity>,
    /// Every foca timer, by due time then arrival: foca needs each one delivered, in order.
    timers: BTreeMap<TimerKey, Timer<NodeIdentity>>,
    timer_seq: u64,
    table: Table,
    net: N,
    /// Members by node id, as foca last told us. Ordered, so that a seeded run sends in the
    /// same order every time.
    members: BTreeMap<String, (NodeIdentity, MemberState)>,
    metrics: MeshMetrics,
    /// Local seq already pushed to peers.
    last_pushed: u64,
    rtt_due: Option<Instant>,
    announce_due: Instant,
    anti_entropy_due: Instant,
    housekeeping_due: Instant,
    /// The instant of the call being handled.
    now: Instant,
    /// An instant and the wall clock (unix ms) at it, which epochs and generations are
    /// judged against.
    wall: (Instant, u64),
    rng: StdRng,
    /// Since when each member has been suspect. Foca drops its suspicion timers when this
    /// node renews its identity, which can leave a member suspect forever; the watchdog
    /// takes such a member back as alive and probes it afresh.
    suspect_since: HashMap<String, Instant>,
    leaving: bool,
    /// Node ids foca knows or is about to learn from a packet being handed to it: foca's
    /// members, refreshed by `sync_members`, plus those admitted since. Its size is what
    /// [`MeshConfig::max_members`] bounds.
    admitted: HashSet<String>,
    /// Per bound, the count when it was last logged and when.
    bound_logged: HashMap<&'static str, (u64, Instant)>,
    keys: Arc<Keys>,
    /// Member updates waiting for the certificate of the node they are about.
    pending: Vec<Member<NodeIdentity>>,
    /// When each node's certificate was last asked for.
    certs_asked: HashMap<String, Instant>,
    /// When each peer was last asked for what a gap in its pushes left out.
    catch_up_asked: HashMap<SocketAddr, Instant>,
    /// Probe asks this node made, waiting for answers.
    outstanding: Outstanding,
    /// Probe asks of peers being served, and their bounds.
    serving: Serving,
    /// Where asks of peers go for the node to probe; none in a simulation.
    asks_tx: Option<mpsc::Sender<ProbeAsk>>,
    /// Whether what `state` shows changed since `take_changed` last said so.
    changed: bool,
    /// Membership changes foca reported, kept only when asked for (by a simulation).
    events: Option<Vec<MemberEvent>>,
}

/// A membership change, as foca reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Up(NodeIdentity),
    Down(NodeIdentity),
    /// A member came back under a new identity (a restart: a new generation).
    Renamed(NodeIdentity, NodeIdentity),
    /// This node was declared down and rejoined under a new generation.
    Rejoined,
}

/// What a [`Machine`] starts from besides its config.
pub struct Start<N> {
    pub identity: NodeIdentity,
    pub net: N,
    pub metrics: MeshMetrics,
    pub keys: Arc<Keys>,
    pub asks_tx: Option<mpsc::Sender<ProbeAsk>>,
    /// Seeds both random generators (foca's and the machine's).
    pub seed: u64,
    pub now: Instant,
    /// The wall clock at `now`, in unix ms.
    pub wall_ms: u64,
}

impl<N: Net> Machine<N> {
    pub fn new(cfg: MeshConfig, start: Start<N>) -> Self {
        let Start {
            identity,
            net,
            metrics,
            keys,
            asks_tx,
            seed,
            now,
            wall_ms,
        } = start;
        let table = Table::new(
            cfg.node_id.clone(),
            cfg.region,
            identity.generation,
            cfg.fingerprint,
        )
        .with_seal(keys.clone());
        let foca = Foca::new(
            identity,
            cfg.timings.foca_config(cfg.profile, cfg.expected_size),
            <rand010::rngs::StdRng as rand010::SeedableRng>::seed_from_u64(seed),
            FocaCodec,
        );
        let mut rng = StdRng::seed_from_u64(seed.rotate_left(32) ^ 0x5157_1e1d);
        let first_ae = jittered(cfg.timings.anti_entropy_period, &mut rng);
        Machine {
            announce_due: now,
            anti_entropy_due: now + first_ae,
            housekeeping_due: now + HOUSEKEEPING,
            cfg,
            foca,
            rt: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            table,
            net,
            members: BTreeMap::new(),
            metrics,
            last_pushed: 0,
            rtt_due: None,
            now,
            wall: (now, wall_ms),
            rng,
            suspect_since: HashMap::new(),
            leaving: false,
            admitted: HashSet::new(),
            bound_logged: HashMap::new(),
            keys,
            pending: Vec::new(),
            certs_asked: HashMap::new(),
            catch_up_asked: HashMap::new(),
            outstanding: Outstanding::default(),
            serving: Serving::default(),
            asks_tx,
            changed: true,
            events: None,
        }
    }

    /// Moves the machine's clock to `now` (never back).
    fn at(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The wall clock now, in unix ms.
    fn wall_ms(&self) -> u64 {
        let (at, ms) = self.wall;
        ms.saturating_add(self.now.saturating_duration_since(at).as_millis() as u64)
    }

    pub fn net(&self) -> &N {
        &self.net
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Every member foca knows, with its state (several generations of a node id may show).
    pub fn membership(&self) -> impl Iterator<Item = (&NodeIdentity, MemberState)> {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id(), foca_state(m.state())))
    }

    /// How many other members foca holds alive or suspect.
    pub fn active_members(&self) -> usize {
        self.foca.num_members()
    }

    /// Member updates foca still has to pass on (each is sent a few times).
    pub fn updates_backlog(&self) -> usize {
        self.foca.updates_backlog()
    }

    /// Keeps membership changes for [`Machine::take_events`] from now on.
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The membership changes since this was last called (none unless recorded).
    pub fn take_events(&mut self) -> Vec<MemberEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// When [`Machine::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self
            .announce_due
            .min(self.anti_entropy_due)
            .min(self.housekeeping_due);
        if let Some(&(due, _)) = self.timers.keys().next() {
            next = next.min(due);
        }
        if let Some(due) = self.rtt_due {
            next = next.min(due);
        }
        next
    }

    /// Does what is due at `now`: foca's timers, the batched RTT push, announces to seeds,
    /// anti-entropy and housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.at(now);
        self.fire_timers();
        if self.rtt_due.is_some_and(|due| due <= now) {
            self.rtt_due = None;
            self.push_local();
        }
        if self.announce_due <= now {
            self.announce_due = now + self.cfg.timings.announce_period;
            self.announce();
        }
        if self.anti_entropy_due <= now {
            self.anti_entropy_due =
                now + jittered(self.cfg.timings.anti_entropy_period, &mut self.rng);
            self.anti_entropy();
        }
        if self.housekeeping_due <= now {
            self.housekeeping_due = now + HOUSEKEEPING;
            self.housekeeping();
        }
    }

    /// Whether what [`Machine::state`] shows changed since this last said so.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn set_fingerprint(&mut self, now: Instant, fp: u64) {
        self.at(now);
        self.table.set_fingerprint(fp);
        self.changed = true;
    }

    /// Takes this node's advert; pushed at once when it changed, like a flip: DNS answers
    /// everywhere follow it.
    pub fn set_advert(&mut self, now: Instant, advert: Advert) {
        self.at(now);
        if self.table.set_advert(advert) {
            self.rtt_due = None;
            self.push_local();
            self.changed = true;
        }
    }

    /// Leaves the cluster: foca tells the members this node is going.
    pub fn leave(&mut self, now: Instant) {
        self.at(now);
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!("leave: {e}");
        }
        self.leaving = true;
        self.drain();
    }

    fn housekeeping(&mut self) {
        if let Some(age) = self.table.oldest_row_age(self.now) {
            self.metrics.set_oldest_row_age(age.as_secs_f64());
        }
        let (made, verified) = self.keys.counts();
        self.metrics.set_signatures(made, verified);
        let now = self.now;
        self.certs_asked
            .retain(|_, at| now.saturating_duration_since(*at) < ASK_EVERY);
        self.catch_up_asked
            .retain(|_, at| now.saturating_duration_since(*at) < ASK_EVERY);
        self.outstanding.expire(now);
        // Foca reports ups and downs, not suspicions: look at the whole state.
        self.sync_members();
        self.suspicion_watchdog();
        self.prune_links();
        self.log_bounds();
    }
}

fn foca_state(state: foca::State) -> MemberState {
    match state {
        foca::State::Alive => MemberState::Alive,
        foca::State::Suspect => MemberState::Suspect,
        foca::State::Down => MemberState::Down,
    }
}

/// `base`, give or take a quarter, so that nodes started together do not act in step.
fn jittered(base: Duration, rng: &mut StdRng) -> Duration {
    base.mul_f64(0.75 + rng.random::<f64>() * 0.5)
}

impl<N: Net> Machine<N> {
    /// Sends, schedules and notifies whatever foca asked for.
    fn drain(&mut self) {
        let mut changed = false;
        while let Some((dst, data)) = self.rt.to_send() {
            if !self.may_dial(&dst) {
                self.metrics.bound_hit("dial");
                tracing::debug!(member = %dst.id, addr = %dst.addr, "not sent: not an admitted member");
                continue;
            }
            self.metrics.msg(Dir::Sent, "swim");
            self.net.send_datagram(dst.addr, data);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers
                .insert((self.now + after, self.timer_seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            changed = true;
            self.notify(n);
        }
        if changed {
            self.changed = true;
        }
    }

    fn notify(&mut self, n: OwnedNotification<NodeIdentity>) {
        if let Some(events) = &mut self.events {
            match &n {
                OwnedNotification::MemberUp(id) => events.push(MemberEvent::Up(id.clone())),
                OwnedNotification::MemberDown(id) => events.push(MemberEvent::Down(id.clone())),
                OwnedNotification::Rename(old, new) => {
                    events.push(MemberEvent::Renamed(old.clone(), new.clone()))
                }
                OwnedNotification::Rejoin(_) => events.push(MemberEvent::Rejoined),
                _ => {}
            }
        }
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(member = %id.id, region = %id.region, addr = %id.addr, generation = id.generation, "member up");
                self.note_member(&id, MemberState::Alive);
                // A newcomer (or a returning member) gets what it lacks at once.
                self.send_digest(id.addr, false);
            }
            OwnedNotification::MemberDown(id) => {
                tracing::warn!(member = %id.id, "member down");
                self.note_member(&id, MemberState::Down);
            }
            OwnedNotification::Rename(old, new) => {
                tracing::info!(member = %new.id, old = old.generation, new = new.generation, "member rejoined under a new generation");
                self.note_member(&new, MemberState::Alive);
                if old.addr != new.addr {
                    self.net.forget(old.addr);
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

    /// Whether foca may send to `dst`: a member it admitted, under that very identity, or a
    /// seed it announces to by address. Foca also answers a ping-req by pinging its target, an
    /// identity the asker chose; that must not make this node dial an address nobody admitted.
    fn may_dial(&self, dst: &NodeIdentity) -> bool {
        if dst.id.is_empty() {
            return self.cfg.seeds.contains(&dst.addr);
        }
        if self.members.get(&dst.id).is_some_and(|(id, _)| id == dst) {
            return true;
        }
        // Admitted since the last sync: ask foca.
        self.admitted.contains(&dst.id) && self.foca.iter_membership_state().any(|m| m.id() == dst)
    }

    /// Admits the member `id` if it is known or there is room; counts a refusal.
    fn admit(&mut self, id: &str) -> bool {
        if id == self.cfg.node_id || self.admitted.contains(id) {
            return true;
        }
        if self.admitted.len() >= self.cfg.max_members() {
            self.metrics.bound_hit("members");
            return false;
        }
        self.admitted.insert(id.to_string());
        true
    }

    /// The SWIM packet `data` with the updates about members this node does not admit cut
    /// out (the member bound, another cluster, no id); None to drop it whole (its sender is not
    /// admitted, or it does not decode). Foca's layout: header, then (unless the packet is an
    /// announce or a broadcast) a big-endian u16 count and that many members, then custom
    /// broadcasts.
    fn admitted_packet(
        &mut self,
        header: &foca::Header<NodeIdentity>,
        data: &Bytes,
    ) -> Option<Bytes> {
        if !self.admit(&header.src.id) {
            return None;
        }
        let mut rest: &[u8] = data;
        foca::Codec::decode_header(&mut FocaCodec, &mut rest).ok()?;
        let header_len = data.len() - rest.len();
        if rest.len() < 2 || header.message == foca::Message::Broadcast {
            return Some(data.clone());
        }
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        let mut kept: Vec<&[u8]> = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let before = rest;
            let member = match foca::Codec::decode_member(&mut FocaCodec, &mut rest) {
                Ok(m) => m,
                Err(_) => {
                    self.metrics.decode_error();
                    return None;
                }
            };
            let item = before.get(..before.len() - rest.len()).unwrap_or_default();
            let id = member.id();
            if id.cluster != self.cfg.cluster {
                self.metrics.refuse("wrong_cluster");
            } else if id.id.is_empty() {
                // Only a seed not yet heard from goes without an id, and only in our own
                // announces.
                self.metrics.refuse("wrong_id");
            } else if self.admit(&id.id) {
                kept.push(item);
            }
        }
        if kept.len() == usize::from(count) {
            return Some(data.clone());
        }
        let mut out = Vec::with_capacity(data.len());
        out.extend_from_slice(data.get(..header_len).unwrap_or_default());
        out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for item in kept {
            out.extend_from_slice(item);
        }
        out.extend_from_slice(rest);
        Some(Bytes::from(out))
    }

    /// Closes links to peers that are no longer members (nor seeds).
    fn prune_links(&mut self) {
        let live: HashMap<&str, SocketAddr> = self
            .members
            .values()
            .filter(|(_, s)| *s != MemberState::Down)
            .map(|(id, _)| (id.id.as_str(), id.addr))
            .collect();
        let addrs: HashSet<SocketAddr> = live
            .values()
            .copied()
            .chain(self.cfg.seeds.iter().copied())
            .collect();
        let pruned = self.net.retain(
            &|a| addrs.contains(&a),
            &|id| live.contains_key(id),
            LINK_GRACE,
        );
        if pruned > 0 {
            tracing::debug!(pruned, "closed links of peers that are not members");
        }
        self.metrics.set_links(self.net.link_count());
    }

    /// Logs each bound hit since it was last logged, at most once per [`BOUND_LOG_INTERVAL`].
    fn log_bounds(&mut self) {
        let now = self.now;
        for &(bound, meaning) in BOUNDS {
            let hits = self.metrics.bound_hits(bound);
            let (logged, at) = match self.bound_logged.get(bound) {
                Some(&(logged, at)) => (logged, Some(at)),
                None => (0, None),
            };
            let recent =
                at.is_some_and(|at| now.saturating_duration_since(at) < BOUND_LOG_INTERVAL);
            if hits == logged || recent {
                continue;
            }
            self.bound_logged.insert(bound, (hits, now));
            if bound == "answer" {
                tracing::debug!(bound, times = hits - logged, "mesh bound hit: {meaning}");
            } else {
                tracing::warn!(bound, times = hits - logged, "mesh bound hit: {meaning}");
            }
        }
    }

    /// Refreshes the member map from foca's full membership state (suspicions included,
    /// which foca does not report). Only what changed is copied: at a thousand members this
    /// runs for each of them every second.
    fn sync_members(&mut self) {
        let now = self.now;
        let mut counts = [0i64; 3];
        // Per node id, foca's entry of the newest generation.
        let mut newest: HashMap<&str, (&NodeIdentity, MemberState)> =
            HashMap::with_capacity(self.members.len() + 8);
        for m in self.foca.iter_membership_state() {
            let state = foca_state(m.state());
            counts[state as usize] += 1;
            let id = m.id();
            if !self.admitted.contains(&id.id) {
                self.admitted.insert(id.id.clone());
            }
            if state == MemberState::Suspect {
                if !self.suspect_since.contains_key(&id.id) {
                    self.suspect_since.insert(id.id.clone(), now);
                }
            } else {
                self.suspect_since.remove(&id.id);
            }
            match newest.get(id.id.as_str()) {
                Some((old, _)) if old.generation >= id.generation => {}
                _ => {
                    newest.insert(&id.id, (id, state));
                }
            }
        }
        self.members
            .retain(|node, _| newest.contains_key(node.as_str()));
        self.admitted
            .retain(|node| newest.contains_key(node.as_str()));
        for (node, (id, state)) in newest {
            match self.members.get_mut(node) {
                Some((held, held_state)) if held == id => *held_state = state,
                _ => {
                    self.members.insert(node.to_string(), (id.clone(), state));
                }
            }
        }
        for (i, s) in [MemberState::Alive, MemberState::Suspect, MemberState::Down]
            .iter()
            .enumerate()
        {
            self.metrics.set_members(*s, counts[i]);
        }
    }

    /// Takes what foca just reported of one member into the member map, if it is about the
    /// newest generation held of its node.
    fn note_member(&mut self, id: &NodeIdentity, state: MemberState) {
        match self.members.get_mut(&id.id) {
            Some((held, _)) if held.generation > id.generation => {}
            Some((held, held_state)) if held.generation == id.generation => *held_state = state,
            _ => {
                self.members.insert(id.id.clone(), (id.clone(), state));
            }
        }
    }

    /// Members held suspect for much longer than a suspicion lasts: foca dropped their
    /// timers (it does when this node renews its identity, as after it was itself declared
    /// down), so nothing here would ever decide them. Such a member is taken back as alive,
    /// at the next incarnation and without telling anyone: this node's probes then judge it
    /// afresh, with timers that run. Declaring it down instead made a live member rejoin,
    /// and after a healed partition, every member the cut-off side had suspected (mesh-sim).
    /// A member that is really gone is declared down by the others, whose timers did run,
    /// and a down outranks any incarnation.
    fn suspicion_watchdog(&mut self) {
        let now = self.now;
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
            .map(|m| {
                foca::Member::new(
                    m.id().clone(),
                    m.incarnation().saturating_add(1),
                    foca::State::Alive,
                )
            })
            .collect();
        if stuck.is_empty() {
            return;
        }
        for m in &stuck {
            tracing::info!(member = %m.id().id, "suspect for too long with no suspicion running; probing it afresh");
            self.suspect_since.remove(&m.id().id);
        }
        if let Err(e) = self.foca.apply_many(stuck.into_iter(), false, &mut self.rt) {
            tracing::debug!("watchdog: {e}");
        }
        self.drain();
    }

    fn fire_timers(&mut self) {
        let now = self.now;
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
            let placeholder = NodeIdentity::unsigned(
                String::new(),
                self.cfg.region,
                seed,
                self.cfg.cluster.clone(),
                0,
            );
            if let Err(e) = self.foca.announce(placeholder, &mut self.rt) {
                tracing::debug!("announce: {e}");
            }
        }
        self.drain();
    }

    /// Takes what a peer sent.
    pub fn inbound(&mut self, now: Instant, msg: Inbound) {
        self.at(now);
        let Some(peer_id) = msg.peer_id.clone() else {
            self.metrics.refuse("wrong_id");
            return;
        };
        if let Some(why) = self.keys.revocation(&peer_id, msg.peer_cert.as_deref()) {
            // A connection opened before the revocation, not closed yet.
            self.metrics.refuse("revoked");
            tracing::debug!(peer = %peer_id, from = %msg.from, "message of a revoked node dropped: {why}");
            return;
        }
        if let Some(der) = &msg.peer_cert {
            if let Err(e) = self.keys.learn_from_handshake(&peer_id, der) {
                // The handshake accepted it, so this is a certificate the mesh cannot use
                // (one naming two regions, say).
                self.metrics.refuse("bad_certificate");
                tracing::warn!(peer = %peer_id, from = %msg.from, "peer certificate refused: {e}");
                return;
            }
        }
        match msg.kind {
            Kind::Swim => {
                self.metrics.msg(Dir::Received, "swim");
                self.swim(msg, &peer_id);
            }
            Kind::Repl => {
                let env: Envelope = match codec::decode(&msg.data) {
                    Ok(e) => e,
                    Err(e) => {
                        self.metrics.decode_error();
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

    /// Checks a SWIM packet and hands foca what holds of it: the sender must be the node its
    /// certificate names, in our cluster, and every identity in the packet signed by its node.
    fn swim(&mut self, msg: Inbound, peer_id: &str) {
        let mut rest: &[u8] = &msg.data;
        let header = match foca::Codec::decode_header(&mut FocaCodec, &mut rest) {
            Ok(h) => h,
            Err(_) => {
                self.metrics.decode_error();
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
        let now_ms = self.wall_ms();
        // The sender and whoever its message names: any doubt drops the packet.
        for id in std::iter::once(&header.src).chain(named_in(&header.message)) {
            if let Err(why) = self.check_identity(id, now_ms) {
                self.metrics.refuse(why);
                if why == SealRefusal::UnknownSigner.as_str() {
                    self.ask_certs(msg.from, vec![id.id.clone()]);
                }
                tracing::debug!(from = %msg.from, member = %id.id, "swim packet dropped: {why}");
                return;
            }
        }

        // Piggybacked member updates: each is checked alone, and only the bad ones dropped.
        let mut kept: Vec<Member<NodeIdentity>> = Vec::new();
        let mut dropped = false;
        let mut unknown = Vec::new();
        let has_updates = rest.len() >= 2 && header.message != foca::Message::Broadcast;
        if has_updates {
            let count = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            for _ in 0..count {
                let member: Member<NodeIdentity> =
                    match foca::Codec::decode_member(&mut FocaCodec, &mut rest) {
                        Ok(m) => m,
                        Err(_) => {
                            self.metrics.decode_error();
                            return;
                        }
                    };
                if member.id().id == self.cfg.node_id {
                    // News about ourselves is ours to judge (foca refutes or renews); its
                    // signature is ours, but a forged one must not make us renew.
                    if let Err(why) = self.check_identity(member.id(), now_ms) {
                        self.metrics.refuse(why);
                        dropped = true;
                        continue;
                    }
                    kept.push(member);
                    continue;
                }
                match self.check_identity(member.id(), now_ms) {
                    Ok(()) => kept.push(member),
                    Err(why) => {
                        self.metrics.refuse(why);
                        dropped = true;
                        if why == SealRefusal::UnknownSigner.as_str() {
                            unknown.push(member.id().id.clone());
                            self.hold(member);
                        }
                    }
                }
            }
        }
        if !unknown.is_empty() {
            self.ask_certs(msg.from, unknown);
        }

        // An announce to a seed, which the sender knew by address only, names an empty id;
        // it is for us, so address it to us as foca expects.
        let readdress = header.message == foca::Message::Announce && header.dst.id.is_empty();
        let data = if readdress || dropped {
            let mut fixed = header.clone();
            if readdress {
                fixed.dst = self.foca.identity().clone();
            }
            let mut buf = Vec::with_capacity(msg.data.len() + 64);
            if foca::Codec::encode_header(&mut FocaCodec, &fixed, &mut buf).is_err() {
                self.metrics.decode_error();
                return;
            }
            if has_updates {
                buf.put_u16(kept.len() as u16);
                for m in &kept {
                    if foca::Codec::encode_member(&mut FocaCodec, m, &mut buf).is_err() {
                        self.metrics.decode_error();
                        return;
                    }
                }
            }
            Bytes::from(buf)
        } else {
            msg.data.clone()
        };
        let Some(data) = self.admitted_packet(&header, &data) else {
            return;
        };
        if let Err(e) = self.foca.handle_data(&data, &mut self.rt) {
            self.metrics.decode_error();
            tracing::debug!(from = %msg.from, "swim packet dropped: {e}");
        }
        self.drain();
    }

    /// Whether a SWIM identity holds: signed by its node, for a region its certificate
    /// allows, of a generation not too far ahead. The refusal reason otherwise.
    fn check_identity(&self, id: &NodeIdentity, now_ms: u64) -> Result<(), &'static str> {
        if id.cluster != self.cfg.cluster {
            return Err("wrong_cluster");
        }
        if too_far_ahead(id.generation, now_ms) {
            return Err("future_generation");
        }
        self.keys.check_identity(id).map_err(SealRefusal::as_str)
    }

    /// Keeps a member update until its node's certificate arrives.
    fn hold(&mut self, member: Member<NodeIdentity>) {
        if let Some(i) = self
            .pending
            .iter()
            .position(|m| m.id().id == member.id().id)
        {
            self.pending[i] = member;
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.metrics.refuse("pending_full");
            self.pending.remove(0);
        }
        self.pending.push(member);
    }

    /// Asks `peer` for the certificates of `nodes` not asked for lately.
    fn ask_certs(&mut self, peer: SocketAddr, mut nodes: Vec<String>) {
        let now = self.now;
        nodes.sort();
        nodes.dedup();
        nodes.retain(|n| {
            !self.keys.knows(n)
                && self
                    .certs_asked
                    .get(n)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= ASK_EVERY)
        });
        nodes.truncate(MAX_CERTS_PER_MESSAGE);
        if nodes.is_empty() {
            return;
        }
        if self.certs_asked.len() + nodes.len() > MAX_ASKS {
            self.certs_asked.clear();
        }
        for n in &nodes {
            self.certs_asked.insert(n.clone(), now);
        }
        self.send_to(peer, Msg::CertRequest(nodes), "cert_request");
    }

    /// Asks `peer` for what a gap in what it sent left out (its answer is a delta).
    fn ask_catch_up(&mut self, peer: SocketAddr) {
        let now = self.now;
        if self
            .catch_up_asked
            .get(&peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < ASK_EVERY)
        {
            return;
        }
        if self.catch_up_asked.len() >= MAX_ASKS {
            self.catch_up_asked.clear();
        }
        self.catch_up_asked.insert(peer, now);
        self.send_digest(peer, true);
    }

    /// Takes certificates a peer sent, then the member updates that waited for them.
    fn learn_certs(&mut self, ders: Vec<Vec<u8>>) {
        for der in ders.iter().take(MAX_CERTS_PER_MESSAGE) {
            if let Err(e) = self.keys.learn(der, Source::Relayed) {
                let revoked = self.keys.tls().revoked().refuses(der).is_some();
                self.metrics.refuse(if revoked {
                    "revoked"
                } else {
                    "bad_certificate"
                });
                tracing::debug!("relayed certificate refused: {e}");
            }
        }
        let now_ms = self.wall_ms();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|m| self.keys.knows(&m.id().id));
        self.pending = waiting;
        let good: Vec<_> = ready
            .into_iter()
            .filter(|m| match self.check_identity(m.id(), now_ms) {
                Ok(()) => true,
                Err(why) => {
                    self.metrics.refuse(why);
                    false
                }
            })
            .collect();
        if good.is_empty() {
            return;
        }
        if let Err(e) = self.foca.apply_many(good.into_iter(), true, &mut self.rt) {
            tracing::debug!("held member updates: {e}");
        }
        self.drain();
    }

    fn replication(&mut self, env: Envelope, from: SocketAddr) {
        let now = self.now;
        let mut changed = false;
        match env.msg {
            Msg::Push(batch) => {
                self.metrics.msg(Dir::Received, "push");
                if batch.node != env.from {
                    self.metrics.refuse("wrong_id");
                    return;
                }
                changed |= self.apply(batch, now, from);
            }
            Msg::Delta(batches) => {
                self.metrics.msg(Dir::Received, "delta");
                for b in batches {
                    changed |= self.apply(b, now, from);
                }
            }
            Msg::CertRequest(nodes) => {
                self.metrics.msg(Dir::Received, "cert_request");
                let certs = self.keys.certs_of(nodes.iter().take(MAX_CERTS_PER_MESSAGE));
                if !certs.is_empty() {
                    self.send_to(from, Msg::Certs(certs), "certs");
                }
            }
            Msg::Certs(ders) => {
                self.metrics.msg(Dir::Received, "certs");
                self.learn_certs(ders);
            }
            Msg::ProbeAsk { id, pool, origin } => {
                self.metrics.msg(Dir::Received, "probe_ask");
                self.serve_ask(env.from, id, pool, origin, from);
            }
            Msg::ProbeAnswer { id, outcome } => {
                self.metrics.msg(Dir::Received, "probe_answer");
                if self.outstanding.answer(id, &env.from, outcome) == crate::asks::Taken::Unasked {
                    // Late (the asker gave up), twice, or never asked.
                    self.metrics.refuse("unasked_answer");
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
                let start = self.rng.random::<u32>() as usize;
                let (answer, cmp) = match (
                    self.table.answer(&digest, start),
                    self.table.compare(&digest),
                ) {
                    (Ok(a), Ok(c)) => (a, c),
                    (Err(e), _) | (_, Err(e)) => {
                        self.metrics.bound_hit("digest");
                        tracing::debug!(%from, "digest refused: {e}");
                        return;
                    }
                };
                if answer.more {
                    self.metrics.bound_hit("answer");
                }
                // Packed: few messages, each under the stream size limit.
                for batches in crate::table::pack(answer.batches) {
                    self.send_to(from, Msg::Delta(batches), "delta");
                }
                if !reply && cmp.they_have_newer {
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
            self.changed = true;
        }
    }

    fn apply(&mut self, batch: Batch, now: Instant, from: SocketAddr) -> bool {
        if self.keys.is_revoked(&batch.node) {
            self.metrics.refuse("revoked");
            tracing::debug!(writer = %batch.node, %from, "rows of a revoked node dropped");
            return false;
        }
        if too_far_ahead(batch.epoch, self.wall_ms()) {
            self.metrics.refuse("future_epoch");
            tracing::debug!(writer = %batch.node, epoch = batch.epoch, %from, "batch from the future dropped");
            return false;
        }
        let node = batch.node.clone();
        match self.table.apply(batch, now) {
            Ok(applied) => {
                match applied.ignored {
                    Some(Ignored::Gap) => self.ask_catch_up(from),
                    Some(Ignored::UnknownSigner) => {
                        self.metrics.refuse("unknown_signer");
                        self.ask_certs(from, vec![node]);
                    }
                    _ => {}
                }
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
                // A changed advert (or region, fingerprint) is read from the state too.
                applied.changed || applied.meta_changed
            }
            Err(TableError::Seal { node, why }) => {
                self.metrics.refuse(why.as_str());
                tracing::debug!(writer = %node, %from, "batch refused: its seal does not hold ({})", why.as_str());
                false
            }
            Err(e) => {
                match e {
                    TableError::WriterTooLarge { .. } => self.metrics.bound_hit("writer_size"),
                    TableError::TooManyWriters { .. } => self.metrics.bound_hit("writers"),
                    TableError::Advert { .. } => self.metrics.bound_hit("advert"),
                    _ => self.metrics.decode_error(),
                }
                tracing::debug!("batch refused: {e}");
                false
            }
        }
    }

    /// Makes this node's rows exactly `rows`, its whole set: a row it no longer reports (its
    /// origin left the config, or this node stopped probing it) is retracted, so that peers
    /// do not keep weighing a verdict nobody stands behind any more.
    pub fn set_local(&mut self, now: Instant, rows: Vec<LocalRow>) {
        self.at(now);
        let mut flip = false;
        let mut rtt = false;
        let wanted: HashSet<(&str, &str)> = rows
            .iter()
            .map(|r| (r.pool.as_str(), r.origin.as_str()))
            .collect();
        let gone: Vec<(String, String)> = self
            .table
            .writers()
            .filter(|w| w.local)
            .flat_map(|w| w.rows)
            .filter(|(row, _)| !wanted.contains(&(row.pool.as_str(), row.origin.as_str())))
            .map(|(row, _)| (row.pool.clone(), row.origin.clone()))
            .collect();
        for (pool, origin) in gone {
            // A removal travels as a full batch, pushed at once like a flip.
            flip |= self.table.remove_local(&pool, &origin);
        }
        for r in rows {
            let rtt_us = r
                .rtt
                .map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32);
            let obs = Observation {
                healthy: r.healthy,
                rtt_us,
                last_change_ms: r.last_change_ms,
                reason: r.reason.as_deref(),
                verdict: r.verdict,
            };
            match self.table.set_local(&r.pool, &r.origin, obs, now) {
                Some(Change::Flip) => flip = true,
                Some(Change::Rtt) => rtt = true,
                None => {}
            }
        }
        if (flip || rtt) && !self.table.local_within_bounds() {
            self.metrics.bound_hit("local_rows");
        }
        if flip {
            self.rtt_due = None;
            self.push_local();
        } else if rtt && self.rtt_due.is_none() {
            self.rtt_due = Some(now + self.cfg.timings.rtt_batch);
        }
        if flip || rtt {
            self.changed = true;
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
            self.net.send_stream(p, data.clone());
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

    /// Sends a probe ask to each of `peers` that is a live member, and waits for their
    /// answers until `until`.
    pub fn ask_probes(
        &mut self,
        now: Instant,
        peers: Vec<String>,
        pool: String,
        origin: String,
        reply: mpsc::Sender<Answer>,
        until: Instant,
    ) {
        self.at(now);
        let targets: Vec<(String, SocketAddr)> = peers
            .into_iter()
            .filter_map(|p| match self.members.get(&p) {
                Some((id, state)) if *state != MemberState::Down => Some((p, id.addr)),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            // Dropping `reply` tells the asker nobody can be asked.
            return;
        }
        let asked = targets.iter().map(|(p, _)| p.clone()).collect();
        let id = self.outstanding.open(asked, reply, until);
        for (_, addr) in targets {
            let msg = Msg::ProbeAsk {
                id,
                pool: pool.clone(),
                origin: origin.clone(),
            };
            self.send_to(addr, msg, "probe_ask");
        }
    }

    /// Hands a peer's probe ask to the node, within the bounds: only a live member may ask,
    /// only about valid names, and only so often and so many at once.
    fn serve_ask(&mut self, from: String, id: u64, pool: String, origin: String, addr: SocketAddr) {
        if !self
            .members
            .get(&from)
            .is_some_and(|(_, s)| *s != MemberState::Down)
        {
            self.metrics.refuse("not_member");
            return;
        }
        if !valid_name(&pool) || !valid_name(&origin) {
            self.metrics.refuse("bad_name");
            return;
        }
        let Some(asks_tx) = self.asks_tx.clone() else {
            // Nobody serves asks here (a simulation).
            self.metrics.bound_hit("probe_asks");
            return;
        };
        let slot = match self.serving.admit(&from, self.now) {
            Ok(slot) => slot,
            Err(Refusal::PeerBound | Refusal::Full) => {
                self.metrics.bound_hit("probe_asks");
                return;
            }
        };
        let reply = Reply {
            send: self.net.stream_sink(),
            peer: addr,
            id,
            cluster: self.cfg.cluster.clone(),
            node_id: self.cfg.node_id.clone(),
            metrics: self.metrics.clone(),
        };
        let ask = ProbeAsk::new(from, pool, origin, slot, reply);
        if asks_tx.try_send(ask).is_err() {
            // Full: the node is behind on asks already. Closed: nobody serves them.
            self.metrics.bound_hit("probe_asks");
        }
    }

    fn send_to(&mut self, peer: SocketAddr, msg: Msg, kind: &'static str) {
        if let Some(data) = self.encode(msg) {
            self.metrics.msg(Dir::Sent, kind);
            self.net.send_stream(peer, data);
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

    /// The membership and every writer's rows, as of `now`, for the node to build its view from.
    pub fn state(&self, now: Instant) -> MeshState {
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
                rtt: self.net.rtt(id.addr),
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
                    advert: w.advert.clone(),
                    live,
                    rows: w
                        .rows
                        .map(|(row, at)| (row.clone(), now.saturating_duration_since(at)))
                        .collect(),
                }
            })
            .collect();
        MeshState {
            local,
            members,
            writers,
        }
    }
}

/// Certificate rotation and revocation, while running.
impl<N: Net> Machine<N> {
    /// Takes new TLS material (a reload; the transport already handshakes with it): drops
    /// the members it revokes, closes connections it no longer accepts, and when this node's
    /// own certificate changed, re-signs what it claims with the new key.
    pub fn new_tls(&mut self, now: Instant, tls: &NodeTls) -> Replaced {
        self.at(now);
        let change = self.keys.replace_tls(tls);
        // Connections opened under the old material whose peer the new one refuses (revoked,
        // or its CA no longer trusted): closed now rather than when they idle out.
        let closed = self.net.close_where(
            &|der| !der.is_empty() && tls.check_peer_cert(der).is_err(),
            b"certificate no longer accepted",
        );
        if closed > 0 {
            tracing::info!(
                closed,
                "closed mesh connections whose peer certificate is no longer accepted"
            );
        }
        for node in &change.revoked {
            self.drop_revoked(node);
        }
        if change.rotated {
            self.rotated();
        }
        self.sync_members();
        self.changed = true;
        change
    }

    /// Drops a revoked node: its rows, its member updates waiting for a certificate, its link,
    /// and its SWIM membership (declared down, which foca spreads).
    fn drop_revoked(&mut self, node: &str) {
        self.table.drop_writer(node);
        self.pending.retain(|m| m.id().id != node);
        let downs: Vec<Member<NodeIdentity>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().id == node && m.state() != foca::State::Down)
            .map(|m| Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        for m in &downs {
            tracing::warn!(member = %node, addr = %m.id().addr, "certificate revoked; member dropped from the mesh");
            self.net.forget(m.id().addr);
        }
        if !downs.is_empty() {
            if let Err(e) = self.foca.apply_many(downs.into_iter(), true, &mut self.rt) {
                tracing::debug!("revoked member: {e}");
            }
            self.drain();
        }
    }

    /// This node's certificate changed (same id and region, new key): its peers must learn
    /// the new certificate before anything signed with the new key reaches them, so every
    /// connection is closed (the next message dials anew, handshaking with the new
    /// certificate); then its rows take a new seal and its SWIM identity a new generation,
    /// both signed with the new key.
    fn rotated(&mut self) {
        let closed = self.net.close_where(&|_| true, b"certificate rotated");
        tracing::info!(
            closed,
            "node certificate rotated; re-signing this node's identity and rows"
        );
        self.table.reseal();
        self.push_local();
        // renew signs with the keys, which sign with the new key now.
        match foca::Identity::renew(self.foca.identity()) {
            Some(next) => {
                if let Err(e) = self.foca.change_identity(next, &mut self.rt) {
                    tracing::warn!("cannot re-sign this node's identity: {e}");
                }
            }
            None => tracing::warn!("cannot re-sign this node's identity: no generation left"),
        }
        self.drain();
    }
}
