//! The status document (`/v1/status`): what a node says about itself, its apps, pools,
//! load balancers and the mesh. Plain serde types, shared by the endpoint that writes them
//! and the CLI (and tests) that read them.

use serde::{Deserialize, Serialize};

use crate::locate::GeoStatus;

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
    pub geo: Option<GeoStatus>,
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
    /// On a down row, whose fault its node found it to be: `origin`, `path` (counts in its
    /// region only) or `unconfirmed`.
    #[serde(default)]
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub region: String,
    pub version: String,
    pub uptime: u64,
    /// The node's own trouble now (out of descriptors, overloaded...); empty when it is well.
    /// While it is not, `/ready` says 503, and the failures it causes count against no origin.
    #[serde(default)]
    pub trouble: Vec<TroubleStatus>,
    /// Set while the node disagrees with the mesh about most origins it checks: its rows
    /// count nowhere, it steers with the mesh's view, and `/ready` says 503.
    #[serde(default)]
    pub sick: Option<SickStatus>,
}

/// Why the node is sick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SickStatus {
    /// RFC 3339 time it became sick.
    pub since: String,
    /// Origins its probes find down that the peers asked reach...
    pub path_down: usize,
    /// ...of the origins it has checked.
    pub checked: usize,
    pub advice: String,
}

/// One kind of trouble the node has: what it ran out of, the latest error, and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TroubleStatus {
    /// `descriptors`, `memory`, `ports` or `overload`.
    pub kind: String,
    pub detail: String,
    /// Errors of this kind since it began.
    pub count: u64,
    /// RFC 3339 time it began and of the latest error.
    pub since: String,
    pub last: String,
    pub advice: String,
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
    /// While this node's probes find it down: whose fault it is, after asking peers to probe
    /// it (`pending` while they are asked, then `origin`, `path` or `unconfirmed`).
    #[serde(default)]
    pub verdict: Option<String>,
    /// What each peer asked answered (`up 12.3 ms`, `down: connect refused`, `no answer`).
    #[serde(default)]
    pub asked: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbStatus {
    pub name: String,
    pub steering: String,
    pub default_pools: Vec<String>,
    pub fallback_pool: String,
    pub session_affinity: bool,
    /// The pool a new connection would go to now (for random steering, the draw where most
    /// of the weight lies, so that two GETs agree).
    pub serving: Option<String>,
    /// `relay`: off, failover or fastest; empty from a node older than the relay.
    #[serde(default)]
    pub relay: String,
    /// The path to the origin `serving` goes to (`direct`, `via PEER (why)`), and why.
    #[serde(default)]
    pub path: Option<String>,
    /// Connections relayed so far, per peer and role, as the `switchyard_relayed_*`
    /// metrics count them.
    #[serde(default)]
    pub relayed: Vec<RelayedStatus>,
}

/// Connections of one load balancer relayed through or for one peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayedStatus {
    pub peer: String,
    /// `sent`: this node's clients, through the peer; `carried`: the peer's clients, carried
    /// by this node to the origin.
    pub role: String,
    pub connections: u64,
    /// Client to origin.
    pub bytes_in: u64,
    /// Origin to client.
    pub bytes_out: u64,
}
