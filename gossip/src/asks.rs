//! Probe asks: a node whose probes of an origin start failing asks a few peers to probe it
//! now before it broadcasts the origin down (SWIM's ping-req, applied to origins). This is the
//! bookkeeping of that exchange, both ways, with time passed in: the asks this node made and
//! whose answers it waits for ([`Outstanding`]), and the asks of peers it serves
//! ([`Serving`]), bounded per peer and in all, so that a peer holding a valid certificate
//! cannot make this node probe without end. The node does the probing: it takes each
//! [`ProbeAsk`] from `Mesh::probe_asks` and answers it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec;
use crate::metrics::{Dir, MeshMetrics};
use crate::wire::{Envelope, Msg, ProbeOutcome};

/// Most asks of one peer served at once.
pub const MAX_OPEN_PER_PEER: usize = 4;
/// Most asks of one peer taken per second.
pub const MAX_PER_PEER_PER_SECOND: u32 = 10;
/// Most asks served at once, all peers together.
pub const MAX_OPEN: usize = 64;
/// Most asks this node waits on at once; older ones are given up first.
pub const MAX_OUTSTANDING: usize = 256;

/// What a peer answered, as handed to the asker.
pub type Answer = (String, ProbeOutcome);

/// An ask of a peer, handed to the node to probe and answer. Dropping it unanswered is
/// allowed: the asker counts no answer.
pub struct ProbeAsk {
    /// The node that asked.
    pub from: String,
    pub pool: String,
    pub origin: String,
    reply: Option<Reply>,
    _slot: Slot,
}

/// An admitted ask's place among the open ones (its peer's and all): released on drop.
pub(crate) struct Slot([Arc<AtomicUsize>; 2]);

impl Drop for Slot {
    fn drop(&mut self) {
        for c in &self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sends a replication message to a peer, from any task (the transport, in a node).
pub type StreamSink = Arc<dyn Fn(SocketAddr, Bytes) + Send + Sync>;

/// Where and how an answer goes back.
pub(crate) struct Reply {
    pub send: StreamSink,
    pub peer: SocketAddr,
    pub id: u64,
    pub cluster: String,
    pub node_id: String,
    pub metrics: MeshMetrics,
}

impl ProbeAsk {
    pub(crate) fn new(
        from: String,
        pool: String,
        origin: String,
        slot: Slot,
        reply: Reply,
    ) -> Self {
        ProbeAsk {
            from,
            pool,
            origin,
            reply: Some(reply),
            _slot: slot,
        }
    }

    /// Sends `outcome` back to the node that asked.
    pub fn answer(mut self, outcome: ProbeOutcome) {
        let Some(r) = self.reply.take() else { return };
        let env = Envelope {
            cluster: r.cluster,
            from: r.node_id,
            msg: Msg::ProbeAnswer {
                id: r.id,
                outcome: outcome.bounded(),
            },
        };
        match codec::encode(&env) {
            Ok(data) => {
                r.metrics.msg(Dir::Sent, "probe_answer");
                (r.send)(r.peer, Bytes::from(data));
            }
            Err(e) => tracing::error!("cannot encode a probe answer: {e}"),
        }
    }
}

impl std::fmt::Debug for ProbeAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeAsk")
            .field("from", &self.from)
            .field("pool", &self.pool)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Asks this node made, by id: who was asked and has not answered yet, where answers go,
/// and until when they are awaited.
#[derive(Default)]
pub(crate) struct Outstanding {
    next_id: u64,
    asks: HashMap<u64, Waiting>,
}

struct Waiting {
    peers: HashSet<String>,
    reply: mpsc::Sender<Answer>,
    until: Instant,
}

/// What became of an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    Delivered,
    /// Nobody waits for it from that peer: late, answered twice, or never asked.
    Unasked,
}

impl Outstanding {
    /// Registers an ask of `peers`, awaited until `until`; returns its id.
    pub fn open(
        &mut self,
        peers: HashSet<String>,
        reply: mpsc::Sender<Answer>,
        until: Instant,
    ) -> u64 {
        if self.asks.len() >= MAX_OUTSTANDING {
            if let Some(oldest) = self.asks.keys().min().copied() {
                self.asks.remove(&oldest);
            }
        }
        self.next_id = self.next_id.wrapping_add(1);
        self.asks.insert(
            self.next_id,
            Waiting {
                peers,
                reply,
                until,
            },
        );
        self.next_id
    }

    /// Hands on `from`'s answer to ask `id` if `from` was asked and has not answered yet.
    pub fn answer(&mut self, id: u64, from: &str, outcome: ProbeOutcome) -> Taken {
        let Some(w) = self.asks.get_mut(&id) else {
            return Taken::Unasked;
        };
        if !w.peers.remove(from) {
            return Taken::Unasked;
        }
        let _ = w.reply.try_send((from.to_string(), outcome.bounded()));
        if w.peers.is_empty() {
            // Dropping the sender tells the asker every answer is in.
            self.asks.remove(&id);
        }
        Taken::Delivered
    }

    /// Gives up asks past their deadline (the askers stop waiting).
    pub fn expire(&mut self, now: Instant) {
        self.asks
            .retain(|_, w| w.until > now && !w.reply.is_closed());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.asks.len()
    }
}

/// Asks of peers being served: how many are open per peer and how many each peer made in
/// the current second.
#[derive(Default)]
pub(crate) struct Serving {
    peers: HashMap<String, PeerAsks>,
    total: Arc<AtomicUsize>,
    second: Option<Instant>,
}

#[derive(Default)]
struct PeerAsks {
    open: Arc<AtomicUsize>,
    this_second: u32,
}

/// Why an ask was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many of this peer's asks are open, or it asked too often this second.
    PeerBound,
    /// Too many asks are open in all.
    Full,
}

impl Serving {
    /// Admits an ask from `from`, or says which bound refuses it.
    pub fn admit(&mut self, from: &str, now: Instant) -> Result<Slot, Refusal> {
        if self
            .second
            .is_none_or(|s| now.saturating_duration_since(s).as_secs() >= 1)
        {
            self.second = Some(now);
            self.peers.retain(|_, p| p.open.load(Ordering::Relaxed) > 0);
            for p in self.peers.values_mut() {
                p.this_second = 0;
            }
        }
        if self.total.load(Ordering::Relaxed) >= MAX_OPEN {
            return Err(Refusal::Full);
        }
        let p = self.peers.entry(from.to_string()).or_default();
        if p.open.load(Ordering::Relaxed) >= MAX_OPEN_PER_PEER
            || p.this_second >= MAX_PER_PEER_PER_SECOND
        {
            return Err(Refusal::PeerBound);
        }
        p.this_second += 1;
        p.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot([p.open.clone(), self.total.clone()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn up() -> ProbeOutcome {
        ProbeOutcome::Up { rtt_us: 1000 }
    }

    #[test]
    fn answers_go_to_the_asker_once_and_only_from_those_asked() {
        let now = Instant::now();
        let mut out = Outstanding::default();
        let (tx, mut rx) = mpsc::channel(4);
        let peers = HashSet::from(["b".to_string(), "c".to_string()]);
        let id = out.open(peers, tx, now + Duration::from_secs(5));
        assert_eq!(out.answer(id, "x", up()), Taken::Unasked, "x was not asked");
        assert_eq!(out.answer(id + 1, "b", up()), Taken::Unasked, "no such ask");
        assert_eq!(out.answer(id, "b", up()), Taken::Delivered);
        assert_eq!(
            out.answer(id, "b", up()),
            Taken::Unasked,
            "b answered already"
        );
        assert_eq!(rx.try_recv().unwrap(), ("b".to_string(), up()));
        let long = ProbeOutcome::Down {
            reason: "é".repeat(1000),
        };
        assert_eq!(out.answer(id, "c", long), Taken::Delivered);
        match rx.try_recv().unwrap().1 {
            ProbeOutcome::Down { reason } => assert!(reason.len() <= crate::wire::MAX_OUTCOME_TEXT),
            other => panic!("{other:?}"),
        }
        // Everyone answered: the ask is closed, and the asker sees the channel end.
        assert_eq!(out.len(), 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn asks_expire_and_are_bounded() {
        let now = Instant::now();
        let mut out = Outstanding::default();
        let (tx, _rx) = mpsc::channel(1);
        let id = out.open(
            HashSet::from(["b".into()]),
            tx.clone(),
            now + Duration::from_secs(1),
        );
        out.expire(now + Duration::from_secs(2));
        assert_eq!(out.answer(id, "b", up()), Taken::Unasked, "late");
        for _ in 0..MAX_OUTSTANDING + 10 {
            out.open(
                HashSet::from(["b".into()]),
                tx.clone(),
                now + Duration::from_secs(9),
            );
        }
        assert_eq!(out.len(), MAX_OUTSTANDING);
    }

    #[test]
    fn serving_is_bounded_per_peer_per_second_and_in_all() {
        let t0 = Instant::now();
        let mut s = Serving::default();
        let mut held = Vec::new();
        for _ in 0..MAX_OPEN_PER_PEER {
            held.push(s.admit("b", t0).unwrap());
        }
        assert_eq!(
            s.admit("b", t0).err(),
            Some(Refusal::PeerBound),
            "open per peer"
        );
        // Answered asks free their place, but not the per-second budget.
        held.clear();
        let mut n = MAX_OPEN_PER_PEER as u32;
        while n < MAX_PER_PEER_PER_SECOND {
            drop(s.admit("b", t0).unwrap());
            n += 1;
        }
        assert_eq!(
            s.admit("b", t0).err(),
            Some(Refusal::PeerBound),
            "per second"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert!(s.admit("b", t1).is_ok(), "a new second");
        // In all: many peers, each within its own bound.
        let mut held = Vec::new();
        let mut refused = None;
        for i in 0..MAX_OPEN + 1 {
            match s.admit(&format!("p{}", i / MAX_OPEN_PER_PEER), t1) {
                Ok(slot) => held.push(slot),
                Err(e) => refused = Some(e),
            }
        }
        assert_eq!(refused, Some(Refusal::Full));
        assert_eq!(held.len(), MAX_OPEN);
    }
}
