//! What can go wrong with the mesh's certificates and TLS configuration ([`TlsError`]), each
//! message naming the file (or node id) at fault and what to do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::identity::InvalidNodeId;

pub(super) const ISSUE_HINT: &str =
    "issue one with `switchyard cert issue --ca DIR --node ID --out DIR`";
pub(super) const INIT_CA_HINT: &str =
    "create one with `switchyard ca init --cluster NAME --out DIR`";

/// Which file an error is about; decides the wording and the advice of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    CaCert,
    CaKey,
    NodeCert,
    NodeKey,
    RevocationList,
}

impl FileKind {
    fn hint(self) -> &'static str {
        match self {
            FileKind::CaCert => {
                "every node needs the cluster's ca.crt (written by `switchyard ca init \
                 --cluster NAME --out DIR`)"
            }
            FileKind::CaKey => {
                "point --ca at the directory written by `switchyard ca init --cluster NAME \
                 --out DIR`"
            }
            FileKind::NodeCert | FileKind::NodeKey => ISSUE_HINT,
            FileKind::RevocationList => {
                "fix [mesh] revoked, or create the file (it may be empty; `switchyard cert \
                 revoke --list FILE` appends to it)"
            }
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::CaCert => "cluster CA certificate",
            FileKind::CaKey => "cluster CA key",
            FileKind::NodeCert => "node certificate",
            FileKind::NodeKey => "node key",
            FileKind::RevocationList => "revocation list",
        })
    }
}

/// Everything that can go wrong with the mesh's certificates and TLS configuration. Each
/// message names the file (or node id) at fault and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(transparent)]
    InvalidNodeId(#[from] InvalidNodeId),

    #[error("invalid cluster name {cluster:?}: {reason}")]
    InvalidCluster {
        cluster: String,
        reason: &'static str,
    },

    #[error("cannot create the directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },

    #[error(
        "refusing to overwrite the existing cluster CA key {path}: every node certificate of the \
         cluster chains to it. To issue a node certificate use `switchyard cert issue --ca DIR \
         --node ID --out DIR`; to really start a new CA, move the old one away first (and then \
         reissue every node certificate)"
    )]
    CaKeyExists { path: PathBuf },

    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },

    #[error(
        "the {what} {path} is readable or writable by every user (mode {mode:04o}): anyone on \
         this host could act as this node. Restrict it with `chmod 600 {path}` (or 640 with a \
         group the service runs in)"
    )]
    KeyExposed {
        what: FileKind,
        path: PathBuf,
        mode: u32,
    },

    #[error("cannot read the {what} {path}: {source}; {}", .what.hint())]
    Read {
        what: FileKind,
        path: PathBuf,
        source: io::Error,
    },

    #[error("the {what} {path} is not a PEM file ({detail}); {}", .what.hint())]
    NotPem {
        what: FileKind,
        path: PathBuf,
        detail: String,
    },

    #[error("the {what} {path} holds no CERTIFICATE block (is it a key?); {}", .what.hint())]
    NoCertificate { what: FileKind, path: PathBuf },

    #[error(
        "the {what} {path} holds no PRIVATE KEY block (is it a certificate?); {}",
        .what.hint()
    )]
    NoKey { what: FileKind, path: PathBuf },

    #[error("the {what} {path} is not a usable private key: {reason}; {}", .what.hint())]
    BadKey {
        what: FileKind,
        path: PathBuf,
        reason: String,
    },

    #[error("the {what} {path} is not a usable X.509 certificate: {reason}; {}", .what.hint())]
    BadCert {
        what: FileKind,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "the key {key} does not belong to the certificate {cert} (their public keys differ); use \
         the key written together with that certificate, or issue both again"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },

    #[error(
        "the node certificate {cert} is not signed by the cluster CA {ca}: it comes from another \
         CA, so no node of this cluster would accept it; {ISSUE_HINT} using this cluster's CA"
    )]
    NotSignedByCa { cert: PathBuf, ca: PathBuf },

    #[error(
        "the node certificate {cert} does not verify against the cluster CA {ca}: {reason}; \
         {ISSUE_HINT}"
    )]
    CertRejected {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },

    #[error(
        "the node certificate {cert} names no node: it has no DNS subject alternative name that \
         is a valid node id; {ISSUE_HINT}"
    )]
    NoNodeId { cert: PathBuf },

    #[error(
        "the node certificate {cert} names several nodes ({names}); a node certificate must name \
         exactly one; {ISSUE_HINT}"
    )]
    SeveralNodeIds { cert: PathBuf, names: String },

    #[error("cannot issue certificates from the cluster CA {path}: {reason}; {INIT_CA_HINT}")]
    UnusableCa { path: PathBuf, reason: String },

    #[error("cannot generate the {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },

    #[error("the system clock is unusable for certificate validity: {reason}")]
    Clock { reason: &'static str },

    #[error(
        "{path}:{line}: {reason}; an entry is `node:ID` or `serial:HEX`, one a line, and `#` \
         starts a comment"
    )]
    BadRevocation {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error(
        "this node's certificate {cert} is revoked: {why}. Issue it a new certificate with \
         `switchyard cert issue` (a new serial; a node id that is listed needs a new id), or \
         remove the entry from the list"
    )]
    OwnCertRevoked { cert: PathBuf, why: String },

    #[error("cannot build the QUIC {side} configuration of node {node}: {reason}")]
    Config {
        side: &'static str,
        node: String,
        reason: String,
    },
}
