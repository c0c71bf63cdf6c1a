//! The client side of the status endpoint: what `switchyard status` and `switchyard explain`
//! use to fetch a node's documents and print them as tables.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::core::anycast::AnycastReport;
use crate::error::Error;
use crate::status::document::*;

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

/// Fetches and decodes `/v1/anycast`, giving up after `limit`.
pub async fn fetch_anycast(addr: SocketAddr, limit: Duration) -> Result<AnycastReport, Error> {
    let fail = |message: String| Error::Status { addr, message };
    let (code, body) = tokio::time::timeout(limit, http_get(addr, "/v1/anycast"))
        .await
        .map_err(|_| fail(format!("/v1/anycast did not answer within {limit:?}")))??;
    if code != 200 {
        return Err(fail(format!("/v1/anycast answered {code}")));
    }
    serde_json::from_str(&body).map_err(|e| fail(format!("/v1/anycast is not a report: {e}")))
}

/// The relay policy and the path of the origin served, in one cell: `fastest: direct`.
fn relay_cell(lb: &LbStatus) -> String {
    match (lb.relay.as_str(), &lb.path) {
        ("", _) => "-".into(),
        (policy, Some(path)) => {
            let short = path.split(": ").next().unwrap_or(path);
            format!("{policy}: {short}")
        }
        (policy, None) => policy.into(),
    }
}

/// The readable form of an anycast report, one line per prefix; empty without `[anycast]`.
pub fn render_anycast(r: &AnycastReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for p in &r.prefixes {
        let _ = write!(
            out,
            "ANYCAST {} ({}): {} since {}",
            p.prefix,
            p.apps.join(", "),
            if p.announce { "announced" } else { "withdrawn" },
            p.since
        );
        if let Some(why) = &p.reason {
            let _ = write!(out, "; {why}");
        }
        if let Some(ms) = p.change_in_ms {
            let _ = write!(
                out,
                "; {} in {} if that holds",
                if p.announce { "withdrawn" } else { "announced" },
                humantime::format_duration(Duration::from_millis(ms))
            );
        }
        out.push('\n');
    }
    out
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
    for t in &s.node.trouble {
        let _ = writeln!(
            out,
            "TROUBLE {}: {} ({} errors since {}); failures it causes count against no origin; {}",
            t.kind, t.detail, t.count, t.since, t.advice
        );
    }
    if let Some(sick) = &s.node.sick {
        let _ = writeln!(
            out,
            "SICK since {}: peers reach {} of the {} origins this node's probes find down; its rows count nowhere; {}",
            sick.since, sick.path_down, sick.checked, sick.advice
        );
    }
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
    let mut table = Table::new(&[
        "LOAD BALANCER",
        "STEERING",
        "POOLS",
        "FALLBACK",
        "SERVING",
        "RELAY",
    ]);
    for lb in &s.load_balancers {
        table.row(vec![
            lb.name.clone(),
            lb.steering.clone(),
            lb.default_pools.join(","),
            lb.fallback_pool.clone(),
            lb.serving.clone().unwrap_or_else(|| "-".into()),
            relay_cell(lb),
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
                match (&o.reason, &o.verdict) {
                    (Some(r), Some(v)) => format!("{r} (verdict: {v})"),
                    (r, _) => r.clone().unwrap_or_default(),
                },
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
