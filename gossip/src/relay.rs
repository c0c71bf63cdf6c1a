//! Relay streams: a bidirectional QUIC stream on the mesh connection to a peer that carries
//! one client connection through that peer to an origin (issue 13).
//!
//! The asking side opens the stream and sends a [`RelayRequest`] frame: the load balancer,
//! pool and origin by their names in the shared config (never an address, so a member cannot
//! use a peer as an open proxy), the client's address for a PROXY header, and a hop count.
//! The serving side answers with a [`RelayResponse`] frame, accepted or refused with a
//! [`RefuseReason`], and on acceptance both sides pipe bytes until each half is closed.
//!
//! Here, the gossip side: the frames, and the checks that need only the mesh (the peer is a
//! member and not revoked, no second hop, streams per peer and in all, the request's size and
//! the time to receive it), each refusal counted. The node checks the names against its own
//! config and answers through [`IncomingRelay`]. [`check`] is the pure part of the checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
pub use crate::metrics::ByteCounters;
use crate::metrics::MeshMetrics;

/// Relay streams one peer may have open on this node at once; the next is refused
/// (`per_peer`). QUIC grants a few more ([`RELAY_STREAM_SLACK`]) so that an excess stream
/// reaches this node to be refused and counted, instead of waiting unseen in the opener.
pub const RELAY_STREAMS_PER_PEER: usize = 256;

/// Bidirectional streams QUIC grants beyond [`RELAY_STREAMS_PER_PEER`] on one connection.
pub const RELAY_STREAM_SLACK: usize = 16;

/// Relay streams open on this node at once, all peers together; the next is refused (`total`).
pub const RELAY_STREAMS_TOTAL: usize = 4096;

/// Largest request frame, length prefix excluded: three names and an address fit many times.
pub const MAX_RELAY_REQUEST: usize = 4 << 10;

/// Largest response frame, length prefix excluded.
pub(crate) const MAX_RELAY_RESPONSE: usize = 256;

/// How long the request may take to arrive whole; then the stream is cut (`deadline`).
pub const RELAY_REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long the asking side waits for the answer: the serving node checks its config and may
/// connect to the origin first.
pub const RELAY_RESPONSE_DEADLINE: Duration = Duration::from_secs(15);

/// Relay requests queued for the node to answer; beyond it they are refused (`busy`).
pub const RELAY_QUEUE: usize = 256;

/// QUIC stream error code: the relay stream was refused (the response frame says why when it
/// could be sent).
pub(crate) const RELAY_REFUSED: u32 = 16;

/// What the asking node wants relayed. Its serde shape is wire format: fields are never
/// reordered, and a change bumps [`codec::FORMAT_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest {
    /// The load balancer, as named in the shared config.
    pub load_balancer: String,
    /// The pool, as named in the shared config.
    pub pool: String,
    /// The origin, as named in the pool.
    pub origin: String,
    /// The client's address, for the PROXY header the origin may ask for.
    pub client: SocketAddr,
    /// Relays this request has already passed: 0 from the node that received the client.
    /// Anything else is refused (one hop at most).
    pub hops: u8,
}

/// The serving node's answer, before any data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayResponse {
    Accepted,
    Refused(RefuseReason),
}

/// Why a relay stream was refused. Variants are only ever appended (wire format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum RefuseReason {
    #[error("the asking node is not a member of this node's mesh")]
    NotMember,
    #[error("the asking node's certificate is revoked")]
    Revoked,
    #[error("the request has already been relayed (one hop at most)")]
    SecondHop,
    #[error("the asking node has {RELAY_STREAMS_PER_PEER} relay streams open here already")]
    PerPeer,
    #[error("this node has {RELAY_STREAMS_TOTAL} relay streams open already")]
    Total,
    #[error("the request was malformed or over {MAX_RELAY_REQUEST} bytes")]
    BadRequest,
    #[error("the request did not arrive within the deadline")]
    Deadline,
    #[error("this node has too many relay requests waiting to be answered")]
    Busy,
    #[error("the load balancer, pool or origin is not in this node's config")]
    NotInConfig,
    #[error("this node does not reach the origin")]
    OriginDown,
    #[error("this node does not relay (relay is off, or it is draining)")]
    NotRelaying,
    #[error("this node is stopping, or dropped the request unanswered")]
    Unanswered,
    #[error("the origin is disabled in this node's config")]
    OriginDisabled,
}

impl RefuseReason {
    /// The `reason` label of `mesh_relay_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::NotMember => "not_member",
            RefuseReason::Revoked => "revoked",
            RefuseReason::SecondHop => "second_hop",
            RefuseReason::PerPeer => "per_peer",
            RefuseReason::Total => "total",
            RefuseReason::BadRequest => "bad_request",
            RefuseReason::Deadline => "deadline",
            RefuseReason::Busy => "busy",
            RefuseReason::NotInConfig => "not_in_config",
            RefuseReason::OriginDown => "origin_down",
            RefuseReason::NotRelaying => "not_relaying",
            RefuseReason::Unanswered => "unanswered",
            RefuseReason::OriginDisabled => "origin_disabled",
        }
    }
}

/// Why [`crate::Mesh::open_relay`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay peer {peer} is not a member of the mesh")]
    UnknownPeer { peer: String },
    #[error("no QUIC connection to relay peer {peer} ({addr})")]
    NoConnection { peer: String, addr: SocketAddr },
    #[error("relay peer {peer}'s connection is from {actual:?}, not {peer}")]
    WrongPeer {
        peer: String,
        actual: Option<String>,
    },
    #[error("relay peer {peer} refused: {reason}")]
    Refused { peer: String, reason: RefuseReason },
    #[error("relay peer {peer} did not answer within {RELAY_RESPONSE_DEADLINE:?}")]
    Timeout { peer: String },
    #[error("relay stream to {peer}: {source}")]
    Stream {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("relay frame to or from {peer}: {source}")]
    Codec {
        peer: String,
        #[source]
        source: CodecError,
    },
}

/// What the mesh knows of the asking peer, for [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStanding {
    /// A member SWIM believes alive or suspect.
    pub member: bool,
    /// Its id, or the certificate held of it, is revoked.
    pub revoked: bool,
}

/// The mesh's checks of a relay stream before its request is read: the peer in good standing,
/// and room for one more stream of it (`open_of_peer`) and in all (`open_total`).
pub fn check(
    standing: PeerStanding,
    open_of_peer: usize,
    open_total: usize,
) -> Result<(), RefuseReason> {
    if standing.revoked {
        return Err(RefuseReason::Revoked);
    }
    if !standing.member {
        return Err(RefuseReason::NotMember);
    }
    if open_of_peer >= RELAY_STREAMS_PER_PEER {
        return Err(RefuseReason::PerPeer);
    }
    if open_total >= RELAY_STREAMS_TOTAL {
        return Err(RefuseReason::Total);
    }
    Ok(())
}

/// The request's own check, once read: no second hop.
pub fn check_request(req: &RelayRequest) -> Result<(), RefuseReason> {
    if req.hops != 0 {
        return Err(RefuseReason::SecondHop);
    }
    Ok(())
}

/// A frame: a 2-byte big-endian length, then a codec message (version byte, bincode body).
pub(crate) fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = codec::encode(msg)?;
    let len = u16::try_from(body.len()).map_err(|_| CodecError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads one frame of at most `max` bytes: an error when the stream ends first, or the
/// length prefix is over `max` (nothing of the body is read then).
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len).await.map_err(FrameError::Read)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(FrameError::Read)?;
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("{0}")]
    Read(quinn::ReadExactError),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Open relay streams per peer and in all; a [`Slot`] is one of them.
#[derive(Debug, Default)]
pub(crate) struct Open {
    per_peer: Mutex<HashMap<String, usize>>,
}

impl Open {
    /// Takes a slot for `peer` if [`check`] allows, with the peer's `standing`.
    pub(crate) fn take(
        self: &Arc<Self>,
        peer: &str,
        standing: PeerStanding,
    ) -> Result<Slot, RefuseReason> {
        let mut map = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().sum();
        check(standing, map.get(peer).copied().unwrap_or(0), total)?;
        *map.entry(peer.to_string()).or_insert(0) += 1;
        Ok(Slot {
            open: self.clone(),
            peer: peer.to_string(),
        })
    }
}

/// One open relay stream of a peer, given back when dropped (the stream is done).
#[derive(Debug)]
pub struct Slot {
    open: Arc<Open>,
    peer: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.open.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut map, &self.peer);
    }
}

/// Gives back one of `key`'s count in `map`, dropping the entry at zero (so the map holds only
/// what is open); true when that was the last.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) -> bool {
    let Some(n) = map.get_mut(key) else {
        return false;
    };
    *n -= 1;
    if *n > 0 {
        return false;
    }
    map.remove(key);
    true
}

/// The connection-level QUIC receive window of a connection that carries at least one
/// accepted relay stream: two relayed connections at a full stream window (see `transport`).
pub const RELAY_CONN_WINDOW: u32 = 32 << 20;

/// Accepted relay streams open per QUIC connection. The first widens the connection's receive
/// window to [`RELAY_CONN_WINDOW`]; when the last ends it narrows back, so a connection that
/// carries only gossip keeps gossip's bound.
#[derive(Debug)]
pub(crate) struct Widening {
    narrow: u32,
    per_conn: Mutex<HashMap<usize, usize>>,
}

impl Widening {
    pub(crate) fn new(narrow: u32) -> Arc<Self> {
        Arc::new(Widening {
            narrow,
            per_conn: Mutex::new(HashMap::new()),
        })
    }

    /// One more relay stream on `conn`, until the guard is dropped.
    pub(crate) fn widen(self: &Arc<Self>, conn: &quinn::Connection) -> Widened {
        let mut map = self.per_conn.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(conn.stable_id()).or_insert(0);
        if *n == 0 {
            conn.set_receive_window(quinn::VarInt::from_u32(RELAY_CONN_WINDOW));
        }
        *n += 1;
        Widened {
            widening: self.clone(),
            conn: conn.clone(),
        }
    }
}

/// One relay stream's share of its connection's wide window.
#[derive(Debug)]
pub struct Widened {
    widening: Arc<Widening>,
    conn: quinn::Connection,
}

impl Drop for Widened {
    fn drop(&mut self) {
        let mut map = self
            .widening
            .per_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if release(&mut map, &self.conn.stable_id()) {
            self.conn
                .set_receive_window(quinn::VarInt::from_u32(self.widening.narrow));
        }
    }
}

/// An accepted relay stream: an `AsyncRead` + `AsyncWrite` pair (`shutdown` closes this
/// side's half), counting the bytes it carries per peer. The serving side's also holds its
/// slot among the open relay streams until dropped.
#[derive(Debug)]
pub struct RelayStreams {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    bytes: ByteCounters,
    _slot: Option<Slot>,
    _widened: Widened,
}

impl RelayStreams {
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        bytes: ByteCounters,
        slot: Option<Slot>,
        widened: Widened,
    ) -> Self {
        RelayStreams {
            send,
            recv,
            bytes,
            _slot: slot,
            _widened: widened,
        }
    }
}

impl AsyncRead for RelayStreams {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.recv).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.bytes
                .received
                .inc_by((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl AsyncWrite for RelayStreams {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.bytes.sent.inc_by(n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// A relay request that passed the mesh's checks, for the node to check against its config
/// and answer. Dropped unanswered, it is refused ([`RefuseReason::Unanswered`]).
pub struct IncomingRelay {
    pub request: RelayRequest,
    /// The asking node, from its certificate.
    pub from_peer: String,
    streams: Option<(quinn::SendStream, quinn::RecvStream, Slot)>,
    /// The connection it came on, widened when accepted.
    conn: (Arc<Widening>, quinn::Connection),
    bytes: ByteCounters,
    /// Counts the refusal, whether the node refuses or drops the request.
    metrics: MeshMetrics,
}

impl std::fmt::Debug for IncomingRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRelay")
            .field("request", &self.request)
            .field("from_peer", &self.from_peer)
            .finish_non_exhaustive()
    }
}

impl IncomingRelay {
    pub(crate) fn new(
        request: RelayRequest,
        from_peer: String,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        slot: Slot,
        conn: (Arc<Widening>, quinn::Connection),
        bytes: ByteCounters,
        metrics: MeshMetrics,
    ) -> Self {
        IncomingRelay {
            request,
            from_peer,
            streams: Some((send, recv, slot)),
            conn,
            bytes,
            metrics,
        }
    }

    /// Accepts: answers so and hands over the streams to pipe.
    pub async fn accept(mut self) -> Result<RelayStreams, RelayError> {
        let peer = self.from_peer.clone();
        let (mut send, recv, slot) = self.streams.take().ok_or(RelayError::Refused {
            peer: peer.clone(),
            reason: RefuseReason::Unanswered,
        })?;
        let frame = frame(&RelayResponse::Accepted).map_err(|source| RelayError::Codec {
            peer: peer.clone(),
            source,
        })?;
        send.write_all(&frame)
            .await
            .map_err(|e| RelayError::Stream {
                peer,
                source: e.into(),
            })?;
        let widened = self.conn.0.widen(&self.conn.1);
        Ok(RelayStreams::new(
            send,
            recv,
            self.bytes.clone(),
            Some(slot),
            widened,
        ))
    }

    /// Refuses, telling the asking node why; counted in `mesh_relay_refused_total{reason}`.
    pub async fn refuse(mut self, reason: RefuseReason) {
        if let Some((mut send, mut recv, _slot)) = self.streams.take() {
            self.metrics.relay_refused(reason.label());
            refuse_on(&mut send, &mut recv, reason).await;
        }
    }
}

impl Drop for IncomingRelay {
    fn drop(&mut self) {
        // Unanswered: no time to write a frame here, so the stream is reset with the code
        // that says refused.
        if let Some((mut send, mut recv, _)) = self.streams.take() {
            self.metrics.relay_refused(RefuseReason::Unanswered.label());
            let _ = send.reset(RELAY_REFUSED.into());
            let _ = recv.stop(RELAY_REFUSED.into());
        }
    }
}

/// Writes the refusal frame (best effort, bounded by QUIC's idle timeout at worst) and closes
/// both halves.
pub(crate) async fn refuse_on(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reason: RefuseReason,
) {
    let _ = recv.stop(RELAY_REFUSED.into());
    if let Ok(f) = frame(&RelayResponse::Refused(reason)) {
        let _ = tokio::time::timeout(RELAY_REQUEST_DEADLINE, send.write_all(&f)).await;
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: PeerStanding = PeerStanding {
        member: true,
        revoked: false,
    };

    #[test]
    fn check_refuses_each_case_and_names_it() {
        assert_eq!(check(GOOD, 0, 0), Ok(()));
        let revoked = PeerStanding {
            member: true,
            revoked: true,
        };
        assert_eq!(check(revoked, 0, 0), Err(RefuseReason::Revoked));
        let stranger = PeerStanding {
            member: false,
            revoked: false,
        };
        assert_eq!(check(stranger, 0, 0), Err(RefuseReason::NotMember));
        assert_eq!(
            check(GOOD, RELAY_STREAMS_PER_PEER, 0),
            Err(RefuseReason::PerPeer)
        );
        assert_eq!(
            check(GOOD, RELAY_STREAMS_PER_PEER - 1, RELAY_STREAMS_PER_PEER - 1),
            Ok(())
        );
        assert_eq!(
            check(GOOD, 0, RELAY_STREAMS_TOTAL),
            Err(RefuseReason::Total)
        );
    }

    #[test]
    fn a_second_hop_is_refused() {
        let mut req = RelayRequest {
            load_balancer: "web".into(),
            pool: "weu".into(),
            origin: "o1".into(),
            client: "192.0.2.1:4000".parse().unwrap(),
            hops: 0,
        };
        assert_eq!(check_request(&req), Ok(()));
        req.hops = 1;
        assert_eq!(check_request(&req), Err(RefuseReason::SecondHop));
    }

    #[test]
    fn slots_are_given_back() {
        let open = Arc::new(Open::default());
        let slots: Vec<Slot> = (0..RELAY_STREAMS_PER_PEER)
            .map(|_| open.take("a", GOOD).unwrap())
            .collect();
        assert_eq!(open.take("a", GOOD).unwrap_err(), RefuseReason::PerPeer);
        // Another peer still has room.
        let b = open.take("b", GOOD).unwrap();
        drop(slots);
        drop(b);
        assert!(open.per_peer.lock().unwrap().is_empty());
        assert!(open.take("a", GOOD).is_ok());
    }

    #[test]
    fn frames_round_trip_and_a_request_fits_its_bound() {
        let req = RelayRequest {
            load_balancer: "l".repeat(255),
            pool: "p".repeat(255),
            origin: "o".repeat(255),
            client: "[2001:db8::1]:65535".parse().unwrap(),
            hops: 0,
        };
        let f = frame(&req).unwrap();
        assert!(f.len() - 2 <= MAX_RELAY_REQUEST);
        let back: RelayRequest = codec::decode(&f[2..]).unwrap();
        assert_eq!(back, req);
        let r = frame(&RelayResponse::Refused(RefuseReason::SecondHop)).unwrap();
        assert!(r.len() - 2 <= MAX_RELAY_RESPONSE);
    }
}
