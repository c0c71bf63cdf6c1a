//! Switchyard mesh: SWIM membership (foca) over QUIC (quinn) with mutual TLS, and replication
//! of the health table, so that every node steers with what every other node sees.
//!
//! `mesh` is the entry point: `Mesh::start` binds the QUIC endpoint, joins through the seeds
//! and runs the one task that owns foca and the table. `table` is the pure replication core,
//! `codec` the one place where wire messages become bytes, `tls` the cluster CA and node
//! certificates, `transport` the QUIC links.

pub mod codec;
pub mod identity;
pub mod mesh;
pub mod table;
pub mod tls;
pub mod transport;

pub use identity::NodeIdentity;
pub use mesh::{Mesh, MeshConfig, MeshState};

use std::net::SocketAddr;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("[mesh] listen: cannot bind UDP {addr}: {source}; pick another address or stop what holds it")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Identity(String),
}
