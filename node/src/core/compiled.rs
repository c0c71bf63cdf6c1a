//! The compiled config: pools, origins and load balancers addressed by index, names resolved
//! once, so steering reads plain vectors. Compiled from a validated `Config`, immutable, and
//! replaced whole on reload (origins that survive a reload keep their connection counters).

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use switchyard_geo::Region;

use crate::config::{
    Config, LoadBalancerConfig, MonitorConfig, OriginAddr, OriginSteering, RelayPolicy,
    SessionAffinity, SteeringPolicy, Vantage,
};

/// Identifies an origin across reloads and across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginKey {
    pub pool: Arc<str>,
    pub origin: Arc<str>,
}

/// What a monitor probes for one origin: while a reload leaves this unchanged, the origin
/// keeps its health and its monitor task.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    pub addr: OriginAddr,
    pub monitor: MonitorConfig,
}

#[derive(Debug)]
pub struct Origin {
    pub name: Arc<str>,
    pub addr: OriginAddr,
    pub weight: f64,
    pub enabled: bool,
    /// Open proxied connections from this node, for least-connections steering. Shared with
    /// the previous compiled config, so a reload does not forget them.
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
    /// Indices into `CompiledConfig::pools`, in failover order.
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
    /// When a connection to the chosen origin goes through a peer (`core::relay`).
    pub relay: RelayPolicy,
}

impl LoadBalancer {
    /// Every pool this load balancer may send a client to, whoever the client is: its
    /// default pools, its fallback, and its region, country and node pools (with repeats).
    pub fn candidate_pools(&self) -> impl Iterator<Item = usize> + '_ {
        self.default_pools
            .iter()
            .chain(std::iter::once(&self.fallback_pool))
            .chain(self.region_pools.iter().flatten())
            .chain(self.country_pools.iter().flat_map(|(_, p)| p))
            .chain(self.node_pools.iter().flatten())
            .copied()
    }
}

/// The compiled config.
#[derive(Debug)]
pub struct CompiledConfig {
    pub config: Arc<Config>,
    pub node_id: Arc<str>,
    pub region: Region,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
    pool_index: HashMap<Arc<str>, usize>,
    lb_index: HashMap<Arc<str>, usize>,
}

impl CompiledConfig {
    /// Compiles a validated config. `prev` lends its connection counters to origins that
    /// survive the reload.
    pub fn compile(config: Arc<Config>, prev: Option<&CompiledConfig>) -> CompiledConfig {
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
                            addr: o.address.clone(),
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
                            .find(|(r, _)| *r == region)
                            .map(|(_, v)| v.iter().map(|p| idx(p)).collect())
                            .unwrap_or_default()
                    }),
                    // In the map's order, which is the codes' order binary search needs.
                    country_pools: lb
                        .country_pools
                        .iter()
                        .map(|(c, v)| (*c.as_bytes(), v.iter().map(|p| idx(p)).collect()))
                        .collect(),
                    node_pools: lb
                        .node_pools
                        .get(&config.node.id)
                        .map(|v| v.iter().map(|p| idx(p)).collect()),
                    vantage: lb.vantage,
                    relay: lb.relay,
                }
            })
            .collect();
        let lb_index = load_balancers
            .iter()
            .enumerate()
            .map(|(i, lb)| (lb.name.clone(), i))
            .collect();
        CompiledConfig {
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

    /// The probe target of an origin, if this node probes its pool.
    pub fn probe_target(&self, key: &OriginKey) -> Option<ProbeTarget> {
        let (pi, _) = self.origin_index(&key.pool, &key.origin)?;
        if !self.pools[pi].probed_from(self.region) {
            return None;
        }
        self.ask_target(key)
    }

    /// What a peer's ask to probe `key` now probes: its monitor's target, even where the
    /// pool's `check_regions` leave this node out (a one-off probe, asked for a second
    /// opinion). None when the origin is not in this config or its pool has no monitor.
    pub fn ask_target(&self, key: &OriginKey) -> Option<ProbeTarget> {
        let (pi, oi) = self.origin_index(&key.pool, &key.origin)?;
        let pool = &self.pools[pi];
        let monitor = self.config.monitor(pool.monitor.as_deref()?)?.clone();
        Some(ProbeTarget {
            addr: pool.origins[oi].addr.clone(),
            monitor,
        })
    }

    pub fn key(&self, pool: usize, origin: usize) -> OriginKey {
        let p = &self.pools[pool];
        OriginKey {
            pool: p.name.clone(),
            origin: p.origins[origin].name.clone(),
        }
    }
}

/// Configs that unit tests across the crate compile.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// A WEU node with one monitored pool `p` of one origin `o` (no retries), behind load
    /// balancer `lb`.
    pub const ONE_POOL: &str = r#"
[node]
id = "n1"
region = "WEU"
[[monitor]]
name = "m"
type = "tcp"
retries = 0
[[pool]]
name = "p"
monitor = "m"
origins = [{ name = "o", address = "127.0.0.1:1" }]
[[load_balancer]]
name = "lb"
default_pools = ["p"]
"#;

    pub fn compile(text: &str) -> CompiledConfig {
        CompiledConfig::compile(Arc::new(Config::parse(text, None).unwrap()), None)
    }

    /// [`ONE_POOL`] with other origins: (name, address).
    pub fn one_pool_of(origins: &[(&str, &str)]) -> CompiledConfig {
        let list: Vec<String> = origins
            .iter()
            .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
            .collect();
        let text = ONE_POOL.replace(
            r#"[{ name = "o", address = "127.0.0.1:1" }]"#,
            &format!("[{}]", list.join(", ")),
        );
        compile(&text)
    }
}
