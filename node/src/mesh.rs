//! The glue between the node and the mesh: starts the mesh from `[mesh]`, hands this node's
//! health rows to it, turns what it delivers (other nodes' rows) into the `RemoteReport`s
//! the health view weighs, and on a reload hands it the certificates, CA bundle and
//! revocation list read again ([`load_tls`], [`reload_tls`]).

use std::sync::Arc;
use std::time::Duration;

use switchyard_gossip::tls::NodeTls;
use switchyard_gossip::{LocalRow, Mesh, MeshConfig, MeshMetrics, MeshState, PreparedTls};

use crate::clock::Clock;
use crate::config::{Config, MeshSection};
use crate::core::compiled::OriginKey;
use crate::core::view::{Obs, RemoteReport, Report};
use crate::error::Error;
use crate::hub::HealthHub;
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

/// Connects the hub and the mesh both ways: this node's rows go out on every publish, and
/// every new mesh state comes back in as remote reports. Ends when the hub is dropped.
pub fn connect(mesh: &Arc<Mesh>, hub: &Arc<HealthHub>, clock: Clock) {
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

/// The rows this node gossips: those of origins it has checked at least once.
fn local_rows(report: &Report, clock: &Clock) -> Vec<LocalRow> {
    report
        .rows
        .iter()
        .filter(|(_, r)| r.checked)
        .map(|(k, r)| LocalRow {
            pool: k.pool.to_string(),
            origin: k.origin.to_string(),
            healthy: r.healthy,
            rtt: r.rtt,
            last_change_ms: clock.wall_ms(r.last_change),
            reason: r.reason.clone(),
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
                            },
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}
