//! What one peer holding a valid cluster certificate can make a node hold is bounded: a flood
//! of made-up members stays under the member bound and none of them beyond it is ever dialed
//! (nor the target of a ping-req), a message over the size limit is stopped unread, and a peer
//! cannot open more streams at once than the bound. Everything on 127.0.0.1.

mod common;

use common::{eventually, Certs, WAIT};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use foca::{Codec, Header, Member, Message};
use prometheus_client::registry::Registry;
use switchyard_geo::Region;
use switchyard_gossip::codec::FocaCodec;
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::transport::{Transport, MAX_STREAM, MAX_STREAMS_IN};
use switchyard_gossip::{
    Mesh, MeshConfig, MeshMetrics, NodeIdentity, Profile, Timings, MIN_MAX_MEMBERS,
};

/// A node with fast timings and `expected_size` 2, so its member bound is the floor.
fn start_node(certs: &Certs, id: &str) -> (Mesh, Arc<Mutex<Registry>>) {
    let mut timings = Timings::for_profile(Profile::Lan, 2);
    timings.probe_period = Duration::from_millis(200);
    timings.probe_rtt = Duration::from_millis(100);
    timings.suspect_to_down_after = Duration::from_secs(1);
    timings.announce_period = Duration::from_millis(300);
    timings.anti_entropy_period = Duration::from_millis(300);
    let cfg = MeshConfig {
        node_id: id.into(),
        region: Region::Weu,
        cluster: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        seeds: Vec::new(),
        profile: Profile::Lan,
        expected_size: 2,
        timings,
        fingerprint: 0,
    };
    assert_eq!(cfg.max_members(), MIN_MAX_MEMBERS);
    let metrics = MeshMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mesh = Mesh::start(cfg, &certs.node(id), metrics).expect("mesh starts");
    (mesh, Arc::new(Mutex::new(registry)))
}

/// The value of the metric line starting with `series` (e.g. `mesh_links`), 0 when absent.
fn metric(registry: &Mutex<Registry>, series: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry.lock().unwrap()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Claims refused for their signature: an unknown signer or a bad signature.
fn refused_claims(registry: &Mutex<Registry>) -> u64 {
    ["unknown_signer", "bad_signature"]
        .iter()
        .map(|r| metric(registry, &format!("mesh_refused_total{{reason=\"{r}\"}}")))
        .sum()
}

fn bound_hits(registry: &Mutex<Registry>, bound: &str) -> u64 {
    metric(
        registry,
        &format!("mesh_bound_hits_total{{bound=\"{bound}\"}}"),
    )
}

/// A peer with a valid certificate that writes its own SWIM packets.
struct Mallory {
    transport: Arc<Transport>,
    identity: NodeIdentity,
    tls: NodeTls,
    _inbox: tokio::sync::mpsc::Receiver<switchyard_gossip::transport::Inbound>,
}

impl Mallory {
    fn new(certs: &Certs) -> Mallory {
        let (tx, inbox) = tokio::sync::mpsc::channel(16);
        let tls = certs.node("mallory");
        let transport =
            Transport::bind("127.0.0.1:0".parse().unwrap(), &tls, tx).expect("mallory binds");
        // Mallory signs what it claims about itself, with its own key: the only key it holds.
        let identity =
            NodeIdentity::unsigned("mallory", Region::Weu, transport.local_addr(), "test", 1)
                .signed_by(tls.signer());
        Mallory {
            transport,
            identity,
            tls,
            _inbox: inbox,
        }
    }

    /// A packet to `victim`: header, then the members, as foca lays them out.
    fn packet(
        &self,
        victim: &NodeIdentity,
        message: Message<NodeIdentity>,
        members: &[Member<NodeIdentity>],
    ) -> Bytes {
        let header = Header {
            src: self.identity.clone(),
            src_incarnation: 0,
            dst: victim.clone(),
            message,
        };
        let mut buf = Vec::new();
        FocaCodec.encode_header(&header, &mut buf).unwrap();
        if !members.is_empty() {
            buf.put_u16(members.len() as u16);
            for m in members {
                FocaCodec.encode_member(m, &mut buf).unwrap();
            }
        }
        assert!(buf.len() <= switchyard_gossip::MAX_SWIM_PACKET);
        Bytes::from(buf)
    }

    fn send(&self, to: SocketAddr, packet: Bytes) {
        self.transport.send_datagram(to, packet);
    }
}

/// A made-up member, signed with mallory's key: no node of that id ever signed it.
fn fake(mallory: &Mallory, id: String, addr: SocketAddr) -> NodeIdentity {
    NodeIdentity::unsigned(id, Region::Weu, addr, "test", 1).signed_by(mallory.tls.signer())
}

/// Datagrams a UDP socket has received so far, without waiting.
fn drain(socket: &std::net::UdpSocket) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn sink() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_members_stays_under_the_bound_and_is_never_dialed() {
    // With signed identities a made-up member cannot be admitted at all: its signature is not
    // its node's. The flood is refused member by member, the held ones stay bounded, and none
    // of the addresses it names is ever dialed.
    let certs = Certs::new("bounds", "flood");
    let (victim, registry) = start_node(&certs, "victim");
    let me = victim.identity().clone();
    let mallory = Mallory::new(&certs);
    let refused = sink();
    let refused_addr = refused.local_addr().unwrap();

    let per_packet = 5;
    let mut probe = 0u8;
    let mut next = 0usize;
    for _ in 0..(MIN_MAX_MEMBERS / per_packet + 300) {
        let members: Vec<_> = (0..per_packet)
            .map(|k| Member::alive(fake(&mallory, format!("fake-{}", next + k), refused_addr)))
            .collect();
        next += per_packet;
        probe = probe.wrapping_add(1);
        mallory.send(
            victim.local_addr(),
            mallory.packet(&me, Message::Ping(probe), &members),
        );
    }
    let state = victim.state();
    eventually(
        "mallory itself is admitted (its own claim is signed)",
        || async { state.borrow().members.iter().any(|m| m.id == "mallory") },
    )
    .await;
    // No node of those ids ever spoke: their signatures have no certificate to hold against.
    eventually("every made-up member is refused", || async {
        refused_claims(&registry) >= next as u64
    })
    .await;
    // The victim and mallory; no made-up member.
    assert_eq!(state.borrow().members.len(), 2);
    assert!(!state
        .borrow()
        .members
        .iter()
        .any(|m| m.addr == refused_addr));

    // A ping-req names its target, an identity of mallory's choosing: not dialed either.
    let target = fake(&mallory, "fake-target".into(), refused_addr);
    let before = refused_claims(&registry);
    mallory.send(
        victim.local_addr(),
        mallory.packet(
            &me,
            Message::PingReq {
                target,
                probe_number: 1,
            },
            &[],
        ),
    );
    eventually(
        "the ping-req naming a made-up target is refused",
        || async { refused_claims(&registry) > before },
    )
    .await;
    assert_eq!(drain(&refused), 0, "a made-up member was dialed");
    let links = metric(&registry, "mesh_links");
    assert!(links <= (MIN_MAX_MEMBERS + 16) as u64, "{links} links");
    victim.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_stopped_unread_and_counted() {
    let certs = Certs::new("bounds", "oversized");
    let (victim, registry) = start_node(&certs, "victim");
    let mallory = Mallory::new(&certs);
    mallory
        .transport
        .send_stream(victim.local_addr(), Bytes::from(vec![1u8; MAX_STREAM + 1]));
    eventually("the oversized stream is counted", || async {
        bound_hits(&registry, "message_size") == 1
    })
    .await;
    // It never reached the decoder; a message under the limit does.
    assert_eq!(metric(&registry, "mesh_decode_errors_total"), 0);
    mallory
        .transport
        .send_stream(victim.local_addr(), Bytes::from(vec![1u8; 1000]));
    eventually("a message under the limit is read", || async {
        metric(&registry, "mesh_decode_errors_total") == 1
    })
    .await;
    assert_eq!(bound_hits(&registry, "message_size"), 1);
    victim.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_open_more_streams_than_the_bound_and_slow_ones_are_stopped() {
    let certs = Certs::new("bounds", "streams");
    let (victim, registry) = start_node(&certs, "victim");
    let mallory = certs.node("mallory");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(mallory.client_config().unwrap());
    let conn = endpoint
        .connect(victim.local_addr(), tls::MESH_SERVER_NAME)
        .unwrap()
        .await
        .expect("mallory connects");
    // Streams opened and never finished: each holds a reader until its deadline.
    let mut streams = Vec::new();
    for _ in 0..MAX_STREAMS_IN {
        let mut s = conn.open_uni().await.expect("within the bound");
        s.write_all(b"partial").await.unwrap();
        streams.push(s);
    }
    // The victim granted no more: opening one more waits (polled once, no credit).
    let one_more = tokio::time::timeout(Duration::ZERO, conn.open_uni()).await;
    assert!(one_more.is_err(), "a stream past the bound was opened");
    // Bidirectional streams are relay streams, with bounds of their own (tests/relay.rs).
    eventually("slow streams are stopped at their deadline", || async {
        bound_hits(&registry, "stream_deadline") >= 1
    })
    .await;
    // A stopped stream frees credit for a new one.
    let more = tokio::time::timeout(WAIT, conn.open_uni()).await;
    assert!(more.is_ok(), "no stream credit after the deadline");
    drop(streams);
    conn.close(0u32.into(), b"done");
    victim.leave().await;
}
