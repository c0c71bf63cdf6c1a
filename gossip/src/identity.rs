//! Who a node is. [`NodeId`] is the one rule for node ids, shared by the config check, the
//! certificates (the id is their DNS name) and the mesh. [`NodeIdentity`] is a member as SWIM
//! sees it: node id, region, the address its QUIC endpoint listens on, the cluster it belongs
//! to, and a generation. Foca keys members by node id, so a restarted node (higher generation)
//! replaces its old self instead of leaving a ghost beside it.
//!
//! A node signs its own identity with the key of its certificate ([`NodeIdentity::sig`]), so
//! no other member can gossip a version of it that it never claimed (another region or
//! address, a generation that can never be beaten). Peers check the signature against the
//! node's certificate before foca sees the identity.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::DnsName;
use serde::{Deserialize, Serialize};
use switchyard_geo::Region;

/// Server name for dialing a peer known only by its address: the handshake then accepts any
/// node certificate issued by the cluster CA, whatever node it names, and the caller learns
/// which node it reached from the certificate. Dial with the peer's node id instead whenever
/// it is known, so the handshake itself pins the node. Reserved: no node may take this id (the
/// `.invalid` top-level domain can never be a real host, RFC 2606).
pub const MESH_SERVER_NAME: &str = "mesh.switchyard.invalid";

/// Names under this suffix are the mesh's own (the dialing name above, the region a
/// certificate speaks for), never node ids, so a certificate's extra DNS names can never be
/// taken for its node id.
pub const RESERVED_SUFFIX: &str = ".switchyard.invalid";

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
        if id.len() >= RESERVED_SUFFIX.len()
            && id
                .get(id.len() - RESERVED_SUFFIX.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(RESERVED_SUFFIX))
        {
            return Some("names ending in \".switchyard.invalid\" are reserved for the mesh");
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

/// Signs a node's own identity (and nothing else): the node's certificate key, or a test's.
pub trait SignIdentity: fmt::Debug + Send + Sync {
    /// A signature over `claim` ([`NodeIdentity::claim`]); empty if signing failed.
    fn sign_claim(&self, claim: &[u8]) -> Vec<u8>;
}

/// A member's identity in SWIM.
///
/// Equality and hashing ignore the signature: ECDSA signatures differ each time, and foca
/// must see two signatures of one identity as the same member.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: String,
    pub region: Region,
    pub addr: SocketAddr,
    pub cluster: String,
    /// Bumped by `renew` (declared down, then rejoining) and set from the clock at boot, so a
    /// restart always wins over what the mesh remembers.
    pub generation: u64,
    /// The node's signature over [`NodeIdentity::claim`], made with its certificate's key.
    pub sig: Vec<u8>,
    /// Present on this node's own identity only, so that foca's `renew` signs the new
    /// generation too.
    #[serde(skip)]
    signer: Option<Arc<dyn SignIdentity>>,
}

impl NodeIdentity {
    /// An identity without a signature (peers refuse it until it is signed).
    pub fn unsigned(
        id: impl Into<String>,
        region: Region,
        addr: SocketAddr,
        cluster: impl Into<String>,
        generation: u64,
    ) -> NodeIdentity {
        NodeIdentity {
            id: id.into(),
            region,
            addr,
            cluster: cluster.into(),
            generation,
            sig: Vec::new(),
            signer: None,
        }
    }

    /// Signs this identity with `signer`, which also signs every renewal of it.
    pub fn signed_by(mut self, signer: Arc<dyn SignIdentity>) -> NodeIdentity {
        self.sig = signer.sign_claim(&self.claim());
        self.signer = Some(signer);
        self
    }

    /// The bytes a node signs: every field but the signature, each length-prefixed, behind a
    /// domain tag so that no other signed message of the mesh can pass for one.
    pub fn claim(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.id.len() + self.cluster.len());
        put_field(&mut out, b"switchyard/identity/1");
        put_field(&mut out, self.cluster.as_bytes());
        put_field(&mut out, self.id.as_bytes());
        put_field(&mut out, self.region.code().as_bytes());
        // The address as it travels: serde keeps neither an IPv6 scope id nor a flow label.
        match self.addr.ip() {
            std::net::IpAddr::V4(ip) => put_field(&mut out, &ip.octets()),
            std::net::IpAddr::V6(ip) => put_field(&mut out, &ip.octets()),
        }
        out.extend(self.addr.port().to_le_bytes());
        out.extend(self.generation.to_le_bytes());
        out
    }
}

/// Appends `field` with its length in front, so that no two different field lists encode to
/// the same bytes.
pub(crate) fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend((field.len() as u64).to_le_bytes());
    out.extend(field);
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("addr", &self.addr)
            .field("cluster", &self.cluster)
            .field("generation", &self.generation)
            .field("signed", &!self.sig.is_empty())
            .finish()
    }
}

impl PartialEq for NodeIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.region == other.region
            && self.addr == other.addr
            && self.cluster == other.cluster
            && self.generation == other.generation
    }
}

impl Eq for NodeIdentity {}

impl Hash for NodeIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.region.hash(state);
        self.addr.hash(state);
        self.cluster.hash(state);
        self.generation.hash(state);
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        let mut next = NodeIdentity {
            generation: self.generation.checked_add(1)?,
            sig: Vec::new(),
            ..self.clone()
        };
        if let Some(signer) = &self.signer {
            next.sig = signer.sign_claim(&next.claim());
        }
        Some(next)
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
        NodeIdentity::unsigned(
            "edge-weu",
            Region::Weu,
            "127.0.0.1:7946".parse().unwrap(),
            "test",
            generation,
        )
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
            "weu.region.switchyard.invalid",
            "x.SWITCHYARD.invalid",
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
        // No generation above the last: renewing it fails instead of wrapping to 0.
        assert!(id(u64::MAX).renew().is_none());
    }

    #[test]
    fn two_signatures_of_one_identity_are_the_same_member() {
        let mut a = id(5);
        let mut b = id(5);
        a.sig = vec![1; 70];
        b.sig = vec![2; 71];
        assert_eq!(a, b);
        let hash = |x: &NodeIdentity| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            x.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(a.claim(), id(6).claim());
    }
}
