//! The one description of the three-region testnet: regions, nodes, pools, origins, load
//! balancers, apps, client addresses and the WAN latency matrix, as typed data.
//!
//! The `testnet` binary (behind `./testnet.sh`) runs it on loopback or, in WAN mode, with each
//! region in its own network namespace (see [`crate::wan`]); the end-to-end tests derive their
//! clusters from it, and a test checks the compose demo's configs against it. Node configs are
//! built as [`toml::Table`]s (the node's config types only deserialize) and checked by parsing
//! them into [`switchyard_node::Config`]; the manifest is serialized with `serde_json`.
//!
//! Every node has a public address of its own, and every node listens on the same ports, as
//! in a real deployment: status :9900, mesh :7946, app k of [`APPS`] on :10001+10k.
//! Loopback layout: region r (1 WNAM, 2 WEU, 3 SEAS) has its node on 127.0.2r.1, its origins
//! on 127.0.1r.1 and .2 and its client on 127.0.r.1. WAN layout: region r owns
//! 10.250.r.0/24, its node at .1, its origins at .11 and .12, its client at .100.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use toml::{Table, Value};

/// The mesh's cluster id.
pub const CLUSTER: &str = "testnet";
/// Every origin's data port; each origin has its own address.
pub const ORIGIN_PORT: u16 = 7000;
/// Every origin's HTTP health port, so that one monitor `port` fits all.
pub const HEALTH_PORT: u16 = 7080;
/// Every node's status endpoint port (on its own address).
pub const STATUS_PORT: u16 = 9900;
/// Every node's mesh port.
pub const MESH_PORT: u16 = 7946;
/// Every node's DNS port (UDP and TCP), unprivileged so the loopback testnet runs as anyone.
pub const DNS_PORT: u16 = 5300;
/// The zone every node answers for: each app is `<app>.<zone>` (`.test` is reserved for
/// testing, RFC 6761).
pub const DNS_ZONE: &str = "sy.test";

/// The port of app number `k` of [`APPS`], the same on every node.
pub fn app_port(k: usize) -> u16 {
    10001 + 10 * k as u16
}

/// How long a node drains open connections on SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A region, its index (the third octet of its addresses) and where its clients are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionSpec {
    pub name: &'static str,
    /// 1-based: region r's loopback client net is 127.0.r.0/24, its WAN net 10.250.r.0/24.
    pub index: u8,
    /// Where the GeoIP database places the region's clients.
    pub country: &'static str,
    pub subdivision: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub place: &'static str,
}

/// The regions, in index order (also the WAN testbed's order).
pub const REGIONS: [RegionSpec; 3] = [
    RegionSpec {
        name: "WNAM",
        index: 1,
        country: "US",
        subdivision: "CA",
        latitude: 37.34,
        longitude: -121.89,
        place: "San Jose, California",
    },
    RegionSpec {
        name: "WEU",
        index: 2,
        country: "DE",
        subdivision: "",
        latitude: 50.11,
        longitude: 8.68,
        place: "Frankfurt",
    },
    RegionSpec {
        name: "SEAS",
        index: 3,
        country: "SG",
        subdivision: "",
        latitude: 1.35,
        longitude: 103.82,
        place: "Singapore",
    },
];

/// The region names, in index order.
pub const REGION_NAMES: [&str; 3] = ["WNAM", "WEU", "SEAS"];

/// The WAN's round-trip times between regions (wan-emu's defaults, passed to it explicitly).
pub const WAN_RTT: [(&str, &str, Duration); 3] = [
    ("WNAM", "WEU", Duration::from_millis(75)),
    ("WNAM", "SEAS", Duration::from_millis(160)),
    ("WEU", "SEAS", Duration::from_millis(170)),
];

/// One node per region: (node id, region).
pub const NODES: [(&str, &str); 3] = [
    ("edge-wnam", "WNAM"),
    ("edge-weu", "WEU"),
    ("edge-seas", "SEAS"),
];

/// The pools: (name, region, latitude, longitude): Palo Alto, Frankfurt, Singapore. Each has
/// a `-hash` twin in the same place over the same origins, picked by client address.
pub const POOLS: [(&str, &str, f64, f64); 3] = [
    ("wnam", "WNAM", 37.4, -122.1),
    ("weu", "WEU", 50.1, 8.7),
    ("seas", "SEAS", 1.35, 103.8),
];

/// Origins per pool: pool p's origin k (from 1) is `{p}-{k}`.
pub const ORIGINS_PER_POOL: u8 = 2;

/// The apps every node runs, each with the load balancer of its name.
pub const APPS: [&str; 6] = ["failover", "geo", "dynamic", "proximity", "hash", "relay"];

/// The app (and load balancer) whose only pool is [`RELAY_POOL`], with `relay = "fastest"`:
/// a node whose own path to that pool is cut or slow serves it through a peer (issue 13).
pub const APP_RELAY: &str = "relay";
/// The one pool of [`APP_RELAY`]'s load balancer.
pub const RELAY_POOL: &str = "weu";

/// The region of a pool.
pub fn pool_region(pool: &str) -> Option<&'static str> {
    let base = pool.strip_suffix("-hash").unwrap_or(pool);
    POOLS.iter().find(|p| p.0 == base).map(|p| p.1)
}

/// The pool an origin (or a greeting, `weu-2`) belongs to.
pub fn pool_of(origin: &str) -> &str {
    origin.split('-').next().unwrap_or("")
}

/// A region by name (exact, upper case).
pub fn region(name: &str) -> Option<&'static RegionSpec> {
    REGIONS.iter().find(|r| r.name == name)
}

/// Loopback, or each region in its own network namespace joined through wan-emu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Loopback,
    Wan,
}

/// SWIM timings of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshTimings {
    pub probe_period: Duration,
    pub probe_timeout: Duration,
    pub suspect_timeout: Duration,
    pub announce_interval: Duration,
    pub anti_entropy_interval: Duration,
}

/// The health monitor every pool uses (type http, on [`HEALTH_PORT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub path: String,
    pub expected_codes: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

/// A pool of origins.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub region: String,
    /// `hash` for the -hash twins; None is the node's default (random).
    pub origin_steering: Option<String>,
    pub location: Option<(f64, f64)>,
    /// Origin names, in [`Topology::origins`].
    pub origins: Vec<String>,
}

/// A load balancer.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    pub name: String,
    pub steering: String,
    pub default_pools: Vec<String>,
    pub fallback_pool: Option<String>,
    /// Geo steering: each region to its own pool.
    pub region_pools: Vec<(String, Vec<String>)>,
    /// `relay = "off" | "failover" | "fastest"`; None leaves the node's default (failover).
    pub relay: Option<String>,
}

/// A node and where it listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub region: String,
    pub status: SocketAddr,
    pub mesh: SocketAddr,
    /// Its DNS server, on its public address.
    pub dns: SocketAddr,
    /// (app name, listen address), in [`APPS`] order.
    pub apps: Vec<(String, SocketAddr)>,
}

impl Node {
    /// The node's public address: where clients reach its apps, and what DNS answers with.
    pub fn public(&self) -> IpAddr {
        self.status.ip()
    }

    /// Where app `name` listens.
    pub fn app(&self, name: &str) -> Option<SocketAddr> {
        self.apps.iter().find(|a| a.0 == name).map(|a| a.1)
    }
}

/// A test origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub name: String,
    pub pool: String,
    pub region: String,
    pub ip: IpAddr,
}

impl Origin {
    pub fn data(&self) -> SocketAddr {
        SocketAddr::new(self.ip, ORIGIN_PORT)
    }
    pub fn health(&self) -> SocketAddr {
        SocketAddr::new(self.ip, HEALTH_PORT)
    }
}

/// A region's client source address, and the network the GeoIP database places there.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub region: &'static RegionSpec,
    pub ip: IpAddr,
    pub net: String,
}

/// Files a node's config names.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub geo_db: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodeFiles {
    /// The layout `testnet` and the tests use: `{certs}/ca/ca.crt`, `{certs}/{id}.crt` and
    /// `.key`.
    pub fn under(certs: &Path, id: &str, geo_db: &Path) -> NodeFiles {
        NodeFiles {
            geo_db: geo_db.to_path_buf(),
            ca: certs.join("ca").join("ca.crt"),
            cert: certs.join(format!("{id}.crt")),
            key: certs.join(format!("{id}.key")),
        }
    }
}

/// The testnet, laid out for one mode. Its fields are public so that a test can derive a
/// variation (other timings, fewer pools, other load balancers) before building configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub mode: Mode,
    pub cluster: String,
    pub drain_timeout: Duration,
    pub mesh: MeshTimings,
    /// Whether a node's seeds include its own mesh address (testnet's do: one list for all).
    pub seed_self: bool,
    pub monitor: Monitor,
    pub nodes: Vec<Node>,
    pub origins: Vec<Origin>,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
    pub clients: Vec<Client>,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl Topology {
    /// The testnet in `mode`.
    pub fn new(mode: Mode) -> Topology {
        let index = |r: &str| region(r).expect("a known region").index;
        let nodes = NODES
            .iter()
            .map(|(id, r)| {
                let ip = match mode {
                    Mode::Loopback => v4(127, 0, 20 + index(r), 1),
                    Mode::Wan => v4(10, 250, index(r), 1),
                };
                let (status, mesh) = (STATUS_PORT, MESH_PORT);
                Node {
                    id: id.to_string(),
                    region: r.to_string(),
                    status: SocketAddr::new(ip, status),
                    mesh: SocketAddr::new(ip, mesh),
                    dns: SocketAddr::new(ip, DNS_PORT),
                    apps: APPS
                        .iter()
                        .enumerate()
                        .map(|(k, app)| (app.to_string(), SocketAddr::new(ip, app_port(k))))
                        .collect(),
                }
            })
            .collect();
        let mut origins = Vec::new();
        for (pool, r, ..) in POOLS {
            for k in 1..=ORIGINS_PER_POOL {
                let ip = match mode {
                    Mode::Loopback => v4(127, 0, 10 + index(r), k),
                    Mode::Wan => v4(10, 250, index(r), 10 + k),
                };
                origins.push(Origin {
                    name: format!("{pool}-{k}"),
                    pool: pool.to_string(),
                    region: r.to_string(),
                    ip,
                });
            }
        }
        let mut pools = Vec::new();
        for suffix in ["", "-hash"] {
            for (pool, r, lat, lon) in POOLS {
                pools.push(Pool {
                    name: format!("{pool}{suffix}"),
                    region: r.to_string(),
                    origin_steering: (!suffix.is_empty()).then(|| "hash".to_string()),
                    location: Some((lat, lon)),
                    origins: origins
                        .iter()
                        .filter(|o| o.pool == pool)
                        .map(|o| o.name.clone())
                        .collect(),
                });
            }
        }
        let lb = |name: &str, steering: &str, suffix: &str| {
            let pools: Vec<String> = POOLS.iter().map(|p| format!("{}{suffix}", p.0)).collect();
            LoadBalancer {
                name: name.to_string(),
                steering: steering.to_string(),
                fallback_pool: pools.last().cloned(),
                region_pools: if steering == "geo" {
                    POOLS
                        .iter()
                        .map(|p| (p.1.to_string(), vec![format!("{}{suffix}", p.0)]))
                        .collect()
                } else {
                    Vec::new()
                },
                default_pools: pools,
                relay: None,
            }
        };
        let clients = REGIONS
            .iter()
            .map(|r| {
                let (ip, net) = match mode {
                    Mode::Loopback => (v4(127, 0, r.index, 1), format!("127.0.{}.0/24", r.index)),
                    Mode::Wan => (
                        v4(10, 250, r.index, 100),
                        format!("10.250.{}.0/24", r.index),
                    ),
                };
                Client { region: r, ip, net }
            })
            .collect();
        let ms = Duration::from_millis;
        let mesh = match mode {
            // Short enough to watch a node go down and rejoin within seconds.
            Mode::Loopback => MeshTimings {
                probe_period: ms(500),
                probe_timeout: ms(250),
                suspect_timeout: ms(2000),
                announce_interval: ms(1000),
                anti_entropy_interval: ms(1000),
            },
            // For round trips of 75-170 ms: a probe, its timeout and suspicion with room to
            // spare, so only a cut link or a stopped node makes a member suspect.
            Mode::Wan => MeshTimings {
                probe_period: ms(1000),
                probe_timeout: ms(500),
                suspect_timeout: ms(5000),
                announce_interval: ms(2000),
                anti_entropy_interval: ms(1000),
            },
        };
        Topology {
            mode,
            cluster: CLUSTER.to_string(),
            drain_timeout: DRAIN_TIMEOUT,
            mesh,
            seed_self: true,
            monitor: Monitor {
                path: "/".into(),
                expected_codes: Some("200".into()),
                interval: ms(2000),
                timeout: ms(1000),
                retries: 1,
            },
            nodes,
            origins,
            pools,
            load_balancers: vec![
                lb("failover", "failover", ""),
                lb("geo", "geo", ""),
                lb("dynamic", "dynamic", ""),
                lb("proximity", "proximity", ""),
                lb("hash", "geo", "-hash"),
                LoadBalancer {
                    name: APP_RELAY.to_string(),
                    steering: "failover".to_string(),
                    default_pools: vec![RELAY_POOL.to_string()],
                    fallback_pool: None,
                    region_pools: Vec::new(),
                    relay: Some("fastest".to_string()),
                },
            ],
            clients,
        }
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.origins.iter().find(|o| o.name == name)
    }

    pub fn client(&self, region: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.region.name == region)
    }

    pub fn load_balancer(&self, name: &str) -> Option<&LoadBalancer> {
        self.load_balancers.iter().find(|l| l.name == name)
    }

    /// The node of a region.
    pub fn node_in(&self, region: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.region == region)
    }

    /// The region a node or origin is in.
    pub fn region_of(&self, name: &str) -> Option<&str> {
        self.node(name)
            .map(|n| n.region.as_str())
            .or_else(|| self.origin(name).map(|o| o.region.as_str()))
    }

    /// The GeoIP CSV rows (`cidr,country,subdivision,latitude,longitude  # REGION: place`) that
    /// place each region's client network in that region, without the header.
    pub fn geo_rows(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|c| {
                let r = c.region;
                format!(
                    "{},{},{},{},{}  # {}: {}",
                    c.net, r.country, r.subdivision, r.latitude, r.longitude, r.name, r.place
                )
            })
            .collect()
    }

    /// The `[[load_balancer]]` table of one load balancer.
    pub fn load_balancer_toml(lb: &LoadBalancer) -> Table {
        let mut t = Table::new();
        t.insert("name".into(), lb.name.clone().into());
        t.insert("steering".into(), lb.steering.clone().into());
        t.insert("default_pools".into(), str_array(&lb.default_pools));
        if let Some(f) = &lb.fallback_pool {
            t.insert("fallback_pool".into(), f.clone().into());
        }
        if !lb.region_pools.is_empty() {
            let mut rp = Table::new();
            for (r, pools) in &lb.region_pools {
                rp.insert(r.clone(), str_array(pools));
            }
            t.insert("region_pools".into(), rp.into());
        }
        if let Some(r) = &lb.relay {
            t.insert("relay".into(), r.clone().into());
        }
        t
    }

    /// Node `id`'s whole config, as TOML tables.
    pub fn node_toml(&self, id: &str, files: &NodeFiles) -> Table {
        let node = self
            .node(id)
            .unwrap_or_else(|| panic!("no node {id} in the topology"));
        let mut doc = Table::new();

        let mut n = Table::new();
        n.insert("id".into(), node.id.clone().into());
        n.insert("region".into(), node.region.clone().into());
        n.insert("status_listen".into(), node.status.to_string().into());
        n.insert("drain_timeout".into(), duration(self.drain_timeout));
        n.insert(
            "public_addresses".into(),
            str_array(&[node.public().to_string()]),
        );
        doc.insert("node".into(), n.into());

        let mut dns = Table::new();
        dns.insert("listen".into(), node.dns.to_string().into());
        dns.insert("zone".into(), DNS_ZONE.into());
        doc.insert("dns".into(), dns.into());

        let mut geo = Table::new();
        geo.insert("database".into(), path(&files.geo_db));
        doc.insert("geo".into(), geo.into());

        let mut m = Table::new();
        m.insert("name".into(), "http".into());
        m.insert("type".into(), "http".into());
        m.insert("port".into(), i64::from(HEALTH_PORT).into());
        m.insert("path".into(), self.monitor.path.clone().into());
        if let Some(codes) = &self.monitor.expected_codes {
            m.insert("expected_codes".into(), codes.clone().into());
        }
        m.insert("interval".into(), duration(self.monitor.interval));
        m.insert("timeout".into(), duration(self.monitor.timeout));
        m.insert("retries".into(), i64::from(self.monitor.retries).into());
        doc.insert("monitor".into(), Value::Array(vec![m.into()]));

        let pools = self
            .pools
            .iter()
            .map(|p| {
                let mut t = Table::new();
                t.insert("name".into(), p.name.clone().into());
                t.insert("monitor".into(), "http".into());
                if let Some(s) = &p.origin_steering {
                    t.insert("origin_steering".into(), s.clone().into());
                }
                if let Some((lat, lon)) = p.location {
                    t.insert("latitude".into(), lat.into());
                    t.insert("longitude".into(), lon.into());
                }
                let origins = p
                    .origins
                    .iter()
                    .map(|name| {
                        let o = self
                            .origin(name)
                            .unwrap_or_else(|| panic!("pool {} names no origin {name}", p.name));
                        let mut t = Table::new();
                        t.insert("name".into(), o.name.clone().into());
                        t.insert("address".into(), o.data().to_string().into());
                        Value::Table(t)
                    })
                    .collect();
                t.insert("origins".into(), Value::Array(origins));
                Value::Table(t)
            })
            .collect();
        doc.insert("pool".into(), Value::Array(pools));

        let lbs = self
            .load_balancers
            .iter()
            .map(|lb| Value::Table(Self::load_balancer_toml(lb)))
            .collect();
        doc.insert("load_balancer".into(), Value::Array(lbs));

        let apps = node
            .apps
            .iter()
            .map(|(name, addr)| {
                let mut t = Table::new();
                t.insert("name".into(), name.clone().into());
                t.insert("listen".into(), addr.to_string().into());
                t.insert("load_balancer".into(), name.clone().into());
                t.insert("hostname".into(), name.clone().into());
                Value::Table(t)
            })
            .collect();
        doc.insert("app".into(), Value::Array(apps));

        let mut mesh = Table::new();
        mesh.insert("cluster".into(), self.cluster.clone().into());
        mesh.insert("listen".into(), node.mesh.to_string().into());
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| self.seed_self || n.id != id)
            .map(|n| n.mesh.to_string())
            .collect();
        mesh.insert("seeds".into(), str_array(&seeds));
        mesh.insert("ca".into(), path(&files.ca));
        mesh.insert("cert".into(), path(&files.cert));
        mesh.insert("key".into(), path(&files.key));
        let t = &self.mesh;
        mesh.insert("probe_period".into(), duration(t.probe_period));
        mesh.insert("probe_timeout".into(), duration(t.probe_timeout));
        mesh.insert("suspect_timeout".into(), duration(t.suspect_timeout));
        mesh.insert("announce_interval".into(), duration(t.announce_interval));
        mesh.insert(
            "anti_entropy_interval".into(),
            duration(t.anti_entropy_interval),
        );
        doc.insert("mesh".into(), mesh.into());
        doc
    }

    /// Node `id`'s config as TOML text, headed by `comment` (each line gets a `# `).
    pub fn node_config_text(&self, id: &str, files: &NodeFiles, comment: &str) -> String {
        let mut text: String = comment.lines().map(|l| format!("# {l}\n")).collect();
        let mut doc = self.node_toml(id, files);
        // Section by section, in the order people read a config in (a table sorts its keys).
        for key in [
            "node",
            "geo",
            "dns",
            "monitor",
            "pool",
            "load_balancer",
            "app",
            "mesh",
        ] {
            if let Some((k, v)) = doc.remove_entry(key) {
                let section = Table::from_iter([(k, v)]);
                text.push('\n');
                text.push_str(&toml::to_string(&section).expect("TOML tables serialize"));
            }
        }
        assert!(
            doc.is_empty(),
            "node_toml made sections this does not write: {doc:?}"
        );
        text
    }

    /// Node `id`'s config, typed (parsed and validated as the node does).
    pub fn node_config(
        &self,
        id: &str,
        files: &NodeFiles,
    ) -> Result<switchyard_node::Config, switchyard_node::config::ConfigError> {
        switchyard_node::Config::parse(&self.node_config_text(id, files, ""), None)
    }

    /// `.testnet/manifest.json`: where every node, app, origin and client is. In WAN mode it
    /// also has the mode and each region's namespace (`netns`: region, namespace).
    pub fn manifest(&self, netns: &[(String, String)]) -> String {
        let wan = self.mode == Mode::Wan;
        let m = Manifest {
            mode: wan.then_some("wan"),
            netns: wan.then(|| Pairs(netns.to_vec())),
            nodes: self
                .nodes
                .iter()
                .map(|n| ManifestNode {
                    id: &n.id,
                    region: &n.region,
                    public: n.public().to_string(),
                    status: n.status.to_string(),
                    mesh: n.mesh.to_string(),
                    dns: n.dns.to_string(),
                    apps: Pairs(
                        n.apps
                            .iter()
                            .map(|(a, addr)| (a.clone(), addr.to_string()))
                            .collect(),
                    ),
                })
                .collect(),
            origins: self
                .origins
                .iter()
                .map(|o| ManifestOrigin {
                    name: &o.name,
                    pool: &o.pool,
                    region: &o.region,
                    addr: o.data().to_string(),
                })
                .collect(),
            clients: Pairs(
                self.clients
                    .iter()
                    .map(|c| (c.region.name.to_string(), c.ip.to_string()))
                    .collect(),
            ),
            dns: ManifestDns {
                zone: DNS_ZONE,
                names: Pairs(
                    APPS.iter()
                        .enumerate()
                        .map(|(k, app)| {
                            let name = ManifestName {
                                name: format!("{app}.{DNS_ZONE}"),
                                port: app_port(k),
                            };
                            (app.to_string(), name)
                        })
                        .collect(),
                ),
            },
        };
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, ManifestFormatter::default());
        m.serialize(&mut ser).expect("the manifest serializes");
        out.push(b'\n');
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

fn str_array(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
}

fn path(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// A duration as the config takes it: `2s` when whole seconds, else `250ms`.
pub fn duration(d: Duration) -> Value {
    Value::String(duration_str(d))
}

/// `2s` when whole seconds, else `250ms`.
pub fn duration_str(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

// ---- The manifest -----------------------------------------------------------------------------

#[derive(serde::Serialize)]
struct Manifest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<Pairs>,
    nodes: Vec<ManifestNode<'a>>,
    origins: Vec<ManifestOrigin<'a>>,
    clients: Pairs,
    /// The zone, and each app's name in it with the port its nodes take connections on.
    dns: ManifestDns,
}

#[derive(serde::Serialize)]
struct ManifestDns {
    zone: &'static str,
    names: Pairs<ManifestName>,
}

#[derive(serde::Serialize)]
struct ManifestName {
    name: String,
    port: u16,
}

#[derive(serde::Serialize)]
struct ManifestNode<'a> {
    id: &'a str,
    region: &'a str,
    /// The node's public address: where its clients (and anycast, and DNS answers) reach it.
    public: String,
    status: String,
    mesh: String,
    dns: String,
    apps: Pairs,
}

#[derive(serde::Serialize)]
struct ManifestOrigin<'a> {
    name: &'a str,
    pool: &'a str,
    region: &'a str,
    addr: String,
}

/// A JSON object whose keys keep their order (regions, apps), unlike a map.
struct Pairs<V = String>(Vec<(String, V)>);

impl<V: Serialize> Serialize for Pairs<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The manifest's layout, which scripts grep line by line: the top object one key a line, its
/// arrays one element a line, everything deeper on one line (`{"a": 1, "b": 2}`).
#[derive(Default)]
struct ManifestFormatter {
    depth: usize,
    /// Per open container: whether it is laid out over lines, and whether it has an element.
    stack: Vec<(bool, bool)>,
}

impl ManifestFormatter {
    fn open<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        bracket: &[u8],
        array: bool,
    ) -> io::Result<()> {
        self.depth += 1;
        let multiline = (self.depth == 1 && !array) || (self.depth == 2 && array);
        self.stack.push((multiline, false));
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        let (multiline, any) = self.stack.pop().unwrap_or((false, false));
        self.depth -= 1;
        if multiline && any {
            w.write_all(b"\n")?;
            w.write_all(&b"  ".repeat(self.depth))?;
        }
        w.write_all(bracket)
    }

    fn element<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        let depth = self.depth;
        let top = self.stack.last_mut().expect("inside a container");
        top.1 = true;
        if !first {
            w.write_all(if top.0 { b"," } else { b", " })?;
        }
        if top.0 {
            w.write_all(b"\n")?;
            w.write_all(&b"  ".repeat(depth))?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for ManifestFormatter {
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{", false)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[", true)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(w, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(id: &str) -> NodeFiles {
        NodeFiles::under(
            Path::new("/nonexistent/certs"),
            id,
            Path::new("/nonexistent/geo.mmdb"),
        )
    }

    #[test]
    fn every_node_config_is_valid_in_both_modes() {
        for mode in [Mode::Loopback, Mode::Wan] {
            let t = Topology::new(mode);
            for (id, region) in NODES {
                let cfg = t
                    .node_config(id, &files(id))
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(cfg.node.id, id);
                assert_eq!(cfg.node.region.to_string(), region);
                assert_eq!(cfg.apps.len(), APPS.len());
                assert_eq!(cfg.pools.len(), 6);
                assert_eq!(cfg.mesh.as_ref().map(|m| m.seeds.len()), Some(3));
                // Each node answers DNS on its own address, with that address, for every app.
                let node = t.node(id).unwrap();
                assert_eq!(cfg.node.public_addresses, vec![node.public()]);
                let dns = cfg.dns.as_ref().expect("a [dns] section");
                assert_eq!((dns.listen, dns.zone_name().as_str()), (node.dns, DNS_ZONE));
                for app in &cfg.apps {
                    assert_eq!(app.hostname.as_deref(), Some(app.name.as_str()));
                }
            }
        }
    }

    #[test]
    fn the_relay_app_uses_only_its_pool_and_relays_by_speed_on_every_node() {
        for mode in [Mode::Loopback, Mode::Wan] {
            let t = Topology::new(mode);
            for (id, _) in NODES {
                let cfg = t.node_config(id, &files(id)).unwrap();
                let lb = (cfg.load_balancers.iter())
                    .find(|l| l.name == APP_RELAY)
                    .unwrap_or_else(|| panic!("{id}: no load balancer {APP_RELAY}"));
                assert_eq!(lb.default_pools, [RELAY_POOL], "{id}");
                assert_eq!(lb.fallback_pool, None, "{id}");
                assert_eq!(
                    lb.relay,
                    switchyard_node::config::RelayPolicy::Fastest,
                    "{id}"
                );
                let app = cfg.apps.iter().find(|a| a.name == APP_RELAY).unwrap();
                assert_eq!(app.load_balancer, APP_RELAY, "{id}");
                // Every other load balancer keeps the node's default.
                for other in cfg.load_balancers.iter().filter(|l| l.name != APP_RELAY) {
                    assert_eq!(
                        other.relay,
                        switchyard_node::config::RelayPolicy::default(),
                        "{id}: {}",
                        other.name
                    );
                }
            }
        }
    }

    #[test]
    fn loopback_manifest_keeps_its_layout() {
        let m = Topology::new(Mode::Loopback).manifest(&[]);
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines[0], "{");
        assert_eq!(lines[1], "  \"nodes\": [");
        assert_eq!(
            lines[2],
            "    {\"id\": \"edge-wnam\", \"region\": \"WNAM\", \"public\": \"127.0.21.1\", \
             \"status\": \"127.0.21.1:9900\", \"mesh\": \"127.0.21.1:7946\", \"dns\": \
             \"127.0.21.1:5300\", \"apps\": \
             {\"failover\": \"127.0.21.1:10001\", \"geo\": \"127.0.21.1:10011\", \"dynamic\": \
             \"127.0.21.1:10021\", \"proximity\": \"127.0.21.1:10031\", \"hash\": \
             \"127.0.21.1:10041\", \"relay\": \"127.0.21.1:10051\"}},"
        );
        assert_eq!(lines[5], "  ],");
        assert_eq!(lines[6], "  \"origins\": [");
        assert_eq!(
            lines[7],
            "    {\"name\": \"wnam-1\", \"pool\": \"wnam\", \"region\": \"WNAM\", \"addr\": \"127.0.11.1:7000\"},"
        );
        assert_eq!(
            lines[14],
            "  \"clients\": {\"WNAM\": \"127.0.1.1\", \"WEU\": \"127.0.2.1\", \"SEAS\": \"127.0.3.1\"},"
        );
        assert_eq!(
            lines[15],
            "  \"dns\": {\"zone\": \"sy.test\", \"names\": {\"failover\": {\"name\": \
             \"failover.sy.test\", \"port\": 10001}, \"geo\": {\"name\": \"geo.sy.test\", \
             \"port\": 10011}, \"dynamic\": {\"name\": \"dynamic.sy.test\", \"port\": 10021}, \
             \"proximity\": {\"name\": \"proximity.sy.test\", \"port\": 10031}, \"hash\": \
             {\"name\": \"hash.sy.test\", \"port\": 10041}, \"relay\": {\"name\": \
             \"relay.sy.test\", \"port\": 10051}}}"
        );
        assert_eq!(lines[16], "}");
        assert_eq!(lines.len(), 17);
        serde_json::from_str::<serde_json::Value>(&m).unwrap();
    }

    #[test]
    fn manifest_lists_every_app_of_every_node_at_one_port_on_its_own_address() {
        for mode in [Mode::Loopback, Mode::Wan] {
            let t = Topology::new(mode);
            let m = t.manifest(&[]);
            for (i, (id, _)) in NODES.iter().enumerate() {
                // One line a node: scripts grep a node's id and its apps together.
                let line = m
                    .lines()
                    .find(|l| l.contains(&format!("\"id\": \"{id}\"")))
                    .unwrap_or_else(|| panic!("{id} is not in the manifest"));
                let ip = t.nodes[i].status.ip();
                assert!(line.contains(&format!("\"public\": \"{ip}\"")), "{line}");
                let dns = format!("\"dns\": \"{ip}:{DNS_PORT}\"");
                assert!(line.contains(&dns), "{line}");
                let others = t.nodes.iter().filter(|n| n.status.ip() == ip).count();
                assert_eq!(others, 1, "{mode:?}: {ip} is not {id}'s own");
                for (k, app) in APPS.iter().enumerate() {
                    let want = format!("\"{app}\": \"{ip}:{}\"", app_port(k));
                    assert!(line.contains(&want), "{mode:?}: {id} lacks {want}: {line}");
                }
            }
        }
    }

    #[test]
    fn wan_manifest_names_the_mode_and_namespaces() {
        let ns: Vec<(String, String)> = REGION_NAMES
            .iter()
            .map(|r| (r.to_string(), format!("sy-{}", r.to_ascii_lowercase())))
            .collect();
        let m = Topology::new(Mode::Wan).manifest(&ns);
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(lines[1], "  \"mode\": \"wan\",");
        assert_eq!(
            lines[2],
            "  \"netns\": {\"WNAM\": \"sy-wnam\", \"WEU\": \"sy-weu\", \"SEAS\": \"sy-seas\"},"
        );
        assert!(
            lines[4].contains("\"status\": \"10.250.1.1:9900\""),
            "{}",
            lines[4]
        );
        assert!(m.contains("\"addr\": \"10.250.3.12:7000\""));
    }

    #[test]
    fn durations_read_as_the_config_writes_them() {
        assert_eq!(duration_str(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_str(Duration::from_secs(2)), "2s");
    }
}
