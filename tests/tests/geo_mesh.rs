//! Steering across a three-region mesh, in process: three nodes (WNAM, WEU, SEAS) with a GeoIP
//! database that places 127.0.1.0/24 in California, 127.0.2.0/24 in Germany and 127.0.3.0/24
//! in Singapore, and three pools of test origins probed over HTTP. Geo steering sends a client
//! to its region's pool whichever node it reaches; dynamic steering follows the RTT the client
//! region's observers measure, as the mesh shares it; hash steering sends a client to the same
//! origin on every node and, when an origin fails, moves only that origin's clients.
//!
//! Regions, pools, client networks, the GeoIP data and the geo load balancer are the testnet's
//! (`switchyard_tests::topology`, loopback layout); the nodes run in process on port 0.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use switchyard_node::status::{self, Status};
use switchyard_node::{App, Config, StartOptions};
use switchyard_tests::harness::{app_addr, eventually, name_from, MeshCerts};
use switchyard_tests::origin::{OriginConfig, TestOrigin};
use switchyard_tests::topology::{self as testnet, Mode, Topology};

/// For membership and health to converge.
const WAIT: Duration = Duration::from_secs(30);
/// For RTT averages (EWMA, 0.3 per 200 ms probe) to rank pools anew, and the mesh to share
/// them; generous, since two cores run three meshes at once.
const RTT_WAIT: Duration = Duration::from_secs(60);

/// The testnet's three pools, each in one region, with its coordinates.
const POOLS: [(&str, f64, f64); 3] = {
    let p = testnet::POOLS;
    [
        (p[0].0, p[0].2, p[0].3),
        (p[1].0, p[1].2, p[1].3),
        (p[2].0, p[2].2, p[2].3),
    ]
};

/// Nodes by id suffix and region; the pool of the same index is that region's.
const REGIONS: [&str; 3] = testnet::REGION_NAMES;

/// A client address in region `r` (index into `REGIONS`): host `host` of the testnet's client
/// network of that region (127.0.{r+1}.0/24), which its GeoIP data places there.
fn client(r: usize, host: u8) -> IpAddr {
    let topo = Topology::new(Mode::Loopback);
    let c = topo
        .client(REGIONS[r])
        .expect("a client network per region");
    match c.ip {
        IpAddr::V4(ip) => {
            let [a, b, n, _] = ip.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, n, host))
        }
        IpAddr::V6(_) => unreachable!("the testnet's clients are IPv4"),
    }
}

// ---------------------------------------------------------------------------------------------
// A temporary directory with the mesh certificates and the GeoIP database.

struct Scratch {
    certs: MeshCerts,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let certs = MeshCerts::new(&format!("geo-{tag}"));
        // A database built for private networks may cover loopback clients.
        let rows = Topology::new(Mode::Loopback).geo_rows().join("\n");
        switchyard_geo::geoip::build(&rows, &certs.dir.join("geo.mmdb")).unwrap();
        Scratch { certs }
    }
    fn geo_db(&self) -> PathBuf {
        self.certs.dir.join("geo.mmdb")
    }
}

// ---------------------------------------------------------------------------------------------
// Test origins. A monitor's `port` applies to every origin it checks, so every origin listens
// on the same two ports, each on its own loopback address: data on `data_port`, HTTP health
// on `http_port`.

struct Origins {
    list: Vec<TestOrigin>,
    /// The address each origin's data listener is on, by index in `list`.
    addrs: Vec<SocketAddr>,
    per_pool: usize,
    http_port: u16,
}

impl Origins {
    /// `per_pool` origins for each pool; pool `i`'s origin `k` (from 1) is named `{pool}-{k}`
    /// and listens on 127.0.{base + i + 1}.{k}.
    async fn start(base: u8, per_pool: usize) -> anyhow::Result<Origins> {
        let mut last_error = None;
        for _ in 0..20 {
            // A port free on 127.0.0.1 is very likely free on the other loopback addresses;
            // when it is not, try another.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if port == u16::MAX {
                continue;
            }
            let mut list = Vec::new();
            let mut addrs = Vec::new();
            let mut failed = false;
            for (i, (pool, ..)) in POOLS.iter().enumerate() {
                for k in 1..=per_pool {
                    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, base + i as u8 + 1, k as u8));
                    let listen = SocketAddr::new(ip, port);
                    match TestOrigin::start(OriginConfig {
                        name: format!("{pool}-{k}"),
                        listen,
                        http: Some(SocketAddr::new(ip, port + 1)),
                        accept_proxy: false,
                    })
                    .await
                    {
                        Ok(o) => {
                            list.push(o);
                            addrs.push(listen);
                        }
                        Err(e) => {
                            last_error = Some(e);
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break;
                }
            }
            if !failed {
                return Ok(Origins {
                    list,
                    addrs,
                    per_pool,
                    http_port: port + 1,
                });
            }
        }
        anyhow::bail!("no port pair free on every origin address: {last_error:?}")
    }

    fn get_mut(&mut self, name: &str) -> &mut TestOrigin {
        self.list.iter_mut().find(|o| o.name() == name).unwrap()
    }

    /// Sets the HTTP delay of every origin of `pool`.
    fn delay_pool(&self, pool: &str, delay: Duration) {
        for o in self.list.iter().filter(|o| pool_of(o.name()) == pool) {
            o.set_http_delay(delay);
        }
    }

    /// The monitor and the three pools, with `origin_steering`.
    fn config(&self, origin_steering: &str) -> String {
        let mut s = format!(
            r#"
[[monitor]]
name = "http"
type = "http"
port = {}
interval = "200ms"
timeout = "150ms"
retries = 1
consecutive_down = 2
"#,
            self.http_port
        );
        for (i, (pool, lat, lon)) in POOLS.iter().enumerate() {
            let origins: Vec<String> = (0..self.per_pool)
                .map(|k| {
                    let idx = i * self.per_pool + k;
                    format!(
                        r#"{{ name = "{}", address = "{}" }}"#,
                        self.list[idx].name(),
                        self.addrs[idx]
                    )
                })
                .collect();
            s.push_str(&format!(
                r#"
[[pool]]
name = "{pool}"
monitor = "http"
origin_steering = "{origin_steering}"
latitude = {lat}
longitude = {lon}
origins = [{}]
"#,
                origins.join(", ")
            ));
        }
        s
    }
}

/// The pool an origin (or a greeting, `weu-2`) belongs to.
fn pool_of(origin: &str) -> &str {
    origin.split('-').next().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Nodes.

fn node_config(
    id: &str,
    region: &str,
    scratch: &Scratch,
    seeds: &[SocketAddr],
    body: &str,
) -> Config {
    let text = format!(
        "{}\n{body}\n\n[geo]\ndatabase = \"{}\"\n",
        scratch.certs.node_toml(id, region, seeds),
        scratch.geo_db().display(),
    );
    Config::parse(&text, None).unwrap()
}

/// Starts one node per region, ids `{tag}1` (WNAM), `{tag}2` (WEU), `{tag}3` (SEAS); the first
/// is the others' seed. Waits until every node sees all three alive and every origin observed
/// by all three and up.
async fn mesh(tag: &str, scratch: &Scratch, body: &str) -> anyhow::Result<Vec<App>> {
    switchyard_tests::harness::init_logs();
    let ids: Vec<String> = (1..=3).map(|i| format!("{tag}{i}")).collect();
    for (id, region) in ids.iter().zip(REGIONS) {
        scratch.certs.issue(id, region);
    }
    let mut apps: Vec<App> = Vec::new();
    for (id, region) in ids.iter().zip(REGIONS) {
        let seeds: Vec<SocketAddr> = apps.first().map(mesh_addr).into_iter().collect();
        let cfg = node_config(id, region, scratch, &seeds, body);
        apps.push(App::start(cfg, StartOptions::default()).await?);
    }
    for app in &apps {
        eventually("every node sees 3 alive members", WAIT, || async {
            alive_count(app) == 3
        })
        .await?;
    }
    for app in &apps {
        eventually(
            "every origin is up and observed by all 3 nodes",
            WAIT,
            || async {
                doc(app).pools.iter().flat_map(|p| &p.origins).all(|o| {
                    o.healthy && o.observers.len() == 3 && o.observers.values().all(|s| s.healthy)
                })
            },
        )
        .await?;
    }
    Ok(apps)
}

fn mesh_addr(app: &App) -> SocketAddr {
    app.state().mesh.as_ref().unwrap().local_addr()
}

fn doc(app: &App) -> Status {
    status::document(app.state())
}

fn alive_count(app: &App) -> usize {
    doc(app)
        .members
        .iter()
        .filter(|m| m.state == "alive")
        .count()
}

fn id_of(app: &App) -> String {
    doc(app).node.id
}

async fn shutdown(apps: &[App]) {
    for app in apps {
        app.shutdown(Duration::from_secs(1)).await;
    }
}

/// The origin that app `name` on `app` sends a client at `from` to (its greeting), or an
/// error string.
async fn origin_for(app: &App, name: &str, from: IpAddr) -> String {
    name_from(app_addr(app, name).await, Some(from)).await
}

// ---------------------------------------------------------------------------------------------
// Geo steering.

/// The testnet's geo load balancer, and an app `geo` on port 0 in front of it.
fn geo_lb() -> String {
    let topo = Topology::new(Mode::Loopback);
    let lb = topo
        .load_balancer("geo")
        .expect("the testnet has a geo load balancer");
    let app = toml::Table::from_iter([
        ("name".to_string(), "geo".into()),
        ("listen".to_string(), "127.0.0.1:0".into()),
        ("load_balancer".to_string(), "geo".into()),
    ]);
    let doc = toml::Table::from_iter([
        (
            "load_balancer".to_string(),
            toml::Value::Array(vec![Topology::load_balancer_toml(lb).into()]),
        ),
        ("app".to_string(), toml::Value::Array(vec![app.into()])),
    ]);
    format!(
        "\n{}",
        toml::to_string(&doc).expect("TOML tables serialize")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_sends_each_client_to_its_regions_pool_on_every_node() -> anyhow::Result<()> {
    let scratch = Scratch::new("geo");
    let origins = Origins::start(10, 2).await?;
    let body = format!("{}{}", origins.config("random"), geo_lb());
    let apps = mesh("g", &scratch, &body).await?;

    // Every region's clients, on every node, whatever the node's own region.
    for (n, app) in apps.iter().enumerate() {
        for (r, (pool, ..)) in POOLS.iter().enumerate() {
            for host in [7, 200] {
                let from = client(r, host);
                let got = origin_for(app, "geo", from).await;
                assert_eq!(
                    pool_of(&got),
                    *pool,
                    "a {} client ({from}) on the {} node got {got:?}",
                    REGIONS[r],
                    REGIONS[n]
                );
            }
        }
    }
    // The cases named in the brief, spelled out.
    assert!(origin_for(&apps[0], "geo", client(1, 9))
        .await
        .starts_with("weu-"));
    assert!(origin_for(&apps[1], "geo", client(2, 9))
        .await
        .starts_with("seas-"));

    // Explain says where the client is and how the node knows.
    for app in &apps {
        let e = app
            .state()
            .explain("geo", client(1, 9))
            .map_err(anyhow::Error::msg)?;
        assert_eq!(e.region.as_deref(), Some("WEU"), "{e:?}");
        assert_eq!(e.located_by, "database", "{e:?}");
        assert_eq!(e.country.as_deref(), Some("DE"), "{e:?}");
        assert_eq!(e.pool.as_deref(), Some("weu"), "{e:?}");

        let e = app
            .state()
            .explain("geo", client(0, 9))
            .map_err(anyhow::Error::msg)?;
        assert_eq!(e.region.as_deref(), Some("WNAM"), "{e:?}");
        assert_eq!(e.located_by, "database", "{e:?}");
        assert_eq!(
            (e.country.as_deref(), e.subdivision.as_deref()),
            (Some("US"), Some("CA")),
            "{e:?}"
        );
        assert_eq!(e.pool.as_deref(), Some("wnam"), "{e:?}");

        let e = app
            .state()
            .explain("geo", client(2, 9))
            .map_err(anyhow::Error::msg)?;
        assert_eq!(e.region.as_deref(), Some("SEAS"), "{e:?}");
        assert_eq!(e.located_by, "database", "{e:?}");
        assert_eq!(e.pool.as_deref(), Some("seas"), "{e:?}");
    }
    let geo = doc(&apps[0]).geo.unwrap();
    assert_eq!(geo.layout.as_deref(), Some("Switchyard"), "{geo:?}");
    shutdown(&apps).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dynamic steering.

const DYNAMIC_LB: &str = r#"
[[load_balancer]]
name = "dyn"
steering = "dynamic"
default_pools = ["wnam", "weu", "seas"]

[[app]]
name = "dyn"
listen = "127.0.0.1:0"
load_balancer = "dyn"
"#;

/// As `app` sees the mesh: for each observer (node id), the mean RTT in ms it measured to each
/// pool's origins. None until every origin has an RTT from all three observers.
fn rtt_table(app: &App) -> Option<BTreeMap<String, BTreeMap<String, f64>>> {
    let s = doc(app);
    let mut table: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for p in &s.pools {
        if p.origins.is_empty() {
            return None;
        }
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for o in &p.origins {
            if o.observers.len() != 3 {
                return None;
            }
            for (node, obs) in &o.observers {
                *sums.entry(node.clone()).or_default() += obs.rtt_ms?;
            }
        }
        for (node, sum) in sums {
            table
                .entry(node)
                .or_default()
                .insert(p.name.clone(), sum / p.origins.len() as f64);
        }
    }
    (table.len() == 3).then_some(table)
}

/// The pools by RTT from `observer`'s measurements, lowest first.
fn ranking(rtts: &BTreeMap<String, f64>) -> Vec<String> {
    let mut pools: Vec<(&String, f64)> = rtts.iter().map(|(p, r)| (p, *r)).collect();
    pools.sort_by(|a, b| a.1.total_cmp(&b.1));
    pools.into_iter().map(|(p, _)| p.clone()).collect()
}

/// Whether, in every node's view, every observer ranks the pools as `want` (lowest RTT first).
fn ranked_everywhere(apps: &[App], want: impl Fn(&[String]) -> bool) -> bool {
    apps.iter()
        .all(|app| rtt_table(app).is_some_and(|t| t.values().all(|rtts| want(&ranking(rtts)))))
}

/// The pool with the lowest RTT from the WEU observer, as `app` sees it.
fn best_from_weu(app: &App, weu_node: &str) -> Option<String> {
    rtt_table(app)?
        .get(weu_node)
        .and_then(|rtts| ranking(rtts).into_iter().next())
}

fn print_rtts(apps: &[App]) {
    for app in apps {
        eprintln!("RTT view of {}: {:?}", id_of(app), rtt_table(app));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_follows_the_rtt_the_clients_region_measures() -> anyhow::Result<()> {
    let scratch = Scratch::new("dyn");
    let origins = Origins::start(20, 2).await?;
    let body = format!("{}{DYNAMIC_LB}", origins.config("random"));
    let apps = mesh("d", &scratch, &body).await?;
    let weu_node = id_of(&apps[1]);
    let weu_client = client(1, 42);

    // weu answers probes slowly, seas a little slowly: from every region, weu is the slowest
    // and wnam the fastest. (seas's delay only keeps wnam and seas from being a tie of noise.)
    origins.delay_pool("weu", Duration::from_millis(60));
    origins.delay_pool("seas", Duration::from_millis(20));
    let shown = eventually(
        "every node's view: from every region weu has the highest RTT, wnam the lowest",
        RTT_WAIT,
        || async { ranked_everywhere(&apps, |r| r == ["wnam", "seas", "weu"]) },
    )
    .await;
    if shown.is_err() {
        print_rtts(&apps);
    }
    shown?;

    for app in &apps {
        let id = id_of(app);
        // The view steering reads is published with the rows status reads; allow for the
        // moment between the two.
        eventually(
            &format!("a WEU client on {id} goes to the pool with the lowest RTT from WEU"),
            WAIT,
            || async {
                let best = best_from_weu(app, &weu_node);
                let got = origin_for(app, "dyn", weu_client).await;
                best.as_deref() == Some(pool_of(&got))
            },
        )
        .await?;
        for _ in 0..5 {
            let best = best_from_weu(app, &weu_node);
            let got = origin_for(app, "dyn", weu_client).await;
            assert_ne!(pool_of(&got), "weu", "on {id}: {got:?}");
            // wnam and seas are far apart, but a loaded machine can stall a probe; compare
            // only when the ranking held still around the connection.
            if best == best_from_weu(app, &weu_node) {
                assert_eq!(Some(pool_of(&got)), best.as_deref(), "on {id}: {got:?}");
            }
        }
        let e = app
            .state()
            .explain("dyn", weu_client)
            .map_err(anyhow::Error::msg)?;
        assert_eq!(e.region.as_deref(), Some("WEU"), "{e:?}");
        assert_ne!(e.pool.as_deref(), Some("weu"), "{e:?}");
        let reason = e.pool_reason.unwrap_or_default();
        assert!(reason.starts_with("lowest RTT from WEU"), "{reason}");
    }

    // Now weu is fast and the others slow.
    origins.delay_pool("weu", Duration::ZERO);
    origins.delay_pool("wnam", Duration::from_millis(60));
    origins.delay_pool("seas", Duration::from_millis(60));
    let shown = eventually(
        "every node's view: from every region weu has the lowest RTT",
        RTT_WAIT,
        || async { ranked_everywhere(&apps, |r| r[0] == "weu") },
    )
    .await;
    if shown.is_err() {
        print_rtts(&apps);
    }
    shown?;
    for app in &apps {
        let id = id_of(app);
        eventually(
            &format!("a WEU client on {id} goes to weu"),
            WAIT,
            || async { pool_of(&origin_for(app, "dyn", weu_client).await) == "weu" },
        )
        .await?;
        for _ in 0..5 {
            let got = origin_for(app, "dyn", weu_client).await;
            assert_eq!(pool_of(&got), "weu", "on {id}: {got:?}");
        }
    }
    shutdown(&apps).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hash steering.

/// Every client's origin on every node: `[node][client]`, clients in the order of `clients`.
async fn origins_seen(apps: &[App], clients: &[IpAddr]) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    for app in apps {
        let mut row = Vec::new();
        for c in clients {
            row.push(origin_for(app, "geo", *c).await);
        }
        seen.push(row);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_clients_on_one_origin_mesh_wide_and_moves_only_a_failed_origins(
) -> anyhow::Result<()> {
    let scratch = Scratch::new("hash");
    // Three origins a pool, so that a failed origin's clients have a choice to make.
    let mut origins = Origins::start(30, 3).await?;
    let body = format!("{}{}", origins.config("hash"), geo_lb());
    let apps = mesh("h", &scratch, &body).await?;

    let clients: Vec<IpAddr> = (0..3)
        .flat_map(|r| (0..20).map(move |h| client(r, 100 + h)))
        .collect();
    let before = origins_seen(&apps, &clients).await;
    for (i, c) in clients.iter().enumerate() {
        let want_pool = POOLS[i / 20].0;
        assert_eq!(pool_of(&before[0][i]), want_pool, "{c}: {:?}", before[0][i]);
        for (n, row) in before.iter().enumerate() {
            assert_eq!(row[i], before[0][i], "{c}: node {n} disagrees with node 0");
        }
    }
    // Each pool's clients spread over more than one origin, or the test below proves little.
    for (r, (pool, ..)) in POOLS.iter().enumerate() {
        let mut used: Vec<&String> = before[0][r * 20..(r + 1) * 20].iter().collect();
        used.sort();
        used.dedup();
        assert!(used.len() > 1, "all of {pool}'s clients on {used:?}");
    }

    // Stop the origin of the first WEU client.
    let victim = before[0][20].clone();
    assert_eq!(pool_of(&victim), "weu");
    origins.get_mut(&victim).stop().await;
    for app in &apps {
        eventually(
            &format!("{victim} is down in every region, in every node's view"),
            WAIT,
            || async {
                doc(app)
                    .pools
                    .iter()
                    .flat_map(|p| &p.origins)
                    .find(|o| o.name == victim)
                    .is_some_and(|o| {
                        !o.healthy
                            && o.region_health.len() == 3
                            && o.region_health.values().all(|up| !up)
                    })
            },
        )
        .await?;
    }

    let after = origins_seen(&apps, &clients).await;
    let mut moved = 0;
    for (i, c) in clients.iter().enumerate() {
        let old = &before[0][i];
        for (n, row) in after.iter().enumerate() {
            let new = &row[i];
            if *old == victim {
                assert_ne!(new, old, "{c} on node {n} still on the stopped origin");
                assert_eq!(
                    pool_of(new),
                    "weu",
                    "{c} on node {n} left its pool: {new:?}"
                );
            } else {
                assert_eq!(new, old, "{c} on node {n} moved though its origin is up");
            }
            assert_eq!(*new, after[0][i], "{c}: node {n} disagrees with node 0");
        }
        moved += usize::from(*old == victim);
    }
    assert!(moved > 0);
    shutdown(&apps).await;
    Ok(())
}
