//! The DNS shell: answers the mesh's names (`[dns]`) over UDP and TCP on one address. The
//! answers come from the mesh's view, never from probes of its own: [`follow`] rebuilds the
//! zone (`zone`) whenever the health view, the mesh's adverts or this node's readiness
//! change, and swaps it whole; a query only parses its packet (`wire`), looks its name up,
//! and copies a precomputed body behind its own header, question (in its own letter case)
//! and EDNS Client Subnet. One loop reads the UDP socket (no task per packet); TCP
//! connections are bounded in number and idle time.

pub mod wire;
mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use switchyard_gossip::MeshState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::DnsSection;
use crate::core::dns::{self, DnsExplanation, Family as AddrFamily, Node};
use crate::error::Error;
use crate::hub::HealthHub;
use crate::locate::Locator;
use wire::{Bad, Query};
use zone::{Found, Zone};

/// Whether this node is ready now (what `/ready` says), as the app knows it.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Most TCP connections open at once; a further one is closed at once (and counted).
pub const MAX_TCP: usize = 256;
/// A TCP connection with no query for this long is closed (RFC 7766 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often readiness is looked at between view changes: draining and local trouble have
/// no event of their own.
const READY_TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    r#type: &'static str,
    rcode: &'static str,
}

/// The DNS server's metrics.
#[derive(Clone, Default)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    malformed: Counter,
    truncated: Counter,
    tcp_refused: Counter,
}

impl DnsMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "dns_queries",
            "DNS queries answered, by question type and response code",
            self.queries.clone(),
        );
        r.register(
            "dns_malformed",
            "DNS packets dropped or answered FORMERR because they could not be read",
            self.malformed.clone(),
        );
        r.register(
            "dns_truncated",
            "DNS answers too large for UDP, sent with TC so the client asks over TCP",
            self.truncated.clone(),
        );
        r.register(
            "dns_tcp_refused",
            "DNS TCP connections closed at once: the connection limit was reached",
            self.tcp_refused.clone(),
        );
    }
}

fn type_label(t: u16) -> &'static str {
    match t {
        wire::TYPE_A => "A",
        wire::TYPE_AAAA => "AAAA",
        wire::TYPE_NS => "NS",
        wire::TYPE_SOA => "SOA",
        255 => "ANY",
        _ => "other",
    }
}

fn rcode_label(rcode: u8) -> &'static str {
    match rcode {
        wire::NOERROR => "noerror",
        wire::FORMERR => "formerr",
        wire::NXDOMAIN => "nxdomain",
        wire::NOTIMP => "notimp",
        wire::REFUSED => "refused",
        _ => "badvers",
    }
}

/// What the server answers from.
pub struct DnsState {
    zone: ArcSwap<Zone>,
    locator: Arc<Locator>,
    metrics: DnsMetrics,
}

/// The nodes the mesh knows (this one as it is now, the others as their adverts say).
fn nodes_now(hub: &HealthHub, mesh: Option<&MeshState>, ready: bool) -> Vec<Node> {
    let snap = hub.snapshot();
    let local = &snap.rt.config.node.id;
    let mut rtt = Vec::new();
    let mut nodes = Vec::new();
    for w in mesh.map(|m| m.writers.as_slice()).unwrap_or_default() {
        if w.node == *local {
            // Its round trips as advertised: what every other node uses for it too.
            rtt = w.advert.rtt_ms.clone();
        } else {
            nodes.push(Node::from_advert(&w.node, w.region, &w.advert, w.live));
        }
    }
    nodes.push(Node::local(&snap.rt, &snap.view, ready, rtt));
    nodes
}

/// The zone's settings and this node's names, from the running config.
fn settings(hub: &HealthHub, fallback: &DnsSection) -> (DnsSection, Vec<String>) {
    let snap = hub.snapshot();
    let c = &snap.rt.config;
    let names = c.apps.iter().filter_map(|a| a.hostname.clone()).collect();
    (c.dns.clone().unwrap_or_else(|| fallback.clone()), names)
}

fn build(section: &DnsSection, nodes: Vec<Node>, names: &[String]) -> Result<Zone, Error> {
    let ttl = section.ttl.as_secs().min(u64::from(u32::MAX)) as u32;
    Zone::build(&section.zone_name(), ttl, section.answers, nodes, names).map_err(|e| {
        Error::Reload(format!(
            "[dns] zone {:?}: cannot make its records ({e}); check the zone, the hostnames \
             and the node ids, which become names under it",
            section.zone
        ))
    })
}

impl DnsState {
    /// The zone as the mesh is now; counted in `metrics` (registered by the caller).
    pub fn new(
        section: &DnsSection,
        hub: &HealthHub,
        mesh: Option<&MeshState>,
        locator: Arc<Locator>,
        ready: bool,
        metrics: DnsMetrics,
    ) -> Result<DnsState, Error> {
        let (section, names) = settings(hub, section);
        let zone = build(&section, nodes_now(hub, mesh, ready), &names)?;
        Ok(DnsState {
            zone: ArcSwap::from_pointee(zone),
            locator,
            metrics,
        })
    }

    /// Answers one packet from `src` into `out`; false when nothing is to be sent.
    pub fn answer(&self, p: &[u8], src: IpAddr, tcp: bool, out: &mut Vec<u8>) -> bool {
        let q = match wire::parse(p) {
            Ok(q) => q,
            Err(Bad::Drop) => {
                self.metrics.malformed.inc();
                tracing::debug!(%src, len = p.len(), "DNS packet dropped: not a query");
                return false;
            }
            Err(bad) => {
                self.metrics.malformed.inc();
                wire::respond_bad(&bad, out);
                if let Bad::Answer { rcode, .. } = bad {
                    self.count("other", rcode);
                    tracing::debug!(%src, rcode = rcode_label(rcode), "DNS query refused unread");
                }
                return true;
            }
        };
        let span = tracing::debug_span!("dns", %src, tcp, qtype = q.qtype);
        let _entered = span.enter();
        if q.edns.is_some_and(|e| e.version != 0) {
            wire::respond_badvers(&q, out);
            self.count(type_label(q.qtype), 16);
            return true;
        }
        let zone = self.zone.load();
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            q.udp_limit()
        };
        // Zone transfers are not offered: every node builds the zone from the mesh itself.
        let transfer = matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR);
        let (body, scope) = if q.qclass != wire::CLASS_IN || transfer {
            (zone.refused(), 0)
        } else {
            match zone.find(q.name(), q.qtype) {
                Found::Fixed(body) => (body, 0),
                Found::ByRegion(bodies) => {
                    let (client, scope) = client_of(&q, src);
                    let region = self.locator.region_everywhere(client);
                    tracing::debug!(%client, region = region.map_or("unknown", |r| r.code()), "client placed");
                    (&bodies[dns::slot(region)], scope)
                }
            }
        };
        wire::respond(&q, body, scope, limit, out);
        if out[2] & 0x02 != 0 {
            self.metrics.truncated.inc();
        }
        self.count(type_label(q.qtype), body.rcode);
        tracing::debug!(
            rcode = rcode_label(body.rcode),
            answers = body.answers,
            "answered"
        );
        true
    }

    fn count(&self, qtype: &'static str, rcode: u8) {
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                r#type: qtype,
                rcode: rcode_label(rcode),
            })
            .inc();
    }

    /// Which nodes `name` is answered with for `client` now, and why the others are not.
    pub fn explain(&self, name: &str, client: IpAddr) -> Result<DnsExplanation, String> {
        let zone = self.zone.load();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let short = name
            .strip_suffix(&format!(".{}", zone.zone))
            .unwrap_or(&name);
        let Some(p) = zone.plan.iter().find(|p| p.name == short) else {
            let known: Vec<String> = zone
                .plan
                .iter()
                .map(|p| format!("{}.{}", p.name, zone.zone))
                .collect();
            return Err(format!(
                "{name:?} is not a name of zone {} (known: {}); set hostname on an [[app]]",
                zone.zone,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        };
        let region = self.locator.region_everywhere(client);
        let located = self.locator.locate(client);
        let family = |f| dns::explain_family(&zone.nodes, &p.name, f, region, zone.answers);
        Ok(DnsExplanation {
            name: format!("{}.{}", p.name, zone.zone),
            client: client.to_string(),
            region: region.map(|r| r.code().to_string()),
            located_by: match region {
                Some(_) => located.source.describe(),
                None => format!(
                    "{}: the region is unknown, so the answer is the one for unknown clients",
                    located.source.describe()
                ),
            },
            a: family(AddrFamily::V4),
            aaaa: family(AddrFamily::V6),
        })
    }
}

/// Whose address the answer depends on: the Client Subnet's when the query has one (with a
/// prefix), else the resolver's; and the ECS scope to answer with (RFC 7871 7.2.1: what the
/// answer depends on, here the whole prefix given, since GeoIP may place any part of it).
fn client_of(q: &Query<'_>, src: IpAddr) -> (IpAddr, u8) {
    match q.edns.and_then(|e| e.ecs) {
        Some(ecs) if ecs.source > 0 => (ecs.ip(), ecs.source),
        _ => (src, 0),
    }
}

/// Keeps the zone current: rebuilt when the health view or the mesh changes, and every
/// [`READY_TICK`] in case readiness did. Ends when the hub or the state is gone.
pub async fn follow(
    state: Weak<DnsState>,
    hub: Weak<HealthHub>,
    mut mesh: Option<watch::Receiver<Arc<MeshState>>>,
    fallback: DnsSection,
    ready: Ready,
) {
    let Some(mut views) = hub.upgrade().map(|h| h.published()) else {
        return;
    };
    let mut tick = tokio::time::interval(READY_TICK);
    let mut last: Option<(DnsSection, Vec<String>, Vec<Node>)> = None;
    loop {
        let mesh_changed = async {
            match mesh.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            ok = mesh_changed => if !ok { return },
            _ = tick.tick() => {}
        }
        let (Some(state), Some(hub)) = (state.upgrade(), hub.upgrade()) else {
            return;
        };
        let mesh_state = mesh.as_mut().map(|rx| rx.borrow_and_update().clone());
        let nodes = nodes_now(&hub, mesh_state.as_deref(), ready());
        let (section, names) = settings(&hub, &fallback);
        let now = (section, names, nodes);
        if last.as_ref() == Some(&now) {
            continue;
        }
        match build(&now.0, now.2.clone(), &now.1) {
            Ok(zone) => {
                state.zone.store(Arc::new(zone));
                tracing::debug!(nodes = now.2.len(), "DNS answers rebuilt");
            }
            Err(e) => tracing::error!("DNS answers not rebuilt, the previous ones stay: {e}"),
        }
        last = Some(now);
    }
}

/// Tries to bind a UDP port 0 got for TCP as well, before giving up.
const BIND_ATTEMPTS: usize = 16;

/// Binds UDP and TCP on `addr`, the same port: with port 0, the port UDP got, tried again
/// with another while TCP finds that port taken.
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let fail = |what: &'static str, addr: SocketAddr| {
        move |source| Error::Bind {
            what: format!("[dns] listen ({what})"),
            addr,
            source,
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr).await.map_err(fail("UDP", addr))?;
        let at = udp.local_addr().map_err(fail("UDP", addr))?;
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < BIND_ATTEMPTS => {}
            Err(e) => return Err(fail("TCP", at)(e)),
        }
    }
}

/// Answers UDP queries until `stop`: one loop, one receive buffer, one response buffer.
pub async fn serve_udp(sock: UdpSocket, state: Arc<DnsState>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(wire::MAX_UDP);
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("DNS UDP receive: {e}");
                    continue;
                }
            },
        };
        if state.answer(&buf[..n], from.ip(), false, &mut out) {
            if let Err(e) = sock.send_to(&out, from).await {
                tracing::debug!(%from, "DNS UDP send: {e}");
            }
        }
    }
}

/// Accepts TCP connections until `stop`, at most [`MAX_TCP`] at once.
pub async fn serve_tcp(listener: TcpListener, state: Arc<DnsState>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let (stream, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("DNS TCP accept: {e}");
                    // Out of descriptors: let some close before trying again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.tcp_refused.inc();
            continue;
        };
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tcp_connection(stream, from, &state) => {}
            }
        });
    }
}

/// Queries on one TCP connection, each framed by its length (RFC 1035 4.2.2), until the
/// client closes it or is idle for [`TCP_IDLE`].
async fn tcp_connection(mut stream: TcpStream, from: SocketAddr, state: &DnsState) {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        let read = async {
            stream.read_exact(&mut len).await?;
            let n = usize::from(u16::from_be_bytes(len));
            stream.read_exact(&mut buf[..n]).await?;
            Ok::<usize, std::io::Error>(n)
        };
        let n = match tokio::time::timeout(TCP_IDLE, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        if !state.answer(&buf[..n], from.ip(), true, &mut out) {
            return;
        }
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend((out.len() as u16).to_be_bytes());
        framed.extend(&out);
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
