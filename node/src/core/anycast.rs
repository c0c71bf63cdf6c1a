//! Anycast: whether this node should announce each of its `[anycast]` prefixes now, and what
//! `switchyard anycast` says to ExaBGP or writes for BIRD as the node's answer changes.
//!
//! The node's side ([`Announcer`]) announces a prefix while the node is ready and every app
//! the prefix carries can be served here (its load balancer has a healthy pool in this
//! node's view), once that has held for `hold_up`; it withdraws once it has not held for
//! `hold_down`, and at once when the node is stopping. A condition that comes and goes
//! faster than the hold changes nothing: no flapping. The follower's side ([`Follower`])
//! states every prefix once, then each change, and withdraws what it announced when it has
//! not heard from the node for `hold_down`. Time is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::AnycastConfig;
use crate::core::compiled::CompiledConfig;
use crate::core::view::View;

/// What the node is like now, as the announcer weighs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// SIGTERM: withdraw everything at once, whatever the hold.
    pub stopping: bool,
    /// Why the node is not ready (sick, in trouble, draining), when it is not.
    pub unready: Option<String>,
    /// The apps that cannot be served now, with why.
    pub unservable: BTreeMap<String, String>,
}

/// The apps of `rt` whose load balancer has no healthy pool (default or fallback) in `view`,
/// with why.
pub fn unservable_apps(rt: &CompiledConfig, view: &View) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for app in &rt.config.apps {
        let Some(lb) = rt.lb_index(&app.load_balancer) else {
            continue;
        };
        let lb = &rt.load_balancers[lb];
        // The same pools as the DNS answers weigh (`dns::served_names`), so that a node is
        // in an app's answers exactly while it may announce the app's prefixes.
        let mut pools: Vec<usize> = lb.candidate_pools().collect();
        pools.sort_unstable();
        pools.dedup();
        if pools
            .iter()
            .any(|&p| view.pools.get(p).is_some_and(|v| v.healthy))
        {
            continue;
        }
        let names: Vec<&str> = pools.iter().map(|&p| &*rt.pools[p].name).collect();
        out.insert(
            app.name.clone(),
            format!(
                "load balancer {:?} has no healthy pool ({}) in this node's view",
                &*lb.name,
                names.join(", ")
            ),
        );
    }
    out
}

/// One prefix as the node decides it.
#[derive(Debug, Clone)]
struct Prefix {
    prefix: IpNet,
    apps: Vec<String>,
    announce: bool,
    /// When `announce` last changed (or the announcer started).
    since: Instant,
    /// When the wanted state first differed from `announce`, without a break since.
    pending: Option<Instant>,
    /// Why it is withdrawn, or why it is about to be.
    reason: Option<String>,
}

/// The node's announcements, one state machine per prefix.
#[derive(Debug, Clone)]
pub struct Announcer {
    hold_up: Duration,
    hold_down: Duration,
    prefixes: Vec<Prefix>,
    stopping: bool,
}

impl Announcer {
    /// Every prefix starts withdrawn: a node that has just started announces once it has
    /// been able to serve for `hold_up`.
    pub fn new(cfg: Option<&AnycastConfig>, now: Instant) -> Announcer {
        let mut a = Announcer {
            hold_up: Duration::ZERO,
            hold_down: Duration::ZERO,
            prefixes: Vec::new(),
            stopping: false,
        };
        a.reconfigure(cfg, now);
        a
    }

    /// Follows a reload: prefixes kept keep their state, new ones start withdrawn.
    pub fn reconfigure(&mut self, cfg: Option<&AnycastConfig>, now: Instant) {
        let Some(cfg) = cfg else {
            self.prefixes.clear();
            return;
        };
        self.hold_up = cfg.hold_up;
        self.hold_down = cfg.hold_down;
        let old = std::mem::take(&mut self.prefixes);
        self.prefixes = cfg
            .prefixes
            .iter()
            .map(|p| match old.iter().find(|o| o.prefix == p.prefix) {
                Some(o) => Prefix {
                    apps: p.apps.clone(),
                    ..o.clone()
                },
                None => Prefix {
                    prefix: p.prefix,
                    apps: p.apps.clone(),
                    announce: false,
                    since: now,
                    pending: None,
                    reason: Some("starting".into()),
                },
            })
            .collect();
    }

    /// Weighs `cond` at `now`. Returns whether any prefix changed.
    pub fn update(&mut self, now: Instant, cond: &Conditions) -> bool {
        self.stopping = cond.stopping;
        let mut changed = false;
        for p in &mut self.prefixes {
            let why_not = if cond.stopping {
                Some("the node is stopping: withdrawn first, then it drains".to_string())
            } else if let Some(u) = &cond.unready {
                Some(format!("the node is not ready: {u}"))
            } else {
                p.apps.iter().find_map(|a| {
                    cond.unservable
                        .get(a)
                        .map(|why| format!("app {a:?} cannot be served: {why}"))
                })
            };
            let want = why_not.is_none();
            if want == p.announce {
                p.pending = None;
                p.reason = why_not;
                continue;
            }
            let first = *p.pending.get_or_insert(now);
            let hold = if want { self.hold_up } else { self.hold_down };
            p.reason = why_not.or_else(|| Some("able to serve; held before announcing".into()));
            if cond.stopping || now.saturating_duration_since(first) >= hold {
                p.announce = want;
                p.since = now;
                p.pending = None;
                if want {
                    p.reason = None;
                }
                changed = true;
            }
        }
        changed
    }

    /// What `/v1/anycast` says; `wall` turns an instant into RFC 3339.
    pub fn report(
        &self,
        node: &str,
        now: Instant,
        wall: impl Fn(Instant) -> String,
    ) -> AnycastReport {
        AnycastReport {
            node: node.to_string(),
            hold_down_ms: self.hold_down.as_millis() as u64,
            stopping: self.stopping,
            prefixes: self
                .prefixes
                .iter()
                .map(|p| {
                    let hold = if p.announce {
                        self.hold_down
                    } else {
                        self.hold_up
                    };
                    PrefixReport {
                        prefix: p.prefix,
                        apps: p.apps.clone(),
                        announce: p.announce,
                        since: wall(p.since),
                        reason: p.reason.clone(),
                        change_in_ms: p.pending.map(|t| {
                            hold.saturating_sub(now.saturating_duration_since(t))
                                .as_millis() as u64
                        }),
                    }
                })
                .collect(),
        }
    }

    /// The prefixes announced now.
    pub fn announced(&self) -> Vec<IpNet> {
        self.prefixes
            .iter()
            .filter(|p| p.announce)
            .map(|p| p.prefix)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }
}

/// `GET /v1/anycast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnycastReport {
    pub node: String,
    /// `[anycast] hold_down`: a follower that cannot reach the node withdraws after this.
    pub hold_down_ms: u64,
    /// The node got SIGTERM: everything is withdrawn and it serves out its grace.
    pub stopping: bool,
    pub prefixes: Vec<PrefixReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixReport {
    pub prefix: IpNet,
    pub apps: Vec<String>,
    pub announce: bool,
    /// RFC 3339: when `announce` last changed.
    pub since: String,
    /// Why it is withdrawn, or about to change.
    pub reason: Option<String>,
    /// When a change is held: how long until it happens, if nothing changes meanwhile.
    pub change_in_ms: Option<u64>,
}

/// One line's worth of change for a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Announce(IpNet),
    Withdraw(IpNet),
}

impl Change {
    /// ExaBGP's text process API (`encoder text`).
    pub fn exabgp(&self) -> String {
        match self {
            Change::Announce(p) => format!("announce route {p} next-hop self"),
            Change::Withdraw(p) => format!("withdraw route {p} next-hop self"),
        }
    }
}

/// `switchyard anycast`'s memory of what it told the router.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    /// None until everything has been stated once.
    stated: Option<BTreeMap<IpNet, bool>>,
    /// Since when the node has not answered, without a break.
    lost_since: Option<Instant>,
    hold_down: Duration,
}

impl Follower {
    /// `hold_down` until the node says its own: how long without an answer before
    /// withdrawing.
    pub fn new(hold_down: Duration) -> Follower {
        Follower {
            hold_down,
            ..Default::default()
        }
    }

    /// The node answered. Returns what to tell the router: every prefix the first time, then
    /// what changed (a prefix a reload removed is withdrawn). None: nothing to say.
    pub fn seen(&mut self, report: &AnycastReport) -> Option<Vec<Change>> {
        self.lost_since = None;
        self.hold_down = Duration::from_millis(report.hold_down_ms);
        let now: BTreeMap<IpNet, bool> = report
            .prefixes
            .iter()
            .map(|p| (p.prefix, p.announce))
            .collect();
        let changes: Vec<Change> = match &self.stated {
            None => now.iter().map(|(p, a)| change(*p, *a)).collect(),
            Some(before) => {
                let mut c: Vec<Change> = before
                    .iter()
                    .filter(|(p, a)| **a && !now.contains_key(*p))
                    .map(|(p, _)| Change::Withdraw(*p))
                    .collect();
                c.extend(
                    now.iter()
                        .filter(|(p, a)| before.get(*p).copied().unwrap_or(false) != **a)
                        .map(|(p, a)| change(*p, *a)),
                );
                if c.is_empty() {
                    self.stated = Some(now);
                    return None;
                }
                c
            }
        };
        self.stated = Some(now);
        Some(changes)
    }

    /// The node did not answer at `now`. After `hold_down` without an answer, withdraws
    /// everything announced (and, if nothing was ever stated, states that nothing is).
    pub fn lost(&mut self, now: Instant) -> Option<Vec<Change>> {
        let first = *self.lost_since.get_or_insert(now);
        if now.saturating_duration_since(first) < self.hold_down {
            return None;
        }
        match &mut self.stated {
            None => {
                self.stated = Some(BTreeMap::new());
                Some(Vec::new())
            }
            Some(stated) => {
                let c: Vec<Change> = stated
                    .iter_mut()
                    .filter(|(_, a)| **a)
                    .map(|(p, a)| {
                        *a = false;
                        Change::Withdraw(*p)
                    })
                    .collect();
                (!c.is_empty()).then_some(c)
            }
        }
    }

    /// The prefixes announced now, as last stated.
    pub fn announced(&self) -> Vec<IpNet> {
        self.stated
            .iter()
            .flatten()
            .filter(|(_, a)| **a)
            .map(|(p, _)| *p)
            .collect()
    }
}

fn change(p: IpNet, announce: bool) -> Change {
    if announce {
        Change::Announce(p)
    } else {
        Change::Withdraw(p)
    }
}

/// The BIRD include file for `announced`: a `protocol static` per address family, whose
/// routes BIRD's BGP protocols export (see README, "Anycast").
pub fn bird_include(announced: &[IpNet]) -> String {
    let mut out = String::from(
        "# Written by `switchyard anycast --bird`; rewritten on every change. Do not edit.\n",
    );
    for (name, family, v4) in [
        ("switchyard_anycast4", "ipv4", true),
        ("switchyard_anycast6", "ipv6", false),
    ] {
        out.push_str(&format!("protocol static {name} {{\n  {family};\n"));
        for p in announced.iter().filter(|p| matches!(p, IpNet::V4(_)) == v4) {
            out.push_str(&format!("  route {p} blackhole;\n"));
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnycastPrefix;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn cfg(hold_up: u64, hold_down: u64) -> AnycastConfig {
        AnycastConfig {
            prefixes: vec![
                AnycastPrefix {
                    prefix: net("192.0.2.0/24"),
                    apps: vec!["web".into(), "game".into()],
                },
                AnycastPrefix {
                    prefix: net("198.51.100.0/24"),
                    apps: vec!["web".into()],
                },
            ],
            withdraw_grace: Duration::from_secs(10),
            hold_up: Duration::from_secs(hold_up),
            hold_down: Duration::from_secs(hold_down),
            bird_include: None,
            bird_reload: vec!["birdc".into(), "configure".into()],
        }
    }

    /// What the node is like in a timeline step.
    #[derive(Clone, Copy)]
    enum Is {
        Well,
        GameDown,
        WebDown,
        Unready,
        Stopping,
    }

    fn cond(is: Is) -> Conditions {
        let mut c = Conditions::default();
        match is {
            Is::Well => {}
            Is::GameDown => {
                c.unservable.insert("game".into(), "no pool".into());
            }
            Is::WebDown => {
                c.unservable.insert("web".into(), "no pool".into());
            }
            Is::Unready => c.unready = Some("sick".into()),
            Is::Stopping => c.stopping = true,
        }
        c
    }

    /// Timelines: (second, condition from then on, announced after weighing it: first
    /// prefix, second prefix), with hold_up 3 s and hold_down 2 s, weighed every second.
    #[test]
    fn timelines_announce_after_hold_up_and_withdraw_after_hold_down() {
        use Is::*;
        type Step = (u64, Is, bool, bool);
        let cases: &[(&str, &[Step])] = &[
            (
                "starts withdrawn, announces after hold_up",
                &[
                    (0, Well, false, false),
                    (2, Well, false, false),
                    (3, Well, true, true),
                ],
            ),
            (
                "a blip shorter than hold_down changes nothing",
                &[
                    (0, Well, false, false),
                    (3, Well, true, true),
                    (4, WebDown, true, true),
                    (5, Well, true, true),
                    (6, WebDown, true, true),
                    (7, WebDown, true, true),
                    (8, WebDown, false, false),
                ],
            ),
            (
                "flapping every second never announces",
                &[
                    (0, Well, false, false),
                    (1, Unready, false, false),
                    (2, Well, false, false),
                    (3, Unready, false, false),
                    (4, Well, false, false),
                    (6, Well, false, false),
                    (7, Well, true, true),
                ],
            ),
            (
                "a prefix follows only its own apps",
                &[
                    (0, Well, false, false),
                    (3, Well, true, true),
                    (4, GameDown, true, true),
                    (6, GameDown, false, true),
                    (7, Well, false, true),
                    (10, Well, true, true),
                ],
            ),
            (
                "unready withdraws everything",
                &[
                    (0, Well, false, false),
                    (3, Unready, false, false),
                    (5, Unready, false, false),
                ],
            ),
            (
                "stopping withdraws at once",
                &[
                    (0, Well, false, false),
                    (3, Well, true, true),
                    (4, Stopping, false, false),
                ],
            ),
        ];
        for (name, steps) in cases {
            let start = Instant::now();
            let mut a = Announcer::new(Some(&cfg(3, 2)), start);
            let mut is = Well;
            let last = steps.last().unwrap().0;
            for sec in 0..=last {
                if let Some(step) = steps.iter().find(|s| s.0 == sec) {
                    is = step.1;
                }
                let now = start + Duration::from_secs(sec);
                a.update(now, &cond(is));
                if let Some(&(_, _, first, second)) = steps.iter().find(|s| s.0 == sec) {
                    let got = a.announced();
                    assert_eq!(
                        (
                            got.contains(&net("192.0.2.0/24")),
                            got.contains(&net("198.51.100.0/24"))
                        ),
                        (first, second),
                        "{name}: at {sec}s"
                    );
                }
            }
        }
    }

    #[test]
    fn the_report_says_why_and_when() {
        let start = Instant::now();
        let mut a = Announcer::new(Some(&cfg(3, 2)), start);
        a.update(start, &cond(Is::GameDown));
        let r = a.report("n1", start + Duration::from_secs(1), |_| "t".into());
        assert_eq!(r.hold_down_ms, 2000);
        let first = &r.prefixes[0];
        assert!(!first.announce);
        assert!(
            first.reason.as_deref().unwrap().contains("app \"game\""),
            "{first:?}"
        );
        assert_eq!(first.change_in_ms, None);
        // The second prefix carries only web: held before announcing.
        assert_eq!(r.prefixes[1].change_in_ms, Some(2000));
        let json = serde_json::to_string(&r).unwrap();
        let back: AnycastReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_reload_keeps_the_state_of_kept_prefixes() {
        let start = Instant::now();
        let mut a = Announcer::new(Some(&cfg(0, 0)), start);
        a.update(start, &cond(Is::Well));
        assert_eq!(a.announced().len(), 2);
        let mut c = cfg(0, 0);
        c.prefixes.remove(0);
        c.prefixes.push(AnycastPrefix {
            prefix: net("203.0.113.0/24"),
            apps: vec!["web".into()],
        });
        a.reconfigure(Some(&c), start);
        assert_eq!(a.announced(), vec![net("198.51.100.0/24")]);
        a.reconfigure(None, start);
        assert!(a.is_empty());
    }

    fn report(prefixes: &[(&str, bool)]) -> AnycastReport {
        AnycastReport {
            node: "n1".into(),
            hold_down_ms: 2000,
            stopping: false,
            prefixes: prefixes
                .iter()
                .map(|(p, a)| PrefixReport {
                    prefix: net(p),
                    apps: vec!["web".into()],
                    announce: *a,
                    since: String::new(),
                    reason: None,
                    change_in_ms: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_follower_states_everything_once_then_changes_and_withdraws_when_lost() {
        let lines = |c: Option<Vec<Change>>| -> Vec<String> {
            c.unwrap_or_default().iter().map(Change::exabgp).collect()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Follower::new(s(3));
        assert_eq!(
            lines(f.seen(&report(&[
                ("192.0.2.0/24", true),
                ("198.51.100.0/24", false)
            ]))),
            vec![
                "announce route 192.0.2.0/24 next-hop self",
                "withdraw route 198.51.100.0/24 next-hop self"
            ]
        );
        assert_eq!(
            f.seen(&report(&[
                ("192.0.2.0/24", true),
                ("198.51.100.0/24", false)
            ])),
            None
        );
        assert_eq!(
            lines(f.seen(&report(&[("198.51.100.0/24", true)]))),
            vec![
                "withdraw route 192.0.2.0/24 next-hop self",
                "announce route 198.51.100.0/24 next-hop self"
            ]
        );
        // Lost: the node's hold_down (2 s), not the initial 3 s.
        assert_eq!(f.lost(t0), None);
        assert_eq!(f.lost(t0 + s(1)), None);
        // An answer in between starts the count again.
        assert_eq!(f.seen(&report(&[("198.51.100.0/24", true)])), None);
        assert_eq!(f.lost(t0 + s(2)), None);
        assert_eq!(
            lines(f.lost(t0 + s(4))),
            vec!["withdraw route 198.51.100.0/24 next-hop self"]
        );
        assert_eq!(f.lost(t0 + s(5)), None);
        assert!(f.announced().is_empty());
        assert_eq!(
            lines(f.seen(&report(&[("198.51.100.0/24", true)]))),
            vec!["announce route 198.51.100.0/24 next-hop self"]
        );

        // Never reached: after the hold, it states that nothing is announced (a BIRD file
        // left from an earlier run is emptied).
        let mut f = Follower::new(s(3));
        assert_eq!(f.lost(t0), None);
        assert_eq!(f.lost(t0 + s(3)), Some(Vec::new()));
        assert_eq!(f.lost(t0 + s(4)), None);
    }

    #[test]
    fn the_bird_file_has_a_static_protocol_per_family() {
        let text = bird_include(&[net("192.0.2.0/24"), net("2001:db8::/48")]);
        assert!(text.contains(
            "protocol static switchyard_anycast4 {\n  ipv4;\n  route 192.0.2.0/24 blackhole;\n}"
        ));
        assert!(text.contains(
            "protocol static switchyard_anycast6 {\n  ipv6;\n  route 2001:db8::/48 blackhole;\n}"
        ));
        assert!(bird_include(&[]).contains("protocol static switchyard_anycast4 {\n  ipv4;\n}"));
    }

    #[test]
    fn an_app_is_unservable_when_its_load_balancer_has_no_healthy_pool() {
        use crate::core::compiled::fixture::compile;
        let rt = compile(
            &crate::core::compiled::fixture::ONE_POOL.replace(
                "default_pools = [\"p\"]",
                "default_pools = [\"p\"]\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nload_balancer = \"lb\"",
            ),
        );
        let mut view = View {
            pools: vec![crate::core::view::PoolView {
                healthy: true,
                origins: Vec::new(),
            }],
            sick: false,
        };
        assert!(unservable_apps(&rt, &view).is_empty());
        view.pools[0].healthy = false;
        let u = unservable_apps(&rt, &view);
        assert!(
            u["web"].contains("load balancer \"lb\" has no healthy pool (p)"),
            "{u:?}"
        );
    }
}
