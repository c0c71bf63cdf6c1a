//! Target `machine`: what a peer sends, handed to the mesh's own state machine
//! (`gossip::machine::Machine::inbound`), which checks it (cluster, the sender's certificate,
//! every identity's signature, every batch's seal) and then runs it through foca, the health
//! table and the probe asks, exactly as in a node; then its timers, for a bounded while.
//! Every message the machine sends in return must decode: its peers read them.
//!
//! The sender is `edge-weu-1`, a member with a valid certificate of the cluster, which the
//! machine already knows (it announced itself first). Such a member can sign any claim
//! about itself, so before a SWIM packet is handed over, every identity in it that names
//! `edge-weu-1` is signed with its key: the fuzzer plays a lying member, not a stranger who
//! cannot get past the first signature check. Identities of other nodes keep the
//! signatures the input gives them (a forgery, which must be refused).
//!
//! The first byte picks the channel: even, a SWIM datagram; odd, a replication stream.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use foca::{Codec, Header, Member};
use switchyard_geo::Region;
use switchyard_gossip::codec::{self, FocaCodec};
use switchyard_gossip::keys::{Keys, Source};
use switchyard_gossip::machine::{Machine, Net, Start, StreamSink};
use switchyard_gossip::transport::{Inbound, Kind};
use switchyard_gossip::wire::Envelope;
use switchyard_gossip::{MeshConfig, MeshMetrics, NodeIdentity, Profile, Timings};
use tokio::time::Instant;

use crate::mesh::{certs, CLUSTER, LOCAL, PEER};

/// Timer rounds run after the input, each at the machine's next deadline.
const ROUNDS: usize = 8;
/// The wall clock the machine starts at (unix ms): after every epoch in the seeds.
const WALL_MS: u64 = 1_700_000_100_000;

const LOCAL_ADDR: &str = "192.0.2.1:7946";
const PEER_ADDR: &str = "192.0.2.2:7946";

/// A network that only checks what is sent: every message must decode as what it is.
#[derive(Default)]
struct Checked {
    sent: Cell<usize>,
}

impl Net for Checked {
    fn send_datagram(&self, _: SocketAddr, data: Bytes) {
        self.sent.set(self.sent.get() + 1);
        let mut rest = &data[..];
        if let Err(e) = FocaCodec.decode_header(&mut rest) {
            panic!("the machine sent a SWIM packet that does not decode: {e}");
        }
    }
    fn send_stream(&self, _: SocketAddr, data: Bytes) {
        self.sent.set(self.sent.get() + 1);
        stream_decodes(&data);
    }
    fn rtt(&self, _: SocketAddr) -> Option<Duration> {
        Some(Duration::from_millis(40))
    }
    fn forget(&self, _: SocketAddr) {}
    fn retain(
        &self,
        _: &dyn Fn(SocketAddr) -> bool,
        _: &dyn Fn(&str) -> bool,
        _: Duration,
    ) -> usize {
        0
    }
    fn close_where(&self, _: &dyn Fn(&[u8]) -> bool, _: &'static [u8]) -> usize {
        0
    }
    fn link_count(&self) -> usize {
        1
    }
    fn stream_sink(&self) -> StreamSink {
        Arc::new(|_, data: Bytes| stream_decodes(&data))
    }
}

fn stream_decodes(data: &[u8]) {
    if let Err(e) = codec::decode::<Envelope>(data) {
        panic!("the machine sent a replication message that does not decode: {e}");
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

/// `edge-weu-1` as it signs itself.
pub fn peer_identity() -> NodeIdentity {
    NodeIdentity::unsigned(PEER, Region::Weu, addr(PEER_ADDR), CLUSTER, 1)
        .signed_by(Arc::new(Keys::new(&certs().peer)))
}

/// `edge-weu-1`'s announce to the machine: how it becomes a member.
fn announce(local: &NodeIdentity) -> Vec<u8> {
    let header = Header {
        src: peer_identity(),
        src_incarnation: 0,
        dst: local.clone(),
        message: foca::Message::Announce,
    };
    let mut buf = Vec::new();
    FocaCodec.encode_header(&header, &mut buf).expect("encodes");
    buf
}

fn inbound(kind: Kind, data: Vec<u8>) -> Inbound {
    Inbound::new(
        addr(PEER_ADDR),
        Some(PEER.into()),
        Some(Bytes::copy_from_slice(certs().peer.cert_der())),
        kind,
        Bytes::from(data),
    )
}

/// `data` with every identity naming `edge-weu-1` signed by it; `data` itself when it does
/// not decode as a SWIM packet (the machine must refuse it as it is).
fn signed_by_peer(data: &[u8]) -> Vec<u8> {
    let sign = |id: &mut NodeIdentity| {
        if id.id == PEER {
            let signer = Arc::new(Keys::new(&certs().peer));
            *id = id.clone().signed_by(signer);
        }
    };
    let mut rest = data;
    let Ok(mut header) = FocaCodec.decode_header(&mut rest) else {
        return data.to_vec();
    };
    sign(&mut header.src);
    sign(&mut header.dst);
    match &mut header.message {
        foca::Message::PingReq { target: id, .. }
        | foca::Message::IndirectAck { target: id, .. }
        | foca::Message::IndirectPing { origin: id, .. }
        | foca::Message::ForwardedAck { origin: id, .. } => sign(id),
        _ => {}
    }
    let mut out = Vec::with_capacity(data.len() + 128);
    if FocaCodec.encode_header(&header, &mut out).is_err() {
        return data.to_vec();
    }
    if rest.len() < 2 || header.message == foca::Message::Broadcast {
        out.extend_from_slice(rest);
        return out;
    }
    let count = u16::from_be_bytes([rest[0], rest[1]]);
    rest = &rest[2..];
    let mut members = Vec::new();
    for _ in 0..count {
        match FocaCodec.decode_member(&mut rest) {
            Ok(m) => members.push(m),
            Err(_) => break,
        }
    }
    out.put_u16(count);
    for m in members {
        let (mut id, incarnation, state) = (m.id().clone(), m.incarnation(), m.state());
        sign(&mut id);
        if FocaCodec
            .encode_member(&Member::new(id, incarnation, state), &mut out)
            .is_err()
        {
            return data.to_vec();
        }
    }
    out.extend_from_slice(rest);
    out
}

pub fn run(data: &[u8]) {
    let Some((&channel, data)) = data.split_first() else {
        return;
    };
    let certs = certs();
    let keys = Arc::new(Keys::new(&certs.local));
    keys.learn(certs.peer.cert_der(), Source::Handshake)
        .expect("the peer's certificate is the cluster's");
    let local = NodeIdentity::unsigned(LOCAL, Region::Wnam, addr(LOCAL_ADDR), CLUSTER, 1)
        .signed_by(keys.clone());
    let cfg = MeshConfig {
        node_id: LOCAL.into(),
        region: Region::Wnam,
        cluster: CLUSTER.into(),
        listen: addr(LOCAL_ADDR),
        advertise: None,
        seeds: vec![addr(PEER_ADDR)],
        profile: Profile::Wan,
        expected_size: 16,
        timings: Timings::for_profile(Profile::Wan, 16).clamped(),
        fingerprint: 0xfeed,
    };
    let mut now = Instant::now();
    let mut machine = Machine::new(
        cfg,
        Start {
            identity: local.clone(),
            net: Checked::default(),
            metrics: MeshMetrics::default(),
            keys,
            asks_tx: None,
            // Fixed: the same input takes the same path.
            seed: 7,
            now,
            wall_ms: WALL_MS,
        },
    );
    machine.inbound(now, inbound(Kind::Swim, announce(&local)));

    let input = if channel % 2 == 0 {
        inbound(Kind::Swim, signed_by_peer(data))
    } else {
        inbound(Kind::Repl, data.to_vec())
    };
    machine.inbound(now, input);
    for _ in 0..ROUNDS {
        now = machine.poll_timeout().min(now + Duration::from_secs(60));
        machine.handle_timeout(now);
    }
    let _ = machine.state(now);
    let _ = machine.take_changed();
    let _ = machine.net().sent.get();
}
