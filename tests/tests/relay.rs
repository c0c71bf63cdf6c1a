//! Relaying through a peer node, in process: two nodes of one mesh on loopback, where node
//! `a`'s own path to origin `o` is cut (its config has `o` at a port nothing listens on, so
//! its probes are refused while `b`'s reach it; requests name the origin, never an address,
//! so `b` connects where its own config says). A client of `a`'s app whose load balancer
//! relays is served by `o` through `b`, with its real address in the PROXY header, bytes both
//! ways and half-close; a load balancer with `relay = "off"` fails over as before. The
//! serving node refuses, and counts, requests its config does not cover; and it drains
//! relayed connections as direct ones.
//!
//! Every wait polls a condition against a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_gossip::{
    Mesh, MeshConfig, MeshMetrics, Profile, RefuseReason, RelayError, RelayRequest, Timings,
};
use switchyard_node::{status, App, Config, StartOptions};
use switchyard_tests::harness::{
    app_addr, eventually, init_logs, origin_with, MeshCerts, FAST_TCP_MONITOR,
};
use switchyard_tests::origin::{read_line, TestOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// For membership, health and verdicts to converge (two cores, other tests alongside).
const WAIT: Duration = Duration::from_secs(30);

/// Pool `p` (origin `o` at `o_addr`) and pool `q` (origin `o2`), both probed every 200 ms;
/// load balancers `relayed` (relay = failover, the default) and `direct` (relay = off) over
/// [p, q], and `solo` over [q] alone; apps `relayed` and `direct` sending a PROXY v1 header.
fn body(o_addr: SocketAddr, o2_addr: SocketAddr) -> String {
    format!(
        r#"{FAST_TCP_MONITOR}
[[pool]]
name = "p"
monitor = "tcp"
origins = [{{ name = "o", address = "{o_addr}" }}]

[[pool]]
name = "q"
monitor = "tcp"
origins = [{{ name = "o2", address = "{o2_addr}" }}]

[[load_balancer]]
name = "relayed"
default_pools = ["p", "q"]

[[load_balancer]]
name = "direct"
default_pools = ["p", "q"]
relay = "off"

[[load_balancer]]
name = "solo"
default_pools = ["q"]

[[app]]
name = "relayed"
listen = "127.0.0.1:0"
load_balancer = "relayed"
proxy_protocol = "v1"

[[app]]
name = "direct"
listen = "127.0.0.1:0"
load_balancer = "direct"
proxy_protocol = "v1"
"#
    )
}

async fn start(certs: &MeshCerts, id: &str, region: &str, seeds: &[SocketAddr], body: &str) -> App {
    init_logs();
    let text = format!("{}\n{body}", certs.node_toml(id, region, seeds));
    let cfg = Config::parse(&text, None).expect("test config is valid");
    App::start(cfg, StartOptions::default())
        .await
        .expect("node starts")
}

fn mesh_addr(app: &App) -> SocketAddr {
    app.state().mesh.as_ref().expect("a mesh").local_addr()
}

fn sees_alive(app: &App, id: &str) -> bool {
    status::document(app.state())
        .members
        .iter()
        .any(|m| m.id == id && m.state == "alive")
}

/// A port nothing listens on: connects there are refused.
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The value of one series (name with its labels) in `app`'s metrics, 0 if absent.
fn metric(app: &App, series: &str) -> u64 {
    app.state()
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The two origins and nodes `a` (WNAM, its path to `o` cut) and `b` (WEU), once `a` has
/// blamed its path to `o` and would relay `relayed`'s connections to `o` through `b`.
struct Pair {
    o: TestOrigin,
    _o2: TestOrigin,
    a: App,
    b: App,
    _certs: MeshCerts,
}

async fn pair(tag: &str) -> anyhow::Result<Pair> {
    let certs = MeshCerts::new(tag);
    certs.issue("a", "WNAM");
    certs.issue("b", "WEU");
    let o = origin_with("o", true).await;
    let o2 = origin_with("o2", true).await;
    let a = start(&certs, "a", "WNAM", &[], &body(dead_port(), o2.addr())).await;
    let b = start(
        &certs,
        "b",
        "WEU",
        &[mesh_addr(&a)],
        &body(o.addr(), o2.addr()),
    )
    .await;
    eventually("a and b see each other alive", WAIT, || async {
        sees_alive(&a, "b") && sees_alive(&b, "a")
    })
    .await?;
    eventually("a's verdict on o: only its path is down", WAIT, || async {
        status::document(a.state()).pools[0].origins[0]
            .verdict
            .as_deref()
            == Some("path")
    })
    .await?;
    eventually(
        "a relays relayed's connections to o through b",
        WAIT,
        || async {
            a.state()
                .explain("relayed", "127.0.0.1".parse().expect("literal"))
                .is_ok_and(|e| {
                    e.origin.as_deref() == Some("o")
                        && e.path.as_deref().is_some_and(|p| p.starts_with("via b"))
                })
        },
    )
    .await?;
    Ok(Pair {
        o,
        _o2: o2,
        a,
        b,
        _certs: certs,
    })
}

/// Connects to an app and reads the origin's name from its greeting (`NAME client=ADDR`
/// when a PROXY header came first).
async fn greeted(addr: SocketAddr) -> anyhow::Result<(BufReader<TcpStream>, String)> {
    let stream = TcpStream::connect(addr).await?;
    let mut reader = BufReader::new(stream);
    let line = tokio::time::timeout(WAIT, read_line(&mut reader)).await??;
    Ok((reader, name_of(&line)))
}

fn name_of(greeting: &str) -> String {
    greeting.split(' ').next().unwrap_or_default().to_string()
}

/// Writes `line`, and reads it back from the echoing origin.
async fn echoed(conn: &mut BufReader<TcpStream>, line: &str) -> anyhow::Result<String> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    Ok(tokio::time::timeout(WAIT, read_line(conn)).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_served_through_a_peer_when_only_this_nodes_path_is_down() -> anyhow::Result<()>
{
    // Bound whole: the origins and certificates live as long as the nodes.
    let pair = pair("relay-path").await?;
    let (o, a, b) = (&pair.o, &pair.a, &pair.b);
    let e = a
        .state()
        .explain("relayed", "127.0.0.1".parse()?)
        .map_err(anyhow::Error::msg)?;
    let steps = e.steps.join("\n");
    assert!(steps.contains("kept, its path relayed"), "{steps}");

    let (mut conn, name) = greeted(app_addr(a, "relayed").await).await?;
    assert_eq!(name, "o", "served by o although a cannot reach it");
    let client = conn.get_ref().local_addr()?;
    assert_eq!(
        o.last_proxy_source(),
        Some(client),
        "the origin sees the real client address"
    );
    assert_eq!(echoed(&mut conn, "ping").await?, "ping");
    // Half-close: the client's FIN reaches the origin, which echoes the rest and closes.
    conn.get_mut().write_all(b"last words").await?;
    conn.get_mut().shutdown().await?;
    let mut rest = String::new();
    tokio::time::timeout(WAIT, conn.read_to_string(&mut rest)).await??;
    assert_eq!(rest, "last words");

    let series = |role: &str, peer: &str| {
        format!("switchyard_relayed_connections_total{{load_balancer=\"relayed\",peer=\"{peer}\",role=\"{role}\"}}")
    };
    assert_eq!(metric(a, &series("sent", "b")), 1);
    eventually("b counts the connection it carried", WAIT, || async {
        metric(b, &series("carried", "a")) == 1
    })
    .await?;
    // a's status shows the connection it sent through b: "ping\n" and "last words" in; the
    // greeting and their echoes out.
    let sent_through_b = || {
        let status = status::document(a.state());
        let lb = status
            .load_balancers
            .into_iter()
            .find(|l| l.name == "relayed");
        lb.map(|l| l.relayed).unwrap_or_default()
    };
    eventually("a's status counts every byte it relayed", WAIT, || async {
        let out = (format!("o client={client}\n").len() + "ping\nlast words".len()) as u64;
        matches!(&sent_through_b()[..], [r] if r.bytes_out == out)
    })
    .await?;
    let relayed = sent_through_b();
    let r = &relayed[0];
    assert_eq!(
        (r.peer.as_str(), r.role.as_str(), r.connections),
        ("b", "sent", 1)
    );
    // What the client sent; the PROXY header is the node's own, as in switchyard_bytes_total.
    assert_eq!(r.bytes_in, "ping\nlast words".len() as u64, "{r:?}");

    // relay = "off": as before relaying, o is not usable from a, so the next pool serves.
    let (_, name) = greeted(app_addr(a, "direct").await).await?;
    assert_eq!(name, "o2");
    assert_eq!(
        metric(a, &series("sent", "b")),
        1,
        "relay off relays nothing"
    );

    for app in [a, b] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// A bare mesh member in region `region` with certificate `id` of `certs`, joining through
/// `seed`.
fn member(certs: &MeshCerts, id: &str, region: switchyard_geo::Region, seed: SocketAddr) -> Mesh {
    certs.issue(id, &region.to_string());
    let tls = switchyard_gossip::tls::load_with(
        &certs.ca(),
        &certs.dir.join(format!("{id}.crt")),
        &certs.dir.join(format!("{id}.key")),
        None,
    )
    .expect("the member's certificate");
    let mut timings = Timings::for_profile(Profile::Lan, 2);
    timings.probe_period = Duration::from_millis(200);
    timings.probe_rtt = Duration::from_millis(100);
    timings.announce_period = Duration::from_millis(300);
    let cfg = MeshConfig {
        node_id: id.into(),
        region,
        cluster: "test".into(),
        listen: "127.0.0.1:0".parse().expect("literal"),
        advertise: None,
        seeds: vec![seed],
        profile: Profile::Lan,
        expected_size: 2,
        timings,
        fingerprint: 0,
    };
    Mesh::start(cfg, &tls, MeshMetrics::default()).expect("the member joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_refuses_and_counts_requests_its_config_does_not_cover() -> anyhow::Result<()> {
    let certs = MeshCerts::new("relay-refuse");
    certs.issue("b", "WEU");
    let o = origin_with("o", true).await;
    let o2 = origin_with("o2", true).await;
    let b = start(&certs, "b", "WEU", &[], &body(o.addr(), o2.addr())).await;
    let m = member(&certs, "m", switchyard_geo::Region::Wnam, mesh_addr(&b));
    eventually("b and the member see each other alive", WAIT, || async {
        sees_alive(&b, "m")
            && m.state()
                .borrow()
                .members
                .iter()
                .any(|x| x.id == "b" && x.state == switchyard_gossip::MemberState::Alive)
    })
    .await?;
    let ask = |lb: &str, pool: &str, origin: &str| RelayRequest {
        load_balancer: lb.into(),
        pool: pool.into(),
        origin: origin.into(),
        client: "192.0.2.7:51000".parse().expect("literal"),
        hops: 0,
    };
    let not_in_config = [
        ask("nope", "p", "o"),
        ask("relayed", "nope", "o"),
        ask("relayed", "p", "nope"),
        // o2 is in the config, in pool q, not p.
        ask("relayed", "p", "o2"),
        // solo uses pool q only.
        ask("solo", "p", "o"),
    ];
    for req in &not_in_config {
        match m.open_relay("b", req.clone()).await {
            Err(RelayError::Refused { reason, .. }) => {
                assert_eq!(reason, RefuseReason::NotInConfig, "{req:?}")
            }
            other => panic!("{req:?}: expected a refusal, got {other:?}"),
        }
    }
    match m.open_relay("b", ask("direct", "p", "o")).await {
        Err(RelayError::Refused { reason, .. }) => assert_eq!(reason, RefuseReason::NotRelaying),
        other => panic!("relay = off: expected a refusal, got {other:?}"),
    }
    let refused = |reason: &str| {
        metric(
            &b,
            &format!("switchyard_mesh_relay_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("not_in_config"), not_in_config.len() as u64);
    assert_eq!(refused("not_relaying"), 1);

    // What the config covers is carried to the origin, bytes unchanged: the asker writes the
    // PROXY header.
    let mut s = m.open_relay("b", ask("relayed", "p", "o")).await?;
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 443\r\n")
        .await?;
    let mut reader = BufReader::new(s);
    let greeting = tokio::time::timeout(WAIT, read_line(&mut reader)).await??;
    assert_eq!(greeting, "o client=192.0.2.7:51000");
    assert_eq!(o.last_proxy_source(), Some("192.0.2.7:51000".parse()?));
    drop(reader);

    m.leave().await;
    b.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_node_drains_relayed_connections_as_direct_ones() -> anyhow::Result<()> {
    let pair = pair("relay-drain").await?;
    let (a, b) = (&pair.a, &pair.b);
    let addr = app_addr(a, "relayed").await;
    // One connection ends by itself during the drain; the other stays open past it.
    let (mut ending, name) = greeted(addr).await?;
    assert_eq!(name, "o");
    let (mut staying, name) = greeted(addr).await?;
    assert_eq!(name, "o");
    eventually("b carries both", WAIT, || async {
        metric(
            b,
            "switchyard_relayed_connections_total{load_balancer=\"relayed\",peer=\"a\",role=\"carried\"}",
        ) == 2
    })
    .await?;
    let client = async {
        eventually("b is draining", WAIT, || async { !b.state().ready() }).await?;
        // Draining does not cut what is open: bytes still flow through b, and a half-close
        // still ends the connection cleanly.
        assert_eq!(
            echoed(&mut ending, "during the drain").await?,
            "during the drain"
        );
        ending.get_mut().shutdown().await?;
        let mut rest = String::new();
        tokio::time::timeout(WAIT, ending.read_to_string(&mut rest)).await??;
        assert_eq!(rest, "");
        anyhow::Ok(())
    };
    let (cut, served) = tokio::join!(b.shutdown(Duration::from_secs(5)), client);
    served?;
    assert_eq!(
        cut, 1,
        "the connection still open at the deadline is cut, the other ended"
    );
    // The cut reaches the client through a: its connection ends.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, staying.read_to_end(&mut rest)).await?;
    a.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
