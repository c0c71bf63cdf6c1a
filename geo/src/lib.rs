//! Switchyard geo: where clients are. Today it holds the region codes that every other crate
//! speaks (Cloudflare's 13 load-balancing regions); GeoIP lookups and the country-to-region
//! table arrive with the geo work.

mod region;

pub use region::{Region, UnknownRegion};
