//! The certificates and handshakes end to end: issuing, loading, and who may connect to whom.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, DnValue, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::SingleCertAndKey;
use rustls::RootCertStore;
use tokio::time::timeout;

use super::files::{pem_encode, read_certs};
use super::*;
use crate::identity::NodeId;

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

    for (from, to, from_id, to_id) in [(&a, &b, "edge-a", "edge-b"), (&b, &a, "edge-b", "edge-a")] {
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
fn a_key_every_user_can_read_is_refused() {
    let dir = Scratch::new("key-mode");
    let ca_dir = dir.path().join("ca");
    let ca = init_ca(&ca_dir, "prod").unwrap();
    let a = issue_cert(&ca_dir, "edge-a", &dir.path().join("certs")).unwrap();
    let set = |mode| fs::set_permissions(&a.key, fs::Permissions::from_mode(mode)).unwrap();
    set(0o644);
    let err = load(&ca.cert, &a.cert, &a.key).unwrap_err();
    assert!(
        matches!(err, TlsError::KeyExposed { mode: 0o644, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&a.key.display().to_string()) && msg.contains("chmod 600"),
        "{msg}"
    );
    // The CA key too: issuing from a world-readable CA key is refused.
    fs::set_permissions(&ca.key, fs::Permissions::from_mode(0o604)).unwrap();
    let err = issue_cert(&ca_dir, "edge-b", &dir.path().join("certs")).unwrap_err();
    assert!(matches!(err, TlsError::KeyExposed { .. }), "{err}");
    // Readable by the owner's group only (a service user reading it through a group): fine.
    set(0o640);
    load(&ca.cert, &a.cert, &a.key).unwrap();
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
    // A CA name richer than init_ca's (several attributes, string types, non-ASCII) must come
    // out byte for byte as the issuer of what it signs, or no node would find its CA.
    let dir = Scratch::new("dn");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CountryName,
        DnValue::PrintableString("NL".try_into().unwrap()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Switchyard ✓");
    params
        .distinguished_name
        .push(DnType::CommonName, "Switchyard cluster CA prod");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca_dir = dir.path().join("ca");
    fs::create_dir_all(&ca_dir).unwrap();
    fs::write(ca_dir.join(CA_CERT_FILE), cert.pem()).unwrap();
    fs::write(ca_dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    fs::set_permissions(ca_dir.join(CA_KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();

    let node = issue_cert(&ca_dir, "edge-a", &dir.path().join("certs")).unwrap();
    let chain = read_certs(&node.cert, FileKind::NodeCert).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    let ca = webpki::EndEntityCert::try_from(cert.der()).unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    let tls = load(&ca_dir.join(CA_CERT_FILE), &node.cert, &node.key).unwrap();
    assert_eq!(tls.node_id(), "edge-a");
}

#[test]
fn a_certificate_can_name_the_region_its_node_speaks_for() {
    use switchyard_geo::Region;
    let dir = Scratch::new("region");
    let ca_dir = dir.path().join("ca");
    let ca = init_ca(&ca_dir, "prod").unwrap();
    let out = dir.path().join("certs");
    let weu = issue_cert_in(&ca_dir, "edge-weu-1", Some(Region::Weu), &out).unwrap();
    let weu = load(&ca.cert, &weu.cert, &weu.key).unwrap();
    // The region's DNS name is not taken for a second node id.
    assert_eq!(weu.node_id(), "edge-weu-1");
    assert_eq!(weu.region(), Some(Region::Weu));
    let any = issue_cert(&ca_dir, "edge-any", &out).unwrap();
    let any = load(&ca.cert, &any.cert, &any.key).unwrap();
    assert_eq!(any.region(), None);

    // What a peer reads of it, and a signature made with its key.
    let der = weu.certified.cert[0].as_ref().to_vec();
    let seen = any.check_peer_cert(&der).unwrap();
    assert_eq!(
        (seen.node_id.as_str(), seen.region),
        ("edge-weu-1", Some(Region::Weu))
    );
    let sig = weu.signer().sign(b"claim");
    assert!(seen.verifies(b"claim", &sig));
    assert!(!seen.verifies(b"another claim", &sig));
    let other = any.signer().sign(b"claim");
    assert!(!seen.verifies(b"claim", &other));
}

#[test]
fn a_certificate_of_another_ca_is_not_learned() {
    let dir = Scratch::new("learn");
    let ours = cluster(dir.path(), "ours", "prod", &["edge-a"]);
    let theirs = cluster(dir.path(), "theirs", "prod", &["edge-x"]);
    let der = theirs[0].certified.cert[0].as_ref().to_vec();
    assert!(ours[0].check_peer_cert(&der).is_err());
    assert!(ours[0].check_peer_cert(b"garbage").is_err());
}
