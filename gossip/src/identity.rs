//! Who a member of the mesh is, as SWIM sees it: node id, region, the address its QUIC
//! endpoint listens on, the cluster it belongs to, and a generation. Foca keys members by
//! node id, so a restarted node (higher generation) replaces its old self instead of leaving
//! a ghost beside it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use switchyard_geo::Region;

/// A member's identity in SWIM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: String,
    pub region: Region,
    pub addr: SocketAddr,
    pub cluster: String,
    /// Bumped by `renew` (declared down, then rejoining) and set from the clock at boot, so a
    /// restart always wins over what the mesh remembers.
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(generation: u64) -> NodeIdentity {
        NodeIdentity {
            id: "edge-weu".into(),
            region: Region::Weu,
            addr: "127.0.0.1:7946".parse().unwrap(),
            cluster: "test".into(),
            generation,
        }
    }

    #[test]
    fn renew_bumps_the_generation_and_wins() {
        let old = id(5);
        let new = old.renew().unwrap();
        assert_eq!(new.generation, 6);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }
}
