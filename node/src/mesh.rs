//! The glue between the node and the mesh: starts the mesh from `[mesh]`, hands this node's
//! health rows to it, turns what it delivers (other nodes' rows) into the `RemoteReport`s
//! the health view weighs, and on a reload hands it the certificates, CA bundle and
//! revocation list read again ([`load_tls`], [`reload_tls`]). It also carries blame asked of
//! peers (`core::verdict`) both ways: this node's down flips are asked about before they are
//! broadcast, and peers' asks are probed and answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchyard_geo::Region;
use switchyard_gossip::tls::NodeTls;
use switchyard_gossip::{
    Advert, LocalRow, MemberState, Mesh, MeshConfig, MeshMetrics, MeshState, PreparedTls, ProbeAsk,
    ProbeOutcome,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::{Config, MeshSection};
use crate::core::compiled::{OriginKey, ProbeTarget};
use crate::core::dns::{settle_rtt, Node};
use crate::core::health::Attempt;
use crate::core::verdict::{self, Verdict};
use crate::core::view::{Obs, RemoteReport, Report};
use crate::error::Error;
use crate::hub::{HealthHub, VerdictWanted};
use crate::metrics::Metrics;

/// A certificate closer than this to its expiry is warned about, at start and on reload.
const CERT_WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Reads and checks the mesh's TLS files: the CA bundle, this node's certificate and key,
/// and the revocation list. Each error names the file at fault.
pub fn load_tls(m: &MeshSection) -> Result<NodeTls, Error> {
    Ok(switchyard_gossip::tls::load_with(
        &m.ca,
        &m.cert,
        &m.key,
        m.revoked.as_deref(),
    )?)
}

/// Warns when the certificate expires within [`CERT_WARN_BEFORE`].
fn warn_if_expiring(tls: &NodeTls, m: &MeshSection) {
    let Some(not_after) = tls.not_after() else {
        return;
    };
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    if left < CERT_WARN_BEFORE {
        tracing::warn!(
            cert = %m.cert.display(),
            days_left = left.as_secs() / 86_400,
            "the mesh certificate expires soon: issue a new one with `switchyard cert issue` and reload the node (SIGHUP)"
        );
    }
}

/// Loads the mesh's certificates and joins the mesh.
pub fn start(config: &Config, m: &MeshSection, metrics: &mut Metrics) -> Result<Mesh, Error> {
    let tls = load_tls(m)?;
    if let Some(not_after) = tls.not_after() {
        metrics.set_certificate_expiry(not_after);
    }
    warn_if_expiring(&tls, m);
    if !tls.revoked().is_empty() {
        tracing::info!(
            list = %m.revoked.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
            entries = tls.revoked().len(),
            "mesh revocation list loaded"
        );
    }
    let mesh_metrics = MeshMetrics::default();
    mesh_metrics.register(metrics.registry_mut());
    let cfg = MeshConfig {
        node_id: config.node.id.clone(),
        region: config.node.region,
        cluster: m.cluster.clone(),
        listen: m.listen,
        advertise: m.advertise,
        seeds: m.seeds.clone(),
        profile: m.profile,
        expected_size: m.expected_size,
        // Validation keeps each timing in range; the clamp keeps the mesh task alive even
        // for a config built in code that skipped it.
        timings: m.timings().clamped(),
        fingerprint: config.fingerprint(),
    };
    Ok(Mesh::start(cfg, &tls, mesh_metrics)?)
}

/// Hands the running mesh TLS material read by [`load_tls`] and checked by
/// `Mesh::prepare_tls` (a reload): it handshakes with it from now on, drops what it revokes
/// and, if this node's certificate changed, re-signs with the new key.
pub async fn install_tls(mesh: &Mesh, prepared: PreparedTls, m: &MeshSection, metrics: &Metrics) {
    let tls = prepared.tls().clone();
    let tls = &tls;
    let changed = mesh.install_tls(prepared).await;
    if let Some(not_after) = tls.not_after() {
        metrics.update_certificate_expiry(not_after);
    }
    warn_if_expiring(tls, m);
    if changed.rotated {
        tracing::info!(cert = %m.cert.display(), serial = tls.serial().unwrap_or_default(), "mesh certificate rotated");
    }
    for node in &changed.revoked {
        tracing::warn!(member = %node, "revoked: refused and dropped from the mesh");
    }
    for node in &changed.untrusted {
        tracing::warn!(member = %node, "its certificate is no longer trusted (CA removed from the bundle?)");
    }
}

/// Probes one origin once, as its monitor would (the monitor shell provides it): how this node
/// answers a peer's ask.
pub type ProbeNow =
    Arc<dyn Fn(ProbeTarget) -> Pin<Box<dyn Future<Output = Attempt> + Send>> + Send + Sync>;

/// Most down flips waiting to be asked about; beyond, a flip is unconfirmed at once.
const VERDICT_QUEUE: usize = 256;

/// How long the peers asked have to answer: their one probe's timeout, and a margin for the
/// round trip to them.
fn ask_window(target: Option<&ProbeTarget>) -> Duration {
    let timeout = target.map_or(Duration::from_secs(5), |t| t.monitor.timeout);
    (timeout + Duration::from_secs(2)).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// Connects the hub and the mesh both ways: this node's rows go out on every publish, and
/// every new mesh state comes back in as remote reports; down flips are asked about, and
/// peers' asks answered with `probe_now`. Ends when the hub is dropped.
pub fn connect(mesh: &Arc<Mesh>, hub: &Arc<HealthHub>, clock: Clock, probe_now: ProbeNow) {
    let (tx, wanted) = mpsc::channel(VERDICT_QUEUE);
    hub.ask_verdicts_to(tx);
    tokio::spawn(ask_peers(mesh.clone(), Arc::downgrade(hub), wanted));
    if let Some(asks) = mesh.probe_asks() {
        tokio::spawn(serve_asks(asks, Arc::downgrade(hub), probe_now));
    }
    let out = mesh.clone();
    hub.publish_rows_to(Box::new(move |report| {
        out.set_local(local_rows(report, &clock))
    }));
    let mut rx = mesh.state();
    let weak = Arc::downgrade(hub);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = rx.borrow_and_update().clone();
            let Some(hub) = weak.upgrade() else { return };
            hub.set_remote(remote_reports(&state));
        }
    });
}

/// How often readiness is looked at between view and mesh changes: draining and local
/// trouble have no event of their own.
const ADVERT_TICK: Duration = Duration::from_millis(250);

/// Keeps this node's advert in the mesh current (public addresses, readiness as `ready`
/// says, the names it can serve in its view now, its round trips to each region): looked at
/// on every new view and mesh state and every [`ADVERT_TICK`], handed to the mesh when it
/// changed, which pushes it at once. Ends when the hub or the mesh is dropped.
pub fn advertise(
    mesh: &Arc<Mesh>,
    hub: &Arc<HealthHub>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let mut views = hub.published();
    let mut states = mesh.state();
    let (mesh, hub) = (Arc::downgrade(mesh), Arc::downgrade(hub));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ADVERT_TICK);
        let mut rtt = Vec::new();
        let mut last: Option<Advert> = None;
        loop {
            tokio::select! {
                r = views.changed() => if r.is_err() { return },
                r = states.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let (Some(mesh), Some(hub)) = (mesh.upgrade(), hub.upgrade()) else {
                return;
            };
            let state = states.borrow_and_update().clone();
            rtt = settle_rtt(&rtt, &region_rtts(&state));
            let snap = hub.snapshot();
            let advert = Node::local(&snap.rt, &snap.view, ready(), rtt.clone()).advert();
            // One the mesh could not take now is handed again on the next tick.
            if last.as_ref() != Some(&advert) && mesh.set_advert(advert.clone()) {
                last = Some(advert);
            }
        }
    });
}

/// This node's mean SWIM round trip to each region's live members, in milliseconds (at
/// least 1), by region.
fn region_rtts(state: &MeshState) -> Vec<(Region, u32)> {
    let mut sums = [(0u128, 0u128); 13];
    for m in &state.members {
        if let (MemberState::Alive, Some(rtt), false) = (m.state, m.rtt, m.id == state.local.id) {
            let s = &mut sums[m.region.index()];
            s.0 += rtt.as_micros();
            s.1 += 1;
        }
    }
    Region::ALL
        .iter()
        .zip(sums)
        .filter(|(_, (_, n))| *n > 0)
        .map(|(r, (us, n))| (*r, ((us / n) / 1000).clamp(1, u128::from(u32::MAX)) as u32))
        .collect()
}

/// Asks peers about each down flip and hands the answers to the hub. A verdict nobody could
/// give (no peer to ask, or none answered) is asked again as soon as a new peer is alive, and
/// every verdict again every [`REASK_EVERY`] while the origin stays down, so that it follows
/// what the peers see now.
async fn ask_peers(
    mesh: Arc<Mesh>,
    hub: Weak<HealthHub>,
    mut wanted: mpsc::Receiver<VerdictWanted>,
) {
    let mut states = mesh.state();
    let mut alive = 0;
    let mut reask = tokio::time::interval(REASK_EVERY);
    reask.tick().await;
    loop {
        let again: Vec<VerdictWanted> = tokio::select! {
            w = wanted.recv() => match w {
                Some(w) => vec![w],
                None => return,
            },
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = alive_peers(&states.borrow_and_update()).len();
                let more = now > alive;
                alive = now;
                match hub.upgrade() {
                    Some(h) if more => h.to_ask_again(|v| v == Verdict::Unconfirmed),
                    Some(_) => continue,
                    None => return,
                }
            }
            _ = reask.tick() => match hub.upgrade() {
                Some(h) => h.to_ask_again(|_| true),
                None => return,
            },
        };
        for w in again {
            ask(&mesh, &hub, w);
        }
    }
}

/// How often the verdict on an origin that stays down is asked again.
const REASK_EVERY: Duration = Duration::from_secs(30);

/// Live peers and their regions.
fn alive_peers(state: &MeshState) -> Vec<(String, Region)> {
    state
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive && m.id != state.local.id)
        .map(|m| (m.id.clone(), m.region))
        .collect()
}

/// Asks a few live peers about `w` in a task of its own, and hands the answers to the hub.
fn ask(mesh: &Arc<Mesh>, hub: &Weak<HealthHub>, w: VerdictWanted) {
    let Some(h) = hub.upgrade() else { return };
    let within = ask_window(h.snapshot().rt.probe_target(&w.key).as_ref());
    drop(h);
    let state = mesh.state().borrow().clone();
    let helpers = verdict::pick_helpers(
        &alive_peers(&state),
        state.local.region,
        verdict::HELPERS,
        rand::random(),
    );
    let span = tracing::info_span!("ask", pool = %w.key.pool, origin = %w.key.origin);
    let (mesh, hub) = (mesh.clone(), hub.clone());
    tokio::spawn(
        async move {
            let answers = if helpers.is_empty() {
                Vec::new()
            } else {
                mesh.ask_probes(&helpers, &w.key.pool, &w.key.origin, within)
                    .await
            };
            if let Some(h) = hub.upgrade() {
                h.set_verdict(&w.key, w.since, answers);
            }
        }
        .instrument(span),
    );
}

/// Probes what peers ask about, once each, and answers. The mesh bounds how many asks of a
/// peer are open at once and how often it may ask; only origins of this node's own config
/// are probed (asks name them, never an address).
async fn serve_asks(mut asks: mpsc::Receiver<ProbeAsk>, hub: Weak<HealthHub>, probe_now: ProbeNow) {
    while let Some(ask) = asks.recv().await {
        let Some(h) = hub.upgrade() else { return };
        let key = OriginKey {
            pool: ask.pool.as_str().into(),
            origin: ask.origin.as_str().into(),
        };
        let target = h.snapshot().rt.ask_target(&key);
        drop(h);
        let span =
            tracing::debug_span!("asked", from = %ask.from, pool = %ask.pool, origin = %ask.origin);
        let probe_now = probe_now.clone();
        tokio::spawn(
            async move {
                let outcome = match target {
                    None => ProbeOutcome::Unknown {
                        why: format!(
                            "{}/{} is not a monitored origin in this node's config",
                            ask.pool, ask.origin
                        ),
                    },
                    Some(t) => match probe_now(t).await {
                        Attempt::Ok(rtt) => ProbeOutcome::Up {
                            rtt_us: rtt.as_micros().min(u128::from(u32::MAX)) as u32,
                        },
                        Attempt::Failed(reason) => ProbeOutcome::Down { reason },
                        Attempt::Inconclusive => ProbeOutcome::Unknown {
                            why: "this node's own trouble spoiled the probe".into(),
                        },
                    },
                };
                ask.answer(outcome);
            }
            .instrument(span),
        );
    }
}

/// The rows this node gossips: those of origins it has checked at least once. A down row
/// whose peers are still being asked goes out as it was before the flip, up: blame is asked
/// before it is broadcast.
fn local_rows(report: &Report, clock: &Clock) -> Vec<LocalRow> {
    report
        .rows
        .iter()
        .filter(|(_, r)| r.checked)
        .map(|(k, r)| {
            let pending = r.verdict == Some(Verdict::Pending);
            LocalRow {
                pool: k.pool.to_string(),
                origin: k.origin.to_string(),
                healthy: r.healthy || pending,
                rtt: r.rtt,
                last_change_ms: clock.wall_ms(r.last_change),
                reason: if pending { None } else { r.reason.clone() },
                verdict: if pending { None } else { r.verdict },
            }
        })
        .collect()
}

/// Other nodes' rows, as the health view weighs them.
fn remote_reports(state: &MeshState) -> Vec<RemoteReport> {
    state
        .writers
        .iter()
        .filter(|w| w.node != state.local.id)
        .map(|w| {
            let node: Arc<str> = w.node.as_str().into();
            RemoteReport {
                node: node.clone(),
                region: w.region,
                live: w.live,
                rows: w
                    .rows
                    .iter()
                    .map(|(row, age)| {
                        (
                            OriginKey {
                                pool: row.pool.as_str().into(),
                                origin: row.origin.as_str().into(),
                            },
                            Obs {
                                node: node.clone(),
                                region: w.region,
                                healthy: row.healthy,
                                rtt: row.rtt_us.map(|us| Duration::from_micros(u64::from(us))),
                                age: *age,
                                verdict: row.verdict,
                            },
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::health::OriginHealth;

    #[test]
    fn a_down_row_whose_peers_are_being_asked_goes_out_as_it_was() {
        let clock = Clock::start();
        let now = tokio::time::Instant::now();
        let key = |o: &str| OriginKey {
            pool: "p".into(),
            origin: o.into(),
        };
        let down = |verdict| OriginHealth {
            healthy: false,
            checked: true,
            reason: Some("refused".into()),
            verdict,
            ..OriginHealth::unchecked(now)
        };
        let report = Report {
            rows: [
                (key("pending"), down(Some(Verdict::Pending))),
                (key("path"), down(Some(Verdict::Path))),
                (key("unchecked"), OriginHealth::unchecked(now)),
            ]
            .into(),
        };
        let mut rows = local_rows(&report, &clock);
        rows.sort_by(|a, b| a.origin.cmp(&b.origin));
        assert_eq!(rows.len(), 2, "unchecked rows are not gossiped");
        assert_eq!(rows[0].origin, "path");
        assert!(!rows[0].healthy && rows[0].verdict == Some(Verdict::Path));
        assert_eq!(rows[1].origin, "pending");
        assert!(rows[1].healthy && rows[1].verdict.is_none() && rows[1].reason.is_none());
    }
}
