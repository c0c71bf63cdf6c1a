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
    Config, LoadBalancerConfig, OriginAddr, OriginSteering, SessionAffinity, SteeringPolicy,
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
    /// Enabled and healthy.
    pub up: bool,
    pub rtt: Option<Duration>,
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

impl View {
    /// Builds the view from the reports. A pool without a monitor counts every enabled
    /// origin as up; an origin no report mentions yet is presumed up.
    pub fn build(rt: &Runtime, report: &Report) -> View {
        let pools = rt
            .pools
            .iter()
            .map(|p| {
                let origins: Vec<OriginView> = p
                    .origins
                    .iter()
                    .map(|o| {
                        let row = p.monitor.as_ref().and_then(|_| {
                            report.rows.get(&OriginKey {
                                pool: p.name.clone(),
                                origin: o.name.clone(),
                            })
                        });
                        OriginView {
                            up: o.enabled && row.is_none_or(|r| r.healthy),
                            rtt: row.and_then(|r| r.rtt),
                        }
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

/// A runtime and the view built over it, published together.
#[derive(Debug)]
pub struct Snapshot {
    pub rt: Arc<Runtime>,
    pub view: Arc<View>,
}
