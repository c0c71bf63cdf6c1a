//! Validation of what holds across values and objects: names unique and well formed,
//! ranges, and every reference (monitor, pool, load balancer) naming an object that exists.
//! Each value was parsed when the file was read; this only relates them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_gossip::{table, NodeId};

use super::{Config, Seg, SteeringPolicy};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const FIVE_MIN: Duration = Duration::from_secs(300);

/// The range of every duration in the file, inclusive. Outside it a running node breaks (a
/// zero period panics a timer; a duration past what the clock can add panics every task that
/// adds it), busy-loops, or waits so long that the setting means nothing. README's
/// configuration reference lists the same ranges.
pub(super) mod range {
    use super::*;
    pub const DRAIN_TIMEOUT: (Duration, Duration) = (Duration::ZERO, DAY);
    pub const PROBE_PERIOD: (Duration, Duration) = (Duration::from_millis(100), FIVE_MIN);
    /// And below the probe period.
    pub const PROBE_TIMEOUT: (Duration, Duration) = (Duration::from_millis(10), FIVE_MIN);
    pub const SUSPECT_TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), HOUR);
    pub const ANNOUNCE_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), HOUR);
    pub const ANTI_ENTROPY_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), HOUR);
    pub const MONITOR_INTERVAL: (Duration, Duration) = (Duration::from_millis(10), DAY);
    /// And at most the monitor's interval.
    pub const MONITOR_TIMEOUT: (Duration, Duration) = (MS, DAY);
    pub const AFFINITY_TTL: (Duration, Duration) = (SEC, Duration::from_secs(7 * 86_400));
    pub const CONNECT_TIMEOUT: (Duration, Duration) = (MS, Duration::from_secs(600));
    pub const IDLE_TIMEOUT: (Duration, Duration) = (SEC, Duration::from_secs(7 * 86_400));
    pub const DNS_TTL: (Duration, Duration) = (SEC, DAY);
}

/// Most addresses one A or AAAA answer carries (`[dns] answers`): 8 AAAA records and the
/// rest of an answer fit well within the 1232 bytes a UDP answer may take.
pub const MAX_DNS_ANSWERS: usize = 8;

/// `Err(message)` when `d` is outside `(min, max)`.
fn within(d: Duration, (min, max): (Duration, Duration)) -> Result<(), String> {
    if d < min || d > max {
        let f = humantime::format_duration;
        Err(format!(
            "{} is out of range: it must be {} to {}",
            f(d),
            if min.is_zero() {
                "0s".into()
            } else {
                f(min).to_string()
            },
            f(max)
        ))
    } else {
        Ok(())
    }
}

/// A mistake found before it is placed in the file: the path to the value at fault (to
/// find its line), the object and the field.
#[derive(Debug)]
pub(super) struct Finding {
    pub path: Vec<Seg>,
    pub object: String,
    pub field: String,
    pub message: String,
}

impl Finding {
    pub fn new(path: Vec<Seg>, object: String, field: &str, message: String) -> Finding {
        Finding {
            path,
            object,
            field: field.to_string(),
            message,
        }
    }
}

pub(super) fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

impl Config {
    /// Checks what holds between values and objects (names, ranges, references), which the
    /// parsing of each value cannot.
    pub(super) fn validate_findings(&self) -> Result<(), Finding> {
        let fail = Finding::new;

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

        within(n.drain_timeout, range::DRAIN_TIMEOUT).map_err(|e| {
            fail(
                vec![key("node"), key("drain_timeout")],
                "[node]".into(),
                "drain_timeout",
                e,
            )
        })?;

        self.check_public_addresses()?;

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
            for (field, value, range) in [
                ("probe_period", mesh.probe_period, range::PROBE_PERIOD),
                ("probe_timeout", mesh.probe_timeout, range::PROBE_TIMEOUT),
                (
                    "suspect_timeout",
                    mesh.suspect_timeout,
                    range::SUSPECT_TIMEOUT,
                ),
                (
                    "announce_interval",
                    mesh.announce_interval,
                    range::ANNOUNCE_INTERVAL,
                ),
                (
                    "anti_entropy_interval",
                    mesh.anti_entropy_interval,
                    range::ANTI_ENTROPY_INTERVAL,
                ),
            ] {
                if let Some(d) = value {
                    within(d, range).map_err(|e| fail(at(field), "[mesh]".into(), field, e))?;
                }
            }
            // SWIM waits for a probe's answer within the period; with the profile's values
            // for whichever of the two is not set.
            let t = mesh.timings();
            if t.probe_rtt >= t.probe_period {
                let field = if mesh.probe_timeout.is_some() {
                    "probe_timeout"
                } else {
                    "probe_period"
                };
                return Err(fail(
                    at(field),
                    "[mesh]".into(),
                    field,
                    format!(
                        "probe_timeout ({}) must be below probe_period ({}){}",
                        humantime::format_duration(t.probe_rtt),
                        humantime::format_duration(t.probe_period),
                        if mesh.probe_timeout.is_none() || mesh.probe_period.is_none() {
                            " (the profile's value for the one not set)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }

        let mut monitors = HashSet::new();
        for (i, m) in self.monitors.iter().enumerate() {
            let obj = format!("monitor {:?}", m.name);
            let at = |f: &str| vec![key("monitor"), Seg::Index(i), key(f)];
            check_name(&m.name, &mut monitors, "monitor", at("name"), &obj)?;
            if let Err(e) = within(m.interval, range::MONITOR_INTERVAL) {
                return Err(fail(at("interval"), obj, "interval", e));
            }
            if m.timeout < range::MONITOR_TIMEOUT.0 || m.timeout > m.interval {
                return Err(fail(
                    at("timeout"),
                    obj,
                    "timeout",
                    format!(
                        "{} must be at least 1ms and at most the interval ({})",
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
            if !(1..=100).contains(&m.passive_failures) {
                return Err(fail(
                    at("passive_failures"),
                    obj,
                    "passive_failures",
                    "must be 1 to 100".into(),
                ));
            }
            if m.passive_window < Duration::from_secs(1)
                || m.passive_window > Duration::from_secs(3600)
            {
                return Err(fail(
                    at("passive_window"),
                    obj,
                    "passive_window",
                    format!(
                        "{} must be 1s to 1h",
                        humantime::format_duration(m.passive_window)
                    ),
                ));
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
            if let Err(e) = within(lb.affinity_ttl, range::AFFINITY_TTL) {
                return Err(fail(at("affinity_ttl"), obj, "affinity_ttl", e));
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
                for p in list {
                    pool_ref(&format!("region_pools.{region}"), at("region_pools"), p)?;
                }
            }
            for (country, list) in &lb.country_pools {
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
        let mut hostnames: Vec<(&str, &str)> = Vec::new();
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
            for (field, value, range) in [
                ("connect_timeout", a.connect_timeout, range::CONNECT_TIMEOUT),
                ("idle_timeout", a.idle_timeout, range::IDLE_TIMEOUT),
            ] {
                if let Err(e) = within(value, range) {
                    return Err(fail(at(field), obj, field, e));
                }
            }
            if a.max_connections == Some(0) {
                return Err(fail(
                    at("max_connections"),
                    obj,
                    "max_connections",
                    "must be at least 1; leave it out for no limit".into(),
                ));
            }
            if let Some(h) = &a.hostname {
                if let Err(e) = dns_label(h) {
                    return Err(fail(at("hostname"), obj, "hostname", e));
                }
                if let Some((_, other)) = hostnames.iter().find(|(n, _)| n == h) {
                    return Err(fail(
                        at("hostname"),
                        obj,
                        "hostname",
                        format!("{h:?} is also the hostname of app {other:?}; each name is served for one app"),
                    ));
                }
                if hostnames.len() == table::MAX_ADVERT_NAMES {
                    return Err(fail(
                        at("hostname"),
                        obj,
                        "hostname",
                        format!(
                            "at most {} apps may have a hostname (what peers accept of one node)",
                            table::MAX_ADVERT_NAMES
                        ),
                    ));
                }
                hostnames.push((h, &a.name));
            }
        }
        self.check_dns()?;
        if self.mesh.is_some() {
            self.rows_within_what_peers_accept()?;
        }
        Ok(())
    }

    /// `[node] public_addresses`: what the mesh's DNS answers with, so each must be an address
    /// a client can connect to, once, and few enough for peers to accept.
    fn check_public_addresses(&self) -> Result<(), Finding> {
        let addrs = &self.node.public_addresses;
        let at = || vec![key("node"), key("public_addresses")];
        let fail = |message: String| {
            Err(Finding::new(
                at(),
                "[node]".into(),
                "public_addresses",
                message,
            ))
        };
        if addrs.len() > table::MAX_ADVERT_ADDRESSES {
            return fail(format!(
                "{} addresses: at most {} (what peers accept of one node)",
                addrs.len(),
                table::MAX_ADVERT_ADDRESSES
            ));
        }
        for (i, a) in addrs.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return fail(format!(
                    "{a} is not an address a client can connect to; list this node's public addresses"
                ));
            }
            if addrs[..i].contains(a) {
                return fail(format!("{a} is listed twice"));
            }
        }
        Ok(())
    }

    /// `[dns]`: a zone that is a domain name, a TTL and answer count in range, and the
    /// public addresses its nameserver records need.
    fn check_dns(&self) -> Result<(), Finding> {
        let Some(dns) = &self.dns else {
            return Ok(());
        };
        let at = |f: &str| vec![key("dns"), key(f)];
        let fail = |f: &str, message: String| Err(Finding::new(at(f), "[dns]".into(), f, message));
        let zone = dns.zone_name();
        if zone.is_empty() || zone.len() > 200 {
            return fail(
                "zone",
                format!(
                    "{:?} must be a domain name of 1 to 200 characters, such as \"lb.example.com\"",
                    dns.zone
                ),
            );
        }
        for label in zone.split('.') {
            if let Err(e) = dns_label(label) {
                return fail("zone", format!("{:?}: {e}", dns.zone));
            }
        }
        if let Err(e) = within(dns.ttl, range::DNS_TTL) {
            return fail("ttl", e);
        }
        if dns.answers == 0 || dns.answers > MAX_DNS_ANSWERS {
            return fail(
                "answers",
                format!("{} must be 1 to {MAX_DNS_ANSWERS}", dns.answers),
            );
        }
        if self.node.public_addresses.is_empty() {
            return Err(Finding::new(
                vec![key("node")],
                "[node]".into(),
                "public_addresses",
                "[dns] needs this node's public addresses: its nameserver record points at them; \
                 set [node] public_addresses = [\"203.0.113.5\"]"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The health rows this node would gossip (one per monitored origin of a pool probed from
    /// its region) must fit what peers accept of one writer: beyond, they would refuse all of
    /// them, and the node would speak for nothing.
    fn rows_within_what_peers_accept(&self) -> Result<(), Finding> {
        let region = self.node.region;
        let (mut rows, mut bytes) = (0usize, 0usize);
        for p in self.pools.iter().filter(|p| {
            p.monitor.is_some() && (p.check_regions.is_empty() || p.check_regions.contains(&region))
        }) {
            rows += p.origins.len();
            bytes += p
                .origins
                .iter()
                .map(|o| table::local_row_cost(&p.name, &o.name))
                .sum::<usize>();
        }
        if rows > table::MAX_WRITER_ROWS || bytes > table::MAX_WRITER_BYTES {
            return Err(Finding::new(
                vec![key("pool")],
                "[[pool]]".into(),
                "origins",
                format!(
                    "this node would gossip {rows} health rows (up to {} KiB) but peers accept at most {} rows and {} KiB of one node; \
                     monitor fewer origins from region {region} (a pool's check_regions) or split the pools over more nodes",
                    bytes / 1024,
                    table::MAX_WRITER_ROWS,
                    table::MAX_WRITER_BYTES / 1024,
                ),
            ));
        }
        Ok(())
    }
}

/// One DNS label as this node serves it: 1-63 lower-case letters, digits and '-', not at
/// either end.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label: use 1-63 lower-case letters, digits or '-' (not first or last)"
        ))
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
