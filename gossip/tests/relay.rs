//! Relay streams between real meshes on loopback: a stream between members carries bytes both
//! ways with half-close; the mesh's checks refuse, and count, a non-member (a valid cluster
//! certificate, never admitted), a revoked peer, a second hop, a stream past the per-peer cap
//! and a request that never arrives or is over the size bound; the node's own refusals reach the
//! asker and are counted.
//!
//! Every wait polls a condition against a deadline.

mod common;

use common::{eventually, Certs, WAIT};

use std::sync::Arc;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use prometheus_client::registry::Registry;
use switchyard_geo::Region;
use switchyard_gossip::codec;
use switchyard_gossip::relay::{RELAY_REQUEST_DEADLINE, RELAY_STREAMS_PER_PEER};
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::transport::{self, Transport};
use switchyard_gossip::{
    MemberState, Mesh, MeshConfig, MeshMetrics, Profile, RefuseReason, RelayError, RelayRequest,
    RelayResponse, Timings,
};

struct Node {
    mesh: Mesh,
    registry: Registry,
}

impl Node {
    fn start(tls: &NodeTls, seeds: Vec<std::net::SocketAddr>) -> Node {
        let mut timings = Timings::for_profile(Profile::Lan, 2);
        timings.probe_period = Duration::from_millis(200);
        timings.probe_rtt = Duration::from_millis(100);
        timings.announce_period = Duration::from_millis(300);
        let cfg = MeshConfig {
            node_id: tls.node_id().into(),
            region: Region::Weu,
            cluster: "test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            seeds,
            profile: Profile::Lan,
            expected_size: 2,
            timings,
            fingerprint: 0,
        };
        let metrics = MeshMetrics::default();
        let mut registry = Registry::with_prefix("switchyard");
        metrics.register(&mut registry);
        let mesh = Mesh::start(cfg, tls, metrics).expect("mesh starts");
        Node { mesh, registry }
    }

    /// The value of one series (name with its labels), 0 if absent.
    fn metric(&self, series: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    fn relay_refused(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "switchyard_mesh_relay_refused_total{{reason=\"{reason}\"}}"
        ))
    }

    fn sees_alive(&self, id: &str) -> bool {
        self.mesh
            .state()
            .borrow()
            .members
            .iter()
            .any(|m| m.id == id && m.state == MemberState::Alive)
    }
}

/// Two members that see each other alive.
async fn pair(certs: &Certs) -> (Node, Node) {
    let a = Node::start(&certs.node("edge-a"), vec![]);
    let b = Node::start(&certs.node("edge-b"), vec![a.mesh.local_addr()]);
    eventually("edge-a and edge-b to see each other alive", || async {
        a.sees_alive("edge-b") && b.sees_alive("edge-a")
    })
    .await;
    (a, b)
}

fn request(hops: u8) -> RelayRequest {
    RelayRequest {
        load_balancer: "web".into(),
        pool: "weu".into(),
        origin: "o1".into(),
        client: "192.0.2.7:51000".parse().unwrap(),
        hops,
    }
}

fn refused(result: Result<impl std::fmt::Debug, RelayError>) -> RefuseReason {
    match result {
        Err(RelayError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stream_between_members_carries_bytes_both_ways_with_half_close() {
    let certs = Certs::new("relay", "pipe");
    let (a, b) = pair(&certs).await;
    let mut requests = b.mesh.relay_requests().expect("the relay queue, once");
    assert!(b.mesh.relay_requests().is_none());
    // edge-b echoes what it read, once the asker has closed its half.
    let server = tokio::spawn(async move {
        let incoming = requests.recv().await.expect("a relay request");
        assert_eq!(incoming.request, request(0));
        assert_eq!(incoming.from_peer, "edge-a");
        let mut s = incoming.accept().await.expect("accepted");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("the asker's half");
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&got);
        s.write_all(&reply).await.unwrap();
        s.shutdown().await.unwrap();
        // Dropped, a finished stream still delivers what was written.
    });
    let mut s = a
        .mesh
        .open_relay("edge-b", request(0))
        .await
        .expect("edge-b accepts");
    let payload = vec![7u8; 300_000];
    s.write_all(&payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("edge-b's half");
    assert_eq!(&back[..5], b"echo:");
    assert_eq!(&back[5..], &payload[..]);
    drop(s);
    server.await.unwrap();
    assert_eq!(
        b.metric("switchyard_mesh_relay_streams_total{peer=\"edge-a\",direction=\"received\"}"),
        1
    );
    assert_eq!(
        a.metric("switchyard_mesh_relay_streams_total{peer=\"edge-b\",direction=\"sent\"}"),
        1
    );
    let bytes = |node: &Node, peer: &str, direction: &str| {
        node.metric(&format!(
            "switchyard_mesh_relay_bytes_total{{peer=\"{peer}\",direction=\"{direction}\"}}"
        ))
    };
    assert_eq!(bytes(&a, "edge-b", "sent"), 300_000);
    assert_eq!(bytes(&a, "edge-b", "received"), 300_005);
    assert_eq!(bytes(&b, "edge-a", "received"), 300_000);
    assert_eq!(bytes(&b, "edge-a", "sent"), 300_005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stream_may_have_a_long_paths_worth_in_flight_beyond_the_gossip_window() {
    // 500 Mbit/s across 170 ms is 10.6 MB in flight: the asker must be able to write that
    // much before the peer reads a byte, although gossip alone gets only CONN_WINDOW.
    const IN_FLIGHT: usize = 10 << 20;
    assert!(IN_FLIGHT > transport::CONN_WINDOW as usize);
    let certs = Certs::new("relay", "wide");
    let (a, b) = pair(&certs).await;
    let mut requests = b.mesh.relay_requests().expect("the relay queue");
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let incoming = requests.recv().await.expect("a relay request");
        let mut s = incoming.accept().await.expect("accepted");
        wait.await.expect("the asker wrote it all");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("the asker's half");
        got.len()
    });
    let mut s = a
        .mesh
        .open_relay("edge-b", request(0))
        .await
        .expect("edge-b accepts");
    tokio::time::timeout(WAIT, s.write_all(&vec![1u8; IN_FLIGHT]))
        .await
        .expect("written while the peer reads nothing: the relay's window is wide")
        .unwrap();
    s.shutdown().await.unwrap();
    go.send(()).unwrap();
    assert_eq!(server.await.unwrap(), IN_FLIGHT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_with_a_valid_certificate_is_refused_and_counted() {
    let certs = Certs::new("relay", "stranger");
    let a = Node::start(&certs.node("edge-a"), vec![]);
    let (tx, _inbox) = tokio::sync::mpsc::channel(16);
    let mallory = Transport::bind("127.0.0.1:0".parse().unwrap(), &certs.node("mallory"), tx)
        .expect("mallory binds");
    let result = mallory
        .open_relay(a.mesh.local_addr(), "edge-a", &request(0))
        .await;
    assert_eq!(refused(result), RefuseReason::NotMember);
    assert_eq!(a.relay_refused("not_member"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hop_is_refused_and_counted() {
    let certs = Certs::new("relay", "hop");
    let (a, b) = pair(&certs).await;
    let _requests = b.mesh.relay_requests();
    let result = a.mesh.open_relay("edge-b", request(1)).await;
    assert_eq!(refused(result), RefuseReason::SecondHop);
    assert_eq!(b.relay_refused("second_hop"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_is_refused_and_counted() {
    let certs = Certs::new("relay", "revoked");
    let a_paths = certs.paths("edge-a");
    let a = Node::start(
        &tls::load(&certs.ca(), &a_paths.cert, &a_paths.key).unwrap(),
        vec![],
    );
    let b = Node::start(&certs.node("edge-b"), vec![a.mesh.local_addr()]);
    eventually("edge-a and edge-b to see each other alive", || async {
        a.sees_alive("edge-b") && b.sees_alive("edge-a")
    })
    .await;
    let _requests = a.mesh.relay_requests();
    let list = certs.0.join("revoked.txt");
    std::fs::write(&list, "node:edge-b\n").unwrap();
    let revoking = tls::load_with(&certs.ca(), &a_paths.cert, &a_paths.key, Some(&list)).unwrap();
    a.mesh.reload_tls(&revoking).await.expect("reload");
    // edge-b may still see edge-a alive; its stream is refused however it gets there: its
    // connection was closed and its handshake is refused, or the mesh's check refuses it.
    let result = b.mesh.open_relay("edge-a", request(0)).await;
    assert!(result.is_err(), "a revoked peer got a relay stream");
    eventually("the refusal of edge-b to be counted as revoked", || async {
        a.relay_refused("revoked") + a.metric("switchyard_mesh_refused_total{reason=\"revoked\"}")
            >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_peer_cap_refuses_the_next_stream_and_counts_it() {
    let certs = Certs::new("relay", "cap");
    let (a, b) = pair(&certs).await;
    let mut requests = b.mesh.relay_requests().unwrap();
    // edge-b accepts everything and holds the streams open.
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Some(incoming) = requests.recv().await {
            if let Ok(s) = incoming.accept().await {
                holder.lock().await.push(s);
            }
        }
    });
    let mut mine = Vec::new();
    for i in 0..RELAY_STREAMS_PER_PEER {
        let s = a
            .mesh
            .open_relay("edge-b", request(0))
            .await
            .unwrap_or_else(|e| panic!("stream {i} within the cap: {e}"));
        mine.push(s);
    }
    let result = a.mesh.open_relay("edge-b", request(0)).await;
    assert_eq!(refused(result), RefuseReason::PerPeer);
    assert_eq!(b.relay_refused("per_peer"), 1);
    // A stream done on edge-b gives its slot back.
    held.lock().await.pop();
    a.mesh
        .open_relay("edge-b", request(0))
        .await
        .expect("a slot was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_refusals_reach_the_asker_and_are_counted() {
    let certs = Certs::new("relay", "node-refuses");
    let (a, b) = pair(&certs).await;
    let mut requests = b.mesh.relay_requests().unwrap();
    // edge-b's node refuses the first request (say, an origin not in its config) and drops
    // the second unanswered.
    tokio::spawn(async move {
        let first = requests.recv().await.unwrap();
        first.refuse(RefuseReason::NotInConfig).await;
        drop(requests.recv().await.unwrap());
    });
    let result = a.mesh.open_relay("edge-b", request(0)).await;
    assert_eq!(refused(result), RefuseReason::NotInConfig);
    assert_eq!(b.relay_refused("not_in_config"), 1);
    let result = a.mesh.open_relay("edge-b", request(0)).await;
    assert_eq!(refused(result), RefuseReason::Unanswered);
    assert_eq!(b.relay_refused("unanswered"), 1);
}

/// A member's own raw relay stream: edge-a serving, edge-b a member, and a hand-made QUIC
/// connection to edge-a with edge-b's certificate (a member, as far as edge-a can tell) that
/// sends `prefix` on a new bidirectional stream and nothing more. Returns edge-a, edge-b,
/// the connection and the stream (its send half kept open: dropped, it would finish).
async fn raw_stream(
    certs: &Certs,
    prefix: &[u8],
) -> (
    Node,
    Node,
    quinn::Connection,
    (quinn::SendStream, quinn::RecvStream),
) {
    let a = Node::start(&certs.node("edge-a"), vec![]);
    let b_tls = certs.node("edge-b");
    let b = Node::start(&b_tls, vec![a.mesh.local_addr()]);
    eventually("edge-a to see edge-b alive", || async {
        a.sees_alive("edge-b")
    })
    .await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(b_tls.client_config().unwrap());
    let conn = endpoint
        .connect(a.mesh.local_addr(), tls::MESH_SERVER_NAME)
        .unwrap()
        .await
        .expect("connects");
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(prefix).await.unwrap();
    (a, b, conn, (send, recv))
}

/// The response frame on `recv`, within `within`.
async fn response(recv: &mut quinn::RecvStream, within: Duration) -> RelayResponse {
    let answer = tokio::time::timeout(within, recv.read_to_end(256))
        .await
        .expect("an answer in time")
        .expect("the response frame");
    codec::decode(&answer[2..]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_arrives_is_cut_at_the_deadline() {
    let certs = Certs::new("relay", "slow");
    // One byte of the length prefix, and then nothing: the stream exists, the request never
    // comes.
    let (a, _b, conn, (_send, mut recv)) = raw_stream(&certs, &[0]).await;
    let _requests = a.mesh.relay_requests();
    assert_eq!(
        response(&mut recv, RELAY_REQUEST_DEADLINE + WAIT).await,
        RelayResponse::Refused(RefuseReason::Deadline)
    );
    assert_eq!(a.relay_refused("deadline"), 1);
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_bound_is_refused_unread() {
    let certs = Certs::new("relay", "oversized");
    // A length prefix of 64 KiB: over the bound, refused before a byte of the body is read.
    let (a, _b, conn, (_send, mut recv)) = raw_stream(&certs, &[0xff, 0xff]).await;
    let _requests = a.mesh.relay_requests();
    assert_eq!(
        response(&mut recv, WAIT).await,
        RelayResponse::Refused(RefuseReason::BadRequest)
    );
    assert_eq!(a.relay_refused("bad_request"), 1);
    conn.close(0u32.into(), b"done");
}
