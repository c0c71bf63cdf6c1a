//! The apps' TCP proxy: accept a client, apply `ip_rules` and `max_connections`, steer,
//! connect to the chosen origin (retrying others within `connect_timeout` and reporting
//! failed connects as passive health), send a PROXY header when asked, then hand both sockets
//! to the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{field::Empty, Instrument};

use crate::app::{AppSlot, Shared};
use crate::config::{canonical_ip, ProxyProtocol, SessionAffinity};
use crate::metrics::{DecisionLabels, RejectLabels};
use crate::proxy_protocol;
use crate::relay::{self, Direction};
use crate::runtime::Runtime;
use crate::steering::{self, Request, Sticky};

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
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                let slot = slot.clone();
                let shared2 = shared.clone();
                shared
                    .connections
                    .spawn(handle(client, peer, port_offset, slot, shared2));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!("accept failed: {e}");
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
    shared: Arc<Shared>,
) {
    let cfg = slot.cfg.load_full();
    let span = tracing::info_span!(
        "conn",
        app = %cfg.name,
        client = %peer,
        pool = Empty,
        origin = Empty,
    );
    let reject = |reason: &'static str| {
        shared
            .metrics
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

    let started = Instant::now();
    let Some((origin, pool_name, origin_name, counter)) =
        connect(&shared, &cfg, client_ip, port_offset, started)
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

    let mut origin = origin;
    if let Some(version) = match cfg.proxy_protocol {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => Some(proxy_protocol::Version::V1),
        ProxyProtocol::V2 => Some(proxy_protocol::Version::V2),
    } {
        let local = client.local_addr().unwrap_or(peer);
        let header = proxy_protocol::encode(version, peer, local);
        if let Err(e) = origin.write_all(&header).await {
            tracing::debug!(parent: &span, "sending the PROXY header failed: {e}");
            return;
        }
    }

    let _ = client.set_nodelay(true);
    let stats = &slot.stats;
    let relayed = relay::relay(client, origin, cfg.idle_timeout, |dir, n| match dir {
        Direction::ClientToOrigin => {
            stats.bytes_in.inc_by(n);
        }
        Direction::OriginToClient => {
            stats.bytes_out.inc_by(n);
        }
    });
    tokio::select! {
        out = relayed => {
            tracing::debug!(
                parent: &span,
                bytes_in = out.client_to_origin,
                bytes_out = out.origin_to_client,
                duration_ms = started.elapsed().as_millis() as u64,
                end = out.end.as_str(),
                "connection closed"
            );
        }
        _ = shared.abort.cancelled() => {
            tracing::debug!(parent: &span, end = "shutdown", "connection cut at the drain deadline");
        }
    }
}

type Connected = (
    TcpStream,
    Arc<str>,
    Arc<str>,
    Arc<std::sync::atomic::AtomicU32>,
);

/// Steers and connects, trying up to `MAX_ATTEMPTS` origins within `connect_timeout`.
async fn connect(
    shared: &Shared,
    cfg: &crate::config::AppConfig,
    client: IpAddr,
    port_offset: u16,
    started: Instant,
) -> Option<Connected> {
    let deadline = started + cfg.connect_timeout;
    let geo = shared.geo.locate_fast(client);
    let mut exclude = [(usize::MAX, usize::MAX); MAX_ATTEMPTS];
    for attempt in 0..MAX_ATTEMPTS {
        // Each attempt reads the latest snapshot: a failed connect may just have taken its
        // origin down.
        let snap = shared.snapshot();
        let rt = &snap.rt;
        let lb_idx = rt.lb_index(&cfg.load_balancer)?;
        let lb = &rt.load_balancers[lb_idx];
        let now = Instant::now();
        let sticky = match lb.affinity {
            SessionAffinity::ClientIp => shared.affinity.get(rt, &lb.name, client),
            SessionAffinity::None => None,
        };
        let req = Request {
            client,
            now,
            random: rand::random(),
            exclude: &exclude[..attempt],
            sticky,
            geo,
        };
        let Some(d) = steering::decide(rt, &snap.view, lb_idx, &req, &mut ()) else {
            tracing::warn!(load_balancer = %lb.name, "no origin left to try");
            return None;
        };
        let pool = &rt.pools[d.pool];
        let origin = &pool.origins[d.origin];
        shared
            .metrics
            .decisions
            .get_or_create(&DecisionLabels {
                load_balancer: lb.name.to_string(),
                pool: pool.name.to_string(),
            })
            .inc();
        exclude[attempt] = (d.pool, d.origin);
        let key = rt.key(d.pool, d.origin);
        let Some(port) = origin.addr.port.checked_add(port_offset) else {
            shared.on_connect_failure(&key, "port out of range".into());
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left, dial(&origin.addr, port)).await;
        match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                if lb.affinity == SessionAffinity::ClientIp {
                    shared.affinity.put(
                        &lb.name,
                        client,
                        &pool.name,
                        &origin.name,
                        now + lb.affinity_ttl,
                    );
                }
                return Some((
                    stream,
                    pool.name.clone(),
                    origin.name.clone(),
                    origin.active.clone(),
                ));
            }
            Ok(Err(e)) => {
                let reason = connect_reason(&e);
                tracing::debug!(pool = %pool.name, origin = %origin.name, %reason, "connect failed");
                shared.on_connect_failure(&key, reason);
            }
            Err(_) => {
                tracing::debug!(pool = %pool.name, origin = %origin.name, "connect timed out");
                shared.on_connect_failure(&key, "timeout".into());
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
    None
}

async fn dial(addr: &crate::config::OriginAddr, port: u16) -> std::io::Result<TcpStream> {
    match addr.ip {
        Some(ip) => TcpStream::connect(SocketAddr::new(ip, port)).await,
        None => TcpStream::connect((addr.host.as_str(), port)).await,
    }
}

fn connect_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => format!("connect: {e}"),
    }
}

/// Runs a closure when dropped, so counters are restored on every path out.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Session affinity by client IP: which origin each client of a load balancer last used.
#[derive(Default)]
pub struct Affinity {
    map: Mutex<HashMap<(Arc<str>, IpAddr), Entry>>,
    puts: AtomicU64,
}

struct Entry {
    pool: Arc<str>,
    origin: Arc<str>,
    expires: Instant,
}

/// Entries are swept of expired ones every this many inserts, bounding the table by the
/// number of clients seen within one TTL.
const SWEEP_EVERY: u64 = 4096;

impl Affinity {
    pub fn get(&self, rt: &Runtime, lb: &Arc<str>, client: IpAddr) -> Option<Sticky> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&(lb.clone(), client))?;
        let (pool, origin) = rt.origin_index(&e.pool, &e.origin)?;
        Some(Sticky {
            pool,
            origin,
            expires: e.expires,
        })
    }

    /// Records (or refreshes: the TTL slides with use) the client's origin.
    pub fn put(
        &self,
        lb: &Arc<str>,
        client: IpAddr,
        pool: &Arc<str>,
        origin: &Arc<str>,
        expires: Instant,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.puts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            map.retain(|_, e| e.expires > now);
        }
        map.insert(
            (lb.clone(), client),
            Entry {
                pool: pool.clone(),
                origin: origin.clone(),
                expires,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
