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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes};
use clap::Parser;
use foca::{Codec as _, Header, Member, Message, State};
use switchyard_geo::Region;
use switchyard_gossip::codec::{self, FocaCodec};
use switchyard_gossip::keys::Keys;
use switchyard_gossip::table::{Batch, Observation, Table};
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::transport::{Inbound, Kind, Transport};
use switchyard_gossip::wire::{Envelope, Msg};
use switchyard_gossip::{NodeIdentity, MAX_SWIM_PACKET};

#[derive(Debug, Parser)]
#[command(about = "A mesh peer with a valid certificate that lies (Byzantine-member tests)")]
struct Args {
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
    /// A region its certificate does not name, claimed by its dishonest identity.
    #[arg(long)]
    other_region: Region,
    /// The local address to bind (port 0: any).
    #[arg(long)]
    bind: SocketAddr,
    /// The mesh address of the node lied to.
    #[arg(long)]
    target: SocketAddr,
    /// The node id of the node lied to.
    #[arg(long)]
    target_id: String,
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

/// Bound on joining the target.
const JOIN_DEADLINE: Duration = Duration::from_secs(20);
const RESEND: Duration = Duration::from_millis(200);

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Liar {
    args: Args,
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
        for _ in 0..self.args.repeat {
            self.transport.send_datagram(self.args.target, data.clone());
            tokio::time::sleep(RESEND / 4).await;
        }
    }

    fn stream(&self, msg: Msg) -> Result<()> {
        let env = Envelope {
            cluster: self.args.cluster.clone(),
            from: self.args.id.clone(),
            msg,
        };
        let data = codec::encode(&env)?;
        self.transport
            .send_stream(self.args.target, Bytes::from(data));
        Ok(())
    }

    /// The victim's rows as the liar would have them: every origin down, at `epoch` and a
    /// sequence the victim never reached, sealed with the liar's own key.
    fn forged_rows(&self, epoch: u64) -> Batch {
        let mut t = Table::new(self.args.victim.clone(), self.args.victim_region, epoch, 0)
            .with_seal(Arc::new(Keys::new(&self.tls)));
        let now = tokio::time::Instant::now();
        for o in &self.args.origins {
            let obs = Observation {
                healthy: false,
                rtt_us: None,
                last_change_ms: unix_ms(),
                reason: Some("forged by mesh-liar"),
                verdict: None,
            };
            t.set_local(&self.args.pool, o, obs, now);
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
    let a = &liar.args;
    // An empty id asks the target to readdress the announce to itself, as seeds are joined.
    let anyone = NodeIdentity::unsigned("", a.region, a.target, &a.cluster, 0);
    let announce = Liar::packet(&liar.me, &anyone, Message::Announce, &[])?;
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    loop {
        liar.transport.send_datagram(a.target, announce.clone());
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
                        if h.src.id == a.target_id {
                            return Ok(h.src);
                        }
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} ({}) did not answer an announce within {JOIN_DEADLINE:?}",
                a.target_id,
                a.target
            );
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let tls = tls::load(&args.ca, &args.cert, &args.key)
        .map_err(|e| anyhow!("load the liar's certificate: {e}"))?;
    let (tx, mut inbox) = tokio::sync::mpsc::channel(64);
    let transport = Transport::bind(args.bind, &tls, tx).context("bind the liar's endpoint")?;
    let me = NodeIdentity::unsigned(
        args.id.clone(),
        args.region,
        transport.local_addr(),
        &args.cluster,
        unix_ms(),
    )
    .signed_by(tls.signer());
    let liar = Liar {
        args,
        tls,
        transport,
        me,
    };
    let a = &liar.args;

    let target = join(&liar, &mut inbox).await?;
    println!(
        "joined {} at {} (generation {})",
        target.id, a.target, target.generation
    );
    // Keep reading, so the transport never stalls on a full inbox.
    tokio::spawn(async move { while inbox.recv().await.is_some() {} });

    liar.stream(Msg::Delta(vec![liar.forged_rows(a.victim_generation)]))?;
    println!(
        "sent a delta forging {}'s rows (all down), sealed by {}",
        a.victim, a.id
    );
    liar.stream(Msg::Delta(vec![liar.forged_rows(u64::MAX)]))?;
    println!("sent the same at epoch u64::MAX");

    let mut forever = NodeIdentity::unsigned(
        a.victim.clone(),
        a.victim_region,
        a.victim_addr,
        &a.cluster,
        u64::MAX,
    );
    forever = forever.signed_by(liar.tls.signer());
    let next = NodeIdentity::unsigned(
        a.victim.clone(),
        a.victim_region,
        a.victim_addr,
        &a.cluster,
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
                    a.region,
                    nowhere,
                    &a.cluster,
                    unix_ms(),
                )
                .signed_by(liar.tls.signer());
                Member::alive(id)
            })
            .collect();
        sent += members.len();
        probe = probe.wrapping_add(1);
        liar.transport.send_datagram(
            a.target,
            Liar::packet(&liar.me, &target, Message::Ping(probe), &members)?,
        );
        if sent % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!("sent {sent} made-up members");

    let elsewhere = NodeIdentity::unsigned(
        a.id.clone(),
        a.other_region,
        liar.transport.local_addr(),
        &a.cluster,
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
