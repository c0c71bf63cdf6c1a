//! The mesh, in process: nodes on port 0 with certificates from a test CA converge on
//! membership, share what their monitors see, mark a killed node down and take it back under
//! a new generation, and merge again by themselves after a partition.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_node::{status, App, Config, StartOptions};
use switchyard_tests::harness::{eventually, origin, MeshCerts, FAST_TCP_MONITOR};

const WAIT: Duration = Duration::from_secs(20);

/// Node `id`'s config: its `[node]` and `[mesh]` sections, then `body`.
fn config(certs: &MeshCerts, id: &str, region: &str, seeds: &[SocketAddr], body: &str) -> Config {
    let text = format!("{}\n{body}", certs.node_toml(id, region, seeds));
    Config::parse(&text, None).unwrap()
}

fn pool(origin: SocketAddr, check_regions: &str) -> String {
    pool_of(&[("o", origin)], check_regions)
}

/// Pool `p` of `origins` (name, address) under a fast TCP monitor, behind load balancer `lb`.
fn pool_of(origins: &[(&str, SocketAddr)], check_regions: &str) -> String {
    let origins: Vec<String> = origins
        .iter()
        .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"{addr}\" }}"))
        .collect();
    let origins = origins.join(", ");
    format!(
        r#"{FAST_TCP_MONITOR}
[[pool]]
name = "p"
monitor = "tcp"
check_regions = [{check_regions}]
origins = [{origins}]

[[load_balancer]]
name = "lb"
default_pools = ["p"]
"#
    )
}

async fn start(cfg: Config) -> App {
    switchyard_tests::harness::init_logs();
    App::start(cfg, StartOptions::default()).await.unwrap()
}

fn mesh_addr(app: &App) -> SocketAddr {
    app.state().mesh.as_ref().unwrap().local_addr()
}

/// Member states as one node sees them, by id.
fn members(app: &App) -> Vec<(String, String, u64)> {
    status::document(app.state())
        .members
        .into_iter()
        .map(|m| (m.id, m.state, m.generation))
        .collect()
}

fn alive_count(app: &App) -> usize {
    members(app).iter().filter(|m| m.1 == "alive").count()
}

fn state_of(app: &App, id: &str) -> Option<String> {
    members(app).into_iter().find(|m| m.0 == id).map(|m| m.1)
}

fn origin_up(app: &App) -> bool {
    status::document(app.state()).pools[0].origins[0].healthy
}

fn observers(app: &App) -> Vec<String> {
    status::document(app.state()).pools[0].origins[0]
        .observers
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_see_what_one_monitor_sees() -> anyhow::Result<()> {
    let certs = MeshCerts::new("five");
    let mut o = origin("o").await;
    // Only the WNAM node probes; everyone else relies on the mesh.
    let body = pool(o.addr(), "\"WNAM\"");
    let ids = [
        ("n1", "WNAM"),
        ("n2", "WEU"),
        ("n3", "WEU"),
        ("n4", "SEAS"),
        ("n5", "SEAS"),
    ];
    for (id, region) in ids {
        certs.issue(id, region);
    }
    let first = start(config(&certs, "n1", "WNAM", &[], &body)).await;
    let seed = mesh_addr(&first);
    let mut apps = vec![first];
    for (id, region) in &ids[1..] {
        apps.push(start(config(&certs, id, region, &[seed], &body)).await);
    }
    for app in &apps {
        eventually("every node sees 5 alive members", WAIT, || async {
            alive_count(app) == 5
        })
        .await?;
    }
    let text = status::render(&status::document(apps[2].state()));
    for want in ["MEMBER", "n1", "n5", "alive", "POOL/ORIGIN", "p/o"] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    for app in &apps {
        eventually("every node has n1's row for the origin", WAIT, || async {
            observers(app) == ["n1"] && origin_up(app)
        })
        .await?;
    }
    o.stop().await;
    for app in &apps {
        eventually("the origin is down in every node's view", WAIT, || async {
            !origin_up(app)
        })
        .await?;
    }
    let s = status::document(apps[3].state());
    let row = &s.pools[0].origins[0];
    assert_eq!(row.region_health.get("WNAM"), Some(&false));
    assert_eq!(row.global_health, Some(false));
    o.restart().await?;
    for app in &apps {
        eventually("the origin is back up everywhere", WAIT, || async {
            origin_up(app)
        })
        .await?;
    }
    for app in &apps {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_marked_down_and_rejoins_under_a_new_generation() -> anyhow::Result<()> {
    let certs = MeshCerts::new("kill");
    let o = origin("o").await;
    let body = pool(o.addr(), "");
    for (id, region) in [("k1", "WNAM"), ("k2", "WEU"), ("k3", "SEAS")] {
        certs.issue(id, region);
    }
    let k1 = start(config(&certs, "k1", "WNAM", &[], &body)).await;
    let seed = mesh_addr(&k1);
    let k2 = start(config(&certs, "k2", "WEU", &[seed], &body)).await;
    let k3 = start(config(&certs, "k3", "SEAS", &[seed], &body)).await;
    for app in [&k1, &k2, &k3] {
        eventually("3 alive members", WAIT, || async { alive_count(app) == 3 }).await?;
        eventually("all three observe the origin", WAIT, || async {
            observers(app).len() == 3
        })
        .await?;
    }
    let old_generation = members(&k1).into_iter().find(|m| m.0 == "k3").unwrap().2;

    k3.kill().await;
    for app in [&k1, &k2] {
        eventually("k3 is marked down", WAIT, || async {
            state_of(app, "k3").as_deref() == Some("down")
        })
        .await?;
        eventually("k3's rows stop counting", WAIT, || async {
            observers(app) == ["k1", "k2"]
        })
        .await?;
    }

    let k3 = start(config(&certs, "k3", "SEAS", &[seed], &body)).await;
    for app in [&k1, &k2, &k3] {
        eventually(
            "k3 is alive again, once, with a new generation",
            WAIT,
            || async {
                let m = members(app);
                let k3s: Vec<_> = m.iter().filter(|m| m.0 == "k3").collect();
                k3s.len() == 1
                    && k3s[0].1 == "alive"
                    && k3s[0].2 > old_generation
                    && alive_count(app) == 3
            },
        )
        .await?;
        eventually("k3's rows count again", WAIT, || async {
            observers(app).len() == 3
        })
        .await?;
    }
    for app in [&k1, &k2, &k3] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_by_itself() -> anyhow::Result<()> {
    let certs = MeshCerts::new("part");
    let o = origin("o").await;
    let body = pool(o.addr(), "");
    for (id, region) in [("p1", "WNAM"), ("p2", "WEU"), ("p3", "SEAS")] {
        certs.issue(id, region);
    }
    let p1 = start(config(&certs, "p1", "WNAM", &[], &body)).await;
    let seed = mesh_addr(&p1);
    let p2 = start(config(&certs, "p2", "WEU", &[seed], &body)).await;
    let p3 = start(config(&certs, "p3", "SEAS", &[seed], &body)).await;
    let apps = [&p1, &p2, &p3];
    for app in apps {
        eventually("3 alive members", WAIT, || async { alive_count(app) == 3 }).await?;
    }
    fn faults(a: &App) -> &switchyard_gossip::transport::Faults {
        a.state().mesh.as_ref().unwrap().faults()
    }
    // Cut p3 off from both others, both ways, at the transport.
    faults(&p3).block(mesh_addr(&p1));
    faults(&p3).block(mesh_addr(&p2));
    faults(&p1).block(mesh_addr(&p3));
    faults(&p2).block(mesh_addr(&p3));
    for app in [&p1, &p2] {
        eventually("p3 is marked down", WAIT, || async {
            state_of(app, "p3").as_deref() == Some("down")
        })
        .await?;
    }
    eventually("p3 sees the others down", WAIT, || async {
        alive_count(&p3) == 1
    })
    .await?;
    // p3 keeps serving from its own view.
    assert!(origin_up(&p3));

    for app in apps {
        faults(app).heal_all();
    }
    for app in apps {
        let merged = eventually("the mesh merges again", WAIT, || async {
            alive_count(app) == 3
        })
        .await;
        if merged.is_err() {
            for a in apps {
                eprintln!("MEMBERS {:?}", members(a));
            }
        }
        merged?;
    }
    for app in apps {
        eventually("every view agrees again", WAIT, || async {
            observers(app).len() == 3
        })
        .await?;
    }
    for app in apps {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_nodes_whose_config_drifted() -> anyhow::Result<()> {
    let certs = MeshCerts::new("drift");
    let o = origin("o").await;
    for (id, region) in [("d1", "WNAM"), ("d2", "WEU")] {
        certs.issue(id, region);
    }
    let body = pool(o.addr(), "");
    // d2 probes more often: a different monitor, so a different fingerprint.
    let drifted = body.replace("interval = \"200ms\"", "interval = \"300ms\"");
    let d1 = start(config(&certs, "d1", "WNAM", &[], &body)).await;
    let seed = mesh_addr(&d1);
    let d2 = start(config(&certs, "d2", "WEU", &[seed], &drifted)).await;
    eventually("d1 lists d2 as drifted", WAIT, || async {
        let s = status::document(d1.state());
        s.drift.len() == 1 && s.drift[0].node == "d2"
    })
    .await?;
    // The same config everywhere: no drift.
    d2.shutdown(Duration::from_secs(1)).await;
    let d3 = {
        certs.issue("d3", "SEAS");
        start(config(&certs, "d3", "SEAS", &[seed], &body)).await
    };
    eventually("d3 joins", WAIT, || async {
        state_of(&d1, "d3").as_deref() == Some("alive")
    })
    .await?;
    eventually("only live drifted nodes are listed", WAIT, || async {
        status::document(d1.state()).drift.is_empty()
    })
    .await?;
    for app in [&d1, &d3] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// The LAN profile's own timings (no overrides), tuned for 50 nodes: a crashed node is
/// declared down within about 10 s, and a node that stalls for 2 s is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_timings_detect_a_crash_in_about_10s_and_tolerate_a_2s_stall() -> anyhow::Result<()>
{
    let certs = MeshCerts::new("defaults");
    let o = origin("o").await;
    let body = pool(o.addr(), "");
    for (id, region) in [("t1", "WNAM"), ("t2", "WEU"), ("t3", "SEAS")] {
        certs.issue(id, region);
    }
    // The default [mesh] timings: strip the fast overrides.
    let slow = |id: &str, region: &str, seeds: &[SocketAddr]| {
        let mut cfg = config(&certs, id, region, seeds, &body);
        if let Some(m) = cfg.mesh.as_mut() {
            m.probe_period = None;
            m.probe_timeout = None;
            m.suspect_timeout = None;
        }
        cfg
    };
    let t1 = start(slow("t1", "WNAM", &[])).await;
    let seed = mesh_addr(&t1);
    let t2 = start(slow("t2", "WEU", &[seed])).await;
    let t3 = start(slow("t3", "SEAS", &[seed])).await;
    for app in [&t1, &t2, &t3] {
        eventually("3 alive members", WAIT, || async { alive_count(app) == 3 }).await?;
    }

    // A 2 s stall: t3 neither sends nor receives, then resumes. Nobody may declare it down.
    fn faults(a: &App) -> &switchyard_gossip::transport::Faults {
        a.state().mesh.as_ref().unwrap().faults()
    }
    let stalled_at = tokio::time::Instant::now();
    for (a, b) in [(&t3, &t1), (&t3, &t2), (&t1, &t3), (&t2, &t3)] {
        faults(a).block(mesh_addr(b));
    }
    // Watch for the whole stall and a probe period after it.
    let mut saw_down = false;
    while stalled_at.elapsed() < Duration::from_secs(2) {
        saw_down |= state_of(&t1, "t3").as_deref() == Some("down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for app in [&t1, &t2, &t3] {
        faults(app).heal_all();
    }
    let resumed = tokio::time::Instant::now();
    while resumed.elapsed() < Duration::from_secs(5) {
        saw_down |= [&t1, &t2]
            .iter()
            .any(|a| state_of(a, "t3").as_deref() == Some("down"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!saw_down, "a 2 s stall made a node declare t3 down");
    for app in [&t1, &t2] {
        eventually("t3 is alive after the stall", WAIT, || async {
            state_of(app, "t3").as_deref() == Some("alive")
        })
        .await?;
    }

    // A crash: declared down by both others within about 10 s (12 s allowed).
    t3.kill().await;
    for app in [&t1, &t2] {
        eventually(
            "t3 is declared down within 12 s of the crash",
            Duration::from_secs(12),
            || async { state_of(app, "t3").as_deref() == Some("down") },
        )
        .await?;
    }
    for app in [&t1, &t2] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_certificate_expiry_is_a_metric() -> anyhow::Result<()> {
    let certs = MeshCerts::new("expiry");
    certs.issue("n1", "WNAM");
    let o = origin("o").await;
    let app = start(config(&certs, "n1", "WNAM", &[], &pool(o.addr(), ""))).await;
    let text = app.state().metrics.encode();
    let days: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_mesh_certificate_days_left "))
        .unwrap_or_else(|| panic!("no days-left gauge in:\n{text}"))
        .trim()
        .parse()?;
    // `cert issue` makes certificates good for two years.
    assert!((728.0..=731.0).contains(&days), "{days} days left");
    app.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A reload that removes an origin retracts this node's row for it: peers stop weighing a
/// DOWN verdict that nobody stands behind any more, instead of keeping it until the writer
/// restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_an_origin_retracts_its_row_on_peers() -> anyhow::Result<()> {
    let certs = MeshCerts::new("retract");
    let o = origin("o").await;
    // A port nothing listens on: the origin there is refused, so down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    for (id, region) in [("r1", "WNAM"), ("r2", "WEU")] {
        certs.issue(id, region);
    }
    let body = |with_dead: bool| {
        let mut origins = vec![("o", o.addr())];
        if with_dead {
            origins.push(("dead", dead));
        }
        pool_of(&origins, "\"WNAM\"")
    };
    let r1 = start(config(&certs, "r1", "WNAM", &[], &body(true))).await;
    let seed = mesh_addr(&r1);
    // r2 keeps `dead` in its config: only r1's retraction can clear it.
    let r2 = start(config(&certs, "r2", "WEU", &[seed], &body(true))).await;
    let observed = |app: &App, name: &str| -> Vec<(String, bool)> {
        status::document(app.state()).pools[0]
            .origins
            .iter()
            .find(|x| x.name == name)
            .map(|x| {
                x.observers
                    .iter()
                    .map(|(n, s)| (n.clone(), s.healthy))
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("r2 holds r1's DOWN row for dead", WAIT, || async {
        observed(&r2, "dead") == [("r1".to_string(), false)]
    })
    .await?;

    r1.reload(config(&certs, "r1", "WNAM", &[], &body(false)))
        .await?;
    eventually("r1's row for dead is gone from r2's view", WAIT, || async {
        observed(&r2, "dead").is_empty()
    })
    .await?;
    // Only the removed origin's row went: r1 still speaks for `o`.
    assert_eq!(observed(&r2, "o"), [("r1".to_string(), true)]);
    for app in [&r1, &r2] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Node `app`'s status row for origin `name` of the first pool.
fn origin_status(app: &App, name: &str) -> status::OriginStatus {
    status::document(app.state()).pools[0]
        .origins
        .iter()
        .find(|o| o.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no origin {name} in the status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_path_to_an_origin_is_cut_blames_the_path_and_the_others_keep_serving_it(
) -> anyhow::Result<()> {
    let certs = MeshCerts::new("verdict-path");
    let o = origin("o").await;
    // v1's way to `o` is cut: its config has `o` at a port nothing listens on, so it is
    // refused from there, while the others reach it. Asks name the origin, never an address,
    // so the peers probe `o` where they know it to be.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let ids = [("v1", "WNAM"), ("v2", "WEU"), ("v3", "SEAS")];
    for (id, region) in ids {
        certs.issue(id, region);
    }
    let app = "\n[[app]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nload_balancer = \"lb\"\n";
    let cut = pool_of(&[("o", dead)], "") + app;
    let v1 = start(config(&certs, "v1", "WNAM", &[], &cut)).await;
    let seed = mesh_addr(&v1);
    let body = pool_of(&[("o", o.addr())], "") + app;
    let v2 = start(config(&certs, "v2", "WEU", &[seed], &body)).await;
    let v3 = start(config(&certs, "v3", "SEAS", &[seed], &body)).await;
    for app in [&v1, &v2, &v3] {
        eventually("every node sees 3 alive members", WAIT, || async {
            alive_count(app) == 3
        })
        .await?;
    }
    eventually("v1's verdict on o is: the path", WAIT, || async {
        origin_status(&v1, "o").verdict.as_deref() == Some("path")
    })
    .await?;
    let mine = origin_status(&v1, "o");
    assert!(!mine.healthy, "v1 cannot reach o: it must not use it");
    // Whoever was a member when v1's probe first failed was asked (v3 may have joined
    // after), and every one of them reached o.
    assert!(
        !mine.asked.is_empty() && mine.asked.values().all(|said| said.starts_with("up ")),
        "{mine:?}"
    );
    let s = status::document(v1.state());
    assert!(s.node.sick.is_none(), "one origin is not a sick node");
    // The others take v1's row as regional: WNAM's view is down, global health up, and
    // they keep serving o.
    for app in [&v2, &v3] {
        eventually("v1's path row reaches the peer", WAIT, || async {
            origin_status(app, "o")
                .observers
                .get("v1")
                .is_some_and(|x| x.verdict.as_deref() == Some("path"))
        })
        .await?;
        let row = origin_status(app, "o");
        assert!(row.healthy, "{row:?}");
        assert_eq!(row.global_health, Some(true), "{row:?}");
        assert_eq!(row.region_health.get("WNAM"), Some(&false), "{row:?}");
        let served = switchyard_tests::harness::name_via(
            switchyard_tests::harness::app_addr(app, "a").await,
        )
        .await;
        assert_eq!(served, "o");
    }
    // The explanation says why v1 still uses o: its load balancer relays (the default), so
    // a path down from v1 alone keeps o, reached through a peer (tests/tests/relay.rs).
    eventually("v1 explains o kept, its path relayed", WAIT, || async {
        v1.state()
            .explain("lb", "127.0.0.1".parse().expect("literal"))
            .is_ok_and(|e| e.steps.join("\n").contains("kept, its path relayed"))
    })
    .await?;

    // The path heals (v1's config is fixed): the row comes up and the verdict goes.
    v1.reload(config(&certs, "v1", "WNAM", &[], &body)).await?;
    eventually("v1 sees o up again, without a verdict", WAIT, || async {
        let row = origin_status(&v1, "o");
        row.healthy && row.verdict.is_none() && row.asked.is_empty()
    })
    .await?;
    for app in [&v1, &v2, &v3] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_disagrees_with_the_mesh_about_most_origins_is_sick_and_stops_voting(
) -> anyhow::Result<()> {
    let certs = MeshCerts::new("verdict-sick");
    let (a, b) = (origin("a").await, origin("b").await);
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .collect::<Result<_, _>>()?;
    for (id, region) in [("s1", "WNAM"), ("s2", "WEU"), ("s3", "SEAS")] {
        certs.issue(id, region);
    }
    // s1 reaches neither origin; s2 and s3 reach both.
    let broken = pool_of(&[("a", dead[0]), ("b", dead[1])], "");
    let good = pool_of(&[("a", a.addr()), ("b", b.addr())], "");
    let s1 = start(config(&certs, "s1", "WNAM", &[], &broken)).await;
    let seed = mesh_addr(&s1);
    let s2 = start(config(&certs, "s2", "WEU", &[seed], &good)).await;
    let s3 = start(config(&certs, "s3", "SEAS", &[seed], &good)).await;
    eventually("s1 finds itself sick", WAIT, || async {
        status::document(s1.state()).node.sick.is_some()
    })
    .await?;
    let s = status::document(s1.state());
    let sick = s.node.sick.clone().unwrap();
    assert_eq!((sick.path_down, sick.checked), (2, 2), "{sick:?}");
    // It steers with the mesh's view: both origins up, its own rows set aside.
    for name in ["a", "b"] {
        let row = origin_status(&s1, name);
        assert!(row.healthy, "{row:?}");
        assert_eq!(row.verdict.as_deref(), Some("path"));
        assert!(!row.observers.contains_key("s1"), "{row:?}");
    }
    let (code, body) = status::http_get(s1.status_addr(), "/ready").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sick"), "{body}");
    // It stops voting: its rows are withdrawn from the others' views.
    for app in [&s2, &s3] {
        eventually("s1's rows are withdrawn from the peer", WAIT, || async {
            ["a", "b"]
                .iter()
                .all(|n| !origin_status(app, n).observers.contains_key("s1"))
                && alive_count(app) == 3
        })
        .await?;
    }
    // Fixed, it agrees with the mesh again: well, ready, and voting.
    s1.reload(config(&certs, "s1", "WNAM", &[], &good)).await?;
    eventually("s1 is well again", WAIT, || async {
        status::document(s1.state()).node.sick.is_none()
    })
    .await?;
    eventually("s1's rows count again on s2", WAIT, || async {
        origin_status(&s2, "a")
            .observers
            .get("s1")
            .is_some_and(|x| x.healthy)
    })
    .await?;
    let (code, body) = status::http_get(s1.status_addr(), "/ready").await?;
    assert_eq!(code, 200, "{body}");
    for app in [&s1, &s2, &s3] {
        app.shutdown(Duration::from_secs(1)).await;
    }
    Ok(())
}
