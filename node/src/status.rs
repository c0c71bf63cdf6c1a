//! The status endpoint on `status_listen`: `/v1/status` (JSON), `/metrics` (Prometheus),
//! `/live` and `/ready`; and the client side that `switchyard status` uses to fetch and
//! print it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::app::{wall_ms, Shared};
use crate::error::Error;
use crate::runtime::{judge, observations};
use crate::steering::{self, Request as SteerRequest};

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route<B>(shared: &Shared, req: Request<B>) -> Response<Full<Bytes>> {
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
            let doc = document(shared);
            let body = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
            reply(StatusCode::OK, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/v1/explain" => {
            let query = req.uri().query().unwrap_or("");
            let param = |name: &str| {
                query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == name).then(|| v.replace("%3A", ":").replace("%3a", ":"))
                })
            };
            let (Some(lb), Some(client)) = (param("lb"), param("client")) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "use /v1/explain?lb=NAME&client=IP\n".into(),
                );
            };
            let Ok(ip) = client.parse::<std::net::IpAddr>() else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("client={client:?} is not an IP address\n"),
                );
            };
            match crate::explain::explain(shared, &lb, ip) {
                Ok(e) => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&e).unwrap_or_default() + "\n",
                ),
                Err(e) => reply(StatusCode::NOT_FOUND, "text/plain", e + "\n"),
            }
        }
        "/live" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            if shared.draining.load(Ordering::Relaxed) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /v1/status, /v1/explain, /metrics, /live or /ready\n".into(),
        ),
    }
}

/// The status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeStatus,
    pub apps: Vec<AppStatus>,
    pub pools: Vec<PoolStatus>,
    pub load_balancers: Vec<LbStatus>,
    /// Mesh members, this node included; empty without `[mesh]`.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Nodes whose config fingerprint differs from this node's.
    #[serde(default)]
    pub drift: Vec<DriftStatus>,
    /// The GeoIP database and its age.
    #[serde(default)]
    pub geo: Option<crate::geo::GeoStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: String,
    pub region: String,
    pub addr: String,
    pub state: String,
    pub generation: u64,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftStatus {
    pub node: String,
    pub fingerprint: String,
    pub ours: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObserverStatus {
    pub healthy: bool,
    pub rtt_ms: Option<f64>,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub region: String,
    pub version: String,
    pub uptime: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub listen: String,
    pub load_balancer: String,
    pub active: i64,
    pub total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub healthy: bool,
    pub monitor: Option<String>,
    pub minimum_origins: usize,
    pub origins: Vec<OriginStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginStatus {
    pub name: String,
    pub address: String,
    pub enabled: bool,
    pub weight: f64,
    pub healthy: bool,
    pub rtt_ms: Option<f64>,
    /// RFC 3339 time of the last up/down change; None until the first probe.
    pub last_change: Option<String>,
    pub reason: Option<String>,
    /// Open connections from this node.
    pub active: u32,
    /// Every node whose row counts (this node once it has probed, and live members).
    #[serde(default)]
    pub observers: std::collections::BTreeMap<String, ObserverStatus>,
    /// Per observing region, whether a quorum of its observers sees the origin up.
    #[serde(default)]
    pub region_health: std::collections::BTreeMap<String, bool>,
    /// A majority of observing regions see it up; null when nobody observes it.
    #[serde(default)]
    pub global_health: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbStatus {
    pub name: String,
    pub steering: String,
    pub default_pools: Vec<String>,
    pub fallback_pool: String,
    pub session_affinity: bool,
    /// The pool a new connection would go to now (for random steering, one draw).
    pub serving: Option<String>,
}

/// Builds the status document from the published snapshot.
pub fn document(shared: &Shared) -> Status {
    let snap = shared.snapshot();
    let rt = &snap.rt;
    let report = shared.report();
    let remote = shared.remote();
    let mut obs = Vec::new();
    let apps = shared
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
                    observations(rt, &key, &report, &remote, Duration::ZERO, &mut obs);
                    let judged = judge(&obs, rt.region, shared.quorum());
                    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
                    OriginStatus {
                        name: o.name.to_string(),
                        address: o.addr.to_string(),
                        enabled: o.enabled,
                        weight: o.weight,
                        healthy: seen.up,
                        rtt_ms: seen.rtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                        last_change: row.filter(|r| r.checked).map(|r| {
                            let ms = wall_ms(shared, r.last_change);
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
                    }
                })
                .collect(),
        })
        .collect();
    let now = tokio::time::Instant::now();
    let load_balancers = rt
        .load_balancers
        .iter()
        .enumerate()
        .map(|(i, lb)| {
            let req = SteerRequest {
                client: std::net::Ipv4Addr::UNSPECIFIED.into(),
                now,
                random: rand::random(),
                exclude: &[],
                sticky: None,
                geo: crate::steering::ClientGeo::default(),
            };
            LbStatus {
                name: lb.name.to_string(),
                steering: lb.policy.as_str().into(),
                default_pools: lb
                    .default_pools
                    .iter()
                    .map(|p| rt.pools[*p].name.to_string())
                    .collect(),
                fallback_pool: rt.pools[lb.fallback_pool].name.to_string(),
                session_affinity: lb.affinity == crate::config::SessionAffinity::ClientIp,
                serving: steering::decide(rt, &snap.view, i, &req, &mut ())
                    .map(|d| rt.pools[d.pool].name.to_string()),
            }
        })
        .collect();
    let (members, drift) = match &shared.mesh {
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
        geo: Some(shared.geo.status()),
        node: NodeStatus {
            id: rt.node_id.to_string(),
            region: rt.region.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: shared.started.elapsed().as_secs(),
        },
        apps,
        pools,
        load_balancers,
    }
}

/// GETs `path` from a status endpoint; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let fail = |e: String| Error::Status { addr, message: e };
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| fail("connect timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| fail(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| fail("no answer within 10s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Fetches and decodes `/v1/status`.
pub async fn fetch(addr: SocketAddr) -> Result<Status, Error> {
    let (code, body) = http_get(addr, "/v1/status").await?;
    if code != 200 {
        return Err(Error::Status {
            addr,
            message: format!("/v1/status answered {code}"),
        });
    }
    serde_json::from_str(&body).map_err(|e| Error::Status {
        addr,
        message: format!("/v1/status is not a status document: {e}"),
    })
}

/// The readable form of a status document, for `switchyard status`.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}), switchyard {}, up {}",
        s.node.id,
        s.node.region,
        s.node.version,
        humantime::format_duration(Duration::from_secs(s.node.uptime))
    );
    if let Some(g) = &s.geo {
        match &g.database {
            Some(db) => {
                let _ = writeln!(
                    out,
                    "geoip {db} ({}, built {}, {} days old, {} overrides)",
                    g.r#type.as_deref().unwrap_or("?"),
                    g.build_date.as_deref().unwrap_or("?"),
                    g.age_days.unwrap_or(0),
                    g.overrides
                );
            }
            None => {
                let _ = writeln!(out, "geoip: no database ({} overrides)", g.overrides);
            }
        }
        if let Some(w) = &g.warning {
            let _ = writeln!(out, "warning: {w}");
        }
    }
    let mut table = Table::new(&[
        "APP",
        "LISTEN",
        "LOAD BALANCER",
        "ACTIVE",
        "TOTAL",
        "BYTES IN",
        "BYTES OUT",
    ]);
    for a in &s.apps {
        table.row(vec![
            a.name.clone(),
            a.listen.clone(),
            a.load_balancer.clone(),
            a.active.to_string(),
            a.total.to_string(),
            a.bytes_in.to_string(),
            a.bytes_out.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    let mut table = Table::new(&["LOAD BALANCER", "STEERING", "POOLS", "FALLBACK", "SERVING"]);
    for lb in &s.load_balancers {
        table.row(vec![
            lb.name.clone(),
            lb.steering.clone(),
            lb.default_pools.join(","),
            lb.fallback_pool.clone(),
            lb.serving.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    if !s.members.is_empty() {
        out.push('\n');
        out.push_str(&render_mesh(s));
    }
    let mut table = Table::new(&[
        "POOL", "ORIGIN", "ADDRESS", "HEALTH", "RTT", "SINCE", "REASON",
    ]);
    for p in &s.pools {
        let health = if p.healthy { "healthy" } else { "UNHEALTHY" };
        table.row(vec![
            p.name.clone(),
            String::new(),
            format!("min {}", p.minimum_origins),
            health.into(),
            String::new(),
            String::new(),
            p.monitor
                .clone()
                .map(|m| format!("monitor {m}"))
                .unwrap_or_else(|| "no monitor".into()),
        ]);
        for o in &p.origins {
            let health = match (o.enabled, o.healthy) {
                (false, _) => "disabled",
                (true, true) => "up",
                (true, false) => "DOWN",
            };
            table.row(vec![
                String::new(),
                o.name.clone(),
                o.address.clone(),
                health.into(),
                o.rtt_ms
                    .map(|r| format!("{r:.2}ms"))
                    .unwrap_or_else(|| "-".into()),
                o.last_change.clone().unwrap_or_else(|| "-".into()),
                o.reason.clone().unwrap_or_default(),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}

/// The member list and the origin x observer health matrix.
fn render_mesh(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut table = Table::new(&["MEMBER", "REGION", "ADDRESS", "STATE", "GENERATION", "RTT"]);
    for m in &s.members {
        table.row(vec![
            m.id.clone(),
            m.region.clone(),
            m.addr.clone(),
            m.state.clone(),
            m.generation.to_string(),
            m.rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table.render());
    for d in &s.drift {
        let _ = writeln!(
            out,
            "warning: {} runs a different config (fingerprint {}, ours {})",
            d.node, d.fingerprint, d.ours
        );
    }
    let observers: Vec<&str> = s.members.iter().map(|m| m.id.as_str()).collect();
    let mut header = vec!["POOL/ORIGIN".to_string()];
    header.extend(observers.iter().map(|o| o.to_string()));
    header.push("REGIONS".into());
    header.push("GLOBAL".into());
    let header: Vec<&str> = header.iter().map(|h| h.as_str()).collect();
    let mut table = Table::new(&header);
    for p in &s.pools {
        for o in &p.origins {
            let mut row = vec![format!("{}/{}", p.name, o.name)];
            for id in &observers {
                row.push(match o.observers.get(*id) {
                    Some(ob) => {
                        let h = if ob.healthy { "up" } else { "DOWN" };
                        match ob.rtt_ms {
                            Some(r) => format!("{h} {r:.1}ms"),
                            None => h.to_string(),
                        }
                    }
                    None => "-".into(),
                });
            }
            row.push(
                o.region_health
                    .iter()
                    .map(|(r, h)| format!("{r}:{}", if *h { "up" } else { "DOWN" }))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            row.push(match o.global_health {
                Some(true) => "up".into(),
                Some(false) => "DOWN".into(),
                None => "-".into(),
            });
            table.row(row);
        }
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}

struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
