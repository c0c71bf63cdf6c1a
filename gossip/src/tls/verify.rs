//! Certificate checks: a node certificate against the cluster CA, the server check that lets a
//! peer be dialed by address ([`MESH_SERVER_NAME`]), the revocation list at both ends of a
//! handshake, and which node the peer of a connection is.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use switchyard_geo::Region;

use super::error::{FileKind, TlsError};
use super::revoked::Revoked;
use crate::identity::{NodeId, MESH_SERVER_NAME, RESERVED_SUFFIX};

/// The middle of a region's DNS name in a node certificate: `weu.region.switchyard.invalid`.
const REGION_SUFFIX: &str = ".region";

/// The DNS name by which a certificate names the region its node may speak for.
pub(super) fn region_san(region: Region) -> String {
    format!(
        "{}{REGION_SUFFIX}{RESERVED_SUFFIX}",
        region.code().to_ascii_lowercase()
    )
}

/// The region a node certificate names (`None`: it names none, and its node may speak for
/// any). A certificate naming an unknown region, or several, is refused.
pub(crate) fn cert_region(leaf: &webpki::EndEntityCert<'_>) -> Result<Option<Region>, String> {
    let suffix = format!("{REGION_SUFFIX}{RESERVED_SUFFIX}");
    let mut found = None;
    for name in leaf.valid_dns_names() {
        let lower = name.to_ascii_lowercase();
        let Some(code) = lower.strip_suffix(&suffix) else {
            continue;
        };
        let region: Region = code
            .parse()
            .map_err(|_| format!("its DNS name {name:?} names no known region"))?;
        match found {
            Some(other) if other != region => {
                return Err(format!("it names two regions, {other} and {region}"))
            }
            _ => found = Some(region),
        }
    }
    Ok(found)
}

/// Verifies a server the way rustls' WebPKI verifier does (chain to the cluster CA, serverAuth,
/// validity, name), except that the name check is skipped when dialing [`MESH_SERVER_NAME`].
/// Written out with rustls' own verification functions rather than by filtering the errors of
/// `WebPkiServerVerifier`, so the chain is verified whatever order that verifier checks in.
/// Also refuses a server whose certificate the revocation list names.
#[derive(Debug)]
pub(super) struct ClusterServerVerifier {
    pub(super) roots: Arc<RootCertStore>,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) revoked: Arc<Revoked>,
}

/// The error a handshake fails with for a revoked certificate: TLS sends the peer the
/// `certificate_revoked` alert ([`REVOKED_ALERT`]), so both sides can tell it from other
/// refusals.
fn refuse_revoked(side: &str, why: &str) -> rustls::Error {
    tracing::warn!("mesh handshake refused: the {side}'s certificate is revoked ({why})");
    rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
}

/// The TLS alert code of `certificate_revoked` (RFC 8446); QUIC carries it as the transport
/// error code 0x100 + this.
pub const REVOKED_ALERT: u8 = 44;

/// The server's check of a client: rustls' WebPKI client verifier (chain to the cluster CA,
/// clientAuth, validity), then the revocation list.
#[derive(Debug)]
pub(super) struct RevokingClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) revoked: Arc<Revoked>,
}

impl ClientCertVerifier for RevokingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(why) = self.revoked.refuses(end_entity) {
            return Err(refuse_revoked("client", &why));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
        if let Some(why) = self.revoked.refuses(end_entity) {
            return Err(refuse_revoked("server", &why));
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
    match <[NodeId; 1]>::try_from(node_ids(&leaf)) {
        Ok([one]) => Some(one.into()),
        Err(_) => None,
    }
}

/// The node ids a certificate names: those of its DNS SANs that are valid node ids. A node
/// certificate names exactly one.
pub(super) fn node_ids(leaf: &webpki::EndEntityCert<'_>) -> Vec<NodeId> {
    leaf.valid_dns_names()
        .filter_map(|n| NodeId::new(n).ok())
        .collect()
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

/// The certificate (DER) the peer of an established connection presented.
pub fn peer_cert(conn: &quinn::Connection) -> Option<Vec<u8>> {
    peer_chain(conn)?.first().map(|c| c.as_ref().to_vec())
}

fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    // quinn's rustls session reports the peer identity as exactly this type.
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

/// Verifies a node certificate against the given CAs for both uses a node makes of it.
pub(super) fn verify_node_cert(
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

pub(super) fn describe_webpki_error(e: &webpki::Error) -> String {
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

pub(super) fn parse_cert<'a>(
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
