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
//! Files, as written by [`init_ca`] and [`issue_cert`]:
//!
//! ```text
//! <ca dir>/ca.crt          cluster CA certificate (copy to every node)
//! <ca dir>/ca.key          cluster CA key, 0600 (keep off the nodes)
//! <out dir>/<node id>.crt  node certificate, then the CA certificate
//! <out dir>/<node id>.key  node key, 0600
//! ```
//!
//! Only the *ring* crypto provider is used, and always explicitly: nothing here depends on a
//! process-wide default provider being installed.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::{InvalidNodeId, NodeId};

/// ALPN protocol of the mesh; bump the version when the wire protocol changes incompatibly, so
/// mixed-version nodes fail the handshake with a clear "no application protocol" error rather
/// than misparsing each other.
pub const ALPN: &[u8] = b"switchyard-mesh/1";

/// QUIC keep-alive interval: well under [`MAX_IDLE_TIMEOUT`] so an idle but healthy connection
/// between two nodes never times out, and short enough to keep NAT/conntrack entries alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A connection that has heard nothing from its peer for this long is dead. SWIM detects
/// failures on its own (faster); this only bounds how long a dead connection lingers.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Receive buffer for unreliable datagrams (SWIM probes go there), in bytes.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 1 << 20;

/// How many unidirectional streams a peer may have open at once (replication pushes).
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 256;

pub use crate::identity::MESH_SERVER_NAME;

/// Name of the CA certificate file in a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// Name of the CA key file in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Backdating of `notBefore`, so a certificate issued on one machine is already valid on a
/// node whose clock is a little behind.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const NODE_CERT_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);

const ISSUE_HINT: &str = "issue one with `switchyard cert issue --ca DIR --node ID --out DIR`";
const INIT_CA_HINT: &str = "create one with `switchyard ca init --cluster NAME --out DIR`";

/// Which file an error is about; decides the wording and the advice of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    CaCert,
    CaKey,
    NodeCert,
    NodeKey,
}

impl FileKind {
    fn hint(self) -> &'static str {
        match self {
            FileKind::CaCert => {
                "every node needs the cluster's ca.crt (written by `switchyard cert init-ca \
                 --cluster NAME --out DIR`)"
            }
            FileKind::CaKey => {
                "point --ca at the directory written by `switchyard cert init-ca --cluster NAME \
                 --out DIR`"
            }
            FileKind::NodeCert | FileKind::NodeKey => ISSUE_HINT,
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

    #[error("cannot build the QUIC {side} configuration of node {node}: {reason}")]
    Config {
        side: &'static str,
        node: String,
        reason: String,
    },
}

/// Where [`init_ca`] wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where [`issue_cert`] wrote a node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new cluster CA in `out_dir` (created if missing): `ca.crt` and `ca.key` (mode
/// 0600), ECDSA P-256, valid about 10 years. Refuses to overwrite an existing `ca.key`, since
/// that would orphan every certificate already issued.
pub fn init_ca(out_dir: &Path, cluster: &str) -> Result<CaPaths, TlsError> {
    let invalid = |reason| {
        Err(TlsError::InvalidCluster {
            cluster: cluster.to_owned(),
            reason,
        })
    };
    if cluster.trim().is_empty() {
        return invalid("it is empty");
    }
    if cluster.chars().any(char::is_control) {
        return invalid("it contains control characters");
    }

    let paths = CaPaths {
        cert: out_dir.join(CA_CERT_FILE),
        key: out_dir.join(CA_KEY_FILE),
    };
    // Checked early for a clean message; the create_new below is what makes it race-free.
    if paths.key.exists() {
        return Err(TlsError::CaKeyExists { path: paths.key });
    }

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
            what: "cluster CA key",
            source,
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Switchyard cluster CA {cluster}"),
    );
    // pathlen 0: the CA signs node certificates directly, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_LIFETIME)?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "cluster CA certificate",
            source,
        })?;

    create_dir(out_dir)?;
    // create_new claims the name atomically: two concurrent init_ca cannot both win.
    write_new_file(&paths.key, key.serialize_pem().as_bytes(), 0o600).map_err(|e| match e {
        TlsError::Write { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
            TlsError::CaKeyExists {
                path: paths.key.clone(),
            }
        }
        other => other,
    })?;
    if let Err(e) = write_replacing(&paths.cert, cert.pem().as_bytes(), 0o644) {
        // Without its certificate the key is useless, and leaving it would make the next
        // attempt refuse to run.
        let _ = fs::remove_file(&paths.key);
        return Err(e);
    }
    tracing::info!(ca = %paths.cert.display(), cluster, "created the cluster CA");
    Ok(paths)
}

/// Issues a certificate for `node_id` from the CA in `ca_dir` (`ca.crt`, `ca.key`) and writes
/// `<node_id>.crt` (the node certificate followed by the CA certificate) and `<node_id>.key`
/// (mode 0600) into `out_dir` (created if missing). The certificate names the node by a DNS
/// SAN equal to `node_id`, allows both server and client authentication (a node is both), and
/// is valid about 2 years. Existing files for the node are replaced (renewal), each atomically.
pub fn issue_cert(ca_dir: &Path, node_id: &str, out_dir: &Path) -> Result<CertPaths, TlsError> {
    let node_id = NodeId::new(node_id)?;
    let node_id = node_id.as_str();
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_certs = read_certs(&ca_cert_path, FileKind::CaCert)?;
    let ca_key_der = read_key(&ca_key_path, FileKind::CaKey)?;
    let ca_key = KeyPair::try_from(&ca_key_der).map_err(|e| TlsError::BadKey {
        what: FileKind::CaKey,
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;

    // The issuing certificate is the one ca.key belongs to (ca.crt may hold more during a CA
    // rotation).
    let ca_spki = ca_key.subject_public_key_info();
    let mut ca_cert = None;
    for der in &ca_certs {
        let parsed = parse_cert(der, &ca_cert_path, FileKind::CaCert)?;
        if parsed.subject_public_key_info().as_ref() == ca_spki.as_slice() {
            ca_cert = Some((der, parsed));
            break;
        }
    }
    let unusable = |reason: String| TlsError::UnusableCa {
        path: ca_cert_path.clone(),
        reason,
    };
    let Some((ca_der, ca_parsed)) = ca_cert else {
        return Err(unusable(format!(
            "the key {} does not belong to it (their public keys differ)",
            ca_key_path.display()
        )));
    };

    // Without an x509 parser at hand, rebuild from the CA's raw subject what rcgen needs to
    // name the issuer. The issued certificate's issuer must equal the CA subject byte for byte
    // (checked below), or path building would not find the CA.
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = distinguished_name_from_der(ca_parsed.subject())
        .map_err(|reason| unusable(format!("its subject {reason}")))?;
    issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer = Issuer::new(issuer_params, ca_key);

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
            what: "node key",
            source,
        })?;
    let san = Ia5String::try_from(node_id).map_err(|_| InvalidNodeId {
        id: node_id.to_owned(),
        reason: "it is not ASCII",
    })?;
    let mut params = CertificateParams::default();
    // The CN is only for humans reading the certificate (openssl x509 -text); authentication
    // uses the SAN alone.
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.subject_alt_names = vec![SanType::DnsName(san)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    // The serial number is left to rcgen, which derives it from the (fresh) public key, so it
    // is unique per issued certificate.
    set_validity(&mut params, NODE_CERT_LIFETIME)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Generate {
            what: "node certificate",
            source,
        })?;

    // Never hand out a certificate that the nodes would then refuse.
    let leaf = webpki::EndEntityCert::try_from(cert.der()).map_err(|e| {
        unusable(format!(
            "the certificate issued from it does not parse ({e})"
        ))
    })?;
    if leaf.issuer() != ca_parsed.subject() {
        return Err(unusable(
            "its subject cannot be reproduced exactly as the issuer of a new certificate".into(),
        ));
    }
    let anchor = webpki::anchor_from_trusted_cert(ca_der)
        .map_err(|e| unusable(format!("it is not a usable trust anchor ({e})")))?;
    verify_node_cert(&leaf, &[anchor], &[]).map_err(|e| {
        unusable(format!(
            "the certificate issued from it does not verify ({e})"
        ))
    })?;

    let paths = CertPaths {
        cert: out_dir.join(format!("{node_id}.crt")),
        key: out_dir.join(format!("{node_id}.key")),
    };
    create_dir(out_dir)?;
    let chain = format!("{}{}", cert.pem(), pem_encode("CERTIFICATE", ca_der));
    // Key first, then certificate: a node (re)starting between the two renames fails `load`
    // with a clear key/certificate mismatch, and the next attempt finds both new files.
    write_replacing(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_replacing(&paths.cert, chain.as_bytes(), 0o644)?;
    tracing::info!(node = node_id, cert = %paths.cert.display(), "issued a node certificate");
    Ok(paths)
}

/// A node's TLS identity, loaded and verified: its certificate chain and key, and the cluster
/// CA it trusts. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    node_id: String,
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for NodeTls {
    // By hand, so the key never ends up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("node_id", &self.node_id)
            .field("chain_len", &self.certified.cert.len())
            .field("trusted_cas", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Loads a node's TLS identity from PEM files: the cluster CA certificate(s) to trust, the
/// node certificate chain (node certificate first) and its private key. Verifies everything a
/// handshake would (the key matches the certificate, the certificate chains to the cluster CA,
/// is currently valid and allows server and client authentication, and names exactly one
/// node), so that a misconfigured node fails at start rather than at its first handshake.
///
/// Every certificate in `ca_cert` is trusted, so a CA rotation can run with both CAs in it.
pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let ca_certs = read_certs(ca_cert, FileKind::CaCert)?;
    let mut roots = RootCertStore::empty();
    for der in ca_certs {
        roots.add(der).map_err(|e| TlsError::BadCert {
            what: FileKind::CaCert,
            path: ca_cert.to_owned(),
            reason: e.to_string(),
        })?;
    }

    let chain = read_certs(cert, FileKind::NodeCert)?;
    let key_der = read_key(key, FileKind::NodeKey)?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                key: key.to_owned(),
                cert: cert.to_owned(),
            }
        }
        other => TlsError::BadKey {
            what: FileKind::NodeKey,
            path: key.to_owned(),
            reason: other.to_string(),
        },
    })?;

    let (leaf_der, intermediates) = match certified.cert.split_first() {
        Some(split) => split,
        None => {
            return Err(TlsError::NoCertificate {
                what: FileKind::NodeCert,
                path: cert.to_owned(),
            })
        }
    };
    let leaf = parse_cert(leaf_der, cert, FileKind::NodeCert)?;
    verify_node_cert(&leaf, &roots.roots, intermediates).map_err(|e| match e {
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            TlsError::NotSignedByCa {
                cert: cert.to_owned(),
                ca: ca_cert.to_owned(),
            }
        }
        other => TlsError::CertRejected {
            cert: cert.to_owned(),
            ca: ca_cert.to_owned(),
            reason: describe_webpki_error(&other),
        },
    })?;

    let names: Vec<&str> = leaf
        .valid_dns_names()
        .filter(|n| NodeId::new(*n).is_ok())
        .collect();
    let node_id = match names.as_slice() {
        [one] => (*one).to_owned(),
        [] => {
            return Err(TlsError::NoNodeId {
                cert: cert.to_owned(),
            })
        }
        several => {
            return Err(TlsError::SeveralNodeIds {
                cert: cert.to_owned(),
                names: several.join(", "),
            })
        }
    };

    Ok(NodeTls {
        node_id,
        certified: Arc::new(certified),
        roots: Arc::new(roots),
        provider,
    })
}

impl NodeTls {
    /// The node id this identity proves: the DNS SAN of the node's certificate.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// QUIC server configuration: presents the node certificate and requires every client to
    /// present a certificate chained to the cluster CA (and nothing else: no public roots).
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let fail = |reason: String| TlsError::Config {
            side: "server",
            node: self.node_id.clone(),
            reason,
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| fail(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // max_early_data_size stays 0: no 0-RTT, whose data can be replayed by an attacker.
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| fail(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport_config());
        Ok(config)
    }

    /// QUIC client configuration: trusts only the cluster CA and authenticates with the node
    /// certificate. Dial a peer with its node id as the server name, or with
    /// [`MESH_SERVER_NAME`] when only its address is known. Build it once and reuse it (e.g.
    /// `Endpoint::set_default_client_config`): it carries the session cache that makes
    /// reconnections cheaper.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let fail = |reason: String| TlsError::Config {
            side: "client",
            node: self.node_id.clone(),
            reason,
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier {
                roots: self.roots.clone(),
                provider: self.provider.clone(),
            }))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // enable_early_data stays false: no replayable 0-RTT data.
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| fail(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport_config());
        Ok(config)
    }
}

/// Verifies a server the way rustls' WebPKI verifier does (chain to the cluster CA, serverAuth,
/// validity, name), except that the name check is skipped when dialing [`MESH_SERVER_NAME`].
/// Written out with rustls' own verification functions rather than by filtering the errors of
/// `WebPkiServerVerifier`, so the chain is verified whatever order that verifier checks in.
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let by_address = matches!(
            server_name,
            ServerName::DnsName(name) if name.as_ref().eq_ignore_ascii_case(MESH_SERVER_NAME)
        );
        if !by_address {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node id of the peer of an established connection: the single valid node id among the
/// DNS SANs of its certificate (`None` if there is none or several, or no certificate). The
/// handshake already checked that the certificate chains to the cluster CA.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<String> {
    let chain = peer_chain(conn)?;
    let leaf = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let mut names = leaf.valid_dns_names().filter(|n| NodeId::new(*n).is_ok());
    let first = names.next()?;
    match names.next() {
        None => Some(first.to_owned()),
        Some(_) => None,
    }
}

/// Whether the peer of an established connection holds the certificate of exactly `node_id`:
/// what the mesh checks before believing a peer that claims to be `node_id` in SWIM. DNS name
/// matching is case-insensitive, node ids are not, so the SAN must also equal `node_id`
/// exactly.
pub fn peer_is(conn: &quinn::Connection, node_id: &str) -> bool {
    if NodeId::new(node_id).is_err() {
        return false;
    }
    let Some(chain) = peer_chain(conn) else {
        return false;
    };
    let Some(leaf) = chain
        .first()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
    else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_id) else {
        return false;
    };
    leaf.verify_is_valid_for_subject_name(&name).is_ok()
        && leaf.valid_dns_names().any(|n| n == node_id)
}

fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    // quinn's rustls session reports the peer identity as exactly this type.
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        // 30 s in milliseconds always fits a VarInt, hence no fallible conversion.
        .max_idle_timeout(Some(
            quinn::VarInt::from_u32(MAX_IDLE_TIMEOUT.as_millis() as u32).into(),
        ))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS));
    Arc::new(transport)
}

/// Verifies a node certificate against the given CAs for both uses a node makes of it.
fn verify_node_cert(
    leaf: &webpki::EndEntityCert<'_>,
    anchors: &[rustls::pki_types::TrustAnchor<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<(), webpki::Error> {
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(algs, anchors, intermediates, now, usage, None, None)?;
    }
    Ok(())
}

fn describe_webpki_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "it has expired".into(),
        webpki::Error::CertNotValidYet { .. } => {
            "it is not valid yet (is this machine's clock right?)".into()
        }
        webpki::Error::CaUsedAsEndEntity => "it is a CA certificate, not a node certificate".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "it does not allow both server and client authentication".into()
        }
        other => format!("{other:?}"),
    }
}

fn parse_cert<'a>(
    der: &'a CertificateDer<'a>,
    path: &Path,
    what: FileKind,
) -> Result<webpki::EndEntityCert<'a>, TlsError> {
    webpki::EndEntityCert::try_from(der).map_err(|e| TlsError::BadCert {
        what,
        path: path.to_owned(),
        reason: format!("{e:?}"),
    })
}

fn read_pem(path: &Path, what: FileKind) -> Result<Vec<rustls_pemfile::Item>, TlsError> {
    let file = File::open(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let items = rustls_pemfile::read_all(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            // Malformed PEM comes back as InvalidData; anything else is a read error.
            if e.kind() == io::ErrorKind::InvalidData {
                TlsError::NotPem {
                    what,
                    path: path.to_owned(),
                    detail: e.to_string(),
                }
            } else {
                TlsError::Read {
                    what,
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    if items.is_empty() {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
            detail: "no -----BEGIN ...----- block found".into(),
        });
    }
    Ok(items)
}

fn read_certs(path: &Path, what: FileKind) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = read_pem(path, what)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(der) => Some(der),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path, what: FileKind) -> Result<PrivateKeyDer<'static>, TlsError> {
    read_pem(path, what)?
        .into_iter()
        .find_map(|item| match item {
            rustls_pemfile::Item::Pkcs8Key(k) => Some(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Sec1Key(k) => Some(PrivateKeyDer::Sec1(k)),
            rustls_pemfile::Item::Pkcs1Key(k) => Some(PrivateKeyDer::Pkcs1(k)),
            _ => None,
        })
        .ok_or_else(|| TlsError::NoKey {
            what,
            path: path.to_owned(),
        })
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), TlsError> {
    let since_epoch =
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TlsError::Clock {
                reason: "it is before 1970",
            })?;
    // rcgen's date type (from the `time` crate, not a dependency of ours) is reached through
    // rcgen's own helper.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let out_of_range = TlsError::Clock {
        reason: "the validity period does not fit a certificate date",
    };
    let not_before = since_epoch
        .checked_sub(CLOCK_SKEW_ALLOWANCE)
        .unwrap_or_default()
        .try_into()
        .ok()
        .and_then(|d| epoch.checked_add(d));
    let not_after = since_epoch
        .checked_add(lifetime)
        .and_then(|d| d.try_into().ok())
        .and_then(|d| epoch.checked_add(d));
    match (not_before, not_after) {
        (Some(not_before), Some(not_after)) => {
            params.not_before = not_before;
            params.not_after = not_after;
            Ok(())
        }
        _ => Err(out_of_range),
    }
}

fn create_dir(path: &Path) -> Result<(), TlsError> {
    // 0700 for directories we create: they hold private keys. Existing ones are left alone.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| TlsError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Creates `path`, failing if it exists. The mode is given at creation, so a private key is
/// never readable by others, not even for an instant.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = fs::remove_file(path);
        return Err(write_err(source));
    }
    Ok(())
}

/// Writes `path` through a fresh temporary file renamed over it: readers see the old or the
/// new contents, never half of them, and the new file has `mode` whatever the old one had.
fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A temporary file left by a crashed run of this same process id is stale.
    let _ = fs::remove_file(&tmp);
    write_new_file(&tmp, contents, mode).map_err(|e| match e {
        TlsError::Write { source, .. } => TlsError::Write {
            path: path.to_owned(),
            source,
        },
        other => other,
    })?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        TlsError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Splits one DER element off the front of `input`: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // Multi-byte tags never occur in a Name.
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

fn decode_oid(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i + 1 == bytes.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

/// Rebuilds an rcgen `DistinguishedName` from the raw contents of a DER `Name` (as webpki's
/// `Cert::subject` gives it). Covers what rcgen can write back identically: single-valued
/// RDNs, each attribute type once, UTF8String, PrintableString or IA5String values.
fn distinguished_name_from_der(name: &[u8]) -> Result<DistinguishedName, String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;
    let malformed = || "is malformed DER".to_owned();

    let mut dn = DistinguishedName::new();
    let mut seen = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (tag, rdn, after) = der_element(rest).ok_or_else(malformed)?;
        rest = after;
        if tag != SET {
            return Err(malformed());
        }
        let (tag, attribute, others) = der_element(rdn).ok_or_else(malformed)?;
        if tag != SEQUENCE {
            return Err(malformed());
        }
        if !others.is_empty() {
            return Err("has a multi-valued RDN".into());
        }
        let (tag, oid, value) = der_element(attribute).ok_or_else(malformed)?;
        if tag != OID {
            return Err(malformed());
        }
        let (tag, value, end) = der_element(value).ok_or_else(malformed)?;
        if !end.is_empty() {
            return Err(malformed());
        }
        let ty = DnType::from_oid(&decode_oid(oid).ok_or_else(malformed)?);
        if seen.contains(&ty) {
            return Err(format!("repeats the attribute {ty:?}"));
        }
        let text = std::str::from_utf8(value).map_err(|_| malformed())?;
        let value = match tag {
            UTF8_STRING => DnValue::Utf8String(text.to_owned()),
            PRINTABLE_STRING => {
                DnValue::PrintableString(PrintableString::try_from(text).map_err(|_| malformed())?)
            }
            IA5_STRING => DnValue::Ia5String(Ia5String::try_from(text).map_err(|_| malformed())?),
            other => {
                return Err(format!(
                    "uses an unsupported string type (tag {other:#04x})"
                ))
            }
        };
        seen.push(ty.clone());
        dn.push(ty, value);
    }
    Ok(dn)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use quinn::{Connection, Endpoint};
    use tokio::time::timeout;

    /// Upper bound on any single network step; a loopback handshake takes milliseconds.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "switchyard-tls-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A CA in `<dir>/<name>-ca` and certificates for `nodes` in `<dir>/<name>-certs`.
    fn cluster(dir: &Path, name: &str, cluster: &str, nodes: &[&str]) -> Vec<NodeTls> {
        let ca_dir = dir.join(format!("{name}-ca"));
        let out = dir.join(format!("{name}-certs"));
        let ca = init_ca(&ca_dir, cluster).unwrap();
        nodes
            .iter()
            .map(|node| {
                let paths = issue_cert(&ca_dir, node, &out).unwrap();
                load(&ca.cert, &paths.cert, &paths.key).unwrap()
            })
            .collect()
    }

    fn endpoint(tls: &NodeTls) -> Endpoint {
        let mut endpoint =
            Endpoint::server(tls.server_config().unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(tls.client_config().unwrap());
        endpoint
    }

    async fn connect(from: &Endpoint, to: &Endpoint, name: &str) -> Result<Connection, String> {
        let connecting = from
            .connect(to.local_addr().unwrap(), name)
            .map_err(|e| e.to_string())?;
        timeout(DEADLINE, connecting)
            .await
            .expect("client handshake did not finish in time")
            .map_err(|e| e.to_string())
    }

    async fn accept(endpoint: &Endpoint) -> Result<Connection, String> {
        timeout(DEADLINE, async {
            let incoming = endpoint.accept().await.expect("endpoint closed");
            incoming.await
        })
        .await
        .expect("server handshake did not finish in time")
        .map_err(|e| e.to_string())
    }

    /// Connects `from` to `to` with server name `name`, accepting on `to`.
    async fn handshake(
        from: &Endpoint,
        to: &Endpoint,
        name: &str,
    ) -> (Result<Connection, String>, Result<Connection, String>) {
        tokio::join!(connect(from, to, name), accept(to))
    }

    /// Asserts that a handshake the server refused also ends the client's connection: with
    /// TLS 1.3 the client may finish its side before the server has checked its certificate,
    /// so its `connect` can succeed and then be closed by the server.
    async fn assert_client_refused(client: Result<Connection, String>) {
        if let Ok(conn) = client {
            let reason = timeout(DEADLINE, conn.closed())
                .await
                .expect("refused connection was not closed in time");
            assert!(
                !matches!(reason, quinn::ConnectionError::LocallyClosed),
                "{reason}"
            );
        }
    }

    async fn exchange(from: &Connection, to: &Connection) {
        // Datagrams are unreliable: resend until one arrives, within the deadline.
        let payload = Bytes::from_static(b"ping from the mesh");
        let received = timeout(DEADLINE, async {
            let mut resend = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = resend.tick() => from.send_datagram(payload.clone()).unwrap(),
                    got = to.read_datagram() => break got.unwrap(),
                }
            }
        })
        .await
        .expect("no datagram arrived in time");
        assert_eq!(received, payload);

        let mut send = from.open_uni().await.unwrap();
        send.write_all(b"health table delta").await.unwrap();
        send.finish().unwrap();
        let mut recv = timeout(DEADLINE, to.accept_uni())
            .await
            .expect("no stream arrived in time")
            .unwrap();
        let body = timeout(DEADLINE, recv.read_to_end(1024))
            .await
            .expect("stream did not finish in time")
            .unwrap();
        assert_eq!(body, b"health table delta");
    }

    #[tokio::test]
    async fn nodes_of_one_cluster_connect_both_ways_and_exchange_data() {
        let dir = Scratch::new("mesh");
        let nodes = cluster(dir.path(), "c", "test", &["edge-a", "edge-b"]);
        let (a, b) = (endpoint(&nodes[0]), endpoint(&nodes[1]));
        assert_eq!(nodes[0].node_id(), "edge-a");
        assert_eq!(nodes[1].node_id(), "edge-b");

        for (from, to, from_id, to_id) in
            [(&a, &b, "edge-a", "edge-b"), (&b, &a, "edge-b", "edge-a")]
        {
            let (client, server) = handshake(from, to, to_id).await;
            let (client, server) = (client.unwrap(), server.unwrap());
            println!(
                "max_datagram_size right after the handshake: client {:?}, server {:?}",
                client.max_datagram_size(),
                server.max_datagram_size()
            );
            assert!(client.max_datagram_size().is_some());

            assert!(peer_is(&client, to_id));
            assert!(!peer_is(&client, from_id));
            assert!(!peer_is(&client, "edge-c"));
            assert!(!peer_is(&client, &to_id.to_uppercase()));
            assert!(!peer_is(&client, "not a node id"));
            assert!(peer_is(&server, from_id));
            assert!(!peer_is(&server, to_id));
            assert_eq!(peer_node_id(&client).as_deref(), Some(to_id));
            assert_eq!(peer_node_id(&server).as_deref(), Some(from_id));
            assert_eq!(
                client.handshake_data().and_then(|d| d
                    .downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()
                    .and_then(|d| d.protocol)),
                Some(ALPN.to_vec())
            );

            exchange(&client, &server).await;
            exchange(&server, &client).await;
            client.close(0u32.into(), b"done");
        }

        // A second connection with the same client config may resume the TLS session; the peer
        // identity must survive that.
        let (client, server) = handshake(&a, &b, "edge-b").await;
        let (client, server) = (client.unwrap(), server.unwrap());
        assert!(peer_is(&client, "edge-b"));
        assert!(peer_is(&server, "edge-a"));
        exchange(&client, &server).await;
    }

    #[tokio::test]
    async fn a_node_of_another_cluster_is_refused_both_ways() {
        let dir = Scratch::new("foreign");
        let ours = cluster(dir.path(), "ours", "prod", &["edge-a"]);
        // Same cluster name on purpose: a CA made again elsewhere has the same subject, and
        // must still not be trusted.
        let theirs = cluster(dir.path(), "theirs", "prod", &["edge-x"]);
        let (us, them) = (endpoint(&ours[0]), endpoint(&theirs[0]));

        // We dial them: their certificate is not from our CA.
        let (client, server) = handshake(&us, &them, "edge-x").await;
        let err = client.unwrap_err();
        println!("dialing a foreign node: {err}");
        assert!(
            err.to_lowercase().contains("unknown") || err.contains("certificate"),
            "{err}"
        );
        assert!(server.is_err());

        // Not even when dialing by address, which skips only the name check.
        let (client, server) = handshake(&us, &them, MESH_SERVER_NAME).await;
        let err = client.unwrap_err();
        println!("dialing a foreign node by address: {err}");
        assert!(server.is_err());

        // They dial us.
        let (client, server) = handshake(&them, &us, "edge-a").await;
        assert!(server.is_err());
        assert_client_refused(client).await;

        // They dial us trusting our CA, so only our server's check of their client
        // certificate stands in the way.
        let ours_ca = dir.path().join("ours-ca").join(CA_CERT_FILE);
        let theirs_certs = dir.path().join("theirs-certs");
        let impostor = load(
            &ours_ca,
            &theirs_certs.join("edge-x.crt"),
            &theirs_certs.join("edge-x.key"),
        );
        assert!(matches!(impostor, Err(TlsError::NotSignedByCa { .. })));
        let mut roots = RootCertStore::empty();
        for der in read_certs(&ours_ca, FileKind::CaCert).unwrap() {
            roots.add(der).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
                theirs[0].certified.clone(),
            )));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let impostor_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        let mut impostor_endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        impostor_endpoint.set_default_client_config(impostor_config);
        let (client, server) = handshake(&impostor_endpoint, &us, "edge-a").await;
        let err = server.unwrap_err();
        println!("accepting a foreign client certificate: {err}");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        assert_client_refused(client).await;

        // And without any client certificate at all.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in read_certs(&ours_ca, FileKind::CaCert).unwrap() {
            roots.add(der).unwrap();
        }
        let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        impostor_endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(anonymous).unwrap(),
        )));
        let (client, server) = handshake(&impostor_endpoint, &us, "edge-a").await;
        assert!(server.is_err());
        assert_client_refused(client).await;
    }

    #[tokio::test]
    async fn a_server_holding_another_nodes_certificate_is_refused() {
        let dir = Scratch::new("name");
        let nodes = cluster(dir.path(), "c", "test", &["edge-a", "edge-b", "edge-c"]);
        let a = endpoint(&nodes[0]);
        let c = endpoint(&nodes[2]);
        // We believe edge-b lives at c's address, but c can only prove it is edge-c.
        let (client, server) = handshake(&a, &c, "edge-b").await;
        let err = client.unwrap_err();
        println!("dialing edge-b, reaching edge-c: {err}");
        assert!(err.contains("not valid for name"), "{err}");
        assert!(server.is_err());
        // The right name works against the same server.
        let (client, server) = handshake(&a, &c, "edge-c").await;
        assert!(peer_is(&client.unwrap(), "edge-c"));
        assert!(peer_is(&server.unwrap(), "edge-a"));
        // Dialing by address accepts whichever cluster node answers, and says which it is.
        let (client, server) = handshake(&a, &c, MESH_SERVER_NAME).await;
        let client = client.unwrap();
        assert_eq!(peer_node_id(&client).as_deref(), Some("edge-c"));
        assert!(peer_is(&client, "edge-c"));
        assert!(!peer_is(&client, "edge-b"));
        assert!(!peer_is(&client, MESH_SERVER_NAME));
        assert_eq!(peer_node_id(&server.unwrap()).as_deref(), Some("edge-a"));
        let (client, _) = handshake(&a, &c, &MESH_SERVER_NAME.to_uppercase()).await;
        assert_eq!(peer_node_id(&client.unwrap()).as_deref(), Some("edge-c"));
    }

    #[test]
    fn keys_are_private_and_the_ca_is_never_overwritten() {
        let dir = Scratch::new("files");
        let ca_dir = dir.path().join("new").join("ca");
        let ca = init_ca(&ca_dir, "prod").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);

        let original = fs::read(&ca.key).unwrap();
        let err = init_ca(&ca_dir, "prod").unwrap_err();
        assert!(matches!(err, TlsError::CaKeyExists { .. }), "{err}");
        assert!(
            err.to_string().contains(&ca.key.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&ca.key).unwrap(), original);

        let out = dir.path().join("certs");
        let node = issue_cert(&ca_dir, "edge-weu-1", &out).unwrap();
        assert_eq!(node.cert, out.join("edge-weu-1.crt"));
        assert_eq!(node.key, out.join("edge-weu-1.key"));
        assert_eq!(mode(&node.key), 0o600);
        let chain = read_certs(&node.cert, FileKind::NodeCert).unwrap();
        assert_eq!(chain.len(), 2, "node certificate then CA certificate");
        assert_eq!(chain[1], read_certs(&ca.cert, FileKind::CaCert).unwrap()[0]);

        // Renewal replaces the files, and a key left world-readable does not stay so.
        fs::set_permissions(&node.key, fs::Permissions::from_mode(0o644)).unwrap();
        let renewed = issue_cert(&ca_dir, "edge-weu-1", &out).unwrap();
        assert_eq!(mode(&renewed.key), 0o600);
        let tls = load(&ca.cert, &renewed.cert, &renewed.key).unwrap();
        assert_eq!(tls.node_id(), "edge-weu-1");
        assert!(format!("{tls:?}").contains("edge-weu-1"));
        assert!(fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")));
    }

    #[test]
    fn node_ids_must_be_dns_names() {
        for good in ["edge-weu-1", "edge_weu.1a", "Edge-WEU", "a", "1edge.eu"] {
            NodeId::new(good).unwrap();
        }
        let dir = Scratch::new("ids");
        let ca = init_ca(&dir.path().join("ca"), "prod").unwrap();
        let out = dir.path().join("certs");
        let long_label = "a".repeat(64);
        for bad in [
            "",
            "edge weu",
            "../edge",
            "edge/1",
            "10.0.0.1",
            "edge.1",
            "edge.",
            ".edge",
            "a..b",
            "-edge",
            "edge-",
            "édge",
            MESH_SERVER_NAME,
            "Mesh.Switchyard.Invalid",
            long_label.as_str(),
        ] {
            let err = issue_cert(dir.path().join("ca").as_path(), bad, &out).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidNodeId { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(!out.exists(), "nothing written for invalid ids");

        // Underscores are not strict DNS hostname characters; check webpki accepts them end to
        // end, since node ids may use them.
        let paths = issue_cert(&dir.path().join("ca"), "edge_weu.1a", &out).unwrap();
        let tls = load(&ca.cert, &paths.cert, &paths.key).unwrap();
        assert_eq!(tls.node_id(), "edge_weu.1a");
    }

    #[test]
    fn load_names_the_file_at_fault() {
        let dir = Scratch::new("load");
        let ca_dir = dir.path().join("ca");
        let ca = init_ca(&ca_dir, "prod").unwrap();
        let out = dir.path().join("certs");
        let a = issue_cert(&ca_dir, "edge-a", &out).unwrap();
        let b = issue_cert(&ca_dir, "edge-b", &out).unwrap();
        let shown = |p: &Path| p.display().to_string();

        let missing = out.join("edge-z.crt");
        let err = load(&ca.cert, &missing, &a.key).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&shown(&missing)) && msg.contains("switchyard cert issue"),
            "{msg}"
        );
        println!("{msg}");

        let missing_ca = dir.path().join("nowhere").join("ca.crt");
        let err = load(&missing_ca, &a.cert, &a.key).unwrap_err();
        assert!(err.to_string().contains(&shown(&missing_ca)), "{err}");

        let garbage = dir.path().join("garbage.crt");
        fs::write(&garbage, b"this is not a certificate\n\x00\xff\xfe").unwrap();
        let err = load(&ca.cert, &garbage, &a.key).unwrap_err();
        assert!(matches!(err, TlsError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains(&shown(&garbage)), "{err}");
        println!("{err}");
        let err = load(&garbage, &a.cert, &a.key).unwrap_err();
        assert!(matches!(err, TlsError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains(&shown(&garbage)), "{err}");

        let broken = dir.path().join("broken.crt");
        fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load(&ca.cert, &broken, &a.key).unwrap_err();
        assert!(err.to_string().contains(&shown(&broken)), "{err}");

        // Swapped arguments.
        let err = load(&ca.cert, &a.key, &a.key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&shown(&a.key)), "{err}");
        let err = load(&ca.cert, &a.cert, &a.cert).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains(&shown(&a.cert)), "{err}");

        let err = load(&ca.cert, &a.cert, &b.key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&shown(&a.cert)) && msg.contains(&shown(&b.key)),
            "{msg}"
        );

        // The CA certificate is not a node certificate.
        let err = load(&ca.cert, &ca.cert, &ca.key).unwrap_err();
        assert!(matches!(err, TlsError::CertRejected { .. }), "{err}");
        println!("{err}");

        // A certificate from another CA, with a different and with the same cluster name.
        for (tag, cluster) in [("other", "staging"), ("again", "prod")] {
            let other_ca = dir.path().join(format!("{tag}-ca"));
            init_ca(&other_ca, cluster).unwrap();
            let foreign = issue_cert(&other_ca, "edge-a", &dir.path().join(tag)).unwrap();
            let err = load(&ca.cert, &foreign.cert, &foreign.key).unwrap_err();
            assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&shown(&foreign.cert)) && msg.contains(&shown(&ca.cert)),
                "{msg}"
            );
            println!("{msg}");
        }

        // A CA directory whose key belongs to another CA.
        let mixed = dir.path().join("mixed");
        fs::create_dir_all(&mixed).unwrap();
        fs::copy(&ca.cert, mixed.join(CA_CERT_FILE)).unwrap();
        fs::copy(
            dir.path().join("other-ca").join(CA_KEY_FILE),
            mixed.join(CA_KEY_FILE),
        )
        .unwrap();
        let err = issue_cert(&mixed, "edge-c", &out).unwrap_err();
        assert!(matches!(err, TlsError::UnusableCa { .. }), "{err}");
        assert!(
            err.to_string().contains(&shown(&mixed.join(CA_KEY_FILE))),
            "{err}"
        );
        println!("{err}");

        // Issuing from a directory without a CA names the missing file.
        let err = issue_cert(&out, "edge-c", &out).unwrap_err();
        assert!(
            err.to_string().contains(&shown(&out.join(CA_CERT_FILE))),
            "{err}"
        );
    }

    #[test]
    fn a_trust_bundle_with_two_cas_accepts_both() {
        let dir = Scratch::new("bundle");
        let old = init_ca(&dir.path().join("old"), "prod").unwrap();
        let new = init_ca(&dir.path().join("new"), "prod").unwrap();
        let bundle = dir.path().join("bundle.crt");
        let mut both = fs::read_to_string(&old.cert).unwrap();
        both.push_str(&fs::read_to_string(&new.cert).unwrap());
        fs::write(&bundle, both).unwrap();
        for ca_dir in ["old", "new"] {
            let node = issue_cert(
                &dir.path().join(ca_dir),
                "edge-a",
                &dir.path().join("certs"),
            )
            .unwrap();
            load(&bundle, &node.cert, &node.key).unwrap();
        }
    }

    #[test]
    fn pem_encoding_round_trips() {
        for len in 0..10 {
            let der: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(97)).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let item = rustls_pemfile::read_one(&mut pem.as_bytes()).unwrap();
            match item {
                Some(rustls_pemfile::Item::X509Certificate(got)) => assert_eq!(got.as_ref(), der),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn distinguished_names_round_trip() {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Switchyard ✓");
        params
            .distinguished_name
            .push(DnType::CommonName, "Switchyard cluster CA prod");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let parsed = webpki::EndEntityCert::try_from(cert.der()).unwrap();
        let dn = distinguished_name_from_der(parsed.subject()).unwrap();
        assert_eq!(dn, params.distinguished_name);
    }
}
