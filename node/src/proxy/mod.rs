//! The apps' TCP proxy: accept a client, apply `ip_rules` and `max_connections`, steer,
//! connect to the chosen origin (retrying others within `connect_timeout` and reporting
//! failed connects as passive health), send the PROXY header when asked and whatever the client
//! has already sent in the origin's first write, then hand both sockets to the relay
//! (`relay`). `proxy_protocol` writes (and parses) the PROXY header.
//!
//! When the relay decision (`crate::relays`) says the path to the chosen origin goes through
//! a peer node, the connection goes down a relay stream to that peer instead (`tunnel`), with
//! the same first bytes (the PROXY header names the real client and this app's address) and
//! the same half-close, idle timeout and drain; a relay that cannot be had is counted and the
//! connection goes direct, as it would have without relaying.
//!
//! A connect that fails by this node's own fault (out of descriptors, buffers or ports, or a
//! timeout while the node is overloaded) is the node's trouble, not the origin's: it goes to
//! the hub as such, and the client is turned away without trying other origins, which would
//! fail the same way.

pub mod proxy_protocol;
// splice(2), pipes and recv(2) through libc, each call with its SAFETY note.
#[allow(unsafe_code)]
pub mod relay;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{field::Empty, Instrument};

use switchyard_gossip::{Mesh, RelayRequest, RelayStreams};

use crate::config::{
    canonical_ip, AppConfig, OriginAddr, ProxyProtocol, RelayPolicy, SessionAffinity,
};
use crate::core::affinity::Affinity;
use crate::core::compiled::{CompiledConfig, OriginKey};
use crate::core::relay::Path;
use crate::core::steering::{self, Request};
use crate::core::trouble::{blame_io, blame_timeout, local_cause, Blame};
use crate::core::view::Snapshot;
use crate::hub::HealthHub;
use crate::locate::Locator;
use crate::metrics::{
    AppLabels, BytesDirection, BytesLabels, DecisionLabels, Metrics, RejectLabels,
    RelayFallbackLabels, RelayRole, RelayedCounters,
};
use crate::relays::{Relays, Target};
use relay::Direction;

/// What the proxy's tasks share with the rest of the node.
pub struct ProxyContext {
    pub health: Arc<HealthHub>,
    pub locator: Arc<Locator>,
    pub affinity: Arc<Affinity>,
    pub metrics: Arc<Metrics>,
    /// Per-(load balancer, pool) decision counters for the current compiled config.
    pub decisions: DecisionCounters,
    /// Connections being proxied, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Cancelled when the drain deadline passes: open connections end.
    pub abort: CancellationToken,
    /// The mesh, with `[mesh]`: relayed connections go through its peers.
    pub mesh: Option<Arc<Mesh>>,
    /// The path to each origin (direct or through a peer) and its hold-down.
    pub relays: Arc<Relays>,
}

/// Counters of one app, kept across reloads while the app keeps its name.
#[derive(Clone)]
pub struct AppStats {
    pub total: Counter,
    pub active: Gauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl AppStats {
    pub fn new(metrics: &Metrics, app: &str) -> AppStats {
        let l = AppLabels {
            app: app.to_string(),
        };
        let b = |direction| BytesLabels {
            app: app.to_string(),
            direction,
        };
        // One statement each: a family's read guard lives until the end of its statement,
        // and a second get_or_create on the same family would wait for it forever.
        let total = metrics.connections.get_or_create(&l).clone();
        let active = metrics.active.get_or_create(&l).clone();
        let bytes_in = metrics.bytes.get_or_create(&b(BytesDirection::In)).clone();
        let bytes_out = metrics.bytes.get_or_create(&b(BytesDirection::Out)).clone();
        AppStats {
            total,
            active,
            bytes_in,
            bytes_out,
        }
    }
}

/// One app as its listeners see it: the config swaps on reload, the counters stay.
pub struct AppSlot {
    pub cfg: ArcSwap<AppConfig>,
    pub stats: AppStats,
    /// Open connections, for `max_connections`.
    pub open: AtomicU32,
}

impl AppSlot {
    pub fn new(cfg: Arc<AppConfig>, metrics: &Metrics) -> AppSlot {
        AppSlot {
            stats: AppStats::new(metrics, &cfg.name),
            cfg: ArcSwap::new(cfg),
            open: AtomicU32::new(0),
        }
    }
}

/// Origins tried at most for one connection before giving up.
const MAX_ATTEMPTS: usize = 3;

/// Binds an app listener. No SO_REUSEPORT: a second process on the same port must fail
/// loudly, not share the traffic.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts connections until `stop`; each connection runs in its own task, tracked so that
/// shutdown can drain them.
pub async fn serve(
    listener: TcpListener,
    port_offset: u16,
    slot: Arc<AppSlot>,
    cx: Arc<ProxyContext>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                cx.connections
                    .spawn(handle(client, peer, port_offset, slot.clone(), cx.clone()));
            }
            Err(e) => {
                match e.raw_os_error().and_then(local_cause) {
                    Some(cause) => {
                        cx.health
                            .on_local_error(cause, "accept", format!("accept: {e}"))
                    }
                    None => tracing::warn!("accept failed: {e}"),
                }
                // EMFILE and friends: back off instead of spinning on the error.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    port_offset: u16,
    slot: Arc<AppSlot>,
    cx: Arc<ProxyContext>,
) {
    let cfg = slot.cfg.load_full();
    // At debug level: with the default `info`, building the span (its fields formatted into
    // strings) cost about 2% of a short connection's proxy CPU.
    let span = tracing::debug_span!(
        "conn",
        app = %cfg.name,
        client = %peer,
        pool = Empty,
        origin = Empty,
        via = Empty,
    );
    let reject = |reason: &'static str| {
        cx.metrics
            .rejected
            .get_or_create(&RejectLabels {
                app: cfg.name.clone(),
                reason,
            })
            .inc();
        tracing::debug!(parent: &span, reason, "connection refused");
    };
    slot.stats.total.inc();
    let client_ip = canonical_ip(peer.ip());
    if !cfg.ip_rules.permits(client_ip) {
        return reject("ip_rules");
    }
    let open = slot.open.fetch_add(1, Ordering::AcqRel) + 1;
    let _open = Guard(|| {
        slot.open.fetch_sub(1, Ordering::AcqRel);
    });
    if cfg.max_connections.is_some_and(|max| open > max) {
        return reject("max_connections");
    }
    slot.stats.active.inc();
    let _active = Guard(|| {
        slot.stats.active.dec();
    });

    // What the origin gets first, in one write as soon as it is connected: the PROXY header
    // and whatever the client has sent already (client-first protocols such as HTTP and TLS
    // then reach the origin in one piece, without waiting for the relay).
    let version = match cfg.proxy_protocol {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => Some(proxy_protocol::Version::V1),
        ProxyProtocol::V2 => Some(proxy_protocol::Version::V2),
    };
    let mut first = version.map_or_else(Vec::new, |version| {
        proxy_protocol::encode(version, peer, client.local_addr().unwrap_or(peer))
    });
    let Ok(initial_len) = relay::read_initial(&client, &mut first) else {
        tracing::debug!(parent: &span, "client reset before its origin was chosen");
        return;
    };

    let started = Instant::now();
    let Some(Connected {
        upstream,
        pool: pool_name,
        origin: origin_name,
        active: counter,
    }) = connect(&cx, &cfg, peer, port_offset, started, &first)
        .instrument(span.clone())
        .await
    else {
        return reject("no_origin");
    };
    span.record("pool", &*pool_name);
    span.record("origin", &*origin_name);
    counter.fetch_add(1, Ordering::Relaxed);
    let _counted = Guard(|| {
        counter.fetch_sub(1, Ordering::Relaxed);
    });
    let stats = &slot.stats;
    // Either, not a box: the direct path is the hot one and costs no allocation.
    let relayed = match upstream {
        Upstream::Direct(mut origin, sent) => {
            if let Err(e) = origin.write_all(&first[sent..]).await {
                tracing::debug!(parent: &span, "sending the first bytes to the origin failed: {e}");
                return;
            }
            // Linux hands the listener's TCP_NODELAY down to accepted sockets.
            #[cfg(not(target_os = "linux"))]
            let _ = client.set_nodelay(true);
            Either::Left(relay::relay(
                client,
                origin,
                cfg.idle_timeout,
                |dir, n| match dir {
                    Direction::ClientToOrigin => {
                        stats.bytes_in.inc_by(n);
                    }
                    Direction::OriginToClient => {
                        stats.bytes_out.inc_by(n);
                    }
                },
            ))
        }
        // `tunnel::open` sent all of `first` already.
        Upstream::Relayed {
            streams,
            peer,
            counters,
        } => {
            span.record("via", &*peer);
            counters.bytes_in.inc_by(initial_len as u64);
            Either::Right(tunnel::pipe(
                client,
                streams,
                cfg.idle_timeout,
                move |dir, n| match dir {
                    Direction::ClientToOrigin => {
                        stats.bytes_in.inc_by(n);
                        counters.bytes_in.inc_by(n);
                    }
                    Direction::OriginToClient => {
                        stats.bytes_out.inc_by(n);
                        counters.bytes_out.inc_by(n);
                    }
                },
            ))
        }
    };
    slot.stats.bytes_in.inc_by(initial_len as u64);
    drop(first);
    tokio::select! {
        out = relayed => {
            tracing::debug!(
                parent: &span,
                bytes_in = out.client_to_origin + initial_len as u64,
                bytes_out = out.origin_to_client,
                duration_ms = started.elapsed().as_millis() as u64,
                end = out.end.as_str(),
                "connection closed"
            );
        }
        _ = cx.abort.cancelled() => {
            tracing::debug!(parent: &span, end = "shutdown", "connection cut at the drain deadline");
        }
    }
}

/// Where a connection's bytes go once connected.
enum Upstream {
    /// The origin connection, and how much of `first` it took already.
    Direct(TcpStream, usize),
    /// A relay stream through `peer`, which took all of `first`; `counters` count it.
    Relayed {
        streams: RelayStreams,
        peer: Arc<str>,
        counters: RelayedCounters,
    },
}

/// A connected upstream, the pool's and origin's names, and the origin's open-connection
/// count.
struct Connected {
    upstream: Upstream,
    pool: Arc<str>,
    origin: Arc<str>,
    active: Arc<AtomicU32>,
}

/// Steers and connects, trying up to `MAX_ATTEMPTS` origins within `connect_timeout`; each
/// through a peer when the relay decision says so (and that relay can be had).
async fn connect(
    cx: &ProxyContext,
    cfg: &AppConfig,
    client_addr: SocketAddr,
    port_offset: u16,
    started: Instant,
    first: &[u8],
) -> Option<Connected> {
    let client = canonical_ip(client_addr.ip());
    // `check` bounds connect_timeout; saturating all the same, since an overflow would panic
    // every connection task.
    let deadline = started
        .checked_add(cfg.connect_timeout)
        .unwrap_or(started + Duration::from_secs(600));
    let geo = cx.locator.locate_fast(client);
    let mut exclude = [(usize::MAX, usize::MAX); MAX_ATTEMPTS];
    for attempt in 0..MAX_ATTEMPTS {
        // Each attempt reads the latest snapshot: a failed connect may just have taken its
        // origin down.
        let snap = cx.health.snapshot();
        let rt = &snap.rt;
        let lb_idx = rt.lb_index(&cfg.load_balancer)?;
        let lb = &rt.load_balancers[lb_idx];
        let now = Instant::now();
        let req = Request::new(rt, lb_idx, &cx.affinity, client, geo, now, rand::random())
            .excluding(&exclude[..attempt]);
        let Some(d) = steering::decide(rt, &snap.view, lb_idx, &req, &mut ()) else {
            tracing::warn!(load_balancer = %lb.name, "no origin left to try");
            return None;
        };
        let pool = &rt.pools[d.pool];
        let origin = &pool.origins[d.origin];
        cx.decisions.get(&cx.metrics, rt, lb_idx, d.pool).inc();
        exclude[attempt] = (d.pool, d.origin);
        let key = rt.key(d.pool, d.origin);
        let connected = |upstream| {
            if lb.affinity == SessionAffinity::ClientIp {
                cx.affinity.put(
                    &lb.name,
                    client,
                    &pool.name,
                    &origin.name,
                    now,
                    lb.affinity_ttl,
                );
            }
            Some(Connected {
                upstream,
                pool: pool.name.clone(),
                origin: origin.name.clone(),
                active: origin.active.clone(),
            })
        };
        // The request names the origin, not a port: an app on a port range goes direct.
        if !cfg.listen.is_range() {
            if let Some((peer, mesh)) = relay_peer(cx, &snap, lb_idx, d.pool, d.origin) {
                let request = RelayRequest {
                    load_balancer: lb.name.to_string(),
                    pool: pool.name.to_string(),
                    origin: origin.name.to_string(),
                    client: client_addr,
                    hops: 0,
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match tunnel::open(mesh, &peer, request, first, left).await {
                    Ok(streams) => {
                        let counters = cx.metrics.relayed(&lb.name, &peer, RelayRole::Sent);
                        counters.connections.inc();
                        tracing::debug!(%peer, "relayed through the peer");
                        return connected(Upstream::Relayed {
                            streams,
                            peer,
                            counters,
                        });
                    }
                    // As without relaying: the direct attempt and, failing it, failover.
                    Err(e) => {
                        tracing::warn!(
                            load_balancer = %lb.name,
                            pool = %pool.name,
                            origin = %origin.name,
                            %peer,
                            "relay not had, connecting directly instead: {e}"
                        );
                        cx.metrics
                            .relay_fallbacks
                            .get_or_create(&RelayFallbackLabels {
                                load_balancer: lb.name.to_string(),
                                peer: peer.to_string(),
                                reason: e.label(),
                            })
                            .inc();
                    }
                }
            }
        }
        let Some(port) = origin.addr.port.checked_add(port_offset) else {
            cx.health
                .on_connect_failure(&key, "port out of range".into());
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left, dial(&origin.addr, port, first)).await;
        match result {
            Ok(Ok((stream, sent))) => return connected(Upstream::Direct(stream, sent)),
            Ok(Err(e)) => {
                if dial_failed(&cx.health, &key, Some(&e)) != Blame::Origin {
                    return None;
                }
            }
            Err(_) => {
                dial_failed(&cx.health, &key, None);
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
    None
}

/// The peer to relay a new connection to origin `origin` of pool `pool` through, for load
/// balancer `lb`, when the relay decision says so (once per connection: it keeps the
/// hold-down of `relay = "fastest"`), and the mesh to ask it on.
fn relay_peer<'a>(
    cx: &'a ProxyContext,
    snap: &Snapshot,
    lb: usize,
    pool: usize,
    origin: usize,
) -> Option<(Arc<str>, &'a Mesh)> {
    let mesh = cx.mesh.as_deref()?;
    let policy = snap.rt.load_balancers[lb].relay;
    let seen = &snap.view.pools[pool].origins[origin];
    // Under `failover` the path is direct while this node's own probes find the origin up,
    // which the view already says (`core::relay::decide` agrees): most connections skip the
    // hub's lock and the mesh state.
    if policy == RelayPolicy::Off
        || (policy == RelayPolicy::Failover && !seen.down_here && !snap.view.sick)
    {
        return None;
    }
    let state = mesh.state().borrow().clone();
    let target = Target {
        health: &cx.health,
        snap,
        mesh: Some(&state),
        lb,
        pool,
        origin,
    };
    match cx.relays.path(&target, Instant::now()).path {
        Path::Via { peer, .. } => Some((peer, mesh)),
        Path::Direct => None,
    }
}

/// Reports a failed connect to `key` (`failure`, or a timeout when `None`) where it
/// belongs: against the origin (passive health), or as this node's own trouble. Returns
/// whose fault it was.
pub fn dial_failed(health: &HealthHub, key: &OriginKey, failure: Option<&std::io::Error>) -> Blame {
    let (pool, origin) = (&key.pool, &key.origin);
    let (blame, reason, detail) = match failure {
        Some(e) => (
            blame_io(e),
            connect_reason(e),
            format!("connecting to {pool}/{origin}: {e}"),
        ),
        None => (
            blame_timeout(health.overloaded()),
            "timeout".into(),
            format!("connecting to {pool}/{origin} timed out while this node was overloaded"),
        ),
    };
    tracing::debug!(%pool, %origin, %reason, "connect failed");
    match blame {
        Blame::Origin => health.on_connect_failure(key, reason),
        Blame::Local(cause) => health.on_local_error(cause, "connect", detail),
    }
    blame
}

/// Connects, and sends what it can of `first` once connected: returns the stream and how
/// many bytes of `first` went out.
pub async fn dial(
    addr: &OriginAddr,
    port: u16,
    first: &[u8],
) -> std::io::Result<(TcpStream, usize)> {
    let stream = match addr.ip {
        Some(ip) => return dial_ip(SocketAddr::new(ip, port), first).await,
        None => TcpStream::connect((addr.host.as_str(), port)).await?,
    };
    let _ = stream.set_nodelay(true);
    Ok((stream, 0))
}

/// Connects with TCP_NODELAY set before the handshake, and writes `first` as soon as the
/// connection is up. The first write is tried right after `connect`: on a fast path (a
/// local origin) the handshake is already done, so the bytes leave before the origin is
/// scheduled to accept and it reads them in the same wake-up. Otherwise the outcome is read
/// from the readiness event, so a successful connect costs no `getsockopt(SO_ERROR)`.
async fn dial_ip(addr: SocketAddr, first: &[u8]) -> std::io::Result<(TcpStream, usize)> {
    use socket2::{Domain, Socket, Type};
    use std::io::ErrorKind;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // On the raw socket: tokio would not try a write before the reactor reports the socket
    // writable. While the handshake is in flight this fails with WouldBlock; a refused
    // connect shows here as its own error.
    let sent = match first.is_empty() {
        true => None,
        false => match socket.send_with_flags(first, libc::MSG_NOSIGNAL) {
            Ok(n) => Some(n),
            // Linux says EAGAIN while connecting; the BSDs and macOS say ENOTCONN.
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
            Err(e) => return Err(e),
        },
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if let Some(n) = sent {
        return Ok((stream, n));
    }
    // A refused or timed-out connect shows as write-closed (EPOLLHUP).
    let ready = stream.ready(tokio::io::Interest::WRITABLE).await?;
    if ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| ErrorKind::ConnectionRefused.into()));
    }
    Ok((stream, 0))
}

fn connect_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => format!("connect: {e}"),
    }
}

/// Runs a closure when dropped, so counters are restored on every path out.
pub struct Guard<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// `switchyard_steering_decisions_total` handles for the current compiled config, so a connection
/// counts its decision without building label strings or locking the metric family. A
/// series appears on its first decision, as it would with `get_or_create`.
#[derive(Default)]
pub struct DecisionCounters(ArcSwapOption<CountersFor>);

struct CountersFor {
    rt: Arc<CompiledConfig>,
    /// Indexed `[load balancer * pools + pool]`.
    counters: Vec<OnceLock<Counter>>,
}

impl DecisionCounters {
    pub fn get(
        &self,
        metrics: &Metrics,
        rt: &Arc<CompiledConfig>,
        lb: usize,
        pool: usize,
    ) -> Counter {
        let pools = rt.pools.len();
        let table = match self.0.load_full() {
            Some(table) if Arc::ptr_eq(&table.rt, rt) => table,
            // After a reload: whichever connection gets here first swaps in the new table.
            _ => {
                let fresh = Arc::new(CountersFor {
                    rt: rt.clone(),
                    counters: (0..rt.load_balancers.len() * pools)
                        .map(|_| OnceLock::new())
                        .collect(),
                });
                self.0.store(Some(fresh.clone()));
                fresh
            }
        };
        table.counters[lb * pools + pool]
            .get_or_init(|| {
                metrics
                    .decisions
                    .get_or_create(&DecisionLabels {
                        load_balancer: rt.load_balancers[lb].name.to_string(),
                        pool: rt.pools[pool].name.to_string(),
                    })
                    .clone()
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn dial_sends_the_first_bytes_with_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(dial_ip(addr, b"hello"), listener.accept());
        let (mut stream, sent) = dialed.unwrap();
        stream.write_all(&b"hello"[sent..]).await.unwrap();
        let mut got = [0; 5];
        accepted.unwrap().0.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(
            stream.nodelay().unwrap(),
            "origin connections set TCP_NODELAY"
        );
    }

    #[tokio::test]
    async fn dial_reports_a_refused_connect_with_or_without_first_bytes() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        for first in [&b""[..], &b"hello"[..]] {
            let err = dial_ip(addr, first).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "first={first:?}: {err}"
            );
        }
    }
}
