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

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard_gossip::{Mesh, RelayError, RelayRequest, RelayStreams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    let (client_rd, client_wr) = tokio::io::split(client);
    let (origin_rd, origin_wr) = tokio::io::split(origin);
    let activity = Activity::new();
    let moved = [AtomicU64::new(0), AtomicU64::new(0)];
    let delivered = |dir: Direction, n: usize| {
        moved[dir as usize].fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
        on_bytes(dir, n as u64);
    };
    let up = pin!(copy(
        client_rd,
        origin_wr,
        Direction::ClientToOrigin,
        &delivered
    ));
    let down = pin!(copy(
        origin_rd,
        client_wr,
        Direction::OriginToClient,
        &delivered
    ));
    let end = drive(up, down, &activity, idle_timeout).await;
    RelayOutcome {
        client_to_origin: moved[Direction::ClientToOrigin as usize].load(Ordering::Relaxed),
        origin_to_client: moved[Direction::OriginToClient as usize].load(Ordering::Relaxed),
        end,
    }
}

/// Runs both directions and the idle timer until both are done, one fails, or the timer
/// finds no activity since it was armed.
async fn drive<A, B>(
    mut up: std::pin::Pin<&mut A>,
    mut down: std::pin::Pin<&mut B>,
    activity: &Activity,
    idle_timeout: Duration,
) -> EndReason
where
    A: Future<Output = Result<(), EndReason>>,
    B: Future<Output = Result<(), EndReason>>,
{
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let deadline = activity.last() + idle_timeout;
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(end) => return end,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(end) => return end,
            },
            _ = sleep_until(deadline) => {
                // Bytes may have moved since the deadline was taken: only a full idle
                // period ends the connection.
                if activity.last() + idle_timeout <= tokio::time::Instant::now() {
                    return EndReason::IdleTimeout;
                }
            }
        }
    }
    EndReason::Closed
}

/// One direction: reads `src` until EOF, writing each read to `dst`, then shuts `dst`'s
/// write half (the half-close passed on).
async fn copy<R, W>(
    mut src: R,
    mut dst: W,
    dir: Direction,
    delivered: &impl Fn(Direction, usize),
) -> Result<(), EndReason>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (src_reset, dst_reset) = match dir {
        Direction::ClientToOrigin => (EndReason::ClientReset, EndReason::OriginReset),
        Direction::OriginToClient => (EndReason::OriginReset, EndReason::ClientReset),
    };
    let mut buf = vec![0u8; BUF];
    loop {
        let n = src.read(&mut buf).await.map_err(|_| src_reset)?;
        if n == 0 {
            return dst.shutdown().await.map_err(|_| dst_reset);
        }
        dst.write_all(&buf[..n]).await.map_err(|_| dst_reset)?;
        delivered(dir, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

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
