//! The mesh's DNS, against the real server started through `App` on 127.0.0.1, port 0: what
//! resolvers depend on (RFC 1035, 2308, 6891, 7766, 7871, the question's letter case),
//! checked with hickory-proto's messages over UDP and TCP, with `dig` (bind9-dnsutils), and
//! with `unbound` as a real recursive resolver in front of the node; then, across a
//! three-node mesh, which nodes answer which client, and that every node answers alike.
//!
//! Clients are placed by `[[geo.override]]`: 10.1.0.0/16 in WNAM, 10.2.0.0/16 in WEU,
//! 10.3.0.0/16 in SEAS; Client Subnet carries them, since every query comes from loopback.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard_node::status;
use switchyard_node::{App, Config, StartOptions};
use switchyard_tests::harness::{eventually, init_logs, MeshCerts, FAST_TCP_MONITOR};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const ZONE: &str = "lb.example.com";
/// For a UDP answer.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// For membership, health and adverts to converge across the mesh.
const WAIT: Duration = Duration::from_secs(40);

const GEO: &str = r#"
[geo]
[[geo.override]]
cidr = "10.1.0.0/16"
region = "WNAM"
[[geo.override]]
cidr = "10.2.0.0/16"
region = "WEU"
[[geo.override]]
cidr = "10.3.0.0/16"
region = "SEAS"
"#;

/// One app `game` whose pool has no monitor (always up), served as `game.<zone>`.
const APP: &str = r#"
[[pool]]
name = "p"
origins = [{ name = "o", address = "127.0.0.1:9" }]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "game"
listen = "127.0.0.1:0"
load_balancer = "lb"
hostname = "game"
"#;

fn dns_section(extra: &str) -> String {
    format!("\n[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"{ZONE}\"\n{extra}\n")
}

/// A node alone in WEU with 8 IPv4 and 8 IPv6 public addresses (its NS answer with glue is
/// over 512 bytes, its A answer is not), serving app `game` as `hostname`, with `dns` added
/// to its `[dns]` section.
fn single_config(hostname: &str, dns: &str) -> Config {
    let v4: Vec<String> = (1..=8).map(|i| format!("\"192.0.2.{i}\"")).collect();
    let v6: Vec<String> = (1..=8).map(|i| format!("\"2001:db8::{i}\"")).collect();
    let text = format!(
        "[node]\nid = \"edge-weu\"\nregion = \"WEU\"\nstatus_listen = \"127.0.0.1:0\"\n\
         drain_timeout = \"1s\"\npublic_addresses = [{}, {}]\n{GEO}{}{}",
        v4.join(", "),
        v6.join(", "),
        APP.replace("hostname = \"game\"", &format!("hostname = \"{hostname}\"")),
        dns_section(dns)
    );
    Config::parse(&text, None).expect("test config is valid")
}

async fn single() -> App {
    init_logs();
    App::start(single_config("game", ""), StartOptions::default())
        .await
        .expect("node starts")
}

fn dns_addr(app: &App) -> SocketAddr {
    app.dns_addr().expect("[dns] is configured")
}

/// A query for `name` of `qtype`, with EDNS when `edns`, and Client Subnet `ecs`.
fn query(name: &str, qtype: RecordType, edns: bool, ecs: Option<(&str, u8)>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x2a2a;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if edns || ecs.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if let Some((ip, prefix)) = ecs {
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                ip.parse().unwrap(),
                prefix,
                0,
            )));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Sends `packet` over UDP and returns the answer, if one comes within [`ANSWER_WAIT`].
async fn udp(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, addr).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(ANSWER_WAIT, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Sends `packets` over one TCP connection (length-framed, one after the other) and returns
/// their answers.
async fn tcp(addr: SocketAddr, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut answers = Vec::new();
    for packet in packets {
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend(packet);
        s.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(ANSWER_WAIT, s.read_exact(&mut len))
            .await
            .expect("a TCP answer in time")
            .unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.unwrap();
        answers.push(buf);
    }
    answers
}

async fn ask(addr: SocketAddr, name: &str, qtype: RecordType, ecs: Option<(&str, u8)>) -> Message {
    let bytes = udp(addr, &query(name, qtype, true, ecs))
        .await
        .unwrap_or_else(|| panic!("no answer to {name} {qtype}"));
    Message::from_vec(&bytes).expect("a readable answer")
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

fn subnet(m: &Message) -> Option<ClientSubnet> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(*s),
        _ => None,
    }
}

fn soa_in_authority(m: &Message) -> bool {
    m.authorities.len() == 1
        && matches!(&m.authorities[0].data, RData::SOA(_))
        && m.authorities[0].name.to_ascii() == format!("{ZONE}.")
}

/// `dig @at` without recursion, one try, with `args`; a test that needs it fails saying how
/// to install it.
async fn dig(at: SocketAddr, args: &[&str]) -> String {
    let server = format!("@{}", at.ip());
    let port = at.port().to_string();
    let out = tokio::process::Command::new("dig")
        .args([server.as_str(), "-p", &port, "+norec", "+time=2", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("dig could not run ({e}): this test needs bind9-dnsutils (apt-get install bind9-dnsutils)")
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn metric(app: &App, name: &str) -> f64 {
    let (_, text) = status::http_get(app.status_addr(), "/metrics")
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_and_aaaa_answer_a_name_authoritatively() {
    let app = single().await;
    let at = dns_addr(&app);
    let m = ask(at, "game.lb.example.com.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.message_type == MessageType::Response);
    assert_eq!(m.metadata.id, 0x2a2a);
    assert_eq!(
        addresses(&m),
        ["192.0.2.1", "192.0.2.2"].map(|a| a.parse::<IpAddr>().unwrap()),
        "[dns] answers = 2: the node's first two IPv4 addresses"
    );
    assert!(m.answers.iter().all(|r| r.ttl == 30));
    let m = ask(at, "game.lb.example.com.", RecordType::AAAA, None).await;
    assert_eq!(addresses(&m).len(), 2);
    assert!(addresses(&m).iter().all(IpAddr::is_ipv6));
}

#[tokio::test]
async fn the_question_comes_back_in_its_own_letter_case() {
    let app = single().await;
    let packet = query("GaMe.lB.ExAmPlE.CoM.", RecordType::A, false, None);
    let answer = udp(dns_addr(&app), &packet).await.expect("an answer");
    let q = 12..12 + "GaMe.lB.ExAmPlE.CoM.".len() + 1 + 4;
    assert_eq!(
        &answer[q.clone()],
        &packet[q],
        "question echoed byte for byte"
    );
    let m = Message::from_vec(&answer).unwrap();
    assert_eq!(addresses(&m).len(), 2);
}

#[tokio::test]
async fn nxdomain_and_nodata_carry_the_soa_and_outside_the_zone_is_refused() {
    let app = single().await;
    let at = dns_addr(&app);
    let m = ask(at, "nope.lb.example.com.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty() && soa_in_authority(&m), "{m:?}");
    assert!(
        m.authorities[0].ttl <= 30,
        "negative TTL: min(SOA TTL, MINIMUM)"
    );

    let m = ask(at, "game.lb.example.com.", RecordType::TXT, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.answers.is_empty() && soa_in_authority(&m),
        "NODATA: {m:?}"
    );

    let m = ask(at, "example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative && m.answers.is_empty());
    let transfer = Message::from_vec(
        &tcp(
            at,
            &[query("lb.example.com.", RecordType::AXFR, false, None)],
        )
        .await[0],
    )
    .unwrap();
    assert_eq!(
        transfer.metadata.response_code,
        ResponseCode::Refused,
        "no zone transfers"
    );
}

#[tokio::test]
async fn the_apex_has_soa_and_every_nameserver_with_glue() {
    let app = single().await;
    let at = dns_addr(&app);
    let m = ask(at, "lb.example.com.", RecordType::SOA, None).await;
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(soa.mname.to_ascii(), "edge-weu.ns.lb.example.com.");
    let m = ask(at, "lb.example.com.", RecordType::NS, None).await;
    let RData::NS(ns) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(ns.0.to_ascii(), "edge-weu.ns.lb.example.com.");
    assert_eq!(m.additionals.len(), 16, "glue: its 16 addresses");
    let m = ask(at, "edge-weu.ns.lb.example.com.", RecordType::A, None).await;
    assert_eq!(addresses(&m).len(), 8);
    let m = ask(at, "lb.example.com.", RecordType::A, None).await;
    assert!(
        m.answers.is_empty() && soa_in_authority(&m),
        "NODATA at the apex"
    );
}

#[tokio::test]
async fn client_subnet_is_echoed_only_when_asked_and_malformed_is_formerr() {
    let app = single().await;
    let at = dns_addr(&app);
    let m = ask(
        at,
        "game.lb.example.com.",
        RecordType::A,
        Some(("10.1.2.0", 24)),
    )
    .await;
    let s = subnet(&m).expect("ECS echoed");
    assert_eq!(
        (s.addr(), s.source_prefix()),
        ("10.1.2.0".parse().unwrap(), 24)
    );
    assert_eq!(
        s.scope_prefix(),
        0,
        "one node: the answer depends on no address"
    );

    let m = ask(at, "game.lb.example.com.", RecordType::A, None).await;
    assert!(m.edns.is_some(), "EDNS answered with EDNS");
    assert!(subnet(&m).is_none(), "no ECS when the query had none");
    let plain = udp(
        at,
        &query("game.lb.example.com.", RecordType::A, false, None),
    )
    .await
    .unwrap();
    assert!(Message::from_vec(&plain).unwrap().edns.is_none());

    // Scope set in a query is malformed (RFC 7871 7.1.2): FORMERR, and counted.
    let mut bad = query("game.lb.example.com.", RecordType::A, false, None);
    bad[11] = 1;
    bad.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11]);
    bad.extend([0, 8, 0, 7, 0, 1, 24, 24, 10, 1, 2]);
    let before = metric(&app, "switchyard_dns_malformed_total").await;
    let m = Message::from_vec(&udp(at, &bad).await.expect("an answer")).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(
        metric(&app, "switchyard_dns_malformed_total").await,
        before + 1.0
    );
}

#[tokio::test]
async fn an_answer_too_large_for_udp_is_truncated_and_whole_over_tcp() {
    let app = single().await;
    let at = dns_addr(&app);
    let classic = query("lb.example.com.", RecordType::NS, false, None);
    let m = Message::from_vec(&udp(at, &classic).await.unwrap()).unwrap();
    assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
    let whole = Message::from_vec(&tcp(at, &[classic.clone(), classic.clone()]).await[1]).unwrap();
    assert!(!whole.metadata.truncation);
    assert_eq!((whole.answers.len(), whole.additionals.len()), (1, 16));
    // With EDNS the same answer fits 1232 bytes: what came over TCP.
    let m = ask(at, "lb.example.com.", RecordType::NS, None).await;
    assert!(!m.metadata.truncation);
    assert_eq!(
        m.additionals.len(),
        16,
        "its glue (the OPT record is read apart)"
    );
    assert!(metric(&app, "switchyard_dns_truncated_total").await >= 1.0);
}

/// TCP connections are bounded: past `MAX_TCP` open at once a new one is closed at once and
/// counted, and an idle one is closed after `TCP_IDLE`.
#[tokio::test]
async fn tcp_connections_are_bounded_in_number_and_idle_time() {
    use switchyard_node::dns::{MAX_TCP, TCP_IDLE};
    let app = single().await;
    let at = dns_addr(&app);
    let mut held = Vec::new();
    for _ in 0..MAX_TCP {
        held.push(TcpStream::connect(at).await.unwrap());
    }
    // Accepted in order: by the time this one is, every one before holds a slot.
    let mut extra = TcpStream::connect(at).await.unwrap();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(ANSWER_WAIT, extra.read(&mut byte))
        .await
        .expect("the connection past the limit is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(metric(&app, "switchyard_dns_tcp_refused_total").await >= 1.0);
    // A held connection that never asks is closed once idle.
    let idle = tokio::time::timeout(TCP_IDLE * 3, held[0].read(&mut byte))
        .await
        .expect("an idle connection is closed")
        .unwrap_or(0);
    assert_eq!(idle, 0);
}

#[tokio::test]
async fn garbage_is_counted_and_the_server_keeps_answering() {
    let app = single().await;
    let at = dns_addr(&app);
    let before = metric(&app, "switchyard_dns_malformed_total").await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let junk: [&[u8]; 4] = [
        b"hello",
        &[0xff; 40],
        &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12],
        &[0; 12],
    ];
    for j in junk {
        sock.send_to(j, at).await.unwrap();
    }
    eventually("4 malformed packets counted", ANSWER_WAIT, || async {
        metric(&app, "switchyard_dns_malformed_total").await >= before + 4.0
    })
    .await
    .unwrap();
    let m = ask(at, "game.lb.example.com.", RecordType::A, None).await;
    assert_eq!(addresses(&m).len(), 2);
    assert!(
        metric(
            &app,
            "switchyard_dns_queries_total{type=\"A\",rcode=\"noerror\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_burst_from_many_clients_is_answered_each_to_its_own_with_its_own_id() {
    // Queries arrive faster than they are answered, so the server takes them many at a time
    // (recvmmsg on Linux): every answer must still go to its own client, under its own id,
    // and one bad packet in a batch must not cost the others their answers. In waves of 80,
    // which even the kernel's smallest default receive buffer holds.
    let app = single().await;
    let at = dns_addr(&app);
    const CLIENTS: u16 = 8;
    const PER_WAVE: u16 = 10;
    const WAVES: u16 = 5;
    let mut socks = Vec::new();
    for _ in 0..CLIENTS {
        socks.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut packet = query("game.lb.example.com.", RecordType::A, true, None);
    let mut buf = vec![0u8; 4096];
    for wave in 0..WAVES {
        for k in 0..PER_WAVE {
            for (c, sock) in (0..CLIENTS).zip(&socks) {
                let id = (wave * PER_WAVE + k) * CLIENTS + c;
                packet[..2].copy_from_slice(&id.to_be_bytes());
                sock.send_to(&packet, at).await.unwrap();
                if id % 7 == 0 {
                    sock.send_to(b"not a query", at).await.unwrap();
                }
            }
        }
        for (c, sock) in (0..CLIENTS).zip(&socks) {
            let mut ids = std::collections::BTreeSet::new();
            while ids.len() < usize::from(PER_WAVE) {
                let n = match tokio::time::timeout(ANSWER_WAIT, sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    other => panic!(
                        "wave {wave}, client {c}: {} of {PER_WAVE} answers, then {other:?}",
                        ids.len()
                    ),
                };
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(addresses(&m).len(), 2, "{m:?}");
                let id = m.metadata.id;
                assert_eq!(id % CLIENTS, c, "client {c} got another's answer");
                assert_eq!(id / CLIENTS / PER_WAVE, wave, "an answer of another wave");
                assert!(ids.insert(id), "client {c}: id {id} answered twice");
            }
        }
    }
}

#[tokio::test]
async fn a_reload_renames_and_retimes_without_a_restart() {
    let app = single().await;
    let at = dns_addr(&app);
    app.reload(single_config("chat", "ttl = \"1m\""))
        .await
        .unwrap();
    eventually(
        "chat.lb.example.com answers after the reload",
        WAIT,
        || async {
            let m = ask(at, "chat.lb.example.com.", RecordType::A, None).await;
            addresses(&m).len() == 2 && m.answers.iter().all(|r| r.ttl == 60)
        },
    )
    .await
    .unwrap();
    let m = ask(at, "game.lb.example.com.", RecordType::A, None).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "the old name is gone"
    );
}

#[tokio::test]
async fn dig_sees_subnet_echo_and_falls_back_to_tcp() {
    let app = single().await;
    let at = dns_addr(&app);
    let out = dig(at, &["+subnet=10.2.0.0/24", "game.lb.example.com", "A"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("flags: qr aa"),
        "{out}"
    );
    assert!(out.contains("CLIENT-SUBNET: 10.2.0.0/24/0"), "{out}");
    assert!(out.contains("192.0.2.1"), "{out}");
    let out = dig(at, &["+noedns", "lb.example.com", "NS"]).await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(
        out.contains("edge-weu.ns.lb.example.com.") && out.contains("2001:db8::8"),
        "{out}"
    );
    let out = dig(at, &["nope.lb.example.com"]).await;
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );
}

/// A real recursive resolver in front of the node: unbound, with the zone stubbed to the
/// node on loopback, gets the node's answer for a client asking it.
#[tokio::test]
async fn unbound_in_front_resolves_through_the_node() {
    let app = single().await;
    let at = dns_addr(&app);
    let dir = std::env::temp_dir().join(format!("sy-unbound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
             do-not-query-localhost: no\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  \
             num-threads: 1\n  do-ip6: no\n \
             stub-zone:\n  name: \"{ZONE}\"\n  stub-addr: 127.0.0.1@{}\n",
            at.port(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut unbound = tokio::process::Command::new("unbound")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("unbound could not run ({e}): this test needs it (apt-get install unbound)")
        });
    let resolver: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut recursive = Message::query();
    recursive.metadata.recursion_desired = true;
    recursive.add_query(Query::query(
        Name::from_str("game.lb.example.com.").unwrap(),
        RecordType::A,
    ));
    let packet = recursive.to_vec().unwrap();
    let resolve = || async {
        let bytes = udp(resolver, &packet).await?;
        Message::from_vec(&bytes).ok().map(|m| addresses(&m))
    };
    eventually(
        "unbound answers game.lb.example.com through the node",
        WAIT,
        || async { resolve().await.is_some_and(|a| !a.is_empty()) },
    )
    .await
    .unwrap();
    // unbound rotates the order of a record set; the set is the node's.
    let mut got = resolve().await.unwrap();
    got.sort();
    assert_eq!(
        got,
        ["192.0.2.1", "192.0.2.2"].map(|a| a.parse::<IpAddr>().unwrap())
    );
    unbound.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Three nodes in one mesh.

const REGIONS: [(&str, &str, &str); 3] = [
    ("edge-wnam", "WNAM", "192.0.2.1"),
    ("edge-weu", "WEU", "192.0.2.2"),
    ("edge-seas", "SEAS", "192.0.2.3"),
];

/// A client subnet per region, as `GEO` places them.
const CLIENTS: [&str; 3] = ["10.1.0.0", "10.2.0.0", "10.3.0.0"];

/// Node `i`, with app `game` (always up) and app `api`, whose one origin its monitor reaches
/// at `api` (a closed port on one node: its pool is down in that node's view only).
fn mesh_node(certs: &MeshCerts, i: usize, seeds: &[SocketAddr], api: SocketAddr) -> Config {
    let (id, region, public) = REGIONS[i];
    certs.issue(id, region);
    let node = certs.node_toml(id, region, seeds).replace(
        "drain_timeout = \"1s\"\n",
        &format!("drain_timeout = \"1s\"\npublic_addresses = [\"{public}\"]\n"),
    );
    let api_app = format!(
        r#"{FAST_TCP_MONITOR}
[[pool]]
name = "api"
monitor = "tcp"
origins = [{{ name = "api-1", address = "{api}" }}]

[[load_balancer]]
name = "api"
default_pools = ["api"]

[[app]]
name = "api"
listen = "127.0.0.1:0"
load_balancer = "api"
hostname = "api"
"#
    );
    let text = format!("{node}{GEO}{APP}{api_app}{}", dns_section(""));
    Config::parse(&text, None).expect("test config is valid")
}

/// Waits until every node of `apps` answers `name` to a client of `subnet` with two
/// addresses, and not `without`.
async fn answered_without(apps: &[App], name: &str, subnet: &str, without: &str) {
    let fqdn = format!("{name}.{ZONE}.");
    let without: IpAddr = without.parse().unwrap();
    for app in apps {
        let at = dns_addr(app);
        let what = format!("{fqdn} answered to {subnet} without {without} by {at}");
        eventually(&what, WAIT, || async {
            let m = ask(at, &fqdn, RecordType::A, Some((subnet, 24))).await;
            let a = addresses(&m);
            a.len() == 2 && !a.contains(&without)
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn every_node_answers_alike_with_the_clients_region_first_and_drops_what_cannot_serve() {
    init_logs();
    let certs = MeshCerts::new("dns");
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut apps: Vec<App> = Vec::new();
    for i in 0..3 {
        let seeds: Vec<SocketAddr> = apps
            .first()
            .map(|a| a.state().mesh.as_ref().unwrap().local_addr())
            .into_iter()
            .collect();
        // edge-weu's monitor finds api's origin down; the others reach it.
        let api = if i == 1 {
            closed
        } else {
            open.local_addr().unwrap()
        };
        apps.push(
            App::start(mesh_node(&certs, i, &seeds, api), StartOptions::default())
                .await
                .unwrap(),
        );
    }
    let first = |m: &Message| addresses(m).first().map(IpAddr::to_string);
    let game_for = |at, client| {
        ask(
            at,
            "game.lb.example.com.",
            RecordType::A,
            Some((client, 24)),
        )
    };

    // Each region's client gets its region's node first, from every node, with the scope of
    // its subnet; and every node answers the same.
    for (r, client) in CLIENTS.iter().enumerate() {
        let want = REGIONS[r].2.to_string();
        for app in &apps {
            let at = dns_addr(app);
            eventually(
                &format!("{client} gets {want} first from {at}"),
                WAIT,
                || async {
                    let m = game_for(at, client).await;
                    addresses(&m).len() == 2 && first(&m).as_deref() == Some(want.as_str())
                },
            )
            .await
            .unwrap();
        }
        // The same data gives the same answer: once the adverts (round trips move as
        // SWIM measures them) have reached every node, every node answers alike.
        eventually(
            &format!("every node answers {client} alike"),
            WAIT,
            || async {
                let mut answers = Vec::new();
                for app in &apps {
                    let at = dns_addr(app);
                    let m = game_for(at, client).await;
                    assert_eq!(
                        subnet(&m).unwrap().scope_prefix(),
                        24,
                        "the answer depends on the subnet"
                    );
                    answers.push(addresses(&m));
                }
                answers.windows(2).all(|w| w[0] == w[1])
            },
        )
        .await
        .unwrap();
    }

    // The apex lists all three nameservers.
    let m = ask(dns_addr(&apps[0]), "lb.example.com.", RecordType::NS, None).await;
    assert_eq!(m.answers.len(), 3, "{m:?}");

    // edge-weu cannot serve api (its pool is down in its own view): a WEU client gets the
    // others, from every node, and explain says why.
    answered_without(&apps, "api", CLIENTS[1], REGIONS[1].2).await;
    let explain = || async {
        let (code, body) = status::http_get(
            apps[0].status_addr(),
            "/v1/explain?dns=api.lb.example.com&client=10.2.0.1",
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<switchyard_node::core::dns::DnsExplanation>(&body).unwrap()
    };
    // The nodes rank by the round trips WEU's node measures (SWIM's, in its advert).
    eventually(
        "WEU's measured round trips rank the others",
        WAIT,
        || async {
            let e = explain().await;
            e.a.nodes
                .iter()
                .filter(|n| n.answered.is_some())
                .all(|n| n.why.contains("as WEU's nodes measure it"))
        },
    )
    .await
    .unwrap();
    let e = explain().await;
    assert_eq!(e.region.as_deref(), Some("WEU"));
    let weu = e.a.nodes.iter().find(|n| n.node == "edge-weu").unwrap();
    assert!(
        weu.answered.is_none() && weu.why.contains("cannot serve"),
        "{weu:?}"
    );
    assert!(e.a.nodes.iter().filter(|n| n.answered.is_some()).count() == 2);
    let text = switchyard_node::core::dns::render(&e);
    assert!(
        text.contains("edge-weu (WEU): cannot serve \"api\""),
        "{text}"
    );

    // edge-seas dies: within the mesh's detection time, SEAS clients get the others.
    apps[2].kill().await;
    answered_without(&apps[..2], "game", CLIENTS[2], REGIONS[2].2).await;
    drop(open);
}
