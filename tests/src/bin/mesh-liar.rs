//! `mesh-liar`: a mesh peer that holds a valid certificate of the cluster and lies with it, as
//! the Byzantine-member scenario of the WAN testbed runs it (`tests/tests/e2e_wan.rs`,
//! scenario 8) against real nodes across emulated links.
//!
//! It joins its target the honest way (an announce carrying its own signed identity), then
//! sends, each a few times (datagrams may be lost):
//! - a delta forging the victim's rows (every named origin down, at a version the victim
//!   never reached), sealed with the only key it holds, its own (`bad_signature`);
//! - the same from the far future, which the victim's real rows could never replace
//!   (`future_epoch`);
//! - SWIM updates declaring the victim down, at the maximum generation
//!   (`future_generation`) and at the next one, signed by the liar (`bad_signature`);
//! - a flood of made-up members, each signed by the liar under another node's id (refused:
//!   no certificate of theirs exists), addressed to a port nobody listens on;
//! - an identity of its own that speaks for a region its certificate does not name
//!   (`wrong_region`).
//!
//! It prints one line per step and exits 0 once everything was sent; what the target made of
//! it is for the caller to read from the target's metrics and status.
//!
//! `mesh-liar ... relay` is the member that asks a peer to relay what the peer's config does
//! not have (scenario 12): it joins the mesh as a real member (a `Mesh` of its own, so the
//! peer's checks of its standing pass and only the request itself is judged), then opens one
//! relay stream per `--ask` (an origin, pool or load balancer the peer does not have, an
//! address where a name goes, a second hop, and one valid request as the control) and prints
//! `ask CASE: refused REASON`, `ask CASE: accepted, greeting LINE` or `ask CASE: failed
//! ERROR` for each. With `--stranger-*` it also dials the peer's mesh port with a certificate
//! of another CA, and prints `stranger: ...`: a client without a cluster certificate never
//! gets as far as asking.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes};
use clap::{Parser, Subcommand};
use foca::{Codec as _, Header, Member, Message, State};
use switchyard_geo::Region;
use switchyard_gossip::codec::{self, FocaCodec};
use switchyard_gossip::keys::Keys;
use switchyard_gossip::table::{Batch, Observation, Table};
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::transport::{Inbound, Kind, Transport};
use switchyard_gossip::wire::{Envelope, Msg};
use switchyard_gossip::{
    MemberState, Mesh, MeshConfig, MeshMetrics, NodeIdentity, Profile, RefuseReason, RelayError,
    RelayRequest, Timings, MAX_SWIM_PACKET,
};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Parser)]
#[command(about = "A mesh peer with a valid certificate that lies (Byzantine-member tests)")]
struct Args {
    #[command(flatten)]
    peer: PeerArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Forge rows and membership, flood made-up members, speak for another region.
    Lie(LieArgs),
    /// Ask the target, as a member, to relay what its config does not have.
    Relay(RelayArgs),
}

/// Who the liar is and whom it talks to.
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// The cluster CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The liar's own certificate and key, issued by the cluster CA.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The liar's node id: the one in its certificate.
    #[arg(long, default_value = "liar")]
    id: String,
    /// The cluster id.
    #[arg(long)]
    cluster: String,
    /// The region the liar's certificate names (its honest identity claims it).
    #[arg(long)]
    region: Region,
    /// The local address to bind (port 0: any).
    #[arg(long)]
    bind: SocketAddr,
    /// The mesh address of the node lied to.
    #[arg(long)]
    target: SocketAddr,
    /// The node id of the node lied to.
    #[arg(long)]
    target_id: String,
}

#[derive(Debug, clap::Args)]
struct LieArgs {
    /// A region its certificate does not name, claimed by its dishonest identity.
    #[arg(long)]
    other_region: Region,
    /// The node lied about: its id, region, mesh address and current generation.
    #[arg(long)]
    victim: String,
    #[arg(long)]
    victim_region: Region,
    #[arg(long)]
    victim_addr: SocketAddr,
    #[arg(long)]
    victim_generation: u64,
    /// The victim's rows to forge: a pool and its origins.
    #[arg(long)]
    pool: String,
    #[arg(long, value_delimiter = ',')]
    origins: Vec<String>,
    /// How many made-up members to send.
    #[arg(long, default_value_t = 300)]
    flood: usize,
    /// How many times each datagram is sent.
    #[arg(long, default_value_t = 5)]
    repeat: u32,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// A relay request to make: `CASE=LB/POOL/ORIGIN`, or `CASE=LB/POOL/ORIGIN/HOPS` for a
    /// request that claims to have been relayed already. Repeatable; asked in order.
    #[arg(long = "ask", value_parser = parse_ask, required = true)]
    asks: Vec<Ask>,
    /// The client address the requests carry (for the origin's PROXY header).
    #[arg(long)]
    client: SocketAddr,
    /// A CA bundle that trusts the target (the cluster's CA and the stranger's own), and a
    /// certificate and key from another CA: dial the target with them and ask once.
    #[arg(long, requires_all = ["stranger_cert", "stranger_key"])]
    stranger_ca: Option<PathBuf>,
    #[arg(long)]
    stranger_cert: Option<PathBuf>,
    #[arg(long)]
    stranger_key: Option<PathBuf>,
}

/// One relay request of `--ask`.
#[derive(Debug, Clone)]
struct Ask {
    case: String,
    request: RelayRequest,
}

fn parse_ask(s: &str) -> Result<Ask, String> {
    let usage = || format!("{s:?}: use CASE=LB/POOL/ORIGIN[/HOPS]");
    let (case, what) = s.split_once('=').ok_or_else(usage)?;
    let parts: Vec<&str> = what.split('/').collect();
    let (lb, pool, origin, hops) = match parts[..] {
        [lb, pool, origin] => (lb, pool, origin, 0),
        [lb, pool, origin, hops] => (lb, pool, origin, hops.parse().map_err(|_| usage())?),
        _ => return Err(usage()),
    };
    Ok(Ask {
        case: case.to_string(),
        request: RelayRequest {
            load_balancer: lb.to_string(),
            pool: pool.to_string(),
            origin: origin.to_string(),
            // Set from --client before asking.
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            hops,
        },
    })
}

/// Bound on joining the target.
const JOIN_DEADLINE: Duration = Duration::from_secs(20);
const RESEND: Duration = Duration::from_millis(200);

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match args.cmd {
        Cmd::Lie(lie) => rt.block_on(lie_to(args.peer, lie)),
        Cmd::Relay(relay) => rt.block_on(ask_relays(args.peer, relay)),
    }
}

/// The liar's own TLS identity, from its certificate files.
fn load_tls(p: &PeerArgs) -> Result<NodeTls> {
    tls::load(&p.ca, &p.cert, &p.key).map_err(|e| anyhow!("load the liar's certificate: {e}"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Liar {
    peer: PeerArgs,
    lie: LieArgs,
    tls: NodeTls,
    transport: Arc<Transport>,
    me: NodeIdentity,
}

impl Liar {
    /// A SWIM packet from `src` to `dst` with `updates` piggybacked, as foca lays one out.
    fn packet(
        src: &NodeIdentity,
        dst: &NodeIdentity,
        message: Message<NodeIdentity>,
        updates: &[Member<NodeIdentity>],
    ) -> Result<Bytes> {
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: dst.clone(),
            message,
        };
        let mut buf = Vec::new();
        FocaCodec.encode_header(&header, &mut buf)?;
        if !updates.is_empty() {
            buf.put_u16(u16::try_from(updates.len())?);
            for m in updates {
                FocaCodec.encode_member(m, &mut buf)?;
            }
        }
        if buf.len() > MAX_SWIM_PACKET {
            bail!("a packet of {} bytes is over {MAX_SWIM_PACKET}", buf.len());
        }
        Ok(Bytes::from(buf))
    }

    async fn datagram(&self, data: Bytes) {
        for _ in 0..self.lie.repeat {
            self.transport.send_datagram(self.peer.target, data.clone());
            tokio::time::sleep(RESEND / 4).await;
        }
    }

    fn stream(&self, msg: Msg) -> Result<()> {
        let env = Envelope {
            cluster: self.peer.cluster.clone(),
            from: self.peer.id.clone(),
            msg,
        };
        let data = codec::encode(&env)?;
        self.transport
            .send_stream(self.peer.target, Bytes::from(data));
        Ok(())
    }

    /// The victim's rows as the liar would have them: every origin down, at `epoch` and a
    /// sequence the victim never reached, sealed with the liar's own key.
    fn forged_rows(&self, epoch: u64) -> Batch {
        let mut t = Table::new(self.lie.victim.clone(), self.lie.victim_region, epoch, 0)
            .with_seal(Arc::new(Keys::new(&self.tls)));
        let now = tokio::time::Instant::now();
        for o in &self.lie.origins {
            let obs = Observation {
                healthy: false,
                rtt_us: None,
                last_change_ms: unix_ms(),
                reason: Some("forged by mesh-liar"),
                verdict: None,
            };
            t.set_local(&self.lie.pool, o, obs, now);
        }
        let mut b = t.local_since(0);
        b.seq += 1_000_000;
        for r in &mut b.rows {
            r.seq += 1_000_000;
        }
        b
    }
}

/// Announces to the target until it answers, and returns the target's signed identity.
async fn join(
    liar: &Liar,
    inbox: &mut tokio::sync::mpsc::Receiver<Inbound>,
) -> Result<NodeIdentity> {
    let p = &liar.peer;
    // An empty id asks the target to readdress the announce to itself, as seeds are joined.
    let anyone = NodeIdentity::unsigned("", p.region, p.target, &p.cluster, 0);
    let announce = Liar::packet(&liar.me, &anyone, Message::Announce, &[])?;
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    loop {
        liar.transport.send_datagram(p.target, announce.clone());
        let wait = tokio::time::sleep(RESEND);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                got = inbox.recv() => {
                    let got = got.ok_or_else(|| anyhow!("the transport closed"))?;
                    if got.kind != Kind::Swim {
                        continue;
                    }
                    if let Ok(h) = FocaCodec.decode_header(&got.data[..]) {
                        if h.src.id == p.target_id {
                            return Ok(h.src);
                        }
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} ({}) did not answer an announce within {JOIN_DEADLINE:?}",
                p.target_id,
                p.target
            );
        }
    }
}

async fn lie_to(peer: PeerArgs, lie: LieArgs) -> Result<()> {
    let tls = load_tls(&peer)?;
    let (tx, mut inbox) = tokio::sync::mpsc::channel(64);
    let transport = Transport::bind(peer.bind, &tls, tx).context("bind the liar's endpoint")?;
    let me = NodeIdentity::unsigned(
        peer.id.clone(),
        peer.region,
        transport.local_addr(),
        &peer.cluster,
        unix_ms(),
    )
    .signed_by(tls.signer());
    let liar = Liar {
        peer,
        lie,
        tls,
        transport,
        me,
    };
    let (p, a) = (&liar.peer, &liar.lie);

    let target = join(&liar, &mut inbox).await?;
    println!(
        "joined {} at {} (generation {})",
        target.id, p.target, target.generation
    );
    // Keep reading, so the transport never stalls on a full inbox.
    tokio::spawn(async move { while inbox.recv().await.is_some() {} });

    liar.stream(Msg::Delta(vec![liar.forged_rows(a.victim_generation)]))?;
    println!(
        "sent a delta forging {}'s rows (all down), sealed by {}",
        a.victim, p.id
    );
    liar.stream(Msg::Delta(vec![liar.forged_rows(u64::MAX)]))?;
    println!("sent the same at epoch u64::MAX");

    let mut forever = NodeIdentity::unsigned(
        a.victim.clone(),
        a.victim_region,
        a.victim_addr,
        &p.cluster,
        u64::MAX,
    );
    forever = forever.signed_by(liar.tls.signer());
    let next = NodeIdentity::unsigned(
        a.victim.clone(),
        a.victim_region,
        a.victim_addr,
        &p.cluster,
        a.victim_generation + 1,
    )
    .signed_by(liar.tls.signer());
    let downs = [
        Member::new(forever, 0, State::Down),
        Member::new(next, 0, State::Down),
    ];
    liar.datagram(Liar::packet(&liar.me, &target, Message::Gossip, &downs)?)
        .await;
    println!(
        "sent SWIM updates: {} down at generation u64::MAX and at {}",
        a.victim,
        a.victim_generation + 1
    );

    // Made-up members name a port on the liar's address that nobody listens on.
    let nowhere = SocketAddr::new(liar.transport.local_addr().ip(), 9);
    let per_packet = 5;
    let mut sent = 0;
    let mut probe = 0u8;
    while sent < a.flood {
        let members: Vec<_> = (sent..(sent + per_packet).min(a.flood))
            .map(|k| {
                let id = NodeIdentity::unsigned(
                    format!("made-up-{k}"),
                    p.region,
                    nowhere,
                    &p.cluster,
                    unix_ms(),
                )
                .signed_by(liar.tls.signer());
                Member::alive(id)
            })
            .collect();
        sent += members.len();
        probe = probe.wrapping_add(1);
        liar.transport.send_datagram(
            p.target,
            Liar::packet(&liar.me, &target, Message::Ping(probe), &members)?,
        );
        if sent % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("sent {sent} made-up members");

    let elsewhere = NodeIdentity::unsigned(
        p.id.clone(),
        a.other_region,
        liar.transport.local_addr(),
        &p.cluster,
        liar.me.generation + 1,
    )
    .signed_by(liar.tls.signer());
    liar.datagram(Liar::packet(&elsewhere, &target, Message::Gossip, &[])?)
        .await;
    println!("sent a packet from itself speaking for {}", a.other_region);

    // Give the streams time to leave before the endpoint goes.
    tokio::time::sleep(RESEND).await;
    println!("done");
    Ok(())
}

// ---- relay: a member asking for what the target's config does not have -----------------------

/// Bound on the target admitting the liar as a member (a refusal as `not_member` until then).
const ADMIT_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on reading an accepted stream's first line (the origin's greeting).
const GREETING_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on the stranger's dial and ask: the handshake fails well within it.
const STRANGER_DEADLINE: Duration = Duration::from_secs(20);

async fn ask_relays(peer: PeerArgs, relay: RelayArgs) -> Result<()> {
    let tls = load_tls(&peer)?;
    // A real member: SWIM answered, an identity of its own, so the target's checks of the
    // asker (member, not revoked, within the caps) pass and only the request is judged.
    let cfg = MeshConfig {
        node_id: peer.id.clone(),
        region: peer.region,
        cluster: peer.cluster.clone(),
        listen: peer.bind,
        advertise: None,
        seeds: vec![peer.target],
        profile: Profile::Wan,
        expected_size: 4,
        timings: Timings::for_profile(Profile::Wan, 4),
        fingerprint: 0,
    };
    let mesh = Mesh::start(cfg, &tls, MeshMetrics::default()).context("start the liar's mesh")?;
    let res = ask_as_member(&mesh, &peer, &relay).await;
    // Leave either way, so the others do not keep suspecting a member that is gone.
    mesh.leave().await;
    res?;
    if let (Some(ca), Some(cert), Some(key)) = (
        &relay.stranger_ca,
        &relay.stranger_cert,
        &relay.stranger_key,
    ) {
        let line = ask_as_stranger(&peer, &relay, ca, cert, key).await?;
        println!("stranger: {line}");
    }
    println!("done");
    Ok(())
}

async fn ask_as_member(mesh: &Mesh, p: &PeerArgs, relay: &RelayArgs) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ADMIT_DEADLINE;
    let mut state = mesh.state();
    loop {
        let alive = (state.borrow_and_update().members.iter())
            .any(|m| m.id == p.target_id && m.state == MemberState::Alive);
        if alive {
            break;
        }
        if tokio::time::timeout_at(deadline, state.changed())
            .await
            .is_err()
        {
            bail!(
                "{} not alive in the liar's view within {ADMIT_DEADLINE:?}",
                p.target_id
            );
        }
    }
    println!("joined the mesh; {} is alive", p.target_id);
    for ask in &relay.asks {
        let mut req = ask.request.clone();
        req.client = relay.client;
        let what = format!(
            "{}/{}/{} hops {}",
            req.load_balancer, req.pool, req.origin, req.hops
        );
        // The target may not have admitted the liar yet: it refuses as not_member until then.
        let deadline = tokio::time::Instant::now() + ADMIT_DEADLINE;
        let mut not_member = 0;
        let outcome = loop {
            match mesh.open_relay(&p.target_id, req.clone()).await {
                Err(RelayError::Refused {
                    reason: RefuseReason::NotMember,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    not_member += 1;
                    tokio::time::sleep(RESEND).await;
                }
                other => break other,
            }
        };
        let waited = if not_member > 0 {
            format!(" (after {not_member} not_member refusals while being admitted)")
        } else {
            String::new()
        };
        match outcome {
            Err(RelayError::Refused { reason, .. }) => {
                println!(
                    "ask {}: refused {} ({what}){waited}",
                    ask.case,
                    reason.label()
                );
            }
            Err(e) => println!("ask {}: failed {e} ({what}){waited}", ask.case),
            Ok(streams) => {
                let mut line = String::new();
                let read = tokio::time::timeout(
                    GREETING_DEADLINE,
                    BufReader::new(streams).read_line(&mut line),
                )
                .await;
                let greeting = match read {
                    Ok(Ok(n)) if n > 0 => line.trim_end().to_string(),
                    Ok(Ok(_)) => "(closed without a line)".to_string(),
                    Ok(Err(e)) => format!("(read: {e})"),
                    Err(_) => format!("(none within {GREETING_DEADLINE:?})"),
                };
                println!(
                    "ask {}: accepted, greeting {greeting} ({what}){waited}",
                    ask.case
                );
            }
        }
    }
    Ok(())
}

/// Dials the target with a certificate of another CA and asks for the first request: what
/// happened, in words (`refused REASON` or `accepted` would mean it got past the handshake).
async fn ask_as_stranger(
    p: &PeerArgs,
    relay: &RelayArgs,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<String> {
    let tls =
        tls::load(ca, cert, key).map_err(|e| anyhow!("load the stranger's certificate: {e}"))?;
    let (tx, _inbox) = tokio::sync::mpsc::channel(64);
    let transport = Transport::bind(SocketAddr::new(p.bind.ip(), 0), &tls, tx)
        .context("bind the stranger's endpoint")?;
    let mut req = relay.asks[0].request.clone();
    req.client = relay.client;
    let asked = transport.open_relay(p.target, &p.target_id, &req);
    let line = match tokio::time::timeout(STRANGER_DEADLINE, asked).await {
        Err(_) => format!("no answer within {STRANGER_DEADLINE:?}"),
        Ok(Ok(_)) => "accepted".to_string(),
        Ok(Err(RelayError::Refused { reason, .. })) => format!("refused {}", reason.label()),
        Ok(Err(e)) => format!("no relay: {e}"),
    };
    transport.close().await;
    Ok(line)
}
