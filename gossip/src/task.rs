//! The mesh task: the one task that owns the mesh's state machine ([`Machine`]: foca and the
//! replicated health table). It hands the machine what the transport receives and what the
//! node asks (through [`Cmd`]s from the `Mesh` handle), wakes it when its next timer is due
//! through tokio's clock, sends what it sends through the QUIC transport, and publishes the
//! `MeshState` the node builds its view from.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::asks::{Answer, ProbeAsk};
use crate::config::MeshConfig;
use crate::identity::NodeIdentity;
use crate::keys::{Keys, Replaced};
use crate::machine::{Machine, Net, Start, StreamSink};
use crate::metrics::MeshMetrics;
use crate::state::{LocalRow, MeshState};
use crate::table::Advert;
use crate::tls::NodeTls;
use crate::transport::{Inbound, Transport};

/// What the handle asks of the task.
pub(crate) enum Cmd {
    SetLocal(Vec<LocalRow>),
    SetFingerprint(u64),
    SetAdvert(Box<Advert>),
    /// Ask `peers` to probe `pool`/`origin` now; answers go to `reply` until `until`.
    AskProbes {
        peers: Vec<String>,
        pool: String,
        origin: String,
        reply: mpsc::Sender<Answer>,
        until: Instant,
    },
    /// New TLS material from a reload (`Mesh::reload_tls`); answers what changed.
    Tls(Box<NodeTls>, oneshot::Sender<Replaced>),
    Leave(oneshot::Sender<()>),
    /// Ends the task at once, as a crash would.
    #[cfg(feature = "test-util")]
    Stop,
}

/// This node's wall clock in unix ms, which epochs and generations are set from.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The QUIC transport, as the machine's network.
impl Net for Arc<Transport> {
    fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        Transport::send_datagram(self, to, data);
    }

    fn send_stream(&self, to: SocketAddr, data: Bytes) {
        Transport::send_stream(self, to, data);
    }

    fn rtt(&self, peer: SocketAddr) -> Option<Duration> {
        Transport::rtt(self, peer)
    }

    fn forget(&self, peer: SocketAddr) {
        Transport::forget(self, peer);
    }

    fn retain(
        &self,
        keep_addr: &dyn Fn(SocketAddr) -> bool,
        keep_id: &dyn Fn(&str) -> bool,
        grace: Duration,
    ) -> usize {
        Transport::retain(self, keep_addr, keep_id, grace)
    }

    fn close_where(&self, close: &dyn Fn(&[u8]) -> bool, reason: &'static [u8]) -> usize {
        Transport::close_where(self, close, reason)
    }

    fn link_count(&self) -> usize {
        Transport::link_count(self)
    }

    fn stream_sink(&self) -> StreamSink {
        let transport = self.clone();
        Arc::new(move |to, data| transport.send_stream(to, data))
    }
}

/// Starts the task for `identity`, fed by `inbox`; returns where to send it commands and
/// where it publishes the mesh state.
pub(crate) fn spawn(
    cfg: MeshConfig,
    identity: NodeIdentity,
    transport: Arc<Transport>,
    inbox: mpsc::Receiver<Inbound>,
    metrics: MeshMetrics,
    keys: Arc<Keys>,
    asks_tx: mpsc::Sender<ProbeAsk>,
) -> (mpsc::Sender<Cmd>, watch::Receiver<Arc<MeshState>>) {
    transport.set_max_links(cfg.max_links());
    let now = Instant::now();
    let machine = Machine::new(
        cfg,
        Start {
            identity,
            net: transport.clone(),
            metrics: metrics.clone(),
            keys,
            asks_tx: Some(asks_tx),
            seed: rand::random(),
            now,
            wall_ms: wall_ms(),
        },
    );
    let (state_tx, state) = watch::channel(Arc::new(machine.state(now)));
    let (tx, rx) = mpsc::channel(1024);
    let task = Task {
        machine,
        transport,
        metrics,
        state_tx,
    };
    tokio::spawn(task.run(rx, inbox));
    (tx, state)
}

struct Task {
    machine: Machine<Arc<Transport>>,
    transport: Arc<Transport>,
    metrics: MeshMetrics,
    state_tx: watch::Sender<Arc<MeshState>>,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, mut inbox: mpsc::Receiver<Inbound>) {
        let mut stats = tokio::time::interval(Duration::from_secs(1));
        loop {
            let due = self.machine.poll_timeout();
            tokio::select! {
                cmd = cmds.recv() => {
                    let now = Instant::now();
                    let m = &mut self.machine;
                    match cmd {
                        Some(Cmd::SetLocal(rows)) => m.set_local(now, rows),
                        Some(Cmd::SetFingerprint(fp)) => m.set_fingerprint(now, fp),
                        Some(Cmd::SetAdvert(advert)) => m.set_advert(now, *advert),
                        Some(Cmd::AskProbes { peers, pool, origin, reply, until }) => {
                            m.ask_probes(now, peers, pool, origin, reply, until);
                        }
                        Some(Cmd::Tls(tls, done)) => {
                            let _ = done.send(m.new_tls(now, &tls));
                        }
                        Some(Cmd::Leave(done)) => {
                            m.leave(now);
                            let _ = done.send(());
                            return;
                        }
                        #[cfg(feature = "test-util")]
                        Some(Cmd::Stop) => return,
                        None => return,
                    }
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { return };
                    self.machine.inbound(Instant::now(), msg);
                }
                _ = tokio::time::sleep_until(due) => self.machine.handle_timeout(Instant::now()),
                _ = stats.tick() => {
                    self.transport_stats();
                    self.publish();
                    continue;
                }
            }
            if self.machine.take_changed() {
                self.publish();
            }
        }
    }

    fn publish(&mut self) {
        self.machine.take_changed();
        let state = self.machine.state(Instant::now());
        self.state_tx.send_replace(Arc::new(state));
    }

    /// Copies the transport's counters into the metrics.
    fn transport_stats(&self) {
        let s = &self.transport.stats;
        let revoked = s.revoked.load(Ordering::Relaxed);
        self.metrics.set_transport_totals(
            s.bytes_out.load(Ordering::Relaxed),
            s.bytes_in.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed).saturating_sub(revoked),
        );
        self.metrics.set_revoked_handshakes(revoked);
        for (bound, counter) in [
            ("links", &s.links_full),
            ("connections", &s.connections_full),
            ("streams_out", &s.streams_out_full),
            ("message_size", &s.oversized),
            ("stream_deadline", &s.slow_streams),
            ("inbox", &s.inbox_full),
        ] {
            self.metrics
                .set_bound_hits(bound, counter.load(Ordering::Relaxed));
        }
    }
}
