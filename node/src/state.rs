//! What the status endpoint reads of a running node: the health hub, the metrics, the apps,
//! the mesh and where clients are. The app builds it and keeps it current; the other shells
//! take only the parts they need (the proxy its `ProxyContext`, the monitors the hub).

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use switchyard_gossip::Mesh;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::core::affinity::Affinity;
use crate::core::dns::DnsExplanation;
use crate::core::explain::{self, Explanation};
use crate::core::steering::{Request, TYPICAL_DRAW};
use crate::dns::DnsState;
use crate::hub::HealthHub;
use crate::locate::Locator;
use crate::metrics::Metrics;
use crate::proxy::AppSlot;

/// A running node's state.
pub struct NodeState {
    pub health: Arc<HealthHub>,
    pub metrics: Arc<Metrics>,
    pub affinity: Arc<Affinity>,
    pub locator: Arc<Locator>,
    /// The mesh, when `[mesh]` is configured.
    pub mesh: Option<Arc<Mesh>>,
    pub clock: Clock,
    /// The apps as status lists them, replaced on reload.
    pub apps: ArcSwap<Vec<AppInfo>>,
    /// Set when shutdown begins, so `/ready` tells load balancers in front to stop sending.
    pub draining: AtomicBool,
    /// The DNS server's answers, when `[dns]` is configured.
    pub dns: Option<Arc<DnsState>>,
}

/// An app as status shows it.
pub struct AppInfo {
    pub listen: String,
    pub slot: Arc<AppSlot>,
}

impl NodeState {
    /// Whether `/ready` says 200: not draining, not sick, no trouble of its own.
    pub fn ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::Relaxed)
            && self.health.sick().is_none()
            && self.health.trouble().is_empty()
    }

    /// Explains which nodes DNS answers `name` with for `client` now, and why.
    pub fn explain_dns(&self, name: &str, client: IpAddr) -> Result<DnsExplanation, String> {
        match &self.dns {
            Some(dns) => dns.explain(name, client),
            None => Err("this node answers no DNS: it has no [dns] section".into()),
        }
    }

    /// Explains how load balancer `lb` would steer a new connection from `client` now.
    pub fn explain(&self, lb: &str, client: IpAddr) -> Result<Explanation, String> {
        let snap = self.health.snapshot();
        let rt = &snap.rt;
        let Some(lb_idx) = rt.lb_index(lb) else {
            return Err(explain::unknown_load_balancer(rt, lb));
        };
        let located = self.locator.locate(client);
        let req = Request::new(
            rt,
            lb_idx,
            &self.affinity,
            client,
            located.geo,
            Instant::now(),
            TYPICAL_DRAW,
        );
        Ok(explain::explain(rt, &snap.view, lb_idx, &req, located))
    }
}
