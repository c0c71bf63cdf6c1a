//! The proxy as a client and an origin see it: PROXY headers, ip_rules, max_connections,
//! port ranges, session affinity, hash steering, half-close, reloads and the status document.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_node::{status, App, Config};
use switchyard_tests::harness::{
    app_addr, eventually, name_from, name_via, node, origin, origin_with,
};
use switchyard_tests::origin::{connect_from, read_line, TestOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

fn one_pool(
    origins: &[(&str, SocketAddr)],
    pool_extra: &str,
    lb_extra: &str,
    app_extra: &str,
) -> String {
    let list: Vec<String> = origins
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[[pool]]
name = "p"
origins = [{}]
{pool_extra}

[[load_balancer]]
name = "lb"
default_pools = ["p"]
{lb_extra}

[[app]]
name = "a"
listen = "127.0.0.1:0"
load_balancer = "lb"
{app_extra}
"#,
        list.join(", ")
    )
}

/// An app that sends PROXY headers of `version` to one origin that expects them.
async fn behind_proxy_protocol(version: &str) -> (TestOrigin, App, SocketAddr) {
    let o = origin_with("o", true).await;
    let app = node(&one_pool(
        &[("o", o.addr())],
        "",
        "",
        &format!("proxy_protocol = \"{version}\""),
    ))
    .await;
    let addr = app_addr(&app, "a").await;
    (o, app, addr)
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_carry_the_client_address() {
    for version in ["v1", "v2"] {
        let (o, _app, addr) = behind_proxy_protocol(version).await;
        let stream = connect_from(addr, Some("127.0.0.9".parse().unwrap()))
            .await
            .unwrap();
        let local = stream.local_addr().unwrap();
        let line = read_line(&mut BufReader::new(stream)).await.unwrap();
        assert_eq!(line.trim(), format!("o client={local}"), "{version}");
        assert_eq!(o.last_proxy_source(), Some(local), "{version}");
    }
}

/// A client that talks first (HTTP, TLS): its first bytes may reach the proxy before the
/// origin is chosen, and must still arrive after the PROXY header, once and in order.
#[tokio::test]
async fn a_client_that_talks_first_gets_header_then_its_bytes() {
    for version in ["v1", "v2"] {
        let (_o, app, addr) = behind_proxy_protocol(version).await;
        let mut stream = connect_from(addr, None).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream.write_all(b"early bytes").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, format!("o client={local}\nearly bytes"), "{version}");
        eventually("the bytes are counted", Duration::from_secs(5), || async {
            status::document(app.state()).apps[0].bytes_in == 11
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn ip_rules_refuse_denied_clients() {
    let o = origin("o").await;
    let app = node(&one_pool(
        &[("o", o.addr())],
        "",
        "",
        "ip_rules = { allow = [\"127.0.0.0/8\"], deny = [\"127.0.0.66\"] }",
    ))
    .await;
    let addr = app_addr(&app, "a").await;
    assert_eq!(
        name_from(addr, Some("127.0.0.1".parse().unwrap())).await,
        "o"
    );
    let refused = name_from(addr, Some("127.0.0.66".parse().unwrap())).await;
    assert!(refused.starts_with("error"), "{refused}");
    assert_eq!(
        o.connections(),
        1,
        "a denied client never reaches an origin"
    );
    let metrics = app.state().metrics.encode();
    assert!(
        metrics.contains("switchyard_connections_rejected_total{app=\"a\",reason=\"ip_rules\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn max_connections_closes_the_excess_and_frees_the_slot() {
    let o = origin("o").await;
    let app = node(&one_pool(&[("o", o.addr())], "", "", "max_connections = 2")).await;
    let addr = app_addr(&app, "a").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = connect_from(addr, None).await.unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_line(&mut r).await.unwrap().trim(), "o");
        held.push(r);
    }
    let third = name_via(addr).await;
    assert!(third.starts_with("error"), "{third}");
    held.pop();
    eventually(
        "a slot frees when a connection closes",
        Duration::from_secs(5),
        || async { name_via(addr).await == "o" },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_port_range_maps_edge_port_n_plus_k_to_origin_port_m_plus_k() {
    // Three origins on consecutive ports: find a free run of three.
    let (base, origins) = loop {
        // Bounded by the ports there are: a free run of three is found within a few tries.
        let first = origin("o0").await;
        let port = first.addr().port();
        let mut more = Vec::new();
        for k in 1..3u16 {
            let cfg = switchyard_tests::origin::OriginConfig {
                name: format!("o{k}"),
                listen: SocketAddr::from(([127, 0, 0, 1], port + k)),
                http: None,
                accept_proxy: false,
            };
            match switchyard_tests::origin::TestOrigin::start(cfg).await {
                Ok(o) => more.push(o),
                Err(_) => break,
            }
        }
        if more.len() == 2 {
            more.insert(0, first);
            break (port, more);
        }
    };
    // Another process (or this test's origins) may hold a port of the range: pick again.
    let mut started = None;
    for _ in 0..20 {
        let edge = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            drop(l);
            p.min(65000)
        };
        let cfg = format!(
            r#"[node]
id = "test-1"
region = "WEU"
status_listen = "127.0.0.1:0"

[[pool]]
name = "p"
origins = [{{ name = "o", address = "127.0.0.1:{base}" }}]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "range"
listen = "127.0.0.1:{edge}-{}"
load_balancer = "lb"
"#,
            edge + 2
        );
        let cfg = Config::parse(&cfg, None).unwrap();
        if let Ok(app) =
            switchyard_node::App::start(cfg, switchyard_node::StartOptions::default()).await
        {
            started = Some((app, edge));
            break;
        }
    }
    let (app, edge) = started.expect("a free run of three edge ports");
    let addrs = app.app_addrs("range").await;
    assert_eq!(addrs.len(), 3);
    for (k, a) in addrs.iter().enumerate() {
        assert_eq!(a.port(), edge + k as u16);
        assert_eq!(name_via(*a).await, format!("o{k}"));
    }
    drop(origins);
}

#[tokio::test]
async fn session_affinity_keeps_a_client_on_its_origin() {
    let o1 = origin("o1").await;
    let o2 = origin("o2").await;
    let o3 = origin("o3").await;
    let app = node(&one_pool(
        &[("o1", o1.addr()), ("o2", o2.addr()), ("o3", o3.addr())],
        "",
        "session_affinity = \"client_ip\"\naffinity_ttl = \"1h\"",
        "",
    ))
    .await;
    let addr = app_addr(&app, "a").await;
    for client in ["127.0.0.21", "127.0.0.22", "127.0.0.23"] {
        let from = Some(client.parse().unwrap());
        let first = name_from(addr, from).await;
        for _ in 0..10 {
            assert_eq!(name_from(addr, from).await, first, "client {client}");
        }
    }
}

#[tokio::test]
async fn hash_steering_sends_each_client_to_one_origin_and_spreads_clients() {
    let o1 = origin("o1").await;
    let o2 = origin("o2").await;
    let app = node(&one_pool(
        &[("o1", o1.addr()), ("o2", o2.addr())],
        "origin_steering = \"hash\"",
        "",
        "",
    ))
    .await;
    let addr = app_addr(&app, "a").await;
    let mut used = HashSet::new();
    for i in 1..=20 {
        let from = Some(format!("127.0.3.{i}").parse().unwrap());
        let first = name_from(addr, from).await;
        assert_eq!(name_from(addr, from).await, first);
        used.insert(first);
    }
    assert_eq!(used.len(), 2, "20 clients spread over both origins");
}

#[tokio::test]
async fn half_close_passes_through_and_bytes_are_counted() {
    let o = origin("o").await;
    let app = node(&one_pool(&[("o", o.addr())], "", "", "")).await;
    let addr = app_addr(&app, "a").await;
    let mut s = connect_from(addr, None).await.unwrap();
    s.write_all(b"hello, origin").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "o\nhello, origin");
    eventually(
        "the connection is counted",
        Duration::from_secs(5),
        || async {
            let s = status::document(app.state());
            let a = &s.apps[0];
            a.total == 1 && a.active == 0 && a.bytes_in == 13 && a.bytes_out == 15
        },
    )
    .await
    .unwrap();
}

fn two_pools(a: SocketAddr, b: SocketAddr, first: &str) -> String {
    format!(
        r#"[node]
id = "test-1"
region = "WEU"
status_listen = "127.0.0.1:0"

[[pool]]
name = "a"
origins = [{{ name = "a", address = "{a}" }}]

[[pool]]
name = "b"
origins = [{{ name = "b", address = "{b}" }}]

[[load_balancer]]
name = "lb"
default_pools = ["{first}"]

[[app]]
name = "app"
listen = "127.0.0.1:0"
load_balancer = "lb"
"#
    )
}

#[tokio::test]
async fn reload_takes_effect_for_new_connections_and_keeps_open_ones() {
    let a = origin("a").await;
    let b = origin("b").await;
    let dir = std::env::temp_dir().join(format!("sy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, two_pools(a.addr(), b.addr(), "a")).unwrap();
    let app = switchyard_node::App::start(
        Config::load(&path).unwrap(),
        switchyard_node::StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addr = app_addr(&app, "app").await;
    let mut open = BufReader::new(connect_from(addr, None).await.unwrap());
    assert_eq!(read_line(&mut open).await.unwrap().trim(), "a");

    // A broken config is refused with its location; the old one keeps serving.
    std::fs::write(
        &path,
        two_pools(a.addr(), b.addr(), "a").replace("default_pools", "default_pool"),
    )
    .unwrap();
    let err = app.reload_from_file().await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:", path.display())), "{err}");
    assert!(err.contains("default_pool"), "{err}");
    assert_eq!(name_via(addr).await, "a");
    std::fs::write(&path, two_pools(a.addr(), b.addr(), "nope")).unwrap();
    let err = app.reload_from_file().await.unwrap_err().to_string();
    assert!(
        err.contains("load_balancer \"lb\": default_pools: no [[pool]] is named \"nope\""),
        "{err}"
    );
    assert_eq!(name_via(addr).await, "a");

    // A valid one switches new connections; the open one keeps flowing.
    std::fs::write(&path, two_pools(a.addr(), b.addr(), "b")).unwrap();
    app.reload_from_file().await.unwrap();
    assert_eq!(
        app_addr(&app, "app").await,
        addr,
        "an unchanged listener is kept"
    );
    assert_eq!(name_via(addr).await, "b");
    open.get_mut().write_all(b"still here\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap().trim(), "still here");
    let metrics = app.state().metrics.encode();
    assert!(
        metrics.contains("switchyard_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn status_document_and_endpoints() {
    let o = origin("o").await;
    let app = node(&format!(
        r#"
[[monitor]]
name = "web"
type = "http"
port = {}
interval = "200ms"
timeout = "150ms"
expected_codes = "2xx"
expected_body = "ok"

[[pool]]
name = "p"
monitor = "web"
origins = [{{ name = "o", address = "{}" }}]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "a"
listen = "127.0.0.1:0"
load_balancer = "lb"
"#,
        o.http_addr().unwrap().port(),
        o.addr()
    ))
    .await;
    eventually(
        "the http monitor checks the origin",
        Duration::from_secs(5),
        || async {
            status::document(app.state()).pools[0].origins[0]
                .rtt_ms
                .is_some()
        },
    )
    .await
    .unwrap();
    o.set_http_status(503);
    eventually(
        "a 503 takes the origin down with its reason",
        Duration::from_secs(5),
        || async {
            let s = status::document(app.state());
            let row = &s.pools[0].origins[0];
            !row.healthy && row.reason.as_deref() == Some("status 503") && !s.pools[0].healthy
        },
    )
    .await
    .unwrap();
    o.set_http_status(200);
    eventually("it comes back", Duration::from_secs(5), || async {
        status::document(app.state()).pools[0].healthy
    })
    .await
    .unwrap();

    let fetched = status::fetch(app.status_addr()).await.unwrap();
    assert_eq!(fetched.node.id, "test-1");
    assert_eq!(fetched.node.region, "WEU");
    assert_eq!(fetched.apps[0].name, "a");
    assert_eq!(fetched.load_balancers[0].serving.as_deref(), Some("p"));
    assert!(fetched.pools[0].origins[0].last_change.is_some());
    let text = status::render(&fetched);
    for want in ["test-1", "WEU", "a", "lb", "p", "o"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    for (path, code) in [
        ("/live", 200),
        ("/ready", 200),
        ("/metrics", 200),
        ("/nope", 404),
    ] {
        let (got, body) = status::http_get(app.status_addr(), path).await.unwrap();
        assert_eq!(got, code, "{path}: {body}");
    }
    let (_, metrics) = status::http_get(app.status_addr(), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_origin_health_changes_total{pool=\"p\",origin=\"o\"} 2"),
        "{metrics}"
    );
}
