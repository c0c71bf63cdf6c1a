//! Switchyard mesh: SWIM membership (foca) over QUIC (quinn) with mutual TLS, and replication
//! of the health table, so that every node steers with what every other node sees.
//!
//! [`Mesh::start`] binds the QUIC endpoint, joins through the seeds and runs the one task that
//! owns foca and the table. The modules, bottom up: `identity` (node ids and SWIM members),
//! `hash` (the fingerprint hash), `table` (the pure replication core), `wire` (replication messages), `codec` (the one place
//! where wire messages become bytes), `config`, `state` and `metrics` (what the node hands the
//! mesh and reads from it), `tls` (the cluster CA and node certificates), `keys` (who may sign what: this
//! node's key and its peers' certificates), `transport` (the
//! QUIC links), `asks` (peers asked to probe an origin now, and asks served), `relay` (relay streams
//! through a peer: frames and the mesh's checks), `machine` (the mesh's state machine: foca,
//! the table and the keys, with no I/O), `task` (the mesh task that runs it over the
//! transport) and `mesh` (its handle).

#![forbid(unsafe_code)]

mod asks;
pub mod codec;
mod config;
mod error;
pub mod hash;
pub mod identity;
pub mod keys;
pub mod machine;
mod mesh;
mod metrics;
pub mod relay;
mod state;
pub mod table;
mod task;
pub mod tls;
pub mod transport;
pub mod wire;

pub use asks::ProbeAsk;
pub use config::{MeshConfig, Profile, Timings, MAX_SWIM_PACKET, MIN_MAX_MEMBERS};
pub use error::GossipError;
pub use identity::{NodeId, NodeIdentity};
pub use keys::Replaced;
pub use mesh::{Mesh, PreparedTls};
pub use metrics::MeshMetrics;
pub use relay::{
    IncomingRelay, RefuseReason, RelayError, RelayRequest, RelayResponse, RelayStreams,
};
pub use state::{LocalRow, MemberInfo, MemberState, MeshState, WriterSnapshot};
pub use table::{Advert, Verdict};
pub use wire::ProbeOutcome;
