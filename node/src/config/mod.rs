//! The configuration file: Cloudflare's object model (monitor, pool, load balancer, app) in
//! TOML, parsed strictly and validated so that every mistake is reported with the file, the
//! line, the object and the field at fault, before anything is started or replaced.
//!
//! `Config` holds every value parsed (addresses, expected codes, regions, country codes,
//! durations): what reads it never parses text again. `file` is the file as written and its
//! conversion into `Config`, `values` the small parsed types, `validate` what holds across
//! values and objects. Nothing here imports the rest of the crate.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use switchyard_geo::{Region, RegionTable};
use switchyard_gossip::hash::{fnv1a, FNV_OFFSET};
use switchyard_gossip::{Profile, Timings};

mod anycast;
mod file;
mod validate;
mod values;

pub use anycast::{AnycastConfig, AnycastPrefix};

pub use values::{
    canonical_ip, CountryCode, ExpectedCodes, IpRules, Listen, OriginAddr, OverrideTarget, Quorum,
};

use values::{de_duration, de_opt_duration};

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub monitors: Vec<MonitorConfig>,
    pub pools: Vec<PoolConfig>,
    pub load_balancers: Vec<LoadBalancerConfig>,
    pub apps: Vec<AppConfig>,
    /// `[mesh]`: absent, the node runs alone.
    pub mesh: Option<MeshSection>,
    /// `[geo]`: absent, every client is taken to be in the node's region.
    pub geo: Option<GeoConfig>,
    /// `[dns]`: absent, the node answers no DNS (it still advertises its names to the mesh).
    pub dns: Option<DnsSection>,
    /// `[anycast]`: absent, the node announces nothing.
    pub anycast: Option<AnycastConfig>,
}

/// `[dns]`: the node answers DNS for the mesh's names under `zone`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// UDP and TCP, on the same address.
    pub listen: SocketAddr,
    /// The zone served, such as `lb.example.com` (a trailing dot is allowed).
    pub zone: String,
    /// TTL of every record answered.
    #[serde(default = "default_dns_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// Addresses per A or AAAA answer.
    #[serde(default = "default_dns_answers")]
    pub answers: usize,
}

impl DnsSection {
    /// The zone in lower case, without a trailing dot.
    pub fn zone_name(&self) -> String {
        self.zone.trim_end_matches('.').to_ascii_lowercase()
    }
}

fn default_dns_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_dns_answers() -> usize {
    2
}

/// `[geo]`: where clients are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoConfig {
    /// A MaxMind-format database: GeoLite2/GeoIP2 Country or City, DB-IP lite, or one built
    /// by `switchyard geoip build`.
    pub database: Option<PathBuf>,
    /// The country-to-region table with the overrides of `regions`, written
    /// `{ "US-TX" = "WNAM", DE = "EEU" }`, laid on it.
    pub regions: RegionTable,
    /// `[[geo.override]]`: address blocks placed by hand; they win over the database.
    pub overrides: Vec<GeoOverride>,
}

/// One `[[geo.override]]`: a CIDR block and where its clients are taken to be.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoOverride {
    pub cidr: IpNet,
    pub target: OverrideTarget,
}

/// `[mesh]`: how this node joins the others.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Cluster id: every message carries it; messages from another cluster are dropped.
    pub cluster: String,
    /// UDP address of the QUIC endpoint.
    #[serde(default = "default_mesh_listen")]
    pub listen: SocketAddr,
    /// The address peers reach this node at, when it differs from `listen` (NAT, 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    #[serde(default = "default_profile")]
    pub profile: Profile,
    /// Cluster CA certificate(s), this node's certificate and its private key (PEM). `ca`
    /// may hold several CA certificates (during a CA rotation, the old and the new).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The revocation list: node ids and certificate serials refused (see
    /// `switchyard_gossip::tls::Revoked` for the format). Re-read, with the three above, on
    /// every reload.
    #[serde(default)]
    pub revoked: Option<PathBuf>,
    /// How many of a region's live observers must see an origin up for the region to
    /// count it up: "any", "majority" (default), "all", or a fraction such as 0.66.
    #[serde(default)]
    pub quorum: Quorum,
    /// The mesh size SWIM's timings are tuned for.
    #[serde(default = "default_expected_size")]
    pub expected_size: u32,
    /// Overrides of the profile's timings (SWIM probe period and timeout, how long a
    /// suspect has to refute before it is down, how often seeds and down members are
    /// announced to, how often anti-entropy runs).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub probe_period: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub probe_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub suspect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub announce_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub anti_entropy_interval: Option<Duration>,
}

impl MeshSection {
    /// This section without its TLS files (`ca`, `cert`, `key`, `revoked`): what a reload
    /// cannot change without a restart. The files are read again on every reload.
    pub fn without_tls_files(&self) -> MeshSection {
        MeshSection {
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            revoked: None,
            ..self.clone()
        }
    }

    /// SWIM and replication timings: the profile's, with this section's overrides.
    pub fn timings(&self) -> Timings {
        let mut t = Timings::for_profile(self.profile, self.expected_size);
        if let Some(d) = self.probe_period {
            t.probe_period = d;
        }
        if let Some(d) = self.probe_timeout {
            t.probe_rtt = d;
        }
        if let Some(d) = self.suspect_timeout {
            t.suspect_to_down_after = d;
        }
        if let Some(d) = self.announce_interval {
            t.announce_period = d;
        }
        if let Some(d) = self.anti_entropy_interval {
            t.anti_entropy_period = d;
        }
        t
    }
}

fn default_mesh_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7946))
}
fn default_profile() -> Profile {
    Profile::Lan
}
fn default_expected_size() -> u32 {
    50
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub region: Region,
    #[serde(default = "default_status_listen")]
    pub status_listen: SocketAddr,
    /// How long SIGTERM waits for open connections before exiting.
    #[serde(default = "default_drain_timeout", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// Where clients reach this node (IPv4 and IPv6): what the mesh's DNS answers with.
    #[serde(default)]
    pub public_addresses: Vec<IpAddr>,
}

fn default_status_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9900))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Default `passive_failures`: one failed connect is a blip (a full listen queue, one lost
/// SYN); three within the window is a pattern.
pub const PASSIVE_FAILURES: u32 = 3;
/// Default `passive_window`.
pub const PASSIVE_WINDOW: Duration = Duration::from_secs(10);

/// `[[monitor]]`: how origins are probed.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    pub name: String,
    pub kind: MonitorType,
    /// Probe this port instead of the origin's.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Attempts retried at once after a failed one, before the round counts as failed.
    pub retries: u32,
    /// Successful rounds in a row that mark a down origin up (0 means 1, as in Cloudflare).
    pub consecutive_up: u32,
    /// Failed rounds in a row that mark an up origin down (0 means 1, as in Cloudflare).
    pub consecutive_down: u32,
    /// Failed connects while proxying, within `passive_window`, that mark an up origin down
    /// (1 to 100; default 3).
    pub passive_failures: u32,
    /// Default 10 s; 1 s to 1 h.
    pub passive_window: Duration,
    pub method: Option<String>,
    pub path: Option<String>,
    /// None: `ExpectedCodes::default()`, Cloudflare's 2xx. Kept apart from the default so
    /// that validation can refuse it on a monitor that is not HTTP.
    pub expected_codes: Option<ExpectedCodes>,
    pub expected_body: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub allow_insecure: bool,
    pub proxy_protocol: bool,
}

/// What a monitor checks, Cloudflare's monitor types.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MonitorType {
    /// The TCP connection is established.
    Tcp,
    /// An HTTP/1.1 request over plain TCP gets an expected answer.
    Http,
    /// An HTTP/1.1 request over TLS gets an expected answer.
    Https,
    /// The TLS handshake completes.
    Tls,
}

impl MonitorType {
    /// Network round trips one passing check takes: the TCP handshake, and a TLS handshake
    /// and an HTTP exchange of one round trip each. What a peer's one SWIM round trip is
    /// counted as, to add to a probe's figure like for like.
    pub fn round_trips(self) -> u32 {
        match self {
            MonitorType::Tcp => 1,
            MonitorType::Tls | MonitorType::Http => 2,
            MonitorType::Https => 3,
        }
    }
}

impl MonitorType {
    pub fn is_http(self) -> bool {
        matches!(self, MonitorType::Http | MonitorType::Https)
    }
}

/// `[[pool]]`: a set of origins that serve the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub monitor: Option<String>,
    pub origins: Vec<OriginConfig>,
    pub minimum_origins: usize,
    pub origin_steering: OriginSteering,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// Regions whose nodes probe this pool; empty means all (used by the mesh).
    pub check_regions: Vec<Region>,
}

/// An origin in a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    pub name: String,
    pub address: OriginAddr,
    pub weight: f64,
    pub enabled: bool,
}

/// How a pool picks one of its origins.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OriginSteering {
    /// Weighted random.
    #[default]
    Random,
    /// Consistent hash of the client IP: only a failed origin's clients move.
    Hash,
    /// The origin with the fewest open connections from this node, weighted.
    LeastConnections,
}

/// `[[load_balancer]]`: which pool serves a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancerConfig {
    pub name: String,
    pub steering: SteeringPolicy,
    pub default_pools: Vec<String>,
    /// Used when no default pool is healthy; defaults to the last of `default_pools`.
    pub fallback_pool: Option<String>,
    /// Sorted by the key as written. A list, not a map: codes are read in any case, so
    /// "WEU" and "weu" may both appear, and the first one decides, as it always has.
    pub region_pools: Vec<(Region, Vec<String>)>,
    pub country_pools: BTreeMap<CountryCode, Vec<String>>,
    pub node_pools: BTreeMap<String, Vec<String>>,
    /// Weights of pools for `steering = "random"`; a pool not listed weighs 1.
    pub pool_weights: BTreeMap<String, f64>,
    pub session_affinity: SessionAffinity,
    pub affinity_ttl: Duration,
    /// Dynamic steering: measure RTT from the client's region (default) or from the
    /// receiving node's.
    pub vantage: Vantage,
    /// When a connection to the chosen origin goes through a peer node (see `core::relay`).
    pub relay: RelayPolicy,
}

impl LoadBalancerConfig {
    /// Whether any client of any node may be sent to pool `pool`: its default pools, its
    /// fallback, and its region, country and every node's pools. A peer asked to relay
    /// checks this against the whole config, since `node_pools` differ per node.
    pub fn uses_pool(&self, pool: &str) -> bool {
        self.default_pools
            .iter()
            .chain(&self.fallback_pool)
            .chain(self.region_pools.iter().flat_map(|(_, p)| p))
            .chain(self.country_pools.values().flatten())
            .chain(self.node_pools.values().flatten())
            .any(|p| p == pool)
    }
}

/// `relay`: when a connection to the origin steering chose may go through a peer node
/// instead of straight from this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayPolicy {
    /// Always straight from this node.
    Off,
    /// Through the peer with the shortest path when this node's own path is down.
    #[default]
    Failover,
    /// Also when the path through a peer is shorter than the direct one by a margin.
    Fastest,
}

impl RelayPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayPolicy::Off => "off",
            RelayPolicy::Failover => "failover",
            RelayPolicy::Fastest => "fastest",
        }
    }

    pub fn parse(s: &str) -> Option<RelayPolicy> {
        [
            RelayPolicy::Off,
            RelayPolicy::Failover,
            RelayPolicy::Fastest,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Vantage {
    #[default]
    Client,
    Node,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SteeringPolicy {
    #[default]
    Failover,
    Random,
    Geo,
    Dynamic,
    Proximity,
}

impl SteeringPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SteeringPolicy::Failover => "failover",
            SteeringPolicy::Random => "random",
            SteeringPolicy::Geo => "geo",
            SteeringPolicy::Dynamic => "dynamic",
            SteeringPolicy::Proximity => "proximity",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIp,
}

/// `[[app]]`: a listener whose connections a load balancer steers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    pub listen: Listen,
    pub load_balancer: String,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Open connections at most; further ones are closed at once. None: no limit.
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub ip_rules: IpRules,
    /// Served by the mesh's DNS as `<hostname>.<[dns] zone>`: one DNS label.
    pub hostname: Option<String>,
}

/// An app's `connect_timeout` when it sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An app's `idle_timeout` when it sets none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// One step of a path into the document, to find the line of the value at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Parse { location: String, message: String },
    #[error("{location}{object}: {field}: {message}")]
    Invalid {
        /// `file:line: ` when known, else empty.
        location: String,
        object: String,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// Parses and validates config text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: Option<&Path>) -> Result<Config, ConfigError> {
        let name = origin
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".to_string());
        let file: file::File = toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("{name}:{line}:{col}")
                }
                None => name.clone(),
            };
            ConfigError::Parse {
                location,
                message: e.message().trim().to_string(),
            }
        })?;
        let cfg = file
            .into_config()
            .and_then(|cfg| cfg.validate_findings().map(|()| cfg))
            .map_err(|f| {
                let location = match locate(text, &f.path) {
                    Some(line) => format!("{name}:{line}: "),
                    None => format!("{name}: "),
                };
                ConfigError::Invalid {
                    location,
                    object: f.object,
                    field: f.field,
                    message: f.message,
                }
            })?;
        Ok(cfg)
    }

    /// Checks names, ranges and references, naming the object and field; for a config built
    /// in code, since `parse` has already checked its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_findings().map_err(|f| ConfigError::Invalid {
            location: String::new(),
            object: f.object,
            field: f.field,
            message: f.message,
        })
    }

    pub fn monitor(&self, name: &str) -> Option<&MonitorConfig> {
        self.monitors.iter().find(|m| m.name == name)
    }

    /// A fingerprint of what must agree across the mesh (monitors, pools, load balancers),
    /// so status can show nodes whose config drifted. `[node]`, `[mesh]` and apps differ
    /// per node by design and are left out.
    pub fn fingerprint(&self) -> u64 {
        let text = format!(
            "{:?}|{:?}|{:?}",
            self.monitors, self.pools, self.load_balancers
        );
        fnv1a(FNV_OFFSET, text.as_bytes())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The line of the value at `path`, or of its nearest ancestor that exists in the text.
fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table = Some(root.get_ref());
    let mut array = None;
    for seg in path {
        let value = match (seg, table, array) {
            (Seg::Key(k), Some(t), _) => {
                t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v)
            }
            (Seg::Index(i), _, Some(a)) => {
                let a: &toml::de::DeArray = a;
                a.get(*i)
            }
            _ => None,
        };
        let Some(value) = value else { break };
        span = Some(value.span());
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    span.map(|s| line_col(text, s.start).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
id = "wnam-1"
region = "WNAM"

[[monitor]]
name = "tcp"
type = "tcp"
interval = "1s"
timeout = "500ms"

[[monitor]]
name = "web"
type = "http"
interval = 10
path = "/health"
expected_codes = "2xx"
headers = { Host = "example.com" }

[[pool]]
name = "primary"
monitor = "tcp"
origins = [
  { name = "a", address = "127.0.0.1:7001" },
  { name = "b", address = "origin.example.com:7002", weight = 0.5 },
]

[[pool]]
name = "backup"
origins = [{ name = "c", address = "[::1]:7003", enabled = false }]

[[load_balancer]]
name = "lb"
default_pools = ["primary", "backup"]
fallback_pool = "backup"
session_affinity = "client_ip"
affinity_ttl = "10m"

[[app]]
name = "web"
listen = "127.0.0.1:8443"
load_balancer = "lb"
proxy_protocol = "v2"
ip_rules = { allow = ["10.0.0.0/8", "127.0.0.1"], deny = ["10.9.0.0/16"] }

[[app]]
name = "range"
listen = "127.0.0.1:5000-5010"
load_balancer = "lb"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("sy.toml")))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.node.status_listen, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(c.monitors[0].interval, Duration::from_secs(1));
        assert_eq!(c.monitors[0].retries, 2);
        assert_eq!(c.monitors[1].interval, Duration::from_secs(10));
        assert_eq!(c.monitors[1].timeout, Duration::from_secs(5));
        assert_eq!(c.pools[0].origins[1].weight, 0.5);
        assert!(!c.pools[1].origins[0].enabled);
        assert_eq!(c.pools[0].origin_steering, OriginSteering::Random);
        assert_eq!(
            c.load_balancers[0].session_affinity,
            SessionAffinity::ClientIp
        );
        assert_eq!(c.load_balancers[0].affinity_ttl, Duration::from_secs(600));
        assert_eq!(c.apps[0].proxy_protocol, ProxyProtocol::V2);
        assert_eq!(c.apps[1].listen.addrs().count(), 11);
        assert_eq!(c.apps[0].idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn ip_rules_deny_wins_and_allow_restricts() {
        let c = Config::parse(GOOD, None).unwrap();
        let rules = &c.apps[0].ip_rules;
        assert!(rules.permits("10.1.2.3".parse().unwrap()));
        assert!(!rules.permits("10.9.2.3".parse().unwrap()));
        assert!(rules.permits("127.0.0.1".parse().unwrap()));
        assert!(rules.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!rules.permits("192.0.2.1".parse().unwrap()));
        assert!(IpRules::default().permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn passive_threshold_defaults_and_bounds() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.monitors[0].passive_failures, 3);
        assert_eq!(c.monitors[0].passive_window, Duration::from_secs(10));
        let set = |fields: &str| {
            GOOD.replace(
                "timeout = \"500ms\"\n",
                &format!("timeout = \"500ms\"\n{fields}\n"),
            )
        };
        let c = Config::parse(&set("passive_failures = 5\npassive_window = \"1m\""), None).unwrap();
        assert_eq!(c.monitors[0].passive_failures, 5);
        assert_eq!(c.monitors[0].passive_window, Duration::from_secs(60));
        for (fields, field) in [
            ("passive_failures = 0", "passive_failures"),
            ("passive_failures = 101", "passive_failures"),
            ("passive_window = \"0s\"", "passive_window"),
            ("passive_window = \"2h\"", "passive_window"),
        ] {
            let e = err(&set(fields));
            assert!(e.starts_with("sy.toml:"), "{fields}: {e}");
            assert!(
                e.contains(field) && e.contains("monitor \"tcp\""),
                "{fields}: {e}"
            );
        }
    }

    #[test]
    fn dns_keys_are_read_with_defaults_and_each_mistake_names_its_line() {
        let with = |node: &str, app: &str, dns: &str| {
            GOOD.replace(
                "region = \"WNAM\"\n",
                &format!("region = \"WNAM\"\n{node}\n"),
            )
            .replace(
                "load_balancer = \"lb\"\nproxy_protocol",
                &format!("load_balancer = \"lb\"\n{app}\nproxy_protocol"),
            ) + dns
        };
        let node = "public_addresses = [\"192.0.2.1\", \"2001:db8::1\"]";
        let dns = "\n[dns]\nlisten = \"127.0.0.1:5353\"\nzone = \"lb.example.com.\"\n";
        let c = Config::parse(&with(node, "hostname = \"game\"", dns), None).unwrap();
        let d = c.dns.as_ref().unwrap();
        assert_eq!(d.zone_name(), "lb.example.com");
        assert_eq!((d.ttl, d.answers), (Duration::from_secs(30), 2));
        assert_eq!(c.node.public_addresses.len(), 2);
        assert_eq!(c.apps[0].hostname.as_deref(), Some("game"));

        for (text, at, what) in [
            (
                with(node, "hostname = \"Game\"", dns),
                "sy.toml:44: app \"web\": hostname:",
                "DNS label",
            ),
            (
                with(node, "hostname = \"-x\"", dns),
                "sy.toml:44: app \"web\": hostname:",
                "DNS label",
            ),
            (
                with("public_addresses = [\"0.0.0.0\"]", "", dns),
                "sy.toml:5: [node]: public_addresses:",
                "0.0.0.0",
            ),
            (
                with("public_addresses = [\"192.0.2.1\", \"192.0.2.1\"]", "", dns),
                "sy.toml:5: [node]: public_addresses:",
                "twice",
            ),
            (
                with("", "", dns),
                "sy.toml:2: [node]: public_addresses:",
                "[dns] needs",
            ),
            (
                with(node, "", &dns.replace("lb.example.com.", "lb..example")),
                "sy.toml:55: [dns]: zone:",
                "DNS label",
            ),
            (
                with(node, "", &format!("{dns}ttl = 0\n")),
                "sy.toml:56: [dns]: ttl:",
                "out of range",
            ),
            (
                with(node, "", &format!("{dns}answers = 9\n")),
                "sy.toml:56: [dns]: answers:",
                "1 to 8",
            ),
        ] {
            let e = err(&text);
            assert!(e.starts_with(at) && e.contains(what), "{e}");
        }
        let twice = with(node, "hostname = \"game\"", dns)
            .replace("name = \"range\"", "name = \"range\"\nhostname = \"game\"");
        let e = err(&twice);
        assert!(
            e.contains("app \"range\": hostname:")
                && e.contains("also the hostname of app \"web\""),
            "{e}"
        );
    }

    #[test]
    fn relay_defaults_to_failover_and_a_bad_value_is_refused_with_its_line() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.load_balancers[0].relay, RelayPolicy::Failover);
        for (value, policy) in [
            ("off", RelayPolicy::Off),
            ("failover", RelayPolicy::Failover),
            ("fastest", RelayPolicy::Fastest),
        ] {
            let text = GOOD.replace(
                "name = \"lb\"",
                &format!("name = \"lb\"\nrelay = \"{value}\""),
            );
            let c = Config::parse(&text, None).unwrap();
            assert_eq!(c.load_balancers[0].relay, policy);
            assert_eq!(policy.as_str(), value);
        }
        let e = err(&GOOD.replace("name = \"lb\"", "name = \"lb\"\nrelay = \"always\""));
        assert!(
            e.starts_with("sy.toml:34: load_balancer \"lb\": relay:"),
            "{e}"
        );
        assert!(e.contains("\"always\""), "{e}");
        assert!(e.contains("fastest"), "names what is allowed: {e}");
    }

    #[test]
    fn unknown_field_is_refused_with_its_line() {
        let text = GOOD
            .replace("retries", "x")
            .replace("timeout = \"500ms\"", "timeout = \"500ms\"\nintervall = 3");
        let e = err(&text);
        assert!(e.starts_with("sy.toml:11:"), "{e}");
        assert!(e.contains("intervall"), "{e}");
    }

    #[test]
    fn bad_region_is_refused_with_its_line() {
        let e = err(&GOOD.replace("\"WNAM\"", "\"MARS\""));
        assert!(e.starts_with("sy.toml:4:"), "{e}");
        assert!(e.contains("MARS") && e.contains("SEAS"), "{e}");
    }

    #[test]
    fn unknown_pool_names_the_object_field_and_line() {
        let e = err(&GOOD.replace(
            "default_pools = [\"primary\", \"backup\"]",
            "default_pools = [\"primary\", \"nope\"]",
        ));
        assert!(
            e.starts_with("sy.toml:34: load_balancer \"lb\": default_pools:"),
            "{e}"
        );
        assert!(
            e.contains("\"nope\"") && e.contains("known: backup, primary"),
            "{e}"
        );
    }

    #[test]
    fn bad_origin_address_points_at_the_origin() {
        let e = err(&GOOD.replace("origin.example.com:7002", "origin.example.com"));
        assert!(
            e.starts_with("sy.toml:25: pool \"primary\": origins[1].address:"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_what_to_do() {
        let cases = [
            (
                GOOD.replace("weight = 0.5", "weight = 2.0"),
                "origins[1].weight: 2 must be between 0 and 1",
            ),
            (
                GOOD.replace("monitor = \"tcp\"", "monitor = \"icmp\""),
                "no [[monitor]] is named \"icmp\" (known: tcp, web)",
            ),
            (
                GOOD.replace("timeout = \"500ms\"", "timeout = \"5s\""),
                "at most the interval",
            ),
            (
                GOOD.replace(
                    "load_balancer = \"lb\"\nproxy",
                    "load_balancer = \"x\"\nproxy",
                ),
                "no [[load_balancer]] is named \"x\"",
            ),
            (
                GOOD.replace("name = \"backup\"\norigins", "name = \"primary\"\norigins"),
                "already named \"primary\"",
            ),
            (
                GOOD.replace("5000-5010", "8443-8444"),
                "127.0.0.1:8443 is also the listen address of app \"web\"",
            ),
            (
                GOOD.replace(
                    "[[load_balancer]]\nname = \"lb\"",
                    "[[load_balancer]]\nname = \"lb\"\nsteering = \"proximity\"",
                ),
                "pool \"primary\" has no latitude/longitude",
            ),
            (
                GOOD.replace("path = \"/health\"", "path = \"health\""),
                "must start with '/'",
            ),
            (
                GOOD.replace(
                    "name = \"tcp\"\ntype = \"tcp\"",
                    "name = \"tcp\"\ntype = \"tcp\"\npath = \"/\"",
                ),
                "applies only to type = \"http\"",
            ),
            (
                GOOD.replace("expected_codes = \"2xx\"", "expected_codes = \"abc\""),
                "expected_codes",
            ),
            (
                GOOD.replace("\"10.0.0.0/8\"", "\"10.0.0.0/33\""),
                "is not a CIDR block",
            ),
            (GOOD.replace("5000-5010", "5010-5000"), "1 <= first <= last"),
            (
                GOOD.replace("interval = \"1s\"", "interval = \"1 parsec\""),
                "is not a duration",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.starts_with("sy.toml:"), "no location in: {e}");
        }
    }

    #[test]
    fn values_are_held_parsed() {
        let text = GOOD.replace(
            "fallback_pool = \"backup\"",
            "fallback_pool = \"backup\"\nregion_pools = { weu = [\"primary\"], SEAS = [\"backup\"] }\ncountry_pools = { DE = [\"backup\"] }",
        );
        let c = Config::parse(&text, None).unwrap();
        assert_eq!(
            c.pools[0].origins[1].address,
            OriginAddr::parse("origin.example.com:7002").unwrap()
        );
        assert_eq!(c.monitors[0].expected_codes, None);
        assert_eq!(
            c.monitors[1].expected_codes,
            Some(ExpectedCodes::parse("200-299").unwrap())
        );
        let lb = &c.load_balancers[0];
        assert_eq!(
            lb.region_pools,
            vec![
                (Region::Seas, vec!["backup".to_string()]),
                (Region::Weu, vec!["primary".to_string()]),
            ]
        );
        let de = CountryCode::parse_key("DE").unwrap();
        assert_eq!(lb.country_pools[&de], vec!["backup".to_string()]);
    }

    #[test]
    fn a_region_written_twice_keeps_its_first_list() {
        let text = GOOD.replace(
            "fallback_pool = \"backup\"",
            "fallback_pool = \"backup\"\nregion_pools = { weu = [\"backup\"], WEU = [\"primary\"] }",
        );
        let c = Config::parse(&text, None).unwrap();
        // Keys are sorted as text, so "WEU" comes first.
        assert_eq!(
            c.load_balancers[0].region_pools[0],
            (Region::Weu, vec!["primary".to_string()])
        );
    }

    #[test]
    fn bad_values_name_the_file_line_object_and_field() {
        let lb = |extra: &str| {
            GOOD.replace(
                "fallback_pool = \"backup\"",
                &format!("fallback_pool = \"backup\"\n{extra}"),
            )
        };
        let cases = [
            (
                lb("region_pools = { MARS = [\"primary\"] }"),
                "sy.toml:36: load_balancer \"lb\": region_pools: unknown region \"MARS\"",
            ),
            (
                lb("country_pools = { DEU = [\"primary\"] }"),
                "sy.toml:36: load_balancer \"lb\": country_pools: \"DEU\" is not an ISO 3166-1 alpha-2 code",
            ),
            // Lower case was refused before the keys were typed, and still is.
            (
                lb("country_pools = { de = [\"primary\"] }"),
                "sy.toml:36: load_balancer \"lb\": country_pools: \"de\" is not",
            ),
            (
                GOOD.replace("127.0.0.1:7001", "127.0.0.1:70000"),
                "sy.toml:24: pool \"primary\": origins[0].address: \"127.0.0.1:70000\" is not ip:port or host:port",
            ),
            (
                GOOD.replace("expected_codes = \"2xx\"", "expected_codes = \"2xx,6xx\""),
                "sy.toml:17: monitor \"web\": expected_codes: expected codes: bad entry \"6xx\"",
            ),
            (
                format!("{GOOD}\n[[geo.override]]\ncidr = \"10.0.0.0/8\"\ncountry = \"XX\"\n"),
                "sy.toml:51: [[geo.override]] 10.0.0.0/8: country/subdivision/region: \"XX\" is not an ISO 3166-1 alpha-2 country code",
            ),
            (
                format!("{GOOD}\n[geo]\nregions = {{ \"US-XX\" = \"WEU\" }}\n"),
                "sy.toml:52: [geo]: regions: region override key \"US-XX\"",
            ),
            (
                format!("{GOOD}\n[[geo.override]]\ncidr = \"10.0.0.0/8\"\nregion = \"WEU\"\ncountry = \"DE\"\n"),
                "[[geo.override]] 10.0.0.0/8: country/subdivision/region: set exactly one",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.starts_with("sy.toml:"), "no location in: {e}");
        }
    }

    #[test]
    fn geo_overrides_and_regions_are_held_parsed() {
        let text = format!(
            "{GOOD}\n[geo]\nregions = {{ gb = \"EEU\" }}\n\n[[geo.override]]\ncidr = \"10.0.0.0/8\"\nsubdivision = \"us-ca\"\n\n[[geo.override]]\ncidr = \"192.0.2.1\"\nregion = \"OC\"\n"
        );
        let c = Config::parse(&text, None).unwrap();
        let geo = c.geo.unwrap();
        assert_eq!(
            geo.overrides[0].target,
            OverrideTarget::Subdivision(CountryCode::parse_key("US").unwrap(), "CA".into())
        );
        assert_eq!(
            geo.overrides[1].cidr,
            "192.0.2.1/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(geo.overrides[1].target, OverrideTarget::Region(Region::Oc));
        assert_eq!(geo.regions.lookup("GB", None), Some(Region::Eeu));
        assert_eq!(geo.regions.lookup("FR", None), Some(Region::Weu));
    }

    const MESH: &str = r#"
[mesh]
cluster = "prod"
ca = "ca.crt"
cert = "node.crt"
key = "node.key"
"#;

    #[test]
    fn more_health_rows_than_peers_accept_of_one_node_are_refused() {
        let pool = |n: usize, check: &str| {
            let origins: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "{{ name = \"o{i}\", address = \"10.0.{}.{}:80\" }}",
                        i / 250,
                        i % 250 + 1
                    )
                })
                .collect();
            format!(
                "[[pool]]\nname = \"big\"\nmonitor = \"tcp\"\ncheck_regions = [{check}]\norigins = [{}]\n",
                origins.join(", ")
            )
        };
        let with = |p: String| {
            GOOD.replace("[[load_balancer]]", &format!("{p}\n[[load_balancer]]")) + MESH
        };
        // About 200 bytes a row at most: 6,000 rows are more than 1 MiB.
        let e = err(&with(pool(6_000, "")));
        assert!(e.contains("would gossip 6002 health rows"), "{e}");
        assert!(e.contains("check_regions"), "{e}");
        // The same pool probed only from another region costs this node nothing.
        Config::parse(&with(pool(6_000, "\"SEAS\"")), None).unwrap();
        // Without a mesh nobody gossips.
        Config::parse(
            &(GOOD.replace(
                "[[load_balancer]]",
                &format!("{}\n[[load_balancer]]", pool(6_000, "")),
            )),
            None,
        )
        .unwrap();
        Config::parse(&with(pool(1_000, "")), None).unwrap();
    }

    #[test]
    fn values_that_would_break_a_running_node_are_refused_with_their_location() {
        let mesh = |extra: &str| format!("{GOOD}{MESH}{extra}\n");
        let ttl = |value: &str| {
            GOOD.replace("affinity_ttl = \"10m\"", &format!("affinity_ttl = {value}"))
        };
        let app = |extra: &str| {
            GOOD.replace(
                "proxy_protocol = \"v2\"",
                &format!("proxy_protocol = \"v2\"\n{extra}"),
            )
        };
        let huge = "\"300000000000years\"";
        let cases = [
            // A zero period panics the mesh task's timers; the node would run on without a
            // mesh, silently.
            (
                mesh("announce_interval = \"0s\""),
                "sy.toml:56: [mesh]: announce_interval: 0s is out of range: it must be 100ms to 1h",
            ),
            (
                mesh("anti_entropy_interval = 0"),
                "[mesh]: anti_entropy_interval: 0s is out of range",
            ),
            (mesh("probe_period = \"0s\""), "[mesh]: probe_period: 0s is out of range"),
            (mesh("probe_timeout = \"0s\""), "[mesh]: probe_timeout: 0s is out of range"),
            (
                mesh("suspect_timeout = \"0s\""),
                "[mesh]: suspect_timeout: 0s is out of range",
            ),
            (
                mesh(&format!("suspect_timeout = {huge}")),
                "[mesh]: suspect_timeout: ",
            ),
            (
                mesh("probe_period = \"1s\"\nprobe_timeout = \"1s\""),
                "sy.toml:57: [mesh]: probe_timeout: probe_timeout (1s) must be below probe_period (1s)",
            ),
            (
                mesh("probe_timeout = \"5m\""),
                "must be below probe_period (1s) (the profile's value for the one not set)",
            ),
            // Past what the clock can add: every connection task would panic.
            (
                app(&format!("connect_timeout = {huge}")),
                "app \"web\": connect_timeout: ",
            ),
            (
                app("connect_timeout = \"0s\""),
                "app \"web\": connect_timeout: 0s is out of range: it must be 1ms to 10m",
            ),
            (
                app(&format!("idle_timeout = {huge}")),
                "app \"web\": idle_timeout: ",
            ),
            (
                app("idle_timeout = \"0s\""),
                "app \"web\": idle_timeout: 0s is out of range: it must be 1s to 7days",
            ),
            (
                ttl(huge),
                "sy.toml:37: load_balancer \"lb\": affinity_ttl: ",
            ),
            (
                ttl("0"),
                "load_balancer \"lb\": affinity_ttl: 0s is out of range: it must be 1s to 7days",
            ),
            (
                GOOD.replace("interval = \"1s\"", "interval = \"0s\""),
                "sy.toml:9: monitor \"tcp\": interval: 0s is out of range: it must be 10ms to 1day",
            ),
            (
                GOOD.replace("interval = 10", &format!("interval = {huge}")),
                "monitor \"web\": interval: ",
            ),
            (
                GOOD.replace("timeout = \"500ms\"", "timeout = 0"),
                "monitor \"tcp\": timeout: 0s must be at least 1ms",
            ),
            (
                GOOD.replace("region = \"WNAM\"", &format!("region = \"WNAM\"\ndrain_timeout = {huge}")),
                "sy.toml:5: [node]: drain_timeout: ",
            ),
            (
                GOOD.replace("interval = 10", "interval = -1"),
                "-1 is not a duration: it is negative",
            ),
            (
                GOOD.replace("interval = 10", "interval = 1.5"),
                "1.5 is not a duration",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.starts_with("sy.toml:"), "no location in: {e}");
        }
    }

    #[test]
    fn values_at_the_edges_of_their_ranges_are_accepted() {
        let text = format!(
            "{}{MESH}probe_period = \"100ms\"\nprobe_timeout = \"10ms\"\nsuspect_timeout = \"1h\"\nannounce_interval = \"100ms\"\nanti_entropy_interval = \"1h\"\n",
            GOOD.replace("interval = \"1s\"", "interval = \"10ms\"")
                .replace("timeout = \"500ms\"", "timeout = \"1ms\"")
                .replace("affinity_ttl = \"10m\"", "affinity_ttl = \"7days\"")
                .replace(
                    "proxy_protocol = \"v2\"",
                    "proxy_protocol = \"v2\"\nconnect_timeout = \"10m\"\nidle_timeout = \"7days\"",
                )
        );
        let c = Config::parse(&text, None).unwrap();
        let t = c.mesh.unwrap().timings();
        assert_eq!(t.probe_rtt, Duration::from_millis(10));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/sy.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/sy.toml: cannot read the config file"),
            "{e}"
        );
    }
}
