//! The health view: what the node and the mesh say about every origin of a compiled config,
//! judged as Cloudflare's regional health does (a region's quorum first, then a majority of
//! regions), indexed like the config so steering reads it without lookups. Built from this
//! node's `Report` and the other nodes' `RemoteReport`s; immutable once built, and published
//! together with its config as one `Snapshot`, so a connection never sees a view of one
//! config applied to another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_geo::Region;

use crate::config::{Quorum, RelayPolicy};
use crate::core::compiled::{CompiledConfig, OriginKey};
use crate::core::health::OriginHealth;
use crate::core::verdict::Verdict;

/// A node's health observations, one row per probed origin.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: HashMap<OriginKey, OriginHealth>,
}

/// Health of one origin as steering sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OriginView {
    /// Enabled and healthy as seen from this node's region (else globally).
    pub up: bool,
    /// Mean RTT from this node's region (else from everywhere).
    pub rtt: Option<Duration>,
    pub enabled: bool,
    /// Whether the pool has a monitor: without one, every enabled origin is up everywhere.
    pub monitored: bool,
    /// Per region (by `Region::index`): whether a quorum of its live observers sees the
    /// origin up; None where nobody observes it.
    pub regional: [Option<bool>; 13],
    /// Per region: the mean RTT its observers measured.
    pub regional_rtt: [Option<Duration>; 13],
    /// A majority of observing regions see it up; None without observers.
    pub global: Option<bool>,
    /// This node's own verdict on the origin, while its probes find it down.
    pub verdict: Option<Verdict>,
    /// This node's own probes find it down (and the node is not sick): whatever a region's
    /// quorum says, a connection from here would not reach it.
    pub down_here: bool,
    /// Down here by the path alone (verdict `path`) while a live peer's own row finds it
    /// up: a load balancer that relays keeps it, and reaches it through a peer.
    pub reached_by_peer: bool,
}

impl OriginView {
    /// An origin of a pool without a monitor, or one nobody has checked yet.
    pub fn unobserved(enabled: bool, monitored: bool) -> OriginView {
        OriginView {
            up: enabled,
            rtt: None,
            enabled,
            monitored,
            regional: [None; 13],
            regional_rtt: [None; 13],
            global: None,
            verdict: None,
            down_here: false,
            reached_by_peer: false,
        }
    }

    /// Health as seen from `region`: that region's judgement when it has observers, else
    /// `node_region`'s, else global; an origin nobody observes is presumed up. An origin this
    /// node's own probes find down is down from here whatever the region says: the
    /// connection is made from this node.
    pub fn up_from(&self, region: Region, node_region: Region) -> bool {
        if !self.enabled || self.down_here {
            return false;
        }
        if !self.monitored {
            return true;
        }
        self.regional[region.index()]
            .or(self.regional[node_region.index()])
            .or(self.global)
            .unwrap_or(true)
    }

    /// As [`OriginView::up_from`], for a load balancer with `relay` policy: an origin down
    /// from here by the path alone that a peer reaches stays up unless `relay` is off (the
    /// connection then goes through the peer), judged by global health, which leaves this
    /// node's path row out. A path down from here alone does not make the origin down.
    pub fn up_for(&self, region: Region, node_region: Region, relay: RelayPolicy) -> bool {
        if self.kept_by_relay(relay) {
            return self.enabled && self.global.unwrap_or(true);
        }
        self.up_from(region, node_region)
    }

    /// Whether [`OriginView::up_for`] keeps the origin only because a peer reaches it.
    pub fn kept_by_relay(&self, relay: RelayPolicy) -> bool {
        relay != RelayPolicy::Off && self.down_here && self.reached_by_peer
    }

    /// RTT as measured from `region`, else from `node_region`.
    pub fn rtt_from(&self, region: Region, node_region: Region) -> Option<Duration> {
        self.regional_rtt[region.index()].or(self.regional_rtt[node_region.index()])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub healthy: bool,
    pub origins: Vec<OriginView>,
}

/// The health of every pool and origin of a compiled config, indexed like it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub pools: Vec<PoolView>,
    /// This node is sick (`verdict::is_sick`): its own rows were set aside and the view is
    /// the mesh's.
    pub sick: bool,
}

/// One node's latest row for one origin, as the view weighs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Obs {
    pub node: Arc<str>,
    pub region: Region,
    pub healthy: bool,
    pub rtt: Option<Duration>,
    /// Time since the row was written (local) or last received (remote).
    pub age: Duration,
    /// On a down row, whose fault its writer found it to be. A row down by the writer's path
    /// alone counts in its region and not in global health.
    pub verdict: Option<Verdict>,
}

impl Obs {
    /// Down, and only the writer's path is to blame.
    fn path_only(&self) -> bool {
        !self.healthy && self.verdict == Some(Verdict::Path)
    }
}

/// Another node's rows, as the mesh delivered them.
#[derive(Debug, Clone)]
pub struct RemoteReport {
    pub node: Arc<str>,
    pub region: Region,
    /// False while SWIM believes the node down: its rows then count nowhere.
    pub live: bool,
    pub rows: HashMap<OriginKey, Obs>,
}

/// What the mesh concludes about one origin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Judgement {
    /// Per observing region: whether its live observers meet the quorum.
    pub regions: Vec<(Region, bool)>,
    /// A majority of the observing regions see it up; None without observers.
    pub global: Option<bool>,
    /// What steering uses: the receiving node's region when it has observers, else global.
    pub healthy: Option<bool>,
    /// Mean RTT seen from the node's region (or from everywhere when it has none).
    pub rtt: Option<Duration>,
    /// Per observing region with RTT data, the mean RTT its observers measured.
    pub region_rtt: Vec<(Region, Duration)>,
}

/// Weighs the observations of one origin, as Cloudflare's regional health does: first the
/// health as seen from `region`, then global health. A row down by its writer's path alone
/// (`Verdict::Path`) counts in its region's quorum but not towards global health: a region
/// whose only down votes are such rows votes with its other observers, or not at all.
pub fn judge(obs: &[Obs], region: Region, quorum: Quorum) -> Judgement {
    // Per region: up and total votes, then the same without path-only rows.
    let mut tally: Vec<(Region, [usize; 4])> = Vec::new();
    for o in obs {
        let i = match tally.iter().position(|(r, _)| *r == o.region) {
            Some(i) => i,
            None => {
                tally.push((o.region, [0; 4]));
                tally.len() - 1
            }
        };
        let t = &mut tally[i].1;
        t[0] += usize::from(o.healthy);
        t[1] += 1;
        if !o.path_only() {
            t[2] += usize::from(o.healthy);
            t[3] += 1;
        }
    }
    tally.sort_by_key(|(r, _)| *r);
    let regions: Vec<(Region, bool)> = tally
        .iter()
        .map(|(r, t)| (*r, quorum.met(t[0], t[1])))
        .collect();
    let voting: Vec<bool> = tally
        .iter()
        .filter(|(_, t)| t[3] > 0)
        .map(|(_, t)| quorum.met(t[2], t[3]))
        .collect();
    let global = if voting.is_empty() {
        None
    } else {
        let up = voting.iter().filter(|h| **h).count();
        Some(up * 2 > voting.len())
    };
    let local = regions.iter().find(|(r, _)| *r == region).map(|(_, h)| *h);
    let mean = |it: &mut dyn Iterator<Item = Duration>| {
        let (sum, n) = it.fold((Duration::ZERO, 0u32), |(s, n), d| (s + d, n + 1));
        (n > 0).then(|| sum / n)
    };
    let rtt = mean(
        &mut obs
            .iter()
            .filter(|o| o.region == region)
            .filter_map(|o| o.rtt),
    )
    .or_else(|| mean(&mut obs.iter().filter_map(|o| o.rtt)));
    let region_rtt = regions
        .iter()
        .filter_map(|(r, _)| {
            mean(&mut obs.iter().filter(|o| o.region == *r).filter_map(|o| o.rtt)).map(|d| (*r, d))
        })
        .collect();
    Judgement {
        region_rtt,
        healthy: local.or(global),
        regions,
        global,
        rtt,
    }
}

impl View {
    /// Builds the view from this node's report alone.
    pub fn build(rt: &CompiledConfig, report: &Report) -> View {
        View::build_mesh(rt, report, &[], Quorum::Majority, Duration::ZERO)
    }

    /// Builds the view from this node's report and the other nodes' (`remote`). An origin of
    /// a monitored pool is up when the mesh judges it so (`judge`); an origin nobody has
    /// checked yet is presumed up; a pool without a monitor counts every enabled origin up.
    pub fn build_mesh(
        rt: &CompiledConfig,
        report: &Report,
        remote: &[RemoteReport],
        quorum: Quorum,
        local_age: Duration,
    ) -> View {
        let mut obs = Vec::new();
        let pools = rt
            .pools
            .iter()
            .map(|p| {
                let origins: Vec<OriginView> = p
                    .origins
                    .iter()
                    .map(|o| {
                        if p.monitor.is_none() {
                            return OriginView::unobserved(o.enabled, false);
                        }
                        let key = OriginKey {
                            pool: p.name.clone(),
                            origin: o.name.clone(),
                        };
                        observations(rt, &key, report, remote, local_age, &mut obs);
                        let j = judge(&obs, rt.region, quorum);
                        let mut v = OriginView::unobserved(o.enabled, true);
                        v.up = o.enabled && j.healthy.unwrap_or(true);
                        v.rtt = j.rtt;
                        v.global = j.global;
                        for (r, h) in &j.regions {
                            v.regional[r.index()] = Some(*h);
                        }
                        for (r, rtt) in &j.region_rtt {
                            v.regional_rtt[r.index()] = Some(*rtt);
                        }
                        v
                    })
                    .collect();
                let up = origins.iter().filter(|o| o.up).count();
                PoolView {
                    healthy: up >= p.minimum_origins,
                    origins,
                }
            })
            .collect();
        View { pools, sick: false }
    }

    /// Marks each origin with this node's own verdict from `report`, and the view as built
    /// without this node's rows when `sick`; an origin down here by the path alone is marked
    /// reached by a peer when a live one in `remote` finds it up itself.
    pub fn mark_own(
        &mut self,
        rt: &CompiledConfig,
        report: &Report,
        remote: &[RemoteReport],
        sick: bool,
    ) {
        self.sick = sick;
        for (pi, pool) in self.pools.iter_mut().enumerate() {
            for (oi, o) in pool.origins.iter_mut().enumerate() {
                let key = rt.key(pi, oi);
                o.verdict = report
                    .rows
                    .get(&key)
                    .filter(|r| r.checked && !r.healthy)
                    .and_then(|r| r.verdict);
                o.down_here = o.verdict.is_some() && !sick;
                // Peers' rows are their own direct observations (relayed paths write none),
                // so a peer found here reaches the origin in one hop.
                o.reached_by_peer = o.down_here
                    && o.verdict == Some(Verdict::Path)
                    && remote.iter().any(|r| {
                        r.live
                            && r.node != rt.node_id
                            && r.rows.get(&key).is_some_and(|row| row.healthy)
                    });
                if o.down_here {
                    o.up = false;
                }
            }
            let up = pool.origins.iter().filter(|o| o.up).count();
            pool.healthy = up >= rt.pools[pi].minimum_origins;
        }
    }
}

/// Collects into `out` the observations of `key` that count: this node's, once checked, and
/// those of live remote nodes.
pub fn observations(
    rt: &CompiledConfig,
    key: &OriginKey,
    report: &Report,
    remote: &[RemoteReport],
    local_age: Duration,
    out: &mut Vec<Obs>,
) {
    out.clear();
    if let Some(row) = report.rows.get(key).filter(|r| r.checked) {
        out.push(Obs {
            node: rt.node_id.clone(),
            region: rt.region,
            healthy: row.healthy,
            rtt: row.rtt,
            age: local_age,
            verdict: row.verdict,
        });
    }
    for r in remote.iter().filter(|r| r.live && r.node != rt.node_id) {
        if let Some(o) = r.rows.get(key) {
            out.push(o.clone());
        }
    }
}

/// A compiled config and the view built over it, published together.
#[derive(Debug)]
pub struct Snapshot {
    pub rt: Arc<CompiledConfig>,
    pub view: Arc<View>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(node: &str, region: Region, healthy: bool, rtt_ms: u64) -> Obs {
        Obs {
            node: node.into(),
            region,
            healthy,
            rtt: Some(Duration::from_millis(rtt_ms)),
            age: Duration::ZERO,
            verdict: (!healthy).then_some(Verdict::Origin),
        }
    }

    #[test]
    fn a_row_down_by_its_path_alone_counts_in_its_region_not_globally() {
        use Region::*;
        let path = |node: &str, region| Obs {
            verdict: Some(Verdict::Path),
            ..obs(node, region, false, 0)
        };
        // WNAM's only observer cannot reach it; WEU and SEAS can.
        let o = [
            path("n1", Wnam),
            obs("w1", Weu, true, 10),
            obs("s1", Seas, true, 10),
        ];
        let j = judge(&o, Wnam, Quorum::Majority);
        assert_eq!(j.regions, vec![(Wnam, false), (Weu, true), (Seas, true)]);
        assert_eq!(j.healthy, Some(false), "down from WNAM: its path is cut");
        assert_eq!(j.global, Some(true));
        assert_eq!(judge(&o, Weu, Quorum::Majority).healthy, Some(true));
        // Two regions' paths are cut and one reaches it: globally up all the same, where
        // origin verdicts would have made it down.
        let o = [path("n1", Wnam), path("e1", Enam), obs("w1", Weu, true, 10)];
        assert_eq!(judge(&o, Neas, Quorum::Majority).global, Some(true));
        let o = [
            obs("n1", Wnam, false, 0),
            obs("e1", Enam, false, 0),
            obs("w1", Weu, true, 10),
        ];
        assert_eq!(judge(&o, Neas, Quorum::Majority).global, Some(false));
        // Path rows alone: no global vote at all.
        assert_eq!(
            judge(&[path("n1", Wnam)], Neas, Quorum::Majority).global,
            None
        );
    }

    #[test]
    fn own_region_first_then_global() {
        use Region::*;
        // WEU sees it down (2 of 3), WNAM and SEAS see it up.
        let o = [
            obs("w1", Weu, false, 10),
            obs("w2", Weu, false, 10),
            obs("w3", Weu, true, 10),
            obs("n1", Wnam, true, 80),
            obs("s1", Seas, true, 160),
        ];
        let j = judge(&o, Weu, Quorum::Majority);
        assert_eq!(j.regions, vec![(Wnam, true), (Weu, false), (Seas, true)]);
        assert_eq!(j.global, Some(true));
        assert_eq!(j.healthy, Some(false), "the node's own region wins");
        assert_eq!(j.rtt, Some(Duration::from_millis(10)));
        // A node in a region with no observer uses global health and everyone's RTT.
        let j = judge(&o, Neas, Quorum::Majority);
        assert_eq!(j.healthy, Some(true));
        assert_eq!(j.rtt, Some(Duration::from_millis(54)));
        // Nobody observes: no judgement.
        assert_eq!(judge(&[], Weu, Quorum::Majority).healthy, None);
    }

    #[test]
    fn quorum_rules() {
        use Region::*;
        let o = [
            obs("a", Weu, true, 1),
            obs("b", Weu, false, 1),
            obs("c", Weu, false, 1),
        ];
        let at = |q| judge(&o, Weu, q).healthy;
        assert_eq!(at(Quorum::Any), Some(true));
        assert_eq!(at(Quorum::Majority), Some(false));
        assert_eq!(at(Quorum::All), Some(false));
        assert_eq!(at(Quorum::Fraction(0.3)), Some(true));
        assert_eq!(at(Quorum::Fraction(0.5)), Some(false));
        // Global health is a majority of observing regions: 1 of 2 is not.
        let split = [obs("a", Weu, true, 1), obs("b", Wnam, false, 1)];
        assert_eq!(judge(&split, Seas, Quorum::Majority).global, Some(false));
    }

    #[test]
    fn an_origin_this_nodes_probes_find_down_is_not_used_from_here_unless_the_node_is_sick() {
        use crate::core::compiled::fixture;
        let rt = fixture::compile(fixture::ONE_POOL);
        let key = rt.key(0, 0);
        let mut report = Report::default();
        let mut row = OriginHealth::unchecked(tokio::time::Instant::now());
        row.checked = true;
        row.healthy = false;
        row.verdict = Some(Verdict::Path);
        report.rows.insert(key.clone(), row);
        // WNAM's node reaches it: seen from WNAM it is up.
        let peer = RemoteReport {
            node: "far".into(),
            region: Region::Wnam,
            live: true,
            rows: HashMap::from([(key, obs("far", Region::Wnam, true, 80))]),
        };
        let mut view = View::build_mesh(
            &rt,
            &report,
            std::slice::from_ref(&peer),
            Quorum::Majority,
            Duration::ZERO,
        );
        view.mark_own(&rt, &report, std::slice::from_ref(&peer), false);
        let o = &view.pools[0].origins[0];
        assert!(
            !o.up_from(Region::Wnam, Region::Weu),
            "unreachable from this node"
        );
        // ... but a load balancer that relays keeps it: a peer reaches it.
        assert!(o.reached_by_peer);
        assert!(o.up_for(Region::Weu, Region::Weu, RelayPolicy::Failover));
        assert!(o.up_for(Region::Weu, Region::Weu, RelayPolicy::Fastest));
        assert!(!o.up_for(Region::Weu, Region::Weu, RelayPolicy::Off));
        assert!(!view.pools[0].healthy);
        // A sick node sets its own probes aside.
        let mut view = View::build_mesh(
            &rt,
            &Report::default(),
            &[peer],
            Quorum::Majority,
            Duration::ZERO,
        );
        view.mark_own(&rt, &report, &[], true);
        assert!(view.pools[0].origins[0].up_from(Region::Wnam, Region::Weu));
        assert_eq!(view.pools[0].origins[0].verdict, Some(Verdict::Path));
        assert!(view.pools[0].healthy);
    }

    #[test]
    fn relaying_keeps_only_an_origin_down_by_this_nodes_path_that_a_live_peer_reaches() {
        use crate::core::compiled::fixture;
        let rt = fixture::compile(fixture::ONE_POOL);
        let key = rt.key(0, 0);
        let kept = |verdict, peer_up, peer_live| {
            let mut report = Report::default();
            let mut row = OriginHealth::unchecked(tokio::time::Instant::now());
            row.checked = true;
            row.healthy = false;
            row.verdict = Some(verdict);
            report.rows.insert(key.clone(), row);
            let peer = RemoteReport {
                node: "far".into(),
                region: Region::Wnam,
                live: peer_live,
                rows: HashMap::from([(key.clone(), obs("far", Region::Wnam, peer_up, 80))]),
            };
            let remote = [peer];
            let mut view =
                View::build_mesh(&rt, &report, &remote, Quorum::Majority, Duration::ZERO);
            view.mark_own(&rt, &report, &remote, false);
            view.pools[0].origins[0].up_for(Region::Weu, Region::Weu, RelayPolicy::Failover)
        };
        assert!(kept(Verdict::Path, true, true));
        assert!(
            !kept(Verdict::Origin, true, true),
            "the origin itself is down"
        );
        assert!(
            !kept(Verdict::Unconfirmed, true, true),
            "nobody confirmed a peer reaches it"
        );
        assert!(
            !kept(Verdict::Pending, true, true),
            "peers are still being asked"
        );
        assert!(
            !kept(Verdict::Path, false, true),
            "the peer no longer reaches it"
        );
        assert!(!kept(Verdict::Path, true, false), "the peer is not live");
    }

    #[test]
    fn a_node_that_has_not_probed_yet_steers_with_the_mesh() {
        use crate::core::compiled::fixture;
        let rt = fixture::compile(fixture::ONE_POOL);
        let key = rt.key(0, 0);
        // This node's own row exists but no round has finished: it must not count.
        let mut report = Report::default();
        report.rows.insert(
            key.clone(),
            OriginHealth::unchecked(tokio::time::Instant::now()),
        );
        let peer = RemoteReport {
            node: "old-timer".into(),
            region: Region::Weu,
            live: true,
            rows: HashMap::from([(key.clone(), obs("old-timer", Region::Weu, false, 3))]),
        };
        let view = View::build_mesh(
            &rt,
            &report,
            std::slice::from_ref(&peer),
            Quorum::Majority,
            Duration::ZERO,
        );
        assert!(!view.pools[0].origins[0].up, "the mesh says down");
        // Once the peer is declared down, its rows stop counting.
        let gone = RemoteReport {
            live: false,
            ..peer
        };
        let view = View::build_mesh(&rt, &report, &[gone], Quorum::Majority, Duration::ZERO);
        assert!(
            view.pools[0].origins[0].up,
            "nobody live observes it: presumed up"
        );
    }
}
