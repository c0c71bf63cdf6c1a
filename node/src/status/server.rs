//! The status endpoint on `status_listen`: `/v1/status` (JSON), `/v1/explain`, `/v1/anycast`,
//! `/metrics` (Prometheus), `/live` and `/ready`.
//!
//! It is on the node's own descriptors, so a client may not hold them at will: a request head
//! must arrive within `header_timeout` (which also ends a keep-alive connection idle between
//! requests), a connection on which no byte moves either way for `idle_timeout` is cut (a
//! client that stops reading a large `/metrics` answer), and past `max_connections` open
//! ones a new connection is closed at once. Each is counted in a metric.

use crate::clock::Activity;
use std::convert::Infallible;
use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SessionAffinity;
use crate::core::client::ClientGeo;
use crate::core::steering::{self, Request as SteerRequest, TYPICAL_DRAW};
use crate::core::verdict;
use crate::core::view::{judge, observations, Report};
use crate::metrics::ReasonLabels;
use crate::relays::Target;
use crate::state::{NodeState, SICK_ADVICE};
use crate::status::document::*;

/// What keeps slow, idle and numerous clients from holding the status endpoint's
/// connections (and so the node's descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLimits {
    /// A request head must arrive within this, counted from the connection's start or the end
    /// of the previous answer: it also ends idle keep-alive connections.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is cut.
    pub idle_timeout: Duration,
    /// Connections open at once; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for StatusLimits {
    /// A scraper or `switchyard status` needs well under a second per request; 5 s for a head
    /// and 30 s without progress leave room for a slow link, and 256 connections for many
    /// scrapers, while a flood of idle clients holds at most 256 descriptors for 5 s each.
    fn default() -> Self {
        StatusLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// Serves until `stop`, with the default limits.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, stop: CancellationToken) {
    serve_with(listener, state, stop, StatusLimits::default()).await
}

/// Serves until `stop`.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<NodeState>,
    stop: CancellationToken,
    limits: StatusLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.status_refused.inc();
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = Touching {
                inner: stream,
                activity: activity.clone(),
            };
            let svc = {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, req)) }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), svc);
            let reason = tokio::select! {
                r = conn => match r {
                    Err(e) if e.is_timeout() => Some("header"),
                    _ => None,
                },
                _ = idle(&activity, limits.idle_timeout) => Some("idle"),
            };
            if let Some(reason) = reason {
                state
                    .metrics
                    .status_timeouts
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
            drop(permit);
        });
    }
}

/// Returns once no byte has moved for `timeout`.
async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        let Some(deadline) = activity.last().checked_add(timeout) else {
            // Beyond the clock: never.
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that notes in `activity` every time bytes move.
struct Touching<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn route<B>(state: &NodeState, req: Request<B>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match req.uri().path() {
        "/v1/status" => {
            let doc = document(state);
            let body = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
            reply(StatusCode::OK, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/v1/explain" => {
            let query = req.uri().query().unwrap_or("");
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name).then(|| v.replace("%3A", ":").replace("%3a", ":"))
                })
            };
            let (Some(what), Some(client)) = (param("lb").or(param("dns")), param("client")) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "use /v1/explain?lb=NAME&client=IP or /v1/explain?dns=NAME&client=IP\n".into(),
                );
            };
            let Ok(ip) = client.parse::<std::net::IpAddr>() else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("client={client:?} is not an IP address\n"),
                );
            };
            let json = if param("lb").is_some() {
                state
                    .explain(&what, ip)
                    .map(|e| serde_json::to_string_pretty(&e))
            } else {
                state
                    .explain_dns(&what, ip)
                    .map(|e| serde_json::to_string_pretty(&e))
            };
            match json {
                Ok(text) => reply(
                    StatusCode::OK,
                    "application/json",
                    text.unwrap_or_default() + "\n",
                ),
                Err(e) => reply(StatusCode::NOT_FOUND, "text/plain", e + "\n"),
            }
        }
        "/live" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => match state.readiness() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        "/v1/anycast" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&state.anycast_report()).unwrap_or_default() + "\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /v1/status, /v1/explain, /v1/anycast, /metrics, /live or /ready\n"
                .into(),
        ),
    }
}

/// Builds the status document from the published snapshot.
pub fn document(state: &NodeState) -> Status {
    let snap = state.health.snapshot();
    let rt = &snap.rt;
    let sick = state.health.sick();
    let report = state.health.report();
    // A sick node's own rows count nowhere: its observers are the mesh's.
    let none = Report::default();
    let counted = if sick.is_some() { &none } else { &report };
    let remote = state.health.remote();
    let mut obs = Vec::new();
    let apps = state
        .apps
        .load()
        .iter()
        .map(|a| {
            let cfg = a.slot.cfg.load();
            AppStatus {
                name: cfg.name.clone(),
                listen: a.listen.clone(),
                load_balancer: cfg.load_balancer.clone(),
                active: a.slot.stats.active.get(),
                total: a.slot.stats.total.get(),
                bytes_in: a.slot.stats.bytes_in.get(),
                bytes_out: a.slot.stats.bytes_out.get(),
            }
        })
        .collect();
    let pools = rt
        .pools
        .iter()
        .enumerate()
        .map(|(pi, p)| PoolStatus {
            name: p.name.to_string(),
            healthy: snap.view.pools[pi].healthy,
            monitor: p.monitor.clone(),
            minimum_origins: p.minimum_origins,
            origins: p
                .origins
                .iter()
                .enumerate()
                .map(|(oi, o)| {
                    let key = rt.key(pi, oi);
                    let row = report.rows.get(&key);
                    let seen = &snap.view.pools[pi].origins[oi];
                    observations(rt, &key, counted, &remote, Duration::ZERO, &mut obs);
                    let judged = judge(&obs, rt.region, state.health.quorum());
                    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
                    OriginStatus {
                        name: o.name.to_string(),
                        address: o.addr.to_string(),
                        enabled: o.enabled,
                        weight: o.weight,
                        healthy: seen.up,
                        rtt_ms: seen.rtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                        last_change: row.filter(|r| r.checked).map(|r| {
                            let ms = state.clock.wall_ms(r.last_change);
                            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                                .to_string()
                        }),
                        reason: row.and_then(|r| r.reason.clone()),
                        active: o.active.load(Ordering::Relaxed),
                        observers: obs
                            .iter()
                            .map(|o| {
                                (
                                    o.node.to_string(),
                                    ObserverStatus {
                                        healthy: o.healthy,
                                        rtt_ms: o.rtt.map(ms),
                                        age_ms: o.age.as_millis() as u64,
                                        verdict: o.verdict.map(|v| v.as_str().into()),
                                    },
                                )
                            })
                            .collect(),
                        region_health: judged
                            .regions
                            .iter()
                            .map(|(r, h)| (r.to_string(), *h))
                            .collect(),
                        global_health: judged.global,
                        verdict: seen.verdict.map(|v| v.as_str().into()),
                        asked: state
                            .health
                            .answers(&key)
                            .unwrap_or_default()
                            .iter()
                            .map(|(peer, a)| (peer.clone(), verdict::describe(a)))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    let now = Instant::now();
    let mesh = state.mesh.as_ref().map(|m| m.state().borrow().clone());
    let relayed = state.metrics.relayed_all();
    let load_balancers = rt
        .load_balancers
        .iter()
        .enumerate()
        .map(|(i, lb)| {
            // A client nobody knows, with the typical draw: the pool most new connections go
            // to now, the same on every GET.
            let req = SteerRequest::new(
                rt,
                i,
                &state.affinity,
                Ipv4Addr::UNSPECIFIED.into(),
                ClientGeo::default(),
                now,
                TYPICAL_DRAW,
            );
            let decision = steering::decide(rt, &snap.view, i, &req, &mut ());
            let path = decision.as_ref().map(|d| {
                let t = Target {
                    health: &state.health,
                    snap: &snap,
                    mesh: mesh.as_deref(),
                    lb: i,
                    pool: d.pool,
                    origin: d.origin,
                };
                let p = state.relays.peek(&t, now);
                format!("{}: {}", p.path.words(), p.reason)
            });
            LbStatus {
                name: lb.name.to_string(),
                steering: lb.policy.as_str().into(),
                default_pools: lb
                    .default_pools
                    .iter()
                    .map(|p| rt.pools[*p].name.to_string())
                    .collect(),
                fallback_pool: rt.pools[lb.fallback_pool].name.to_string(),
                session_affinity: lb.affinity == SessionAffinity::ClientIp,
                serving: decision.map(|d| rt.pools[d.pool].name.to_string()),
                relay: lb.relay.as_str().into(),
                path,
                relayed: relayed
                    .iter()
                    .filter(|((name, _, _), _)| *name == *lb.name)
                    .map(|((_, peer, role), c)| RelayedStatus {
                        peer: peer.clone(),
                        role: role.as_str().into(),
                        connections: c.connections.get(),
                        bytes_in: c.bytes_in.get(),
                        bytes_out: c.bytes_out.get(),
                    })
                    .collect(),
            }
        })
        .collect();
    let (members, drift) = match &state.mesh {
        Some(mesh) => {
            let state = mesh.state().borrow().clone();
            let ours = rt.config.fingerprint();
            let members = state
                .members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id.clone(),
                    region: m.region.to_string(),
                    addr: m.addr.to_string(),
                    state: m.state.as_str().into(),
                    generation: m.generation,
                    rtt_ms: m.rtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                })
                .collect();
            let drift = state
                .writers
                .iter()
                .filter(|w| w.live && w.node != state.local.id && w.fingerprint != ours)
                .map(|w| DriftStatus {
                    node: w.node.clone(),
                    fingerprint: format!("{:016x}", w.fingerprint),
                    ours: format!("{ours:016x}"),
                })
                .collect();
            (members, drift)
        }
        None => (Vec::new(), Vec::new()),
    };
    Status {
        members,
        drift,
        geo: Some(state.locator.status()),
        node: NodeStatus {
            id: rt.node_id.to_string(),
            region: rt.region.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: state.clock.uptime().as_secs(),
            trouble: state
                .health
                .trouble()
                .into_iter()
                .map(|t| TroubleStatus {
                    kind: t.cause.as_str().into(),
                    detail: t.detail,
                    count: t.count,
                    since: rfc3339_ms(state.clock.wall_ms(t.since)),
                    last: rfc3339_ms(state.clock.wall_ms(t.last)),
                    advice: t.cause.advice().into(),
                })
                .collect(),
            sick: sick.map(|s| SickStatus {
                since: rfc3339_ms(state.clock.wall_ms(s.since)),
                path_down: s.path_down,
                checked: s.checked,
                advice: SICK_ADVICE.into(),
            }),
        },
        apps,
        pools,
        load_balancers,
    }
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
