//! Security of the mesh, tested from outside the crate: who may join, who may speak for whom,
//! what hostile bytes do, and what a peer's anti-entropy summary gets back. Real meshes on
//! loopback, plus hand-built QUIC peers that hold a valid cluster certificate and send
//! whatever they like.
//!
//! Every wait polls a condition against a deadline; every "never happens" is asserted only
//! after a positive signal (a counter went up) that the attempt arrived and was handled.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use foca::Codec as _;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_geo::Region;

use bytes::BufMut;
use switchyard_gossip::codec::{self, FocaCodec, FORMAT_VERSION};
use switchyard_gossip::keys::Keys;
use switchyard_gossip::table::{Batch, Table};
use switchyard_gossip::tls::{self, NodeTls};
use switchyard_gossip::wire::{Envelope, Msg};
use switchyard_gossip::{
    LocalRow, MemberState, Mesh, MeshConfig, MeshMetrics, NodeIdentity, ProbeOutcome, Profile,
    Timings, MAX_SWIM_PACKET,
};

const CLUSTER: &str = "test";

/// Upper bound on any wait; loopback convergence takes well under a second, but builds and
/// other tests share two cores.
const DEADLINE: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(20);

/// How many polls between resends of an unreliable datagram (about 200 ms).
const RESEND_EVERY: u32 = 10;

fn timings() -> Timings {
    Timings {
        probe_period: Duration::from_millis(200),
        probe_rtt: Duration::from_millis(100),
        suspect_to_down_after: Duration::from_secs(1),
        announce_period: Duration::from_millis(300),
        anti_entropy_period: Duration::from_millis(300),
        rtt_batch: Duration::from_millis(100),
    }
}

// ---------------------------------------------------------------------------------------------
// Scaffolding: scratch directories, CAs, nodes, metrics, waiting.

/// A unique scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-gossip-security-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    /// A new CA for `cluster` in `<scratch>/<name>-ca`, issuing into `<scratch>/<name>-certs`.
    fn ca(&self, name: &str, cluster: &str) -> Ca {
        let dir = self.0.join(format!("{name}-ca"));
        let paths = tls::init_ca(&dir, cluster).unwrap();
        Ca {
            dir,
            cert: paths.cert,
            out: self.0.join(format!("{name}-certs")),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Ca {
    dir: PathBuf,
    cert: PathBuf,
    out: PathBuf,
}

impl Ca {
    /// A certificate for `node_id` from this CA, loaded as the node would.
    fn node(&self, node_id: &str) -> NodeTls {
        let paths = tls::issue_cert(&self.dir, node_id, &self.out).unwrap();
        tls::load(&self.cert, &paths.cert, &paths.key).unwrap()
    }

    /// A certificate for `node_id` that names `region`.
    fn node_in(&self, node_id: &str, region: Region) -> NodeTls {
        let paths = tls::issue_cert_in(&self.dir, node_id, Some(region), &self.out).unwrap();
        tls::load(&self.cert, &paths.cert, &paths.key).unwrap()
    }

    /// A certificate from this CA, loaded trusting `trusted_ca` instead (a node of another
    /// cluster CA that was handed our CA certificate is still refused: see the wrong_ca test).
    fn node_trusting(&self, node_id: &str, trusted_ca: &Path) -> NodeTls {
        let paths = tls::issue_cert(&self.dir, node_id, &self.out).unwrap();
        tls::load(trusted_ca, &paths.cert, &paths.key).unwrap()
    }
}

fn config(node_id: &str, seeds: Vec<SocketAddr>) -> MeshConfig {
    MeshConfig {
        node_id: node_id.to_owned(),
        region: Region::Weu,
        cluster: CLUSTER.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        seeds,
        profile: Profile::Lan,
        expected_size: 4,
        timings: timings(),
        fingerprint: 0,
    }
}

/// A running mesh member and the registry its metrics are in.
struct Node {
    mesh: Mesh,
    registry: Registry,
}

impl Node {
    fn start(tls: &NodeTls, seeds: Vec<SocketAddr>) -> Node {
        let metrics = MeshMetrics::default();
        let mut registry = Registry::with_prefix("switchyard");
        metrics.register(&mut registry);
        let mesh = Mesh::start(config(tls.node_id(), seeds), tls, metrics)
            .unwrap_or_else(|e| panic!("mesh of {} did not start: {e}", tls.node_id()));
        Node { mesh, registry }
    }

    fn id(&self) -> &str {
        &self.mesh.identity().id
    }

    fn addr(&self) -> SocketAddr {
        self.mesh.local_addr()
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// The value of one series (name with its labels, as in the exposition), 0 if absent.
    fn metric(&self, series: &str) -> u64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|line| {
                let value = line.strip_prefix(series)?.strip_prefix(' ')?;
                Some(value.trim().parse::<f64>().unwrap_or_else(|e| {
                    panic!("series {series}: value {value:?} is not a number: {e}")
                }) as u64)
            })
            .unwrap_or(0)
    }

    fn refused(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "switchyard_mesh_refused_total{{reason=\"{reason}\"}}"
        ))
    }

    fn decode_errors(&self) -> u64 {
        self.metric("switchyard_mesh_decode_errors_total")
    }

    /// Member ids with their state, this node included.
    fn members(&self) -> Vec<(String, MemberState)> {
        self.mesh
            .state()
            .borrow()
            .members
            .iter()
            .map(|m| (m.id.clone(), m.state))
            .collect()
    }

    fn knows(&self, id: &str) -> bool {
        self.members().iter().any(|(m, _)| m == id)
    }

    fn sees_alive(&self, id: &str) -> bool {
        self.members()
            .iter()
            .any(|(m, s)| m == id && *s == MemberState::Alive)
    }

    fn writers(&self) -> Vec<String> {
        self.mesh
            .state()
            .borrow()
            .writers
            .iter()
            .map(|w| w.node.clone())
            .collect()
    }

    fn has_writer(&self, node: &str) -> bool {
        self.writers().iter().any(|w| w == node)
    }

    /// The health this node holds of `writer`'s first row.
    fn health_of(&self, writer: &str) -> Option<bool> {
        let state = self.mesh.state();
        let state = state.borrow();
        let w = state.writers.iter().find(|w| w.node == writer)?;
        w.rows.first().map(|(row, _)| row.healthy)
    }

    /// Sets this node's one health row.
    fn set_health(&self, healthy: bool) {
        self.mesh.set_local(vec![LocalRow {
            pool: "web".into(),
            origin: "10.0.0.1:443".into(),
            healthy,
            rtt: Some(Duration::from_millis(1)),
            last_change_ms: now_ms(),
            reason: (!healthy).then(|| "connect refused".into()),
            verdict: (!healthy).then_some(switchyard_gossip::Verdict::Origin),
        }]);
    }

    /// What to print when a wait or an assertion fails.
    fn describe(&self) -> String {
        let mut out = format!(
            "{} at {}: members {:?}, writers {:?}\n",
            self.id(),
            self.addr(),
            self.members(),
            self.writers()
        );
        for line in self.metrics_text().lines() {
            if !line.starts_with('#')
                && (line.contains("refused") || line.contains("decode_errors"))
            {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// Waits until `cond` holds, polling; panics after [`DEADLINE`] with `what` and `state()`.
async fn wait_until(what: &str, cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    wait_until_resending(what, || {}, cond, state).await
}

/// As [`wait_until`], calling `resend` first and then every [`RESEND_EVERY`] polls: for
/// conditions that hang on a datagram, which may be lost.
async fn wait_until_resending(
    what: &str,
    mut resend: impl FnMut(),
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut polls = 0u32;
    loop {
        if polls % RESEND_EVERY == 0 {
            resend();
        }
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}\n{}",
                state()
            );
        }
        polls += 1;
        tokio::time::sleep(POLL).await;
    }
}

async fn converge(a: &Node, b: &Node) {
    wait_until(
        &format!("{} and {} to see each other alive", a.id(), b.id()),
        || a.sees_alive(b.id()) && b.sees_alive(a.id()),
        || format!("{}{}", a.describe(), b.describe()),
    )
    .await;
}

/// A hand-built mesh peer: a QUIC endpoint with a valid node certificate of the cluster,
/// connected to a target node, that sends whatever the test tells it to.
struct RawPeer {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl RawPeer {
    async fn connect(tls: &NodeTls, target: SocketAddr) -> RawPeer {
        let mut endpoint =
            quinn::Endpoint::server(tls.server_config().unwrap(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        endpoint.set_default_client_config(tls.client_config().unwrap());
        let connecting = endpoint.connect(target, tls::MESH_SERVER_NAME).unwrap();
        let conn = tokio::time::timeout(DEADLINE, connecting)
            .await
            .expect("handshake with the target did not finish in time")
            .expect("a certificate of the cluster CA must be accepted");
        RawPeer { endpoint, conn }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// Sends a datagram, dropping it (as SWIM would) if it cannot go out.
    fn datagram(&self, data: &[u8]) {
        let _ = self.conn.send_datagram(Bytes::copy_from_slice(data));
    }

    /// Sends one replication message on its own unidirectional stream.
    async fn stream(&self, data: &[u8]) {
        let mut s = self.conn.open_uni().await.unwrap();
        s.write_all(data).await.unwrap();
        s.finish().unwrap();
    }
}

/// An identity signed with `key`: a peer can only ever sign with its own key.
fn identity(key: &NodeTls, id: &str, cluster: &str, addr: SocketAddr) -> NodeIdentity {
    NodeIdentity::unsigned(id, Region::Weu, addr, cluster, 1).signed_by(key.signer())
}

/// This machine's wall clock in unix ms, as epochs and generations are.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A SWIM packet header from `src` to `dst`, encoded as the mesh's foca codec does.
fn swim(src: NodeIdentity, dst: &NodeIdentity, message: foca::Message<NodeIdentity>) -> Vec<u8> {
    let header = foca::Header {
        src,
        src_incarnation: 0,
        dst: dst.clone(),
        message,
    };
    let mut buf = Vec::new();
    FocaCodec.encode_header(&header, &mut buf).unwrap();
    buf
}

/// A SWIM packet from `src` to `dst` piggybacking `updates`, as foca lays one out.
fn swim_with(
    src: NodeIdentity,
    dst: &NodeIdentity,
    message: foca::Message<NodeIdentity>,
    updates: &[foca::Member<NodeIdentity>],
) -> Vec<u8> {
    let mut buf = swim(src, dst, message);
    buf.put_u16(updates.len() as u16);
    for m in updates {
        FocaCodec.encode_member(m, &mut buf).unwrap();
    }
    buf
}

/// A SWIM announce from `src` to `dst`: a header alone.
fn announce(src: NodeIdentity, dst: &NodeIdentity) -> Vec<u8> {
    swim(src, dst, foca::Message::Announce)
}

/// A batch of `node`'s rows with one origin, sealed with `key` (a real seal only when `key`
/// is `node`'s own).
fn sealed_batch(key: &NodeTls, node: &str, region: Region, epoch: u64, healthy: bool) -> Batch {
    let mut t = Table::new(node.to_owned(), region, epoch, 0).with_seal(Arc::new(Keys::new(key)));
    let obs = switchyard_gossip::table::Observation {
        healthy,
        rtt_us: Some(1000),
        last_change_ms: 1,
        reason: None,
        verdict: None,
    };
    t.set_local("web", "10.0.0.1:443", obs, tokio::time::Instant::now());
    t.local_since(0)
}

/// A batch of `node`'s rows with one healthy origin, sealed with `key`.
fn batch(key: &NodeTls, node: &str) -> Batch {
    sealed_batch(key, node, Region::Weu, 1, true)
}

fn envelope(cluster: &str, from: &str, msg: Msg) -> Vec<u8> {
    codec::encode(&Envelope {
        cluster: cluster.to_owned(),
        from: from.to_owned(),
        msg,
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Baseline.

#[tokio::test]
async fn two_nodes_of_the_same_ca_converge() {
    let scratch = Scratch::new("baseline");
    let ca = scratch.ca("c", CLUSTER);
    let a = Node::start(&ca.node("edge-a"), vec![]);
    let b = Node::start(&ca.node("edge-b"), vec![a.addr()]);
    converge(&a, &b).await;
    for n in [&a, &b] {
        for reason in ["wrong_ca", "wrong_id", "wrong_cluster"] {
            assert_eq!(n.refused(reason), 0, "{reason}\n{}", n.describe());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Another CA, same cluster name.

#[tokio::test]
async fn a_node_of_another_ca_never_joins() {
    let scratch = Scratch::new("wrong-ca");
    let ours = scratch.ca("ours", CLUSTER);
    // Same cluster name, different CA: only the CA tells them apart.
    let theirs = scratch.ca("theirs", CLUSTER);
    let a = Node::start(&ours.node("edge-a"), vec![]);
    let intruder = Node::start(&theirs.node("edge-x"), vec![a.addr()]);

    // The intruder announces to its seed every 300 ms; each attempt fails the handshake, and
    // the housekeeping tick exports the count.
    wait_until(
        "edge-a to count a handshake refused for the wrong CA",
        || a.refused("wrong_ca") >= 1,
        || format!("{}{}", a.describe(), intruder.describe()),
    )
    .await;
    assert!(
        !a.knows("edge-x"),
        "a node of another CA became a member\n{}",
        a.describe()
    );
    assert!(
        !intruder.knows("edge-a"),
        "a node of another CA sees a member of ours\n{}",
        intruder.describe()
    );
    assert_eq!(a.members().len(), 1, "{}", a.describe());
    assert_eq!(intruder.members().len(), 1, "{}", intruder.describe());
}

#[tokio::test]
async fn a_node_of_another_ca_holding_our_ca_certificate_never_joins() {
    // The intruder trusts our CA (say it found ca.crt, which is not secret), so its client
    // accepts our server: only our check of its client certificate stands in the way.
    let scratch = Scratch::new("wrong-ca-trusting");
    let ours = scratch.ca("ours", CLUSTER);
    let theirs = scratch.ca("theirs", CLUSTER);
    let a = Node::start(&ours.node("edge-a"), vec![]);
    // `load` refuses a certificate that does not chain to the CA it trusts, so the intruder
    // trusts both CAs (a bundle, as during a CA rotation).
    let bundle = scratch.0.join("bundle.crt");
    let mut both = fs::read_to_string(&ours.cert).unwrap();
    both.push_str(&fs::read_to_string(&theirs.cert).unwrap());
    fs::write(&bundle, both).unwrap();
    let intruder = Node::start(&theirs.node_trusting("edge-x", &bundle), vec![a.addr()]);

    wait_until(
        "edge-a to count a client certificate refused for the wrong CA",
        || a.refused("wrong_ca") >= 1,
        || format!("{}{}", a.describe(), intruder.describe()),
    )
    .await;
    assert!(!a.knows("edge-x"), "{}", a.describe());
    assert!(!intruder.knows("edge-a"), "{}", intruder.describe());
}

#[tokio::test]
async fn dialing_a_node_of_another_ca_counts_wrong_ca() {
    // The other direction: our node has a seed that turns out to belong to another CA (a
    // misconfigured seed list). Our client refuses the server's certificate; that handshake
    // failure is ours as much as theirs, and should show in our refused{reason="wrong_ca"}.
    let scratch = Scratch::new("wrong-ca-dialing");
    let ours = scratch.ca("ours", CLUSTER);
    let theirs = scratch.ca("theirs", CLUSTER);
    let foreign = Node::start(&theirs.node("edge-x"), vec![]);
    let a = Node::start(&ours.node("edge-a"), vec![foreign.addr()]);

    // Positive signal that edge-a dialed and the handshake failed: the far side counted it.
    wait_until(
        "the foreign node to count edge-a's handshake as wrong_ca",
        || foreign.refused("wrong_ca") >= 1,
        || format!("{}{}", a.describe(), foreign.describe()),
    )
    .await;
    assert!(!a.knows("edge-x"), "{}", a.describe());
    assert!(!foreign.knows("edge-a"), "{}", foreign.describe());

    wait_until(
        "edge-a to count its refused handshake with a server of another CA as wrong_ca",
        || a.refused("wrong_ca") >= 1,
        || format!("{}{}", a.describe(), foreign.describe()),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Impersonation at the receiver.

#[tokio::test]
async fn swim_packets_claiming_another_id_are_refused() {
    let scratch = Scratch::new("wrong-id-swim");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    let dst = target.mesh.identity().clone();

    let forged = announce(identity(&evil_key, "victim", CLUSTER, evil.addr()), &dst);
    wait_until_resending(
        "the target to refuse a SWIM packet claiming to be victim",
        || evil.datagram(&forged),
        || target.refused("wrong_id") >= 1,
        || target.describe(),
    )
    .await;
    assert!(
        !target.knows("victim"),
        "a peer with evil's certificate made victim a member\n{}",
        target.describe()
    );

    // Control: the same packet under the sender's own id is taken, so the refusal above was
    // the id check and not a malformed packet.
    let honest = announce(identity(&evil_key, "evil", CLUSTER, evil.addr()), &dst);
    wait_until_resending(
        "the target to take the same announce under the sender's own id",
        || evil.datagram(&honest),
        || target.knows("evil"),
        || target.describe(),
    )
    .await;
    assert!(!target.knows("victim"), "{}", target.describe());
    assert_eq!(target.refused("wrong_cluster"), 0, "{}", target.describe());
}

#[tokio::test]
async fn replication_claiming_another_writer_is_refused() {
    let scratch = Scratch::new("wrong-id-repl");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;

    // Claiming to be victim in the envelope.
    evil.stream(&envelope(
        CLUSTER,
        "victim",
        Msg::Push(batch(&evil_key, "victim")),
    ))
    .await;
    wait_until(
        "the target to refuse an envelope from victim on evil's connection",
        || target.refused("wrong_id") >= 1,
        || target.describe(),
    )
    .await;
    assert!(
        !target.has_writer("victim"),
        "a peer with evil's certificate wrote victim's rows\n{}",
        target.describe()
    );

    // Honest envelope, but pushing someone else's rows as its own.
    evil.stream(&envelope(
        CLUSTER,
        "evil",
        Msg::Push(batch(&evil_key, "victim")),
    ))
    .await;
    wait_until(
        "the target to refuse evil pushing victim's rows",
        || target.refused("wrong_id") >= 2,
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("victim"), "{}", target.describe());

    // Control: evil's own rows under its own name are taken.
    evil.stream(&envelope(
        CLUSTER,
        "evil",
        Msg::Push(batch(&evil_key, "evil")),
    ))
    .await;
    wait_until(
        "the target to take evil's own rows",
        || target.has_writer("evil"),
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("victim"), "{}", target.describe());
    assert_eq!(target.refused("wrong_id"), 2, "{}", target.describe());
}

// ---------------------------------------------------------------------------------------------
// Probe asks: "probe this origin now", asked of peers before blaming an origin.

#[tokio::test]
async fn a_member_asked_to_probe_answers_and_the_asker_hears_each_peer() {
    let scratch = Scratch::new("asks");
    let ca = scratch.ca("c", CLUSTER);
    let a = Node::start(&ca.node("edge-a"), vec![]);
    let b = Node::start(&ca.node("edge-b"), vec![a.addr()]);
    converge(&a, &b).await;
    let mut asks = b.mesh.probe_asks().expect("asks are taken once");
    assert!(b.mesh.probe_asks().is_none());
    tokio::spawn(async move {
        while let Some(ask) = asks.recv().await {
            let outcome = if ask.pool == "web" && ask.origin == "o1" && ask.from == "edge-a" {
                ProbeOutcome::Up { rtt_us: 1500 }
            } else {
                ProbeOutcome::Unknown {
                    why: "no such origin".into(),
                }
            };
            ask.answer(outcome);
        }
    });
    let peers = ["edge-b".to_string(), "nobody".to_string()];
    let answers = a
        .mesh
        .ask_probes(&peers, "web", "o1", Duration::from_secs(10))
        .await;
    assert_eq!(
        answers,
        vec![
            (
                "edge-b".to_string(),
                Some(ProbeOutcome::Up { rtt_us: 1500 })
            ),
            ("nobody".to_string(), None),
        ]
    );
    let answers = a
        .mesh
        .ask_probes(&peers[..1], "web", "o9", Duration::from_secs(10))
        .await;
    assert!(
        matches!(answers[0].1, Some(ProbeOutcome::Unknown { .. })),
        "{answers:?}"
    );
}

#[tokio::test]
async fn probe_asks_of_non_members_are_refused_and_a_members_are_bounded() {
    let scratch = Scratch::new("asks-bound");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    // Taken, and never answered: every ask admitted stays open.
    let mut asks = target.mesh.probe_asks().unwrap();
    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    let ask = |id| {
        envelope(
            CLUSTER,
            "evil",
            Msg::ProbeAsk {
                id,
                pool: "web".into(),
                origin: "o1".into(),
            },
        )
    };

    // A holder of a valid certificate that is not a member may not ask.
    evil.stream(&ask(1)).await;
    wait_until(
        "the target to refuse an ask of a non-member",
        || target.refused("not_member") >= 1,
        || target.describe(),
    )
    .await;
    assert!(
        asks.try_recv().is_err(),
        "a non-member's ask reached the node"
    );

    // Once a member, a flood of asks: only a few are served at once, the rest counted.
    let dst = target.mesh.identity().clone();
    let hello = announce(identity(&evil_key, "evil", CLUSTER, evil.addr()), &dst);
    wait_until_resending(
        "the target to admit evil",
        || evil.datagram(&hello),
        || target.knows("evil"),
        || target.describe(),
    )
    .await;
    for id in 2..40 {
        evil.stream(&ask(id)).await;
    }
    let bound_hits = "switchyard_mesh_bound_hits_total{bound=\"probe_asks\"}";
    wait_until(
        "the target to refuse asks over the per-peer bound",
        || target.metric(bound_hits) >= 1,
        || target.describe(),
    )
    .await;
    let mut served = Vec::new();
    while let Ok(ask) = asks.try_recv() {
        served.push(ask);
    }
    assert!(
        !served.is_empty() && served.len() <= 4,
        "{} asks served at once",
        served.len()
    );

    // An answer nobody asked for is dropped and counted.
    evil.stream(&envelope(
        CLUSTER,
        "evil",
        Msg::ProbeAnswer {
            id: 7,
            outcome: ProbeOutcome::Down {
                reason: "lies".into(),
            },
        },
    ))
    .await;
    wait_until(
        "the target to drop an answer to an ask it never made",
        || target.refused("unasked_answer") >= 1,
        || target.describe(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Wrong cluster.

#[tokio::test]
async fn messages_of_another_cluster_are_refused() {
    let scratch = Scratch::new("wrong-cluster");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let key = ca.node("edge-o");
    let peer = RawPeer::connect(&key, target.addr()).await;
    let dst = target.mesh.identity().clone();

    let foreign = announce(identity(&key, "edge-o", "other", peer.addr()), &dst);
    wait_until_resending(
        "the target to refuse a SWIM packet of cluster \"other\"",
        || peer.datagram(&foreign),
        || target.refused("wrong_cluster") >= 1,
        || target.describe(),
    )
    .await;
    assert!(!target.knows("edge-o"), "{}", target.describe());

    let before = target.refused("wrong_cluster");
    peer.stream(&envelope(
        "other",
        "edge-o",
        Msg::Push(batch(&key, "edge-o")),
    ))
    .await;
    wait_until(
        "the target to refuse an envelope of cluster \"other\"",
        || target.refused("wrong_cluster") > before,
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("edge-o"), "{}", target.describe());
    assert_eq!(target.refused("wrong_id"), 0, "{}", target.describe());

    // Controls: the same messages in our cluster are taken.
    peer.stream(&envelope(
        CLUSTER,
        "edge-o",
        Msg::Push(batch(&key, "edge-o")),
    ))
    .await;
    wait_until(
        "the target to take the envelope in its own cluster",
        || target.has_writer("edge-o"),
        || target.describe(),
    )
    .await;
    let ours = announce(identity(&key, "edge-o", CLUSTER, peer.addr()), &dst);
    wait_until_resending(
        "the target to take the announce in its own cluster",
        || peer.datagram(&ours),
        || target.knows("edge-o"),
        || target.describe(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Garbage.

#[tokio::test]
async fn garbage_never_crashes_a_node() {
    let scratch = Scratch::new("garbage");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let noise_key = ca.node("noise");
    let noise = RawPeer::connect(&noise_key, target.addr()).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_0bad_b17e_5eed);
    let max = noise
        .conn
        .max_datagram_size()
        .expect("the mesh accepts datagrams")
        .min(MAX_SWIM_PACKET);

    // Datagrams: random bytes, random bytes behind the right version byte (so bincode sees
    // them), hostile length prefixes, and a valid header followed by garbage members.
    let dst = target.mesh.identity().clone();
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![FORMAT_VERSION],
        vec![FORMAT_VERSION; max],
        vec![0xff; max],
    ];
    let mut prefix = vec![FORMAT_VERSION, 0xfd];
    prefix.extend(u64::MAX.to_le_bytes());
    datagrams.push(prefix);
    for _ in 0..150 {
        let mut d = vec![0u8; rng.random_range(1..=max)];
        rng.fill(&mut d[..]);
        if rng.random_bool(0.5) {
            d[0] = FORMAT_VERSION;
        }
        datagrams.push(d);
    }
    for _ in 0..20 {
        // A valid ping, then garbage where the piggybacked member updates go.
        let mut d = swim(
            identity(&noise_key, "noise", CLUSTER, noise.addr()),
            &dst,
            foca::Message::Ping(rng.random()),
        );
        let tail = rng.random_range(1..=(max - d.len()));
        let start = d.len();
        d.resize(start + tail, 0);
        rng.fill(&mut d[start..]);
        datagrams.push(d);
    }
    for d in &datagrams {
        // Waiting for room rather than dropping keeps the burst from overflowing quinn's
        // buffer; whether each one arrives is still up to the network.
        let _ = noise
            .conn
            .send_datagram_wait(Bytes::copy_from_slice(d))
            .await;
    }
    // A datagram that cannot decode, resent until one is seen.
    wait_until_resending(
        "the target to count undecodable datagrams",
        || noise.datagram(&[0xee; 64]),
        || target.decode_errors() >= 1,
        || target.describe(),
    )
    .await;

    // Streams are reliable, so every one whose version byte is wrong must be counted.
    let before = target.decode_errors();
    let mut certain = 0;
    for i in 0..40 {
        let mut s = vec![0u8; rng.random_range(1..4096)];
        rng.fill(&mut s[..]);
        if i % 2 == 0 {
            s[0] = FORMAT_VERSION;
        } else {
            s[0] = s[0].wrapping_add(u8::from(s[0] == FORMAT_VERSION));
            certain += 1;
        }
        noise.stream(&s).await;
    }
    noise.stream(&[]).await;
    certain += 1;
    let mut prefix = vec![FORMAT_VERSION, 0xfd];
    prefix.extend(u64::MAX.to_le_bytes());
    noise.stream(&prefix).await;
    wait_until(
        &format!("the target to count at least {certain} undecodable streams"),
        || target.decode_errors() >= before + certain,
        || target.describe(),
    )
    .await;

    // Still alive and well: a fresh legit node joins through it.
    let fresh = Node::start(&ca.node("edge-b"), vec![target.addr()]);
    converge(&target, &fresh).await;
    assert!(target.decode_errors() >= 1, "{}", target.describe());
}

// ---------------------------------------------------------------------------------------------
// 6. A certificate for another node.

#[tokio::test]
async fn a_certificate_for_another_node_id_is_refused_at_start() {
    let scratch = Scratch::new("cert-id");
    let ca = scratch.ca("c", CLUSTER);
    let tls = ca.node("edge-b");
    let err = match Mesh::start(config("edge-a", vec![]), &tls, MeshMetrics::default()) {
        Ok(_) => panic!("the mesh started as edge-a with edge-b's certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("edge-a") && err.contains("edge-b"),
        "the error must name both ids: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Anti-entropy opens with a fingerprint.

/// A summary whose fingerprint differs from the node's own digest gets the digest back (the
/// start of the usual digest/delta exchange); this is how a peer that missed a push catches
/// up. The target has no other member, so nothing else makes it send a digest.
#[tokio::test]
async fn a_differing_summary_gets_the_digest() {
    let scratch = Scratch::new("summary");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let peer = RawPeer::connect(&ca.node("edge-r"), target.addr()).await;
    let sent_digests =
        || target.metric("switchyard_mesh_messages_total{direction=\"sent\",type=\"digest\"}");
    let got_summaries =
        || target.metric("switchyard_mesh_messages_total{direction=\"received\",type=\"summary\"}");
    assert_eq!(sent_digests(), 0, "{}", target.describe());
    let summary = envelope(CLUSTER, "edge-r", Msg::Summary { fingerprint: 0 });
    peer.stream(&summary).await;
    wait_until(
        "the target to answer a differing summary with its digest",
        || got_summaries() >= 1 && sent_digests() >= 1,
        || target.describe(),
    )
    .await;
    assert_eq!(target.decode_errors(), 0, "{}", target.describe());
}

// ---------------------------------------------------------------------------------------------
// 8. Byzantine members: the attacker holds one valid cluster certificate, its own, and says
// whatever it likes about others. Every claim is bound to the key of the node it is about.

#[tokio::test]
async fn a_delta_forging_another_writers_rows_is_dropped_and_the_real_rows_stay() {
    let scratch = Scratch::new("forged-delta");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let victim = Node::start(&ca.node("edge-v"), vec![target.addr()]);
    converge(&target, &victim).await;
    victim.set_health(true);
    wait_until(
        "the target to hold edge-v's healthy row",
        || target.health_of("edge-v") == Some(true),
        || target.describe(),
    )
    .await;

    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    // edge-v's rows as evil would have them: down, newer than anything edge-v sent, and
    // sealed with the only key evil has, its own.
    let epoch = victim.mesh.identity().generation;
    let mut forged = sealed_batch(&evil_key, "edge-v", Region::Weu, epoch, false);
    forged.seq = 1_000;
    forged.rows[0].seq = 1_000;
    evil.stream(&envelope(CLUSTER, "evil", Msg::Delta(vec![forged])))
        .await;
    wait_until(
        "the target to refuse the forged delta",
        || target.refused("bad_signature") >= 1,
        || target.describe(),
    )
    .await;
    assert_eq!(
        target.health_of("edge-v"),
        Some(true),
        "{}",
        target.describe()
    );

    // The same from the end of time, which edge-v's real rows could never replace.
    let forever = sealed_batch(&evil_key, "edge-v", Region::Weu, u64::MAX, false);
    evil.stream(&envelope(CLUSTER, "evil", Msg::Delta(vec![forever])))
        .await;
    wait_until(
        "the target to refuse a batch from the far future",
        || target.refused("future_epoch") >= 1,
        || target.describe(),
    )
    .await;
    assert_eq!(
        target.health_of("edge-v"),
        Some(true),
        "{}",
        target.describe()
    );

    // edge-v's own next change still lands.
    victim.set_health(false);
    wait_until(
        "the target to take edge-v's real change",
        || target.health_of("edge-v") == Some(false),
        || format!("{}{}", target.describe(), victim.describe()),
    )
    .await;
}

#[tokio::test]
async fn a_piggybacked_down_at_the_maximum_generation_does_not_evict_a_node() {
    let scratch = Scratch::new("forged-down");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let victim = Node::start(&ca.node("edge-v"), vec![target.addr()]);
    converge(&target, &victim).await;

    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    let dst = target.mesh.identity().clone();
    // "edge-v is down at generation u64::MAX": edge-v could never come back above it.
    let mut forever = victim.mesh.identity().clone();
    forever.generation = u64::MAX;
    // "edge-v is down at its next generation", signed by evil: edge-v never said so.
    let next = NodeIdentity::unsigned(
        "edge-v",
        Region::Weu,
        victim.addr(),
        CLUSTER,
        victim.mesh.identity().generation + 1,
    )
    .signed_by(evil_key.signer());
    let packet = swim_with(
        identity(&evil_key, "evil", CLUSTER, evil.addr()),
        &dst,
        foca::Message::Gossip,
        &[
            foca::Member::new(forever, 0, foca::State::Down),
            foca::Member::new(next, 0, foca::State::Down),
        ],
    );
    wait_until_resending(
        "the target to drop both forged updates",
        || evil.datagram(&packet),
        || target.refused("future_generation") >= 1 && target.refused("bad_signature") >= 1,
        || target.describe(),
    )
    .await;
    // The packet itself was taken (its sender is who it says): only the updates were dropped.
    assert!(target.knows("evil"), "{}", target.describe());
    assert!(target.sees_alive("edge-v"), "{}", target.describe());
    converge(&target, &victim).await;
}

#[tokio::test]
async fn epochs_and_generations_far_ahead_of_the_clock_are_refused() {
    let scratch = Scratch::new("future");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let evil_key = ca.node("evil");
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    let dst = target.mesh.identity().clone();

    // Its own rows, properly sealed, but from the end of time or two days ahead.
    let two_days = now_ms() + 2 * 24 * 3600 * 1000;
    for (i, epoch) in [u64::MAX, two_days].into_iter().enumerate() {
        let b = sealed_batch(&evil_key, "evil", Region::Weu, epoch, true);
        evil.stream(&envelope(CLUSTER, "evil", Msg::Push(b))).await;
        wait_until(
            &format!("the target to refuse epoch {epoch}"),
            || target.refused("future_epoch") > i as u64,
            || target.describe(),
        )
        .await;
    }
    assert!(!target.has_writer("evil"), "{}", target.describe());

    // Its own identity, properly signed, at a generation from the end of time.
    let forever = NodeIdentity::unsigned("evil", Region::Weu, evil.addr(), CLUSTER, u64::MAX)
        .signed_by(evil_key.signer());
    let packet = announce(forever, &dst);
    wait_until_resending(
        "the target to refuse a generation from the far future",
        || evil.datagram(&packet),
        || target.refused("future_generation") >= 1,
        || target.describe(),
    )
    .await;
    assert!(!target.knows("evil"), "{}", target.describe());

    // Controls: the same at this clock's time are taken.
    let b = sealed_batch(&evil_key, "evil", Region::Weu, now_ms(), true);
    evil.stream(&envelope(CLUSTER, "evil", Msg::Push(b))).await;
    wait_until(
        "the target to take rows of the present",
        || target.has_writer("evil"),
        || target.describe(),
    )
    .await;
    let present = NodeIdentity::unsigned("evil", Region::Weu, evil.addr(), CLUSTER, now_ms())
        .signed_by(evil_key.signer());
    let packet = announce(present, &dst);
    wait_until_resending(
        "the target to take an identity of the present",
        || evil.datagram(&packet),
        || target.knows("evil"),
        || target.describe(),
    )
    .await;
}

#[tokio::test]
async fn a_member_speaking_for_a_region_its_certificate_does_not_name_is_dropped() {
    let scratch = Scratch::new("region");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node_in("edge-a", Region::Weu), vec![]);
    let evil_key = ca.node_in("evil", Region::Weu);
    let evil = RawPeer::connect(&evil_key, target.addr()).await;
    let dst = target.mesh.identity().clone();

    // Signed by evil, but for ENAM: it would vote in ENAM's quorum.
    let elsewhere = NodeIdentity::unsigned("evil", Region::Enam, evil.addr(), CLUSTER, 1)
        .signed_by(evil_key.signer());
    let packet = announce(elsewhere, &dst);
    wait_until_resending(
        "the target to refuse an identity for ENAM",
        || evil.datagram(&packet),
        || target.refused("wrong_region") >= 1,
        || target.describe(),
    )
    .await;
    assert!(!target.knows("evil"), "{}", target.describe());
    let b = sealed_batch(&evil_key, "evil", Region::Enam, 1, false);
    evil.stream(&envelope(CLUSTER, "evil", Msg::Push(b))).await;
    wait_until(
        "the target to refuse rows for ENAM",
        || target.refused("wrong_region") >= 2,
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("evil"), "{}", target.describe());

    // Controls: the region its certificate names is taken.
    let b = sealed_batch(&evil_key, "evil", Region::Weu, 1, false);
    evil.stream(&envelope(CLUSTER, "evil", Msg::Push(b))).await;
    wait_until(
        "the target to take rows for WEU",
        || target.has_writer("evil"),
        || target.describe(),
    )
    .await;
    let packet = announce(identity(&evil_key, "evil", CLUSTER, evil.addr()), &dst);
    wait_until_resending(
        "the target to take an identity for WEU",
        || evil.datagram(&packet),
        || target.knows("evil"),
        || target.describe(),
    )
    .await;
}

#[tokio::test]
async fn a_node_configured_for_another_region_than_its_certificate_does_not_start() {
    let scratch = Scratch::new("region-start");
    let ca = scratch.ca("c", CLUSTER);
    let tls = ca.node_in("edge-a", Region::Enam);
    // config() says WEU.
    let err = match Mesh::start(config("edge-a", vec![]), &tls, MeshMetrics::default()) {
        Ok(_) => panic!("the mesh started in WEU with a certificate for ENAM"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ENAM") && err.contains("WEU") && err.contains("--region"),
        "the error must name both regions and the fix: {err}"
    );
}

/// The honest case: rows that reach a node only through a third node carry their writer's
/// seal, which the relay cannot make but can pass on, and are taken once the writer's
/// certificate is known (here the relay hands it on, as a node asked for it does).
#[tokio::test]
async fn rows_relayed_by_a_third_node_are_verified_and_taken() {
    let scratch = Scratch::new("relay");
    let ca = scratch.ca("c", CLUSTER);
    let target = Node::start(&ca.node("edge-a"), vec![]);
    let writer_key = ca.node("edge-w");
    let relay_key = ca.node("edge-r");
    let relay = RawPeer::connect(&relay_key, target.addr()).await;
    let epoch = now_ms();
    // edge-w's own rows, sealed by edge-w (it never talks to the target itself).
    let rows = sealed_batch(&writer_key, "edge-w", Region::Weu, epoch, false);
    let relayed = envelope(CLUSTER, "edge-r", Msg::Delta(vec![rows.clone()]));

    // The target has never seen edge-w's certificate: it cannot check the seal yet.
    relay.stream(&relayed).await;
    wait_until(
        "the target to set aside rows whose writer it cannot check yet",
        || target.refused("unknown_signer") >= 1,
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("edge-w"), "{}", target.describe());

    // A certificate relayed for edge-w, then the same rows: taken.
    let cert = writer_key.own_cert().unwrap().der().to_vec();
    relay
        .stream(&envelope(CLUSTER, "edge-r", Msg::Certs(vec![cert])))
        .await;
    wait_until_resending_async(
        &relay,
        &relayed,
        || target.health_of("edge-w") == Some(false),
        &target,
    )
    .await;

    // The relay altering them, as a newer version, is caught.
    let mut altered = rows;
    altered.rows[0].healthy = true;
    altered.rows[0].seq += 1;
    altered.seq += 1;
    relay
        .stream(&envelope(CLUSTER, "edge-r", Msg::Delta(vec![altered])))
        .await;
    wait_until(
        "the target to refuse rows the relay altered",
        || target.refused("bad_signature") >= 1,
        || target.describe(),
    )
    .await;
    assert_eq!(
        target.health_of("edge-w"),
        Some(false),
        "{}",
        target.describe()
    );
}

/// Sends `data` on a stream every few polls until `cond` holds: the certificate and the
/// rows travel on separate streams, which may arrive in either order.
async fn wait_until_resending_async(
    peer: &RawPeer,
    data: &[u8],
    mut cond: impl FnMut() -> bool,
    node: &Node,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut polls = 0u32;
    loop {
        if polls % RESEND_EVERY == 0 {
            peer.stream(data).await;
        }
        if cond() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for the target to take the relayed rows\n{}",
            node.describe()
        );
        polls += 1;
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Revocation and rotation while running: new TLS material reaches a running mesh through
// `Mesh::reload_tls`, as a node's reload (SIGHUP) hands it over.

impl Ca {
    /// Issues (or reissues: a new key, the same id) `node_id`'s certificate from this CA.
    fn issue(&self, node_id: &str) -> tls::CertPaths {
        tls::issue_cert(&self.dir, node_id, &self.out).unwrap()
    }
}

/// `paths` loaded trusting the CA bundle `ca`, refusing what the list `revoked` names.
fn load(ca: &Path, paths: &tls::CertPaths, revoked: Option<&Path>) -> NodeTls {
    tls::load_with(ca, &paths.cert, &paths.key, revoked).unwrap()
}

/// The member's generation as `node` sees it.
fn generation_of(node: &Node, id: &str) -> Option<u64> {
    let state = node.mesh.state();
    let state = state.borrow();
    state
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.generation)
}

/// A Byzantine member: a node whose certificate is revoked while it runs is dropped (its SWIM
/// membership, its rows), and its claims that others relay later are refused and counted.
#[tokio::test]
async fn a_revoked_node_is_dropped_and_its_relayed_claims_are_refused() {
    let scratch = Scratch::new("revoked");
    let ca = scratch.ca("c", CLUSTER);
    let target_paths = ca.issue("edge-a");
    let target = Node::start(&load(&ca.cert, &target_paths, None), vec![]);
    let victim_key = ca.node("edge-v");
    let victim = Node::start(&victim_key, vec![target.addr()]);
    converge(&target, &victim).await;
    victim.set_health(true);
    wait_until(
        "the target to hold edge-v's row",
        || target.health_of("edge-v") == Some(true),
        || target.describe(),
    )
    .await;

    // edge-v is revoked by id; the target reloads its TLS material.
    let list = scratch.0.join("revoked.txt");
    fs::write(&list, "# edge-v's key leaked\nnode:edge-v\n").unwrap();
    let changed = target
        .mesh
        .reload_tls(&load(&ca.cert, &target_paths, Some(&list)))
        .await
        .unwrap();
    assert_eq!(changed.revoked, vec!["edge-v".to_string()], "{changed:?}");
    assert!(!changed.rotated, "{changed:?}");
    wait_until(
        "the target to drop edge-v: down, without rows",
        || !target.sees_alive("edge-v") && !target.has_writer("edge-v"),
        || format!("{}{}", target.describe(), victim.describe()),
    )
    .await;
    // edge-v stops talking (it keeps trying while it runs; its handshakes are refused).
    victim.mesh.leave().await;

    // A third node, honest or not, relays edge-v's rows, newer than any the target had, sealed
    // by edge-v's own key...
    let relay_key = ca.node("edge-r");
    let relay = RawPeer::connect(&relay_key, target.addr()).await;
    let before = target.refused("revoked");
    let rows = sealed_batch(&victim_key, "edge-v", Region::Weu, now_ms(), false);
    relay
        .stream(&envelope(CLUSTER, "edge-r", Msg::Delta(vec![rows])))
        .await;
    wait_until(
        "the target to refuse edge-v's relayed rows",
        || target.refused("revoked") > before,
        || target.describe(),
    )
    .await;
    assert!(!target.has_writer("edge-v"), "{}", target.describe());

    // ...and edge-v's own signed identity, alive at a newer generation, piggybacked.
    let before = target.refused("revoked");
    let back = NodeIdentity::unsigned("edge-v", Region::Weu, victim.addr(), CLUSTER, now_ms())
        .signed_by(victim_key.signer());
    let packet = swim_with(
        identity(&relay_key, "edge-r", CLUSTER, relay.addr()),
        &target.mesh.state().borrow().local,
        foca::Message::Gossip,
        &[foca::Member::new(back, 5, foca::State::Alive)],
    );
    wait_until_resending(
        "the target to refuse edge-v's relayed identity",
        || relay.datagram(&packet),
        || target.refused("revoked") > before,
        || target.describe(),
    )
    .await;
    assert!(!target.sees_alive("edge-v"), "{}", target.describe());
}

/// A node revoked by the serial of its certificate cannot join, and neither can it dial in;
/// the same node with a new certificate (a new serial) can.
#[tokio::test]
async fn a_revoked_node_cannot_rejoin_until_it_has_a_new_certificate() {
    let scratch = Scratch::new("revoked-rejoin");
    let ca = scratch.ca("c", CLUSTER);
    let victim_paths = ca.issue("edge-v");
    let victim_tls = load(&ca.cert, &victim_paths, None);
    let list = scratch.0.join("revoked.txt");
    let serial = victim_tls.serial().unwrap();
    // openssl's spelling of the serial: upper case, colon-separated.
    let spelled: Vec<String> = (0..serial.len())
        .step_by(2)
        .map(|i| serial[i..i + 2].to_uppercase())
        .collect();
    fs::write(&list, format!("serial:{}\n", spelled.join(":"))).unwrap();

    let target = Node::start(&load(&ca.cert, &ca.issue("edge-a"), Some(&list)), vec![]);
    let victim = Node::start(&victim_tls, vec![target.addr()]);
    wait_until(
        "the target to refuse edge-v's handshakes",
        || target.refused("revoked") >= 1,
        || format!("{}{}", target.describe(), victim.describe()),
    )
    .await;
    assert!(!target.knows("edge-v"), "{}", target.describe());
    assert!(!victim.knows("edge-a"), "{}", victim.describe());
    victim.mesh.leave().await;

    // A node refuses to start with a revoked certificate of its own, naming the list.
    let err = tls::load_with(&ca.cert, &victim_paths.cert, &victim_paths.key, Some(&list))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("revoked") && err.contains(&list.display().to_string()),
        "the error must say the certificate is revoked, and by which list: {err}"
    );

    // Reissued: a new key and serial, the same id.
    let renewed = load(&ca.cert, &ca.issue("edge-v"), None);
    assert_ne!(renewed.serial(), Some(serial));
    let victim = Node::start(&renewed, vec![target.addr()]);
    converge(&target, &victim).await;
}

/// A node's certificate is rotated (a new key, the same id) without a restart: it stays in the
/// mesh, and what it signs with the new key verifies at its peers.
#[tokio::test]
async fn a_rotated_node_certificate_keeps_the_node_in_the_mesh() {
    let scratch = Scratch::new("rotate");
    let ca = scratch.ca("c", CLUSTER);
    let a = Node::start(&ca.node("edge-a"), vec![]);
    let b_tls = load(&ca.cert, &ca.issue("edge-b"), None);
    let b = Node::start(&b_tls, vec![a.addr()]);
    converge(&a, &b).await;
    b.set_health(true);
    wait_until(
        "edge-a to hold edge-b's healthy row",
        || a.health_of("edge-b") == Some(true),
        || a.describe(),
    )
    .await;
    let generation = generation_of(&a, "edge-b").unwrap();

    let rotated = load(&ca.cert, &ca.issue("edge-b"), None);
    assert_ne!(rotated.serial(), b_tls.serial());
    let changed = b.mesh.reload_tls(&rotated).await.unwrap();
    assert!(changed.rotated, "{changed:?}");

    // Its identity, signed again with the new key, replaces the old at edge-a.
    wait_until(
        "edge-a to see edge-b alive under its re-signed identity",
        || a.sees_alive("edge-b") && generation_of(&a, "edge-b") > Some(generation),
        || format!("{}{}", a.describe(), b.describe()),
    )
    .await;
    // Its rows, sealed with the new key, are taken.
    b.set_health(false);
    wait_until(
        "edge-a to take edge-b's row sealed with the new key",
        || a.health_of("edge-b") == Some(false),
        || format!("{}{}", a.describe(), b.describe()),
    )
    .await;
    converge(&a, &b).await;
}

/// A CA rotation: every node trusts a bundle of the old and the new CA during the overlap; a
/// node issued from the new CA joins, and a node re-issued from it stays.
#[tokio::test]
async fn a_ca_rotation_lets_nodes_of_the_new_ca_join() {
    let scratch = Scratch::new("ca-rotate");
    let old = scratch.ca("old", CLUSTER);
    let new = scratch.ca("new", CLUSTER);
    let bundle = scratch.0.join("bundle.crt");
    let pem = |p: &Path| fs::read_to_string(p).unwrap();
    fs::write(&bundle, pem(&old.cert) + &pem(&new.cert)).unwrap();

    let a_paths = old.issue("edge-a");
    let b_paths = old.issue("edge-b");
    let a = Node::start(&load(&old.cert, &a_paths, None), vec![]);
    let b = Node::start(&load(&old.cert, &b_paths, None), vec![a.addr()]);
    converge(&a, &b).await;

    // Step 1: every node trusts both CAs (a reload that changes no certificate).
    for (node, paths) in [(&a, &a_paths), (&b, &b_paths)] {
        let changed = node
            .mesh
            .reload_tls(&load(&bundle, paths, None))
            .await
            .unwrap();
        assert!(
            !changed.rotated && changed.untrusted.is_empty(),
            "{changed:?}"
        );
    }

    // Step 2: a node of the new CA joins.
    let c = Node::start(&load(&bundle, &new.issue("edge-c"), None), vec![a.addr()]);
    converge(&a, &c).await;
    converge(&b, &c).await;

    // Step 3: the old nodes are re-issued from the new CA, in place.
    b.set_health(true);
    let changed = b
        .mesh
        .reload_tls(&load(&bundle, &new.issue("edge-b"), None))
        .await
        .unwrap();
    assert!(changed.rotated, "{changed:?}");
    b.set_health(false);
    for peer in [&a, &c] {
        wait_until(
            &format!(
                "{} to take edge-b's rows under its new CA's certificate",
                peer.id()
            ),
            || peer.sees_alive("edge-b") && peer.health_of("edge-b") == Some(false),
            || format!("{}{}", peer.describe(), b.describe()),
        )
        .await;
    }
}

/// A reload that would break the node is refused and changes nothing: a certificate of
/// another node, or a revocation list naming this node.
#[tokio::test]
async fn tls_material_for_another_node_or_revoking_this_one_is_refused_on_reload() {
    let scratch = Scratch::new("reload-refused");
    let ca = scratch.ca("c", CLUSTER);
    let a_paths = ca.issue("edge-a");
    let a = Node::start(&load(&ca.cert, &a_paths, None), vec![]);
    let b = Node::start(&ca.node("edge-b"), vec![a.addr()]);
    converge(&a, &b).await;

    let err = a
        .mesh
        .reload_tls(&ca.node("edge-x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("edge-x") && err.contains("edge-a"), "{err}");

    let list = scratch.0.join("revoked.txt");
    fs::write(&list, "node:edge-a\n").unwrap();
    let err = tls::load_with(&ca.cert, &a_paths.cert, &a_paths.key, Some(&list))
        .unwrap_err()
        .to_string();
    assert!(err.contains("revoked.txt:1"), "{err}");
    converge(&a, &b).await;
}
