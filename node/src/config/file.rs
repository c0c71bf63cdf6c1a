//! The configuration file as written, for serde, and its one conversion into `Config`. Values
//! whose mistakes must be reported with the object and field at fault (origin addresses,
//! expected codes, region and country keys, override targets) are read here as text and
//! parsed in `into_config`, which knows the object; serde alone would only know the line.
//! Values that serde's message names well enough are read typed straight away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use switchyard_geo::{Region, RegionTable};

use super::validate::{key, Finding};
use super::values::{de_duration, de_net};
use super::{
    AppConfig, Config, CountryCode, ExpectedCodes, GeoConfig, GeoOverride, LoadBalancerConfig,
    MeshSection, MonitorConfig, MonitorType, NodeConfig, OriginAddr, OriginConfig, OriginSteering,
    OverrideTarget, PoolConfig, RelayPolicy, Seg, SessionAffinity, SteeringPolicy, Vantage,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    node: NodeConfig,
    #[serde(default)]
    monitor: Vec<Monitor>,
    #[serde(default)]
    pool: Vec<Pool>,
    #[serde(default)]
    load_balancer: Vec<LoadBalancer>,
    #[serde(default)]
    app: Vec<AppConfig>,
    mesh: Option<MeshSection>,
    geo: Option<Geo>,
    dns: Option<super::DnsSection>,
    anycast: Option<super::AnycastConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Geo {
    database: Option<PathBuf>,
    #[serde(default)]
    regions: BTreeMap<String, Region>,
    #[serde(default, rename = "override")]
    overrides: Vec<Override>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    #[serde(deserialize_with = "de_net")]
    cidr: IpNet,
    country: Option<String>,
    subdivision: Option<String>,
    region: Option<Region>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Monitor {
    name: String,
    #[serde(rename = "type")]
    kind: MonitorType,
    port: Option<u16>,
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    timeout: Duration,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    consecutive_up: u32,
    #[serde(default)]
    consecutive_down: u32,
    #[serde(default = "default_passive_failures")]
    passive_failures: u32,
    #[serde(default = "default_passive_window", deserialize_with = "de_duration")]
    passive_window: Duration,
    method: Option<String>,
    path: Option<String>,
    expected_codes: Option<String>,
    expected_body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    proxy_protocol: bool,
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
fn default_passive_failures() -> u32 {
    super::PASSIVE_FAILURES
}
fn default_passive_window() -> Duration {
    super::PASSIVE_WINDOW
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pool {
    name: String,
    monitor: Option<String>,
    origins: Vec<Origin>,
    #[serde(default = "one")]
    minimum_origins: usize,
    #[serde(default)]
    origin_steering: OriginSteering,
    latitude: Option<f64>,
    longitude: Option<f64>,
    #[serde(default)]
    check_regions: Vec<Region>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Origin {
    name: String,
    address: String,
    #[serde(default = "default_weight")]
    weight: f64,
    #[serde(default = "yes")]
    enabled: bool,
}

fn default_weight() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBalancer {
    name: String,
    #[serde(default)]
    steering: SteeringPolicy,
    default_pools: Vec<String>,
    fallback_pool: Option<String>,
    #[serde(default)]
    region_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    country_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    node_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pool_weights: BTreeMap<String, f64>,
    #[serde(default)]
    session_affinity: SessionAffinity,
    #[serde(default = "default_affinity_ttl", deserialize_with = "de_duration")]
    affinity_ttl: Duration,
    #[serde(default)]
    vantage: Vantage,
    /// Text, so that a bad value names its load balancer (a serde enum error names no object).
    relay: Option<String>,
}

fn default_affinity_ttl() -> Duration {
    // Cloudflare's default session affinity TTL.
    Duration::from_secs(82_800)
}

impl File {
    /// Parses the values kept as text, naming the object and field of the first bad one.
    pub(super) fn into_config(self) -> Result<Config, Finding> {
        let geo = self.geo.map(Geo::into_config).transpose()?;
        let monitors = self
            .monitor
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_config(i))
            .collect::<Result<_, _>>()?;
        let pools = self
            .pool
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_config(i))
            .collect::<Result<_, _>>()?;
        let load_balancers = self
            .load_balancer
            .into_iter()
            .enumerate()
            .map(|(i, lb)| lb.into_config(i))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            node: self.node,
            monitors,
            pools,
            load_balancers,
            apps: self.app,
            mesh: self.mesh,
            geo,
            dns: self.dns,
            anycast: self.anycast,
        })
    }
}

impl Geo {
    fn into_config(self) -> Result<GeoConfig, Finding> {
        let mut regions = RegionTable::builtin();
        for (k, r) in &self.regions {
            regions.set_override(k, *r).map_err(|e| {
                Finding::new(
                    vec![key("geo"), key("regions")],
                    "[geo]".into(),
                    "regions",
                    e,
                )
            })?;
        }
        let overrides = self
            .overrides
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                let target =
                    OverrideTarget::parse(o.country.as_deref(), o.subdivision.as_deref(), o.region)
                        .map_err(|e| {
                            Finding::new(
                                vec![key("geo"), key("override"), Seg::Index(i)],
                                format!("[[geo.override]] {}", o.cidr),
                                "country/subdivision/region",
                                e,
                            )
                        })?;
                Ok(GeoOverride {
                    cidr: o.cidr,
                    target,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(GeoConfig {
            database: self.database,
            regions,
            overrides,
        })
    }
}

impl Monitor {
    fn into_config(self, i: usize) -> Result<MonitorConfig, Finding> {
        let expected_codes = match self.expected_codes {
            Some(text) => Some(ExpectedCodes::parse(&text).map_err(|e| {
                Finding::new(
                    vec![key("monitor"), Seg::Index(i), key("expected_codes")],
                    format!("monitor {:?}", self.name),
                    "expected_codes",
                    e,
                )
            })?),
            None => None,
        };
        Ok(MonitorConfig {
            name: self.name,
            kind: self.kind,
            port: self.port,
            interval: self.interval,
            timeout: self.timeout,
            retries: self.retries,
            consecutive_up: self.consecutive_up,
            consecutive_down: self.consecutive_down,
            passive_failures: self.passive_failures,
            passive_window: self.passive_window,
            method: self.method,
            path: self.path,
            expected_codes,
            expected_body: self.expected_body,
            headers: self.headers,
            allow_insecure: self.allow_insecure,
            proxy_protocol: self.proxy_protocol,
        })
    }
}

impl Pool {
    fn into_config(self, i: usize) -> Result<PoolConfig, Finding> {
        let origins = self
            .origins
            .into_iter()
            .enumerate()
            .map(|(j, o)| {
                let address = OriginAddr::parse(&o.address).map_err(|e| {
                    Finding::new(
                        vec![
                            key("pool"),
                            Seg::Index(i),
                            key("origins"),
                            Seg::Index(j),
                            key("address"),
                        ],
                        format!("pool {:?}", self.name),
                        &format!("origins[{j}].address"),
                        e,
                    )
                })?;
                Ok(OriginConfig {
                    name: o.name,
                    address,
                    weight: o.weight,
                    enabled: o.enabled,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PoolConfig {
            name: self.name,
            monitor: self.monitor,
            origins,
            minimum_origins: self.minimum_origins,
            origin_steering: self.origin_steering,
            latitude: self.latitude,
            longitude: self.longitude,
            check_regions: self.check_regions,
        })
    }
}

impl LoadBalancer {
    fn into_config(self, i: usize) -> Result<LoadBalancerConfig, Finding> {
        let fail = |field: &str, message: String| {
            Finding::new(
                vec![key("load_balancer"), Seg::Index(i), key(field)],
                format!("load_balancer {:?}", self.name),
                field,
                message,
            )
        };
        let relay = match self.relay.as_deref() {
            None => RelayPolicy::default(),
            Some(v) => RelayPolicy::parse(v).ok_or_else(|| {
                fail(
                    "relay",
                    format!("{v:?} is not a relay policy; use \"off\", \"failover\" (the default) or \"fastest\""),
                )
            })?,
        };
        let region_pools = self
            .region_pools
            .into_iter()
            .map(|(k, pools)| match k.parse::<Region>() {
                Ok(region) => Ok((region, pools)),
                Err(e) => Err(fail("region_pools", e.to_string())),
            })
            .collect::<Result<_, _>>()?;
        let country_pools = self
            .country_pools
            .into_iter()
            .map(|(k, pools)| match CountryCode::parse_key(&k) {
                Ok(country) => Ok((country, pools)),
                Err(e) => Err(fail("country_pools", e)),
            })
            .collect::<Result<_, _>>()?;
        Ok(LoadBalancerConfig {
            name: self.name,
            steering: self.steering,
            default_pools: self.default_pools,
            fallback_pool: self.fallback_pool,
            region_pools,
            country_pools,
            node_pools: self.node_pools,
            pool_weights: self.pool_weights,
            session_affinity: self.session_affinity,
            affinity_ttl: self.affinity_ttl,
            vantage: self.vantage,
            relay,
        })
    }
}
