//! `[anycast]`: the prefixes this node announces over BGP (through ExaBGP or BIRD, driven by
//! `switchyard anycast`), each tied to the apps it carries, and the timings that keep the
//! announcements from flapping. Its own file so that the rest of the config stays as it was.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::validate::{key, within, Finding};
use super::values::{de_duration, de_net};
use super::{Config, Seg};

/// `[anycast]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnycastConfig {
    /// `[[anycast.prefix]]`: what is announced, and for which apps.
    #[serde(rename = "prefix")]
    pub prefixes: Vec<AnycastPrefix>,
    /// On SIGTERM the node withdraws its prefixes first and keeps serving, new connections
    /// included, for this long, so that routers move traffic away; then it drains.
    #[serde(default = "default_withdraw_grace", deserialize_with = "de_duration")]
    pub withdraw_grace: Duration,
    /// How long a prefix's apps must be servable, without a break, before it is announced.
    #[serde(default = "default_hold_up", deserialize_with = "de_duration")]
    pub hold_up: Duration,
    /// How long they must be unservable, without a break, before it is withdrawn (SIGTERM
    /// withdraws at once). `switchyard anycast` also withdraws after this long without an
    /// answer from the node.
    #[serde(default = "default_hold_down", deserialize_with = "de_duration")]
    pub hold_down: Duration,
    /// `switchyard anycast --bird`: the file it writes (a `protocol static` per address
    /// family with the announced prefixes), for BIRD's config to `include`.
    pub bird_include: Option<PathBuf>,
    /// ...and the command it runs after each write.
    #[serde(default = "default_bird_reload")]
    pub bird_reload: Vec<String>,
}

/// One `[[anycast.prefix]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnycastPrefix {
    #[serde(deserialize_with = "de_net")]
    pub prefix: IpNet,
    /// Announced only while every one of these apps can be served from this node: a client
    /// routed here may want any of them. Apps that should fail apart go on prefixes apart.
    pub apps: Vec<String>,
}

fn default_withdraw_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_hold_up() -> Duration {
    // Announcing late costs nothing (other nodes serve meanwhile); flapping costs route
    // flap damping at the neighbours.
    Duration::from_secs(10)
}
fn default_hold_down() -> Duration {
    // Withdrawing late sends clients to a node that cannot serve them; the monitors'
    // consecutive_down already filtered one-off failures.
    Duration::from_secs(1)
}
fn default_bird_reload() -> Vec<String> {
    vec!["birdc".into(), "configure".into()]
}

/// The ranges of `[anycast]`'s durations, inclusive.
const WITHDRAW_GRACE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
const HOLD: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));

impl Config {
    /// Checks `[anycast]` against the rest: ranges, prefixes, and the apps they name.
    pub(super) fn validate_anycast(&self) -> Result<(), Finding> {
        let Some(a) = &self.anycast else {
            return Ok(());
        };
        let obj = || "[anycast]".to_string();
        let at = |f: &str| vec![key("anycast"), key(f)];
        for (field, value, range) in [
            ("withdraw_grace", a.withdraw_grace, WITHDRAW_GRACE),
            ("hold_up", a.hold_up, HOLD),
            ("hold_down", a.hold_down, HOLD),
        ] {
            within(value, range).map_err(|e| Finding::new(at(field), obj(), field, e))?;
        }
        if a.prefixes.is_empty() {
            return Err(Finding::new(
                at("prefix"),
                obj(),
                "prefix",
                "list at least one [[anycast.prefix]] (prefix and apps), or remove [anycast]"
                    .into(),
            ));
        }
        if a.bird_reload.is_empty() || a.bird_reload[0].is_empty() {
            return Err(Finding::new(
                at("bird_reload"),
                obj(),
                "bird_reload",
                "name a command, such as [\"birdc\", \"configure\"]".into(),
            ));
        }
        let apps: HashSet<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        let mut seen = HashSet::new();
        for (i, p) in a.prefixes.iter().enumerate() {
            let at = |f: &str| vec![key("anycast"), key("prefix"), Seg::Index(i), key(f)];
            let obj = format!("[[anycast.prefix]] {}", p.prefix);
            if p.prefix != p.prefix.trunc() {
                return Err(Finding::new(
                    at("prefix"),
                    obj,
                    "prefix",
                    format!(
                        "{} has host bits set; BGP announces networks: write {}",
                        p.prefix,
                        p.prefix.trunc()
                    ),
                ));
            }
            if !seen.insert(p.prefix) {
                return Err(Finding::new(
                    at("prefix"),
                    obj,
                    "prefix",
                    "appears twice; list its apps once".into(),
                ));
            }
            if p.apps.is_empty() {
                return Err(Finding::new(
                    at("apps"),
                    obj,
                    "apps",
                    "list the apps this prefix carries; it is announced while all of them can be served".into(),
                ));
            }
            if let Some(missing) = p.apps.iter().find(|n| !apps.contains(n.as_str())) {
                let mut known: Vec<&str> = apps.iter().copied().collect();
                known.sort_unstable();
                return Err(Finding::new(
                    at("apps"),
                    obj,
                    "apps",
                    format!(
                        "no [[app]] is named {missing:?} (known: {})",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"[node]
id = "n1"
region = "WEU"

[[pool]]
name = "p"
origins = [{ name = "o", address = "127.0.0.1:1" }]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "web"
listen = "127.0.0.1:0"
load_balancer = "lb"

[anycast]
withdraw_grace = "5s"

[[anycast.prefix]]
prefix = "192.0.2.0/24"
apps = ["web"]
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("sy.toml")))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn anycast_parses_with_defaults() {
        let c = Config::parse(BASE, None).unwrap();
        let a = c.anycast.unwrap();
        assert_eq!(a.withdraw_grace, Duration::from_secs(5));
        assert_eq!(a.hold_up, Duration::from_secs(10));
        assert_eq!(a.hold_down, Duration::from_secs(1));
        assert_eq!(a.bird_reload, vec!["birdc", "configure"]);
        assert_eq!(
            a.prefixes[0].prefix,
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
        assert!(
            Config::parse(&BASE[..BASE.find("[anycast]").unwrap()], None)
                .unwrap()
                .anycast
                .is_none()
        );
    }

    #[test]
    fn anycast_mistakes_name_the_line_object_and_field() {
        let cases = [
            (
                BASE.replace("apps = [\"web\"]", "apps = [\"web\", \"game\"]"),
                "sy.toml:23: [[anycast.prefix]] 192.0.2.0/24: apps: no [[app]] is named \"game\" (known: web)",
            ),
            (
                BASE.replace("192.0.2.0/24", "192.0.2.1/24"),
                "sy.toml:22: [[anycast.prefix]] 192.0.2.1/24: prefix: 192.0.2.1/24 has host bits set; BGP announces networks: write 192.0.2.0/24",
            ),
            (
                BASE.replace("apps = [\"web\"]", "apps = []"),
                "sy.toml:23: [[anycast.prefix]] 192.0.2.0/24: apps: list the apps",
            ),
            (
                format!("{BASE}\n[[anycast.prefix]]\nprefix = \"192.0.2.0/24\"\napps = [\"web\"]\n"),
                "sy.toml:26: [[anycast.prefix]] 192.0.2.0/24: prefix: appears twice",
            ),
            (
                BASE.replace("withdraw_grace = \"5s\"", "withdraw_grace = \"2h\""),
                "sy.toml:19: [anycast]: withdraw_grace: 2h is out of range: it must be 0s to 1h",
            ),
            (
                BASE.replace("withdraw_grace = \"5s\"", "hold_up = \"2h\""),
                "sy.toml:19: [anycast]: hold_up: 2h is out of range",
            ),
            (
                BASE.replace("withdraw_grace = \"5s\"", "bird_reload = []"),
                "sy.toml:19: [anycast]: bird_reload: name a command",
            ),
            (
                BASE[..BASE.find("[[anycast.prefix]]").unwrap()].replace(
                    "withdraw_grace = \"5s\"",
                    "withdraw_grace = \"5s\"\nprefix = []",
                ),
                "[anycast]: prefix: list at least one [[anycast.prefix]]",
            ),
            (
                BASE.replace("withdraw_grace", "grace"),
                "sy.toml:19:1: unknown field `grace`",
            ),
            (
                BASE.replace("192.0.2.0/24", "192.0.2.0/33"),
                "sy.toml:22:",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.starts_with("sy.toml:"), "no location in: {e}");
        }
    }
}
