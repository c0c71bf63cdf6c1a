//! The monitors' I/O shell: one task per monitored origin, probing on the monitor's interval
//! (with jitter, so that many origins do not align), retrying at once as the health state
//! machine asks, and feeding every attempt to it. Reloads restart only the tasks whose target
//! changed. `probe` performs one attempt.
//!
//! An attempt that failed by this node's own fault (out of descriptors, or a timeout while
//! the node is overloaded) is reported to the hub as the node's trouble and ends the round
//! with no verdict: the origin keeps its row, and no other node hears of it.

pub mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::MonitorConfig;
use crate::core::compiled::{CompiledConfig, OriginKey, ProbeTarget};
use crate::core::health::{Attempt, Next};
use crate::core::trouble::{blame_timeout, Blame};
use crate::hub::HealthHub;
use probe::{ProbeError, ProbeSpec, Prober};

/// The running monitor tasks.
#[derive(Default)]
pub struct MonitorSet {
    tasks: HashMap<OriginKey, (ProbeTarget, CancellationToken)>,
    prober: Option<Prober>,
}

impl MonitorSet {
    /// Makes the running tasks match the compiled config's monitored origins.
    pub fn sync(&mut self, rt: &CompiledConfig, health: &Arc<HealthHub>) {
        let prober = self.prober();
        let mut wanted = HashMap::new();
        for (pi, pool) in rt.pools.iter().enumerate() {
            for oi in 0..pool.origins.len() {
                let key = rt.key(pi, oi);
                if let Some(t) = rt.probe_target(&key) {
                    wanted.insert(key, t);
                }
            }
        }
        self.tasks.retain(|key, (target, stop)| {
            let keep = wanted.get(key) == Some(target);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, target) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let stop = CancellationToken::new();
            let span = tracing::info_span!("monitor", pool = %key.pool, origin = %key.origin);
            tokio::spawn(
                run(
                    key.clone(),
                    target.clone(),
                    prober.clone(),
                    health.clone(),
                    stop.clone(),
                )
                .instrument(span),
            );
            self.tasks.insert(key, (target, stop));
        }
    }

    /// The prober the monitors share, for one-off probes (peers' asks).
    pub fn prober(&mut self) -> Prober {
        self.prober.get_or_insert_with(Prober::new).clone()
    }

    pub fn stop_all(&mut self) {
        for (_, (_, stop)) in self.tasks.drain() {
            stop.cancel();
        }
    }
}

impl Drop for MonitorSet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Builds the probe of one attempt from the monitor's config.
pub fn spec_of(m: &MonitorConfig) -> ProbeSpec {
    let mut spec = ProbeSpec::tcp(m.timeout);
    spec.kind = m.kind;
    if let Some(method) = &m.method {
        spec.method = method.clone();
    }
    if let Some(path) = &m.path {
        spec.path = path.clone();
    }
    spec.headers = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(codes) = &m.expected_codes {
        spec.expected_codes = codes.clone();
    }
    spec.expected_body = m.expected_body.clone();
    spec.allow_insecure = m.allow_insecure;
    spec.proxy_protocol = m.proxy_protocol;
    spec
}

async fn run(
    key: OriginKey,
    target: ProbeTarget,
    prober: Prober,
    health: Arc<HealthHub>,
    stop: CancellationToken,
) {
    let spec = spec_of(&target.monitor);
    let interval = target.monitor.interval;
    // Spread first probes over a tenth of the interval (at most 500 ms) so that a node
    // starting with many origins does not probe them all in the same instant.
    let first = interval.min(Duration::from_secs(5)) / 10;
    let mut delay = jitter(first, 1.0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        loop {
            let attempt = probe_once(&prober, &spec, &target, &health).await;
            if stop.is_cancelled() {
                return;
            }
            if let Attempt::Failed(reason) = &attempt {
                tracing::debug!(%reason, "probe failed");
            }
            match health.on_attempt(&key, attempt) {
                Next::Retry => continue,
                Next::Done { .. } => break,
            }
        }
        // Up to 10% early, never late, so that detection stays within interval x (retries + 1).
        delay = interval - jitter(interval / 10, 1.0);
    }
}

/// One probe attempt of `target`, with whose fault a failure is: this node's own trouble is
/// reported to the hub and makes the attempt inconclusive.
pub async fn probe_once(
    prober: &Prober,
    spec: &ProbeSpec,
    target: &ProbeTarget,
    health: &HealthHub,
) -> Attempt {
    let addr = match resolve(target).await {
        Ok(addr) => addr,
        Err(e) => return Attempt::Failed(e),
    };
    let span = tracing::debug_span!("probe", %addr);
    match prober
        .probe(spec, addr, &target.addr.host)
        .instrument(span)
        .await
    {
        Ok(rtt) => Attempt::Ok(rtt),
        Err(ProbeError::Local(cause, detail)) => {
            health.on_local_error(cause, "probe", format!("probing {addr}: {detail}"));
            Attempt::Inconclusive
        }
        Err(ProbeError::Timeout) => match blame_timeout(health.overloaded()) {
            Blame::Local(cause) => {
                health.on_local_error(
                    cause,
                    "probe",
                    format!("probe of {addr} timed out while this node was overloaded"),
                );
                Attempt::Inconclusive
            }
            Blame::Origin => Attempt::Failed(ProbeError::Timeout.to_string()),
        },
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// A uniform random duration in [0, max * scale].
fn jitter(max: Duration, scale: f64) -> Duration {
    max.mul_f64(rand::rng().random::<f64>() * scale)
}

async fn resolve(target: &ProbeTarget) -> Result<SocketAddr, String> {
    let port = target.monitor.port.unwrap_or(target.addr.port);
    if let Some(ip) = target.addr.ip {
        return Ok(SocketAddr::new(ip, port));
    }
    let host = target.addr.host.as_str();
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("dns: {host} has no address")),
        Err(e) => Err(format!("dns: {host}: {e}")),
    }
}
