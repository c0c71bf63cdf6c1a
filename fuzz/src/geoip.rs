//! Targets `geoip` and `geoip_csv`: the files behind `[geo] database`. `geoip` opens bytes
//! as a MaxMind database (`GeoDb::from_bytes`, which validates and probes it as
//! `GeoDb::open` does) and looks addresses up in it; every answer found must hold what
//! `GeoAnswer` promises (upper-case codes, a subdivision only with a country, coordinates
//! finite and in range). `geoip_csv` builds a database from CSV as `switchyard geoip build`
//! does, and what it builds must open and answer.

use std::net::IpAddr;

use switchyard_geo::geoip::{build_bytes, GeoAnswer, GeoDb};

/// Addresses looked up in every database that opens: both families, the edges of the
/// address space, IPv4-mapped IPv6, and addresses the seeds place.
const ADDRESSES: &[&str] = &[
    "0.0.0.0",
    "1.2.3.4",
    "10.1.2.3",
    "81.2.69.160",
    "192.0.2.1",
    "203.0.113.7",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:81.2.69.160",
    "2001:db8::1",
    "2a02:8100::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

pub fn run(data: &[u8]) {
    if let Ok(db) = GeoDb::from_bytes(data.to_vec(), "fuzz.mmdb") {
        look_up_everything(&db);
    }
}

pub fn run_csv(data: &[u8]) {
    let Ok(csv) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(bytes) = build_bytes(csv) else {
        return;
    };
    match GeoDb::from_bytes(bytes, "built.mmdb") {
        Ok(db) => look_up_everything(&db),
        Err(e) => panic!("a database geoip build made does not open: {e}"),
    }
}

fn look_up_everything(db: &GeoDb) {
    let _ = (db.layout().name(), db.database_type(), db.build_epoch());
    for a in ADDRESSES {
        let ip: IpAddr = a.parse().expect("an IP");
        if let Ok(Some(answer)) = db.lookup(ip) {
            holds_its_promises(&answer);
        }
    }
}

fn holds_its_promises(a: &GeoAnswer) {
    if let Some(country) = a.country {
        assert!(
            country.iter().all(u8::is_ascii_uppercase),
            "country {country:?}"
        );
        assert_eq!(a.country_str().map(str::len), Some(2));
    }
    if let Some(sub) = a.subdivision {
        assert!(a.country.is_some(), "a subdivision without a country");
        let len = sub.iter().position(|&b| b == 0).unwrap_or(sub.len());
        assert!(len >= 1, "empty subdivision");
        assert!(
            sub[..len]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            "subdivision {sub:?}"
        );
        assert!(sub[len..].iter().all(|&b| b == 0), "subdivision {sub:?}");
    }
    if let Some((lat, lon)) = a.location {
        assert!(
            lat.is_finite() && (-90.0..=90.0).contains(&lat),
            "latitude {lat}"
        );
        assert!(
            lon.is_finite() && (-180.0..=180.0).contains(&lon),
            "longitude {lon}"
        );
    }
}
