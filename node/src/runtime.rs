//! What steering reads: the compiled config (`Runtime`: pools, origins and load balancers
//! addressed by index) and the health `View` built over it from health reports. Both are
//! immutable and swapped together as one `Snapshot`, so a connection never sees a view of one
//! config applied to another.
//!
//! A node's own observations form its local `Report`; the mesh will add other nodes' reports,
//! and the view will merge them. Today the view holds the local report only.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use switchyard_geo::Region;

use crate::config::{
    Config, LoadBalancerConfig, OriginAddr, OriginSteering, Quorum, SessionAffinity,
    SteeringPolicy, Vantage,
};
use crate::health::OriginHealth;

/// Identifies an origin across reloads and, later, across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginKey {
    pub pool: Arc<str>,
    pub origin: Arc<str>,
}

/// A node's health observations, one row per probed origin.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: HashMap<OriginKey, OriginHealth>,
}

#[derive(Debug)]
pub struct Origin {
    pub name: Arc<str>,
    pub addr: OriginAddr,
    pub weight: f64,
    pub enabled: bool,
    /// Open proxied connections from this node, for least-connections steering. Shared with
    /// the previous runtime, so a reload does not forget them.
    pub active: Arc<AtomicU32>,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub monitor: Option<String>,
    pub minimum_origins: usize,
    pub steering: OriginSteering,
    pub origins: Vec<Origin>,
    /// Regions whose nodes probe this pool; empty: all.
    pub check_regions: Vec<Region>,
    /// For proximity steering.
    pub location: Option<(f64, f64)>,
}

impl Pool {
    /// Whether nodes of `region` probe this pool; the others rely on the mesh.
    pub fn probed_from(&self, region: Region) -> bool {
        self.monitor.is_some()
            && (self.check_regions.is_empty() || self.check_regions.contains(&region))
    }
}

#[derive(Debug)]
pub struct LoadBalancer {
    pub name: Arc<str>,
    pub policy: SteeringPolicy,
    /// Indices into `Runtime::pools`, in failover order.
    pub default_pools: Vec<usize>,
    /// Weights of `default_pools`, same order, for random steering.
    pub pool_weights: Vec<f64>,
    pub fallback_pool: usize,
    pub affinity: SessionAffinity,
    pub affinity_ttl: Duration,
    /// Geo steering: pools per client region (by `Region::index`), per country (sorted by
    /// code, for binary search), and this node's own list from `node_pools`.
    pub region_pools: [Vec<usize>; 13],
    pub country_pools: Vec<([u8; 2], Vec<usize>)>,
    pub node_pools: Option<Vec<usize>>,
    /// Dynamic steering measures RTT from the client's region or the receiving node's.
    pub vantage: Vantage,
}

/// The compiled config.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub node_id: Arc<str>,
    pub region: Region,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
    pool_index: HashMap<Arc<str>, usize>,
    lb_index: HashMap<Arc<str>, usize>,
}

impl Runtime {
    /// Compiles a validated config. `prev` lends its connection counters to origins that
    /// survive the reload.
    pub fn compile(config: Arc<Config>, prev: Option<&Runtime>) -> Runtime {
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|p| {
                let name: Arc<str> = p.name.as_str().into();
                let origins = p
                    .origins
                    .iter()
                    .map(|o| {
                        let active = prev
                            .and_then(|r| r.origin(&p.name, &o.name))
                            .map(|prev| prev.active.clone())
                            .unwrap_or_default();
                        Origin {
                            name: o.name.as_str().into(),
                            // Validated before compiling; a failure here is a bug in validate().
                            addr: OriginAddr::parse(&o.address).unwrap_or(OriginAddr {
                                host: o.address.clone(),
                                port: 0,
                                ip: None,
                            }),
                            weight: o.weight,
                            enabled: o.enabled,
                            active,
                        }
                    })
                    .collect();
                Pool {
                    name,
                    monitor: p.monitor.clone(),
                    minimum_origins: p.minimum_origins,
                    steering: p.origin_steering,
                    origins,
                    check_regions: p.check_regions.clone(),
                    location: p.latitude.zip(p.longitude),
                }
            })
            .collect();
        let pool_index: HashMap<Arc<str>, usize> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let idx = |name: &str| pool_index.get(name).copied().unwrap_or(0);
        let load_balancers: Vec<LoadBalancer> = config
            .load_balancers
            .iter()
            .map(|lb: &LoadBalancerConfig| {
                let default_pools: Vec<usize> = lb.default_pools.iter().map(|p| idx(p)).collect();
                LoadBalancer {
                    name: lb.name.as_str().into(),
                    policy: lb.steering,
                    pool_weights: lb
                        .default_pools
                        .iter()
                        .map(|p| lb.pool_weights.get(p).copied().unwrap_or(1.0))
                        .collect(),
                    fallback_pool: lb
                        .fallback_pool
                        .as_deref()
                        .map(idx)
                        .or_else(|| default_pools.last().copied())
                        .unwrap_or(0),
                    default_pools,
                    affinity: lb.session_affinity,
                    affinity_ttl: lb.affinity_ttl,
                    region_pools: std::array::from_fn(|i| {
                        let region = Region::ALL[i];
                        lb.region_pools
                            .iter()
                            .find(|(k, _)| k.parse::<Region>().ok() == Some(region))
                            .map(|(_, v)| v.iter().map(|p| idx(p)).collect())
                            .unwrap_or_default()
                    }),
                    country_pools: {
                        let mut v: Vec<([u8; 2], Vec<usize>)> = lb
                            .country_pools
                            .iter()
                            .filter_map(|(k, v)| {
                                let b = k.as_bytes();
                                (b.len() == 2).then(|| {
                                    (
                                        [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()],
                                        v.iter().map(|p| idx(p)).collect(),
                                    )
                                })
                            })
                            .collect();
                        v.sort_by_key(|(c, _)| *c);
                        v
                    },
                    node_pools: lb
                        .node_pools
                        .get(&config.node.id)
                        .map(|v| v.iter().map(|p| idx(p)).collect()),
                    vantage: lb.vantage,
                }
            })
            .collect();
        let lb_index = load_balancers
            .iter()
            .enumerate()
            .map(|(i, lb)| (lb.name.clone(), i))
            .collect();
        Runtime {
            node_id: config.node.id.as_str().into(),
            region: config.node.region,
            config,
            pools,
            load_balancers,
            pool_index,
            lb_index,
        }
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pool_index.get(name).copied()
    }

    pub fn lb_index(&self, name: &str) -> Option<usize> {
        self.lb_index.get(name).copied()
    }

    pub fn origin(&self, pool: &str, origin: &str) -> Option<&Origin> {
        let p = &self.pools[self.pool_index(pool)?];
        p.origins.iter().find(|o| &*o.name == origin)
    }

    pub fn origin_index(&self, pool: &str, origin: &str) -> Option<(usize, usize)> {
        let pi = self.pool_index(pool)?;
        let oi = self.pools[pi]
            .origins
            .iter()
            .position(|o| &*o.name == origin)?;
        Some((pi, oi))
    }

    pub fn key(&self, pool: usize, origin: usize) -> OriginKey {
        let p = &self.pools[pool];
        OriginKey {
            pool: p.name.clone(),
            origin: p.origins[origin].name.clone(),
        }
    }
}

/// Health of one origin as steering sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OriginView {
    /// Enabled and healthy as seen from this node's region (else globally).
    pub up: bool,
    /// Mean RTT from this node's region (else from everywhere).
    pub rtt: Option<Duration>,
    pub enabled: bool,
    /// Whether the pool has a monitor: without one, every enabled origin is up everywhere.
    pub monitored: bool,
    /// Per region (by `Region::index`): whether a quorum of its live observers sees the
    /// origin up; None where nobody observes it.
    pub regional: [Option<bool>; 13],
    /// Per region: the mean RTT its observers measured.
    pub regional_rtt: [Option<Duration>; 13],
    /// A majority of observing regions see it up; None without observers.
    pub global: Option<bool>,
}

impl OriginView {
    /// An origin of a pool without a monitor, or one nobody has checked yet.
    pub fn unobserved(enabled: bool, monitored: bool) -> OriginView {
        OriginView {
            up: enabled,
            rtt: None,
            enabled,
            monitored,
            regional: [None; 13],
            regional_rtt: [None; 13],
            global: None,
        }
    }

    /// Health as seen from `region`: that region's judgement when it has observers, else
    /// `node_region`'s, else global; an origin nobody observes is presumed up.
    pub fn up_from(&self, region: Region, node_region: Region) -> bool {
        if !self.enabled {
            return false;
        }
        if !self.monitored {
            return true;
        }
        self.regional[region.index()]
            .or(self.regional[node_region.index()])
            .or(self.global)
            .unwrap_or(true)
    }

    /// RTT as measured from `region`, else from `node_region`.
    pub fn rtt_from(&self, region: Region, node_region: Region) -> Option<Duration> {
        self.regional_rtt[region.index()].or(self.regional_rtt[node_region.index()])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub healthy: bool,
    pub origins: Vec<OriginView>,
}

/// The health of every pool and origin of a runtime, indexed like it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub pools: Vec<PoolView>,
}

/// One node's latest row for one origin, as the view weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Obs {
    pub node: Arc<str>,
    pub region: Region,
    pub healthy: bool,
    pub rtt: Option<Duration>,
    /// Time since the row was written (local) or last received (remote).
    pub age: Duration,
}

/// Another node's rows, as the mesh delivered them.
#[derive(Debug, Clone)]
pub struct RemoteReport {
    pub node: Arc<str>,
    pub region: Region,
    /// False while SWIM believes the node down: its rows then count nowhere.
    pub live: bool,
    pub rows: HashMap<OriginKey, Obs>,
}

/// What the mesh concludes about one origin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Judgement {
    /// Per observing region: whether its live observers meet the quorum.
    pub regions: Vec<(Region, bool)>,
    /// A majority of the observing regions see it up; None without observers.
    pub global: Option<bool>,
    /// What steering uses: the receiving node's region when it has observers, else global.
    pub healthy: Option<bool>,
    /// Mean RTT seen from the node's region (or from everywhere when it has none).
    pub rtt: Option<Duration>,
    /// Per observing region with RTT data, the mean RTT its observers measured.
    pub region_rtt: Vec<(Region, Duration)>,
}

/// Weighs the observations of one origin, as Cloudflare's regional health does: first the
/// health as seen from `region`, then global health.
pub fn judge(obs: &[Obs], region: Region, quorum: Quorum) -> Judgement {
    let mut regions: Vec<(Region, usize, usize)> = Vec::new();
    for o in obs {
        match regions.iter_mut().find(|(r, _, _)| *r == o.region) {
            Some((_, up, total)) => {
                *up += usize::from(o.healthy);
                *total += 1;
            }
            None => regions.push((o.region, usize::from(o.healthy), 1)),
        }
    }
    regions.sort_by_key(|(r, _, _)| *r);
    let regions: Vec<(Region, bool)> = regions
        .into_iter()
        .map(|(r, up, total)| (r, quorum.met(up, total)))
        .collect();
    let global = if regions.is_empty() {
        None
    } else {
        let up = regions.iter().filter(|(_, h)| *h).count();
        Some(up * 2 > regions.len())
    };
    let local = regions.iter().find(|(r, _)| *r == region).map(|(_, h)| *h);
    let mean = |it: &mut dyn Iterator<Item = Duration>| {
        let (sum, n) = it.fold((Duration::ZERO, 0u32), |(s, n), d| (s + d, n + 1));
        (n > 0).then(|| sum / n)
    };
    let rtt = mean(
        &mut obs
            .iter()
            .filter(|o| o.region == region)
            .filter_map(|o| o.rtt),
    )
    .or_else(|| mean(&mut obs.iter().filter_map(|o| o.rtt)));
    let region_rtt = regions
        .iter()
        .filter_map(|(r, _)| {
            mean(&mut obs.iter().filter(|o| o.region == *r).filter_map(|o| o.rtt)).map(|d| (*r, d))
        })
        .collect();
    Judgement {
        region_rtt,
        healthy: local.or(global),
        regions,
        global,
        rtt,
    }
}

impl View {
    /// Builds the view from this node's report alone.
    pub fn build(rt: &Runtime, report: &Report) -> View {
        View::build_mesh(rt, report, &[], Quorum::Majority, Duration::ZERO)
    }

    /// Builds the view from this node's report and the other nodes' (`remote`). An origin of
    /// a monitored pool is up when the mesh judges it so (`judge`); an origin nobody has
    /// checked yet is presumed up; a pool without a monitor counts every enabled origin up.
    pub fn build_mesh(
        rt: &Runtime,
        report: &Report,
        remote: &[RemoteReport],
        quorum: Quorum,
        local_age: Duration,
    ) -> View {
        let mut obs = Vec::new();
        let pools = rt
            .pools
            .iter()
            .map(|p| {
                let origins: Vec<OriginView> = p
                    .origins
                    .iter()
                    .map(|o| {
                        if p.monitor.is_none() {
                            return OriginView::unobserved(o.enabled, false);
                        }
                        let key = OriginKey {
                            pool: p.name.clone(),
                            origin: o.name.clone(),
                        };
                        observations(rt, &key, report, remote, local_age, &mut obs);
                        let j = judge(&obs, rt.region, quorum);
                        let mut v = OriginView::unobserved(o.enabled, true);
                        v.up = o.enabled && j.healthy.unwrap_or(true);
                        v.rtt = j.rtt;
                        v.global = j.global;
                        for (r, h) in &j.regions {
                            v.regional[r.index()] = Some(*h);
                        }
                        for (r, rtt) in &j.region_rtt {
                            v.regional_rtt[r.index()] = Some(*rtt);
                        }
                        v
                    })
                    .collect();
                let up = origins.iter().filter(|o| o.up).count();
                PoolView {
                    healthy: up >= p.minimum_origins,
                    origins,
                }
            })
            .collect();
        View { pools }
    }
}

/// Collects into `out` the observations of `key` that count: this node's, once checked, and
/// those of live remote nodes.
pub fn observations(
    rt: &Runtime,
    key: &OriginKey,
    report: &Report,
    remote: &[RemoteReport],
    local_age: Duration,
    out: &mut Vec<Obs>,
) {
    out.clear();
    if let Some(row) = report.rows.get(key).filter(|r| r.checked) {
        out.push(Obs {
            node: rt.node_id.clone(),
            region: rt.region,
            healthy: row.healthy,
            rtt: row.rtt,
            age: local_age,
        });
    }
    for r in remote.iter().filter(|r| r.live && r.node != rt.node_id) {
        if let Some(o) = r.rows.get(key) {
            out.push(o.clone());
        }
    }
}

/// A runtime and the view built over it, published together.
#[derive(Debug)]
pub struct Snapshot {
    pub rt: Arc<Runtime>,
    pub view: Arc<View>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(node: &str, region: Region, healthy: bool, rtt_ms: u64) -> Obs {
        Obs {
            node: node.into(),
            region,
            healthy,
            rtt: Some(Duration::from_millis(rtt_ms)),
            age: Duration::ZERO,
        }
    }

    #[test]
    fn own_region_first_then_global() {
        use Region::*;
        // WEU sees it down (2 of 3), WNAM and SEAS see it up.
        let o = [
            obs("w1", Weu, false, 10),
            obs("w2", Weu, false, 10),
            obs("w3", Weu, true, 10),
            obs("n1", Wnam, true, 80),
            obs("s1", Seas, true, 160),
        ];
        let j = judge(&o, Weu, Quorum::Majority);
        assert_eq!(j.regions, vec![(Wnam, true), (Weu, false), (Seas, true)]);
        assert_eq!(j.global, Some(true));
        assert_eq!(j.healthy, Some(false), "the node's own region wins");
        assert_eq!(j.rtt, Some(Duration::from_millis(10)));
        // A node in a region with no observer uses global health and everyone's RTT.
        let j = judge(&o, Neas, Quorum::Majority);
        assert_eq!(j.healthy, Some(true));
        assert_eq!(j.rtt, Some(Duration::from_millis(54)));
        // Nobody observes: no judgement.
        assert_eq!(judge(&[], Weu, Quorum::Majority).healthy, None);
    }

    #[test]
    fn quorum_rules() {
        use Region::*;
        let o = [
            obs("a", Weu, true, 1),
            obs("b", Weu, false, 1),
            obs("c", Weu, false, 1),
        ];
        let at = |q| judge(&o, Weu, q).healthy;
        assert_eq!(at(Quorum::Any), Some(true));
        assert_eq!(at(Quorum::Majority), Some(false));
        assert_eq!(at(Quorum::All), Some(false));
        assert_eq!(at(Quorum::Fraction(0.3)), Some(true));
        assert_eq!(at(Quorum::Fraction(0.5)), Some(false));
        // Global health is a majority of observing regions: 1 of 2 is not.
        let split = [obs("a", Weu, true, 1), obs("b", Wnam, false, 1)];
        assert_eq!(judge(&split, Seas, Quorum::Majority).global, Some(false));
    }

    #[test]
    fn a_node_that_has_not_probed_yet_steers_with_the_mesh() {
        use crate::health::OriginHealth;
        let text = r#"
[node]
id = "fresh"
region = "WEU"
[[monitor]]
name = "m"
type = "tcp"
[[pool]]
name = "p"
monitor = "m"
origins = [{ name = "o", address = "127.0.0.1:1" }]
[[load_balancer]]
name = "lb"
default_pools = ["p"]
"#;
        let rt = Runtime::compile(Arc::new(Config::parse(text, None).unwrap()), None);
        let key = rt.key(0, 0);
        // This node's own row exists but no round has finished: it must not count.
        let mut report = Report::default();
        report.rows.insert(
            key.clone(),
            OriginHealth::unchecked(tokio::time::Instant::now()),
        );
        let peer = RemoteReport {
            node: "old-timer".into(),
            region: Region::Weu,
            live: true,
            rows: HashMap::from([(key.clone(), obs("old-timer", Region::Weu, false, 3))]),
        };
        let view = View::build_mesh(
            &rt,
            &report,
            std::slice::from_ref(&peer),
            Quorum::Majority,
            Duration::ZERO,
        );
        assert!(!view.pools[0].origins[0].up, "the mesh says down");
        // Once the peer is declared down, its rows stop counting.
        let gone = RemoteReport {
            live: false,
            ..peer
        };
        let view = View::build_mesh(&rt, &report, &[gone], Quorum::Majority, Duration::ZERO);
        assert!(
            view.pools[0].origins[0].up,
            "nobody live observes it: presumed up"
        );
    }
}
