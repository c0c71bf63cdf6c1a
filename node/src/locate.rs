//! Where clients are: the GeoIP database (replaced on disk or on SIGHUP without dropping
//! connections; a bad file is refused and the old one stays), the operator's overrides, and
//! the country-to-region table. The proxy asks `locate_fast` per connection (no allocation);
//! explain and status ask `locate`, which also says where the answer came from.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use switchyard_geo::geoip::{is_special, GeoDb};
use switchyard_geo::{Region, RegionTable};

use crate::config::{GeoConfig, OverrideTarget};
use crate::core::client::{ClientGeo, Located, Source};
use crate::error::Error;

/// A database older than this gets a warning in status: GeoIP data drifts.
const STALE_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

struct Override {
    net: IpNet,
    target: OverrideTarget,
}

struct State {
    db: Option<Arc<GeoDb>>,
    /// Most specific first, so the longest prefix wins.
    overrides: Vec<Override>,
    table: RegionTable,
    /// Identity of the file last loaded, to notice a replacement.
    stamp: Option<FileStamp>,
    path: Option<PathBuf>,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// GeoIP and the region table, swapped whole on reload.
pub struct Locator {
    state: ArcSwap<State>,
    node_region: Region,
}

/// What status shows about GeoIP.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GeoStatus {
    pub database: Option<String>,
    pub r#type: Option<String>,
    pub layout: Option<String>,
    /// RFC 3339 date the database was built.
    pub build_date: Option<String>,
    pub age_days: Option<u64>,
    pub overrides: usize,
    pub warning: Option<String>,
}

impl Locator {
    /// Loads the database named in `[geo]`, if any; a bad file is an error at start.
    pub fn new(cfg: Option<&GeoConfig>, node_region: Region) -> Result<Locator, Error> {
        let state = build_state(cfg)?;
        Ok(Locator {
            state: ArcSwap::from_pointee(state),
            node_region,
        })
    }

    /// Applies a new `[geo]` section (reload): the database is read again. On error the
    /// old state stays.
    pub fn reload(&self, cfg: Option<&GeoConfig>) -> Result<(), Error> {
        let old = self.state.load();
        match build_state(cfg) {
            Ok(state) => {
                self.state.store(Arc::new(state));
                Ok(())
            }
            Err(e) => {
                let mut kept = clone_state(&old);
                kept.last_error = Some(e.to_string());
                self.state.store(Arc::new(kept));
                Err(e)
            }
        }
    }

    /// Reloads the database when its file was replaced; for a periodic check.
    pub fn reload_if_changed(&self) -> Option<Result<(), Error>> {
        let old = self.state.load();
        let path = old.path.clone()?;
        let now = stamp(&path);
        if now == old.stamp || now.is_none() {
            return None;
        }
        let result = match GeoDb::open(&path) {
            Ok(db) => {
                let mut st = clone_state(&old);
                st.db = Some(Arc::new(db));
                st.stamp = now;
                st.last_error = None;
                self.state.store(Arc::new(st));
                tracing::info!(path = %path.display(), "GeoIP database reloaded");
                Ok(())
            }
            Err(e) => {
                let mut st = clone_state(&old);
                // Remember the bad file so it is not retried every tick; a new replacement
                // changes the stamp again.
                st.stamp = now;
                st.last_error = Some(format!("{e}; keeping the previous database"));
                self.state.store(Arc::new(st));
                tracing::error!("GeoIP database not reloaded, keeping the previous one: {e}");
                Err(Error::Geo(e.to_string()))
            }
        };
        Some(result)
    }

    /// The client's location, for steering: no allocation.
    pub fn locate_fast(&self, ip: IpAddr) -> ClientGeo {
        let st = self.state.load();
        self.resolve(&st, ip).0
    }

    /// The client's region as every node of the mesh places it, for DNS: None where this
    /// node would only guess its own region (no database), which other nodes would not.
    pub fn region_everywhere(&self, ip: IpAddr) -> Option<Region> {
        let st = self.state.load();
        match self.resolve(&st, ip) {
            (_, _, _, Source::NoDatabase) => None,
            (geo, ..) => geo.region,
        }
    }

    /// The client's location and where it came from, for explain.
    pub fn locate(&self, ip: IpAddr) -> Located {
        let st = self.state.load();
        let (geo, country, subdivision, source) = self.resolve(&st, ip);
        Located {
            geo,
            country: country.map(|c| String::from_utf8_lossy(&c).into_owned()),
            subdivision: subdivision.map(|s| s.as_str().to_string()),
            source,
        }
    }

    /// The per-connection path: nothing here allocates but an error message.
    #[allow(clippy::type_complexity)]
    fn resolve(&self, st: &State, ip: IpAddr) -> (ClientGeo, Option<[u8; 2]>, Option<Sub>, Source) {
        let ip = crate::config::canonical_ip(ip);
        if let Some(o) = st.overrides.iter().find(|o| o.net.contains(&ip)) {
            let (country, sub, region) = match &o.target {
                OverrideTarget::Country(c) => {
                    let c = c.as_bytes();
                    (Some(*c), None, st.table.lookup(cstr(c), None))
                }
                OverrideTarget::Subdivision(c, s) => {
                    let c = c.as_bytes();
                    (Some(*c), Sub::new(s), st.table.lookup(cstr(c), Some(s)))
                }
                OverrideTarget::Region(r) => (None, None, Some(*r)),
            };
            let geo = ClientGeo {
                region,
                country,
                location: None,
            };
            return (geo, country, sub, Source::Override(o.net));
        }
        let Some(db) = &st.db else {
            let geo = ClientGeo {
                region: Some(self.node_region),
                ..ClientGeo::default()
            };
            return (geo, None, None, Source::NoDatabase);
        };
        // A database built for private networks may cover special addresses; a public one
        // must not be trusted with them.
        let special = is_special(ip);
        match db.lookup(ip) {
            Ok(Some(a)) if !special || db.layout() == switchyard_geo::geoip::Layout::Switchyard => {
                let country = a.country_str().and_then(|c| {
                    let b = c.as_bytes();
                    (b.len() == 2).then(|| [b[0], b[1]])
                });
                let sub = a.subdivision_str();
                let region = a.country_str().and_then(|c| st.table.lookup(c, sub));
                let geo = ClientGeo {
                    region,
                    country,
                    location: a.location,
                };
                (geo, country, sub.and_then(Sub::new), Source::Database)
            }
            Ok(_) if special => (ClientGeo::default(), None, None, Source::Special),
            Ok(_) => (ClientGeo::default(), None, None, Source::NotFound),
            Err(e) => (
                ClientGeo::default(),
                None,
                None,
                Source::LookupFailed(e.to_string()),
            ),
        }
    }

    pub fn status(&self) -> GeoStatus {
        let st = self.state.load();
        let mut s = GeoStatus {
            database: st.path.as_ref().map(|p| p.display().to_string()),
            r#type: None,
            layout: None,
            build_date: None,
            age_days: None,
            overrides: st.overrides.len(),
            warning: st.last_error.clone(),
        };
        match &st.db {
            Some(db) => {
                s.r#type = Some(db.database_type().to_string());
                s.layout = Some(format!("{:?}", db.layout()));
                let built = UNIX_EPOCH + Duration::from_secs(db.build_epoch());
                s.build_date = Some(humantime::format_rfc3339_seconds(built).to_string());
                let age = SystemTime::now().duration_since(built).unwrap_or_default();
                s.age_days = Some(age.as_secs() / 86_400);
                if s.warning.is_none() {
                    s.warning = stale_warning(age);
                }
            }
            None if s.warning.is_none() => {
                s.warning = Some(format!(
                    "no [geo] database: every client is taken to be in this node's region ({})",
                    self.node_region
                ));
            }
            None => {}
        }
        s
    }
}

/// A warning for a database older than 60 days.
fn stale_warning(age: Duration) -> Option<String> {
    (age > STALE_AFTER).then(|| {
        format!(
            "the database is {} days old; GeoIP data drifts, update it",
            age.as_secs() / 86_400
        )
    })
}

/// An ISO 3166-2 subdivision suffix (at most 3 characters), kept on the stack.
#[derive(Debug, Clone, Copy)]
struct Sub([u8; 3], u8);

impl Sub {
    fn new(s: &str) -> Option<Sub> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 3 {
            return None;
        }
        let mut buf = [0u8; 3];
        buf[..b.len()].copy_from_slice(b);
        Some(Sub(buf, b.len() as u8))
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0[..usize::from(self.1)]).unwrap_or("")
    }
}

fn cstr(c: &[u8; 2]) -> &str {
    std::str::from_utf8(c).unwrap_or("")
}

fn clone_state(s: &State) -> State {
    State {
        db: s.db.clone(),
        overrides: s
            .overrides
            .iter()
            .map(|o| Override {
                net: o.net,
                target: o.target.clone(),
            })
            .collect(),
        table: s.table.clone(),
        stamp: s.stamp,
        path: s.path.clone(),
        last_error: s.last_error.clone(),
    }
}

fn build_state(cfg: Option<&GeoConfig>) -> Result<State, Error> {
    let table = cfg.map(|c| c.regions.clone()).unwrap_or_default();
    let mut overrides = Vec::new();
    let mut db = None;
    let mut path = None;
    let mut st = None;
    if let Some(cfg) = cfg {
        for o in &cfg.overrides {
            overrides.push(Override {
                net: o.cidr,
                target: o.target.clone(),
            });
        }
        overrides.sort_by_key(|o| std::cmp::Reverse(o.net.prefix_len()));
        if let Some(p) = &cfg.database {
            st = stamp(p);
            db = Some(Arc::new(
                GeoDb::open(p).map_err(|e| Error::Geo(e.to_string()))?,
            ));
            path = Some(p.clone());
        }
    }
    Ok(State {
        db,
        overrides,
        table,
        stamp: st,
        path,
        last_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GeoOverride;

    const CSV: &str = "cidr,country,subdivision,latitude,longitude
81.2.69.0/24,GB,ENG,51.5,-0.1
2a02:8000::/20,DE,HE,50.1,8.7
175.16.199.0/24,CN
10.0.0.0/8,US,CA,37.3,-121.9
";

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sy-geo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn with_db(d: &Dir, csv: &str) -> GeoConfig {
        let path = d.0.join("geo.mmdb");
        switchyard_geo::geoip::build(csv, &path).unwrap();
        GeoConfig {
            database: Some(path),
            ..GeoConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_database_older_than_60_days_gets_a_warning() {
        let day = Duration::from_secs(86_400);
        assert_eq!(stale_warning(day * 59), None);
        let w = stale_warning(day * 61).unwrap();
        assert!(w.contains("61 days old"), "{w}");
    }

    #[test]
    fn no_database_means_the_nodes_region() {
        let geo = Locator::new(None, Region::Seas).unwrap();
        let l = geo.locate(ip("81.2.69.1"));
        assert_eq!(l.geo.region, Some(Region::Seas));
        assert_eq!(l.source, Source::NoDatabase);
        assert!(geo.status().warning.unwrap().contains("no [geo] database"));
    }

    #[test]
    fn ipv4_ipv6_mapped_absent_and_private() {
        let d = dir("lookups");
        let geo = Locator::new(Some(&with_db(&d, CSV)), Region::Weu).unwrap();
        let gb = geo.locate(ip("81.2.69.1"));
        assert_eq!(
            (gb.country.as_deref(), gb.geo.region),
            (Some("GB"), Some(Region::Weu))
        );
        assert_eq!(gb.source, Source::Database);
        assert_eq!(gb.geo.location, Some((51.5, -0.1)));
        let de = geo.locate(ip("2a02:8000::1"));
        assert_eq!(
            (de.country.as_deref(), de.subdivision.as_deref()),
            (Some("DE"), Some("HE"))
        );
        assert_eq!(
            geo.locate(ip("::ffff:81.2.69.1")).country.as_deref(),
            Some("GB")
        );
        assert_eq!(
            geo.locate(ip("175.16.199.9")).geo.region,
            Some(Region::Neas)
        );
        let absent = geo.locate(ip("8.8.8.8"));
        assert_eq!((absent.geo.region, absent.source), (None, Source::NotFound));
        // A database built for private networks may place them...
        let private = geo.locate(ip("10.1.2.3"));
        assert_eq!(private.geo.region, Some(Region::Wnam));
        // ...but an address nobody placed stays unknown.
        assert_eq!(geo.locate(ip("192.168.1.1")).source, Source::Special);
        // The fast path gives the same answer.
        assert_eq!(geo.locate_fast(ip("81.2.69.1")), gb.geo);
    }

    #[test]
    fn overrides_and_region_table_overrides_win() {
        let d = dir("overrides");
        let mut cfg = with_db(&d, CSV);
        cfg.regions.set_override("GB", Region::Eeu).unwrap();
        cfg.overrides = vec![
            GeoOverride {
                cidr: "81.2.69.0/28".parse().unwrap(),
                target: OverrideTarget::Region(Region::Oc),
            },
            GeoOverride {
                cidr: "81.2.69.0/30".parse().unwrap(),
                target: OverrideTarget::parse(None, Some("US-CA"), None).unwrap(),
            },
        ];
        let geo = Locator::new(Some(&cfg), Region::Weu).unwrap();
        // The longest prefix wins.
        let l = geo.locate(ip("81.2.69.1"));
        assert_eq!(
            (l.geo.region, l.subdivision.as_deref()),
            (Some(Region::Wnam), Some("CA"))
        );
        assert_eq!(l.source, Source::Override("81.2.69.0/30".parse().unwrap()));
        assert_eq!(geo.locate(ip("81.2.69.9")).geo.region, Some(Region::Oc));
        // Outside the overrides: the database, through the overridden region table.
        assert_eq!(geo.locate(ip("81.2.69.200")).geo.region, Some(Region::Eeu));
    }

    #[test]
    fn a_replaced_file_is_reloaded_and_a_corrupt_one_is_refused() {
        let d = dir("reload");
        let cfg = with_db(&d, CSV);
        let path = cfg.database.clone().unwrap();
        let geo = Locator::new(Some(&cfg), Region::Weu).unwrap();
        assert!(geo.reload_if_changed().is_none(), "nothing changed yet");
        switchyard_geo::geoip::build("81.2.69.0/24,FR\n", &path).unwrap();
        assert!(matches!(geo.reload_if_changed(), Some(Ok(()))));
        assert_eq!(geo.locate(ip("81.2.69.1")).country.as_deref(), Some("FR"));

        std::fs::write(&path, b"not a database at all").unwrap();
        let err = geo.reload_if_changed().unwrap().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        // The previous database keeps answering, and status says why.
        assert_eq!(geo.locate(ip("81.2.69.1")).country.as_deref(), Some("FR"));
        assert!(geo
            .status()
            .warning
            .unwrap()
            .contains("keeping the previous database"));
        // A reload through config (SIGHUP) refuses the same file and keeps the old one too.
        assert!(geo.reload(Some(&cfg)).is_err());
        assert_eq!(geo.locate(ip("81.2.69.1")).country.as_deref(), Some("FR"));
    }

    #[test]
    fn a_bad_database_at_start_names_the_file() {
        let d = dir("bad");
        let path = d.0.join("empty.mmdb");
        std::fs::write(&path, b"").unwrap();
        let cfg = GeoConfig {
            database: Some(path.clone()),
            ..GeoConfig::default()
        };
        let err = Locator::new(Some(&cfg), Region::Weu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
