//! The 13 region codes of Cloudflare Load Balancing, so that operators moving from Cloudflare
//! write the same codes in Switchyard's config.

use std::fmt;
use std::str::FromStr;

/// A load-balancing region, as Cloudflare names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// Western North America
    Wnam,
    /// Eastern North America
    Enam,
    /// Western Europe
    Weu,
    /// Eastern Europe
    Eeu,
    /// Northern South America
    Nsam,
    /// Southern South America
    Ssam,
    /// Oceania
    Oc,
    /// Middle East
    Me,
    /// Northern Africa
    Naf,
    /// Southern Africa
    Saf,
    /// Southern Asia
    Sas,
    /// South East Asia
    Seas,
    /// North East Asia
    Neas,
}

/// Each region's rough centre, (latitude, longitude), by [`Region::index`].
const CENTRES: [(f64, f64); 13] = [
    (40.0, -115.0), // WNAM
    (40.0, -78.0),  // ENAM
    (48.0, 4.0),    // WEU
    (52.0, 25.0),   // EEU
    (5.0, -70.0),   // NSAM
    (-25.0, -58.0), // SSAM
    (-28.0, 140.0), // OC
    (27.0, 47.0),   // ME
    (28.0, 10.0),   // NAF
    (-20.0, 25.0),  // SAF
    (22.0, 78.0),   // SAS
    (5.0, 108.0),   // SEAS
    (36.0, 125.0),  // NEAS
];

impl Region {
    /// Every region, in Cloudflare's documented order.
    pub const ALL: [Region; 13] = [
        Region::Wnam,
        Region::Enam,
        Region::Weu,
        Region::Eeu,
        Region::Nsam,
        Region::Ssam,
        Region::Oc,
        Region::Me,
        Region::Naf,
        Region::Saf,
        Region::Sas,
        Region::Seas,
        Region::Neas,
    ];

    /// The region's rough centre, (latitude, longitude) in degrees: for a distance between
    /// regions when nothing was measured.
    pub const fn centre(self) -> (f64, f64) {
        CENTRES[self.index()]
    }

    /// Round trip through fibre over the great-circle distance between two regions'
    /// centres, about 1 ms per 100 km (light in fibre, on a path somewhat longer than the
    /// great circle), in ms: a rough but deterministic figure.
    pub fn fibre_rtt_ms(self, other: Region) -> u32 {
        let (lat1, lon1) = self.centre();
        let (lat2, lon2) = other.centre();
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let dp = p2 - p1;
        let dl = (lon2 - lon1).to_radians();
        let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        let km = 2.0 * 6371.0 * h.sqrt().min(1.0).asin();
        (km / 100.0).round() as u32
    }

    /// The position in `ALL`, for tables indexed by region.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The code as written in config and status, e.g. `WNAM`.
    pub fn code(self) -> &'static str {
        match self {
            Region::Wnam => "WNAM",
            Region::Enam => "ENAM",
            Region::Weu => "WEU",
            Region::Eeu => "EEU",
            Region::Nsam => "NSAM",
            Region::Ssam => "SSAM",
            Region::Oc => "OC",
            Region::Me => "ME",
            Region::Naf => "NAF",
            Region::Saf => "SAF",
            Region::Sas => "SAS",
            Region::Seas => "SEAS",
            Region::Neas => "NEAS",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A region code that is not one of the 13.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {0:?}: use one of WNAM ENAM WEU EEU NSAM SSAM OC ME NAF SAF SAS SEAS NEAS")]
pub struct UnknownRegion(pub String);

impl FromStr for Region {
    type Err = UnknownRegion;

    /// Accepts the code in any case, since operators type `weu` as often as `WEU`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::ALL
            .into_iter()
            .find(|r| r.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownRegion(s.to_string()))
    }
}

impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for r in Region::ALL {
            assert_eq!(r.code().parse::<Region>(), Ok(r));
            assert_eq!(r.code().to_lowercase().parse::<Region>(), Ok(r));
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, r) in Region::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn unknown_code_lists_the_valid_ones() {
        let err = "EU".parse::<Region>().unwrap_err().to_string();
        assert!(err.contains("\"EU\"") && err.contains("WEU"), "{err}");
    }
}
