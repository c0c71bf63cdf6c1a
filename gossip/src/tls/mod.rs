//! Mutual TLS for the mesh: the cluster CA, node certificates, and the QUIC (quinn) client and
//! server configurations built from them.
//!
//! Trust model: one private CA per cluster. Every node holds a certificate issued by it whose
//! only DNS subject alternative name is the node id ("edge-weu-1"). A node accepts a QUIC
//! connection only from a peer presenting a certificate chained to the cluster CA (client
//! authentication is required, not optional). When a node dials a peer by its node id (the
//! server name), a server holding another node's certificate fails the handshake; when it dials
//! an address whose node it does not know yet (a seed), it uses [`MESH_SERVER_NAME`] and any
//! node certificate of the cluster is accepted. Either way a cluster certificate only proves
//! *some* cluster membership: the mesh must still check that a peer claiming id X in SWIM holds
//! X's certificate, with [`peer_is`] (or by comparing with [`peer_node_id`]).
//!
//! A certificate may also name the region its node speaks for, as a second DNS name
//! `<region>.region.switchyard.invalid` (`switchyard cert issue --region`); see
//! [`issue_cert_in`]. The node's key also signs what the node claims in the mesh (its SWIM
//! identity, its health rows): [`NodeTls::signer`], checked against the certificate with
//! [`NodeTls::check_peer_cert`].
//!
//! Files, as written by [`init_ca`] and [`issue_cert`]:
//!
//! ```text
//! <ca dir>/ca.crt          cluster CA certificate (copy to every node)
//! <ca dir>/ca.key          cluster CA key, 0600 (keep off the nodes)
//! <out dir>/<node id>.crt  node certificate, then the CA certificate
//! <out dir>/<node id>.key  node key, 0600
//! ```
//!
//! Revocation and rotation: a revocation list ([`Revoked`], `[mesh] revoked`) names node ids
//! and certificate serials that are refused at both ends of a handshake and wherever their
//! claims arrive from ([`load_with`]). A node reloads its CA bundle, certificate, key and list
//! by making a new [`NodeTls`] and handing it to the running mesh (`Mesh::reload_tls`).
//!
//! Bottom up: `error`, `files` (reading and writing the PEM files), `verify` (certificate
//! checks), `revoked` (the revocation list), then `ca` (the CA and node certificates, made and
//! read with rcgen) and `node` (a node's identity and its QUIC configurations).
//!
//! Only the *ring* crypto provider is used, and always explicitly: nothing here depends on a
//! process-wide default provider being installed.

mod ca;
mod error;
mod files;
mod node;
mod revoked;
mod verify;

#[cfg(test)]
mod tests;

pub use crate::identity::MESH_SERVER_NAME;
pub use ca::{init_ca, issue_cert, issue_cert_in, CaPaths, CertPaths, CA_CERT_FILE, CA_KEY_FILE};
pub use error::{FileKind, TlsError};
pub use node::{
    load, load_with, CertSigner, NodeTls, PeerCert, ALPN, KEEP_ALIVE_INTERVAL, MAX_IDLE_TIMEOUT,
};
pub use revoked::{append as revoke, serial_hex, serial_of_file, Revocation, Revoked};
pub use verify::{peer_cert, peer_is, peer_node_id, REVOKED_ALERT};
