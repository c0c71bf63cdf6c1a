//! What the status endpoint reads of a running node: the health hub, the metrics, the apps,
//! the mesh and where clients are. The app builds it and keeps it current; the other shells
//! take only the parts they need (the proxy its `ProxyContext`, the monitors the hub).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use switchyard_gossip::Mesh;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::core::affinity::Affinity;
use crate::core::anycast::{self, Announcer, AnycastReport, Conditions};
use crate::core::dns::DnsExplanation;
use crate::core::explain::{self, Explanation};
use crate::core::steering::{Request, TYPICAL_DRAW};
use crate::dns::DnsState;
use crate::hub::HealthHub;
use crate::locate::Locator;
use crate::metrics::{Metrics, PrefixLabels};
use crate::proxy::AppSlot;
use crate::relays::{Relays, Target};

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
    /// Set on SIGTERM with `[anycast]`: the prefixes are withdrawn while the node still
    /// serves, before it drains.
    pub withdrawing: AtomicBool,
    /// Whether each `[anycast]` prefix is announced, weighed by `weigh_anycast`.
    pub anycast: Mutex<Announcer>,
    /// The DNS server's answers, when `[dns]` is configured.
    pub dns: Option<Arc<DnsState>>,
    /// The relay's path decisions and their hold-down state (`crate::relays`).
    pub relays: Arc<Relays>,
}

/// An app as status shows it.
pub struct AppInfo {
    pub listen: String,
    pub slot: Arc<AppSlot>,
}

/// What to do about a sick node.
pub const SICK_ADVICE: &str = "check this node's network, DNS and firewall towards the origins; its own rows count nowhere until it agrees with the mesh again";

impl NodeState {
    /// Ok when the node takes traffic; else why not, in words for `/ready`'s body (one line
    /// per reason, each with what to do).
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining\n".into());
        }
        if self.withdrawing.load(Ordering::Relaxed) {
            return Err(
                "stopping: anycast prefixes withdrawn; serving for [anycast] withdraw_grace, then draining\n"
                    .into(),
            );
        }
        if let Some(sick) = self.health.sick() {
            return Err(format!(
                "sick: peers reach {} of the {} origins this node's probes find down; {SICK_ADVICE}\n",
                sick.path_down, sick.checked
            ));
        }
        let trouble = self.health.trouble();
        if !trouble.is_empty() {
            // Load balancers in front steer away from a node that cannot serve well.
            return Err(trouble
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
                .collect());
        }
        Ok(())
    }

    /// Weighs whether to announce each anycast prefix now: the node ready, and each
    /// prefix's apps servable in its view. Logs what changes.
    pub fn weigh_anycast(&self, now: Instant) {
        let mut announcer = self.anycast.lock().unwrap_or_else(|e| e.into_inner());
        if announcer.is_empty() {
            return;
        }
        let snap = self.health.snapshot();
        let cond = Conditions {
            stopping: self.withdrawing.load(Ordering::Relaxed)
                || self.draining.load(Ordering::Relaxed),
            unready: self
                .readiness()
                .err()
                .map(|r| r.trim_end().replace('\n', "; ")),
            unservable: anycast::unservable_apps(&snap.rt, &snap.view),
        };
        let before = announcer.announced();
        announcer.update(now, &cond);
        for p in announcer
            .report(&snap.rt.node_id, now, |_| String::new())
            .prefixes
        {
            self.metrics
                .anycast_announced
                .get_or_create(&PrefixLabels {
                    prefix: p.prefix.to_string(),
                })
                .set(i64::from(p.announce));
            if before.contains(&p.prefix) == p.announce {
                continue;
            }
            match (p.announce, p.reason) {
                (true, _) => tracing::info!(prefix = %p.prefix, "anycast: announcing"),
                (false, Some(why)) => {
                    tracing::warn!(prefix = %p.prefix, "anycast: withdrawn: {why}")
                }
                (false, None) => tracing::warn!(prefix = %p.prefix, "anycast: withdrawn"),
            }
        }
    }

    /// `/v1/anycast`.
    pub fn anycast_report(&self) -> AnycastReport {
        let node = self.health.snapshot().rt.node_id.clone();
        let announcer = self.anycast.lock().unwrap_or_else(|e| e.into_inner());
        announcer.report(&node, Instant::now(), |at| {
            let ms = self.clock.wall_ms(at);
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
    }

    /// Whether `/ready` says 200 (see [`NodeState::readiness`]).
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
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
        let mesh = self.mesh.as_ref().map(|m| m.state().borrow().clone());
        let now = Instant::now();
        Ok(explain::explain(
            rt,
            &snap.view,
            lb_idx,
            &req,
            located,
            |pool, origin| {
                let t = Target {
                    health: &self.health,
                    snap: &snap,
                    mesh: mesh.as_deref(),
                    lb: lb_idx,
                    pool,
                    origin,
                };
                self.relays.peek(&t, now)
            },
        ))
    }
}
