//! The node's errors. Each names what is at fault (file, object, field, address) and, where
//! there is one, what to do about it.

use std::net::SocketAddr;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] switchyard_gossip::tls::TlsError),
    #[error("mesh: {0}")]
    Mesh(#[from] switchyard_gossip::GossipError),
    #[error("geo: {0}")]
    Geo(String),
    #[error("anycast: {0}")]
    Anycast(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
    #[error("reload refused: {0}")]
    Reload(String),
    #[error("status endpoint {addr}: {message}; is a node running there? (set it with --addr or [node] status_listen)")]
    Status { addr: SocketAddr, message: String },
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "; another process holds it: stop it or pick another port",
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no interface of this host has that address",
        _ => "",
    }
}
