//! The relay decision's shell: gathers what `core::relay::decide` reads from the live health
//! view and the mesh (this node's row for the origin, every peer's row, readiness and SWIM
//! round trip), and keeps the hold-down state per (load balancer, pool, origin) between
//! connections (not to be confused with `proxy::relay`, which pipes bytes). The proxy asks
//! [`Relays::path`] for the path of each new connection, and follows it through `proxy::tunnel`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_gossip::{MemberState, MeshState};
use tokio::time::Instant;

use crate::core::compiled::OriginKey;
use crate::core::relay::{self, Decision, Direct, Hold, Inputs, Peer};
use crate::core::view::{RemoteReport, Snapshot};
use crate::hub::HealthHub;

/// The hold-down state of every (load balancer, pool, origin) a path was decided for.
#[derive(Debug, Default)]
pub struct Relays {
    holds: Mutex<HashMap<Slot, Hold>>,
}

/// What a path is decided for: load balancer `lb`'s connection to origin `origin` of pool
/// `pool` (indices into `snap.rt`, as steering returned them from that same snapshot).
pub struct Target<'a> {
    pub health: &'a HealthHub,
    pub snap: &'a Snapshot,
    /// The mesh's latest state; `None` without `[mesh]` (always direct then: there is nobody
    /// to relay through).
    pub mesh: Option<&'a MeshState>,
    pub lb: usize,
    pub pool: usize,
    pub origin: usize,
}

impl Relays {
    /// The path a new connection to `t` takes now, and why. Remembers the choice for the
    /// hold-down of `relay = "fastest"`: call it once per connection.
    pub fn path(&self, t: &Target<'_>, now: Instant) -> Decision {
        self.run(t, now, true)
    }

    /// As [`Relays::path`], without remembering the choice: what explain and status show.
    pub fn peek(&self, t: &Target<'_>, now: Instant) -> Decision {
        self.run(t, now, false)
    }

    fn run(&self, t: &Target<'_>, now: Instant, remember: bool) -> Decision {
        let rt = &t.snap.rt;
        let key = rt.key(t.pool, t.origin);
        let direct = t
            .health
            .own_row(&key)
            .filter(|r| r.checked)
            .map(|r| Direct {
                up: r.healthy,
                rtt: r.rtt,
            });
        let peers = match t.mesh {
            Some(m) => peers(&key, &t.health.remote(), m),
            None => Vec::new(),
        };
        let lb = &rt.load_balancers[t.lb];
        let inputs = Inputs {
            policy: lb.relay,
            direct,
            peers: &peers,
        };
        let slot = (lb.name.clone(), key);
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if remember {
            relay::decide(&inputs, holds.entry(slot).or_default(), now)
        } else {
            let mut hold = holds.get(&slot).cloned().unwrap_or_default();
            relay::decide(&inputs, &mut hold, now)
        }
    }
}

type Slot = (Arc<str>, OriginKey);

/// Every other member as a possible relay for the origin `key`: SWIM's state and round trip,
/// its advert's readiness, and its own row for the origin (a direct observation: rows are
/// never written for relayed paths, so a peer is used only when it reaches the origin itself).
pub fn peers(key: &OriginKey, remote: &[RemoteReport], mesh: &MeshState) -> Vec<Peer> {
    mesh.members
        .iter()
        .filter(|m| m.id != mesh.local.id)
        .map(|m| {
            let ready = mesh
                .writers
                .iter()
                .find(|w| w.node == m.id)
                .is_some_and(|w| w.live && w.advert.ready);
            let row = remote
                .iter()
                .find(|r| r.live && *r.node == *m.id)
                .and_then(|r| r.rows.get(key));
            Peer {
                id: m.id.as_str().into(),
                alive: m.state == MemberState::Alive,
                ready,
                origin_up: row.is_some_and(|o| o.healthy),
                origin_rtt: row.and_then(|o| o.rtt),
                rtt: m.rtt,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use switchyard_geo::Region;
    use switchyard_gossip::{Advert, MemberInfo, NodeIdentity, WriterSnapshot};

    use super::*;
    use crate::core::view::Obs;

    fn key() -> OriginKey {
        OriginKey {
            pool: "weu".into(),
            origin: "weu-1".into(),
        }
    }

    fn member(id: &str, state: MemberState, rtt: u64) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            region: Region::Weu,
            addr: "127.0.0.1:7946".parse().unwrap(),
            state,
            generation: 1,
            rtt: Some(Duration::from_millis(rtt)),
        }
    }

    fn writer(id: &str, ready: bool) -> WriterSnapshot {
        WriterSnapshot {
            node: id.into(),
            region: Region::Weu,
            fingerprint: 0,
            advert: Advert {
                addresses: Vec::new(),
                ready,
                nameserver: false,
                names: Vec::new(),
                rtt_ms: Vec::new(),
            },
            live: true,
            rows: Vec::new(),
        }
    }

    fn report(id: &str, healthy: bool, rtt: u64) -> RemoteReport {
        RemoteReport {
            node: id.into(),
            region: Region::Weu,
            live: true,
            rows: HashMap::from([(
                key(),
                Obs {
                    node: id.into(),
                    region: Region::Weu,
                    healthy,
                    rtt: Some(Duration::from_millis(rtt)),
                    age: Duration::ZERO,
                    verdict: None,
                },
            )]),
        }
    }

    #[test]
    fn peers_join_swim_state_readiness_and_each_peers_own_row() {
        let addr = "127.0.0.1:7946".parse().unwrap();
        let mesh = MeshState {
            local: NodeIdentity::unsigned("me", Region::Weu, addr, "c", 1),
            members: vec![
                member("me", MemberState::Alive, 0),
                member("b", MemberState::Alive, 160),
                member("c", MemberState::Suspect, 20),
                member("d", MemberState::Alive, 30),
                member("e", MemberState::Alive, 40),
            ],
            writers: vec![writer("b", true), writer("c", true), writer("d", false)],
        };
        let remote = [
            report("b", true, 170),
            report("c", true, 10),
            report("d", true, 10),
            report("e", false, 10),
        ];
        let peers = peers(&key(), &remote, &mesh);
        let ids: Vec<&str> = peers.iter().map(|p| &*p.id).collect();
        assert_eq!(ids, ["b", "c", "d", "e"], "every member but this node");
        let b = &peers[0];
        assert!(b.eligible());
        assert_eq!(b.cost(), Some(Duration::from_millis(330)));
        assert!(!peers[1].alive, "suspect");
        assert!(!peers[2].ready, "its advert says not ready");
        assert!(!peers[3].ready, "no advert heard");
        assert!(!peers[3].origin_up, "its own path is down");
        let eligible: Vec<&str> = peers
            .iter()
            .filter(|p| p.eligible())
            .map(|p| &*p.id)
            .collect();
        assert_eq!(eligible, ["b"]);
    }
}
