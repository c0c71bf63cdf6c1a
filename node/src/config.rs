//! The configuration file: Cloudflare's object model (monitor, pool, load balancer, app) in
//! TOML, parsed strictly and validated so that every mistake is reported with the file, the
//! line, the object and the field at fault, before anything is started or replaced.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use switchyard_geo::Region;
use switchyard_gossip::codec::{fnv1a, FNV_OFFSET};
use switchyard_gossip::{NodeId, Profile};

use crate::monitor::probe::{ExpectedCodes, ProbeKind};

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<MonitorConfig>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, rename = "load_balancer")]
    pub load_balancers: Vec<LoadBalancerConfig>,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
    /// `[mesh]`: absent, the node runs alone.
    pub mesh: Option<MeshSection>,
    /// `[geo]`: absent, every client is taken to be in the node's region.
    pub geo: Option<GeoConfig>,
}

/// `[geo]`: where clients are.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind-format database: GeoLite2/GeoIP2 Country or City, DB-IP lite, or one built
    /// by `switchyard geoip build`.
    pub database: Option<PathBuf>,
    /// Overrides of the country-to-region table: `{ "US-TX" = "WNAM", DE = "EEU" }`.
    #[serde(default)]
    pub regions: BTreeMap<String, Region>,
    /// `[[geo.override]]`: address blocks placed by hand; they win over the database.
    #[serde(default, rename = "override")]
    pub overrides: Vec<GeoOverride>,
}

/// One `[[geo.override]]`: a CIDR block and exactly one of country, subdivision or region.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeoOverride {
    #[serde(deserialize_with = "de_net")]
    pub cidr: IpNet,
    pub country: Option<String>,
    /// ISO 3166-2, e.g. "US-CA".
    pub subdivision: Option<String>,
    pub region: Option<Region>,
}

/// Where an override places its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideTarget {
    Country([u8; 2]),
    Subdivision([u8; 2], String),
    Region(Region),
}

impl GeoOverride {
    pub fn target(&self) -> Result<OverrideTarget, String> {
        let country = |c: &str| -> Result<[u8; 2], String> {
            let up = c.to_ascii_uppercase();
            if switchyard_geo::COUNTRIES
                .binary_search(&up.as_str())
                .is_ok()
            {
                let b = up.as_bytes();
                Ok([b[0], b[1]])
            } else {
                Err(format!(
                    "{c:?} is not an ISO 3166-1 alpha-2 country code such as \"DE\""
                ))
            }
        };
        match (&self.country, &self.subdivision, &self.region) {
            (Some(c), None, None) => Ok(OverrideTarget::Country(country(c)?)),
            (None, Some(s), None) => {
                let (c, sub) = s.split_once('-').ok_or_else(|| {
                    format!("{s:?} is not an ISO 3166-2 subdivision such as \"US-CA\"")
                })?;
                if sub.is_empty()
                    || sub.len() > 3
                    || !sub.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(format!(
                        "{s:?} is not an ISO 3166-2 subdivision such as \"US-CA\""
                    ));
                }
                Ok(OverrideTarget::Subdivision(
                    country(c)?,
                    sub.to_ascii_uppercase(),
                ))
            }
            (None, None, Some(r)) => Ok(OverrideTarget::Region(*r)),
            _ => Err("set exactly one of country, subdivision or region".into()),
        }
    }
}

fn de_net<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a CIDR block or an IP address (e.g. 10.0.0.0/8, 2001:db8::/32)"
            ))
        })
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
    /// Cluster CA certificate, this node's certificate and its private key (PEM).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
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

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
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

/// A quorum rule over a region's observers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Quorum {
    Any,
    #[default]
    Majority,
    All,
    Fraction(f64),
}

impl Quorum {
    /// Whether `up` of `total` observers meet the quorum (`total` > 0).
    pub fn met(self, up: usize, total: usize) -> bool {
        match self {
            Quorum::Any => up >= 1,
            Quorum::Majority => up * 2 > total,
            Quorum::All => up == total,
            Quorum::Fraction(f) => up as f64 >= f * total as f64 && up >= 1,
        }
    }
}

impl<'de> Deserialize<'de> for Quorum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Fraction(f64),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "{what} is not a quorum; use \"any\", \"majority\", \"all\" or a fraction above 0 and at most 1 (e.g. 0.66)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Word(w) => match w.as_str() {
                "any" => Ok(Quorum::Any),
                "majority" => Ok(Quorum::Majority),
                "all" => Ok(Quorum::All),
                _ => Err(bad(format!("{w:?}"))),
            },
            Raw::Fraction(f) if f > 0.0 && f <= 1.0 => Ok(Quorum::Fraction(f)),
            Raw::Fraction(f) => Err(bad(f.to_string())),
        }
    }
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
}

fn default_status_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9900))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[[monitor]]`: how origins are probed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MonitorType,
    /// Probe this port instead of the origin's.
    pub port: Option<u16>,
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Attempts retried at once after a failed one, before the round counts as failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Successful rounds in a row that mark a down origin up (0 means 1, as in Cloudflare).
    #[serde(default)]
    pub consecutive_up: u32,
    /// Failed rounds in a row that mark an up origin down (0 means 1, as in Cloudflare).
    #[serde(default)]
    pub consecutive_down: u32,
    pub method: Option<String>,
    pub path: Option<String>,
    pub expected_codes: Option<String>,
    pub expected_body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MonitorType {
    Tcp,
    Http,
    Https,
    Tls,
}

impl MonitorType {
    pub fn probe_kind(self) -> ProbeKind {
        match self {
            MonitorType::Tcp => ProbeKind::Tcp,
            MonitorType::Http => ProbeKind::Http,
            MonitorType::Https => ProbeKind::Https,
            MonitorType::Tls => ProbeKind::Tls,
        }
    }
    fn is_http(self) -> bool {
        matches!(self, MonitorType::Http | MonitorType::Https)
    }
}

/// `[[pool]]`: a set of origins that serve the same thing.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub monitor: Option<String>,
    pub origins: Vec<OriginConfig>,
    #[serde(default = "one")]
    pub minimum_origins: usize,
    #[serde(default)]
    pub origin_steering: OriginSteering,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// Regions whose nodes probe this pool; empty means all (used by the mesh).
    #[serde(default)]
    pub check_regions: Vec<Region>,
}

fn one() -> usize {
    1
}

/// An origin in a pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    pub name: String,
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_weight() -> f64 {
    1.0
}
fn yes() -> bool {
    true
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    pub name: String,
    #[serde(default)]
    pub steering: SteeringPolicy,
    pub default_pools: Vec<String>,
    /// Used when no default pool is healthy; defaults to the last of `default_pools`.
    pub fallback_pool: Option<String>,
    #[serde(default)]
    pub region_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub country_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub node_pools: BTreeMap<String, Vec<String>>,
    /// Weights of pools for `steering = "random"`; a pool not listed weighs 1.
    #[serde(default)]
    pub pool_weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default = "default_affinity_ttl", deserialize_with = "de_duration")]
    pub affinity_ttl: Duration,
    /// Dynamic steering: measure RTT from the client's region (default) or from the
    /// receiving node's.
    #[serde(default)]
    pub vantage: Vantage,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Vantage {
    #[default]
    Client,
    Node,
}

fn default_affinity_ttl() -> Duration {
    // Cloudflare's default session affinity TTL.
    Duration::from_secs(82_800)
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
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// Who may connect to an app. A client matching `deny` is refused; when `allow` is not empty,
/// a client must match it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    #[serde(default, deserialize_with = "de_nets")]
    pub allow: Vec<IpNet>,
    #[serde(default, deserialize_with = "de_nets")]
    pub deny: Vec<IpNet>,
}

impl IpRules {
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`; rules, hashing and
/// affinity must see the same address either way.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `listen`: one address, or a port range `ip:first-last` whose edge port N+k goes to the
/// origin's port M+k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listen {
    pub ip: IpAddr,
    pub first_port: u16,
    pub last_port: u16,
}

impl Listen {
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (self.first_port..=self.last_port).map(|p| SocketAddr::new(self.ip, p))
    }
    pub fn is_range(&self) -> bool {
        self.first_port != self.last_port
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = SocketAddr::new(self.ip, self.first_port);
        if self.is_range() {
            write!(f, "{addr}-{}", self.last_port)
        } else {
            write!(f, "{addr}")
        }
    }
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Listen {
                ip: addr.ip(),
                first_port: addr.port(),
                last_port: addr.port(),
            });
        }
        let bad = || {
            format!("{s:?} is not ip:port or ip:first-last (e.g. 0.0.0.0:443 or [::]:5000-5010)")
        };
        let (host, range) = s.rsplit_once(':').ok_or_else(bad)?;
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let first: u16 = a.parse().map_err(|_| bad())?;
        let last: u16 = b.parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(format!(
                "{s:?}: a port range needs 1 <= first <= last, e.g. 5000-5010"
            ));
        }
        Ok(Listen {
            ip,
            first_port: first,
            last_port: last,
        })
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An origin's address: an IP, or a host name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginAddr {
    pub host: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

impl OriginAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(OriginAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
                ip: Some(addr.ip()),
            });
        }
        let bad = || {
            format!(
                "{s:?} is not ip:port or host:port; write it as 203.0.113.10:443 or origin.example.com:443"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(OriginAddr {
            host: host.to_string(),
            port,
            ip: None,
        })
    }
}

impl fmt::Display for OriginAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.port)),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Durations are whole seconds (as in Cloudflare's API) or strings such as `"500ms"`, `"2m"`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration ({e}); write seconds as a number or a string like \"500ms\", \"10s\", \"1m\""
            ))
        }),
    }
}

fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a CIDR block or an IP address (e.g. 10.0.0.0/8, 2001:db8::/32)"
                    ))
                })
        })
        .collect()
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

/// A validation finding before it is placed in the file.
#[derive(Debug)]
struct Finding {
    path: Vec<Seg>,
    object: String,
    field: String,
    message: String,
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
        let cfg: Config = toml::from_str(text).map_err(|e| {
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
        if let Err(f) = cfg.validate_findings() {
            let location = match locate(text, &f.path) {
                Some(line) => format!("{name}:{line}: "),
                None => format!("{name}: "),
            };
            return Err(ConfigError::Invalid {
                location,
                object: f.object,
                field: f.field,
                message: f.message,
            });
        }
        Ok(cfg)
    }

    /// Checks references and ranges that the parser cannot, naming the object and field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_findings().map_err(|f| ConfigError::Invalid {
            location: String::new(),
            object: f.object,
            field: f.field,
            message: f.message,
        })
    }

    fn validate_findings(&self) -> Result<(), Finding> {
        let fail = |path: Vec<Seg>, object: String, field: &str, message: String| Finding {
            path,
            object,
            field: field.to_string(),
            message,
        };
        let key = |s: &str| Seg::Key(s.to_string());

        let n = &self.node;
        // The mesh's rule: the id becomes the DNS name of the node's certificate.
        if let Err(e) = NodeId::new(n.id.as_str()) {
            return Err(fail(
                vec![key("node"), key("id")],
                "[node]".into(),
                "id",
                e.to_string(),
            ));
        }

        if let Some(mesh) = &self.mesh {
            let at = |f: &str| vec![key("mesh"), key(f)];
            if !valid_name(&mesh.cluster) {
                return Err(fail(
                    at("cluster"),
                    "[mesh]".into(),
                    "cluster",
                    format!(
                        "{:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                        mesh.cluster
                    ),
                ));
            }
            if mesh.expected_size == 0 || mesh.expected_size > 10_000 {
                return Err(fail(
                    at("expected_size"),
                    "[mesh]".into(),
                    "expected_size",
                    "must be 1 to 10000".into(),
                ));
            }
        }

        if let Some(geo) = &self.geo {
            let mut table = switchyard_geo::RegionTable::builtin();
            for (k, r) in &geo.regions {
                if let Err(e) = table.set_override(k, *r) {
                    return Err(fail(
                        vec![key("geo"), key("regions")],
                        "[geo]".into(),
                        "regions",
                        e,
                    ));
                }
            }
            for (i, o) in geo.overrides.iter().enumerate() {
                if let Err(e) = o.target() {
                    return Err(fail(
                        vec![key("geo"), key("override"), Seg::Index(i)],
                        format!("[[geo.override]] {}", o.cidr),
                        "country/subdivision/region",
                        e,
                    ));
                }
            }
        }

        let mut monitors = HashSet::new();
        for (i, m) in self.monitors.iter().enumerate() {
            let obj = format!("monitor {:?}", m.name);
            let at = |f: &str| vec![key("monitor"), Seg::Index(i), key(f)];
            check_name(&m.name, &mut monitors, "monitor", at("name"), &obj)?;
            if m.interval < Duration::from_millis(10) {
                return Err(fail(
                    at("interval"),
                    obj,
                    "interval",
                    "must be at least 10ms".into(),
                ));
            }
            if m.timeout.is_zero() || m.timeout > m.interval {
                return Err(fail(
                    at("timeout"),
                    obj,
                    "timeout",
                    format!(
                        "{} must be above zero and at most the interval ({})",
                        humantime::format_duration(m.timeout),
                        humantime::format_duration(m.interval)
                    ),
                ));
            }
            if m.retries > 10 {
                return Err(fail(
                    at("retries"),
                    obj,
                    "retries",
                    "must be 0 to 10".into(),
                ));
            }
            for (field, v) in [
                ("consecutive_up", m.consecutive_up),
                ("consecutive_down", m.consecutive_down),
            ] {
                if v > 100 {
                    return Err(fail(at(field), obj, field, "must be 0 to 100".into()));
                }
            }
            if !m.kind.is_http() {
                let http_only = [
                    ("method", m.method.is_some()),
                    ("path", m.path.is_some()),
                    ("expected_codes", m.expected_codes.is_some()),
                    ("expected_body", m.expected_body.is_some()),
                    ("headers", !m.headers.is_empty()),
                ];
                if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
                    return Err(fail(
                        at(field),
                        obj,
                        field,
                        "applies only to type = \"http\" or \"https\"; remove it or change the type".into(),
                    ));
                }
            }
            if let Some(codes) = &m.expected_codes {
                if let Err(e) = ExpectedCodes::parse(codes) {
                    return Err(fail(at("expected_codes"), obj, "expected_codes", e));
                }
            }
            if let Some(path) = &m.path {
                if !path.starts_with('/') {
                    return Err(fail(
                        at("path"),
                        obj,
                        "path",
                        format!("{path:?} must start with '/'"),
                    ));
                }
            }
            if let Some(method) = &m.method {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(fail(
                        at("method"),
                        obj,
                        "method",
                        format!("{method:?} must be an upper-case HTTP method such as GET or HEAD"),
                    ));
                }
            }
            if m.port == Some(0) {
                return Err(fail(at("port"), obj, "port", "must be 1 to 65535".into()));
            }
        }

        let mut pools = HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let obj = format!("pool {:?}", p.name);
            let at = |f: &str| vec![key("pool"), Seg::Index(i), key(f)];
            check_name(&p.name, &mut pools, "pool", at("name"), &obj)?;
            if let Some(m) = &p.monitor {
                if !monitors.contains(m.as_str()) {
                    return Err(fail(
                        at("monitor"),
                        obj,
                        "monitor",
                        format!("no [[monitor]] is named {m:?}{}", known(&monitors)),
                    ));
                }
            }
            if p.origins.is_empty() {
                return Err(fail(
                    at("origins"),
                    obj,
                    "origins",
                    "a pool needs at least one origin".into(),
                ));
            }
            let mut names = HashSet::new();
            for (j, o) in p.origins.iter().enumerate() {
                let oat = |f: &str| {
                    vec![
                        key("pool"),
                        Seg::Index(i),
                        key("origins"),
                        Seg::Index(j),
                        key(f),
                    ]
                };
                let field = |f: &str| format!("origins[{j}].{f}");
                if !valid_name(&o.name) {
                    return Err(fail(
                        oat("name"),
                        obj,
                        &field("name"),
                        format!(
                            "{:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                            o.name
                        ),
                    ));
                }
                if !names.insert(o.name.as_str()) {
                    return Err(fail(
                        oat("name"),
                        obj,
                        &field("name"),
                        format!("origin {:?} appears twice in this pool", o.name),
                    ));
                }
                if let Err(e) = OriginAddr::parse(&o.address) {
                    return Err(fail(oat("address"), obj, &field("address"), e));
                }
                if !(0.0..=1.0).contains(&o.weight) {
                    return Err(fail(
                        oat("weight"),
                        obj,
                        &field("weight"),
                        format!("{} must be between 0 and 1", o.weight),
                    ));
                }
            }
            if p.minimum_origins == 0 || p.minimum_origins > p.origins.len() {
                return Err(fail(
                    at("minimum_origins"),
                    obj,
                    "minimum_origins",
                    format!(
                        "{} must be 1 to the number of origins ({})",
                        p.minimum_origins,
                        p.origins.len()
                    ),
                ));
            }
            if let Some(lat) = p.latitude {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(fail(
                        at("latitude"),
                        obj,
                        "latitude",
                        format!("{lat} must be -90 to 90"),
                    ));
                }
            }
            if let Some(lon) = p.longitude {
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(fail(
                        at("longitude"),
                        obj,
                        "longitude",
                        format!("{lon} must be -180 to 180"),
                    ));
                }
            }
            if p.latitude.is_some() != p.longitude.is_some() {
                return Err(fail(
                    at("latitude"),
                    obj,
                    "latitude",
                    "latitude and longitude go together: set both or neither".into(),
                ));
            }
        }

        let mut lbs = HashSet::new();
        for (i, lb) in self.load_balancers.iter().enumerate() {
            let obj = format!("load_balancer {:?}", lb.name);
            let at = |f: &str| vec![key("load_balancer"), Seg::Index(i), key(f)];
            check_name(&lb.name, &mut lbs, "load_balancer", at("name"), &obj)?;
            if lb.steering == SteeringPolicy::Proximity {
                let missing = lb.default_pools.iter().find(|name| {
                    self.pools
                        .iter()
                        .find(|p| &p.name == *name)
                        .is_some_and(|p| p.latitude.is_none())
                });
                if let Some(name) = missing {
                    return Err(fail(
                        at("steering"),
                        obj,
                        "steering",
                        format!(
                            "\"proximity\" needs every default pool's location; pool {name:?} has no latitude/longitude"
                        ),
                    ));
                }
            }
            if lb.default_pools.is_empty() {
                return Err(fail(
                    at("default_pools"),
                    obj,
                    "default_pools",
                    "list at least one pool".into(),
                ));
            }
            let pool_ref = |field: &str, path: Vec<Seg>, name: &str| -> Result<(), Finding> {
                if pools.contains(name) {
                    Ok(())
                } else {
                    Err(fail(
                        path,
                        obj.clone(),
                        field,
                        format!("no [[pool]] is named {name:?}{}", known(&pools)),
                    ))
                }
            };
            for p in &lb.default_pools {
                pool_ref("default_pools", at("default_pools"), p)?;
            }
            if let Some(p) = &lb.fallback_pool {
                pool_ref("fallback_pool", at("fallback_pool"), p)?;
            }
            for (region, list) in &lb.region_pools {
                if let Err(e) = region.parse::<Region>() {
                    return Err(fail(at("region_pools"), obj, "region_pools", e.to_string()));
                }
                for p in list {
                    pool_ref(&format!("region_pools.{region}"), at("region_pools"), p)?;
                }
            }
            for (country, list) in &lb.country_pools {
                if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(fail(
                        at("country_pools"),
                        obj,
                        "country_pools",
                        format!("{country:?} is not an ISO 3166-1 alpha-2 code such as \"DE\""),
                    ));
                }
                for p in list {
                    pool_ref(&format!("country_pools.{country}"), at("country_pools"), p)?;
                }
            }
            for (node, list) in &lb.node_pools {
                for p in list {
                    pool_ref(&format!("node_pools.{node}"), at("node_pools"), p)?;
                }
            }
            for (p, w) in &lb.pool_weights {
                pool_ref("pool_weights", at("pool_weights"), p)?;
                if !(0.0..=1.0).contains(w) {
                    return Err(fail(
                        at("pool_weights"),
                        obj,
                        &format!("pool_weights.{p}"),
                        format!("{w} must be between 0 and 1"),
                    ));
                }
            }
        }

        let mut apps = HashSet::new();
        let mut bound: Vec<(SocketAddr, &str)> = Vec::new();
        for (i, a) in self.apps.iter().enumerate() {
            let obj = format!("app {:?}", a.name);
            let at = |f: &str| vec![key("app"), Seg::Index(i), key(f)];
            check_name(&a.name, &mut apps, "app", at("name"), &obj)?;
            if !lbs.contains(a.load_balancer.as_str()) {
                return Err(fail(
                    at("load_balancer"),
                    obj,
                    "load_balancer",
                    format!(
                        "no [[load_balancer]] is named {:?}{}",
                        a.load_balancer,
                        known(&lbs)
                    ),
                ));
            }
            if a.listen.is_range() && a.listen.last_port - a.listen.first_port >= 1024 {
                return Err(fail(
                    at("listen"),
                    obj,
                    "listen",
                    format!("{}: a port range may span at most 1024 ports", a.listen),
                ));
            }
            for addr in a.listen.addrs() {
                if addr.port() == 0 {
                    continue;
                }
                if let Some((_, other)) = bound.iter().find(|(b, _)| *b == addr) {
                    return Err(fail(
                        at("listen"),
                        obj,
                        "listen",
                        format!("{addr} is also the listen address of app {other:?}"),
                    ));
                }
                bound.push((addr, &a.name));
            }
            if a.connect_timeout.is_zero() {
                return Err(fail(
                    at("connect_timeout"),
                    obj,
                    "connect_timeout",
                    "must be above zero".into(),
                ));
            }
            if a.idle_timeout.is_zero() {
                return Err(fail(
                    at("idle_timeout"),
                    obj,
                    "idle_timeout",
                    "must be above zero".into(),
                ));
            }
            if a.max_connections == Some(0) {
                return Err(fail(
                    at("max_connections"),
                    obj,
                    "max_connections",
                    "must be at least 1; leave it out for no limit".into(),
                ));
            }
        }
        Ok(())
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

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name<'a>(
    name: &'a str,
    seen: &mut HashSet<&'a str>,
    kind: &str,
    path: Vec<Seg>,
    obj: &str,
) -> Result<(), Finding> {
    let message = if !valid_name(name) {
        format!("{name:?} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    } else if !seen.insert(name) {
        format!("another [[{kind}]] is already named {name:?}; names must be unique")
    } else {
        return Ok(());
    };
    Err(Finding {
        path,
        object: obj.to_string(),
        field: "name".into(),
        message,
    })
}

fn known(names: &HashSet<&str>) -> String {
    if names.is_empty() {
        return " (none is defined)".into();
    }
    let mut v: Vec<&str> = names.iter().copied().collect();
    v.sort_unstable();
    format!(" (known: {})", v.join(", "))
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
    fn listen_and_origin_addresses() {
        let l: Listen = "[::]:5000-5002".parse().unwrap();
        assert_eq!(l.addrs().count(), 3);
        assert_eq!(l.to_string(), "[::]:5000-5002");
        assert!("127.0.0.1".parse::<Listen>().is_err());
        let o = OriginAddr::parse("db-1.internal:5432").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.ip),
            ("db-1.internal", 5432, None)
        );
        assert!(OriginAddr::parse("db 1:5432").is_err());
        assert!(OriginAddr::parse("host:0").is_err());
        assert_eq!(
            OriginAddr::parse("[::1]:80").unwrap().ip,
            Some("::1".parse().unwrap())
        );
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
