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
