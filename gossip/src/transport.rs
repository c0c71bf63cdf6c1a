//! QUIC transport between mesh members: one endpoint per node, one warm connection per peer
//! (kept alive so a SWIM probe never waits on a handshake), SWIM packets in datagrams and
//! replication messages on unidirectional streams. Everything received goes to the mesh task
//! tagged with the node id from the peer's certificate, which the mesh checks against what
//! the peer claims. With the `test-util` feature, fault injection (blocked peers) lets tests
//! cut links.
//!
//! Bounds. What a peer holding a cluster certificate can make this node hold is bounded, each
//! bound counted in [`TransportStats`] when hit: per connection, QUIC flow control
//! ([`CONN_WINDOW`], [`STREAM_WINDOW`], [`MAX_STREAMS_IN`] open streams, [`MAX_BIDI_IN`]
//! bidirectional ones, [`DATAGRAM_BUFFER`]) and [`READERS_PER_CONN`] streams read at once, each within
//! [`STREAM_DEADLINE`] and [`MAX_STREAM`] bytes (else stopped); the links and connections
//! ([`Transport::set_max_links`], twice as many connections), the streams in flight to one
//! peer ([`STREAMS_OUT`]), and the bytes waiting for the mesh task ([`INBOX_BYTES`]). So one
//! connection holds at most [`CONN_WINDOW`] + [`READERS_PER_CONN`] x [`MAX_STREAM`] = 12 MiB.
//!
//! Relay streams (bidirectional; see `relay` for their own bounds: members only, per peer and
//! in all, the request's size and deadline) need a window of bandwidth x RTT. Only while a
//! connection carries an accepted relay stream is its receive window widened to
//! [`relay::RELAY_CONN_WINDOW`] (`relay::Widened`); when the last one ends it narrows again. What a relay
//! stream receives, the node reads and pipes on, so QUIC holds no more of it than that; a
//! peer with no relay accepted stays within the 12 MiB above.
//!
//! New TLS material (a reload) is taken without a restart ([`Transport::set_tls`]): new
//! handshakes, both ways, use it, and [`Transport::close_where`] closes the open connections
//! whose peer it no longer accepts (or all of them, when this node's own certificate changed).

use std::collections::HashMap;
#[cfg(feature = "test-util")]
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken as Cancel;

use crate::codec;
use crate::error::GossipError;
use crate::metrics::MeshMetrics;
use crate::relay::{
    self, IncomingRelay, Open, PeerStanding, RefuseReason, RelayError, RelayRequest, RelayResponse,
    RelayStreams, Widening, MAX_RELAY_REQUEST, RELAY_REQUEST_DEADLINE, RELAY_RESPONSE_DEADLINE,
    RELAY_STREAMS_PER_PEER, RELAY_STREAM_SLACK,
};
use crate::tls::{self, NodeTls};

/// Largest replication message (one stream): a stream that goes past it is stopped and
/// counted ([`TransportStats::oversized`]). The largest message the mesh sends is one full
/// batch of a writer, at most `table::MAX_WRITER_BYTES` (1 MiB) of rows, so this leaves room
/// for the envelope and a signature.
pub const MAX_STREAM: usize = 2 << 20;

/// Connection-level QUIC receive window: what a peer may have in flight, unread, on one
/// connection, all streams together, while no relay stream is open on it.
pub const CONN_WINDOW: u32 = 4 << 20;

/// Per-stream QUIC receive window, sized for a relay stream (bandwidth x RTT): 500 Mbit/s
/// across 170 ms is 10.6 MB in flight, and queueing on the path adds to it (12 MiB measured
/// exactly 500 Mbit/s there, `tests/bench/relay.sh`); quinn's default 1.25 MB caps one
/// stream near 60 Mbit/s on that path. Replication streams stay inside [`CONN_WINDOW`] and are cut at
/// [`MAX_STREAM`], so the wide stream window gives them nothing more.
pub const STREAM_WINDOW: u32 = 16 << 20;

/// Unidirectional streams a peer may have open on one connection at once: QUIC does not let
/// it open another until one ends.
pub const MAX_STREAMS_IN: u32 = 16;

/// Bidirectional streams (relay streams) a peer may have open on one connection at once: the
/// relay cap and a little slack, so an excess stream arrives to be refused and counted.
pub const MAX_BIDI_IN: u32 = (RELAY_STREAMS_PER_PEER + RELAY_STREAM_SLACK) as u32;

/// Streams of one connection read at once; the others wait in QUIC's buffers, inside
/// [`CONN_WINDOW`]. Each is read by its own task, so a slow stream holds up only its own
/// slot, for at most [`STREAM_DEADLINE`].
pub const READERS_PER_CONN: usize = 4;

/// How long one incoming stream may take to arrive whole; then it is stopped and counted.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(10);

/// Received SWIM datagrams QUIC buffers per connection, in bytes (about 230 packets).
pub const DATAGRAM_BUFFER: usize = 256 << 10;

/// Outgoing streams in flight to one peer; beyond it a message is dropped and counted (a peer
/// that reads slowly must not make this node hold a task per message).
pub const STREAMS_OUT: usize = 32;

/// Bytes of received messages waiting for the mesh task, all peers together; beyond it a
/// message is dropped and counted.
pub const INBOX_BYTES: usize = 64 << 20;

/// Links until the mesh sets its own bound with [`Transport::set_max_links`].
const DEFAULT_MAX_LINKS: usize = 256;

/// QUIC stream error code: the message is over [`MAX_STREAM`].
const TOO_LARGE: u32 = 1;
/// QUIC stream error code: the message took longer than [`STREAM_DEADLINE`].
const TOO_SLOW: u32 = 2;

/// Applies the transport's flow-control bounds to a QUIC transport configuration.
pub(crate) fn limit(transport: &mut quinn::TransportConfig) {
    transport
        .receive_window(quinn::VarInt::from_u32(CONN_WINDOW))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_STREAMS_IN))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_IN))
        // What this node keeps unacknowledged for a peer: as much as a relaying peer may take.
        // Only what this node itself writes fills it.
        .send_window(u64::from(relay::RELAY_CONN_WINDOW))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
}

/// Messages waiting for a peer's link; beyond this they are dropped (SWIM tolerates loss,
/// anti-entropy repairs the rest).
const LINK_QUEUE: usize = 256;

/// How long a connect may take before the message is dropped and the next one retries. QUIC
/// retransmits a lost handshake packet after about a second, so this allows several.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a connection, from its certificate.
struct Peer {
    id: Option<String>,
    cert: Option<Bytes>,
}

/// What arrived from a peer.
#[derive(Debug)]
pub struct Inbound {
    /// The peer's address as seen by QUIC.
    pub from: SocketAddr,
    /// The node id in the peer's certificate.
    pub peer_id: Option<String>,
    /// The peer's certificate (DER), which the mesh keeps to check what the peer signs.
    pub peer_cert: Option<Bytes>,
    pub kind: Kind,
    pub data: Bytes,
    /// Gives `data`'s bytes back to [`INBOX_BYTES`] when the message is dropped.
    _held: Held,
}

impl Inbound {
    /// A message that arrived some other way than this transport (a simulated network),
    /// counted against no inbox.
    pub fn new(
        from: SocketAddr,
        peer_id: Option<String>,
        peer_cert: Option<Bytes>,
        kind: Kind,
        data: Bytes,
    ) -> Inbound {
        Inbound {
            from,
            peer_id,
            peer_cert,
            kind,
            data,
            _held: Held {
                bytes: 0,
                total: Arc::default(),
            },
        }
    }
}

/// Bytes counted against [`INBOX_BYTES`] until dropped.
#[derive(Debug)]
struct Held {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SWIM packet (datagram).
    Swim,
    /// A replication message (stream).
    Repl,
}

/// Counters the node exports.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub datagrams_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub streams_out: AtomicU64,
    pub streams_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub dropped_out: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Connections refused: no certificate from the cluster CA (handshake failures).
    pub refused: AtomicU64,
    /// Of those, the handshakes refused because a certificate is revoked (either side's).
    pub revoked: AtomicU64,
    /// Incoming streams stopped for going over [`MAX_STREAM`].
    pub oversized: AtomicU64,
    /// Incoming streams stopped for taking longer than [`STREAM_DEADLINE`].
    pub slow_streams: AtomicU64,
    /// Messages to a peer not sent: [`STREAMS_OUT`] streams already in flight to it.
    pub streams_out_full: AtomicU64,
    /// Messages received but dropped: [`INBOX_BYTES`] already waiting for the mesh task.
    pub inbox_full: AtomicU64,
    /// Messages not sent, or connections refused, because the links are at their bound.
    pub links_full: AtomicU64,
    /// Incoming connections refused because the connections are at their bound.
    pub connections_full: AtomicU64,
    /// Links closed because their peer is no longer a member ([`Transport::retain`]).
    pub links_pruned: AtomicU64,
}

enum Out {
    Datagram(Bytes),
    Stream(Bytes),
}

struct Link {
    tx: mpsc::Sender<Out>,
    conn: Arc<Mutex<Option<quinn::Connection>>>,
    created: Instant,
    /// Whether the peer answers what this node sends it ([`Transport::rtt`]).
    heard: Mutex<Heard>,
}

/// What a link's connection had sent and received when last looked at, and since when what
/// it sent has gone unanswered.
#[derive(Debug, Default)]
struct Heard {
    conn: usize,
    rx: u64,
    asked: u64,
    unanswered_since: Option<Instant>,
}

/// Something this node sent a peer (a SWIM datagram, a stream, a keep-alive ping: every one
/// acknowledged) that got no packet back for this long, and three round trips, means the
/// path to it is cut, whatever SWIM (whose indirect acks come round through others) says.
pub const UNANSWERED: Duration = Duration::from_secs(1);

impl Heard {
    /// Takes the connection's counters at `now`; false when the peer has not answered for
    /// [`UNANSWERED`] (and three round trips).
    fn answering(&mut self, conn: &quinn::Connection, now: Instant) -> bool {
        let stats = conn.stats();
        // Frames the peer must acknowledge (pure acks are not: they would look unanswered).
        let asked = stats.frame_tx.datagram + stats.frame_tx.stream + stats.frame_tx.ping;
        self.update(
            conn.stable_id(),
            stats.udp_rx.datagrams,
            asked,
            conn.rtt(),
            now,
        )
    }

    /// [`Heard::answering`] over the counters: `rx` datagrams received, `asked` frames sent
    /// that the peer acknowledges, on connection `conn`.
    fn update(&mut self, conn: usize, rx: u64, asked: u64, rtt: Duration, now: Instant) -> bool {
        if self.conn != conn {
            *self = Heard {
                conn,
                rx,
                asked,
                unanswered_since: None,
            };
        } else if rx != self.rx {
            self.rx = rx;
            self.asked = asked;
            self.unanswered_since = None;
        } else if asked != self.asked {
            self.asked = asked;
            self.unanswered_since.get_or_insert(now);
        }
        self.unanswered_since
            .is_none_or(|since| now.saturating_duration_since(since) < UNANSWERED.max(rtt * 3))
    }
}

/// Peers whose traffic is dropped both ways, for partition tests.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
pub struct Faults {
    blocked: Mutex<HashSet<SocketAddr>>,
}

#[cfg(feature = "test-util")]
impl Faults {
    pub fn block(&self, peer: SocketAddr) {
        self.lock().insert(peer);
    }
    pub fn heal(&self, peer: SocketAddr) {
        self.lock().remove(&peer);
    }
    pub fn heal_all(&self) {
        self.lock().clear();
    }
    pub fn is_blocked(&self, peer: SocketAddr) -> bool {
        self.lock().contains(&peer)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's QUIC endpoint and its links to peers.
pub struct Transport {
    endpoint: quinn::Endpoint,
    /// What this node dials with; replaced by [`Transport::set_tls`].
    client: Mutex<quinn::ClientConfig>,
    /// Every open connection, both ways, by quinn's stable id: what
    /// [`Transport::close_where`] looks through (a link holds only its newest).
    conns: Mutex<HashMap<usize, quinn::Connection>>,
    links: Mutex<HashMap<SocketAddr, Link>>,
    inbox: mpsc::Sender<Inbound>,
    #[cfg(feature = "test-util")]
    pub faults: Arc<Faults>,
    pub stats: Arc<TransportStats>,
    stop: Cancel,
    max_links: AtomicUsize,
    /// Bytes of messages waiting in `inbox`.
    inbox_bytes: Arc<AtomicUsize>,
    /// Who serves relay streams ([`Transport::serve_relays`]); until set, all are refused.
    relays: std::sync::OnceLock<RelayServe>,
    /// Relay streams per connection, which widen its receive window.
    widening: Arc<Widening>,
}

/// How the mesh judges the peer asking for a relay stream: by its node id and certificate.
pub type Standing = Box<dyn Fn(&str, Option<&[u8]>) -> PeerStanding + Send + Sync>;

/// What serves relay streams: the mesh's judgement of peers, the node's queue, the counters.
pub struct RelayServe {
    pub standing: Standing,
    pub queue: mpsc::Sender<IncomingRelay>,
    pub metrics: MeshMetrics,
    open: Arc<Open>,
}

impl RelayServe {
    pub fn new(
        standing: Standing,
        queue: mpsc::Sender<IncomingRelay>,
        metrics: MeshMetrics,
    ) -> Self {
        RelayServe {
            standing,
            queue,
            metrics,
            open: Arc::new(Open::default()),
        }
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting peers; everything received goes to `inbox`.
    pub fn bind(
        listen: SocketAddr,
        tls: &NodeTls,
        inbox: mpsc::Sender<Inbound>,
    ) -> Result<Arc<Transport>, GossipError> {
        let server = tls.server_config().map_err(GossipError::Tls)?;
        let client = tls.client_config().map_err(GossipError::Tls)?;
        let bind_err = |source| GossipError::Bind {
            addr: listen,
            source,
        };
        let socket = bind_udp(listen).map_err(bind_err)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            bind_err(std::io::Error::other(
                "no async runtime for the QUIC endpoint",
            ))
        })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(bind_err)?;
        let t = Arc::new(Transport {
            endpoint,
            client: Mutex::new(client),
            conns: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            inbox,
            #[cfg(feature = "test-util")]
            faults: Arc::new(Faults::default()),
            stats: Arc::new(TransportStats::default()),
            stop: Cancel::new(),
            max_links: AtomicUsize::new(DEFAULT_MAX_LINKS),
            inbox_bytes: Arc::new(AtomicUsize::new(0)),
            relays: std::sync::OnceLock::new(),
            widening: Widening::new(CONN_WINDOW),
        });
        tokio::spawn(accept_loop(t.clone()));
        Ok(t)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or_else(|_| {
            // The socket is bound for the endpoint's life; an error here is unreachable in
            // practice, and a placeholder address is better than a panic.
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// Serves relay streams from now on (once; a second call is ignored).
    pub fn serve_relays(&self, serve: RelayServe) {
        let _ = self.relays.set(serve);
    }

    /// Opens a relay stream to the node `peer_id` at `addr` on the mesh connection to it
    /// (dialing when there is none), sends `req` and waits for the answer, at most
    /// [`RELAY_RESPONSE_DEADLINE`] in all.
    pub async fn open_relay(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer_id: &str,
        req: &RelayRequest,
    ) -> Result<RelayStreams, RelayError> {
        let peer = || peer_id.to_string();
        let conn = self
            .connection(addr)
            .await
            .ok_or_else(|| RelayError::NoConnection { peer: peer(), addr })?;
        let actual = tls::peer_node_id(&conn);
        if actual.as_deref() != Some(peer_id) {
            return Err(RelayError::WrongPeer {
                peer: peer(),
                actual,
            });
        }
        let io = |e: std::io::Error| RelayError::Stream {
            peer: peer(),
            source: e,
        };
        let frame = relay::frame(req).map_err(|source| RelayError::Codec {
            peer: peer(),
            source,
        })?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(e.into()))?;
            send.write_all(&frame).await.map_err(|e| io(e.into()))?;
            let body = relay::read_frame(&mut recv, relay::MAX_RELAY_RESPONSE)
                .await
                .map_err(|e| match e {
                    // Reset with the refusal code: a request dropped unanswered.
                    relay::FrameError::Read(quinn::ReadExactError::ReadError(
                        quinn::ReadError::Reset(code),
                    )) if code == relay::RELAY_REFUSED.into() => RelayError::Refused {
                        peer: peer(),
                        reason: RefuseReason::Unanswered,
                    },
                    e => io(std::io::Error::other(e)),
                })?;
            match codec::decode::<RelayResponse>(&body) {
                Ok(RelayResponse::Accepted) => {
                    let bytes = self
                        .relays
                        .get()
                        .map(|r| r.metrics.relay_bytes(peer_id))
                        .unwrap_or_default();
                    let widened = self.widening.widen(&conn);
                    Ok(RelayStreams::new(send, recv, bytes, None, widened))
                }
                Ok(RelayResponse::Refused(reason)) => Err(RelayError::Refused {
                    peer: peer(),
                    reason,
                }),
                Err(source) => Err(RelayError::Codec {
                    peer: peer(),
                    source,
                }),
            }
        };
        tokio::time::timeout(RELAY_RESPONSE_DEADLINE, exchange)
            .await
            .map_err(|_| RelayError::Timeout { peer: peer() })?
    }

    /// The live connection to `peer`, dialed and adopted as its link's when there is none.
    async fn connection(self: &Arc<Self>, peer: SocketAddr) -> Option<quinn::Connection> {
        if self.blocked(peer) {
            return None;
        }
        let slot = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(|l| l.conn.clone());
        let live = slot.and_then(|s| {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|c| c.close_reason().is_none())
        });
        if live.is_some() {
            return live;
        }
        let conn = connect(self, peer).await?;
        self.adopt(peer, &conn);
        tokio::spawn(read_loop(self.clone(), conn.clone()));
        Some(conn)
    }

    /// Takes new TLS configurations (a reload): every handshake from now on, accepted or
    /// dialed, uses them. Open connections are left alone; see [`Transport::close_where`].
    pub fn set_tls(&self, server: quinn::ServerConfig, client: quinn::ClientConfig) {
        self.endpoint.set_server_config(Some(server));
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// Closes every open connection whose peer certificate (DER; empty if none) `close`
    /// picks, with `reason`; returns how many. A link whose connection is closed dials again
    /// on its next message, with the current TLS configuration.
    pub fn close_where(&self, close: impl Fn(&[u8]) -> bool, reason: &'static [u8]) -> usize {
        let conns: Vec<quinn::Connection> = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut closed = 0;
        for conn in conns {
            let der = tls::peer_cert(&conn).unwrap_or_default();
            if close(&der) {
                conn.close(0u32.into(), reason);
                closed += 1;
            }
        }
        closed
    }

    /// Queues a SWIM packet to `peer`; never waits.
    pub fn send_datagram(self: &Arc<Self>, peer: SocketAddr, data: Bytes) {
        self.send(peer, Out::Datagram(data));
    }

    /// Queues a replication message to `peer`; never waits.
    pub fn send_stream(self: &Arc<Self>, peer: SocketAddr, data: Bytes) {
        self.send(peer, Out::Stream(data));
    }

    #[cfg(feature = "test-util")]
    fn blocked(&self, peer: SocketAddr) -> bool {
        self.faults.is_blocked(peer)
    }

    #[cfg(not(feature = "test-util"))]
    fn blocked(&self, _peer: SocketAddr) -> bool {
        false
    }

    fn send(self: &Arc<Self>, peer: SocketAddr, out: Out) {
        if self.blocked(peer) {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if !links.contains_key(&peer) && links.len() >= self.max_links() {
            self.stats.links_full.fetch_add(1, Ordering::Relaxed);
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let link = links
            .entry(peer)
            .or_insert_with(|| self.clone().start_link(peer, None));
        if link.tx.try_send(out).is_err() {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bounds the links to peers (each a task and a connection), and the connections at twice
    /// that (both sides of a pair may dial at once): a new link beyond it is not made, and an
    /// incoming connection beyond either is refused.
    pub fn set_max_links(&self, max: usize) {
        self.max_links.store(max.max(1), Ordering::Relaxed);
    }

    fn max_links(&self) -> usize {
        self.max_links.load(Ordering::Relaxed)
    }

    /// Links to peers now.
    pub fn link_count(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Closes the links that are older than `grace` and whose peer neither `keep_addr` (by
    /// address) nor `keep_id` (by the node id of its certificate, for a peer whose source
    /// address is not the one it advertises) keeps; returns how many. The grace lets a
    /// joining peer's first messages make it a member before its link is judged.
    pub fn retain(
        &self,
        keep_addr: impl Fn(SocketAddr) -> bool,
        keep_id: impl Fn(&str) -> bool,
        grace: Duration,
    ) -> usize {
        let now = Instant::now();
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<SocketAddr> = links
            .iter()
            .filter(|(addr, link)| {
                if now.saturating_duration_since(link.created) < grace || keep_addr(**addr) {
                    return false;
                }
                let conn = link.conn.lock().unwrap_or_else(|p| p.into_inner());
                let id = conn.as_ref().and_then(tls::peer_node_id);
                !id.is_some_and(|id| keep_id(&id))
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in &gone {
            if let Some(link) = links.remove(addr) {
                if let Some(c) = link.conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    c.close(0u32.into(), b"not a member");
                }
            }
        }
        self.stats
            .links_pruned
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        gone.len()
    }

    /// Hands a received message to the mesh task, within [`INBOX_BYTES`].
    fn deliver(&self, from: SocketAddr, peer: &Peer, kind: Kind, data: Bytes) {
        if self.blocked(from) {
            return;
        }
        let counter = match kind {
            Kind::Swim => &self.stats.datagrams_in,
            Kind::Repl => &self.stats.streams_in,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let bytes = data.len();
        self.stats
            .bytes_in
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let before = self.inbox_bytes.fetch_add(bytes, Ordering::Relaxed);
        let held = Held {
            bytes,
            total: self.inbox_bytes.clone(),
        };
        if before.saturating_add(bytes) > INBOX_BYTES {
            self.stats.inbox_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let msg = Inbound {
            from,
            peer_id: peer.id.clone(),
            peer_cert: peer.cert.clone(),
            kind,
            data,
            _held: held,
        };
        if self.inbox.try_send(msg).is_err() {
            self.stats.inbox_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %from, "mesh inbox full; message dropped");
        }
    }

    /// The QUIC round-trip time to a peer, while a connection to it is up and answers: `None`
    /// when what this node sent it has gone unanswered for [`UNANSWERED`] (a cut path, over
    /// which QUIC's last estimate would be stale). Looked at often (each mesh state), so a
    /// cut shows within about [`UNANSWERED`] of traffic going unanswered.
    pub fn rtt(&self, peer: SocketAddr) -> Option<Duration> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.get(&peer)?;
        let conn = link.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = conn.as_ref().filter(|c| c.close_reason().is_none())?;
        let mut heard = link.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.answering(conn, Instant::now()).then(|| conn.rtt())
    }

    /// Closes the link to a peer (it is re-opened on the next send).
    pub fn forget(&self, peer: SocketAddr) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.remove(&peer) {
            if let Some(c) = link.conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
                c.close(0u32.into(), b"forgotten");
            }
        }
    }

    /// Waits, at most `limit`, until every link has sent what was queued on it.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pending = {
                let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
                links
                    .values()
                    .any(|l| l.tx.capacity() < l.tx.max_capacity())
            };
            if !pending || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes every connection and stops accepting.
    pub async fn close(&self) {
        self.stop.cancel();
        self.endpoint.close(0u32.into(), b"leaving");
        // Give the close frames a chance to leave, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn start_link(self: Arc<Self>, peer: SocketAddr, conn: Option<quinn::Connection>) -> Link {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let slot = Arc::new(Mutex::new(conn));
        tokio::spawn(link_task(self, peer, rx, slot.clone()));
        Link {
            tx,
            conn: slot,
            created: Instant::now(),
            heard: Mutex::new(Heard::default()),
        }
    }

    /// Registers an accepted connection as the link to its peer, so replies reuse it.
    fn adopt(self: &Arc<Self>, peer: SocketAddr, conn: &quinn::Connection) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(&peer) {
            Some(link) => {
                // The newest connection from a peer wins: a peer that restarted at the same
                // address dials anew, while the old connection to its dead process still
                // looks open until it idles out (30 s) and would swallow every reply. The old
                // one is not closed here: when both sides dial at once, each keeps the
                // other's, and closing would tear down both.
                *link.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
            }
            // The accept loop refuses connections beyond the bound; one may still slip in
            // while another is handshaking. It is read but gets no link: replies go out on
            // a link of their own when there is room.
            None if links.len() >= self.max_links() => {
                self.stats.links_full.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let link = self.clone().start_link(peer, Some(conn.clone()));
                links.insert(peer, link);
            }
        }
    }

    /// Whether an incoming connection from `peer` is over the bounds.
    fn over_bounds(&self, peer: SocketAddr) -> Option<&AtomicU64> {
        if self.endpoint.open_connections() >= self.max_links().saturating_mul(2) {
            return Some(&self.stats.connections_full);
        }
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if !links.contains_key(&peer) && links.len() >= self.max_links() {
            return Some(&self.stats.links_full);
        }
        None
    }
}

/// The endpoint's UDP socket, with a receive buffer large enough for a joining node's burst:
/// every member handshakes with it at once, and the default 208 KiB overflows at 50 nodes,
/// dropping handshake packets (measured by the mesh benchmark).
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::], as quinn does.
        let _ = socket.set_only_v6(false);
    }
    // The kernel caps this at net.core.rmem_max; a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Receive buffer asked of the kernel for the endpoint's socket.
const RECV_BUFFER: usize = 4 << 20;

async fn accept_loop(t: Arc<Transport>) {
    loop {
        let incoming = tokio::select! {
            _ = t.stop.cancelled() => return,
            i = t.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let t = t.clone();
        tokio::spawn(async move {
            let from = incoming.remote_address();
            if t.blocked(from) {
                incoming.ignore();
                return;
            }
            if let Some(counter) = t.over_bounds(from) {
                counter.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                return;
            }
            match incoming.await {
                Ok(conn) => {
                    t.adopt(from, &conn);
                    read_loop(t, conn).await;
                }
                Err(e) => {
                    t.stats.refused.fetch_add(1, Ordering::Relaxed);
                    if is_revocation(&e) {
                        t.stats.revoked.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(peer = %from, "mesh connection refused: {e}");
                }
            }
        });
    }
}

async fn link_task(
    t: Arc<Transport>,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Out>,
    slot: Arc<Mutex<Option<quinn::Connection>>>,
) {
    let in_flight = Arc::new(Semaphore::new(STREAMS_OUT));
    while let Some(out) = rx.recv().await {
        if t.blocked(peer) {
            t.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let current = slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|c| c.close_reason().is_none());
        let conn = match current {
            Some(c) => c,
            None => match connect(&t, peer).await {
                Some(c) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                    tokio::spawn(read_loop(t.clone(), c.clone()));
                    c
                }
                None => {
                    t.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match out {
            Out::Datagram(data) => {
                let len = data.len() as u64;
                match conn.send_datagram(data) {
                    Ok(()) => {
                        t.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        t.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(e) => {
                        t.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "datagram not sent: {e}");
                    }
                }
            }
            Out::Stream(data) => {
                // Streams go out on their own task so a slow peer's flow control never holds
                // up the SWIM datagrams queued behind; a bounded number of them.
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    t.stats.streams_out_full.fetch_add(1, Ordering::Relaxed);
                    t.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let t = t.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let len = data.len() as u64;
                    let sent = async {
                        let mut s = conn.open_uni().await?;
                        s.write_all(&data).await?;
                        s.finish()?;
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), sent).await {
                        Ok(Ok(())) => {
                            t.stats.streams_out.fetch_add(1, Ordering::Relaxed);
                            t.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                        }
                        _ => {
                            t.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }
}

async fn connect(t: &Transport, peer: SocketAddr) -> Option<quinn::Connection> {
    let client = t.client.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let connecting = match t.endpoint.connect_with(client, peer, tls::MESH_SERVER_NAME) {
        Ok(c) => c,
        Err(e) => {
            t.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "cannot connect: {e}");
            return None;
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            t.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            if is_handshake_refusal(&e) {
                // Our side or theirs refused the other's certificate: a peer of another CA,
                // or a misconfigured seed. Worth a warning, unlike an unreachable peer.
                t.stats.refused.fetch_add(1, Ordering::Relaxed);
                if is_revocation(&e) {
                    t.stats.revoked.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(%peer, "mesh handshake refused: {e}; is this peer's certificate from this cluster's CA?");
            } else {
                tracing::debug!(%peer, "connect failed: {e}");
            }
            None
        }
        Err(_) => {
            t.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connect timed out");
            None
        }
    }
}

/// Whether a failed connect was a TLS refusal (a certificate one side would not accept),
/// as opposed to a peer that did not answer.
fn is_handshake_refusal(e: &quinn::ConnectionError) -> bool {
    // TLS alerts travel as QUIC CRYPTO_ERROR codes 0x100-0x1ff, whichever side raised them.
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

/// Whether a failed handshake was refused for a revoked certificate (the
/// `certificate_revoked` alert, whichever side raised it).
fn is_revocation(e: &quinn::ConnectionError) -> bool {
    let revoked =
        |code: quinn::TransportErrorCode| u64::from(code) == 0x100 + u64::from(tls::REVOKED_ALERT);
    match e {
        quinn::ConnectionError::TransportError(t) => revoked(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => revoked(c.error_code),
        _ => false,
    }
}

/// Removes a connection from [`Transport::conns`] when its reader ends, however it ends.
struct Registered<'a> {
    t: &'a Transport,
    id: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.t
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Forwards what a connection receives to the mesh task until it closes: datagrams here, each
/// stream on a task of its own (at most [`MAX_STREAMS_IN`], QUIC's bound), read
/// [`READERS_PER_CONN`] at a time.
async fn read_loop(t: Arc<Transport>, conn: quinn::Connection) {
    let from = conn.remote_address();
    t.conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(conn.stable_id(), conn.clone());
    let _registered = Registered {
        t: &t,
        id: conn.stable_id(),
    };
    let peer = Arc::new(Peer {
        id: tls::peer_node_id(&conn),
        cert: tls::peer_cert(&conn).map(Bytes::from),
    });
    let readers = Arc::new(Semaphore::new(READERS_PER_CONN));
    loop {
        tokio::select! {
            _ = t.stop.cancelled() => return,
            d = conn.read_datagram() => match d {
                Ok(d) => t.deliver(from, &peer, Kind::Swim, d),
                Err(_) => return,
            },
            s = conn.accept_uni() => match s {
                Ok(s) => {
                    tokio::spawn(read_stream(t.clone(), s, from, peer.clone(), readers.clone()));
                }
                Err(_) => return,
            },
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tokio::spawn(serve_relay(t.clone(), peer.clone(), conn.clone(), send, recv));
                }
                Err(_) => return,
            },
        }
    }
}

/// Reads one replication message, within [`MAX_STREAM`] and [`STREAM_DEADLINE`]; a stream
/// over either is stopped (the peer learns why by the code) and counted.
async fn read_stream(
    t: Arc<Transport>,
    mut s: quinn::RecvStream,
    from: SocketAddr,
    peer: Arc<Peer>,
    readers: Arc<Semaphore>,
) {
    let Ok(_reader) = readers.acquire_owned().await else {
        return;
    };
    match tokio::time::timeout(STREAM_DEADLINE, s.read_to_end(MAX_STREAM)).await {
        Ok(Ok(data)) => t.deliver(from, &peer, Kind::Repl, Bytes::from(data)),
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            t.stats.oversized.fetch_add(1, Ordering::Relaxed);
            let _ = s.stop(TOO_LARGE.into());
            tracing::debug!(peer = %from, "mesh message over {MAX_STREAM} bytes; stream stopped");
        }
        // The peer reset it, or the connection went away.
        Ok(Err(_)) => {}
        Err(_) => {
            t.stats.slow_streams.fetch_add(1, Ordering::Relaxed);
            let _ = s.stop(TOO_SLOW.into());
            tracing::debug!(peer = %from, "mesh message not whole after {STREAM_DEADLINE:?}; stream stopped");
        }
    }
}

/// Checks a relay stream as far as the mesh can (the peer, the caps, the request's size,
/// deadline and hop count) and hands it to the node; a refusal is answered and counted.
async fn serve_relay(
    t: Arc<Transport>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(serve) = t.relays.get() else {
        // Nobody serves relays (the mesh is starting): not counted, nothing to count with.
        relay::refuse_on(&mut send, &mut recv, RefuseReason::NotRelaying).await;
        return;
    };
    let id = peer.id.clone().unwrap_or_default();
    let refused = |reason: RefuseReason| {
        serve.metrics.relay_refused(reason.label());
        tracing::debug!(peer = %id, "relay stream refused: {reason}");
    };
    let standing = (serve.standing)(&id, peer.cert.as_deref());
    let slot = match serve.open.take(&id, standing) {
        Ok(slot) => slot,
        Err(reason) => {
            refused(reason);
            relay::refuse_on(&mut send, &mut recv, reason).await;
            return;
        }
    };
    let read = relay::read_frame(&mut recv, MAX_RELAY_REQUEST);
    let request = match tokio::time::timeout(RELAY_REQUEST_DEADLINE, read).await {
        Err(_) => Err(RefuseReason::Deadline),
        Ok(Err(_)) => Err(RefuseReason::BadRequest),
        Ok(Ok(body)) => codec::decode::<RelayRequest>(&body)
            .map_err(|_| RefuseReason::BadRequest)
            .and_then(|req| relay::check_request(&req).map(|()| req)),
    };
    let request = match request {
        Ok(req) => req,
        Err(reason) => {
            refused(reason);
            relay::refuse_on(&mut send, &mut recv, reason).await;
            return;
        }
    };
    let bytes = serve.metrics.relay_bytes(&id);
    let incoming = IncomingRelay::new(
        request,
        id.clone(),
        (send, recv),
        slot,
        (t.widening.clone(), conn),
        bytes,
        serve.metrics.clone(),
    );
    if let Err(e) = serve.queue.try_send(incoming) {
        let (reason, incoming) = match e {
            mpsc::error::TrySendError::Full(i) => (RefuseReason::Busy, i),
            // The node stopped taking requests (shutting down).
            mpsc::error::TrySendError::Closed(i) => (RefuseReason::NotRelaying, i),
        };
        // Counted by the refusal itself.
        tracing::debug!(peer = %id, "relay stream refused: {reason}");
        incoming.refuse(reason).await;
        return;
    }
    serve
        .metrics
        .relay_stream(&id, crate::metrics::Dir::Received);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_stops_answering_what_is_sent_is_unheard_until_it_answers_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let rtt = ms(100);
        let mut h = Heard::default();
        assert!(h.update(1, 10, 10, rtt, t0), "a new connection");
        // Sent and answered: heard.
        assert!(h.update(1, 12, 11, rtt, t0 + ms(500)));
        // Nothing sent, nothing received (an idle link): still heard, however long.
        assert!(h.update(1, 12, 11, rtt, t0 + ms(60_000)));
        // Sent, unanswered: heard while within UNANSWERED...
        let sent = t0 + ms(61_000);
        assert!(h.update(1, 12, 12, rtt, sent));
        assert!(h.update(1, 12, 13, rtt, sent + ms(900)));
        // ...then not, counting from the first unanswered send.
        assert!(!h.update(1, 12, 14, rtt, sent + UNANSWERED));
        // A long path gets three of its round trips.
        let mut far = Heard::default();
        far.update(1, 0, 0, ms(500), t0);
        far.update(1, 0, 1, ms(500), t0 + ms(10));
        assert!(far.update(1, 0, 1, ms(500), t0 + ms(1_400)));
        assert!(!far.update(1, 0, 1, ms(500), t0 + ms(1_510)));
        // Anything received: heard again.
        assert!(h.update(1, 13, 14, rtt, sent + ms(5_000)));
        // A new connection starts afresh.
        h.update(1, 13, 20, rtt, sent + ms(5_100));
        assert!(h.unanswered_since.is_some());
        assert!(h.update(2, 0, 0, rtt, sent + ms(9_000)));
        assert!(h.unanswered_since.is_none());
    }
}
