//! Who a node is. [`NodeId`] is the one rule for node ids, shared by the config check, the
//! certificates (the id is their DNS name) and the mesh. [`NodeIdentity`] is a member as SWIM
//! sees it: node id, region, the address its QUIC endpoint listens on, the cluster it belongs
//! to, and a generation. Foca keys members by node id, so a restarted node (higher generation)
//! replaces its old self instead of leaving a ghost beside it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use rustls::pki_types::DnsName;
use serde::{Deserialize, Serialize};
use switchyard_geo::Region;

/// Server name for dialing a peer known only by its address: the handshake then accepts any
/// node certificate issued by the cluster CA, whatever node it names, and the caller learns
/// which node it reached from the certificate. Dial with the peer's node id instead whenever
/// it is known, so the handshake itself pins the node. Reserved: no node may take this id (the
/// `.invalid` top-level domain can never be a real host, RFC 2606).
pub const MESH_SERVER_NAME: &str = "mesh.switchyard.invalid";

/// A valid node id: what `[node] id`, `switchyard cert issue --node` and a node certificate's
/// DNS name all hold. Letters, digits, '-' and '_', in labels joined by '.', at most
/// [`NodeId::MAX_LEN`] characters, such as "edge-weu-1". It must be usable as the DNS name of
/// a certificate and the server name QUIC dials, so a label never starts or ends with '-' and
/// the last label is not all digits ("edge.1" would be taken for an IP address); it must
/// round-trip exactly, so no empty label (no leading, trailing or doubled '.'). It also names
/// files (`<id>.crt`), which this character set keeps safe. Case is kept, and ids that differ
/// only in case are different ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// Why a string is not a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node id {id:?}: {reason}; a node id is up to 63 letters, digits, '-' and '_', in \
     labels joined by '.', such as \"edge-weu-1\""
)]
pub struct InvalidNodeId {
    pub id: String,
    pub reason: &'static str,
}

impl NodeId {
    /// The longest node id: one DNS label's worth, so it fits status tables and metric labels,
    /// and any DNS name it is placed under.
    pub const MAX_LEN: usize = 63;

    /// Checks `id` against the rule.
    pub fn new(id: impl Into<String>) -> Result<NodeId, InvalidNodeId> {
        let id = id.into();
        match Self::problem(&id) {
            None => Ok(NodeId(id)),
            Some(reason) => Err(InvalidNodeId { id, reason }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn problem(id: &str) -> Option<&'static str> {
        if id.is_empty() {
            return Some("it is empty");
        }
        if id.eq_ignore_ascii_case(MESH_SERVER_NAME) {
            return Some("it is reserved for dialing a peer by address");
        }
        if id.len() > Self::MAX_LEN {
            return Some("it is longer than 63 characters");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Some("it contains a character other than letters, digits, '-', '_' and '.'");
        }
        // A trailing dot would be accepted by DNS parsing and dropped, so "edge." would
        // silently become "edge".
        if id.split('.').any(str::is_empty) {
            return Some("it has an empty label (leading, trailing or doubled '.')");
        }
        if id
            .split('.')
            .any(|l| l.starts_with('-') || l.ends_with('-'))
        {
            return Some("a label starts or ends with '-'");
        }
        // What is left for the DNS parser to refuse: a numeric last label ("10.0.0.1",
        // "edge.1"), which would be taken for an IP address.
        if DnsName::try_from(id).is_err() {
            return Some("it is not a valid DNS name (is its last label all digits?)");
        }
        None
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(s: &str) -> Result<NodeId, InvalidNodeId> {
        NodeId::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;

    fn try_from(s: String) -> Result<NodeId, InvalidNodeId> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
    fn the_node_id_rule() {
        let longest = "a".repeat(NodeId::MAX_LEN);
        for good in [
            "edge-weu-1",
            "a_b",
            "edge_weu.1a",
            "Edge-WEU",
            "a",
            "1edge.eu",
            longest.as_str(),
        ] {
            assert_eq!(NodeId::new(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(NodeId::MAX_LEN + 1);
        let dotted_too_long = format!("{}.{}", "a".repeat(40), "b".repeat(23));
        for bad in [
            "",
            "edge.1",
            "10.0.0.1",
            "-edge",
            "edge-",
            "edge.-x",
            "edge.",
            ".edge",
            "a..b",
            "edge weu",
            "edge/1",
            "../edge",
            "édge",
            MESH_SERVER_NAME,
            "Mesh.Switchyard.Invalid",
            too_long.as_str(),
            dotted_too_long.as_str(),
        ] {
            let err = NodeId::new(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
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
