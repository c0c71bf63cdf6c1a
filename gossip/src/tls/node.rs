//! A node's TLS identity ([`NodeTls`]): loading and checking its certificate, key and cluster
//! CA, and the QUIC server and client configurations built from them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, SignatureScheme};
use switchyard_geo::Region;

use super::error::{FileKind, TlsError};
use super::files::{read_certs, read_key};
use super::revoked::{serial_hex, Revoked};
use super::verify::{
    cert_region, describe_webpki_error, node_ids, parse_cert, verify_node_cert,
    ClusterServerVerifier, RevokingClientVerifier,
};
use crate::identity::{NodeId, SignIdentity};

/// ALPN protocol of the mesh; bump the version when the wire protocol changes incompatibly, so
/// mixed-version nodes fail the handshake with a clear "no application protocol" error rather
/// than misparsing each other.
/// Version 2: SWIM identities and health-row batches carry their writer's signature.
/// Version 3: rows carry their writer's verdict; peers ask each other to probe an origin.
/// Version 4: batches carry their writer's signed advert, for the mesh's DNS.
pub const ALPN: &[u8] = b"switchyard-mesh/4";

/// QUIC keep-alive interval: well under [`MAX_IDLE_TIMEOUT`] so an idle but healthy connection
/// between two nodes never times out, and short enough to keep NAT/conntrack entries alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A connection that has heard nothing from its peer for this long is dead. SWIM detects
/// failures on its own (faster); this only bounds how long a dead connection lingers.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A node's TLS identity, loaded and verified: its certificate chain and key, the cluster
/// CA(s) it trusts and the certificates it refuses (the revocation list). Cheap to clone. A
/// reload makes a new one; the mesh takes it with `Mesh::reload_tls`.
#[derive(Clone)]
pub struct NodeTls {
    node_id: NodeId,
    region: Option<Region>,
    signer: Arc<CertSigner>,
    pub(super) certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    revoked: Arc<Revoked>,
}

impl fmt::Debug for NodeTls {
    // By hand, so the key never ends up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("chain_len", &self.certified.cert.len())
            .field("trusted_cas", &self.roots.len())
            .field("revoked", &self.revoked.len())
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
/// Nothing is revoked; see [`load_with`].
pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<NodeTls, TlsError> {
    load_inner(ca_cert, cert, key, Revoked::none())
}

/// As [`load`], and with `revoked` (a revocation list, see [`Revoked`]) the certificates it
/// lists are refused: peers at the handshake and wherever their claims arrive from, and this
/// node's own certificate at once ([`TlsError::OwnCertRevoked`]).
pub fn load_with(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
    revoked: Option<&Path>,
) -> Result<NodeTls, TlsError> {
    let list = match revoked {
        Some(path) => Revoked::load(path)?,
        None => Revoked::none(),
    };
    let tls = load_inner(ca_cert, cert, key, list)?;
    if let Some(why) = tls.own_revocation() {
        return Err(TlsError::OwnCertRevoked {
            cert: cert.to_owned(),
            why,
        });
    }
    Ok(tls)
}

fn load_inner(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
    revoked: Revoked,
) -> Result<NodeTls, TlsError> {
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

    let node_id = match <[NodeId; 1]>::try_from(node_ids(&leaf)) {
        Ok([one]) => one,
        Err(none) if none.is_empty() => {
            return Err(TlsError::NoNodeId {
                cert: cert.to_owned(),
            })
        }
        Err(several) => {
            return Err(TlsError::SeveralNodeIds {
                cert: cert.to_owned(),
                names: several
                    .iter()
                    .map(NodeId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };

    let region = cert_region(&leaf).map_err(|reason| TlsError::BadCert {
        what: FileKind::NodeCert,
        path: cert.to_owned(),
        reason,
    })?;
    let signer = certified
        .key
        .choose_scheme(SIGNATURE_SCHEMES)
        .ok_or_else(|| TlsError::BadKey {
            what: FileKind::NodeKey,
            path: key.to_owned(),
            reason: "its algorithm cannot sign mesh messages (use ECDSA P-256, as `switchyard \
                     cert issue` does)"
                .into(),
        })?;

    Ok(NodeTls {
        node_id,
        region,
        signer: Arc::new(CertSigner(signer)),
        certified: Arc::new(certified),
        roots: Arc::new(roots),
        provider,
        revoked: Arc::new(revoked),
    })
}

/// The schemes a node key may sign mesh messages with, and peers verify them with.
const SIGNATURE_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
];

/// Signs with the node's certificate key: what a node claims about itself in the mesh.
#[derive(Debug)]
pub struct CertSigner(Box<dyn rustls::sign::Signer>);

impl CertSigner {
    /// A signature over `message`; empty if the key failed to sign (peers then refuse it).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).unwrap_or_else(|e| {
            tracing::error!("the node key failed to sign a mesh message: {e}");
            Vec::new()
        })
    }
}

impl SignIdentity for CertSigner {
    fn sign_claim(&self, claim: &[u8]) -> Vec<u8> {
        self.sign(claim)
    }
}

/// A peer's certificate, checked against the cluster CA: who it is and what it may claim.
#[derive(Debug, Clone)]
pub struct PeerCert {
    pub node_id: String,
    /// The region it may speak for; `None`: any (a certificate issued without `--region`).
    pub region: Option<Region>,
    der: Arc<[u8]>,
}

impl PeerCert {
    /// The certificate itself (DER), to hand on to peers that lack it.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether `sig` is this certificate's key's signature over `message`.
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let der = CertificateDer::from(&self.der[..]);
        let Ok(leaf) = webpki::EndEntityCert::try_from(&der) else {
            return false;
        };
        [
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
            webpki::ring::ED25519,
        ]
        .into_iter()
        .any(|alg| leaf.verify_signature(alg, message, sig).is_ok())
    }
}

impl NodeTls {
    /// When this node's certificate expires; None if its date cannot be read.
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let leaf = self.certified.cert.first()?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    /// The node id this identity proves: the DNS SAN of the node's certificate.
    pub fn node_id(&self) -> &str {
        self.node_id.as_str()
    }

    /// This node's certificate (DER): what peers see in the handshake.
    pub fn cert_der(&self) -> &[u8] {
        self.certified.cert.first().map_or(&[], |c| c.as_ref())
    }

    /// The serial number of this node's certificate, in hex as the revocation list takes it.
    pub fn serial(&self) -> Option<String> {
        serial_hex(self.cert_der())
    }

    /// The certificates this node refuses.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// Why this node's own certificate is revoked, if the list names it.
    pub fn own_revocation(&self) -> Option<String> {
        self.revoked.refuses(self.cert_der())
    }

    /// The region the certificate lets this node speak for (`None`: any).
    pub fn region(&self) -> Option<Region> {
        self.region
    }

    /// Signs with this node's key.
    pub fn signer(&self) -> Arc<CertSigner> {
        self.signer.clone()
    }

    /// This node's own certificate, as peers would check it.
    pub fn own_cert(&self) -> Option<PeerCert> {
        let der = self.certified.cert.first()?;
        self.check_peer_cert(der).ok()
    }

    /// Checks a peer's certificate (DER) against the cluster CA as a handshake would, and
    /// reads which node it names and the region it may speak for. The error says why not.
    pub fn check_peer_cert(&self, der: &[u8]) -> Result<PeerCert, String> {
        let cert = CertificateDer::from(der);
        let leaf = webpki::EndEntityCert::try_from(&cert).map_err(|e| format!("{e:?}"))?;
        verify_node_cert(&leaf, &self.roots.roots, &[]).map_err(|e| describe_webpki_error(&e))?;
        if let Some(why) = self.revoked.refuses(der) {
            return Err(format!("it is revoked: {why}"));
        }
        let node_id = match <[NodeId; 1]>::try_from(node_ids(&leaf)) {
            Ok([one]) => one,
            Err(_) => return Err("it does not name exactly one node".into()),
        };
        let region = cert_region(&leaf)?;
        Ok(PeerCert {
            node_id: node_id.into(),
            region,
            der: der.into(),
        })
    }

    /// QUIC server configuration: presents the node certificate and requires every client to
    /// present a certificate chained to the cluster CA (and nothing else: no public roots)
    /// that the revocation list does not name.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let fail = |reason: String| TlsError::Config {
            side: "server",
            node: self.node_id.to_string(),
            reason,
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| fail(e.to_string()))?;
        let verifier = Arc::new(RevokingClientVerifier {
            inner: verifier,
            revoked: self.revoked.clone(),
        });
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

    /// QUIC client configuration: trusts only the cluster CA, refuses a server whose
    /// certificate the revocation list names, and authenticates with the node certificate. Dial a peer with its node id as the server name, or with
    /// [`MESH_SERVER_NAME`](crate::identity::MESH_SERVER_NAME) when only its address is known. Build it once and reuse it (e.g.
    /// `Endpoint::set_default_client_config`): it carries the session cache that makes
    /// reconnections cheaper.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let fail = |reason: String| TlsError::Config {
            side: "client",
            node: self.node_id.to_string(),
            reason,
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier {
                roots: self.roots.clone(),
                provider: self.provider.clone(),
                revoked: self.revoked.clone(),
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

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        // 30 s in milliseconds always fits a VarInt, hence no fallible conversion.
        .max_idle_timeout(Some(
            quinn::VarInt::from_u32(MAX_IDLE_TIMEOUT.as_millis() as u32).into(),
        ));
    // What a peer may make this node buffer: the transport's bounds.
    crate::transport::limit(&mut transport);
    Arc::new(transport)
}
