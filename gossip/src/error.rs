//! Why the mesh could not start ([`GossipError`]).

use std::net::SocketAddr;

use crate::tls::TlsError;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("[mesh] listen: cannot bind UDP {addr}: {source}; pick another address or stop what holds it")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Identity(String),
}
