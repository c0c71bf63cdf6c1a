//! The serving side of relaying: peers' relay requests (`Mesh::relay_requests`) checked
//! against this node's live config (`core::relay::admit`: names, never an address, so a
//! member cannot use this node as an open proxy) and refused with the reason, or carried: a
//! connect to the origin's address in this node's config (failures count as passive health,
//! as a direct connect's do), then the stream piped to it (`proxy::tunnel`) with the
//! half-close and idle timeout of a direct connection. Carried connections are the proxy's
//! connections: drain on shutdown waits for them and ends them at its deadline. Bytes pass
//! unchanged: the node that received the client wrote any PROXY header.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use switchyard_gossip::{IncomingRelay, Mesh, RefuseReason};
use tokio::time::Instant;
use tracing::Instrument;

use crate::core::relay::{admit, Carry};
use crate::core::trouble::Blame;
use crate::core::view::Snapshot;
use crate::metrics::RelayRole;
use crate::proxy::relay::Direction;
use crate::proxy::{dial, dial_failed, tunnel, Guard, ProxyContext};

/// Answers the mesh's relay requests until the mesh stops. Does nothing when the mesh's
/// requests were taken already.
pub fn serve(mesh: &Mesh, cx: Arc<ProxyContext>) {
    let Some(mut requests) = mesh.relay_requests() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(incoming) = requests.recv().await {
            answer(incoming, &cx);
        }
    });
}

/// How often a refusal for names not in the config is logged as a warning at most.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a warning may be logged at `now`: the first, then one per [`WARN_EVERY`].
fn warn_now(now: Instant) -> bool {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|at| now < at + WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// Refuses `incoming`, or starts carrying it as one of the proxy's connections.
fn answer(incoming: IncomingRelay, cx: &Arc<ProxyContext>) {
    let req = &incoming.request;
    let span = tracing::info_span!(
        "relayed",
        peer = %incoming.from_peer,
        lb = %req.load_balancer,
        pool = %req.pool,
        origin = %req.origin,
        client = %req.client,
    );
    // Draining: the proxy takes no new connections, and neither does the relay.
    if cx.connections.is_closed() {
        tracing::debug!(parent: &span, "relay refused: this node is draining");
        tokio::spawn(incoming.refuse(RefuseReason::NotRelaying));
        return;
    }
    let snap = cx.health.snapshot();
    let admitted = admit(
        &snap.rt,
        &req.load_balancer,
        &req.pool,
        &req.origin,
        |key| {
            cx.health
                .own_row(key)
                .is_none_or(|row| !row.checked || row.healthy)
        },
    );
    match admitted {
        Err(refusal) => {
            if refusal.reason == RefuseReason::NotInConfig && warn_now(Instant::now()) {
                // A member asking for what the shared config does not have: config drift,
                // or a member probing for an open proxy. Once a minute at most (the counter
                // counts every one), so a member cannot flood the log.
                tracing::warn!(parent: &span, reason = refusal.reason.label(), "relay refused: {}", refusal.why);
            } else {
                tracing::debug!(parent: &span, reason = refusal.reason.label(), "relay refused: {}", refusal.why);
            }
            tokio::spawn(incoming.refuse(refusal.reason));
        }
        Ok(carry) => {
            cx.connections
                .spawn(carry_one(incoming, carry, snap, cx.clone()).instrument(span));
        }
    }
}

/// Connects to the origin, accepts the relay and pipes it, until done or the drain deadline.
async fn carry_one(
    incoming: IncomingRelay,
    carry: Carry,
    snap: Arc<Snapshot>,
    cx: Arc<ProxyContext>,
) {
    let started = Instant::now();
    let rt = &snap.rt;
    let origin = &rt.pools[carry.pool].origins[carry.origin];
    let key = rt.key(carry.pool, carry.origin);
    let dialed = tokio::time::timeout(
        carry.connect_timeout,
        dial(&origin.addr, origin.addr.port, &[]),
    )
    .await;
    let stream = match dialed {
        Ok(Ok((stream, _))) => stream,
        failed => {
            let blame = dial_failed(
                &cx.health,
                &key,
                failed.as_ref().ok().and_then(|r| r.as_ref().err()),
            );
            // The asker goes direct instead (or fails over); this node's trouble is its own.
            let reason = match blame {
                Blame::Origin => RefuseReason::OriginDown,
                Blame::Local(_) => RefuseReason::NotRelaying,
            };
            tracing::debug!(
                reason = reason.label(),
                "relay refused: the connect to the origin failed"
            );
            incoming.refuse(reason).await;
            return;
        }
    };
    let lb = rt.load_balancers[carry.lb].name.clone();
    let peer = incoming.from_peer.clone();
    let streams = match incoming.accept().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("the relay stream ended before it was accepted: {e}");
            return;
        }
    };
    let counters = cx.metrics.relayed(&lb, &peer, RelayRole::Carried);
    counters.connections.inc();
    // Least-connections steering counts this node's open connections to the origin.
    origin.active.fetch_add(1, Ordering::Relaxed);
    let _counted = Guard(|| {
        origin.active.fetch_sub(1, Ordering::Relaxed);
    });
    let piped = tunnel::pipe(streams, stream, carry.idle_timeout, |dir, n| {
        let counter = match dir {
            Direction::ClientToOrigin => &counters.bytes_in,
            Direction::OriginToClient => &counters.bytes_out,
        };
        counter.inc_by(n);
    });
    tokio::select! {
        out = piped => {
            tracing::debug!(
                bytes_in = out.client_to_origin,
                bytes_out = out.origin_to_client,
                duration_ms = started.elapsed().as_millis() as u64,
                end = out.end.as_str(),
                "relayed connection closed"
            );
        }
        _ = cx.abort.cancelled() => {
            tracing::debug!(end = "shutdown", "relayed connection cut at the drain deadline");
        }
    }
}
