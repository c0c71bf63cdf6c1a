//! Target `dns`: a packet to the node's DNS server, answered as the server answers it
//! (`DnsState::answer`: parse, look the name up in the zone, place the client by its Client
//! Subnet, write the response), over UDP from an IPv4 resolver and over TCP from an IPv6
//! one. The zone is built once, from a node config with `[dns]`, GeoIP overrides and two
//! apps with hostnames, and a mesh of two more nodes whose adverts name addresses of both
//! families.
//!
//! Every response must be a well-formed DNS message (hickory reads it back), carry the
//! query's id, and over UDP fit the size the query allows.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::Message;
use switchyard_geo::Region;
use switchyard_gossip::{Advert, MeshState, WriterSnapshot};
use switchyard_node::config::{Config, Quorum};
use switchyard_node::core::compiled::CompiledConfig;
use switchyard_node::dns::{wire, DnsMetrics, DnsState};
use switchyard_node::hub::HealthHub;
use switchyard_node::locate::Locator;
use switchyard_node::metrics::Metrics;

/// The zone the node serves.
pub const ZONE: &str = "lb.example.com";

/// The node's config: WEU, public addresses of both families, apps `game` and `api`.
pub const CONFIG: &str = r#"
[node]
id = "edge-weu-1"
region = "WEU"
status_listen = "127.0.0.1:0"
public_addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]

[geo]
[[geo.override]]
cidr = "2001:db8:3::/48"
region = "SEAS"
[[geo.override]]
cidr = "100.64.1.0/24"
region = "WNAM"
[[geo.override]]
cidr = "100.64.2.0/24"
region = "WEU"

[[pool]]
name = "weu"
origins = [
  { name = "weu-1", address = "192.0.2.10:8080" },
  { name = "weu-2", address = "192.0.2.11:8080" },
]

[[pool]]
name = "wnam"
origins = [{ name = "wnam-1", address = "198.51.100.10:8080" }]

[[load_balancer]]
name = "failover"
default_pools = ["weu", "wnam"]

[[load_balancer]]
name = "by-region"
steering = "geo"
default_pools = ["wnam", "weu"]
region_pools = { WEU = ["weu"], WNAM = ["wnam"] }

[[app]]
name = "game"
listen = "127.0.0.1:0"
load_balancer = "failover"
hostname = "game"

[[app]]
name = "api"
listen = "127.0.0.1:0"
load_balancer = "by-region"
hostname = "api"

[dns]
listen = "127.0.0.1:0"
zone = "lb.example.com."
answers = 2
"#;

fn writer(node: &str, region: Region, addresses: &[&str], names_up: bool) -> WriterSnapshot {
    WriterSnapshot {
        node: node.into(),
        region,
        fingerprint: 0,
        advert: Advert {
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("an IP"))
                .collect(),
            ready: true,
            nameserver: true,
            names: vec![("api".into(), names_up), ("game".into(), true)],
            rtt_ms: vec![(Region::Weu, 80), (Region::Wnam, 2), (Region::Seas, 160)],
        },
        live: true,
        rows: Vec::new(),
    }
}

/// The server's state, built once per process.
pub fn state() -> &'static DnsState {
    static STATE: OnceLock<DnsState> = OnceLock::new();
    STATE.get_or_init(|| {
        let config = Config::parse(CONFIG, None).expect("the target's config is valid");
        let section = config.dns.clone().expect("[dns] is set");
        let locator = Arc::new(
            Locator::new(config.geo.as_ref(), config.node.region).expect("overrides only"),
        );
        let rt = Arc::new(CompiledConfig::compile(Arc::new(config), None));
        let hub = HealthHub::new(rt, Quorum::default(), Arc::new(Metrics::new()));
        let mesh = MeshState {
            local: crate::swim::identity("edge-weu-1", Region::Weu, "192.0.2.1:7946", 1),
            members: Vec::new(),
            writers: vec![
                writer(
                    "edge-wnam-1",
                    Region::Wnam,
                    &["198.51.100.1", "2001:db8:1::1"],
                    true,
                ),
                writer("edge-seas-1", Region::Seas, &["203.0.113.1"], false),
            ],
        };
        DnsState::new(
            &section,
            &hub,
            Some(&mesh),
            locator,
            true,
            DnsMetrics::default(),
        )
        .expect("the zone builds")
    })
}

pub fn run(data: &[u8]) {
    let state = state();
    let mut out = Vec::new();
    let clients: [(IpAddr, bool); 2] = [
        ("100.64.2.9".parse().expect("an IP"), false),
        ("2001:db8:3::9".parse().expect("an IP"), true),
    ];
    for (src, tcp) in clients {
        out.clear();
        if !state.answer(data, src, tcp, &mut out) {
            continue;
        }
        if let Err(e) = Message::from_vec(&out) {
            panic!("response is not a DNS message ({e}): {out:02x?}");
        }
        assert_eq!(
            out.get(..2),
            data.get(..2),
            "the response carries the query's id"
        );
        let limit = match (tcp, wire::parse(data)) {
            (true, _) => usize::from(u16::MAX),
            (false, Ok(q)) => q.udp_limit(),
            // Refused unread: header, question and OPT at most.
            (false, Err(_)) => usize::from(u16::MAX),
        };
        assert!(
            out.len() <= limit,
            "{} bytes answered where {limit} fit",
            out.len()
        );
    }
}
