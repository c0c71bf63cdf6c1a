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

/// The hold-down state of every (load balancer, pool, origin) a path was decided for, and
/// the peers whose relays failed lately.
#[derive(Debug, Default)]
pub struct Relays {
    holds: Mutex<HashMap<Slot, Hold>>,
    /// When a relay through each peer last failed; passed over for [`relay::SHUN`] after.
    failed: Mutex<HashMap<Arc<str>, Instant>>,
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

    /// A relay through `peer` failed at `now` (no answer, refused, no connection): it is
    /// passed over for [`relay::SHUN`], and a path held through it switches at once.
    pub fn failed(&self, peer: &str, now: Instant) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, at| now < *at + relay::SHUN);
        failed.insert(peer.into(), now);
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
            Some(m) => {
                let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                let lately = |id: &str| failed.get(id).is_some_and(|at| now < *at + relay::SHUN);
                // As many of a peer's round trips as the pool's monitor takes per probe.
                // Looked up by the pool's index: this runs for new connections, and
                // `ask_target` would find the origin by name and clone its monitor.
                let trips = (rt.pools[t.pool].monitor.as_deref())
                    .and_then(|name| rt.config.monitor(name))
                    .map_or(1, |m| m.kind.round_trips());
                peers(&key, &t.health.remote(), m, trips, lately)
            }
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
/// its advert's readiness, its own row for the origin (a direct observation: rows are
/// never written for relayed paths, so a peer is used only when it reaches the origin itself),
/// the `trips` its round trip counts as (the origin's monitor's), and whether a relay through
/// it `failed_lately`.
pub fn peers(
    key: &OriginKey,
    remote: &[RemoteReport],
    mesh: &MeshState,
    trips: u32,
    failed_lately: impl Fn(&str) -> bool,
) -> Vec<Peer> {
    // Indexed once: this runs for new connections, over every member.
    let ready: HashMap<&str, bool> = (mesh.writers.iter())
        .map(|w| (w.node.as_str(), w.live && w.advert.ready))
        .collect();
    let rows: HashMap<&str, &RemoteReport> = (remote.iter())
        .filter(|r| r.live)
        .map(|r| (&*r.node, r))
        .collect();
    mesh.members
        .iter()
        .filter(|m| m.id != mesh.local.id)
        .map(|m| {
            let row = rows.get(m.id.as_str()).and_then(|r| r.rows.get(key));
            Peer {
                id: m.id.as_str().into(),
                alive: m.state == MemberState::Alive,
                ready: ready.get(m.id.as_str()).copied().unwrap_or(false),
                origin_up: row.is_some_and(|o| o.healthy),
                origin_rtt: row.and_then(|o| o.rtt),
                rtt: m.rtt,
                trips,
                failed_lately: failed_lately(&m.id),
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
                member("f", MemberState::Alive, 10),
            ],
            writers: vec![
                writer("b", true),
                writer("c", true),
                writer("d", false),
                writer("f", true),
            ],
        };
        let remote = [
            report("b", true, 170),
            report("c", true, 10),
            report("d", true, 10),
            report("e", false, 10),
            report("f", true, 10),
        ];
        let peers = peers(&key(), &remote, &mesh, 2, |id| id == "f");
        let ids: Vec<&str> = peers.iter().map(|p| &*p.id).collect();
        assert_eq!(ids, ["b", "c", "d", "e", "f"], "every member but this node");
        let b = &peers[0];
        assert!(b.eligible());
        assert_eq!(b.cost(), Some(Duration::from_millis(490)), "2 x 160 + 170");
        assert!(!peers[1].alive, "suspect");
        assert!(!peers[2].ready, "its advert says not ready");
        assert!(!peers[3].ready, "no advert heard");
        assert!(!peers[3].origin_up, "its own path is down");
        assert!(peers[4].failed_lately, "a relay through it failed lately");
        let eligible: Vec<&str> = peers
            .iter()
            .filter(|p| p.eligible())
            .map(|p| &*p.id)
            .collect();
        assert_eq!(eligible, ["b"]);
    }
}
