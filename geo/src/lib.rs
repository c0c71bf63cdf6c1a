//! Switchyard geo: where clients are. The region codes every other crate speaks (Cloudflare's
//! 13 load-balancing regions), the country-to-region table, and GeoIP lookups.

#![forbid(unsafe_code)]

pub mod geoip;
mod region;
mod table;

pub use region::{Region, UnknownRegion};
pub use table::{region_of, region_of_country, RegionTable, COUNTRIES};
