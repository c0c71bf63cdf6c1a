//! The cluster CA: creating it ([`init_ca`]) and issuing node certificates from it
//! ([`issue_cert`]), with rcgen.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};

use switchyard_geo::Region;

use super::error::{FileKind, TlsError};
use super::files::{create_dir, pem_encode, read_certs, read_key, write_new_file, write_replacing};
use super::verify::{parse_cert, region_san, verify_node_cert};
use crate::identity::{InvalidNodeId, NodeId};

/// Name of the CA certificate file in a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// Name of the CA key file in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Backdating of `notBefore`, so a certificate issued on one machine is already valid on a
/// node whose clock is a little behind.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const NODE_CERT_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);

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
/// The certificate names no region: the node may speak for any (see [`issue_cert_in`]).
pub fn issue_cert(ca_dir: &Path, node_id: &str, out_dir: &Path) -> Result<CertPaths, TlsError> {
    issue_cert_in(ca_dir, node_id, None, out_dir)
}

/// As [`issue_cert`], and with `region` the certificate also names the one region the node
/// may speak for, as a second DNS name `<region>.region.switchyard.invalid` (lower case). A
/// DNS name survives every check a handshake makes and needs no custom extension; the
/// `.switchyard.invalid` suffix can never be a node id. A node with such a certificate must
/// be configured in that region, and peers drop its claims about any other.
pub fn issue_cert_in(
    ca_dir: &Path,
    node_id: &str,
    region: Option<Region>,
    out_dir: &Path,
) -> Result<CertPaths, TlsError> {
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

    // rcgen writes the issuer name back from its parse of the CA subject; it must come out
    // byte for byte the same (checked below), or path building would not find the CA.
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key)
        .map_err(|e| unusable(format!("it cannot be read as an issuer ({e})")))?;

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
    if let Some(region) = region {
        let name = Ia5String::try_from(region_san(region)).map_err(|_| InvalidNodeId {
            id: node_id.to_owned(),
            reason: "its region name is not ASCII",
        })?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
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
    tracing::info!(node = node_id, region = ?region, cert = %paths.cert.display(), "issued a node certificate");
    Ok(paths)
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
