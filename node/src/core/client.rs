//! Where a client is, as steering and explain see it: the region, country and location that
//! GeoIP (or an operator's override) gave, and where that answer came from. Plain data; the
//! lookups themselves are the `locate` shell's.

use ipnet::IpNet;
use switchyard_geo::Region;

/// Where a client is, from GeoIP (or not).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientGeo {
    pub region: Option<Region>,
    /// ISO 3166-1 alpha-2, upper-case.
    pub country: Option<[u8; 2]>,
    /// Latitude, longitude.
    pub location: Option<(f64, f64)>,
}

/// Where an answer came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A `[[geo.override]]` entry.
    Override(IpNet),
    Database,
    /// Loopback, private, CGNAT, link-local or documentation address that no database or
    /// override covers: public databases must not be asked about these.
    Special,
    NotFound,
    /// No database configured: every client is taken to be in the node's region.
    NoDatabase,
    /// The database failed for this address (a corrupt file can open and fail per lookup).
    LookupFailed(String),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Override(net) => format!("override {net}"),
            Source::Database => "database".into(),
            Source::Special => "private or special-purpose address, not in any database".into(),
            Source::NotFound => "not in the database".into(),
            Source::NoDatabase => "no [geo] database: the node's own region".into(),
            Source::LookupFailed(e) => format!("lookup failed: {e}"),
        }
    }
}

/// A client's location with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub geo: ClientGeo,
    pub country: Option<String>,
    pub subdivision: Option<String>,
    pub source: Source,
}
