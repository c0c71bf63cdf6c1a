//! The handle of a running mesh member ([`Mesh`]): starting it (certificate check, QUIC
//! endpoint, the task), feeding it the node's health rows, reading the mesh state, leaving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::asks::ProbeAsk;
use crate::config::MeshConfig;
use crate::error::GossipError;
use crate::identity::NodeIdentity;
use crate::keys::Keys;
use crate::metrics::MeshMetrics;
use crate::state::{LocalRow, MeshState};
use crate::task::{self, Cmd};
use crate::tls::NodeTls;
#[cfg(feature = "test-util")]
use crate::transport::Faults;
use crate::transport::Transport;
use crate::wire::ProbeOutcome;

/// A running mesh member.
pub struct Mesh {
    tx: mpsc::Sender<Cmd>,
    state: watch::Receiver<Arc<MeshState>>,
    transport: Arc<Transport>,
    identity: NodeIdentity,
    asks: Mutex<Option<mpsc::Receiver<ProbeAsk>>>,
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
            metrics,
            keys,
            asks_tx,
        );
        Ok(Mesh {
            tx,
            state,
            transport,
            identity,
            asks: Mutex::new(Some(asks)),
        })
    }

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
