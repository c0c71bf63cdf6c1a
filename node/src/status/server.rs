//! The status endpoint on `status_listen`: `/v1/status` (JSON), `/v1/explain`, `/metrics`
//! (Prometheus), `/live` and `/ready`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SessionAffinity;
use crate::core::client::ClientGeo;
use crate::core::steering::{self, Request as SteerRequest, TYPICAL_DRAW};
use crate::core::view::{judge, observations};
use crate::state::NodeState;
use crate::status::document::*;

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
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
            match state.explain(&lb, ip) {
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
            let trouble = state.health.trouble();
            if state.draining.load(Ordering::Relaxed) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if !trouble.is_empty() {
                // Load balancers in front steer away from a node that cannot serve well.
                let body: String = trouble
                    .iter()
                    .map(|t| {
                        format!(
                            "in trouble: {} ({} errors): {}; {}\n",
                            t.cause.as_str(),
                            t.count,
                            t.detail,
                            t.cause.advice()
                        )
                    })
                    .collect();
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
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

/// Builds the status document from the published snapshot.
pub fn document(state: &NodeState) -> Status {
    let snap = state.health.snapshot();
    let rt = &snap.rt;
    let report = state.health.report();
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
                    observations(rt, &key, &report, &remote, Duration::ZERO, &mut obs);
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
    let now = Instant::now();
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
                serving: steering::decide(rt, &snap.view, i, &req, &mut ())
                    .map(|d| rt.pools[d.pool].name.to_string()),
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
        },
        apps,
        pools,
        load_balancers,
    }
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
