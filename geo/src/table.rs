//! Which of the 13 regions a client's country (or US state / Canadian province) belongs to, so
//! that a GeoIP answer can be turned into the region whose pools should serve it.
//!
//! # Source
//!
//! The table follows Cloudflare's own country-to-region mapping, as served by its Load Balancing
//! Regions API (`GET /accounts/{account_id}/load_balancers/regions`), because operators moving
//! from Cloudflare expect a client to land in the same region as before. That response lists
//! only the countries, states and provinces where Cloudflare has data centres, and it puts a few
//! in two regions (Brazil, Germany, Italy, Russia and the US state of Missouri) because their
//! data centres fall on both sides of a line. So:
//!
//! * a country the API lists in one region is mapped exactly as listed, even where that reads
//!   oddly (Austria, the Nordic countries, Greece and Turkey are `EEU`; Bangladesh, Bhutan and
//!   Guam are `SEAS`; Kazakhstan is `SAS`; West Africa and the Horn are `NAF`; Honduras is
//!   `ENAM` while the rest of Central America is `NSAM`);
//! * a country the API splits gets the region holding most of its people and traffic: BR →
//!   `SSAM` (São Paulo, Rio), DE and IT → `WEU` (Frankfurt, Milan), RU → `EEU` (Moscow), and
//!   US-MO → `ENAM` (St. Louis);
//! * everything the API leaves out gets the region of its nearest listed neighbour, or of the
//!   network it reaches the world through, and a comment on its line says which.
//!
//! Cloudflare itself assigns a region per data centre, not per client country, so any country
//! table is an approximation near the borders; operators fix what they disagree with through
//! [`RegionTable::set_override`].
//!
//! Only the US and Canada have subdivisions in the built-in table, as in Cloudflare's. A US or
//! Canadian client whose state or province is unknown gets the country's default, `ENAM`, where
//! most of both countries' people live.

use std::collections::HashMap;

use crate::region::Region;
use crate::region::Region::{Eeu, Enam, Me, Naf, Neas, Nsam, Oc, Saf, Sas, Seas, Ssam, Weu, Wnam};

/// Every officially assigned ISO 3166-1 alpha-2 code and its region, sorted by code. The array
/// length pins the count at 249, and the `const` checks below pin the order, so a typo fails
/// the build rather than a binary search at run time.
const COUNTRY_TABLE: [(&str, Region); 249] = [
    ("AD", Weu),  // Andorra: between Spain and France.
    ("AE", Me),   // United Arab Emirates
    ("AF", Sas),  // Afghanistan: its neighbours Pakistan and Kazakhstan are SAS.
    ("AG", Enam), // Antigua and Barbuda: Caribbean reached through Miami, like Barbados.
    ("AI", Enam), // Anguilla: as Antigua.
    ("AL", Eeu),  // Albania
    ("AM", Me),   // Armenia
    ("AO", Saf),  // Angola
    ("AQ", Oc),   // Antarctica: the largest station, McMurdo, is supplied from New Zealand.
    ("AR", Ssam), // Argentina
    ("AS", Oc),   // American Samoa: next to Samoa; the Pacific islands are OC.
    ("AT", Eeu),  // Austria
    ("AU", Oc),   // Australia
    ("AW", Nsam), // Aruba: off Venezuela, with Curaçao.
    ("AX", Eeu),  // Åland: between Finland and Sweden, both EEU.
    ("AZ", Me),   // Azerbaijan
    ("BA", Eeu),  // Bosnia and Herzegovina: between Croatia and Serbia.
    ("BB", Enam), // Barbados
    ("BD", Seas), // Bangladesh: Cloudflare's choice, not SAS.
    ("BE", Weu),  // Belgium
    ("BF", Naf),  // Burkina Faso
    ("BG", Eeu),  // Bulgaria
    ("BH", Me),   // Bahrain
    ("BI", Saf),  // Burundi: next to Rwanda and Tanzania.
    ("BJ", Naf),  // Benin: West Africa, between Togo and Nigeria.
    ("BL", Enam), // Saint Barthélemy: Leeward Islands, as Antigua.
    ("BM", Enam), // Bermuda: its cables land on the US east coast.
    ("BN", Seas), // Brunei
    ("BO", Ssam), // Bolivia
    ("BQ", Nsam), // Bonaire, Sint Eustatius and Saba: most people live on Bonaire, by Curaçao.
    ("BR", Ssam), // Brazil: split by Cloudflare; São Paulo and Rio are SSAM.
    ("BS", Enam), // Bahamas: off Florida.
    ("BT", Seas), // Bhutan: Cloudflare's choice, not SAS.
    ("BV", Saf),  // Bouvet Island: uninhabited; South Africa is the nearest networked land.
    ("BW", Saf),  // Botswana
    ("BY", Eeu),  // Belarus
    ("BZ", Nsam), // Belize: next to Guatemala, which is NSAM.
    ("CA", Enam), // Canada: default when the province is unknown; see CA_TABLE.
    ("CC", Oc),   // Cocos (Keeling) Islands: Australian territory served from Perth.
    ("CD", Saf),  // Congo (Kinshasa)
    ("CF", Naf),  // Central African Republic: reached through Cameroon (NAF here).
    ("CG", Saf),  // Congo (Brazzaville): across the river from Kinshasa.
    ("CH", Weu),  // Switzerland
    ("CI", Naf),  // Côte d'Ivoire
    ("CK", Oc),   // Cook Islands
    ("CL", Ssam), // Chile
    ("CM", Naf),  // Cameroon: next to Nigeria, which is NAF.
    ("CN", Neas), // China
    ("CO", Nsam), // Colombia
    ("CR", Nsam), // Costa Rica
    ("CU", Enam), // Cuba: off Florida.
    ("CV", Naf),  // Cabo Verde: off Senegal.
    ("CW", Nsam), // Curaçao: off Venezuela.
    ("CX", Oc),   // Christmas Island: Australian territory served from Perth.
    ("CY", Me),   // Cyprus
    ("CZ", Eeu),  // Czechia
    ("DE", Weu),  // Germany: split (Berlin, Hamburg are EEU); most people are WEU.
    ("DJ", Naf),  // Djibouti
    ("DK", Eeu),  // Denmark
    ("DM", Enam), // Dominica: as Antigua.
    ("DO", Enam), // Dominican Republic
    ("DZ", Naf),  // Algeria
    ("EC", Nsam), // Ecuador
    ("EE", Eeu),  // Estonia
    ("EG", Naf),  // Egypt
    ("EH", Naf),  // Western Sahara: next to Morocco.
    ("ER", Naf),  // Eritrea: next to Ethiopia and Djibouti.
    ("ES", Weu),  // Spain
    ("ET", Naf),  // Ethiopia: not listed; with its neighbour Djibouti.
    ("FI", Eeu),  // Finland
    ("FJ", Oc),   // Fiji
    ("FK", Ssam), // Falkland Islands: off Argentina.
    ("FM", Seas), // Micronesia: its cables run to Guam, which is SEAS.
    ("FO", Weu),  // Faroe Islands: cabled to Iceland and Scotland.
    ("FR", Weu),  // France
    ("GA", Saf),  // Gabon: Central Africa south of Cameroon, with the Congos.
    ("GB", Weu),  // United Kingdom
    ("GD", Nsam), // Grenada
    ("GE", Me),   // Georgia
    ("GF", Nsam), // French Guiana: between Suriname and Brazil.
    ("GG", Weu),  // Guernsey
    ("GH", Naf),  // Ghana
    ("GI", Weu),  // Gibraltar
    ("GL", Weu),  // Greenland: reaches Europe through its cable to Iceland.
    ("GM", Naf),  // Gambia: inside Senegal.
    ("GN", Naf),  // Guinea: West Africa.
    ("GP", Enam), // Guadeloupe: as Antigua.
    ("GQ", Naf),  // Equatorial Guinea: by Cameroon.
    ("GR", Eeu),  // Greece
    ("GS", Ssam), // South Georgia and South Sandwich Islands: reached from the Falklands.
    ("GT", Nsam), // Guatemala
    ("GU", Seas), // Guam: Cloudflare's choice, not OC.
    ("GW", Naf),  // Guinea-Bissau: next to Senegal.
    ("GY", Nsam), // Guyana
    ("HK", Neas), // Hong Kong
    ("HM", Oc),   // Heard and McDonald Islands: uninhabited Australian territory.
    ("HN", Enam), // Honduras: Cloudflare's choice, unlike its NSAM neighbours.
    ("HR", Eeu),  // Croatia
    ("HT", Enam), // Haiti: shares an island with the Dominican Republic.
    ("HU", Eeu),  // Hungary
    ("ID", Seas), // Indonesia
    ("IE", Weu),  // Ireland
    ("IL", Me),   // Israel
    ("IM", Weu),  // Isle of Man
    ("IN", Sas),  // India
    ("IO", Sas),  // British Indian Ocean Territory: the Maldives are nearest.
    ("IQ", Me),   // Iraq
    ("IR", Me),   // Iran: between Iraq and the Gulf states.
    ("IS", Weu),  // Iceland
    ("IT", Weu),  // Italy: split (Rome and the south are EEU); Milan and most people are WEU.
    ("JE", Weu),  // Jersey
    ("JM", Enam), // Jamaica
    ("JO", Me),   // Jordan
    ("JP", Neas), // Japan
    ("KE", Saf),  // Kenya
    ("KG", Sas),  // Kyrgyzstan: with Kazakhstan.
    ("KH", Seas), // Cambodia
    ("KI", Oc),   // Kiribati
    ("KM", Saf),  // Comoros: between Mozambique and Madagascar.
    ("KN", Enam), // Saint Kitts and Nevis: as Antigua.
    ("KP", Neas), // North Korea
    ("KR", Neas), // South Korea
    ("KW", Me),   // Kuwait
    ("KY", Enam), // Cayman Islands: as Jamaica.
    ("KZ", Sas),  // Kazakhstan: Cloudflare's choice.
    ("LA", Seas), // Laos
    ("LB", Me),   // Lebanon
    ("LC", Enam), // Saint Lucia: as Barbados, its neighbour.
    ("LI", Weu),  // Liechtenstein: with Switzerland.
    ("LK", Sas),  // Sri Lanka
    ("LR", Naf),  // Liberia: West Africa.
    ("LS", Saf),  // Lesotho: inside South Africa.
    ("LT", Eeu),  // Lithuania
    ("LU", Weu),  // Luxembourg
    ("LV", Eeu),  // Latvia
    ("LY", Naf),  // Libya: between Tunisia and Egypt.
    ("MA", Naf),  // Morocco: next to Algeria.
    ("MC", Weu),  // Monaco: inside France.
    ("MD", Eeu),  // Moldova
    ("ME", Eeu),  // Montenegro: next to Serbia and Albania.
    ("MF", Enam), // Saint Martin: as Antigua.
    ("MG", Saf),  // Madagascar
    ("MH", Seas), // Marshall Islands: cabled to Guam, which is SEAS.
    ("MK", Eeu),  // North Macedonia
    ("ML", Naf),  // Mali: the Sahel, with Senegal and Burkina Faso.
    ("MM", Seas), // Myanmar: next to Thailand.
    ("MN", Neas), // Mongolia
    ("MO", Neas), // Macao
    ("MP", Seas), // Northern Mariana Islands: next to Guam.
    ("MQ", Enam), // Martinique: as Antigua.
    ("MR", Naf),  // Mauritania: next to Senegal.
    ("MS", Enam), // Montserrat: as Antigua.
    ("MT", Weu),  // Malta: not listed; WEU, as other users of the API place it.
    ("MU", Saf),  // Mauritius
    ("MV", Sas),  // Maldives
    ("MW", Saf),  // Malawi: not listed; between Zambia, Tanzania and Mozambique.
    ("MX", Wnam), // Mexico
    ("MY", Seas), // Malaysia
    ("MZ", Saf),  // Mozambique
    ("NA", Saf),  // Namibia
    ("NC", Oc),   // New Caledonia
    ("NE", Naf),  // Niger: the Sahel, next to Nigeria.
    ("NF", Oc),   // Norfolk Island: Australian territory.
    ("NG", Naf),  // Nigeria
    ("NI", Nsam), // Nicaragua: next to Costa Rica.
    ("NL", Weu),  // Netherlands
    ("NO", Eeu),  // Norway
    ("NP", Sas),  // Nepal
    ("NR", Oc),   // Nauru
    ("NU", Oc),   // Niue
    ("NZ", Oc),   // New Zealand
    ("OM", Me),   // Oman
    ("PA", Nsam), // Panama
    ("PE", Nsam), // Peru
    ("PF", Oc),   // French Polynesia
    ("PG", Oc),   // Papua New Guinea: north of Australia.
    ("PH", Seas), // Philippines
    ("PK", Sas),  // Pakistan
    ("PL", Eeu),  // Poland
    ("PM", Enam), // Saint Pierre and Miquelon: off Newfoundland.
    ("PN", Oc),   // Pitcairn
    ("PR", Enam), // Puerto Rico
    ("PS", Me),   // Palestine
    ("PT", Weu),  // Portugal
    ("PW", Seas), // Palau: cabled to Guam, which is SEAS.
    ("PY", Ssam), // Paraguay
    ("QA", Me),   // Qatar
    ("RE", Saf),  // Réunion
    ("RO", Eeu),  // Romania
    ("RS", Eeu),  // Serbia
    ("RU", Eeu),  // Russia: split (Siberia is SAS); Moscow and St Petersburg are EEU.
    ("RW", Saf),  // Rwanda
    ("SA", Me),   // Saudi Arabia
    ("SB", Oc),   // Solomon Islands
    ("SC", Saf),  // Seychelles: off Kenya and Madagascar.
    ("SD", Naf),  // Sudan: next to Egypt.
    ("SE", Eeu),  // Sweden
    ("SG", Seas), // Singapore
    ("SH", Saf),  // Saint Helena: its cable runs on to Namibia and South Africa.
    ("SI", Eeu),  // Slovenia: with its neighbours Croatia, Austria and Hungary.
    ("SJ", Eeu),  // Svalbard and Jan Mayen: Norwegian.
    ("SK", Eeu),  // Slovakia
    ("SL", Naf),  // Sierra Leone: West Africa.
    ("SM", Weu),  // San Marino: inside northern Italy.
    ("SN", Naf),  // Senegal
    ("SO", Naf),  // Somalia: the Horn, with Djibouti and Ethiopia.
    ("SR", Nsam), // Suriname
    ("SS", Saf),  // South Sudan: reached through Uganda and Kenya.
    ("ST", Saf),  // São Tomé and Príncipe: off Gabon.
    ("SV", Nsam), // El Salvador: next to Guatemala.
    ("SX", Enam), // Sint Maarten: as Antigua.
    ("SY", Me),   // Syria
    ("SZ", Saf),  // Eswatini: inside South Africa.
    ("TC", Enam), // Turks and Caicos Islands: as the Bahamas.
    ("TD", Naf),  // Chad: the Sahel, next to Nigeria and Niger.
    ("TF", Saf),  // French Southern Territories: supplied from Réunion.
    ("TG", Naf),  // Togo: West Africa, between Ghana and Benin.
    ("TH", Seas), // Thailand
    ("TJ", Sas),  // Tajikistan: with Kyrgyzstan and Kazakhstan.
    ("TK", Oc),   // Tokelau
    ("TL", Seas), // Timor-Leste: next to Indonesia.
    ("TM", Sas),  // Turkmenistan: with Kazakhstan.
    ("TN", Naf),  // Tunisia
    ("TO", Oc),   // Tonga
    ("TR", Eeu),  // Türkiye
    ("TT", Nsam), // Trinidad and Tobago
    ("TV", Oc),   // Tuvalu
    ("TW", Neas), // Taiwan
    ("TZ", Saf),  // Tanzania
    ("UA", Eeu),  // Ukraine
    ("UG", Saf),  // Uganda
    ("UM", Oc),   // US Minor Outlying Islands: nearly all in the mid-Pacific.
    ("US", Enam), // United States: default when the state is unknown; see US_TABLE.
    ("UY", Ssam), // Uruguay: between Argentina and southern Brazil.
    ("UZ", Sas),  // Uzbekistan: with Kazakhstan.
    ("VA", Eeu),  // Vatican City: inside Rome, which Cloudflare puts in EEU.
    ("VC", Nsam), // St Vincent and the Grenadines: the Grenadines run into Grenada.
    ("VE", Nsam), // Venezuela: next to Colombia.
    ("VG", Enam), // British Virgin Islands: next to Puerto Rico.
    ("VI", Enam), // US Virgin Islands: next to Puerto Rico.
    ("VN", Seas), // Vietnam
    ("VU", Oc),   // Vanuatu
    ("WF", Oc),   // Wallis and Futuna
    ("WS", Oc),   // Samoa
    ("YE", Me),   // Yemen: next to Saudi Arabia and Oman.
    ("YT", Saf),  // Mayotte: in the Comoros.
    ("ZA", Saf),  // South Africa
    ("ZM", Saf),  // Zambia
    ("ZW", Saf),  // Zimbabwe
];

/// US states, DC and outlying areas (ISO 3166-2:US, 57 codes). Cloudflare lists 14 states in
/// WNAM and 17 in ENAM; the rest follow their neighbours.
const US_TABLE: [(&str, Region); 57] = [
    ("AK", Wnam),
    ("AL", Enam),
    ("AR", Enam), // Not listed; Memphis (TN, ENAM) is its nearest large hub.
    ("AS", Oc),   // Outlying areas take the region of their own country code.
    ("AZ", Wnam),
    ("CA", Wnam),
    ("CO", Wnam),
    ("CT", Enam),
    ("DC", Enam),
    ("DE", Enam),
    ("FL", Enam),
    ("GA", Enam),
    ("GU", Seas),
    ("HI", Wnam),
    ("IA", Enam), // Not listed; its neighbours Minnesota and Illinois are ENAM.
    ("ID", Wnam), // Not listed; between Washington, Oregon and Utah.
    ("IL", Enam),
    ("IN", Enam),
    ("KS", Wnam), // Not listed; Kansas City, Nebraska and Oklahoma are WNAM.
    ("KY", Enam),
    ("LA", Enam), // Not listed; Houston (TX) is WNAM, but the Gulf coast east of it is ENAM.
    ("MA", Enam),
    ("MD", Enam),
    ("ME", Enam),
    ("MI", Enam),
    ("MN", Enam),
    ("MO", Enam), // Listed in both: Kansas City is WNAM, St. Louis (the larger) ENAM.
    ("MP", Seas),
    ("MS", Enam),
    ("MT", Wnam), // Not listed; Rocky Mountain state.
    ("NC", Enam),
    ("ND", Enam), // Not listed; its neighbours Minnesota and South Dakota are ENAM.
    ("NE", Wnam),
    ("NH", Enam),
    ("NJ", Enam),
    ("NM", Wnam),
    ("NV", Wnam),
    ("NY", Enam),
    ("OH", Enam),
    ("OK", Wnam),
    ("OR", Wnam),
    ("PA", Enam),
    ("PR", Enam),
    ("RI", Enam),
    ("SC", Enam),
    ("SD", Enam),
    ("TN", Enam),
    ("TX", Wnam),
    ("UM", Oc),
    ("UT", Wnam),
    ("VA", Enam),
    ("VI", Enam),
    ("VT", Enam),
    ("WA", Wnam),
    ("WI", Enam),
    ("WV", Enam),
    ("WY", Wnam), // Not listed; Rocky Mountain state.
];

/// Canadian provinces and territories (ISO 3166-2:CA, 13 codes). Cloudflare lists Alberta and
/// British Columbia in WNAM and Manitoba, Nova Scotia, Ontario, Quebec and Saskatchewan in
/// ENAM.
const CA_TABLE: [(&str, Region); 13] = [
    ("AB", Wnam),
    ("BC", Wnam),
    ("MB", Enam),
    ("NB", Enam), // Not listed; Atlantic province.
    ("NL", Enam), // Not listed; Atlantic province.
    ("NS", Enam),
    ("NT", Wnam), // Not listed; reached through Alberta.
    ("NU", Enam), // Not listed; most Nunavummiut live in the east, linked to Ottawa and Montreal.
    ("ON", Enam),
    ("PE", Enam), // Not listed; Atlantic province.
    ("QC", Enam),
    ("SK", Enam), // Cloudflare's choice, though it borders Alberta.
    ("YT", Wnam), // Not listed; reached through British Columbia.
];

/// Byte-wise `a < b`, usable in `const` context for the order checks below.
const fn less(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

/// True when every key is `len` upper-case letters and the keys strictly increase, which is
/// what the binary searches rely on.
const fn well_formed(table: &[(&str, Region)], len: usize) -> bool {
    let mut i = 0;
    while i < table.len() {
        let key = table[i].0.as_bytes();
        if key.len() != len {
            return false;
        }
        let mut j = 0;
        while j < key.len() {
            if !key[j].is_ascii_uppercase() {
                return false;
            }
            j += 1;
        }
        if i > 0 && !less(table[i - 1].0.as_bytes(), key) {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(well_formed(&COUNTRY_TABLE, 2));
const _: () = assert!(well_formed(&US_TABLE, 2));
const _: () = assert!(well_formed(&CA_TABLE, 2));

/// The codes column of `COUNTRY_TABLE`, built at compile time so the two cannot disagree.
const fn country_codes() -> [&'static str; COUNTRY_TABLE.len()] {
    let mut codes = [""; COUNTRY_TABLE.len()];
    let mut i = 0;
    while i < codes.len() {
        codes[i] = COUNTRY_TABLE[i].0;
        i += 1;
    }
    codes
}

const COUNTRY_CODES: [&str; COUNTRY_TABLE.len()] = country_codes();

/// Every officially assigned ISO 3166-1 alpha-2 code (249 of them), upper case and sorted.
/// Each maps to exactly one region through [`region_of_country`].
pub const COUNTRIES: &[&str] = &COUNTRY_CODES;

/// A country code as two upper-case ASCII letters.
type CountryKey = [u8; 2];

/// An ISO 3166-2 subdivision suffix (one to three letters or digits), upper case and padded
/// with zero bytes, which no suffix contains, so equal suffixes give equal keys.
type SubKey = [u8; 3];

/// The key of a country-wide override.
const NO_SUB: SubKey = [0; 3];

/// Upper-cases a two-letter code into a stack buffer: lookups sit on the connection path and
/// must not allocate.
fn country_key(country: &str) -> Option<CountryKey> {
    match country.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// Upper-cases a subdivision suffix into a stack buffer. Also accepts the full ISO 3166-2 form
/// ("US-CA") when its prefix is `country`, since GeoIP databases and people write both.
fn sub_key(country: CountryKey, subdivision: &str) -> Option<SubKey> {
    let mut bytes = subdivision.as_bytes();
    if let [a, b, b'-', rest @ ..] = bytes {
        if [a.to_ascii_uppercase(), b.to_ascii_uppercase()] == country {
            bytes = rest;
        }
    }
    suffix_key(bytes)
}

/// The strict form of [`sub_key`]: the suffix alone.
fn suffix_key(bytes: &[u8]) -> Option<SubKey> {
    if bytes.is_empty() || bytes.len() > 3 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut key = NO_SUB;
    for (slot, byte) in key.iter_mut().zip(bytes) {
        *slot = byte.to_ascii_uppercase();
    }
    Some(key)
}

/// The suffix without its zero padding.
fn sub_bytes(key: &SubKey) -> &[u8] {
    let len = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    key.get(..len).unwrap_or(key)
}

fn search(table: &[(&str, Region)], key: &[u8]) -> Option<Region> {
    let i = table
        .binary_search_by(|(k, _)| k.as_bytes().cmp(key))
        .ok()?;
    table.get(i).map(|&(_, region)| region)
}

/// The subdivision table of a country, for the two countries that have one.
fn subdivision_table(country: CountryKey) -> Option<&'static [(&'static str, Region)]> {
    match &country {
        b"US" => Some(&US_TABLE),
        b"CA" => Some(&CA_TABLE),
        _ => None,
    }
}

fn builtin(country: CountryKey, sub: Option<SubKey>) -> Option<Region> {
    let default = search(&COUNTRY_TABLE, &country)?;
    let by_sub = sub.and_then(|sub| search(subdivision_table(country)?, sub_bytes(&sub)));
    Some(by_sub.unwrap_or(default))
}

/// The built-in region of a country, by ISO 3166-1 alpha-2 code in any case. `None` for
/// anything that is not an assigned code. For the US and Canada this is the country default;
/// use [`region_of`] when the state or province is known.
pub fn region_of_country(country: &str) -> Option<Region> {
    builtin(country_key(country)?, None)
}

/// The built-in region of a client, by country code and, for the US and Canada, state or
/// province. `subdivision` is the ISO 3166-2 suffix ("CA" for California), or the full code
/// ("US-CA"), in any case. An unknown, malformed or missing subdivision falls back to the
/// country's default, and a subdivision of any other country is ignored.
pub fn region_of(country: &str, subdivision: Option<&str>) -> Option<Region> {
    let country = country_key(country)?;
    builtin(country, subdivision.and_then(|s| sub_key(country, s)))
}

/// The built-in table with operator overrides layered on it, from config entries such as
/// `DE = "EEU"` or `US-TX = "ENAM"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionTable {
    /// Keyed by country and subdivision suffix, `NO_SUB` for a whole country. Fixed-size keys
    /// so that a lookup builds its key on the stack.
    overrides: HashMap<(CountryKey, SubKey), Region>,
}

impl RegionTable {
    /// The built-in table with no overrides.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Sends a country ("DE") or a subdivision ("US-CA") to `region`, in any case; a later call
    /// for the same key replaces the earlier one. Subdivisions of any country are accepted,
    /// since a GeoIP database may report them for every country; for the US and Canada, whose
    /// subdivisions the table knows, an unknown one is refused so that a typo is not silently
    /// ignored.
    pub fn set_override(&mut self, key: &str, region: Region) -> Result<(), String> {
        const EXPECTED: &str =
            "expected an ISO 3166-1 country code such as \"DE\" or a subdivision such as \"US-CA\"";
        let (country_part, sub_part) = match key.split_once('-') {
            Some((country, sub)) => (country, Some(sub)),
            None => (key, None),
        };
        let Some(country) = country_key(country_part) else {
            return Err(format!("region override key {key:?}: {EXPECTED}"));
        };
        if search(&COUNTRY_TABLE, &country).is_none() {
            return Err(format!(
                "region override key {key:?}: {country_part:?} is not an ISO 3166-1 country code"
            ));
        }
        let sub = match sub_part {
            None => NO_SUB,
            Some(part) => {
                let Some(sub) = suffix_key(part.as_bytes()) else {
                    return Err(format!(
                        "region override key {key:?}: the subdivision after the '-' must be 1 to 3 \
                         letters or digits (ISO 3166-2), e.g. \"US-CA\""
                    ));
                };
                if let Some(table) = subdivision_table(country) {
                    if search(table, sub_bytes(&sub)).is_none() {
                        return Err(format!(
                            "region override key {key:?}: {part:?} is not an ISO 3166-2 \
                             subdivision of {country_part:?}"
                        ));
                    }
                }
                sub
            }
        };
        self.overrides.insert((country, sub), region);
        Ok(())
    }

    /// The region of a client, as [`region_of`] but with overrides winning: a subdivision
    /// override first, then a country override (which so beats the built-in states and
    /// provinces: `US = "WEU"` sends all of the US), then the built-in table.
    pub fn lookup(&self, country: &str, subdivision: Option<&str>) -> Option<Region> {
        let country = country_key(country)?;
        let sub = subdivision.and_then(|s| sub_key(country, s));
        if !self.overrides.is_empty() {
            let by_sub = sub.and_then(|sub| self.overrides.get(&(country, sub)));
            if let Some(&region) = by_sub.or_else(|| self.overrides.get(&(country, NO_SUB))) {
                return Some(region);
            }
        }
        builtin(country, sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_are_the_249_assigned_codes_sorted_and_unique() {
        assert_eq!(COUNTRIES.len(), 249);
        assert!(
            COUNTRIES.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique"
        );
        for code in COUNTRIES {
            assert!(
                code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "{code}"
            );
        }
        // Codes that are easy to forget: territories, the 2010s additions and AQ.
        for code in [
            "AQ", "BV", "HM", "TF", "UM", "GS", "IO", "BQ", "CW", "SX", "SS", "AX", "XK",
        ] {
            assert_eq!(COUNTRIES.contains(&code), code != "XK", "{code}");
        }
    }

    #[test]
    fn every_country_maps_to_exactly_one_region() {
        for (i, code) in COUNTRIES.iter().enumerate() {
            let expected = COUNTRY_TABLE[i].1;
            assert_eq!(region_of_country(code), Some(expected), "{code}");
            assert_eq!(region_of(code, None), Some(expected), "{code}");
            assert_eq!(
                RegionTable::builtin().lookup(code, None),
                Some(expected),
                "{code}"
            );
        }
    }

    #[test]
    fn every_region_has_a_country() {
        for region in Region::ALL {
            assert!(
                COUNTRIES
                    .iter()
                    .any(|c| region_of_country(c) == Some(region)),
                "{region} has no country"
            );
        }
    }

    #[test]
    fn spot_checks() {
        let cases = [
            ("US", Some("CA"), Wnam),
            ("US", Some("NY"), Enam),
            ("US", Some("TX"), Wnam),
            ("US", Some("WA"), Wnam),
            ("US", Some("FL"), Enam),
            ("CA", Some("BC"), Wnam),
            ("CA", Some("AB"), Wnam),
            ("CA", Some("QC"), Enam),
            ("CA", Some("ON"), Enam),
            ("MX", None, Wnam),
            ("DE", None, Weu),
            ("FR", None, Weu),
            ("GB", None, Weu),
            ("PL", None, Eeu),
            ("RO", None, Eeu),
            ("UA", None, Eeu),
            ("RU", None, Eeu),
            ("BR", None, Ssam),
            ("CO", None, Nsam),
            ("AR", None, Ssam),
            ("CL", None, Ssam),
            ("AU", None, Oc),
            ("NZ", None, Oc),
            ("AE", None, Me),
            ("IL", None, Me),
            ("EG", None, Naf),
            ("MA", None, Naf),
            ("NG", None, Naf),
            ("ZA", None, Saf),
            ("KE", None, Saf),
            ("IN", None, Sas),
            ("PK", None, Sas),
            ("SG", None, Seas),
            ("ID", None, Seas),
            ("JP", None, Neas),
            ("KR", None, Neas),
            ("CN", None, Neas),
        ];
        for (country, sub, region) in cases {
            assert_eq!(region_of(country, sub), Some(region), "{country} {sub:?}");
        }
    }

    #[test]
    fn subdivision_tables_are_complete() {
        assert_eq!(US_TABLE.len(), 57, "50 states, DC and 6 outlying areas");
        assert_eq!(CA_TABLE.len(), 13, "10 provinces and 3 territories");
        // A US outlying area has its own country code too; both must agree.
        for code in ["AS", "GU", "MP", "PR", "UM", "VI"] {
            assert_eq!(
                region_of("US", Some(code)),
                region_of_country(code),
                "{code}"
            );
        }
    }

    #[test]
    fn missing_or_unknown_subdivisions_fall_back_to_the_country() {
        assert_eq!(region_of("US", None), Some(Enam));
        assert_eq!(region_of("CA", None), Some(Enam));
        assert_eq!(region_of("US", Some("ZZ")), Some(Enam));
        assert_eq!(region_of("US", Some("")), Some(Enam));
        assert_eq!(region_of("US", Some("CALIFORNIA")), Some(Enam));
        assert_eq!(region_of("CA", Some("CA-ZZ")), Some(Enam));
        // Other countries have no built-in subdivisions: "BE" is Berlin, not Belgium.
        assert_eq!(region_of("DE", Some("BE")), Some(Weu));
        assert_eq!(region_of("XX", Some("CA")), None);
    }

    #[test]
    fn lookups_ignore_case_and_accept_full_subdivision_codes() {
        assert_eq!(region_of_country("de"), Some(Weu));
        assert_eq!(region_of_country("De"), Some(Weu));
        assert_eq!(region_of("us", Some("ca")), Some(Wnam));
        assert_eq!(region_of("Us", Some("Ca")), Some(Wnam));
        assert_eq!(region_of("US", Some("US-CA")), Some(Wnam));
        assert_eq!(region_of("us", Some("us-ca")), Some(Wnam));
        assert_eq!(region_of("ca", Some("ca-bc")), Some(Wnam));
        // A full code for another country is not this country's subdivision.
        assert_eq!(region_of("US", Some("CA-BC")), Some(Enam));
    }

    #[test]
    fn unknown_or_malformed_countries_are_none() {
        for country in [
            "", "X", "XX", "ZZ", "XK", "EU", "DEU", "D1", "1D", " DE", "DE ", "é", "日本",
        ] {
            assert_eq!(region_of_country(country), None, "{country:?}");
            assert_eq!(region_of(country, Some("CA")), None, "{country:?}");
            assert_eq!(
                RegionTable::builtin().lookup(country, None),
                None,
                "{country:?}"
            );
        }
    }

    #[test]
    fn no_input_panics() {
        let mut table = RegionTable::builtin();
        table.set_override("US-CA", Oc).unwrap();
        let samples = [
            "", "-", "--", "US-", "-CA", "US--CA", "é", "ée", "US-é", "\0\0", "US-\0",
        ];
        for a in 0u8..128 {
            for b in 0u8..128 {
                let s = String::from_utf8(vec![a, b]).unwrap();
                let _ = region_of_country(&s);
                let _ = region_of("US", Some(&s));
                let _ = table.lookup(&s, Some(&s));
                let _ = table.clone().set_override(&s, Weu);
            }
        }
        for s in samples {
            let _ = region_of(s, Some(s));
            let _ = table.lookup(s, Some(s));
            let _ = table.clone().set_override(s, Weu);
        }
    }

    #[test]
    fn overrides_win() {
        let mut table = RegionTable::builtin();
        table.set_override("DE", Eeu).unwrap();
        table.set_override("us-tx", Enam).unwrap();
        table.set_override("US-NY", Weu).unwrap();
        table.set_override("BR-PA", Nsam).unwrap();
        assert_eq!(table.lookup("de", None), Some(Eeu));
        assert_eq!(table.lookup("DE", Some("BY")), Some(Eeu));
        assert_eq!(table.lookup("US", Some("TX")), Some(Enam));
        assert_eq!(table.lookup("US", Some("us-tx")), Some(Enam));
        assert_eq!(table.lookup("US", Some("NY")), Some(Weu));
        assert_eq!(
            table.lookup("US", Some("CA")),
            Some(Wnam),
            "untouched state"
        );
        assert_eq!(table.lookup("US", None), Some(Enam), "untouched default");
        assert_eq!(table.lookup("BR", Some("PA")), Some(Nsam));
        assert_eq!(table.lookup("BR", Some("SP")), Some(Ssam));
        assert_eq!(table.lookup("FR", None), Some(Weu), "untouched country");

        // A country override beats the built-in subdivisions, but not subdivision overrides.
        table.set_override("US", Oc).unwrap();
        assert_eq!(table.lookup("US", Some("CA")), Some(Oc));
        assert_eq!(table.lookup("US", None), Some(Oc));
        assert_eq!(table.lookup("US", Some("NY")), Some(Weu));

        // The last setting of a key wins.
        table.set_override("de", Weu).unwrap();
        assert_eq!(table.lookup("DE", None), Some(Weu));

        // Overrides never make an unknown country known.
        assert_eq!(table.lookup("XX", Some("NY")), None);
    }

    #[test]
    fn bad_override_keys_are_refused_naming_the_key() {
        let mut table = RegionTable::builtin();
        for key in [
            "", "X", "XX", "xx", "DEU", "D1", "US-", "-CA", "US-XX", "US-CAL", "US-C@", "CA-ZZ",
            "DE-", "DE-ABCD", "DE-B-Y", "US-US-CA", "US_CA", "US CA", " DE", "é", "ÉÉ", "XX-CA",
        ] {
            let err = table.set_override(key, Weu).unwrap_err();
            assert!(err.contains(&format!("{key:?}")), "{key:?}: {err}");
        }
        assert!(table.overrides.is_empty(), "a refused key changes nothing");
        let err = table.set_override("XX", Weu).unwrap_err();
        assert!(err.contains("not an ISO 3166-1 country code"), "{err}");
        let err = table.set_override("US-XX", Weu).unwrap_err();
        assert!(err.contains("subdivision"), "{err}");
    }
}
