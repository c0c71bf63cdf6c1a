//! End-to-end scenarios on the WAN testbed (root only: skipped otherwise), on the testnet's
//! topology in WAN mode (`switchyard_tests::topology`) with the variations these scenarios need
//! (see [`topology`]: faster mesh timings, a monitor that tolerates slow links, three load
//! balancers of their own). The real
//! `switchyard` binary runs as one node per region (WNAM, WEU, SEAS at 10.250.<r>.1) inside the
//! testbed's namespaces, joined by `wan-emu` (WNAM-WEU 75 ms, WNAM-SEAS 160 ms, WEU-SEAS
//! 170 ms round trip), in front of two `test-origin` processes per region (.11 and .12, data on
//! 7000, HTTP health on 7080). Clients connect from each region's .100 address, which a GeoIP
//! database built for the test places in the US (California: WNAM), Germany (WEU) and
//! Singapore (SEAS), and read the greeting of the origin that served them.
//!
//! 1. Dynamic steering follows the latency the client's region measures, when the WAN changes.
//! 2. Geo steering sends a client to its region's pool, whichever region's node it reaches.
//! 3. Failover across regions when a region's origins die, within the monitor's bound, and back.
//! 4. A partition: the cut-off node keeps serving its own clients from its own view, the others
//!    mark it down, and after healing the mesh merges by itself and the views agree.
//! 5. Node loss: a client retries through another node; the node restarts and rejoins under its
//!    id with a higher generation, and no node declares the running new incarnation down.
//! 6. A path cut: edge-wnam alone loses its path to WEU's origins (iptables rules in WNAM's
//!    namespace; the mesh stays up). Its own rows for them go down with the verdict "path"
//!    (it asked peers in other regions, who reach them); its apps, which relay by default,
//!    keep weu for its clients and serve them through a peer (explain: via the peer, direct
//!    path down), and the other nodes keep the rows up and keep serving the weu pool; after
//!    healing its rows come back up and the verdict clears. Needs `iptables` (CI installs it).
//! 7. A revoked node: `switchyard cert revoke` lists edge-seas, the two other nodes reload
//!    (SIGHUP) with that list. They drop edge-seas from the mesh and its rows from their views,
//!    refuse it (counted as `revoked`), and keep serving every pool from their own probes;
//!    edge-seas, cut off, declares them down. Emptying the list and reloading lets it back.
//! 8. A lying member: `mesh-liar`, holding a valid certificate of the cluster (for WEU), joins
//!    from WEU's client address and tells edge-wnam, across the WAN, that edge-weu's origins
//!    are down (a forged delta, and one from the far future), that edge-weu is down (SWIM
//!    updates at the maximum and the next generation), about 300 made-up members, and speaks
//!    for a region its certificate does not name. Each is refused and counted by its reason;
//!    edge-weu stays alive under its generation on every node, its rows stay up, no made-up
//!    member is listed anywhere, and every region's clients are served as before.
//! 9. DNS: a WEU client resolving through any node (dig, from its namespace) gets edge-weu
//!    first. Kill edge-weu: within the mesh's detection time every node answers without it,
//!    and the client's next connection to the first answered address is served. Bring it back:
//!    it is first again. Point one app of edge-seas at a pool only edge-seas has, which is
//!    down: edge-seas drops out of that app's answers, on every node, and stays in the others'.
//! 10. Relay around a cut link: the relay app (pool weu only, `relay = "fastest"`) serves a
//!     WNAM client on edge-wnam directly. `wan cut WNAM WEU`: once edge-wnam finds its own
//!     path down, its explain shows the path via edge-seas (direct path down), and each new
//!     connection is served by a weu origin while edge-seas counts one more relay stream from
//!     edge-wnam (`switchyard_mesh_relay_streams_total{peer="edge-wnam",direction="received"}`).
//!     Healed, and past the hold-down, the path is direct again and new connections add no
//!     relay stream.
//! 11. Relay around a slow link: `wan set WNAM WEU 400ms` makes the path through edge-seas
//!     (160 + 170 ms) faster by more than the margin; once the round trips catch up and the
//!     hold-down of the direct path ends, new connections go through edge-seas (explain: faster
//!     through the peer; counted as in 10), while edge-wnam's own probes still find weu up.
//!     Set back to 75 ms, they go direct again after the hold-down.
//! 12. Relay requests a peer refuses: `mesh-liar relay`, a real member holding a valid
//!     certificate, asks edge-seas to relay to an origin, pool or load balancer its config does
//!     not have, to an address where an origin's name goes, to a pool its load balancer does not
//!     use, and as a second hop. Each is refused, by a reason about the request, and counted in
//!     `switchyard_mesh_relay_refused_total{reason}`; its one valid request is relayed (the
//!     control: the refusals are the names' doing). A client with a certificate of another CA
//!     fails the handshake (counted as `wrong_ca`), and the status port has no relay endpoint
//!     (`/v1/relay`: GET 404, POST 405).
//!
//! Each scenario prints a timeline (run with `--nocapture` to see it): what changed when, and
//! what each node saw. On failure it also prints the tail of every node's log and the
//! emulator's counters. Every wait has a deadline and polls; the only timing bound asserted is
//! the failover bound the monitor implies (see [`failover_bound`]). The scenarios run one at a
//! time (each runs three nodes and six origins on a small machine).
//!
//! `E2E_WAN_LOGS=1` prints every node's whole log after each scenario, pass or fail;
//! `E2E_WAN_NODE_LOG` sets the nodes' `RUST_LOG` (default `info`).
//!
//! Needs the `switchyard` binary next to the tests crate's binaries (`cargo test --workspace`
//! builds it; otherwise `cargo build -p switchyard-node`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use switchyard_gossip::RefuseReason;
use switchyard_node::core::explain::Explanation;
use switchyard_node::status::Status;
use switchyard_tests::harness::switchyard_bin;
use switchyard_tests::topology::{
    self as testnet, pool_of, LoadBalancer, MeshTimings, Mode, Monitor, NodeFiles, Topology,
};
use switchyard_tests::wan::{skip_without_root, Rule, Testbed};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

const WAN_EMU: &str = env!("CARGO_BIN_EXE_wan-emu");
const MESH_LIAR: &str = env!("CARGO_BIN_EXE_mesh-liar");
const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");

/// One node per region, as the testnet has them: (region, node id, the region's pool).
const NODES: [(&str, &str, &str); 3] = {
    let (n, p) = (testnet::NODES, testnet::POOLS);
    [
        (n[0].1, n[0].0, p[0].0),
        (n[1].1, n[1].0, p[1].0),
        (n[2].1, n[2].0, p[2].0),
    ]
};

/// The apps the scenarios use (each node runs them on the testnet's addresses).
const APP_FAILOVER: &str = "failover";
const APP_GEO: &str = "geo";
const APP_DYNAMIC: &str = "dynamic";
const APP_RELAY: &str = testnet::APP_RELAY;

/// The http monitor. An HTTP probe takes two round trips (connect, then request and response):
/// up to 2 x 170 ms across the WAN by default, and 2 x 300 ms from WNAM to WEU once scenario 1
/// raises that link. A timeout of 400 ms would turn scenario 1's slower link into a dead one
/// (the pool would leave for being down, not for being slow), so the monitor probes every
/// second with a 900 ms timeout.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
const MONITOR_TIMEOUT: Duration = Duration::from_millis(900);
const MONITOR_RETRIES: u32 = 1;
/// For a flip to reach every node: it is pushed to every peer at once (one way: at most
/// 85 ms here), then taken into the next published view.
const MESH_ALLOWANCE: Duration = Duration::from_secs(1);

/// How long after origins die (or come back) every node steers accordingly, as the issue
/// states it: interval x (retries + 1) plus one second (the next round starts within one
/// interval; each of its 1 + retries attempts ends within the timeout, at most the interval),
/// plus the mesh's propagation allowance for the other nodes. With the monitor above:
/// 1 s x (1 + 1) + 1 s + 1 s = 4 s.
fn failover_bound() -> Duration {
    MONITOR_INTERVAL * (MONITOR_RETRIES + 1) + Duration::from_secs(1) + MESH_ALLOWANCE
}

/// The testnet's topology in WAN mode, varied for these scenarios: SWIM timings that detect a
/// partition within seconds, the monitor above, no `-hash` pools, and four load balancers:
/// failover over weu, wnam, seas (WEU's clients start on their own pool), the testnet's geo,
/// dynamic over weu and seas (so that scenario 1's latency change flips the ranking), and the
/// testnet's relay (pool weu only, `relay = "fastest"`: scenarios 10 to 12).
fn topology() -> Topology {
    let ms = Duration::from_millis;
    let mut t = Topology::new(Mode::Wan);
    t.cluster = "e2e-wan".into();
    t.drain_timeout = Duration::from_secs(1);
    t.seed_self = false;
    t.mesh = MeshTimings {
        probe_period: ms(500),
        probe_timeout: ms(400),
        suspect_timeout: ms(3000),
        announce_interval: ms(1000),
        anti_entropy_interval: ms(1000),
    };
    t.monitor = Monitor {
        path: "/health".into(),
        expected_codes: None,
        interval: MONITOR_INTERVAL,
        timeout: MONITOR_TIMEOUT,
        retries: MONITOR_RETRIES,
    };
    t.pools.retain(|p| p.origin_steering.is_none());
    for p in &mut t.pools {
        p.location = None;
    }
    let lb = |name: &str, steering: &str, pools: &[&str]| LoadBalancer {
        name: name.into(),
        steering: steering.into(),
        default_pools: pools.iter().map(|p| p.to_string()).collect(),
        fallback_pool: None,
        region_pools: Vec::new(),
        relay: None,
    };
    let kept = |name: &str| {
        t.load_balancer(name)
            .unwrap_or_else(|| panic!("the testnet has a {name} app"))
            .clone()
    };
    let (geo, relay) = (kept(APP_GEO), kept(APP_RELAY));
    t.load_balancers = vec![
        lb(APP_FAILOVER, "failover", &["weu", "wnam", "seas"]),
        geo,
        lb(APP_DYNAMIC, "dynamic", &["weu", "seas"]),
        relay,
    ];
    for n in &mut t.nodes {
        n.apps
            .retain(|(a, _)| [APP_FAILOVER, APP_GEO, APP_DYNAMIC, APP_RELAY].contains(&a.as_str()));
    }
    t
}

/// For the mesh to form, merge after a partition, or take a restarted node back, and for every
/// node to observe every origin. Generous: not a target.
const CONVERGE: Duration = Duration::from_secs(30);
/// For SWIM to declare an unreachable member down (probe 500 ms, suspect 3 s). Generous.
const DETECT: Duration = Duration::from_secs(20);
/// For RTT averages to rank pools anew and steering to follow. Generous.
const RTT_CATCH_UP: Duration = Duration::from_secs(30);
/// One connect, read or status request that should succeed.
const STEP: Duration = Duration::from_secs(3);
/// How often waits poll.
const POLL: Duration = Duration::from_millis(50);

/// The scenarios run one at a time (each test has its own runtime; tokio's mutex is not
/// tied to one, and a failed scenario does not poison it).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_id(region: &str) -> &'static str {
    NODES
        .iter()
        .find(|n| n.0 == region)
        .map(|n| n.1)
        .expect("a known region")
}

fn pool_of_region(region: &str) -> &'static str {
    NODES
        .iter()
        .find(|n| n.0 == region)
        .map(|n| n.2)
        .expect("a known region")
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Reading the status document.

fn member_state<'a>(s: &'a Status, id: &str) -> Option<&'a str> {
    s.members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.state.as_str())
}

fn member_generation(s: &Status, id: &str) -> Option<u64> {
    s.members.iter().find(|m| m.id == id).map(|m| m.generation)
}

fn alive(s: &Status) -> Vec<&str> {
    s.members
        .iter()
        .filter(|m| m.state == "alive")
        .map(|m| m.id.as_str())
        .collect()
}

/// The mean RTT (ms) that `observer` measured to `pool`'s origins, as `s`'s node sees it.
fn observer_rtt(s: &Status, observer: &str, pool: &str) -> Option<f64> {
    let p = s.pools.iter().find(|p| p.name == pool)?;
    let mut sum = 0.0;
    for o in &p.origins {
        sum += o.observers.get(observer)?.rtt_ms?;
    }
    (!p.origins.is_empty()).then(|| sum / p.origins.len() as f64)
}

/// Whether every origin of `pool` is seen up (`up`) or down by `region`'s observers, in `s`.
fn pool_in_region(s: &Status, pool: &str, region: &str, up: bool) -> bool {
    s.pools.iter().find(|p| p.name == pool).is_some_and(|p| {
        p.origins
            .iter()
            .all(|o| o.region_health.get(region) == Some(&up))
    })
}

/// One line: members, and each origin's health per observing region.
fn describe(s: &Status) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| format!("{}={}(gen {})", m.id, m.state, m.generation))
        .collect();
    let origins: Vec<String> = s
        .pools
        .iter()
        .flat_map(|p| &p.origins)
        .map(|o| {
            let regions: Vec<String> = o
                .region_health
                .iter()
                .map(|(r, up)| format!("{r}{}", if *up { '+' } else { '-' }))
                .collect();
            format!(
                "{}={}[{}]",
                o.name,
                if o.healthy { "up" } else { "down" },
                regions.join(" ")
            )
        })
        .collect();
    format!(
        "members {}; origins {}",
        members.join(" "),
        origins.join(" ")
    )
}

/// Whether every node's status agrees on every origin's health (per region and global) and
/// every origin is up, observed by all three nodes.
fn views_agree(views: &[(String, Status)]) -> Result<(), String> {
    // Per origin: its name, health per observing region, and global health.
    type Health = (String, Vec<(String, bool)>, Option<bool>);
    let key = |s: &Status| -> Vec<Health> {
        s.pools
            .iter()
            .flat_map(|p| &p.origins)
            .map(|o| {
                (
                    o.name.clone(),
                    o.region_health
                        .iter()
                        .map(|(r, h)| (r.clone(), *h))
                        .collect(),
                    o.global_health,
                )
            })
            .collect()
    };
    for (id, s) in views {
        for o in s.pools.iter().flat_map(|p| &p.origins) {
            if !o.healthy || o.observers.len() != 3 || !o.observers.values().all(|v| v.healthy) {
                return Err(format!(
                    "{id}: {} not up with 3 healthy observers: {o:?}",
                    o.name
                ));
            }
            if o.region_health.len() != 3 || !o.region_health.values().all(|h| *h) {
                return Err(format!(
                    "{id}: {} region health {:?}",
                    o.name, o.region_health
                ));
            }
        }
    }
    let first = key(&views[0].1);
    for (id, s) in &views[1..] {
        if key(s) != first {
            return Err(format!(
                "{id} disagrees with {}: {:?} vs {:?}",
                views[0].0,
                key(s),
                first
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The cluster: testbed, certificates, GeoIP database, origins and nodes.

struct Cluster {
    test: &'static str,
    t0: Instant,
    tb: Option<Testbed>,
    topo: Topology,
    /// Certificates, the GeoIP database, configs and logs (inside the testbed's directory,
    /// removed with it).
    dir: PathBuf,
    switchyard: PathBuf,
    nodes: BTreeMap<&'static str, Child>,
    origins: BTreeMap<String, Child>,
    /// Set when the scenario passed; otherwise Drop prints the logs.
    ok: bool,
}

impl Cluster {
    /// Brings the testbed up, starts six origins and three nodes, and waits until every node
    /// lists all three alive and every origin is up, observed by all three nodes.
    async fn up(test: &'static str) -> Result<Cluster> {
        let switchyard = switchyard_bin()?;
        let t0 = Instant::now();
        let topo = topology();
        let tb = Testbed::up(WAN_EMU, &testnet::REGION_NAMES)?;
        // The topology's addresses are 10.250.<index>.x: the testbed must number regions alike.
        for r in testnet::REGIONS {
            let got = tb.region(r.name)?.index;
            if got != r.index {
                bail!(
                    "the testbed gave {} index {got}, the topology {}",
                    r.name,
                    r.index
                );
            }
        }
        let dir = tb.dir().join("e2e");
        std::fs::create_dir_all(&dir)?;
        let mut c = Cluster {
            test,
            t0,
            tb: Some(tb),
            topo,
            dir,
            switchyard,
            nodes: BTreeMap::new(),
            origins: BTreeMap::new(),
            ok: false,
        };
        c.note(format!(
            "testbed up: WNAM 10.250.1.0/24, WEU 10.250.2.0/24, SEAS 10.250.3.0/24; monitor http \
             interval {MONITOR_INTERVAL:?} timeout {MONITOR_TIMEOUT:?} retries {MONITOR_RETRIES}"
        ));
        switchyard_gossip::tls::init_ca(&c.dir.join("ca"), "e2e-wan")
            .map_err(|e| anyhow!("init CA: {e}"))?;
        // Each certificate names its node's region, as a deployment's should: peers then drop
        // the node's claims about any other region.
        for (region, id, _) in NODES {
            let r: switchyard_geo::Region = region.parse()?;
            switchyard_gossip::tls::issue_cert_in(&c.dir.join("ca"), id, Some(r), &c.dir)
                .map_err(|e| anyhow!("issue a certificate for {id} in {region}: {e}"))?;
        }
        switchyard_geo::geoip::build(&c.topo.geo_rows().join("\n"), &c.dir.join("geo.mmdb"))
            .map_err(|e| anyhow!("build the GeoIP database: {e}"))?;
        for (_, id, _) in NODES {
            let files = NodeFiles::under(&c.dir, id, &c.dir.join("geo.mmdb"));
            c.topo
                .node_config(id, &files)
                .map_err(|e| anyhow!("the config of {id}: {e}"))?;
            std::fs::write(
                c.config_path(id),
                c.topo
                    .node_config_text(id, &files, "e2e_wan: the testnet's topology, varied"),
            )?;
        }
        let origins: Vec<(String, String)> = (c.topo.origins.iter())
            .map(|o| (o.region.clone(), o.name.clone()))
            .collect();
        for (region, name) in origins {
            c.start_origin(&region, &name).await?;
        }
        c.note("6 origins accepting");
        for (region, ..) in NODES {
            c.start_node(region).await?;
        }
        c.note("3 nodes answer status");
        let took = c
            .wait_for("every node lists all 3 alive", CONVERGE, || async {
                for (region, ..) in NODES {
                    let s = c.status(region).await.map_err(|e| format!("{e:#}"))?;
                    let a = alive(&s);
                    if a.len() != 3 {
                        return Err(format!("{} sees alive: {a:?}", node_id(region)));
                    }
                }
                Ok(())
            })
            .await?;
        c.note(format!(
            "mesh formed ({} after the nodes answered)",
            secs(took)
        ));
        c.wait_for(
            "every origin up, observed by all 3 nodes, in every node's view",
            CONVERGE,
            || async { c.views_agree().await },
        )
        .await?;
        c.snapshot("ready").await;
        Ok(c)
    }

    fn tb(&self) -> &Testbed {
        self.tb.as_ref().expect("the testbed is up until drop")
    }

    fn node(&self, region: &str) -> &testnet::Node {
        self.topo.node_in(region).expect("a node in every region")
    }

    fn client_ip(&self, region: &str) -> IpAddr {
        self.topo
            .client(region)
            .expect("a client in every region")
            .ip
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.toml"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Prints a timeline line: seconds since the testbed came up.
    fn note(&self, msg: impl Display) {
        println!(
            "[{} +{:>8.3}s] {msg}",
            self.test,
            self.t0.elapsed().as_secs_f64()
        );
    }

    fn log_file(&self, name: &str) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .with_context(|| format!("open the log of {name}"))
    }

    /// Starts origin `name` (`weu-2`: WEU, host .12) and waits until both its ports accept.
    async fn start_origin(&mut self, region: &str, name: &str) -> Result<()> {
        let o = self.topo.origin(name).expect("an origin of the topology");
        let (data, http) = (o.data(), o.health());
        let log = self.log_file(name)?;
        let child = self
            .tb()
            .command(region, TEST_ORIGIN)?
            .args([
                "--name",
                name,
                "--listen",
                &data.to_string(),
                "--http",
                &http.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start test-origin {name} in {region}"))?;
        self.origins.insert(name.to_string(), child);
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [data, http] {
            loop {
                let sock = self.tb().tcp_socket(region)?;
                if let Ok(Ok(_)) = timeout(Duration::from_millis(500), sock.connect(addr)).await {
                    break;
                }
                if let Some(st) = self.origins.get_mut(name).and_then(|c| c.try_wait().ok()?) {
                    bail!(
                        "test-origin {name} exited ({st}): {}",
                        tail(&self.log_path(name), 20)
                    );
                }
                if Instant::now() >= deadline {
                    bail!("origin {name} not accepting on {addr} within 10s");
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs an origin and reaps it.
    fn kill_origin(&mut self, name: &str) -> Result<()> {
        let mut child = self
            .origins
            .remove(name)
            .ok_or_else(|| anyhow!("origin {name} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts the region's node and waits until its status endpoint answers.
    async fn start_node(&mut self, region: &'static str) -> Result<()> {
        let id = node_id(region);
        let log = self.log_file(id)?;
        let child = self
            .tb()
            .command(region, &self.switchyard)?
            .arg("run")
            .arg("--config")
            .arg(self.config_path(id))
            .env(
                "RUST_LOG",
                std::env::var("E2E_WAN_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} in {region}", self.switchyard.display()))?;
        self.nodes.insert(region, child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.status(region).await.is_ok() {
                return Ok(());
            }
            if let Some(st) = self.nodes.get_mut(region).and_then(|c| c.try_wait().ok()?) {
                bail!("{id} exited ({st}):\n{}", tail(&self.log_path(id), 30));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{id}: status not answering within 15s:\n{}",
                    tail(&self.log_path(id), 30)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs a node (a crash: no leave) and reaps it.
    fn kill_node(&mut self, region: &str) -> Result<()> {
        let mut child = self
            .nodes
            .remove(region)
            .ok_or_else(|| anyhow!("no node running in {region}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// GETs `path` from the region's node status endpoint, from inside its namespace (the
    /// endpoint is bound to the node's address, which only that namespace can reach directly).
    async fn http_get(&self, region: &str, path: &str) -> Result<String> {
        let addr = self.node(region).status;
        let (head, body) = self.http(region, "GET", addr, path).await?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {addr}{path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body)
    }

    /// Sends `method path` (no body) to `addr` from a socket made in `from`'s namespace, and
    /// returns the answer's head and body, whatever its status.
    async fn http(
        &self,
        from: &str,
        method: &str,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(String, String)> {
        let sock = self.tb().tcp_socket(from)?;
        let mut s = timeout(STEP, sock.connect(addr))
            .await
            .map_err(|_| anyhow!("connect {addr}: timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        timeout(STEP, s.read_to_end(&mut buf))
            .await
            .map_err(|_| anyhow!("{method} {addr}{path}: no full answer within {STEP:?}"))??;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("{method} {addr}{path}: no HTTP head in {text:?}"))?;
        Ok((head.to_string(), body.to_string()))
    }

    async fn status(&self, region: &str) -> Result<Status> {
        let body = self.http_get(region, "/v1/status").await?;
        serde_json::from_str(&body).context("decode /v1/status")
    }

    /// The status, typed and as JSON: the JSON also has the fields that the typed document
    /// may not have yet (issue 11's verdicts), read by the scenarios that need them.
    async fn status_doc(&self, region: &str) -> Result<(Status, serde_json::Value)> {
        let body = self.http_get(region, "/v1/status").await?;
        Ok((
            serde_json::from_str(&body).context("decode /v1/status")?,
            serde_json::from_str(&body).context("decode /v1/status as JSON")?,
        ))
    }

    /// Every node's status, by node id.
    async fn statuses(&self) -> Result<Vec<(String, Status)>, String> {
        let mut all = Vec::new();
        for (region, id, _) in NODES {
            let s = self
                .status(region)
                .await
                .map_err(|e| format!("{id}: {e:#}"))?;
            all.push((id.to_string(), s));
        }
        Ok(all)
    }

    async fn views_agree(&self) -> Result<(), String> {
        views_agree(&self.statuses().await?)
    }

    /// The region's node's explanation of how `lb` steers `client` now (`/v1/explain`).
    async fn explanation(&self, region: &str, lb: &str, client: IpAddr) -> Result<Explanation> {
        let body = self
            .http_get(region, &format!("/v1/explain?lb={lb}&client={client}"))
            .await?;
        serde_json::from_str(&body).context("decode /v1/explain")
    }

    /// The region's node's explanation of how `lb` steers `client` now, in one line.
    async fn explain(&self, region: &str, lb: &str, client: IpAddr) -> String {
        match self.explanation(region, lb, client).await {
            Ok(e) => format!(
                "{} explains {lb} for {client}: region {:?} (by {}), pool {:?} ({}), origin {:?}, path {:?} ({})",
                node_id(region),
                e.region,
                e.located_by,
                e.pool,
                e.pool_reason.unwrap_or_default(),
                e.origin,
                e.path,
                e.path_reason.unwrap_or_default()
            ),
            Err(e) => format!("{}: explain: {e:#}", node_id(region)),
        }
    }

    /// Connects as a client of region `from` (source 10.250.<from>.100, socket made in that
    /// namespace) to app `app` of the node in region `via`, and returns the greeting of the
    /// origin that served it.
    async fn client(&self, from: &str, via: &str, app: &str) -> Result<String> {
        let sock = self.tb().tcp_socket(from)?;
        sock.bind(SocketAddr::new(self.client_ip(from), 0))?;
        let to = self
            .node(via)
            .app(app)
            .ok_or_else(|| anyhow!("{} runs no app {app}", node_id(via)))?;
        let what = format!("a {from} client via {} ({to})", node_id(via));
        let stream = timeout(STEP, sock.connect(to))
            .await
            .map_err(|_| anyhow!("{what}: connect timed out"))?
            .with_context(|| format!("{what}: connect"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let n = timeout(STEP, reader.read_line(&mut line))
            .await
            .map_err(|_| anyhow!("{what}: no greeting within {STEP:?}"))?
            .with_context(|| format!("{what}: read"))?;
        if n == 0 {
            bail!("{what}: closed without a greeting");
        }
        Ok(line.trim_end().to_string())
    }

    /// A client of region `from` via the node of `via`, on the geo app, is served by its own
    /// region's pool.
    async fn served_by_own_region(&self, from: &str, via: &str) -> Result<()> {
        let got = self.client(from, via, APP_GEO).await?;
        self.note(format!("a {from} client via {}: {got}", node_id(via)));
        assert_eq!(
            pool_of(&got),
            pool_of_region(from),
            "a {from} client via {}: {got}",
            node_id(via)
        );
        Ok(())
    }

    /// Like `client`, as an error string for waits.
    async fn origin_for(&self, from: &str, via: &str, app: &str) -> Result<String, String> {
        self.client(from, via, app)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// Prints what every node sees now.
    async fn snapshot(&self, label: &str) {
        for (region, id, _) in NODES {
            if !self.nodes.contains_key(region) {
                self.note(format!("  {label}: {id}: (not running)"));
                continue;
            }
            match self.status(region).await {
                Ok(s) => self.note(format!("  {label}: {id} sees {}", describe(&s))),
                Err(e) => self.note(format!("  {label}: {id}: status: {e:#}")),
            }
        }
    }

    /// Polls `check` every POLL until it returns Ok; fails with `what` and the last reason
    /// after `within`. Returns how long it took.
    async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut check: F) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            let last = match check().await {
                Ok(()) => return Ok(start.elapsed()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                self.note(format!(
                    "TIMEOUT: {what}: not within {within:?}; last: {last}"
                ));
                bail!("{what}: not true within {within:?}; last: {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records the scenario's outcome (Drop prints the logs on failure).
    fn finish(mut self, res: Result<()>) -> Result<()> {
        self.ok = res.is_ok();
        match &res {
            Ok(()) => self.note("PASSED"),
            Err(e) => self.note(format!("FAILED: {e:#}")),
        }
        res
    }

    /// The tail of every node's log (all of it with E2E_WAN_LOGS set) and the emulator's
    /// counters.
    fn dump_logs(&self) {
        let lines = if std::env::var_os("E2E_WAN_LOGS").is_some() {
            usize::MAX
        } else {
            40
        };
        for (_, id, _) in NODES {
            println!(
                "----- {id} log (last {lines} lines) -----\n{}",
                tail(&self.log_path(id), lines)
            );
        }
        if let Some(tb) = &self.tb {
            match tb.show() {
                Ok(show) => println!("----- wan-emu show -----\n{show}"),
                Err(e) => println!("----- wan-emu show: {e:#}"),
            }
        }
    }
}

/// Runs one scenario: skipped (saying so) without root; `needs`, if any, checked before
/// anything starts; then one at a time, on a fresh cluster, its outcome recorded (the logs
/// printed on failure).
async fn scenario(
    test: &'static str,
    label: &'static str,
    needs: Option<fn() -> Result<()>>,
    body: impl AsyncFnOnce(&mut Cluster) -> Result<()>,
) -> Result<()> {
    if skip_without_root(test) {
        return Ok(());
    }
    if let Some(check) = needs {
        check()?;
    }
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::up(label).await?;
    let res = body(&mut c).await;
    c.finish(res)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.ok || std::thread::panicking() || std::env::var_os("E2E_WAN_LOGS").is_some() {
            self.dump_logs();
        }
        for child in self.nodes.values_mut().chain(self.origins.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(tb) = self.tb.take() {
            if let Err(e) = tb.down() {
                eprintln!("{}: {e:#}", self.test);
            }
        }
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// 1. Dynamic steering.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_dynamic_steering_follows_wan_latency() -> Result<()> {
    scenario(
        "e2e_dynamic_steering_follows_wan_latency",
        "dynamic",
        None,
        async |c| dynamic(c).await,
    )
    .await
}

/// The RTT averages (ms) that WNAM's node measured to weu and seas, as `s`'s node sees them.
fn wnam_rtts(s: &Status) -> (Option<f64>, Option<f64>) {
    (
        observer_rtt(s, "edge-wnam", "weu"),
        observer_rtt(s, "edge-wnam", "seas"),
    )
}

async fn print_wnam_rtts(c: &Cluster, label: &str) {
    for (region, id, _) in NODES {
        if let Ok(s) = c.status(region).await {
            let ms = |v: Option<f64>| v.map_or("none".into(), |v| format!("{v:.1} ms"));
            let (weu, seas) = wnam_rtts(&s);
            c.note(format!(
                "  {label}: {id} sees edge-wnam's RTT averages: weu {}, seas {}",
                ms(weu),
                ms(seas)
            ));
        }
    }
}

async fn dynamic(c: &Cluster) -> Result<()> {
    let wnam_client = c.client_ip("WNAM");
    // WNAM-WEU 75 ms < WNAM-SEAS 160 ms: from WNAM, weu is nearer.
    let took = c
        .wait_for(
            "a WNAM client reaches weu through every node's dynamic app",
            RTT_CATCH_UP,
            || async {
                for (via, ..) in NODES {
                    let got = c.origin_for("WNAM", via, APP_DYNAMIC).await?;
                    if pool_of(&got) != "weu" {
                        return Err(format!("via {}: {got}", node_id(via)));
                    }
                }
                Ok(())
            },
        )
        .await?;
    c.note(format!(
        "a WNAM client reaches weu through every node ({})",
        secs(took)
    ));
    print_wnam_rtts(c, "at 75 ms").await;
    c.note(c.explain("WNAM", "dynamic", wnam_client).await);
    for _ in 0..5 {
        let got = c.client("WNAM", "WNAM", APP_DYNAMIC).await?;
        assert_eq!(pool_of(&got), "weu", "a WNAM client via edge-wnam: {got}");
    }

    c.tb()
        .set_latency("WNAM", "WEU", Duration::from_millis(300))?;
    let t_set = Instant::now();
    c.note("set WNAM-WEU to 300 ms round trip (WNAM-SEAS stays 160 ms)");

    // The RTT averages (EWMA of probe round trips) catch up: from WNAM, weu is now slower than
    // seas, in every node's view of the mesh.
    c.wait_for(
        "every node sees edge-wnam's RTT average to weu above its average to seas",
        RTT_CATCH_UP,
        || async {
            for (id, s) in c.statuses().await? {
                match wnam_rtts(&s) {
                    (Some(weu), Some(seas)) if weu > seas => {}
                    other => return Err(format!("{id}: (weu, seas) = {other:?}")),
                }
            }
            Ok(())
        },
    )
    .await?;
    let caught_up = t_set.elapsed();
    c.note(format!(
        "RTT averages caught up {} after the change",
        secs(caught_up)
    ));
    print_wnam_rtts(c, "at 300 ms").await;

    let t_caught = Instant::now();
    c.wait_for(
        "a WNAM client reaches seas through every node's dynamic app",
        RTT_CATCH_UP,
        || async {
            for (via, ..) in NODES {
                let got = c.origin_for("WNAM", via, APP_DYNAMIC).await?;
                if pool_of(&got) != "seas" {
                    return Err(format!("via {}: {got}", node_id(via)));
                }
            }
            Ok(())
        },
    )
    .await?;
    c.note(format!(
        "WNAM clients moved to seas on every node {} after the RTT averages caught up ({} after the change)",
        secs(t_caught.elapsed()),
        secs(t_set.elapsed())
    ));
    c.note(c.explain("WNAM", "dynamic", wnam_client).await);
    for _ in 0..5 {
        let got = c.client("WNAM", "WNAM", APP_DYNAMIC).await?;
        assert_eq!(pool_of(&got), "seas", "a WNAM client via edge-wnam: {got}");
    }
    // Both pools stayed healthy: the move is for latency, not for health.
    let s = c.status("WNAM").await?;
    assert!(
        pool_in_region(&s, "weu", "WNAM", true),
        "weu should still be up from WNAM: {}",
        describe(&s)
    );
    c.snapshot("after").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Geo steering across nodes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_geo_steering_across_nodes() -> Result<()> {
    scenario("e2e_geo_steering_across_nodes", "geo", None, async |c| {
        geo(c).await
    })
    .await
}

async fn geo(c: &Cluster) -> Result<()> {
    // The case the scenario names: a WEU client on the WNAM node's geo app.
    for _ in 0..5 {
        let got = c.client("WEU", "WNAM", APP_GEO).await?;
        c.note(format!("a WEU client via edge-wnam's geo app: {got}"));
        assert_eq!(pool_of(&got), "weu", "a WEU client via edge-wnam: {got}");
    }
    let weu_client = c.client_ip("WEU");
    let body = c
        .http_get("WNAM", &format!("/v1/explain?lb=geo&client={weu_client}"))
        .await?;
    let e: Explanation = serde_json::from_str(&body)?;
    c.note(c.explain("WNAM", "geo", weu_client).await);
    assert_eq!(e.region.as_deref(), Some("WEU"), "{e:?}");
    assert_eq!(e.country.as_deref(), Some("DE"), "{e:?}");
    assert_eq!(e.located_by, "database", "{e:?}");
    assert_eq!(e.pool.as_deref(), Some("weu"), "{e:?}");

    // And every region's client on every node.
    for (from, ..) in NODES {
        for (via, ..) in NODES {
            c.served_by_own_region(from, via).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Failover across regions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_failover_across_regions() -> Result<()> {
    scenario("e2e_failover_across_regions", "failover", None, async |c| {
        failover(c).await
    })
    .await
}

/// Waits until, on every node, a WEU client on the failover app is served by `pool` and the
/// node's status shows weu's origins `weu_up` as WEU sees them; notes when each node got there.
async fn every_node_steers_weu_clients(
    c: &Cluster,
    what: &str,
    pool: &str,
    weu_up: bool,
    since: Instant,
) -> Result<Duration> {
    let done: RefCell<BTreeMap<&str, Duration>> = RefCell::new(BTreeMap::new());
    let res = c
        .wait_for(what, failover_bound(), || async {
            let mut pending = Vec::new();
            for (via, id, _) in NODES {
                if done.borrow().contains_key(id) {
                    continue;
                }
                let s = c.status(via).await.map_err(|e| format!("{id}: {e:#}"))?;
                let view = pool_in_region(&s, "weu", "WEU", weu_up);
                let got = c.origin_for("WEU", via, APP_FAILOVER).await;
                match got {
                    Ok(name) if pool_of(&name) == pool && view => {
                        let at = since.elapsed();
                        c.note(format!(
                            "  {id}: a WEU client is served by {name}; weu in WEU's view: {} ({})",
                            if weu_up { "up" } else { "down" },
                            secs(at)
                        ));
                        done.borrow_mut().insert(id, at);
                    }
                    other => pending.push(format!("{id}: client {other:?}, weu view ok: {view}")),
                }
            }
            if pending.is_empty() {
                Ok(())
            } else {
                Err(pending.join("; "))
            }
        })
        .await;
    res?;
    let slowest = done.borrow().values().copied().max().unwrap_or_default();
    Ok(slowest)
}

async fn failover(c: &mut Cluster) -> Result<()> {
    let bound = failover_bound();
    c.note(format!(
        "failover bound: interval {MONITOR_INTERVAL:?} x (retries {MONITOR_RETRIES} + 1) + 1s + \
         mesh allowance {MESH_ALLOWANCE:?} = {bound:?}"
    ));
    c.wait_for(
        "a WEU client is served by weu through every node's failover app",
        CONVERGE,
        || async {
            for (via, ..) in NODES {
                let got = c.origin_for("WEU", via, APP_FAILOVER).await?;
                if pool_of(&got) != "weu" {
                    return Err(format!("via {}: {got}", node_id(via)));
                }
            }
            Ok(())
        },
    )
    .await?;
    c.note("before: a WEU client is served by weu through every node");

    c.kill_origin("weu-1")?;
    c.kill_origin("weu-2")?;
    let t_kill = Instant::now();
    c.note("killed weu-1 and weu-2 (SIGKILL)");
    let took = every_node_steers_weu_clients(
        c,
        "every node steers WEU clients to wnam (failover: weu, wnam, seas)",
        "wnam",
        false,
        t_kill,
    )
    .await?;
    c.note(format!(
        "every node fails WEU clients over to wnam: slowest {} (bound {bound:?})",
        secs(took)
    ));
    c.note(c.explain("WNAM", "failover", c.client_ip("WEU")).await);
    c.snapshot("weu down").await;

    c.start_origin("WEU", "weu-1").await?;
    c.start_origin("WEU", "weu-2").await?;
    let t_back = Instant::now();
    c.note("restarted weu-1 and weu-2 (accepting)");
    let took = every_node_steers_weu_clients(
        c,
        "every node steers WEU clients back to weu",
        "weu",
        true,
        t_back,
    )
    .await?;
    c.note(format!(
        "every node steers WEU clients back to weu: slowest {} (bound {bound:?})",
        secs(took)
    ));
    c.snapshot("weu back").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Partition.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_partition_and_heal() -> Result<()> {
    scenario("e2e_partition_and_heal", "partition", None, async |c| {
        partition(c).await
    })
    .await
}

/// Waits until every node in `observers` lists `id` as `state`; notes when each did.
async fn wait_member_state(
    c: &Cluster,
    observers: &[&str],
    id: &str,
    state: &str,
    within: Duration,
    since: Instant,
) -> Result<()> {
    let done: RefCell<Vec<&str>> = RefCell::new(Vec::new());
    c.wait_for(
        &format!("{observers:?} list {id} {state}"),
        within,
        || async {
            let mut pending = Vec::new();
            for &region in observers {
                let me = node_id(region);
                if done.borrow().contains(&me) {
                    continue;
                }
                let s = c.status(region).await.map_err(|e| format!("{me}: {e:#}"))?;
                match member_state(&s, id) {
                    Some(st) if st == state => {
                        c.note(format!(
                            "  {me} lists {id} {state} ({} after the change)",
                            secs(since.elapsed())
                        ));
                        done.borrow_mut().push(me);
                    }
                    other => pending.push(format!("{me} lists {id} as {other:?}")),
                }
            }
            if pending.is_empty() {
                Ok(())
            } else {
                Err(pending.join("; "))
            }
        },
    )
    .await
    .map(|_| ())
}

async fn partition(c: &Cluster) -> Result<()> {
    let got = c.client("SEAS", "SEAS", APP_GEO).await?;
    assert_eq!(
        pool_of(&got),
        "seas",
        "before: a SEAS client via edge-seas: {got}"
    );

    c.tb().cut("SEAS", "WNAM")?;
    c.tb().cut("SEAS", "WEU")?;
    let t_cut = Instant::now();
    c.note("cut SEAS off from WNAM and WEU");

    let got = c.client("SEAS", "SEAS", APP_GEO).await?;
    c.note(format!(
        "right after the cut, a SEAS client via edge-seas: {got}"
    ));
    assert_eq!(pool_of(&got), "seas", "a SEAS client via edge-seas: {got}");

    wait_member_state(c, &["WNAM", "WEU"], "edge-seas", "down", DETECT, t_cut).await?;
    wait_member_state(c, &["SEAS"], "edge-wnam", "down", DETECT, t_cut).await?;
    wait_member_state(c, &["SEAS"], "edge-weu", "down", DETECT, t_cut).await?;

    // SEAS's own view: it cannot reach weu's or wnam's origins, so its failover app (weu, wnam,
    // seas) serves its clients from seas, as does geo.
    c.wait_for(
        "edge-seas serves its own clients from seas on both apps",
        CONVERGE,
        || async {
            let s = c.status("SEAS").await.map_err(|e| format!("{e:#}"))?;
            if !pool_in_region(&s, "weu", "SEAS", false)
                || !pool_in_region(&s, "wnam", "SEAS", false)
            {
                return Err(format!("edge-seas sees {}", describe(&s)));
            }
            for app in [APP_FAILOVER, APP_GEO] {
                let got = c.origin_for("SEAS", "SEAS", app).await?;
                if pool_of(&got) != "seas" {
                    return Err(format!("app {app}: {got}"));
                }
            }
            Ok(())
        },
    )
    .await?;
    c.note(format!(
        "edge-seas serves SEAS clients from seas on failover and geo, weu and wnam down in its view ({} after the cut)",
        secs(t_cut.elapsed())
    ));
    // The other side still serves its own clients.
    for (from, via) in [("WNAM", "WNAM"), ("WEU", "WEU"), ("WEU", "WNAM")] {
        let got = c.client(from, via, APP_GEO).await?;
        c.note(format!(
            "during the partition, a {from} client via {}: {got}",
            node_id(via)
        ));
        assert_eq!(
            pool_of(&got),
            pool_of_region(from),
            "{from} via {via}: {got}"
        );
    }
    c.snapshot("partitioned").await;

    c.tb().heal("SEAS", "WNAM")?;
    c.tb().heal("SEAS", "WEU")?;
    let t_heal = Instant::now();
    c.note("healed both links");

    let took = c
        .wait_for("every node lists all 3 alive again", CONVERGE, || async {
            for (id, s) in c.statuses().await? {
                let a = alive(&s);
                if a.len() != 3 {
                    return Err(format!("{id} sees alive {a:?}; {}", describe(&s)));
                }
            }
            Ok(())
        })
        .await?;
    c.note(format!(
        "the mesh merged by itself: all 3 alive everywhere {} after the heal",
        secs(took)
    ));
    c.wait_for(
        "every node's view agrees: every origin up in every region",
        CONVERGE,
        || async { c.views_agree().await },
    )
    .await?;
    c.note(format!(
        "views agree on origin health {} after the heal",
        secs(t_heal.elapsed())
    ));
    let got = c.client("SEAS", "SEAS", APP_FAILOVER).await?;
    c.note(format!(
        "after the heal, a SEAS client via edge-seas's failover app: {got}"
    ));
    assert_eq!(pool_of(&got), "weu", "SEAS's view has weu back: {got}");
    c.snapshot("healed").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Node loss.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_node_loss_and_rejoin() -> Result<()> {
    scenario("e2e_node_loss_and_rejoin", "node-loss", None, async |c| {
        node_loss(c).await
    })
    .await
}

async fn node_loss(c: &mut Cluster) -> Result<()> {
    let before = c.status("WNAM").await?;
    let old_gen = member_generation(&before, "edge-weu")
        .ok_or_else(|| anyhow!("edge-wnam does not list edge-weu"))?;
    c.note(format!("edge-weu runs under generation {old_gen}"));

    c.kill_node("WEU")?;
    let t_kill = Instant::now();
    c.note("killed edge-weu (SIGKILL)");

    // The client tries its own region's node first, and fails...
    let first = c.client("WEU", "WEU", APP_GEO).await;
    match &first {
        Ok(got) => bail!("edge-weu is dead but a WEU client via edge-weu was served by {got}"),
        Err(e) => c.note(format!("a WEU client via edge-weu fails: {e:#}")),
    }
    // ...then retries through another node.
    let got = c.client("WEU", "WNAM", APP_GEO).await?;
    c.note(format!("the WEU client retries via edge-wnam: {got}"));
    assert_eq!(pool_of(&got), "weu", "a WEU client via edge-wnam: {got}");

    wait_member_state(c, &["WNAM", "SEAS"], "edge-weu", "down", DETECT, t_kill).await?;
    let got = c.client("WEU", "WNAM", APP_GEO).await?;
    c.note(format!(
        "with edge-weu down, a WEU client via edge-wnam: {got}"
    ));
    assert_eq!(pool_of(&got), "weu", "a WEU client via edge-wnam: {got}");
    c.note(c.explain("WNAM", "geo", c.client_ip("WEU")).await);
    c.snapshot("edge-weu down").await;

    c.start_node("WEU").await?;
    let t_restart = Instant::now();
    c.note("restarted edge-weu (same id, same config); its status answers");
    // When each node first lists the new incarnation alive (or down); and whether any declares the
    // new incarnation down while its process runs and every link is up (a false failure
    // detection: SWIM's probe timeout, 400 ms, is far above any round trip here).
    let seen: RefCell<BTreeSet<String>> = RefCell::new(BTreeSet::new());
    let flapped: RefCell<Option<String>> = RefCell::new(None);
    let waited = c
        .wait_for(
            "every node lists edge-weu alive under a higher generation, and all 3 alive",
            CONVERGE,
            || async {
                let mut pending = Vec::new();
                for (id, s) in c.statuses().await? {
                    let gen = member_generation(&s, "edge-weu");
                    let state = member_state(&s, "edge-weu").unwrap_or("absent");
                    if let Some(g) = gen.filter(|g| *g > old_gen) {
                        let key = format!("{id} {state} {g}");
                        if state != "suspect" && seen.borrow_mut().insert(key) {
                            c.note(format!(
                                "  {id} lists edge-weu {state}, generation {g} ({} after the restart)",
                                secs(t_restart.elapsed())
                            ));
                        }
                        if state == "down" && flapped.borrow().is_none() {
                            *flapped.borrow_mut() = Some(format!(
                                "{id} declared the restarted, running edge-weu (generation {g}) down {} after the restart: {}",
                                secs(t_restart.elapsed()),
                                describe(&s)
                            ));
                            c.snapshot("flapped").await;
                        }
                    }
                    let a = alive(&s);
                    if a.len() != 3 || gen.is_none_or(|g| g <= old_gen) || state != "alive" {
                        pending.push(format!(
                            "{id}: alive {a:?}, edge-weu {state} generation {gen:?} (old {old_gen})"
                        ));
                    }
                }
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(pending.join("; "))
                }
            },
        )
        .await;
    // A flap fails the scenario even if the node is taken back later; the wait above went on,
    // to show when (if) it was.
    if let Some(msg) = flapped.into_inner() {
        match &waited {
            Ok(took) => c.note(format!(
                "every node lists edge-weu alive, all 3 alive, only {} after the restart",
                secs(*took)
            )),
            Err(e) => c.note(format!("and then: {e:#}")),
        }
        bail!("{msg}");
    }
    let took = waited?;
    let s = c.status("WNAM").await?;
    c.note(format!(
        "edge-weu rejoined: generation {old_gen} -> {:?}, all 3 alive everywhere {} after the restart",
        member_generation(&s, "edge-weu"),
        secs(took)
    ));
    for (id, s) in c.statuses().await.map_err(anyhow::Error::msg)? {
        let n = s.members.iter().filter(|m| m.id == "edge-weu").count();
        assert_eq!(n, 1, "{id} lists edge-weu {n} times: {}", describe(&s));
    }
    let got = c.client("WEU", "WEU", APP_GEO).await?;
    c.note(format!("a WEU client via the restarted edge-weu: {got}"));
    assert_eq!(pool_of(&got), "weu", "a WEU client via edge-weu: {got}");
    c.snapshot("rejoined").await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. A path cut.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_path_cut_is_blamed_on_the_path() -> Result<()> {
    scenario(
        "e2e_path_cut_is_blamed_on_the_path",
        "path-cut",
        Some(switchyard_tests::wan::iptables_check),
        async |c| path_cut(c).await,
    )
    .await
}

/// The region whose node loses its path, and the pool it loses it to.
const CUT_FROM: &str = "WNAM";
const CUT_POOL: &str = "weu";

/// Origin `name` of `pool` in a status document read as JSON.
fn origin_json<'a>(doc: &'a Value, pool: &str, name: &str) -> Option<&'a Value> {
    doc["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == pool)?["origins"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
}

/// A string or null field of a JSON object: Err when the field is not there at all (a node
/// without issue 11's verdicts), so that a wait's last reason says so.
fn opt_str(v: &Value, field: &str, what: &str) -> Result<Option<String>, String> {
    match v.get(field) {
        None => Err(format!(
            "{what} has no field {field:?} (a node without verdicts?)"
        )),
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{what}: {field} is {other}, not a string or null")),
    }
}

/// The node's own verdict on its row for the origin (`pools[].origins[].verdict`).
fn own_verdict(doc: &Value, pool: &str, name: &str) -> Result<Option<String>, String> {
    let o = origin_json(doc, pool, name).ok_or_else(|| format!("no origin {name} in {pool}"))?;
    opt_str(o, "verdict", name)
}

/// The verdict of `observer`'s row for the origin, as gossiped (`observers[node].verdict`).
fn observer_verdict(
    doc: &Value,
    pool: &str,
    name: &str,
    observer: &str,
) -> Result<Option<String>, String> {
    let o = origin_json(doc, pool, name).ok_or_else(|| format!("no origin {name} in {pool}"))?;
    let ob = o["observers"]
        .get(observer)
        .ok_or_else(|| format!("{name}: no observer {observer}"))?;
    opt_str(ob, "verdict", &format!("{name}'s observer {observer}"))
}

/// Whom the node asked about the origin, and what each answered (`asked`).
fn asked(doc: &Value, pool: &str, name: &str) -> BTreeMap<String, String> {
    origin_json(doc, pool, name)
        .and_then(|o| o["asked"].as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `observer`'s row for origin `name` is up, in `s`.
fn observer_up(s: &Status, name: &str, observer: &str) -> Option<bool> {
    s.pools
        .iter()
        .flat_map(|p| &p.origins)
        .find(|o| o.name == name)?
        .observers
        .get(observer)
        .map(|o| o.healthy)
}

/// What must hold on every node during the whole cut, or None: the mesh stays whole (the cut
/// is a path to two origins, not a link), no node calls itself sick (edge-wnam disagrees with
/// the mesh about 2 of 6 origins, not most), and the nodes whose path is intact keep the cut
/// origins up: as their region sees them, globally, and for steering.
fn cut_invariant(docs: &[(&str, Status, Value)], cut: &[String]) -> Option<String> {
    for (region, s, v) in docs {
        let id = node_id(region);
        let a = alive(s);
        if a.len() != 3 {
            return Some(format!("{id} sees alive {a:?}: {}", describe(s)));
        }
        if !v["node"]["sick"].is_null() {
            return Some(format!("{id} calls itself sick: {}", v["node"]["sick"]));
        }
        if *region == CUT_FROM {
            continue;
        }
        for o in s.pools.iter().flat_map(|p| &p.origins) {
            if !cut.contains(&o.name) {
                continue;
            }
            let regions_up = ["WEU", "SEAS"]
                .iter()
                .all(|r| o.region_health.get(*r) == Some(&true));
            if !o.healthy || !regions_up || o.global_health != Some(true) {
                return Some(format!(
                    "{id} sees {} healthy={} region_health={:?} global_health={:?}: {}",
                    o.name,
                    o.healthy,
                    o.region_health,
                    o.global_health,
                    describe(s)
                ));
            }
        }
        if !s.pools.iter().any(|p| p.name == CUT_POOL && p.healthy) {
            return Some(format!(
                "{id} sees pool {CUT_POOL} unhealthy: {}",
                describe(s)
            ));
        }
    }
    None
}

impl Cluster {
    /// A client of region `from` on app `app` of the node of `via`, served by `pool` through a
    /// peer because that node's own path is down (its explain says so just before): the
    /// greeting and the path, or why not.
    async fn served_relayed(
        &self,
        from: &str,
        via: &str,
        app: &str,
        pool: &str,
    ) -> Result<String, String> {
        use switchyard_node::core::relay::Why;
        let e = self
            .explanation(via, app, self.client_ip(from))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let path = e.path.unwrap_or_default();
        let relayed = path
            .strip_prefix("via ")
            .and_then(|p| p.split_whitespace().next())
            .filter(|peer| path == via_words(peer, Why::DirectDown));
        if relayed.is_none() {
            return Err(format!(
                "path {path:?} ({})",
                e.path_reason.unwrap_or_default()
            ));
        }
        let got = self.origin_for(from, via, app).await?;
        if pool_of(&got) != pool {
            return Err(format!("served by {got}, path {path}"));
        }
        Ok(format!("{got} ({path})"))
    }

    /// Every node's status, typed and as JSON, by region.
    async fn docs(&self) -> Result<Vec<(&'static str, Status, Value)>, String> {
        let mut all = Vec::new();
        for (region, id, _) in NODES {
            let (s, v) = self
                .status_doc(region)
                .await
                .map_err(|e| format!("{id}: {e:#}"))?;
            all.push((region, s, v));
        }
        Ok(all)
    }
}

async fn path_cut(c: &Cluster) -> Result<()> {
    let me = node_id(CUT_FROM);
    let cut: Vec<String> = (c.topo.origins.iter())
        .filter(|o| o.pool == CUT_POOL)
        .map(|o| o.name.clone())
        .collect();
    // The first invariant broken while the path is cut, if any: checked on every poll of every
    // wait below, reported at the end (after the heal, to show how it ended).
    let broken: RefCell<Option<String>> = RefCell::new(None);
    // edge-wnam's verdict on each cut origin, as each node last showed it (its own on
    // edge-wnam, the gossiped one elsewhere): each change goes on the timeline, from every poll.
    let verdicts: RefCell<BTreeMap<String, Option<String>>> = RefCell::new(BTreeMap::new());
    let verdict_seen = |region: &str, v: &Value, o: &str| {
        if region == CUT_FROM {
            own_verdict(v, CUT_POOL, o)
        } else {
            observer_verdict(v, CUT_POOL, o, me)
        }
    };
    let track = |docs: &[(&str, Status, Value)], since: Instant, what: &str| {
        for (region, _, v) in docs {
            for o in &cut {
                // A document without the field is reported by the waits that need it.
                let Ok(got) = verdict_seen(region, v, o) else {
                    continue;
                };
                let key = format!("{}/{o}", node_id(region));
                let last = verdicts.borrow_mut().insert(key, got.clone());
                // Changes only: not the first look at a node that has no verdict yet.
                if last.as_ref() != Some(&got) && (last.is_some() || got.is_some()) {
                    c.note(format!(
                        "  {}: {me}'s verdict on {o}: {got:?} ({} after the {what})",
                        node_id(region),
                        secs(since.elapsed())
                    ));
                }
            }
        }
    };
    let watch = |docs: &[(&str, Status, Value)], t: Instant| {
        track(docs, t, "cut");
        if broken.borrow().is_none() {
            if let Some(why) = cut_invariant(docs, &cut) {
                c.note(format!(
                    "  BROKEN {} after the cut: {why}",
                    secs(t.elapsed())
                ));
                *broken.borrow_mut() = Some(why);
            }
        }
    };

    // Before: weu serves a WEU client through its own node and through edge-seas, a SEAS
    // client through edge-seas's failover app (weu first, for every client), and a WEU client
    // through edge-wnam. (Not a WNAM client anywhere during the cut: every node judges health
    // as the client's region sees it, and edge-wnam is WNAM's only observer.)
    let routes = [
        ("WEU", "WEU", APP_GEO),
        ("WEU", "WEU", APP_FAILOVER),
        ("WEU", "SEAS", APP_GEO),
        ("SEAS", "SEAS", APP_FAILOVER),
    ];
    for (from, via, app) in routes.iter().chain(&[("WEU", CUT_FROM, APP_GEO)]) {
        let got = c.client(from, via, app).await?;
        assert_eq!(
            pool_of(&got),
            CUT_POOL,
            "before the cut, a {from} client via {}'s {app} app: {got}",
            node_id(via)
        );
    }
    c.note(format!(
        "before: {CUT_POOL} serves WEU clients via edge-weu, edge-seas and {me}, and SEAS clients via edge-seas's failover app"
    ));

    // The cut: edge-wnam's packets to weu-1 vanish (a black hole: its probes time out), and
    // to weu-2 are answered "host unreachable" (as a router on the way would: its probes fail
    // at once). Both ports of each, so its clients could not be served there either. Nothing
    // else changes: the WNAM-WEU link carries the mesh and every other node's traffic.
    let from_ip = c.node(CUT_FROM).mesh.ip();
    let mut rules = Vec::new();
    for (o, target) in cut
        .iter()
        .zip(["DROP", "REJECT --reject-with icmp-host-unreachable"])
    {
        let ip = c.topo.origin(o).expect("a cut origin").ip;
        rules.push(Rule::new(
            "OUTPUT",
            &format!(
                "-s {from_ip} -d {ip} -p tcp -m multiport --dports {},{} -j {target}",
                testnet::ORIGIN_PORT,
                testnet::HEALTH_PORT
            ),
        ));
    }
    let fw = c.tb().firewall(CUT_FROM, &rules)?;
    let t_cut = Instant::now();
    c.note(format!(
        "cut {me}'s path to {cut:?} ({CUT_FROM} namespace):"
    ));
    for r in fw.rules() {
        c.note(format!("  iptables {r}"));
    }

    // edge-wnam's own rows go down, and reach every node.
    let seen: RefCell<BTreeSet<&str>> = RefCell::new(BTreeSet::new());
    let took = c
        .wait_for(
            &format!(
                "{me}'s rows for {cut:?} down in every node's view, and {me} steering without them"
            ),
            CONVERGE,
            || async {
                let docs = c.docs().await?;
                watch(&docs, t_cut);
                let mut pending = Vec::new();
                for (region, s, _) in &docs {
                    let id = node_id(region);
                    let down = cut.iter().all(|o| observer_up(s, o, me) == Some(false));
                    let steers = *region != CUT_FROM
                        || (s.pools.iter().flat_map(|p| &p.origins))
                            .filter(|o| cut.contains(&o.name))
                            .all(|o| !o.healthy);
                    if down && steers {
                        if seen.borrow_mut().insert(id) {
                            c.note(format!(
                                "  {id} sees {me}'s rows for {cut:?} down ({} after the cut)",
                                secs(t_cut.elapsed())
                            ));
                        }
                    } else {
                        pending.push(format!("{id}: {}", describe(s)));
                    }
                }
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(pending.join("; "))
                }
            },
        )
        .await?;
    let (s, _) = c.status_doc(CUT_FROM).await?;
    for o in s.pools.iter().flat_map(|p| &p.origins) {
        if cut.contains(&o.name) {
            c.note(format!(
                "  {me}'s probe of {}: {}",
                o.name,
                o.reason.as_deref().unwrap_or("(no reason)")
            ));
        }
    }
    c.note(format!(
        "{me}'s rows down everywhere {} after the cut (a plain failure's bound: {:?})",
        secs(took),
        failover_bound()
    ));
    c.snapshot("cut").await;

    // A path down from edge-wnam alone does not make weu down: its failover app (relay =
    // "failover", the default) keeps weu for its own region's clients, through a peer that
    // reaches it (WNAM's view has weu down). The other nodes keep serving weu, with both of its
    // origins, to their own clients and to SEAS's.
    c.wait_for(
        &format!("a WNAM client via {me}'s failover app is served by {CUT_POOL}, relayed"),
        CONVERGE,
        || async {
            watch(&c.docs().await?, t_cut);
            c.served_relayed("WNAM", CUT_FROM, APP_FAILOVER, CUT_POOL)
                .await
                .map(|_| ())
        },
    )
    .await?;
    c.note(format!(
        "  during the cut, a WNAM client via {me}'s failover app (weu, wnam, seas) is served by {}",
        c.served_relayed("WNAM", CUT_FROM, APP_FAILOVER, CUT_POOL)
            .await
            .map_err(anyhow::Error::msg)?
    ));
    for (from, via, app) in routes {
        let served: RefCell<BTreeSet<String>> = RefCell::new(BTreeSet::new());
        c.wait_for(
            &format!(
                "a {from} client via {}'s {app} app served by each of {cut:?}",
                node_id(via)
            ),
            CONVERGE,
            || async {
                watch(&c.docs().await?, t_cut);
                // Any client of these that weu does not serve is one the cut reached: it
                // fails the scenario, even if the next one is served.
                let got = match c.origin_for(from, via, app).await {
                    Ok(got) if pool_of(&got) == CUT_POOL => got,
                    other => {
                        let why = format!(
                            "a {from} client via {}'s {app} app: {other:?}",
                            node_id(via)
                        );
                        c.note(format!(
                            "  BROKEN {} after the cut: {why}",
                            secs(t_cut.elapsed())
                        ));
                        broken.borrow_mut().get_or_insert(why.clone());
                        return Err(why);
                    }
                };
                served.borrow_mut().insert(got);
                let missing: Vec<&String> = cut
                    .iter()
                    .filter(|o| !served.borrow().contains(*o))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not yet served by {missing:?}"))
                }
            },
        )
        .await
        .with_context(|| format!("a {from} client via {}", node_id(via)))?;
        c.note(format!(
            "  during the cut, a {from} client via {}'s {app} app is served by {:?}",
            node_id(via),
            served.into_inner()
        ));
    }

    // Not asserted, for the record: a WNAM client through edge-seas, judged as WNAM sees weu.
    c.note(format!(
        "  during the cut, a WNAM client via edge-seas's failover app: {} (health as WNAM sees it)",
        c.origin_for("WNAM", "SEAS", APP_FAILOVER)
            .await
            .unwrap_or_else(|e| e)
    ));

    // The verdict: edge-wnam asked peers in other regions, they reach weu, so the path is to
    // blame; the other nodes learn it with the row.
    let took = c
        .wait_for(
            &format!("{me}'s verdict on {cut:?} is \"path\", as every node sees it"),
            CONVERGE,
            || async {
                let docs = c.docs().await?;
                watch(&docs, t_cut);
                let mut pending = Vec::new();
                for (region, _, v) in &docs {
                    for o in &cut {
                        let got = verdict_seen(region, v, o)?;
                        if got.as_deref() != Some("path") {
                            pending.push(format!("{}/{o}: {got:?}", node_id(region)));
                        }
                    }
                }
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(pending.join("; "))
                }
            },
        )
        .await?;
    c.note(format!(
        "every node sees {me}'s verdict \"path\" on {cut:?} ({} after the cut; waited {})",
        secs(t_cut.elapsed()),
        secs(took)
    ));
    let (s, v) = c.status_doc(CUT_FROM).await?;
    for o in &cut {
        let a = asked(&v, CUT_POOL, o);
        c.note(format!("  {me} asked about {o}: {a:?}"));
        // Only peers in other regions can tell the path from the origin.
        let up: Vec<&String> = (a.iter())
            .filter(|(peer, answer)| {
                c.topo.region_of(peer) != Some(CUT_FROM) && answer.starts_with("up")
            })
            .map(|(peer, _)| peer)
            .collect();
        assert!(
            !up.is_empty(),
            "{me}'s verdict on {o} is \"path\", but no peer in another region answered up: {a:?}"
        );
    }
    // The verdict is about the cut origins only: every other origin is up with no verdict.
    for o in s.pools.iter().flat_map(|p| &p.origins) {
        if cut.contains(&o.name) {
            continue;
        }
        let pool = pool_of(&o.name);
        let verdict = own_verdict(&v, pool, &o.name).map_err(anyhow::Error::msg)?;
        assert!(
            o.healthy && verdict.is_none(),
            "{me}: {} healthy={} verdict={verdict:?}, expected up with none",
            o.name,
            o.healthy
        );
    }
    // Knowing that its own path is to blame, edge-wnam does not send a client there directly
    // whatever the client's region sees: a WEU client on its geo app (WEU's view has weu up)
    // is served by weu through a peer, not held until connect_timeout and closed. Checked
    // after the verdict, and on failure the scenario goes on to heal (to show the rest), then
    // fails with it.
    let stranded = c
        .wait_for(
            &format!("a WEU client via {me}'s geo app is served by {CUT_POOL}, relayed"),
            CONVERGE,
            || async {
                watch(&c.docs().await?, t_cut);
                c.served_relayed("WEU", CUT_FROM, APP_GEO, CUT_POOL)
                    .await
                    .map(|_| ())
            },
        )
        .await;
    match &stranded {
        Ok(_) => c.note(format!(
            "  during the cut, a WEU client via {me}'s geo app is served by {}",
            c.served_relayed("WEU", CUT_FROM, APP_GEO, CUT_POOL)
                .await
                .map_err(anyhow::Error::msg)?
        )),
        Err(_) => c.note(c.explain(CUT_FROM, APP_GEO, c.client_ip("WEU")).await),
    }
    // A path cut is not sickness: edge-wnam stays ready.
    c.http_get(CUT_FROM, "/ready")
        .await
        .with_context(|| format!("{me}'s /ready during the cut"))?;
    c.note(format!("{me} is ready, and not sick, during the cut"));
    let docs = c.docs().await.map_err(anyhow::Error::msg)?;
    watch(&docs, t_cut);
    c.snapshot("blamed").await;

    fw.remove()?;
    let t_heal = Instant::now();
    c.note(format!("healed: removed the iptables rules in {CUT_FROM}"));
    let took = c
        .wait_for(
            &format!("{me}'s rows for {cut:?} up in every node's view, its verdict cleared"),
            CONVERGE,
            || async {
                let docs = c.docs().await?;
                track(&docs, t_heal, "heal");
                let mut pending = Vec::new();
                for (region, s, v) in &docs {
                    let id = node_id(region);
                    for o in &cut {
                        let up = observer_up(s, o, me);
                        let verdict = verdict_seen(region, v, o)?;
                        if up != Some(true) || verdict.is_some() {
                            pending.push(format!(
                                "{id}: {me}'s row for {o} up={up:?} verdict={verdict:?}"
                            ));
                        }
                    }
                }
                if pending.is_empty() {
                    Ok(())
                } else {
                    Err(pending.join("; "))
                }
            },
        )
        .await?;
    c.note(format!(
        "{me}'s rows up again and its verdict cleared everywhere {} after the heal",
        secs(took)
    ));
    c.wait_for(
        "every node's view agrees: every origin up in every region",
        CONVERGE,
        || async { c.views_agree().await },
    )
    .await?;
    for (from, app) in [("WEU", APP_GEO), ("WNAM", APP_FAILOVER)] {
        let got = c.client(from, CUT_FROM, app).await?;
        c.note(format!(
            "after the heal, a {from} client via {me}'s {app} app: {got}"
        ));
        assert_eq!(
            pool_of(&got),
            CUT_POOL,
            "a {from} client via {me}'s {app} app: {got}"
        );
    }
    c.note(format!(
        "views agree {} after the heal",
        secs(t_heal.elapsed())
    ));
    c.snapshot("healed").await;
    if let Some(why) = broken.into_inner() {
        bail!("while {me}'s path to {cut:?} was cut: {why}");
    }
    stranded.with_context(|| format!("while {me}'s path to {cut:?} was cut"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. A revoked node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_revoked_node_is_cut_off() -> Result<()> {
    scenario("e2e_revoked_node_is_cut_off", "revoke", None, async |c| {
        revoke(c).await
    })
    .await
}

/// The region of the node that is revoked, and the regions that revoke it.
const REVOKED: &str = "SEAS";
const REVOKERS: [&str; 2] = ["WNAM", "WEU"];

impl Cluster {
    /// Rewrites the region's node config with `[mesh] revoked = list` and sends it SIGHUP.
    fn reload_with_revocations(&self, region: &str, list: &Path) -> Result<()> {
        let id = node_id(region);
        let path = self.config_path(id);
        let text = std::fs::read_to_string(&path)?;
        let files = NodeFiles::under(&self.dir, id, &self.dir.join("geo.mmdb"));
        let key_line = format!("key = {:?}", files.key.display().to_string());
        if !text.contains(&key_line) {
            bail!(
                "{}: no line {key_line:?} to put the revocation list after",
                path.display()
            );
        }
        let text = if text.contains("\nrevoked = ") {
            text
        } else {
            text.replace(
                &key_line,
                &format!("{key_line}\nrevoked = {:?}", list.display().to_string()),
            )
        };
        std::fs::write(&path, text)?;
        self.sighup(region)
    }

    /// Sends the region's node SIGHUP: it reloads its config file.
    fn sighup(&self, region: &str) -> Result<()> {
        let pid = self
            .nodes
            .get(region)
            .ok_or_else(|| anyhow!("no node running in {region}"))?
            .id();
        let pid = i32::try_from(pid).context("pid")?;
        // SAFETY: sends a signal to our own child, which is still running (not reaped).
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            bail!(
                "SIGHUP {}: {}",
                node_id(region),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The region's node's count of mesh refusals by reason, from its metrics.
    async fn refusals(&self, region: &str) -> Result<BTreeMap<String, f64>, String> {
        self.counts(region, "switchyard_mesh_refused_total", "reason", &[])
            .await
    }

    /// The region's node's counter `metric` (its series whose labels include every pair of
    /// `with`), summed per value of `label`, from its metrics.
    async fn counts(
        &self,
        region: &str,
        metric: &str,
        label: &str,
        with: &[(&str, &str)],
    ) -> Result<BTreeMap<String, f64>, String> {
        let text = self
            .http_get(region, "/metrics")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let series = format!("{metric}{{");
        let key = format!("{label}=\"");
        let mut out = BTreeMap::new();
        for l in text.lines().filter(|l| l.starts_with(&series)) {
            if !with
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            {
                continue;
            }
            let (Some(value), Some(v)) = (
                l.split(&key).nth(1).and_then(|r| r.split('"').next()),
                l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            *out.entry(value.to_string()).or_default() += v;
        }
        Ok(out)
    }
}

async fn revoke(c: &Cluster) -> Result<()> {
    let gone = node_id(REVOKED);
    let list = c.dir.join("revoked.txt");
    // The operator's way: the CLI appends the entry.
    let out = std::process::Command::new(&c.switchyard)
        .args(["cert", "revoke", "--list"])
        .arg(&list)
        .args(["--node", gone])
        .output()
        .context("run switchyard cert revoke")?;
    if !out.status.success() {
        bail!(
            "switchyard cert revoke --node {gone}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.note(format!(
        "revocation list: {:?}",
        std::fs::read_to_string(&list)?.trim()
    ));
    for region in REVOKERS {
        c.reload_with_revocations(region, &list)?;
    }
    let t = Instant::now();
    c.note(format!(
        "edge-wnam and edge-weu reloaded with {gone} revoked"
    ));

    // The revokers drop it: not alive, none of its rows in their views, refusals counted.
    c.wait_for(
        &format!("edge-wnam and edge-weu drop {gone}: not alive, no rows of it, refusals counted"),
        DETECT,
        || async {
            for region in REVOKERS {
                let id = node_id(region);
                let s = c.status(region).await.map_err(|e| format!("{id}: {e:#}"))?;
                let state = member_state(&s, gone).unwrap_or("absent");
                if state == "alive" || state == "suspect" {
                    return Err(format!("{id} lists {gone} {state}"));
                }
                if let Some(o) = (s.pools.iter().flat_map(|p| &p.origins))
                    .find(|o| o.observers.contains_key(gone))
                {
                    return Err(format!("{id} still holds {gone}'s row of {}", o.name));
                }
                let revoked = c.refusals(region).await?.get("revoked").copied();
                if revoked.unwrap_or(0.0) == 0.0 {
                    return Err(format!("{id} counted no refusal for revocation yet"));
                }
            }
            Ok(())
        },
    )
    .await?;
    c.note(format!(
        "edge-wnam and edge-weu dropped {gone} ({} after the reload)",
        secs(t.elapsed())
    ));
    c.snapshot("revoked").await;

    // They keep serving every region's clients, SEAS's from their own probes of its origins.
    for (via, from) in [("WNAM", "SEAS"), ("WEU", "WEU"), ("WEU", "SEAS")] {
        c.served_by_own_region(from, via).await?;
    }
    for region in REVOKERS {
        let s = c.status(region).await?;
        let a = alive(&s);
        assert!(
            a.len() == 2 && !a.contains(&gone),
            "{} lists alive {a:?}",
            node_id(region)
        );
    }

    // The revoked node is cut off: its handshakes are refused, so it declares the others down.
    c.wait_for(
        &format!("{gone} declares edge-wnam and edge-weu down"),
        DETECT,
        || async {
            let s = c
                .status(REVOKED)
                .await
                .map_err(|e| format!("{gone}: {e:#}"))?;
            for region in REVOKERS {
                let state = member_state(&s, node_id(region)).unwrap_or("absent");
                if state == "alive" || state == "suspect" {
                    return Err(format!("{gone} lists {} {state}", node_id(region)));
                }
            }
            Ok(())
        },
    )
    .await?;
    c.note(format!(
        "{gone} lists the others down ({} after the reload)",
        secs(t.elapsed())
    ));

    // A mistaken revocation is undone the same way: empty the list and reload.
    std::fs::write(&list, "# nothing revoked\n")?;
    for region in REVOKERS {
        c.reload_with_revocations(region, &list)?;
    }
    let t = Instant::now();
    c.note("the list emptied; edge-wnam and edge-weu reloaded");
    c.wait_for(
        &format!("{gone} back: every node lists all 3 alive, every origin observed by all 3"),
        CONVERGE,
        || async {
            for (id, s) in c.statuses().await? {
                let a = alive(&s);
                if a.len() != 3 {
                    return Err(format!("{id} sees alive: {a:?}"));
                }
            }
            c.views_agree().await
        },
    )
    .await?;
    c.note(format!(
        "{gone} is back ({} after the reload)",
        secs(t.elapsed())
    ));
    c.served_by_own_region("SEAS", REVOKED).await
}

// ---------------------------------------------------------------------------------------------
// 8. A lying member.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_lying_member_changes_nothing() -> Result<()> {
    scenario(
        "e2e_a_lying_member_changes_nothing",
        "liar",
        None,
        async |c| liar(c).await,
    )
    .await
}

impl Cluster {
    /// `mesh-liar` in `region`'s namespace, from its client address, holding a certificate
    /// that the cluster CA issued it for `region`, aimed at the node of `target`: the arguments
    /// every mode takes; the caller adds the mode and its own.
    fn liar_command(&self, region: &str, target: &str) -> Result<std::process::Command> {
        let ca = self.dir.join("ca");
        let paths =
            switchyard_gossip::tls::issue_cert_in(&ca, "liar", Some(region.parse()?), &self.dir)
                .map_err(|e| anyhow!("issue the liar's certificate: {e}"))?;
        let mut cmd = self.tb().command(region, MESH_LIAR)?;
        cmd.arg("--ca")
            .arg(ca.join(switchyard_gossip::tls::CA_CERT_FILE))
            .arg("--cert")
            .arg(&paths.cert)
            .arg("--key")
            .arg(&paths.key)
            .args(["--cluster", &self.topo.cluster, "--region", region])
            .args([
                "--bind",
                &SocketAddr::new(self.client_ip(region), 0).to_string(),
            ])
            .args(["--target", &self.node(target).mesh.to_string()])
            .args(["--target-id", node_id(target)])
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `mesh-liar` to the end, noting what it printed; its lines, or why it failed.
    fn run_liar(&self, mut cmd: std::process::Command) -> Result<Vec<String>> {
        let out = cmd.output().context("run mesh-liar")?;
        let lines: Vec<String> = (String::from_utf8_lossy(&out.stdout).lines())
            .map(str::to_string)
            .collect();
        for line in &lines {
            self.note(format!("  liar: {line}"));
        }
        if !out.status.success() {
            bail!("mesh-liar failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(lines)
    }
}

/// Where the liar runs, whom it lies to, and about whom.
const LIAR_REGION: &str = "WEU";
const LIED_TO: &str = "WNAM";
const LIED_ABOUT: &str = "WEU";

async fn liar(c: &Cluster) -> Result<()> {
    let victim = node_id(LIED_ABOUT);
    let target = node_id(LIED_TO);
    let before = c.statuses().await.map_err(anyhow::Error::msg)?;
    let generation = |s: &Status| member_generation(s, victim);
    let victim_gen =
        generation(&before[0].1).ok_or_else(|| anyhow!("no generation of {victim}"))?;
    let refused_before = c.refusals(LIED_TO).await.map_err(anyhow::Error::msg)?;

    let victim_node = c.node(LIED_ABOUT);
    let origins: Vec<String> = (c.topo.origins.iter())
        .filter(|o| o.pool == pool_of_region(LIED_ABOUT))
        .map(|o| o.name.clone())
        .collect();
    let mut cmd = c.liar_command(LIAR_REGION, LIED_TO)?;
    cmd.args(["lie", "--other-region", "SEAS"])
        .args(["--victim", victim, "--victim-region", LIED_ABOUT])
        .args(["--victim-addr", &victim_node.mesh.to_string()])
        .args(["--victim-generation", &victim_gen.to_string()])
        .args([
            "--pool",
            pool_of_region(LIED_ABOUT),
            "--origins",
            &origins.join(","),
        ]);
    c.run_liar(cmd)?;
    let t = Instant::now();

    // Every lie arrived and was refused for what it is.
    let wanted = [
        "bad_signature",
        "future_epoch",
        "future_generation",
        "wrong_region",
    ];
    c.wait_for(
        &format!("{target} refuses each lie, counted by its reason"),
        CONVERGE,
        || async {
            let now = c.refusals(LIED_TO).await?;
            let grew = |r: &str| {
                now.get(r).copied().unwrap_or(0.0) > refused_before.get(r).copied().unwrap_or(0.0)
            };
            match wanted.iter().find(|r| !grew(r)) {
                Some(r) => Err(format!("no new {r} refusal yet; refusals {now:?}")),
                None => Ok(()),
            }
        },
    )
    .await?;
    let now = c.refusals(LIED_TO).await.map_err(anyhow::Error::msg)?;
    let count = |m: &BTreeMap<String, f64>, r: &str| m.get(r).copied().unwrap_or(0.0);
    // Each made-up member refused: no certificate of its id exists to check it against.
    assert!(
        count(&now, "unknown_signer") - count(&refused_before, "unknown_signer") >= 300.0,
        "made-up members refused: {now:?} (before: {refused_before:?})"
    );
    c.note(format!(
        "{target}'s refusals: {now:?} ({} after the liar finished)",
        secs(t.elapsed())
    ));

    // Nothing it said took: edge-weu alive under its own generation, its rows up, no made-up
    // member, on every node; the views agree (the liar itself, a member for a while, aside).
    for (id, s) in c.statuses().await.map_err(anyhow::Error::msg)? {
        assert_eq!(
            member_state(&s, victim),
            Some("alive"),
            "{id}: {}",
            describe(&s)
        );
        assert_eq!(generation(&s), Some(victim_gen), "{id}: {}", describe(&s));
        let made_up: Vec<&str> = (s.members.iter())
            .filter(|m| m.id.starts_with("made-up-"))
            .map(|m| m.id.as_str())
            .collect();
        assert!(made_up.is_empty(), "{id} lists made-up members {made_up:?}");
        assert!(
            s.members.len() <= 4,
            "{id} lists {} members: {}",
            s.members.len(),
            describe(&s)
        );
        for o in &origins {
            assert_eq!(
                observer_up(&s, o, victim),
                Some(true),
                "{id}: {victim}'s row of {o}: {}",
                describe(&s)
            );
        }
    }
    c.views_agree().await.map_err(anyhow::Error::msg)?;
    c.snapshot("after the lies").await;
    for (via, from) in [("WNAM", "WEU"), ("WNAM", "WNAM"), ("WEU", "WEU")] {
        c.served_by_own_region(from, via).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. DNS.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_dns_answers_follow_the_mesh() -> Result<()> {
    scenario(
        "e2e_dns_answers_follow_the_mesh",
        "dns",
        Some(dig_check),
        async |c| dns(c).await,
    )
    .await
}

fn dig_check() -> Result<()> {
    match std::process::Command::new("dig").arg("-v").output() {
        Ok(_) => Ok(()),
        Err(e) => bail!("dig is needed (apt-get install bind9-dnsutils): {e}"),
    }
}

impl Cluster {
    /// The A records the node of `via` answers for `name` to a client of region `from` (dig
    /// from the client's address in its namespace: the resolver's address places it), in the
    /// answer's order.
    async fn resolve(&self, from: &str, via: &str, name: &str) -> Result<Vec<IpAddr>, String> {
        let dns = self.node(via).dns;
        let out = self
            .tb()
            .command(from, "dig")
            .map_err(|e| format!("{e:#}"))?
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string()])
            .args(["-b", &self.client_ip(from).to_string()])
            .args(["+short", "+tries=1", "+time=2", name, "A"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("dig: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("dig @{dns} {name} from {from}: {text}"));
        }
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Waits until `check` holds of every running node's answer for `name` to a client of
    /// `from`; notes each node's answer when it does.
    async fn wait_answers(
        &self,
        what: &str,
        from: &str,
        name: &str,
        within: Duration,
        check: impl Fn(&[IpAddr]) -> bool,
    ) -> Result<Duration> {
        let seen: RefCell<Vec<String>> = RefCell::new(Vec::new());
        let took = self
            .wait_for(what, within, || async {
                let mut lines = Vec::new();
                for (region, id, _) in NODES {
                    if !self.nodes.contains_key(region) {
                        continue;
                    }
                    let got = self.resolve(from, region, name).await?;
                    if !check(&got) {
                        return Err(format!(
                            "{id} answers {name} to a {from} client with {got:?}"
                        ));
                    }
                    lines.push(format!("{id}: {got:?}"));
                }
                *seen.borrow_mut() = lines;
                Ok(())
            })
            .await?;
        self.note(format!(
            "{what} ({}): {}",
            secs(took),
            seen.into_inner().join(", ")
        ));
        Ok(took)
    }
}

async fn dns(c: &mut Cluster) -> Result<()> {
    let zone = testnet::DNS_ZONE;
    let geo = format!("{APP_GEO}.{zone}");
    let failover = format!("{APP_FAILOVER}.{zone}");
    let topo = c.topo.clone();
    let public = |region: &str| {
        topo.node_in(region)
            .expect("a node in every region")
            .public()
    };
    let (weu, seas) = (public("WEU"), public("SEAS"));

    c.wait_answers(
        "every node answers a WEU client with edge-weu first",
        "WEU",
        &geo,
        CONVERGE,
        |a| a.first() == Some(&weu),
    )
    .await?;

    c.kill_node("WEU")?;
    let t = Instant::now();
    c.note("killed edge-weu (SIGKILL)");
    c.wait_answers(
        "every node answers a WEU client without edge-weu",
        "WEU",
        &geo,
        DETECT,
        |a| !a.is_empty() && !a.contains(&weu),
    )
    .await?;
    c.note(format!(
        "edge-weu left the answers {} after the kill",
        secs(t.elapsed())
    ));
    // The client's next connection, to the first address answered, is served (from its
    // region's pool: geo steering, whichever node takes it).
    let first = c
        .resolve("WEU", "WNAM", &geo)
        .await
        .map_err(anyhow::Error::msg)?[0];
    let via = NODES
        .iter()
        .find(|(r, ..)| public(r) == first)
        .map(|(r, ..)| *r)
        .ok_or_else(|| anyhow!("{first} is no node's address"))?;
    c.served_by_own_region("WEU", via).await?;

    c.start_node("WEU").await?;
    c.note("restarted edge-weu");
    c.wait_answers(
        "every node answers a WEU client with edge-weu first again",
        "WEU",
        &geo,
        CONVERGE,
        |a| a.first() == Some(&weu),
    )
    .await?;

    // One app of edge-seas, pointed at a pool only it has, which is down.
    let id = node_id("SEAS");
    let path = c.config_path(id);
    let original = std::fs::read_to_string(&path)?;
    let mut doc: toml::Table = original.parse()?;
    let dead_origin = SocketAddr::new(c.node("SEAS").public(), 7999);
    let pool: toml::Table = toml::from_str(&format!(
        "name = \"dead\"\nmonitor = \"http\"\norigins = [{{ name = \"dead-1\", address = \"{dead_origin}\" }}]"
    ))?;
    doc.get_mut("pool")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| anyhow!("{}: no [[pool]]", path.display()))?
        .push(pool.into());
    let lbs = doc
        .get_mut("load_balancer")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| anyhow!("{}: no [[load_balancer]]", path.display()))?;
    let lb = lbs
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(APP_FAILOVER))
        .ok_or_else(|| anyhow!("{}: no load balancer {APP_FAILOVER}", path.display()))?;
    lb.insert("default_pools".into(), vec!["dead"].into());
    lb.remove("fallback_pool");
    std::fs::write(&path, toml::to_string(&doc)?)?;
    c.sighup("SEAS")?;
    c.note(format!(
        "{id} reloaded: its {APP_FAILOVER} load balancer now uses pool dead only ({dead_origin}, nothing listens)"
    ));
    c.wait_answers(
        &format!("every node answers {failover} without {id}"),
        "SEAS",
        &failover,
        DETECT,
        |a| !a.is_empty() && !a.contains(&seas),
    )
    .await?;
    c.wait_answers(
        &format!("and still answers {geo} with {id} first to a SEAS client"),
        "SEAS",
        &geo,
        STEP,
        |a| a.first() == Some(&seas),
    )
    .await?;

    std::fs::write(&path, original)?;
    c.sighup("SEAS")?;
    c.wait_answers(
        &format!("{id} is back in {failover}'s answers, first for a SEAS client"),
        "SEAS",
        &failover,
        DETECT,
        |a| a.first() == Some(&seas),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10-12. Relaying through a peer.

/// The region whose node relays its clients' connections, the region of the node that carries
/// them, and the region of the relay app's only pool.
const RELAY_FROM: &str = "WNAM";
const RELAY_VIA: &str = "SEAS";
const RELAY_TO: &str = "WEU";
/// Connections made in a row to show where new connections go.
const RELAY_PROBES: usize = 3;

/// For a path chosen by `relay = "fastest"` to be given up: the node keeps it for the hold-down
/// while it works, then follows the round trips; plus the time for those to catch up.
fn relay_switch_bound() -> Duration {
    switchyard_node::core::relay::HOLD_DOWN + RTT_CATCH_UP
}

/// What explain says of a path through `peer`, for `why` (the node's own words).
fn via_words(peer: &str, why: switchyard_node::core::relay::Why) -> String {
    switchyard_node::core::relay::Path::Via {
        peer: peer.into(),
        expected_rtt: None,
        why,
    }
    .words()
}

impl Cluster {
    /// The relay streams the node of `server` accepted from the node of `asker`, all told
    /// (`switchyard_mesh_relay_streams_total{peer, direction="received"}`).
    async fn relay_streams_from(&self, server: &str, asker: &str) -> Result<f64, String> {
        let by_peer = self
            .counts(
                server,
                "switchyard_mesh_relay_streams_total",
                "peer",
                &[("direction", "received")],
            )
            .await?;
        Ok(by_peer.get(node_id(asker)).copied().unwrap_or(0.0))
    }

    /// The relay app's path for a client of RELAY_FROM on its node, as explain words it.
    async fn relay_path(&self) -> Result<(String, String), String> {
        let e = self
            .explanation(RELAY_FROM, APP_RELAY, self.client_ip(RELAY_FROM))
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok((
            e.path.unwrap_or_else(|| "(no path)".into()),
            e.path_reason.unwrap_or_default(),
        ))
    }

    /// A client of RELAY_FROM on its own node's relay app, served by the relay pool: the
    /// greeting, or why not.
    async fn relay_client(&self) -> Result<String, String> {
        let got = self.origin_for(RELAY_FROM, RELAY_FROM, APP_RELAY).await?;
        if pool_of(&got) != testnet::RELAY_POOL {
            return Err(format!(
                "served by {got}, not the {} pool",
                testnet::RELAY_POOL
            ));
        }
        Ok(got)
    }

    /// Waits until the relay app's path for RELAY_FROM's clients is `want` and every origin of
    /// the relay pool has served a connection on that path since the last one that was not (a
    /// connection each poll: the path of real connections is what the hold-down remembers,
    /// one hold per origin, each from its own switch); notes how long it took.
    async fn wait_relay_path(&self, want: &str, within: Duration, since: Instant) -> Result<()> {
        let me = node_id(RELAY_FROM);
        let relayed_wanted = want != "direct";
        let pool: BTreeSet<String> = (self.topo.origins.iter())
            .filter(|o| o.pool == testnet::RELAY_POOL)
            .map(|o| o.name.clone())
            .collect();
        // The origins that served a connection on the wanted path since one did not.
        let on_path: RefCell<BTreeSet<String>> = RefCell::new(BTreeSet::new());
        self.wait_for(
            &format!(
                "{me}'s new relay connections take the path \"{want}\", to each of {pool:?}"
            ),
            within,
            || async {
                let before = self.relay_streams_from(RELAY_VIA, RELAY_FROM).await?;
                let got = self.relay_client().await?;
                let relayed = self.relay_streams_from(RELAY_VIA, RELAY_FROM).await? > before;
                if relayed == relayed_wanted {
                    on_path.borrow_mut().insert(got.clone());
                } else {
                    on_path.borrow_mut().clear();
                }
                let (path, why) = self.relay_path().await?;
                if path != want {
                    return Err(format!("path {path:?} ({why}); a client served by {got}"));
                }
                let missing: Vec<&String> =
                    pool.iter().filter(|o| !on_path.borrow().contains(*o)).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "path {path:?}, but {missing:?} not yet served on it (the last connection: {got}, {})",
                        if relayed { "relayed" } else { "direct" }
                    ));
                }
                Ok(())
            },
        )
        .await?;
        let (path, why) = self.relay_path().await.map_err(anyhow::Error::msg)?;
        self.note(format!(
            "{me}'s relay path: {path}: {why} ({} after the change)",
            secs(since.elapsed())
        ));
        Ok(())
    }

    /// RELAY_PROBES new connections of a RELAY_FROM client to its node's relay app, each served
    /// by the relay pool; each goes through RELAY_VIA's node (its count of relay streams from
    /// RELAY_FROM's node grows with each) when `relayed`, and none does otherwise.
    async fn relay_connections(&self, relayed: bool) -> Result<()> {
        let (me, via) = (node_id(RELAY_FROM), node_id(RELAY_VIA));
        let count = || async {
            self.relay_streams_from(RELAY_VIA, RELAY_FROM)
                .await
                .map_err(anyhow::Error::msg)
        };
        let first = count().await?;
        for _ in 0..RELAY_PROBES {
            let before = count().await?;
            // The path explain gives just before: on a failure, what the node meant to do.
            let (path, why) = self.relay_path().await.map_err(anyhow::Error::msg)?;
            let got = match self.relay_client().await {
                Ok(got) => got,
                Err(e) => bail!("{e} (the path just before: {path}: {why})"),
            };
            let after = count().await?;
            self.note(format!(
                "  a {RELAY_FROM} client via {me}'s {APP_RELAY} app ({path}): {got}; {via}'s relay streams from {me}: {before} -> {after}"
            ));
            if relayed {
                assert!(
                    after > before,
                    "{via} accepted no relay stream from {me} for a connection served by {got}"
                );
            } else {
                assert_eq!(
                    after, before,
                    "{via} accepted a relay stream from {me} for a connection served by {got}, on the direct path"
                );
            }
        }
        self.note(format!(
            "  {via}'s relay streams from {me}: {first} -> {} over {RELAY_PROBES} connections",
            count().await?
        ));
        Ok(())
    }
}

// 10. Relay around a cut link.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_relay_around_a_cut_link() -> Result<()> {
    scenario(
        "e2e_relay_around_a_cut_link",
        "relay-cut",
        None,
        async |c| relay_cut(c).await,
    )
    .await
}

async fn relay_cut(c: &Cluster) -> Result<()> {
    use switchyard_node::core::relay::Why;
    let t0 = Instant::now();
    c.wait_relay_path("direct", CONVERGE, t0).await?;
    c.relay_connections(false).await?;

    c.tb().cut(RELAY_FROM, RELAY_TO)?;
    let t_cut = Instant::now();
    c.note(format!("cut {RELAY_FROM}-{RELAY_TO}"));
    // Once edge-wnam's probes find weu down (and SWIM what it finds of the link), its relay
    // connections go through edge-seas, which reaches weu, and are served.
    let via = via_words(node_id(RELAY_VIA), Why::DirectDown);
    c.wait_relay_path(&via, DETECT + CONVERGE, t_cut).await?;
    c.relay_connections(true).await?;
    c.snapshot("cut").await;

    c.tb().heal(RELAY_FROM, RELAY_TO)?;
    let t_heal = Instant::now();
    c.note(format!("healed {RELAY_FROM}-{RELAY_TO}"));
    // The path through the peer is kept for the hold-down while it works; then direct again.
    c.wait_relay_path("direct", relay_switch_bound(), t_heal)
        .await?;
    c.relay_connections(false).await
}

// 11. Relay around a slow link.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_relay_around_a_slow_link() -> Result<()> {
    scenario(
        "e2e_relay_around_a_slow_link",
        "relay-slow",
        None,
        async |c| relay_slow(c).await,
    )
    .await
}

/// The round trip that makes WNAM-WEU slower than WNAM-SEAS-WEU (160 + 170 ms) by more than
/// the margin.
const SLOW_RTT: Duration = Duration::from_millis(400);

async fn relay_slow(c: &Cluster) -> Result<()> {
    use switchyard_node::core::relay::Why;
    let me = node_id(RELAY_FROM);
    let t0 = Instant::now();
    c.wait_relay_path("direct", CONVERGE, t0).await?;
    c.relay_connections(false).await?;

    c.tb().set_latency(RELAY_FROM, RELAY_TO, SLOW_RTT)?;
    let t_slow = Instant::now();
    c.note(format!(
        "set {RELAY_FROM}-{RELAY_TO} to {SLOW_RTT:?} round trip (through {}: 160 + 170 ms)",
        node_id(RELAY_VIA)
    ));
    let via = via_words(node_id(RELAY_VIA), Why::Faster);
    c.wait_relay_path(&via, relay_switch_bound(), t_slow)
        .await?;
    c.relay_connections(true).await?;
    // For speed, not health: edge-wnam's own probes still find weu up.
    let s = c.status(RELAY_FROM).await?;
    for o in (c.topo.origins.iter()).filter(|o| o.pool == testnet::RELAY_POOL) {
        assert_eq!(
            observer_up(&s, &o.name, me),
            Some(true),
            "{me}'s own row of {}: {}",
            o.name,
            describe(&s)
        );
    }
    c.snapshot("slow").await;

    let normal = (testnet::WAN_RTT.iter())
        .find(|(a, b, _)| (*a, *b) == (RELAY_FROM, RELAY_TO))
        .map(|l| l.2)
        .ok_or_else(|| anyhow!("no default round trip for {RELAY_FROM}-{RELAY_TO}"))?;
    c.tb().set_latency(RELAY_FROM, RELAY_TO, normal)?;
    let t_back = Instant::now();
    c.note(format!(
        "set {RELAY_FROM}-{RELAY_TO} back to {normal:?} round trip"
    ));
    c.wait_relay_path("direct", relay_switch_bound(), t_back)
        .await?;
    c.relay_connections(false).await
}

// 12. Relay requests a peer refuses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_relay_requests_outside_the_config_are_refused() -> Result<()> {
    scenario(
        "e2e_relay_requests_outside_the_config_are_refused",
        "relay-refused",
        None,
        async |c| relay_refused(c).await,
    )
    .await
}

/// Where the asking member runs (its certificate names this region), and the node it asks.
const ASKER_REGION: &str = "WEU";
const ASKED: &str = RELAY_VIA;

async fn relay_refused(c: &Cluster) -> Result<()> {
    let asked = node_id(ASKED);
    let pool = testnet::RELAY_POOL;
    let origin = (c.topo.origins.iter())
        .find(|o| o.pool == pool)
        .ok_or_else(|| anyhow!("no origin in {pool}"))?;
    let other_pool = pool_of_region(RELAY_FROM);
    let other = (c.topo.origins.iter())
        .find(|o| o.pool == other_pool)
        .ok_or_else(|| anyhow!("no origin in {other_pool}"))?;
    // (case, load balancer/pool/origin[/hops], the refusal wanted); the first is valid, the
    // control: it must be accepted, so that the refusals are the names' doing, not the
    // asker's standing.
    let not_in_config = RefuseReason::NotInConfig.label();
    let asks: Vec<(&str, String, &str)> = vec![
        ("valid", format!("{APP_RELAY}/{pool}/{}", origin.name), ""),
        (
            "unknown_origin",
            format!("{APP_RELAY}/{pool}/{pool}-99"),
            not_in_config,
        ),
        (
            "address",
            format!("{APP_RELAY}/{pool}/{}", origin.data()),
            not_in_config,
        ),
        (
            "unknown_pool",
            format!("{APP_RELAY}/nowhere/{}", origin.name),
            not_in_config,
        ),
        (
            "pool_not_of_lb",
            format!("{APP_RELAY}/{other_pool}/{}", other.name),
            not_in_config,
        ),
        (
            "unknown_lb",
            format!("nothing/{pool}/{}", origin.name),
            not_in_config,
        ),
        (
            "second_hop",
            format!("{APP_RELAY}/{pool}/{}/1", origin.name),
            RefuseReason::SecondHop.label(),
        ),
    ];

    // A stranger: a certificate of another CA, and a bundle trusting both (so its own side of
    // the handshake accepts the node's certificate and only the node's judgement counts).
    let stranger_ca = c.dir.join("stranger-ca");
    switchyard_gossip::tls::init_ca(&stranger_ca, "stranger")
        .map_err(|e| anyhow!("init the stranger's CA: {e}"))?;
    let stranger_dir = c.dir.join("stranger");
    std::fs::create_dir_all(&stranger_dir)?;
    let stranger = switchyard_gossip::tls::issue_cert_in(
        &stranger_ca,
        "stranger",
        Some(ASKER_REGION.parse()?),
        &stranger_dir,
    )
    .map_err(|e| anyhow!("issue the stranger's certificate: {e}"))?;
    let bundle = c.dir.join("stranger-bundle.crt");
    let ca_file = switchyard_gossip::tls::CA_CERT_FILE;
    std::fs::write(
        &bundle,
        std::fs::read_to_string(c.dir.join("ca").join(ca_file))?
            + &std::fs::read_to_string(stranger_ca.join(ca_file))?,
    )?;

    let relay_before = c
        .counts(ASKED, "switchyard_mesh_relay_refused_total", "reason", &[])
        .await
        .map_err(anyhow::Error::msg)?;
    let mesh_before = c.refusals(ASKED).await.map_err(anyhow::Error::msg)?;

    let mut cmd = c.liar_command(ASKER_REGION, ASKED)?;
    cmd.arg("relay")
        .args([
            "--client",
            &SocketAddr::new(c.client_ip(ASKER_REGION), 40000).to_string(),
        ])
        .arg("--stranger-ca")
        .arg(&bundle)
        .arg("--stranger-cert")
        .arg(&stranger.cert)
        .arg("--stranger-key")
        .arg(&stranger.key);
    for (case, what, _) in &asks {
        cmd.args(["--ask", &format!("{case}={what}")]);
    }
    let lines = c.run_liar(cmd)?;
    let outcome = |case: &str| -> Result<&str> {
        let prefix = format!("ask {case}: ");
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .ok_or_else(|| anyhow!("mesh-liar reported nothing for {case}"))
    };

    // The control: a member asking for what the config has is served, by that origin.
    let valid = outcome("valid")?;
    assert!(
        valid.starts_with(&format!("accepted, greeting {}", origin.name)),
        "{asked} did not relay the valid request: {valid}"
    );
    // Each of the others refused, for what the request asks, and counted by that reason.
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for (case, _, reason) in &asks[1..] {
        let got = outcome(case)?;
        assert!(
            got.starts_with(&format!("refused {reason} ")),
            "{asked} should refuse {case} as {reason}: {got}"
        );
        *want.entry(reason).or_default() += 1.0;
    }
    let relay_after = c
        .counts(ASKED, "switchyard_mesh_relay_refused_total", "reason", &[])
        .await
        .map_err(anyhow::Error::msg)?;
    let grown = |r: &str| {
        relay_after.get(r).copied().unwrap_or(0.0) - relay_before.get(r).copied().unwrap_or(0.0)
    };
    c.note(format!(
        "{asked}'s relay refusals: {relay_before:?} -> {relay_after:?}"
    ));
    for (reason, n) in &want {
        assert!(
            grown(reason) >= *n,
            "{asked} counted {} {reason} refusals, the asker was refused {n}: {relay_after:?}",
            grown(reason)
        );
    }

    // A stranger never gets as far as asking: the handshake fails, and the node counts it.
    let stranger_line = lines
        .iter()
        .find_map(|l| l.strip_prefix("stranger: "))
        .ok_or_else(|| anyhow!("mesh-liar reported nothing for the stranger"))?;
    assert!(
        !stranger_line.starts_with("accepted") && !stranger_line.starts_with("refused"),
        "a client of another CA reached {asked}'s relay checks: {stranger_line}"
    );
    c.wait_for(
        &format!("{asked} counts the stranger's handshake as wrong_ca"),
        STEP,
        || async {
            let now = c.refusals(ASKED).await?;
            let n = |m: &BTreeMap<String, f64>| m.get("wrong_ca").copied().unwrap_or(0.0);
            if n(&now) > n(&mesh_before) {
                c.note(format!(
                    "{asked} counted the stranger's handshake: wrong_ca {} -> {}",
                    n(&mesh_before),
                    n(&now)
                ));
                Ok(())
            } else {
                Err(format!("refusals {now:?} (before: {mesh_before:?})"))
            }
        },
    )
    .await?;

    // And the status port has nothing to ask with: no relay endpoint, by any method.
    let status = c.node(ASKED).status;
    for (method, code) in [("GET", 404), ("POST", 405)] {
        let (head, _) = c.http(ASKER_REGION, method, status, "/v1/relay").await?;
        let line = head.lines().next().unwrap_or("").to_string();
        c.note(format!("  {method} http://{status}/v1/relay: {line}"));
        assert!(
            line.starts_with(&format!("HTTP/1.1 {code}")),
            "{method} /v1/relay on {asked}'s status port: {line}"
        );
    }
    Ok(())
}
