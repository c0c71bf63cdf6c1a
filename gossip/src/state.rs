//! What the node and the mesh hand each other: the node's own health rows ([`LocalRow`]) in,
//! membership and every writer's rows ([`MeshState`]) out.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_geo::Region;

use crate::identity::NodeIdentity;
use crate::table::{Advert, Row, Verdict};

/// A member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub id: String,
    pub region: Region,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub generation: u64,
    /// The QUIC round trip to it, while its connection answers; `None` without a connection,
    /// or when what this node sent it went unanswered (a cut path that SWIM's indirect acks
    /// hide: it may still call the member alive).
    pub rtt: Option<Duration>,
}

/// One writer's rows as this node holds them.
#[derive(Debug, Clone)]
pub struct WriterSnapshot {
    pub node: String,
    pub region: Region,
    pub fingerprint: u64,
    /// What the writer says of itself for DNS (see [`Advert`]).
    pub advert: Advert,
    /// The writer is this node, or a member SWIM believes alive or suspect. Rows of a down
    /// writer stop counting until it comes back.
    pub live: bool,
    pub rows: Vec<(Row, Duration)>,
}

/// What the node reads: membership and every writer's rows.
#[derive(Debug, Clone)]
pub struct MeshState {
    pub local: NodeIdentity,
    pub members: Vec<MemberInfo>,
    pub writers: Vec<WriterSnapshot>,
}

/// One local health row, as the node hands it to the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    pub pool: String,
    pub origin: String,
    pub healthy: bool,
    pub rtt: Option<Duration>,
    pub last_change_ms: u64,
    pub reason: Option<String>,
    /// On a down row, whose fault the node found it to be (see [`Verdict`]).
    pub verdict: Option<Verdict>,
}
