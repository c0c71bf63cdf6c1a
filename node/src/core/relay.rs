//! The relay decision: which *path* a connection to the origin steering already chose takes,
//! straight from this node or through one peer node that reaches the origin (RON's one
//! intermediate hop). Steering still picks pool and origin; this only picks the path, so a
//! path down from here alone never makes the origin down (see `verdict::Verdict::Path`).
//!
//! Plain code over data, with the time passed in: the caller gathers this node's own row for
//! the origin ([`Direct`]), every peer's row and round trip ([`Peer`]), keeps a [`Hold`] per
//! (load balancer, pool, origin) and passes it back in with `now`. The tunnel that carries a
//! relayed connection is not here: the proxy asks [`decide`] and follows [`Path`].
//!
//! - `off`: always direct.
//! - `failover`: direct while this node's own path is up; when its own probes find the origin
//!   down and some peer reaches it, the peer with the lowest RTT(here, peer) + RTT(peer,
//!   origin).
//! - `fastest`: also through that peer when its path beats the direct one by a margin,
//!   RTT(here, peer) + RTT(peer, origin) + max(10 ms, 10 % of direct) < RTT(here, origin); a
//!   switch of path is held for [`HOLD_DOWN`] unless the current path goes down, so
//!   measurements wobbling around the margin do not flap it.
//!
//! One hop at most: a peer's row is its own direct observation, so a peer is only used when
//! it reaches the origin itself, never when it would relay in turn.
//!
//! The serving side's check is here too: [`admit`] resolves a peer's request (names, never
//! an address) against this node's config, or says why it is refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use switchyard_gossip::RefuseReason;

use crate::config::{AppConfig, RelayPolicy, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
use crate::core::compiled::{CompiledConfig, OriginKey};

/// How long a path chosen by `fastest` is kept while it still works, even when another looks
/// better: long enough to ride out RTT wobble, short enough to follow a real route change.
pub const HOLD_DOWN: Duration = Duration::from_secs(30);

/// How long a peer whose relay failed is passed over: as long as a path choice is held.
pub const SHUN: Duration = HOLD_DOWN;

/// How long a relay request through a peer is given to be answered, when the path's round
/// trip is known: the peer answers once it has connected to the origin, so one round trip
/// to it and one from it to the origin, twice over for queueing and loss, plus
/// [`ANSWER_SLACK`]. A peer that does not answer by then is passed over (and the next
/// tried) while the client's connect timeout still has time for it.
pub fn answer_bound(expected_rtt: Option<Duration>, left: Duration) -> Duration {
    expected_rtt.map_or(left, |rtt| (rtt * 2 + ANSWER_SLACK).min(left))
}

/// See [`answer_bound`].
pub const ANSWER_SLACK: Duration = Duration::from_secs(1);

/// The least a relayed path must win by under `fastest`...
pub const MIN_MARGIN: Duration = Duration::from_millis(10);

/// ...or this fraction of the direct RTT (in percent), if more.
pub const MARGIN_PERCENT: u32 = 10;

/// The margin a relayed path must beat the direct one by: max(10 ms, 10 % of `direct`).
pub fn margin(direct: Duration) -> Duration {
    MIN_MARGIN.max(direct * MARGIN_PERCENT / 100)
}

/// This node's own observation of the origin. `None` in [`Inputs::direct`] means this node
/// has no row (it does not probe the pool, or has not yet): the path is presumed up, as
/// steering presumes an unchecked origin up, and there is no RTT to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direct {
    /// This node's probes (or passive failures) find the origin up from here.
    pub up: bool,
    /// The moving average of this node's probe round trip to the origin.
    pub rtt: Option<Duration>,
}

/// One other node as a possible relay for the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: Arc<str>,
    /// SWIM believes it alive (a suspect or down member carries nothing).
    pub alive: bool,
    /// Its advert says it is ready (not draining, sick or in trouble).
    pub ready: bool,
    /// Its own row for the origin: its direct observation, never a relayed one. False when it
    /// has no row.
    pub origin_up: bool,
    /// Its probe round trip to the origin.
    pub origin_rtt: Option<Duration>,
    /// SWIM's round trip from this node to it.
    pub rtt: Option<Duration>,
    /// Network round trips in one probe of the origin's monitor (see
    /// `MonitorType::round_trips`): [`Peer::rtt`] counts that many times, so that it adds to
    /// the probe's figure like for like.
    pub trips: u32,
    /// A relay through it failed within the last [`SHUN`] (no answer, refused, no
    /// connection): SWIM may still call it alive when only the link from here is cut (its
    /// indirect acks come through others) and the QUIC round trip is then a stale figure.
    pub failed_lately: bool,
}

impl Peer {
    /// May carry a relayed connection: alive, ready, reaching the origin itself, answering
    /// this node (a round trip known: the mesh gives none over a cut path) and not failing
    /// this node's relays lately.
    pub fn eligible(&self) -> bool {
        self.alive && self.ready && self.origin_up && self.rtt.is_some() && !self.failed_lately
    }

    /// RTT(here, peer) + RTT(peer, origin) on the probe's scale (the SWIM round trip counted
    /// [`Peer::trips`] times), when both are known.
    pub fn cost(&self) -> Option<Duration> {
        Some(self.rtt? * self.trips.max(1) + self.origin_rtt?)
    }
}

/// Everything the decision reads, for one (load balancer, pool, origin).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs<'a> {
    pub policy: RelayPolicy,
    /// This node's own row for the origin; `None` without one.
    pub direct: Option<Direct>,
    /// Every other member the mesh knows, in any order.
    pub peers: &'a [Peer],
}

/// Why a connection goes through a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// This node's own path to the origin is down.
    DirectDown,
    /// `fastest`: the path through the peer beats the direct one by the margin (or did, and
    /// the hold-down keeps it).
    Faster,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::DirectDown => "direct path down",
            Why::Faster => "faster through the peer",
        }
    }
}

/// The path a new connection to the origin takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// Straight from this node (also when the direct path is down and no peer reaches the
    /// origin: the connection fails over as it would without relaying).
    Direct,
    /// Through `peer`, which connects to the origin itself; `expected_rtt` is RTT(here,
    /// peer) + RTT(peer, origin) when both are known.
    Via {
        peer: Arc<str>,
        expected_rtt: Option<Duration>,
        why: Why,
    },
}

impl Path {
    /// `direct` or `via PEER (why)`, for explain and status.
    pub fn words(&self) -> String {
        match self {
            Path::Direct => "direct".into(),
            Path::Via { peer, why, .. } => format!("via {peer} ({})", why.as_str()),
        }
    }
}

/// A decision and its reason in words, for explain and status (the RTTs compared included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub path: Path,
    pub reason: String,
}

/// The path last chosen for one (load balancer, pool, origin) and since when: the caller
/// keeps one per triple and passes it back to every [`decide`]. `Default` is "nothing chosen
/// yet".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hold {
    /// `None`: direct; `Some(peer)`: through that peer.
    via: Option<Arc<str>>,
    since: Option<Instant>,
}

impl Hold {
    /// The peer of the path held, if it is relayed.
    pub fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "unknown".into(), ms)
}

fn via_words(p: &Peer) -> String {
    let times = match p.trips {
        0 | 1 => String::new(),
        n => format!(" x{n} (the monitor's round trips)"),
    };
    format!(
        "via {}: {} to it{times} + {} from it to the origin",
        p.id,
        opt_ms(p.rtt),
        opt_ms(p.origin_rtt)
    )
}

/// Eligible peers, best first: lowest known cost, then those of unknown cost, ties by id so
/// every call (and every node) ranks them alike.
fn ranked(peers: &[Peer]) -> Vec<&Peer> {
    let mut v: Vec<&Peer> = peers.iter().filter(|p| p.eligible()).collect();
    v.sort_by(|a, b| {
        (a.cost().is_none(), a.cost(), &a.id).cmp(&(b.cost().is_none(), b.cost(), &b.id))
    });
    v
}

/// Decides the path for a new connection to the origin, updating `hold` (the caller's, for
/// this load balancer, pool and origin) with what was chosen at `now`.
pub fn decide(inp: &Inputs<'_>, hold: &mut Hold, now: Instant) -> Decision {
    let d = choose(inp, hold, now);
    let via = match &d.path {
        Path::Direct => None,
        Path::Via { peer, .. } => Some(peer.clone()),
    };
    if hold.since.is_none() || hold.via != via {
        *hold = Hold {
            via,
            since: Some(now),
        };
    }
    d
}

fn choose(inp: &Inputs<'_>, hold: &Hold, now: Instant) -> Decision {
    let direct = |reason: String| Decision {
        path: Path::Direct,
        reason,
    };
    let via = |p: &Peer, why: Why, reason: String| Decision {
        path: Path::Via {
            peer: p.id.clone(),
            expected_rtt: p.cost(),
            why,
        },
        reason,
    };
    if inp.policy == RelayPolicy::Off {
        return direct("direct: relay is off".into());
    }
    let ranked = ranked(inp.peers);
    let direct_up = inp.direct.is_none_or(|d| d.up);
    if !direct_up {
        return match ranked.first() {
            Some(p) => via(
                p,
                Why::DirectDown,
                format!(
                    "{} (the shortest path of {} peers reaching the origin): this node's own path is down",
                    via_words(p),
                    ranked.len()
                ),
            ),
            None => direct(
                "direct, though this node's own path is down: no ready peer reaches the origin"
                    .into(),
            ),
        };
    }
    if inp.policy == RelayPolicy::Failover {
        return direct("direct: this node's own path is up (relay = failover)".into());
    }
    let Some(direct_rtt) = inp.direct.and_then(|d| d.rtt) else {
        return direct("direct: no RTT from this node to compare paths with".into());
    };
    let m = margin(direct_rtt);
    let faster = ranked
        .iter()
        .find(|p| p.cost().is_some_and(|c| c + m < direct_rtt));
    let held_since = hold.since.filter(|s| now < *s + HOLD_DOWN);
    let held_peer = hold
        .via
        .as_ref()
        .and_then(|id| ranked.iter().find(|p| p.id == *id));
    match (faster, &hold.via, held_since) {
        // The path held is relayed and its peer still reaches the origin: kept during the
        // hold-down whatever the RTTs say now.
        (f, Some(_), Some(since)) if held_peer.is_some() && f.map(|p| &p.id) != hold.via.as_ref() => {
            let p = held_peer.expect("checked");
            via(
                p,
                Why::Faster,
                format!(
                    "{} vs direct {}: held for {} more (relay = fastest switches at most every {}s)",
                    via_words(p),
                    ms(direct_rtt),
                    ms(since + HOLD_DOWN - now),
                    HOLD_DOWN.as_secs()
                ),
            )
        }
        // Direct is held, and works: a faster peer waits out the hold-down.
        (Some(p), None, Some(since)) => direct(format!(
            "direct {}, though {} would win by the margin {}: held for {} more (relay = fastest switches at most every {}s)",
            ms(direct_rtt),
            via_words(p),
            ms(m),
            ms(since + HOLD_DOWN - now),
            HOLD_DOWN.as_secs()
        )),
        (Some(p), _, _) => via(
            p,
            Why::Faster,
            format!(
                "{} = {} beats direct {} by more than the margin {}",
                via_words(p),
                opt_ms(p.cost()),
                ms(direct_rtt),
                ms(m)
            ),
        ),
        (None, _, _) => direct(match ranked.iter().find(|p| p.cost().is_some()) {
            Some(p) => format!(
                "direct {}: the best peer path, {} = {}, does not win by the margin {}",
                ms(direct_rtt),
                via_words(p),
                opt_ms(p.cost()),
                ms(m)
            ),
            None => format!("direct {}: no peer path with known RTTs", ms(direct_rtt)),
        }),
    }
}

/// What a peer's relay request resolves to in this node's config: the load balancer, pool
/// and origin (indices into the compiled config it was checked against), and the timeouts
/// of the connection this node makes to the origin for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    pub lb: usize,
    pub pool: usize,
    pub origin: usize,
    /// The longest `connect_timeout` of the apps of the load balancer (the default without).
    pub connect_timeout: Duration,
    /// The longest `idle_timeout` of the apps of the load balancer (the default without):
    /// the asking node's app may be any of them, and the shortest would cut the others.
    pub idle_timeout: Duration,
}

/// Why a peer's relay request is refused: the reason the asker is told and the metric
/// counts, and the words the log gets, naming the thing at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefuseReason,
    pub why: String,
}

/// Checks a peer's request to relay to origin `origin` of pool `pool` for load balancer
/// `lb`, all by name, against this node's config: the three exist, the pool is one the load
/// balancer may use (on any node), the origin is in that pool and enabled, the load balancer
/// relays, and this node reaches the origin itself (`reaches`: its own row is not down, or
/// it has none). Names only, never an address: a peer cannot make this node an open proxy.
pub fn admit(
    rt: &CompiledConfig,
    lb: &str,
    pool: &str,
    origin: &str,
    reaches: impl FnOnce(&OriginKey) -> bool,
) -> Result<Carry, Refusal> {
    let refuse = |reason, why: String| Refusal { reason, why };
    let not_in = |why: String| refuse(RefuseReason::NotInConfig, why);
    let lb_idx = rt
        .lb_index(lb)
        .ok_or_else(|| not_in(format!("no load balancer {lb:?} in this node's config")))?;
    let pool_idx = rt
        .pool_index(pool)
        .ok_or_else(|| not_in(format!("no pool {pool:?} in this node's config")))?;
    let lb_cfg = rt
        .config
        .load_balancers
        .iter()
        .find(|l| l.name == lb)
        .ok_or_else(|| not_in(format!("no load balancer {lb:?} in this node's config")))?;
    if !lb_cfg.uses_pool(pool) {
        return Err(not_in(format!(
            "load balancer {lb:?} does not use pool {pool:?} in this node's config"
        )));
    }
    let p = &rt.pools[pool_idx];
    let origin_idx = p
        .origins
        .iter()
        .position(|o| &*o.name == origin)
        .ok_or_else(|| {
            not_in(format!(
                "no origin {origin:?} in pool {pool:?} of this node's config"
            ))
        })?;
    if !p.origins[origin_idx].enabled {
        return Err(refuse(
            RefuseReason::OriginDisabled,
            format!("origin {pool}/{origin} is disabled in this node's config"),
        ));
    }
    if rt.load_balancers[lb_idx].relay == RelayPolicy::Off {
        return Err(refuse(
            RefuseReason::NotRelaying,
            format!("load balancer {lb:?} has relay = \"off\" in this node's config"),
        ));
    }
    if !reaches(&rt.key(pool_idx, origin_idx)) {
        return Err(refuse(
            RefuseReason::OriginDown,
            format!("this node's own probes find origin {pool}/{origin} down"),
        ));
    }
    let apps = rt.config.apps.iter().filter(|a| a.load_balancer == lb);
    let longest =
        |get: fn(&AppConfig) -> Duration, default| apps.clone().map(get).max().unwrap_or(default);
    Ok(Carry {
        lb: lb_idx,
        pool: pool_idx,
        origin: origin_idx,
        connect_timeout: longest(|a| a.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        idle_timeout: longest(|a| a.idle_timeout, DEFAULT_IDLE_TIMEOUT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RelayPolicy::*;

    fn msd(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn up(rtt: u64) -> Option<Direct> {
        Some(Direct {
            up: true,
            rtt: Some(msd(rtt)),
        })
    }
    fn down() -> Option<Direct> {
        Some(Direct {
            up: false,
            rtt: None,
        })
    }
    /// A ready, alive peer `to` ms away that reaches the origin in `origin` ms.
    fn peer(id: &str, to: u64, origin: u64) -> Peer {
        Peer {
            id: id.into(),
            alive: true,
            ready: true,
            origin_up: true,
            origin_rtt: Some(msd(origin)),
            rtt: Some(msd(to)),
            trips: 1,
            failed_lately: false,
        }
    }
    fn once(policy: RelayPolicy, direct: Option<Direct>, peers: &[Peer]) -> Decision {
        let inp = Inputs {
            policy,
            direct,
            peers,
        };
        decide(&inp, &mut Hold::default(), Instant::now())
    }
    fn via_of(d: &Decision) -> Option<&str> {
        match &d.path {
            Path::Direct => None,
            Path::Via { peer, .. } => Some(peer),
        }
    }

    #[test]
    fn off_is_always_direct() {
        let peers = [peer("b", 1, 1)];
        for direct in [up(400), down(), None] {
            let d = once(Off, direct, &peers);
            assert_eq!(d.path, Path::Direct);
            assert!(d.reason.contains("relay is off"), "{}", d.reason);
        }
    }

    #[test]
    fn failover_relays_only_when_the_own_path_is_down_through_the_shortest_path() {
        // (direct, expected peer): b costs 160+170, c 100+300, d 50+250 (the shortest).
        let peers = [peer("b", 160, 170), peer("c", 100, 300), peer("d", 50, 250)];
        let cases = [
            (up(400), None),
            (None, None),
            (down(), Some("d")),
            (
                Some(Direct {
                    up: false,
                    rtt: Some(msd(5)),
                }),
                Some("d"),
            ),
        ];
        for (direct, want) in cases {
            let d = once(Failover, direct, &peers);
            assert_eq!(via_of(&d), want, "{direct:?}: {}", d.reason);
        }
        let d = once(Failover, down(), &peers);
        assert_eq!(
            d.path,
            Path::Via {
                peer: "d".into(),
                expected_rtt: Some(msd(300)),
                why: Why::DirectDown
            }
        );
        assert!(
            d.reason.contains("via d: 50.0 ms to it + 250.0 ms")
                && d.reason.contains("own path is down"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn only_alive_ready_peers_that_reach_the_origin_themselves_carry_a_connection() {
        let good = peer("z", 300, 300);
        let mut dead = peer("a", 1, 1);
        dead.alive = false;
        let mut unready = peer("b", 1, 1);
        unready.ready = false;
        // A peer whose own path is down (it would have to relay in turn: a second hop).
        let mut cut = peer("c", 1, 1);
        cut.origin_up = false;
        // A peer SWIM calls alive whose relay failed lately (the link to it is cut).
        let mut unanswering = peer("d", 1, 1);
        unanswering.failed_lately = true;
        // One the mesh gives no round trip to: what this node sent it went unanswered.
        let mut unheard = peer("e", 1, 1);
        unheard.rtt = None;
        let peers = [
            dead.clone(),
            unready.clone(),
            cut.clone(),
            unanswering.clone(),
            unheard.clone(),
            good,
        ];
        for policy in [Failover, Fastest] {
            let d = once(policy, down(), &peers);
            assert_eq!(via_of(&d), Some("z"), "{policy:?}: {}", d.reason);
        }
        let d = once(
            Failover,
            down(),
            &[dead, unready, cut, unanswering, unheard],
        );
        assert_eq!(d.path, Path::Direct);
        assert!(d.reason.contains("no ready peer reaches"), "{}", d.reason);
        assert_eq!(once(Fastest, down(), &[]).path, Path::Direct);
    }

    #[test]
    fn a_peer_is_given_twice_the_paths_round_trip_to_answer_within_the_time_left() {
        let left = Duration::from_secs(5);
        assert_eq!(answer_bound(Some(msd(330)), left), msd(1660));
        assert_eq!(answer_bound(Some(msd(330)), msd(400)), msd(400));
        assert_eq!(answer_bound(None, left), left, "unknown: all the time left");
    }

    #[test]
    fn ties_and_unknown_rtts_rank_deterministically() {
        // Its round trip to the origin not known yet (it has not probed it since it came up).
        let mut unknown = peer("a", 1, 1);
        unknown.origin_rtt = None;
        let peers = [peer("c", 10, 10), unknown.clone(), peer("b", 5, 15)];
        // b and c both cost 20 ms: the lower id wins, whatever the order given.
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let p: Vec<Peer> = order.iter().map(|&i| peers[i].clone()).collect();
            assert_eq!(via_of(&once(Failover, down(), &p)), Some("b"));
        }
        // A peer of unknown cost is still used when it is the only one.
        let d = once(Failover, down(), &[unknown]);
        assert_eq!(
            d.path,
            Path::Via {
                peer: "a".into(),
                expected_rtt: None,
                why: Why::DirectDown
            }
        );
        assert!(d.reason.contains("unknown"), "{}", d.reason);
    }

    #[test]
    fn fastest_relays_when_the_peer_path_wins_by_the_margin() {
        // Direct 400 ms: margin 40 ms. Through b: 160 + 170 = 330 ms, 330 + 40 < 400.
        let d = once(Fastest, up(400), &[peer("b", 160, 170)]);
        assert_eq!(
            d.path,
            Path::Via {
                peer: "b".into(),
                expected_rtt: Some(msd(330)),
                why: Why::Faster
            }
        );
        assert!(
            d.reason.contains("beats direct 400.0 ms") && d.reason.contains("margin 40.0 ms"),
            "{}",
            d.reason
        );
        // The same under failover stays direct: its own path is up.
        assert_eq!(
            once(Failover, up(400), &[peer("b", 160, 170)]).path,
            Path::Direct
        );
        // No RTT of its own to compare with: direct.
        let no_rtt = Some(Direct {
            up: true,
            rtt: None,
        });
        assert_eq!(once(Fastest, no_rtt, &[peer("b", 1, 1)]).path, Path::Direct);
        assert_eq!(once(Fastest, None, &[peer("b", 1, 1)]).path, Path::Direct);
    }

    #[test]
    fn a_peers_round_trip_counts_as_often_as_the_monitors_probe_takes_round_trips() {
        // An http monitor: this node's probe takes two round trips of 78 ms. A peer 80 ms
        // away next to the origin is no faster, however its one SWIM round trip compares.
        let mut near = peer("weu", 80, 1);
        assert_eq!(
            via_of(&once(Fastest, up(156), &[near.clone()])),
            Some("weu")
        );
        near.trips = 2;
        let d = once(Fastest, up(156), &[near]);
        assert_eq!(d.path, Path::Direct, "{}", d.reason);
        assert!(d.reason.contains("x2"), "{}", d.reason);
        // And 160 + 170 ms through a peer beats a 400 ms link, probe for probe.
        let mut far = peer("seas", 160, 2 * 170);
        far.trips = 2;
        assert_eq!(via_of(&once(Fastest, up(800), &[far])), Some("seas"));
    }

    #[test]
    fn margin_is_ten_ms_or_ten_percent_at_its_boundaries() {
        assert_eq!(margin(msd(50)), msd(10));
        assert_eq!(margin(msd(100)), msd(10));
        assert_eq!(margin(msd(400)), msd(40));
        // (direct, cost through the peer, relayed?): relayed only when cost + margin < direct.
        let cases = [
            (100, 89, true),
            (100, 90, false), // 90 + 10 = 100: not strictly less
            (50, 39, true),
            (50, 40, false),
            (400, 359, true),
            (400, 360, false), // 360 + 40 = 400
            (400, 399, false),
            (5, 0, false), // under 10 ms nothing wins by 10 ms
        ];
        for (direct, cost, relayed) in cases {
            let d = once(Fastest, up(direct), &[peer("b", cost / 2, cost - cost / 2)]);
            assert_eq!(
                via_of(&d).is_some(),
                relayed,
                "direct {direct}, via {cost}: {}",
                d.reason
            );
        }
    }

    #[test]
    fn hold_down_keeps_a_path_against_flapping_rtts_and_a_down_path_switches_at_once() {
        let t0 = Instant::now();
        let mut hold = Hold::default();
        let fast = [peer("b", 160, 170)]; // 330 ms
        let slow = [peer("b", 200, 200)]; // 400 ms: no win over 400 direct
        let run = |hold: &mut Hold, direct, peers: &[Peer], at: u64| {
            let inp = Inputs {
                policy: Fastest,
                direct,
                peers,
            };
            decide(&inp, hold, t0 + Duration::from_secs(at))
        };
        assert_eq!(via_of(&run(&mut hold, up(400), &fast, 0)), Some("b"));
        // RTTs flap within the hold-down: the relayed path is kept, and says so.
        for at in [1, 5, 10, 29] {
            let d = run(&mut hold, up(400), &slow, at);
            assert_eq!(via_of(&d), Some("b"), "at {at}s: {}", d.reason);
            assert!(d.reason.contains("held for"), "{}", d.reason);
        }
        // Past it, the direct path wins back, and is held in turn.
        assert_eq!(run(&mut hold, up(400), &slow, 30).path, Path::Direct);
        let d = run(&mut hold, up(400), &fast, 31);
        assert_eq!(d.path, Path::Direct, "{}", d.reason);
        assert!(d.reason.contains("held for"), "{}", d.reason);
        assert_eq!(via_of(&run(&mut hold, up(400), &fast, 60)), Some("b"));
        // The relayed path goes down (b no longer ready): direct at once, inside the hold.
        let mut gone = fast.clone();
        gone[0].ready = false;
        assert_eq!(run(&mut hold, up(400), &gone, 61).path, Path::Direct);
        // A better peer does not displace the held one inside the hold-down...
        let both = [peer("b", 160, 170), peer("c", 10, 10)];
        assert_eq!(via_of(&run(&mut hold, up(400), &both, 100)), Some("c"));
        let both_b = [peer("b", 10, 10), peer("c", 160, 170)];
        assert_eq!(via_of(&run(&mut hold, up(400), &both_b, 101)), Some("c"));
        // ...but the direct path going down switches at once, whatever is held.
        let mut hold = Hold::default();
        assert_eq!(run(&mut hold, up(400), &slow, 0).path, Path::Direct);
        let d = run(&mut hold, down(), &slow, 1);
        assert_eq!(via_of(&d), Some("b"), "{}", d.reason);
        assert_eq!(hold.via(), Some("b"));
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        (
            0u8..6,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0u64..500),
            proptest::option::of(0u64..500),
            any::<bool>(),
        )
            .prop_map(|(id, alive, ready, origin_up, o, r, failed_lately)| Peer {
                id: format!("n{id}").into(),
                alive,
                ready,
                origin_up,
                origin_rtt: o.map(msd),
                rtt: r.map(msd),
                trips: 1,
                failed_lately,
            })
    }

    fn arb_direct() -> impl Strategy<Value = Option<Direct>> {
        proptest::option::of((any::<bool>(), proptest::option::of(0u64..800)).prop_map(
            |(up, rtt)| Direct {
                up,
                rtt: rtt.map(msd),
            },
        ))
    }

    proptest! {
        #[test]
        fn never_an_ineligible_peer_and_off_is_always_direct(
            policy in prop_oneof![Just(Off), Just(Failover), Just(Fastest)],
            steps in proptest::collection::vec(
                (arb_direct(), proptest::collection::vec(arb_peer(), 0..5), 0u64..20),
                1..12,
            ),
        ) {
            let mut hold = Hold::default();
            let mut now = Instant::now();
            for (direct, peers, dt) in steps {
                now += Duration::from_secs(dt);
                let d = decide(&Inputs { policy, direct, peers: &peers }, &mut hold, now);
                match &d.path {
                    Path::Direct => {}
                    Path::Via { peer, .. } => {
                        prop_assert!(policy != Off);
                        prop_assert!(
                            peers.iter().any(|p| p.id == *peer && p.eligible()),
                            "{peer} is not eligible: {peers:?}"
                        );
                        if policy == Failover {
                            prop_assert!(direct.is_some_and(|d| !d.up));
                        }
                    }
                }
                prop_assert_eq!(hold.via(), via_of(&d));
            }
        }
    }

    #[test]
    fn admit_resolves_names_in_this_nodes_config_or_says_what_is_not_there() {
        let rt = crate::core::compiled::fixture::compile(
            r#"
[node]
id = "n1"
region = "WEU"
[[pool]]
name = "p"
origins = [{ name = "o", address = "127.0.0.1:1" }, { name = "off", address = "127.0.0.1:2", enabled = false }]
[[pool]]
name = "q"
origins = [{ name = "q1", address = "127.0.0.1:3" }]
[[pool]]
name = "r"
origins = [{ name = "r1", address = "127.0.0.1:4" }]
[[load_balancer]]
name = "lb"
default_pools = ["p"]
node_pools = { other = ["r"] }
[[load_balancer]]
name = "quiet"
default_pools = ["p"]
relay = "off"
[[load_balancer]]
name = "other"
default_pools = ["q"]
[[app]]
name = "a"
listen = "127.0.0.1:0"
load_balancer = "lb"
idle_timeout = "20s"
[[app]]
name = "b"
listen = "127.0.0.1:0"
load_balancer = "lb"
idle_timeout = "90s"
connect_timeout = "2s"
"#,
        );
        let reason = |lb, pool, origin, reaches: bool| {
            admit(&rt, lb, pool, origin, |_| reaches).map_err(|r| (r.reason, r.why))
        };
        let carry = reason("lb", "p", "o", true).unwrap();
        assert_eq!((carry.lb, carry.pool, carry.origin), (0, 0, 0));
        assert_eq!(carry.idle_timeout, msd(90_000), "the longest of the apps'");
        assert_eq!(
            carry.connect_timeout, DEFAULT_CONNECT_TIMEOUT,
            "app a's default"
        );
        // Another node's node_pools count: its clients may be sent there.
        assert!(reason("lb", "r", "r1", true).is_ok());
        let other = reason("other", "q", "q1", true).unwrap();
        assert_eq!(other.idle_timeout, DEFAULT_IDLE_TIMEOUT, "no app uses it");
        for (lb, pool, origin, names) in [
            ("nope", "p", "o", "load balancer \"nope\""),
            ("lb", "nope", "o", "pool \"nope\""),
            ("lb", "p", "nope", "origin \"nope\""),
            ("lb", "q", "q1", "does not use pool \"q\""),
            ("lb", "p", "q1", "no origin \"q1\" in pool \"p\""),
        ] {
            let (r, why) = reason(lb, pool, origin, true).unwrap_err();
            assert_eq!(r, RefuseReason::NotInConfig, "{lb}/{pool}/{origin}");
            assert!(why.contains(names), "{why}");
        }
        assert_eq!(
            reason("lb", "p", "off", true).unwrap_err().0,
            RefuseReason::OriginDisabled
        );
        assert_eq!(
            reason("quiet", "p", "o", true).unwrap_err().0,
            RefuseReason::NotRelaying
        );
        assert_eq!(
            reason("lb", "p", "o", false).unwrap_err().0,
            RefuseReason::OriginDown
        );
    }
}
