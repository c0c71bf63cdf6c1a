//! The small values a config file is made of (listen and origin addresses, expected status
//! codes, country codes, override targets, address rules, quorums, durations), each parsed
//! from its text once, when the file is read, so that nothing downstream parses it again.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use switchyard_geo::Region;

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

/// Expected HTTP status codes, Cloudflare style: "200", "2xx", "200,301",
/// "200-299", "2xx,404".
///
/// Stored as sorted, merged inclusive ranges, so two spellings of the same
/// set ("2xx" and "200-299") compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCodes {
    ranges: Vec<(u16, u16)>,
}

impl ExpectedCodes {
    const MIN: u16 = 100;
    const MAX: u16 = 599;

    /// Parses a comma-separated list of codes ("200"), classes ("2xx") and
    /// inclusive ranges ("200-299"). Errors name the offending part.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("expected codes: empty list".to_string());
        }
        let mut ranges = Vec::new();
        for raw in s.split(',') {
            let part = raw.trim();
            ranges.push(Self::parse_part(part).map_err(|why| {
                if part.is_empty() {
                    format!("expected codes {s:?}: empty entry")
                } else {
                    format!("expected codes: bad entry {part:?}: {why}")
                }
            })?);
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(Self { ranges: merged })
    }

    fn parse_part(part: &str) -> Result<(u16, u16), String> {
        if part.is_empty() {
            return Err("empty".to_string());
        }
        if let Some((lo, hi)) = part.split_once('-') {
            let lo = Self::parse_code(lo.trim())?;
            let hi = Self::parse_code(hi.trim())?;
            if lo > hi {
                return Err(format!("range start {lo} is above its end {hi}"));
            }
            return Ok((lo, hi));
        }
        let bytes = part.as_bytes();
        if bytes.len() == 3 && bytes[1..].eq_ignore_ascii_case(b"xx") {
            let class = match bytes[0] {
                d @ b'1'..=b'5' => u16::from(d - b'0'),
                _ => return Err("status class must be 1xx to 5xx".to_string()),
            };
            return Ok((class * 100, class * 100 + 99));
        }
        let code = Self::parse_code(part)?;
        Ok((code, code))
    }

    fn parse_code(s: &str) -> Result<u16, String> {
        // Only plain digits: u16::from_str would also take "+200".
        if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{s:?} is not a 3-digit status code, class (2xx) or range (200-299)"
            ));
        }
        let code: u16 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(Self::MIN..=Self::MAX).contains(&code) {
            return Err(format!(
                "status {code} is outside {}-{}",
                Self::MIN,
                Self::MAX
            ));
        }
        Ok(code)
    }

    /// Whether `code` is one of the expected codes.
    pub fn matches(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl Default for ExpectedCodes {
    /// "2xx", Cloudflare's default.
    fn default() -> Self {
        Self {
            ranges: vec![(200, 299)],
        }
    }
}

impl FromStr for ExpectedCodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Canonical form: the same set always prints the same way, and the output
/// parses back to an equal value.
impl fmt::Display for ExpectedCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else if lo % 100 == 0 && hi == lo + 99 {
                write!(f, "{}xx", lo / 100)?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// An ISO 3166-1 alpha-2 country code, upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// A `country_pools` key: two upper-case ASCII letters, as a GeoIP database reports them.
    /// The code need not be assigned, so a pool list can wait for a code the table lacks.
    pub fn parse_key(s: &str) -> Result<Self, String> {
        match s.as_bytes() {
            &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(CountryCode([a, b])),
            _ => Err(format!(
                "{s:?} is not an ISO 3166-1 alpha-2 code such as \"DE\""
            )),
        }
    }

    /// A country an operator places clients in: an assigned code, in any case, since a typo
    /// here would send clients to a country no database reports.
    pub fn parse_assigned(s: &str) -> Result<Self, String> {
        let up = s.to_ascii_uppercase();
        match up.as_bytes() {
            &[a, b]
                if switchyard_geo::COUNTRIES
                    .binary_search(&up.as_str())
                    .is_ok() =>
            {
                Ok(CountryCode([a, b]))
            }
            _ => Err(format!(
                "{s:?} is not an ISO 3166-1 alpha-2 country code such as \"DE\""
            )),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 2] {
        &self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.0[0]), char::from(self.0[1]))
    }
}

/// Where a `[[geo.override]]` places its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideTarget {
    Country(CountryCode),
    /// The country and the ISO 3166-2 suffix, upper-case ("US", "CA").
    Subdivision(CountryCode, String),
    Region(Region),
}

impl OverrideTarget {
    /// From the override's three optional fields, of which exactly one must be set.
    pub fn parse(
        country: Option<&str>,
        subdivision: Option<&str>,
        region: Option<Region>,
    ) -> Result<Self, String> {
        match (country, subdivision, region) {
            (Some(c), None, None) => Ok(OverrideTarget::Country(CountryCode::parse_assigned(c)?)),
            (None, Some(s), None) => {
                let bad = || format!("{s:?} is not an ISO 3166-2 subdivision such as \"US-CA\"");
                let (c, sub) = s.split_once('-').ok_or_else(bad)?;
                if sub.is_empty()
                    || sub.len() > 3
                    || !sub.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(bad());
                }
                Ok(OverrideTarget::Subdivision(
                    CountryCode::parse_assigned(c)?,
                    sub.to_ascii_uppercase(),
                ))
            }
            (None, None, Some(r)) => Ok(OverrideTarget::Region(r)),
            _ => Err("set exactly one of country, subdivision or region".into()),
        }
    }
}

/// Durations are whole seconds (as in Cloudflare's API) or strings such as `"500ms"`, `"2m"`.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Negative(i64),
        Fraction(f64),
        Text(String),
    }
    let hint = "write seconds as a whole number or a string like \"500ms\", \"10s\", \"1m\"";
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Negative(s) => Err(serde::de::Error::custom(format!(
            "{s} is not a duration: it is negative; {hint}"
        ))),
        Raw::Fraction(f) => Err(serde::de::Error::custom(format!(
            "{f} is not a duration: {hint}"
        ))),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!("{t:?} is not a duration ({e}); {hint}"))
        }),
    }
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A CIDR block, or an IP address as the block of just that address.
fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("{s:?} is not a CIDR block or an IP address (e.g. 10.0.0.0/8, 2001:db8::/32)")
        })
}

pub(super) fn de_net<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
    parse_net(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

pub(super) fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_net(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn expected_codes_match_table() {
        let table: &[(&str, &[u16], &[u16])] = &[
            ("200", &[200], &[199, 201, 204, 500]),
            ("2xx", &[200, 204, 299], &[199, 300, 404]),
            ("2XX", &[250], &[300]),
            ("200,301", &[200, 301], &[201, 302, 300]),
            ("200-299", &[200, 250, 299], &[199, 300]),
            ("2xx,404", &[200, 299, 404], &[403, 405, 301]),
            (" 200 , 3xx ", &[200, 302], &[201, 404]),
            ("100-599", &[100, 599], &[99, 600]),
            ("301-302,5xx", &[301, 302, 503], &[300, 303, 404]),
        ];
        for &(text, yes, no) in table {
            let codes = ExpectedCodes::parse(text).unwrap();
            for &code in yes {
                assert!(codes.matches(code), "{text:?} should match {code}");
            }
            for &code in no {
                assert!(!codes.matches(code), "{text:?} should not match {code}");
            }
        }
    }

    #[test]
    fn expected_codes_default_is_2xx() {
        let codes = ExpectedCodes::default();
        assert_eq!(codes, ExpectedCodes::parse("2xx").unwrap());
        assert!(codes.matches(200) && codes.matches(299) && !codes.matches(301));
    }

    #[test]
    fn expected_codes_errors_name_the_bad_part() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("200,,301", "empty entry"),
            ("2yx", "\"2yx\""),
            ("6xx", "\"6xx\""),
            ("0xx", "\"0xx\""),
            ("20", "\"20\""),
            ("2000", "\"2000\""),
            ("+200", "\"+200\""),
            ("abc", "\"abc\""),
            ("200,abc", "\"abc\""),
            ("299-200", "\"299-200\""),
            ("200-", "\"200-\""),
            ("099", "\"099\""),
            ("600", "\"600\""),
        ];
        for &(text, needle) in table {
            let err = ExpectedCodes::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn expected_codes_canonical_form_round_trips() {
        let table = [
            ("200-299", "2xx"),
            ("2xx,404", "2xx,404"),
            ("301,200", "200,301"),
            ("200,201,202", "200-202"),
            ("2xx,3xx", "200-399"),
            ("2xx,250", "2xx"),
            ("404-404", "404"),
        ];
        for (text, canonical) in table {
            let codes: ExpectedCodes = text.parse().unwrap();
            assert_eq!(codes.to_string(), canonical, "{text:?}");
            assert_eq!(ExpectedCodes::parse(canonical).unwrap(), codes);
        }
    }

    #[test]
    fn country_codes() {
        let de = CountryCode::parse_key("DE").unwrap();
        assert_eq!((de.to_string(), de.as_bytes()), ("DE".to_string(), b"DE"));
        // A pool list may name a code the table does not know yet; an override may not.
        assert!(CountryCode::parse_key("ZZ").is_ok());
        assert!(CountryCode::parse_assigned("ZZ").is_err());
        assert_eq!(CountryCode::parse_assigned("de").unwrap(), de);
        for bad in ["de", "D", "DEU", "D1", "", "ÄÖ"] {
            assert!(CountryCode::parse_key(bad).is_err(), "{bad:?}");
        }
        for bad in ["D", "DEU", "", "ÄÖ"] {
            assert!(CountryCode::parse_assigned(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn override_targets() {
        let us = CountryCode::parse_key("US").unwrap();
        let ok = [
            ((Some("us"), None, None), OverrideTarget::Country(us)),
            (
                (None, Some("us-tx"), None),
                OverrideTarget::Subdivision(us, "TX".into()),
            ),
            (
                (None, None, Some(Region::Weu)),
                OverrideTarget::Region(Region::Weu),
            ),
        ];
        for ((c, s, r), want) in ok {
            assert_eq!(OverrideTarget::parse(c, s, r).unwrap(), want);
        }
        let bad = [
            ((None, None, None), "exactly one"),
            ((Some("DE"), None, Some(Region::Weu)), "exactly one"),
            ((Some("XX"), None, None), "\"XX\" is not an ISO 3166-1"),
            ((None, Some("USCA"), None), "\"USCA\" is not an ISO 3166-2"),
            ((None, Some("US-"), None), "\"US-\" is not an ISO 3166-2"),
            ((None, Some("US-ABCD"), None), "\"US-ABCD\""),
            ((None, Some("XX-CA"), None), "\"XX\" is not an ISO 3166-1"),
        ];
        for ((c, s, r), want) in bad {
            let e = OverrideTarget::parse(c, s, r).unwrap_err();
            assert!(e.contains(want), "want {want:?} in: {e}");
        }
    }
}
