//! The data path of a connection relayed through a peer node (`core::relay` picks the path):
//! [`open`] asks the peer for a relay stream on the mesh's QUIC connection and sends the
//! origin's first bytes down it, and [`pipe`] moves bytes between two halves until both are
//! done, either fails, or the connection goes idle. The receiving node pipes client <->
//! stream; the peer carrying it pipes stream <-> origin.
//!
//! `pipe` copies through a userspace buffer: a QUIC stream has no file descriptor to splice,
//! so the direct path's splice relay (`relay`) cannot serve it. Its half-close, idle timeout
//! and outcome are the direct path's: a FIN one way shuts down the other side's write half
//! and the other direction keeps going.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use switchyard_gossip::{Mesh, RelayError, RelayRequest, RelayStreams};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::sleep_until;

use super::relay::{Direction, EndReason, RelayOutcome};
use crate::clock::Activity;

/// Each direction's copy buffer: large enough that a bulk transfer moves in few reads, held
/// only while the connection is open.
const BUF: usize = 64 << 10;

/// Why a relay could not be had: the connection then goes direct.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("relay peer {peer} did not answer within the connect timeout")]
    Timeout { peer: String },
    #[error("sending the first bytes to relay peer {peer}: {source}")]
    FirstBytes {
        peer: String,
        #[source]
        source: std::io::Error,
    },
}

impl OpenError {
    /// The `reason` label of `switchyard_relay_fallbacks_total`: the peer's refusal reason,
    /// `timeout`, or `error`.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Relay(RelayError::Refused { reason, .. }) => reason.label(),
            OpenError::Relay(RelayError::Timeout { .. }) | OpenError::Timeout { .. } => "timeout",
            _ => "error",
        }
    }
}

/// Opens a relay stream through `peer` for `request` and writes `first` (the PROXY header
/// and whatever the client sent already) into it, within `within`.
pub async fn open(
    mesh: &Mesh,
    peer: &str,
    request: RelayRequest,
    first: &[u8],
    within: Duration,
) -> Result<RelayStreams, OpenError> {
    let opened = tokio::time::timeout(within, mesh.open_relay(peer, request))
        .await
        .map_err(|_| OpenError::Timeout { peer: peer.into() })?;
    let mut streams = opened?;
    if !first.is_empty() {
        streams
            .write_all(first)
            .await
            .map_err(|source| OpenError::FirstBytes {
                peer: peer.into(),
                source,
            })?;
    }
    Ok(streams)
}

/// Pipes `client` <-> `origin` until both directions have seen EOF (each passed on as a
/// shutdown of the other side's write half), either side fails, or no byte moved either way
/// for `idle_timeout`. `on_bytes` is called as bytes are delivered. Both are closed when it
/// returns.
///
/// Both directions and the idle timer are polled by hand in one future, on the two halves
/// as they are: no `tokio::io::split` (whose halves take a lock on every poll) and no select
/// over three futures, so a wake-up on one side costs one poll of each direction.
pub async fn pipe<C, O>(
    client: C,
    origin: O,
    idle_timeout: Duration,
    on_bytes: impl Fn(Direction, u64),
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite,
    O: AsyncRead + AsyncWrite,
{
    // An unbounded timeout must not overflow Instant arithmetic (as in `relay`).
    let idle_timeout = idle_timeout.min(Duration::from_secs(86_400 * 365 * 30));
    let mut client = pin!(client);
    let mut origin = pin!(origin);
    let activity = Activity::new();
    let mut up = Copy::new(Direction::ClientToOrigin);
    let mut down = Copy::new(Direction::OriginToClient);
    let mut delivered = |dir: Direction, n: usize| {
        activity.touch();
        on_bytes(dir, n as u64);
    };
    let mut idle = pin!(sleep_until(activity.last() + idle_timeout));
    let end = poll_fn(|cx| {
        loop {
            if !up.done {
                if let Poll::Ready(Err(end)) =
                    up.poll(cx, client.as_mut(), origin.as_mut(), &mut delivered)
                {
                    return Poll::Ready(end);
                }
            }
            if !down.done {
                if let Poll::Ready(Err(end)) =
                    down.poll(cx, origin.as_mut(), client.as_mut(), &mut delivered)
                {
                    return Poll::Ready(end);
                }
            }
            if up.done && down.done {
                return Poll::Ready(EndReason::Closed);
            }
            if idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Bytes may have moved since the timer was armed: only a full idle period ends
            // the connection; otherwise the timer is armed again from the last activity.
            let deadline = activity.last() + idle_timeout;
            if deadline <= tokio::time::Instant::now() {
                return Poll::Ready(EndReason::IdleTimeout);
            }
            idle.as_mut().reset(deadline);
        }
    })
    .await;
    RelayOutcome {
        client_to_origin: up.moved,
        origin_to_client: down.moved,
        end,
    }
}

/// One direction's copy: reads its source until EOF, writing each read whole to its
/// destination, then shuts the destination's write half (the half-close passed on).
struct Copy {
    dir: Direction,
    /// Allocated on the first read, held while the connection is open.
    buf: Vec<u8>,
    /// `buf[pos..len]` is read and not yet written.
    pos: usize,
    len: usize,
    /// The source is at EOF: the destination is being shut down.
    eof: bool,
    /// EOF passed on: nothing more to do.
    done: bool,
    moved: u64,
}

impl Copy {
    fn new(dir: Direction) -> Self {
        Copy {
            dir,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves what it can: `Ready(Ok)` once done, `Pending` when waiting on either side.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        delivered: &mut impl FnMut(Direction, usize),
    ) -> Poll<Result<(), EndReason>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let (src_reset, dst_reset) = match self.dir {
            Direction::ClientToOrigin => (EndReason::ClientReset, EndReason::OriginReset),
            Direction::OriginToClient => (EndReason::OriginReset, EndReason::ClientReset),
        };
        loop {
            if self.pos < self.len {
                let n = ready!(dst.as_mut().poll_write(cx, &self.buf[self.pos..self.len]))
                    .map_err(|_| dst_reset)?;
                if n == 0 {
                    return Poll::Ready(Err(dst_reset));
                }
                self.pos += n;
                if self.pos == self.len {
                    self.moved += self.len as u64;
                    delivered(self.dir, self.len);
                }
                continue;
            }
            if self.eof {
                ready!(dst.as_mut().poll_shutdown(cx)).map_err(|_| dst_reset)?;
                self.done = true;
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
            if self.buf.is_empty() {
                self.buf = vec![0u8; BUF];
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(src.as_mut().poll_read(cx, &mut rb)).map_err(|_| src_reset)?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
            } else {
                (self.pos, self.len) = (0, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    #[tokio::test]
    async fn pipe_passes_bytes_both_ways_and_each_half_close() {
        let (mut client, client_end) = duplex(1024);
        let (origin_end, mut origin) = duplex(1024);
        let piped = tokio::spawn(pipe(
            client_end,
            origin_end,
            Duration::from_secs(60),
            |_, _| {},
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "the client's half-close reaches the origin");
        // The other direction still flows after the client's FIN.
        origin.write_all(b"world!").await.unwrap();
        origin.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let out = piped.await.unwrap();
        assert_eq!(out.end, EndReason::Closed);
        assert_eq!((out.client_to_origin, out.origin_to_client), (5, 6));
    }

    #[tokio::test]
    async fn bytes_moving_keep_the_idle_timer_off_until_a_full_idle_period() {
        let (mut client, client_end) = duplex(1024);
        let (origin_end, mut origin) = duplex(1024);
        let idle = Duration::from_millis(200);
        let piped = tokio::spawn(pipe(client_end, origin_end, idle, |_, _| {}));
        let start = tokio::time::Instant::now();
        let mut got = [0u8; 1];
        // A byte every 100 ms for 600 ms: three idle timeouts' worth, never idle for one.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            origin.read_exact(&mut got).await.unwrap();
        }
        let out = piped.await.unwrap();
        assert_eq!(out.end, EndReason::IdleTimeout);
        assert!(start.elapsed() >= Duration::from_millis(600) + idle);
        assert_eq!((out.client_to_origin, out.origin_to_client), (6, 0));
    }

    #[tokio::test]
    async fn pipe_ends_a_connection_idle_for_the_timeout() {
        let (_client, client_end) = duplex(1024);
        let (origin_end, _origin) = duplex(1024);
        let out = pipe(
            client_end,
            origin_end,
            Duration::from_millis(100),
            |_, _| {},
        )
        .await;
        assert_eq!(out.end, EndReason::IdleTimeout);
    }
}
