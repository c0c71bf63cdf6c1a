//! Explain: why a client would be steered where it would, in words. The same `decide` the
//! proxy runs, with a tracer that records each step, plus where the client's location came
//! from. The status endpoint serves it on `/v1/explain`; `switchyard explain` prints it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::OriginSteering;
use crate::core::client::Located;
use crate::core::compiled::CompiledConfig;
use crate::core::relay::Decision;
use crate::core::steering::{self, ListSource, OriginWhy, PoolWhy, Request, Step};
use crate::core::verdict;
use crate::core::view::View;

/// A decision and its reasons.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    pub load_balancer: String,
    pub steering: String,
    pub client: String,
    pub country: Option<String>,
    pub subdivision: Option<String>,
    pub region: Option<String>,
    /// Where the location came from: database, an override, no database, ...
    pub located_by: String,
    /// Each step, in order: whose view of health, which list, each pool considered.
    pub steps: Vec<String>,
    pub pool: Option<String>,
    pub pool_reason: Option<String>,
    pub origin: Option<String>,
    pub origin_address: Option<String>,
    pub origin_reason: Option<String>,
    /// The path to the origin: `direct` or `via PEER` (`core::relay`); None without an
    /// origin, or from a node older than the relay.
    #[serde(default)]
    pub path: Option<String>,
    /// Why that path, with the round trips compared.
    #[serde(default)]
    pub path_reason: Option<String>,
}

/// Why no explanation: the load balancer named is not in the config.
pub fn unknown_load_balancer(rt: &CompiledConfig, lb: &str) -> String {
    let names: Vec<&str> = rt.load_balancers.iter().map(|l| &*l.name).collect();
    format!(
        "no load balancer is named {lb:?} (known: {})",
        names.join(", ")
    )
}

/// Explains how load balancer `lb` steers `req`, a client `located` there: the same
/// `decide` the proxy runs, with a tracer that records each step; `path` gives the relay's
/// decision for the (pool, origin) chosen.
pub fn explain(
    rt: &CompiledConfig,
    view: &View,
    lb: usize,
    req: &Request<'_>,
    located: Located,
    path: impl FnOnce(usize, usize) -> Decision,
) -> Explanation {
    let l = &rt.load_balancers[lb];
    let mut steps: Vec<Step> = Vec::new();
    let decision = steering::decide(rt, view, lb, req, &mut steps);
    let from = located.geo.region.unwrap_or(rt.region);
    let mut lines: Vec<String> = Vec::new();
    if view.sick {
        lines.push(
            "this node is sick (peers reach most origins its probes find down): its own probes are set aside, health is the mesh's view"
                .into(),
        );
    }
    lines.extend(steps.iter().map(|s| describe(rt, view, from, s)));
    if let Some(d) = &decision {
        if view.pools[d.pool].origins[d.origin].kept_by_relay(l.relay) {
            lines.push(format!(
                "origin {} is down from this node by its path alone, and a peer reaches it: kept, its path relayed (relay = {})",
                rt.pools[d.pool].origins[d.origin].name,
                l.relay.as_str()
            ));
        }
    }
    let route = decision.as_ref().map(|d| path(d.pool, d.origin));
    let (pool, pool_reason, origin, origin_address, origin_reason) = match decision {
        Some(d) => {
            let p = &rt.pools[d.pool];
            let o = &p.origins[d.origin];
            (
                Some(p.name.to_string()),
                Some(pool_why(d.pool_why)),
                Some(o.name.to_string()),
                Some(o.addr.to_string()),
                Some(origin_why(d.origin_why, p.steering)),
            )
        }
        None => (None, None, None, None, None),
    };
    Explanation {
        load_balancer: l.name.to_string(),
        steering: l.policy.as_str().into(),
        client: req.client.to_string(),
        country: located.country,
        subdivision: located.subdivision,
        region: located.geo.region.map(|r| r.to_string()),
        located_by: located.source.describe(),
        steps: lines,
        pool,
        pool_reason,
        origin,
        origin_address,
        origin_reason,
        path: route.as_ref().map(|r| r.path.words()),
        path_reason: route.map(|r| r.reason),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn describe(rt: &CompiledConfig, view: &View, from: switchyard_geo::Region, s: &Step) -> String {
    let name = |p: usize| rt.pools[p].name.to_string();
    match s {
        Step::HealthFrom { region } => format!("health as seen from {region}"),
        Step::List { source } => format!("pools listed by {}", list(*source)),
        Step::PoolUnhealthy { pool, up, minimum } => format!(
            "pool {} passed over: unhealthy ({up} of {} origins up, {minimum} needed){}",
            name(*pool),
            view.pools[*pool].origins.len(),
            verdicts(rt, view, *pool)
        ),
        Step::PoolRtt { pool, rtt } => match rtt {
            Some(r) => format!("pool {} healthy, RTT {} from {from}", name(*pool), ms(*r)),
            None => format!("pool {} healthy, no RTT data", name(*pool)),
        },
        Step::PoolDistance { pool, km } => match km {
            Some(km) => format!("pool {} healthy, {km:.0} km from the client", name(*pool)),
            None => format!("pool {} healthy, distance unknown", name(*pool)),
        },
        Step::PoolTaken { pool, why } => format!("pool {} taken: {}", name(*pool), pool_why(*why)),
        Step::StickyExpired => "session affinity expired".into(),
        Step::StickyOriginDown => "session affinity origin is down; steering afresh".into(),
    }
}

/// This node's verdicts on the pool's origins its probes find down, as "; o1: path (...)".
fn verdicts(rt: &CompiledConfig, view: &View, pool: usize) -> String {
    let mut out = String::new();
    for (o, seen) in rt.pools[pool].origins.iter().zip(&view.pools[pool].origins) {
        if let Some(v) = seen.verdict {
            out.push_str(&format!(
                "; {} down from this node, verdict {}: {}",
                o.name,
                v.as_str(),
                verdict::meaning(v)
            ));
        }
    }
    out
}

fn list(source: ListSource) -> &'static str {
    match source {
        ListSource::NodePools => "node_pools (this node)",
        ListSource::CountryPools => "country_pools (the client's country)",
        ListSource::RegionPools => "region_pools (the client's region)",
        ListSource::DefaultPools => "default_pools",
    }
}

fn pool_why(w: PoolWhy) -> String {
    match w {
        PoolWhy::Affinity => "session affinity".into(),
        PoolWhy::Failover { rank } => format!(
            "first healthy pool (position {} of default_pools)",
            rank + 1
        ),
        PoolWhy::Random => "drawn by pool weight among healthy pools".into(),
        PoolWhy::Geo {
            source: ListSource::DefaultPools,
            rank,
        } => format!(
            "first healthy pool of default_pools (position {})",
            rank + 1
        ),
        PoolWhy::Geo { source, rank } => format!(
            "first healthy pool of {} then default_pools (position {})",
            list(source),
            rank + 1
        ),
        PoolWhy::Dynamic { rtt, from } => format!("lowest RTT from {from}: {}", ms(rtt)),
        PoolWhy::Proximity { km } => format!("nearest healthy pool: {km:.0} km"),
        PoolWhy::Unranked { rank } => format!(
            "no data to rank by; first healthy pool in failover order (position {})",
            rank + 1
        ),
        PoolWhy::Fallback => "no default pool is healthy: the fallback pool".into(),
    }
}

fn origin_why(w: OriginWhy, steering: OriginSteering) -> String {
    match w {
        OriginWhy::Affinity => "session affinity".into(),
        OriginWhy::Random => "weighted random among healthy origins".into(),
        OriginWhy::Hash => "consistent hash of the client address over healthy origins".into(),
        OriginWhy::LeastConnections => "fewest open connections per unit of weight".into(),
        OriginWhy::NoneHealthy => format!(
            "no healthy origin in the pool; an enabled one regardless of health ({steering:?})"
        ),
    }
}

/// The readable form, for `switchyard explain`.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "load balancer {} ({} steering), client {}",
        e.load_balancer, e.steering, e.client
    );
    let place = match (&e.country, &e.subdivision) {
        (Some(c), Some(s)) => format!("{c}-{s}"),
        (Some(c), None) => c.clone(),
        _ => "unknown country".into(),
    };
    let _ = writeln!(
        out,
        "client: {place}, region {} ({})",
        e.region.as_deref().unwrap_or("unknown"),
        e.located_by
    );
    for s in &e.steps {
        let _ = writeln!(out, "  - {s}");
    }
    match (&e.pool, &e.origin) {
        (Some(p), Some(o)) => {
            let _ = writeln!(
                out,
                "=> pool {p}, origin {o} ({}): {}",
                e.origin_address.as_deref().unwrap_or("?"),
                e.origin_reason.as_deref().unwrap_or("")
            );
            if let Some(path) = &e.path {
                let _ = writeln!(
                    out,
                    "   path {path}: {}",
                    e.path_reason.as_deref().unwrap_or("")
                );
            }
        }
        _ => {
            let _ = writeln!(out, "=> no origin: the chosen pool has no enabled origin");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_the_path_to_the_origin_under_it() {
        let mut e = Explanation {
            load_balancer: "lb".into(),
            steering: "failover".into(),
            client: "192.0.2.1".into(),
            country: None,
            subdivision: None,
            region: None,
            located_by: "no database".into(),
            steps: Vec::new(),
            pool: Some("weu".into()),
            pool_reason: Some("first healthy pool".into()),
            origin: Some("weu-1".into()),
            origin_address: Some("192.0.2.10:443".into()),
            origin_reason: Some("weighted random".into()),
            path: Some("via edge-seas (direct path down)".into()),
            path_reason: Some("via edge-seas: 160.0 ms to it + 170.0 ms".into()),
        };
        let text = render(&e);
        assert!(
            text.contains(
                "=> pool weu, origin weu-1 (192.0.2.10:443): weighted random\n   path via edge-seas (direct path down): via edge-seas: 160.0 ms"
            ),
            "{text}"
        );
        // From a node older than the relay: no path line.
        e.path = None;
        assert!(!render(&e).contains("path"), "{}", render(&e));
    }
}
