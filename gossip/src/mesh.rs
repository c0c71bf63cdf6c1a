//! The handle of a running mesh member ([`Mesh`]): starting it (certificate check, QUIC
//! endpoint, the task), feeding it the node's health rows, taking new certificates, CAs and
//! revocation lists while it runs, reading the mesh state, leaving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::asks::ProbeAsk;
use crate::config::MeshConfig;
use crate::error::GossipError;
use crate::identity::NodeIdentity;
use crate::keys::{Keys, Replaced};
use crate::metrics::{Dir, MeshMetrics};
use crate::relay::{
    IncomingRelay, PeerStanding, RelayError, RelayRequest, RelayStreams, RELAY_QUEUE,
};
use crate::state::{LocalRow, MemberState, MeshState};
use crate::table::Advert;
use crate::task::{self, Cmd};
use crate::tls::NodeTls;
#[cfg(feature = "test-util")]
use crate::transport::Faults;
use crate::transport::{RelayServe, Transport};
use crate::wire::ProbeOutcome;

/// New TLS material, checked against the running node ([`Mesh::prepare_tls`]) and ready to
/// install.
pub struct PreparedTls {
    tls: NodeTls,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
}

impl PreparedTls {
    /// The material to be installed.
    pub fn tls(&self) -> &NodeTls {
        &self.tls
    }
}

impl std::fmt::Debug for PreparedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedTls")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A running mesh member.
pub struct Mesh {
    tx: mpsc::Sender<Cmd>,
    state: watch::Receiver<Arc<MeshState>>,
    transport: Arc<Transport>,
    identity: NodeIdentity,
    asks: Mutex<Option<mpsc::Receiver<ProbeAsk>>>,
    relays: Mutex<Option<mpsc::Receiver<IncomingRelay>>>,
    metrics: MeshMetrics,
}

/// Most asks of peers queued for the node to serve; more are refused (a bound hit).
const ASK_QUEUE: usize = 64;

impl Mesh {
    /// Binds the QUIC endpoint, joins through the seeds, and starts the mesh task.
    pub fn start(
        cfg: MeshConfig,
        tls: &NodeTls,
        metrics: MeshMetrics,
    ) -> Result<Mesh, GossipError> {
        if let Some(why) = tls.own_revocation() {
            return Err(GossipError::Identity(format!(
                "this node's certificate is revoked ({why}); issue it a new one with \
                 `switchyard cert issue --node {}`",
                cfg.node_id
            )));
        }
        if tls.node_id() != cfg.node_id {
            return Err(GossipError::Identity(format!(
                "the node certificate is for {:?} but [node] id is {:?}; issue a certificate for this node with `switchyard cert issue --node {}`",
                tls.node_id(),
                cfg.node_id,
                cfg.node_id
            )));
        }
        match tls.region() {
            Some(region) if region != cfg.region => {
                return Err(GossipError::Identity(format!(
                    "the node certificate of {:?} is for region {region} but [node] region is {}; \
                     set [node] region = \"{region}\", or issue a certificate for this region with \
                     `switchyard cert issue --node {} --region {}`",
                    cfg.node_id, cfg.region, cfg.node_id, cfg.region
                )));
            }
            Some(_) => {}
            None => tracing::warn!(
                node = %cfg.node_id,
                "the node certificate names no region, so peers accept this node's claims for \
                 any region; reissue it with `switchyard cert issue --region {}`",
                cfg.region
            ),
        }
        let (inbox_tx, inbox) = mpsc::channel(4096);
        let transport = Transport::bind(cfg.listen, tls, inbox_tx)?;
        let bound = transport.local_addr();
        let addr = cfg.advertise.unwrap_or(bound);
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let keys = Arc::new(Keys::new(tls));
        let identity = NodeIdentity::unsigned(
            cfg.node_id.clone(),
            cfg.region,
            addr,
            cfg.cluster.clone(),
            generation,
        )
        .signed_by(keys.clone());
        let (asks_tx, asks) = mpsc::channel(ASK_QUEUE);
        let (tx, state) = task::spawn(
            cfg,
            identity.clone(),
            transport.clone(),
            inbox,
            metrics.clone(),
            keys.clone(),
            asks_tx,
        );
        let (relays_tx, relays) = mpsc::channel(RELAY_QUEUE);
        let members = state.clone();
        // A relay stream is served only for a member SWIM believes alive or suspect, whose
        // certificate is not revoked: revocation closes connections on reload, but a stream
        // may race it.
        let standing = Box::new(move |id: &str, der: Option<&[u8]>| PeerStanding {
            member: members
                .borrow()
                .members
                .iter()
                .any(|m| m.id == id && m.state != MemberState::Down),
            revoked: keys.revocation(id, der).is_some(),
        });
        transport.serve_relays(RelayServe::new(standing, relays_tx, metrics.clone()));
        Ok(Mesh {
            tx,
            state,
            transport,
            identity,
            asks: Mutex::new(Some(asks)),
            relays: Mutex::new(Some(relays)),
            metrics,
        })
    }

    /// Takes new TLS material while running (a reload): a new CA bundle, a rotated node
    /// certificate and key, a new revocation list. [`Mesh::prepare_tls`] then
    /// [`Mesh::install_tls`]; returns what changed.
    pub async fn reload_tls(&self, tls: &NodeTls) -> Result<Replaced, GossipError> {
        let prepared = self.prepare_tls(tls)?;
        Ok(self.install_tls(prepared).await)
    }

    /// Checks new TLS material without changing anything: it must be for this node (same id,
    /// and a region it may speak for) and not revoke this node, and its QUIC configurations
    /// must build. A reload checks first and installs only once the rest of it has succeeded.
    pub fn prepare_tls(&self, tls: &NodeTls) -> Result<PreparedTls, GossipError> {
        if tls.node_id() != self.identity.id {
            return Err(GossipError::Identity(format!(
                "the new node certificate is for {:?} but this node is {:?}; a node keeps its \
                 id: issue its certificate with `switchyard cert issue --node {}`",
                tls.node_id(),
                self.identity.id,
                self.identity.id
            )));
        }
        if let Some(region) = tls.region().filter(|r| *r != self.identity.region) {
            return Err(GossipError::Identity(format!(
                "the new node certificate of {:?} is for region {region} but this node runs in \
                 {}; issue it with `switchyard cert issue --node {} --region {}`",
                self.identity.id, self.identity.region, self.identity.id, self.identity.region
            )));
        }
        if let Some(why) = tls.own_revocation() {
            return Err(GossipError::Identity(format!(
                "the new revocation list revokes this node's own certificate ({why}); issue it a \
                 new one with `switchyard cert issue --node {}`",
                self.identity.id
            )));
        }
        Ok(PreparedTls {
            server: tls.server_config()?,
            client: tls.client_config()?,
            tls: tls.clone(),
        })
    }

    /// Installs material checked by [`Mesh::prepare_tls`]. New handshakes use it at once;
    /// connections it no longer accepts are closed, revoked members dropped, and after a
    /// rotation this node's identity and rows are signed again with the new key.
    pub async fn install_tls(&self, prepared: PreparedTls) -> Replaced {
        let PreparedTls {
            tls,
            server,
            client,
        } = prepared;
        self.transport.set_tls(server, client);
        let (done, changed) = oneshot::channel();
        if self.tx.send(Cmd::Tls(Box::new(tls), done)).await.is_err() {
            // The mesh has stopped (shutdown): nothing left to tell.
            return Replaced::default();
        }
        changed.await.unwrap_or_default()
    }

    /// This node's identity as it started (`state().local` is the current one: a rotated
    /// certificate renews it).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Replaces this node's health rows; flips go to every peer at once.
    pub fn set_local(&self, rows: Vec<LocalRow>) {
        // Closed means the mesh has stopped (shutdown): nothing to tell anyone.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Cmd::SetLocal(rows)) {
            tracing::warn!("mesh command queue full; a health update waits for the next one");
        }
    }

    pub fn set_fingerprint(&self, fp: u64) {
        let _ = self.tx.try_send(Cmd::SetFingerprint(fp));
    }

    /// Replaces what this node says of itself for DNS; a change goes to every peer at once.
    /// False when the mesh could not take it now (its command queue is full, or it stopped):
    /// the caller hands it again later.
    pub fn set_advert(&self, advert: Advert) -> bool {
        match self.tx.try_send(Cmd::SetAdvert(Box::new(advert))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("mesh command queue full; the advert is handed again shortly");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks `peers` (node ids; those not live members are skipped) to probe `pool`/`origin`
    /// now, and waits for their answers until `within` has passed or all are in. Returns what
    /// each peer answered, None for no answer.
    pub async fn ask_probes(
        &self,
        peers: &[String],
        pool: &str,
        origin: &str,
        within: Duration,
    ) -> Vec<(String, Option<ProbeOutcome>)> {
        let until = tokio::time::Instant::now() + within;
        let (reply, mut answers) = mpsc::channel(peers.len().max(1));
        let cmd = Cmd::AskProbes {
            peers: peers.to_vec(),
            pool: pool.to_string(),
            origin: origin.to_string(),
            reply,
            until,
        };
        let mut out: Vec<(String, Option<ProbeOutcome>)> =
            peers.iter().map(|p| (p.clone(), None)).collect();
        if self.tx.send(cmd).await.is_err() {
            return out;
        }
        while let Ok(Some((peer, outcome))) = tokio::time::timeout_at(until, answers.recv()).await {
            if let Some(slot) = out.iter_mut().find(|(p, _)| *p == peer) {
                slot.1 = Some(outcome);
            }
        }
        out
    }

    /// The asks of peers to probe an origin now, for the node to probe and answer; once
    /// (None after the first call). Asks not taken are refused when the queue is full.
    pub fn probe_asks(&self) -> Option<mpsc::Receiver<ProbeAsk>> {
        self.asks.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Asks the member `peer_id` to relay a connection as `req` says, on the mesh's QUIC
    /// connection to it: the streams to pipe once it accepts, or why not. At most
    /// [`crate::relay::RELAY_RESPONSE_DEADLINE`].
    pub async fn open_relay(
        &self,
        peer_id: &str,
        req: RelayRequest,
    ) -> Result<RelayStreams, RelayError> {
        let addr = self
            .state
            .borrow()
            .members
            .iter()
            .find(|m| m.id == peer_id && m.state != MemberState::Down)
            .map(|m| m.addr)
            .ok_or_else(|| RelayError::UnknownPeer {
                peer: peer_id.to_string(),
            })?;
        let streams = self.transport.open_relay(addr, peer_id, &req).await?;
        self.metrics.relay_stream(peer_id, Dir::Sent);
        Ok(streams)
    }

    /// The relay requests of peers that passed the mesh's checks, for the node to check
    /// against its config and answer; once (None after the first call). Requests not taken
    /// are refused (`busy`) when the queue is full.
    pub fn relay_requests(&self) -> Option<mpsc::Receiver<IncomingRelay>> {
        self.relays.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The latest mesh state, and changes to it.
    pub fn state(&self) -> watch::Receiver<Arc<MeshState>> {
        self.state.clone()
    }

    /// Fault injection for tests: traffic to and from blocked peers is dropped.
    #[cfg(feature = "test-util")]
    pub fn faults(&self) -> &Faults {
        &self.transport.faults
    }

    /// Stops at once without telling anyone, as a crash would: peers find out by probing.
    #[cfg(feature = "test-util")]
    pub async fn kill(&self) {
        let _ = self.tx.send(Cmd::Stop).await;
        self.transport.close().await;
    }

    /// Leaves the cluster cleanly (peers learn at once instead of suspecting), then closes.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        // The leave messages are queued on the links; let them go out before closing.
        self.transport.flush(Duration::from_millis(500)).await;
        self.transport.close().await;
    }
}
