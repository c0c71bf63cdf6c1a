//! The node's one metrics registry (Prometheus text on `/metrics`). Built once by the app and
//! passed down; counters that status also shows (per-app connections and bytes) are the same
//! atomics, so the two never disagree.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum BytesDirection {
    /// Client to origin.
    In,
    /// Origin to client.
    Out,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub app: String,
    pub direction: BytesDirection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub app: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub pool: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub pool: String,
    pub origin: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub load_balancer: String,
    pub pool: String,
}

/// A local error: what the node ran out of, and where it noticed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalErrorLabels {
    pub kind: &'static str,
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<AppLabels, Counter>,
    pub active: Family<AppLabels, Gauge>,
    pub bytes: Family<BytesLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub connect_failures: Family<OriginLabels, Counter>,
    pub origin_healthy: Family<OriginLabels, Gauge>,
    pub origin_rtt: Family<OriginLabels, Gauge<f64, AtomicU64>>,
    pub probes: Family<ProbeLabels, Counter>,
    pub health_changes: Family<OriginLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    /// Session affinity entries held, and live ones evicted because the table was full.
    pub affinity_entries: Gauge,
    pub affinity_evictions: Counter,
    /// Status connections closed at once because `STATUS_MAX_CONNECTIONS` were open.
    pub status_refused: Counter,
    /// Status connections cut by a timeout: `header` (no complete request head in time,
    /// idle keep-alive included) or `idle` (no byte moved either way).
    pub status_timeouts: Family<ReasonLabels, Counter>,
    /// Days until the mesh certificate expires, computed when scraped.
    certificate_days_left: Gauge<f64, AtomicU64>,
    /// The mesh certificate's expiry, seconds since the Unix epoch (0: no mesh certificate).
    certificate_not_after: AtomicU64,
    pub local_errors: Family<LocalErrorLabels, Counter>,
    pub local_trouble: Gauge,
    pub runtime_lag: Gauge<f64, AtomicU64>,
    /// Verdicts on this node's down flips, by verdict (`origin`, `path`, `unconfirmed`).
    pub verdicts: Family<VerdictLabels, Counter>,
    pub sick: Gauge,
    /// 1 for each `[anycast]` prefix announced now, 0 for each withdrawn.
    pub anycast_announced: Family<PrefixLabels, Gauge>,
    pub relayed: Family<RelayedLabels, Counter>,
    pub relayed_bytes: Family<RelayedBytesLabels, Counter>,
    /// Relays this node asked for and did not get, so it went direct instead.
    pub relay_fallbacks: Family<RelayFallbackLabels, Counter>,
    /// Every (load balancer, peer, role) relayed so far, for status (a family cannot be
    /// listed).
    relayed_seen: Mutex<BTreeMap<(String, String, RelayRole), RelayedCounters>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

/// Which side of a relayed connection this node was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum RelayRole {
    /// This node received the client and sent the connection through the peer.
    Sent,
    /// The peer received the client; this node carried the connection to the origin.
    Carried,
}

impl RelayRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayRole::Sent => "sent",
            RelayRole::Carried => "carried",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayedLabels {
    pub load_balancer: String,
    pub peer: String,
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayedBytesLabels {
    pub load_balancer: String,
    pub peer: String,
    pub role: &'static str,
    pub direction: BytesDirection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayFallbackLabels {
    pub load_balancer: String,
    pub peer: String,
    pub reason: &'static str,
}

/// The counters of relayed connections of one (load balancer, peer, role).
#[derive(Clone, Debug, Default)]
pub struct RelayedCounters {
    pub connections: Counter,
    /// Client to origin.
    pub bytes_in: Counter,
    /// Origin to client.
    pub bytes_out: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefixLabels {
    pub prefix: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Metrics {
            connections: Family::default(),
            active: Family::default(),
            bytes: Family::default(),
            rejected: Family::default(),
            connect_failures: Family::default(),
            origin_healthy: Family::default(),
            origin_rtt: Family::default(),
            probes: Family::default(),
            health_changes: Family::default(),
            decisions: Family::default(),
            reloads: Family::default(),
            affinity_entries: Gauge::default(),
            affinity_evictions: Counter::default(),
            status_refused: Counter::default(),
            status_timeouts: Family::default(),
            certificate_days_left: Gauge::default(),
            certificate_not_after: AtomicU64::new(0),
            local_errors: Family::default(),
            local_trouble: Gauge::default(),
            runtime_lag: Gauge::default(),
            verdicts: Family::default(),
            sick: Gauge::default(),
            anycast_announced: Family::default(),
            relayed: Family::default(),
            relayed_bytes: Family::default(),
            relay_fallbacks: Family::default(),
            relayed_seen: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            m.active.clone(),
        );
        registry.register(
            "bytes",
            "Bytes proxied (in: client to origin)",
            m.bytes.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections refused (ip_rules, max_connections, no_origin)",
            m.rejected.clone(),
        );
        registry.register(
            "origin_connect_failures",
            "Failed connects to an origin while proxying",
            m.connect_failures.clone(),
        );
        registry.register(
            "origin_healthy",
            "1 if the origin is up in this node's view",
            m.origin_healthy.clone(),
        );
        registry.register(
            "origin_rtt_seconds",
            "Moving average of probe round-trip time",
            m.origin_rtt.clone(),
        );
        registry.register("probes", "Probe rounds by result", m.probes.clone());
        registry.register(
            "origin_health_changes",
            "Up/down flips seen by this node",
            m.health_changes.clone(),
        );
        registry.register(
            "steering_decisions",
            "Connections steered, by chosen pool",
            m.decisions.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "affinity_entries",
            "Session affinity entries held (bounded; see README)",
            m.affinity_entries.clone(),
        );
        registry.register(
            "affinity_evictions",
            "Live session affinity entries evicted because the table was full",
            m.affinity_evictions.clone(),
        );
        registry.register(
            "status_connections_refused",
            "Status endpoint connections closed at once: too many open",
            m.status_refused.clone(),
        );
        registry.register(
            "status_connections_timed_out",
            "Status endpoint connections cut by a timeout (header, idle)",
            m.status_timeouts.clone(),
        );
        registry.register(
            "local_errors",
            "Failures that were this node's own (kind: descriptors, memory, ports, overload; source: accept, connect, probe, runtime), not counted against any origin",
            m.local_errors.clone(),
        );
        registry.register(
            "local_trouble",
            "1 while the node is in trouble of its own (a local error within 30s, or overloaded); /ready says 503",
            m.local_trouble.clone(),
        );
        registry.register(
            "origin_verdicts",
            "Verdicts on this node's origins gone down, after asking peers to probe them: origin (they fail too), path (they reach it), unconfirmed (no answer)",
            m.verdicts.clone(),
        );
        registry.register(
            "node_sick",
            "1 while this node disagrees with the mesh about most origins it checks: its rows are withdrawn and /ready says 503",
            m.sick.clone(),
        );
        registry.register(
            "anycast_announced",
            "1 while this node wants the [anycast] prefix announced, 0 while withdrawn (see /v1/anycast for why)",
            m.anycast_announced.clone(),
        );
        registry.register(
            "relayed_connections",
            "Connections relayed through a peer node, by load balancer, peer and role (sent: this node's client went through the peer; carried: this node carried the peer's client to the origin)",
            m.relayed.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes of relayed connections, by load balancer, peer, role and direction (in: client to origin)",
            m.relayed_bytes.clone(),
        );
        registry.register(
            "relay_fallbacks",
            "Relays this node asked a peer for and did not get (reason: the peer's refusal, timeout or error), so the connection went direct instead",
            m.relay_fallbacks.clone(),
        );
        registry.register(
            "runtime_lag_seconds",
            "How late the runtime's last 250ms tick fired",
            m.runtime_lag.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Exports the days left until the mesh certificate expires from now on.
    pub fn set_certificate_expiry(&mut self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.certificate_not_after.swap(secs, Ordering::Relaxed) == 0 {
            self.registry.register(
                "mesh_certificate_days_left",
                "Days until this node's mesh certificate expires (negative: expired)",
                self.certificate_days_left.clone(),
            );
        }
    }

    /// A certificate loaded by a reload: the days left count from its expiry from now on.
    /// Only once [`Metrics::set_certificate_expiry`] has exported the metric (at start).
    pub fn update_certificate_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs > 0 && self.certificate_not_after.load(Ordering::Relaxed) != 0 {
            self.certificate_not_after.store(secs, Ordering::Relaxed);
        }
    }

    /// The counters of relayed connections of `lb` through or for `peer`.
    pub fn relayed(&self, lb: &str, peer: &str, role: RelayRole) -> RelayedCounters {
        let mut seen = self.relayed_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.entry((lb.to_string(), peer.to_string(), role))
            .or_insert_with(|| {
                let labels = RelayedLabels {
                    load_balancer: lb.to_string(),
                    peer: peer.to_string(),
                    role: role.as_str(),
                };
                let bytes = |direction| RelayedBytesLabels {
                    load_balancer: lb.to_string(),
                    peer: peer.to_string(),
                    role: role.as_str(),
                    direction,
                };
                // One statement each: see `AppStats::new`.
                let connections = self.relayed.get_or_create(&labels).clone();
                let bytes_in = self
                    .relayed_bytes
                    .get_or_create(&bytes(BytesDirection::In))
                    .clone();
                let bytes_out = self
                    .relayed_bytes
                    .get_or_create(&bytes(BytesDirection::Out))
                    .clone();
                RelayedCounters {
                    connections,
                    bytes_in,
                    bytes_out,
                }
            })
            .clone()
    }

    /// Every (load balancer, peer, role) relayed so far and its counters, sorted.
    pub fn relayed_all(&self) -> Vec<((String, String, RelayRole), RelayedCounters)> {
        let seen = self.relayed_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().map(|(k, c)| (k.clone(), c.clone())).collect()
    }

    /// For components (the mesh) that register their own metrics in the one registry.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let not_after = self.certificate_not_after.load(Ordering::Relaxed);
        if not_after > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64();
            self.certificate_days_left
                .set((not_after as f64 - now) / 86_400.0);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
