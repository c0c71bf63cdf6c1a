//! The mesh's DNS answers, decided: for a name and a client region, which nodes' addresses
//! to answer, best first, and why every other node is not answered. Data in (each node as
//! its signed advert in the mesh describes it), decisions out: the `dns` shell precomputes
//! these per name, address family and client region, and serves them. Every node holds the
//! same adverts, so every node decides the same for the same client.
//!
//! The rules, in order: a node is answered when it is alive in the mesh, ready (its `/ready`
//! would say 200) and can serve the name's app now (its load balancer has a healthy pool in
//! that node's own view), and has an address of the family asked. The client's region comes
//! first, then the other nodes by round-trip time from the client's region: what the nodes of
//! that region measure to the node's region (their SWIM round trips, advertised), else what
//! the node's region measures back, else the distance between the two regions' centres. Ties
//! (the same region, or round trips within the same 10 ms) are broken by a hash of the name
//! and the node id, the same on every node, which also spreads names over equal nodes. When no
//! node meets every rule, one rule at a time is relaxed ([`Relaxed`]) rather than answering
//! nothing: a client sent to a node that may serve is better off than one sent nowhere.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use switchyard_geo::Region;
use switchyard_gossip::hash::{fnv1a, FNV_OFFSET};
use switchyard_gossip::Advert;

use crate::core::compiled::CompiledConfig;
use crate::core::view::View;

/// Client regions answers are precomputed for: the 13 regions, then "unknown".
pub const SLOTS: usize = 14;

/// Round trips within this many milliseconds rank alike (the hash decides), so that jitter in
/// the measurements does not reshuffle the answers.
const RTT_BUCKET_MS: u32 = 10;

/// The slot of a client region ([`SLOTS`]).
pub fn slot(region: Option<Region>) -> usize {
    region.map_or(SLOTS - 1, Region::index)
}

/// The client region of a slot.
pub fn region_of_slot(slot: usize) -> Option<Region> {
    Region::ALL.get(slot).copied()
}

/// One node as the mesh describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub region: Region,
    pub addresses: Vec<IpAddr>,
    /// This node, or a member SWIM believes alive or suspect.
    pub alive: bool,
    /// Not draining, not sick, no local trouble.
    pub ready: bool,
    /// It answers DNS for the zone: one of the zone's nameservers.
    pub nameserver: bool,
    /// The names its apps serve, sorted, and whether each can be served now.
    pub names: Vec<(String, bool)>,
    /// Its mean round trip to each region's members, in milliseconds.
    pub rtt_ms: Vec<(Region, u32)>,
}

impl Node {
    /// Whether it has `name`, and if so whether it can serve it now.
    fn serves(&self, name: &str) -> Option<bool> {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, serving)| *serving)
    }

    fn rtt_to(&self, region: Region) -> Option<u32> {
        self.rtt_ms
            .iter()
            .find(|(r, _)| *r == region)
            .map(|(_, ms)| *ms)
    }

    fn has(&self, family: Family) -> bool {
        self.addresses.iter().any(|a| family.of(*a))
    }

    /// A node as its advert in the mesh describes it.
    pub fn from_advert(id: &str, region: Region, advert: &Advert, alive: bool) -> Node {
        Node {
            id: id.to_string(),
            region,
            addresses: advert.addresses.clone(),
            alive,
            ready: advert.ready,
            nameserver: advert.nameserver,
            names: advert.names.clone(),
            rtt_ms: advert.rtt_ms.clone(),
        }
    }

    /// What this node advertises of itself.
    pub fn advert(&self) -> Advert {
        Advert {
            addresses: self.addresses.clone(),
            ready: self.ready,
            nameserver: self.nameserver,
            names: self.names.clone(),
            rtt_ms: self.rtt_ms.clone(),
        }
    }

    /// This node as it is now: its config's public addresses and names, whether each name
    /// can be served in `view`, `ready`, and its round trips (`rtt_ms`, see [`settle_rtt`]).
    pub fn local(
        rt: &CompiledConfig,
        view: &View,
        ready: bool,
        rtt_ms: Vec<(Region, u32)>,
    ) -> Node {
        let c = &rt.config;
        Node {
            id: c.node.id.clone(),
            region: c.node.region,
            addresses: c.node.public_addresses.clone(),
            alive: true,
            ready,
            nameserver: c.dns.is_some(),
            names: served_names(rt, view),
            rtt_ms,
        }
    }
}

/// The round trips to advertise: `measured` (per region, sorted), except that a region's
/// value moves only when it moved by at least a fifth and 5 ms from `advertised`, so that
/// jitter does not push an advert to the whole mesh on every SWIM probe.
pub fn settle_rtt(advertised: &[(Region, u32)], measured: &[(Region, u32)]) -> Vec<(Region, u32)> {
    measured
        .iter()
        .map(|&(region, ms)| {
            let old = advertised.iter().find(|(r, _)| *r == region).map(|x| x.1);
            match old {
                Some(old) if old.abs_diff(ms) < 5 || old.abs_diff(ms) * 5 < old => (region, old),
                _ => (region, ms),
            }
        })
        .collect()
}

/// An address family: what an A (V4) or AAAA (V6) question asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn word(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The rule a choice had to relax because no node met them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relaxed {
    /// Nothing: every node answered is alive, ready and can serve the name.
    Nothing,
    /// No ready node can serve the name: alive nodes that can, though not ready (draining,
    /// sick or in trouble).
    Ready,
    /// No alive node can serve the name now (its pools are down in every node's view):
    /// alive, ready nodes that have it; they take the connection with their fallback pool.
    Serving,
    /// Both of the above: alive nodes that have the name.
    ReadyAndServing,
    /// No node that has the name is alive in the mesh's view: all that have it.
    Alive,
}

impl Relaxed {
    /// What was relaxed, for explain.
    pub fn describe(self) -> &'static str {
        match self {
            Relaxed::Nothing => "every node answered is alive, ready and can serve the name",
            Relaxed::Ready => {
                "no ready node can serve the name: answering alive nodes that can, though not ready"
            }
            Relaxed::Serving => {
                "no alive node can serve the name now (its pools are down in every view): \
                 answering alive, ready nodes that have it"
            }
            Relaxed::ReadyAndServing => {
                "no alive node is both ready and able to serve the name: answering alive nodes that have it"
            }
            Relaxed::Alive => {
                "no node that has the name is alive in the mesh: answering every node that has it"
            }
        }
    }

    /// The rules of each step, strictest first: (alive, ready, serving) required.
    const STEPS: [(Relaxed, bool, bool, bool); 5] = [
        (Relaxed::Nothing, true, true, true),
        (Relaxed::Ready, true, false, true),
        (Relaxed::Serving, true, true, false),
        (Relaxed::ReadyAndServing, true, false, false),
        (Relaxed::Alive, false, false, false),
    ];
}

/// How far a node is from the client's region, and how that was found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// The node is in the client's region.
    SameRegion,
    /// Mean round trip the client region's nodes measure to the node's region.
    Measured(u32),
    /// Mean round trip the node's region measures to the client's region (none of the
    /// client's region's nodes measured it).
    MeasuredBack(u32),
    /// Nobody measured it: the distance between the regions' centres, as a fibre round trip.
    Geography(u32),
    /// The client's region is unknown: no node is nearer than another.
    Unknown,
}

impl Distance {
    fn ms(self) -> u32 {
        match self {
            Distance::SameRegion | Distance::Unknown => 0,
            Distance::Measured(ms) | Distance::MeasuredBack(ms) | Distance::Geography(ms) => ms,
        }
    }

    fn describe(self, from: Option<Region>) -> String {
        let from = from.map_or("?", Region::code);
        match self {
            Distance::SameRegion => "in the client's region".into(),
            Distance::Measured(ms) => format!("{ms} ms from {from}, as {from}'s nodes measure it"),
            Distance::MeasuredBack(ms) => {
                format!("{ms} ms from {from}, as its region's nodes measure it")
            }
            Distance::Geography(ms) => {
                format!("about {ms} ms from {from} by geography (nobody measured it)")
            }
            Distance::Unknown => "client region unknown: ranked by a hash of name and node".into(),
        }
    }
}

/// What a question gets: nodes best first and the addresses answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Indices into the nodes, best first; the addresses come from the first ones.
    pub ranked: Vec<usize>,
    /// At most `answers` addresses: each ranked node's first address of the family, then
    /// their second ones, and so on, so that nodes are spread before addresses are.
    pub addresses: Vec<IpAddr>,
    pub relaxed: Relaxed,
}

fn mean(values: impl Iterator<Item = u32>) -> Option<u32> {
    let (sum, n) = values.fold((0u64, 0u64), |(s, n), v| (s + u64::from(v), n + 1));
    (n > 0).then(|| (sum / n) as u32)
}

/// How far `to` (a node's region) is from a client in `from`, from the mesh's measurements.
pub fn distance(nodes: &[Node], from: Option<Region>, to: Region) -> Distance {
    let Some(from) = from else {
        return Distance::Unknown;
    };
    if from == to {
        return Distance::SameRegion;
    }
    let measured = |a: Region, b: Region| {
        mean(
            nodes
                .iter()
                .filter(|n| n.alive && n.region == a)
                .filter_map(|n| n.rtt_to(b)),
        )
    };
    if let Some(ms) = measured(from, to) {
        Distance::Measured(ms)
    } else if let Some(ms) = measured(to, from) {
        Distance::MeasuredBack(ms)
    } else {
        Distance::Geography(from.fibre_rtt_ms(to))
    }
}

/// The tie-breaker: the same on every node, and different per name so that names spread
/// over nodes that rank alike.
fn tie(name: &str, id: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, name.as_bytes());
    fnv1a(fnv1a(h, &[0]), id.as_bytes())
}

/// Which nodes answer `name` for `family` to a client in `from` (None: unknown), best first.
pub fn choose(
    nodes: &[Node],
    name: &str,
    family: Family,
    from: Option<Region>,
    answers: usize,
) -> Choice {
    let mut relaxed = Relaxed::Nothing;
    let mut eligible: Vec<usize> = Vec::new();
    for (step, alive, ready, serving) in Relaxed::STEPS {
        eligible = (0..nodes.len())
            .filter(|&i| {
                let n = &nodes[i];
                let Some(can) = n.serves(name) else {
                    return false;
                };
                n.has(family) && (!alive || n.alive) && (!ready || n.ready) && (!serving || can)
            })
            .collect();
        if !eligible.is_empty() {
            relaxed = step;
            break;
        }
    }
    let key = |i: usize| {
        let n = &nodes[i];
        let d = distance(nodes, from, n.region);
        (
            d != Distance::SameRegion,
            d.ms() / RTT_BUCKET_MS,
            tie(name, &n.id),
            n.id.as_str(),
        )
    };
    eligible.sort_by_cached_key(|&i| key(i));
    let mut addresses = Vec::with_capacity(answers);
    let per_node: Vec<Vec<IpAddr>> = eligible
        .iter()
        .map(|&i| {
            nodes[i]
                .addresses
                .iter()
                .copied()
                .filter(|a| family.of(*a))
                .collect()
        })
        .collect();
    let deepest = per_node.iter().map(Vec::len).max().unwrap_or(0);
    'fill: for depth in 0..deepest {
        for addrs in &per_node {
            if addresses.len() == answers {
                break 'fill;
            }
            if let Some(a) = addrs.get(depth) {
                if !addresses.contains(a) {
                    addresses.push(*a);
                }
            }
        }
    }
    Choice {
        ranked: eligible,
        addresses,
        relaxed,
    }
}

/// Every answer for one name: per family, per client region slot ([`SLOTS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NameAnswers {
    pub name: String,
    pub v4: Vec<Choice>,
    pub v6: Vec<Choice>,
}

impl NameAnswers {
    /// The choices for `family`, by slot.
    pub fn of(&self, family: Family) -> &[Choice] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Whether the answer for `family` differs between client regions: if not, it does not
    /// depend on the client's address (an ECS scope of 0).
    pub fn depends_on_region(&self, family: Family) -> bool {
        let c = self.of(family);
        c.iter().any(|x| x.addresses != c[0].addresses)
    }
}

/// The names served: those any node has (alive or not: a name whose nodes are all down is
/// still a name, answered with the least bad), and the local config's own, sorted.
pub fn names(nodes: &[Node], local: &[String]) -> Vec<String> {
    let mut all: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.names.iter().map(|(name, _)| name.clone()))
        .chain(local.iter().cloned())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Every name's answers, for every family and client region.
pub fn plan(nodes: &[Node], names: &[String], answers: usize) -> Vec<NameAnswers> {
    names
        .iter()
        .map(|name| {
            let per = |family| {
                (0..SLOTS)
                    .map(|s| choose(nodes, name, family, region_of_slot(s), answers))
                    .collect()
            };
            NameAnswers {
                name: name.clone(),
                v4: per(Family::V4),
                v6: per(Family::V6),
            }
        })
        .collect()
}

/// The names this node's apps serve (`hostname`), sorted, and whether each app's load
/// balancer has a healthy pool in `view` now: what this node advertises.
pub fn served_names(rt: &CompiledConfig, view: &View) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = rt
        .config
        .apps
        .iter()
        .filter_map(|app| {
            let name = app.hostname.clone()?;
            let serving = rt.lb_index(&app.load_balancer).is_some_and(|i| {
                rt.load_balancers[i]
                    .candidate_pools()
                    .any(|p| view.pools.get(p).is_some_and(|v| v.healthy))
            });
            Some((name, serving))
        })
        .collect();
    out.sort_unstable();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// One node in an explanation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeWhy {
    pub node: String,
    pub region: String,
    /// Its place among the nodes answered (1 = first), if answered.
    pub answered: Option<usize>,
    pub why: String,
}

/// One family's answer, explained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FamilyWhy {
    pub addresses: Vec<String>,
    /// Which rule was relaxed, when no node met them all.
    pub relaxed: Option<String>,
    pub nodes: Vec<NodeWhy>,
}

/// Which nodes a name is answered with for one client, and why the others are not: what
/// `switchyard explain --dns` prints and `/v1/explain?dns=` serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DnsExplanation {
    pub name: String,
    pub client: String,
    /// The client's region, as every node places it; None: unknown.
    pub region: Option<String>,
    pub located_by: String,
    pub a: FamilyWhy,
    pub aaaa: FamilyWhy,
}

/// An explanation as text, for the command line.
pub fn render(e: &DnsExplanation) -> String {
    let mut out = format!(
        "{} for client {} (region {}; {})\n",
        e.name,
        e.client,
        e.region.as_deref().unwrap_or("unknown"),
        e.located_by
    );
    for (what, f) in [("A", &e.a), ("AAAA", &e.aaaa)] {
        let addrs = if f.addresses.is_empty() {
            "no address (NODATA)".to_string()
        } else {
            f.addresses.join(" ")
        };
        out.push_str(&format!("{what}: {addrs}\n"));
        if let Some(r) = &f.relaxed {
            out.push_str(&format!("  relaxed: {r}\n"));
        }
        for n in &f.nodes {
            let place = n.answered.map_or("  -".to_string(), |p| format!("{p:>3}"));
            out.push_str(&format!("  {place} {} ({}): {}\n", n.node, n.region, n.why));
        }
    }
    out
}

/// Why each node is answered for `name` and `family` to a client in `from`, or not.
pub fn explain_family(
    nodes: &[Node],
    name: &str,
    family: Family,
    from: Option<Region>,
    answers: usize,
) -> FamilyWhy {
    let choice = choose(nodes, name, family, from, answers);
    let answered: Vec<usize> = choice
        .ranked
        .iter()
        .copied()
        .filter(|&i| {
            nodes[i]
                .addresses
                .iter()
                .any(|a| choice.addresses.contains(a))
        })
        .collect();
    let mut order: Vec<usize> = answered.clone();
    order.extend(choice.ranked.iter().filter(|i| !answered.contains(i)));
    order.extend((0..nodes.len()).filter(|i| !choice.ranked.contains(i)));
    let why = |i: usize| -> (Option<usize>, String) {
        let n = &nodes[i];
        if let Some(place) = answered.iter().position(|&a| a == i) {
            return (
                Some(place + 1),
                distance(nodes, from, n.region).describe(from),
            );
        }
        if choice.ranked.contains(&i) {
            return (
                None,
                format!(
                    "ranked below the {} addresses answered ({})",
                    answers,
                    distance(nodes, from, n.region).describe(from)
                ),
            );
        }
        let reason = match n.serves(name) {
            None => format!("has no app with hostname {name:?}"),
            Some(_) if !n.has(family) => format!("has no {} address", family.word()),
            Some(_) if !n.alive => "not alive in the mesh (SWIM believes it down)".into(),
            Some(_) if !n.ready => {
                "not ready (draining, sick or in trouble of its own: its /ready says 503)".into()
            }
            Some(false) => {
                format!("cannot serve {name:?} now: no pool of its load balancer is healthy in its view")
            }
            Some(true) => format!("meets the rules, but {}", choice.relaxed.describe()),
        };
        (None, reason)
    };
    FamilyWhy {
        addresses: choice.addresses.iter().map(IpAddr::to_string).collect(),
        relaxed: (choice.relaxed != Relaxed::Nothing).then(|| choice.relaxed.describe().into()),
        nodes: order
            .into_iter()
            .map(|i| {
                let (answered, why) = why(i);
                NodeWhy {
                    node: nodes[i].id.clone(),
                    region: nodes[i].region.code().into(),
                    answered,
                    why,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Region::*;

    fn node(id: &str, region: Region, addr: &str) -> Node {
        Node {
            id: id.into(),
            region,
            addresses: vec![addr.parse().unwrap()],
            alive: true,
            ready: true,
            nameserver: true,
            names: vec![("game".into(), true)],
            rtt_ms: Vec::new(),
        }
    }

    #[test]
    fn round_trips_move_only_past_jitter() {
        let old = [(Wnam, 80), (Seas, 160)];
        let now = [(Wnam, 83), (Weu, 1), (Seas, 100)];
        assert_eq!(settle_rtt(&old, &now), [(Wnam, 80), (Weu, 1), (Seas, 100)]);
        assert_eq!(settle_rtt(&[(Wnam, 100)], &[(Wnam, 115)]), [(Wnam, 100)]);
        assert_eq!(settle_rtt(&[(Wnam, 100)], &[(Wnam, 121)]), [(Wnam, 121)]);
    }

    /// Three regions as the testnet has them, with the WAN emulator's round trips.
    fn mesh() -> Vec<Node> {
        let mut w = node("edge-wnam", Wnam, "192.0.2.1");
        let mut e = node("edge-weu", Weu, "192.0.2.2");
        let mut s = node("edge-seas", Seas, "192.0.2.3");
        w.rtt_ms = vec![(Weu, 75), (Seas, 160)];
        e.rtt_ms = vec![(Wnam, 75), (Seas, 170)];
        s.rtt_ms = vec![(Wnam, 160), (Weu, 170)];
        vec![w, e, s]
    }

    fn ids(nodes: &[Node], c: &Choice) -> Vec<String> {
        c.ranked.iter().map(|&i| nodes[i].id.clone()).collect()
    }

    fn addrs(c: &Choice) -> Vec<String> {
        c.addresses.iter().map(IpAddr::to_string).collect()
    }

    #[test]
    fn the_clients_region_first_then_by_measured_round_trip() {
        let n = mesh();
        for (from, want) in [
            (Wnam, ["edge-wnam", "edge-weu", "edge-seas"]),
            (Weu, ["edge-weu", "edge-wnam", "edge-seas"]),
            (Seas, ["edge-seas", "edge-wnam", "edge-weu"]),
        ] {
            let c = choose(&n, "game", Family::V4, Some(from), 2);
            assert_eq!(ids(&n, &c), want, "from {from}");
            assert_eq!(c.addresses.len(), 2);
            assert_eq!(c.relaxed, Relaxed::Nothing);
        }
    }

    #[test]
    fn a_region_without_nodes_is_ranked_by_what_others_measure_back_else_geography() {
        let mut n = mesh();
        // ENAM has no node: nobody measures from it, WNAM measures to it.
        n[0].rtt_ms.push((Enam, 30));
        assert_eq!(distance(&n, Some(Enam), Wnam), Distance::MeasuredBack(30));
        // Nobody measures SAF: geography; WEU's centre is nearer than SEAS's or WNAM's.
        assert!(matches!(
            distance(&n, Some(Saf), Weu),
            Distance::Geography(_)
        ));
        let c = choose(&n, "game", Family::V4, Some(Saf), 3);
        assert_eq!(ids(&n, &c)[0], "edge-weu");
        let c = choose(&n, "game", Family::V4, Some(Enam), 3);
        assert_eq!(ids(&n, &c)[0], "edge-wnam");
    }

    #[test]
    fn each_rule_drops_a_node_and_explain_says_which() {
        type Change = fn(&mut Node);
        let table: [(&str, Change, &str); 5] = [
            ("down", |n| n.alive = false, "not alive"),
            ("draining", |n| n.ready = false, "not ready"),
            ("pools down", |n| n.names[0].1 = false, "cannot serve"),
            ("no app", |n| n.names.clear(), "no app with hostname"),
            (
                "IPv6 only",
                |n| n.addresses = vec!["2001:db8::1".parse().unwrap()],
                "no IPv4 address",
            ),
        ];
        for (what, change, said) in table {
            let mut n = mesh();
            change(&mut n[1]);
            let c = choose(&n, "game", Family::V4, Some(Weu), 2);
            assert_eq!(ids(&n, &c), ["edge-wnam", "edge-seas"], "{what}");
            assert_eq!(c.relaxed, Relaxed::Nothing, "{what}");
            let e = explain_family(&n, "game", Family::V4, Some(Weu), 2);
            let weu = e.nodes.iter().find(|x| x.node == "edge-weu").unwrap();
            assert!(
                weu.answered.is_none() && weu.why.contains(said),
                "{what}: {weu:?}"
            );
            assert_eq!(e.nodes[0].answered, Some(1), "{what}: answered first");
        }
    }

    #[test]
    fn with_no_node_meeting_every_rule_the_least_bad_is_answered() {
        let mut n = mesh();
        // Nobody can serve: alive, ready nodes that have it.
        n.iter_mut().for_each(|x| x.names[0].1 = false);
        n[0].ready = false;
        let c = choose(&n, "game", Family::V4, Some(Wnam), 2);
        assert_eq!(c.relaxed, Relaxed::Serving);
        assert_eq!(ids(&n, &c), ["edge-weu", "edge-seas"]);
        // Nobody ready either: alive nodes that have it.
        n.iter_mut().for_each(|x| x.ready = false);
        let c = choose(&n, "game", Family::V4, Some(Wnam), 2);
        assert_eq!(c.relaxed, Relaxed::ReadyAndServing);
        assert_eq!(ids(&n, &c)[0], "edge-wnam");
        // A draining node that can serve beats ready nodes that cannot.
        n[2].names[0].1 = true;
        let c = choose(&n, "game", Family::V4, Some(Wnam), 2);
        assert_eq!(
            (c.relaxed, ids(&n, &c)),
            (Relaxed::Ready, vec!["edge-seas".into()])
        );
        // The whole mesh down as seen from here: every node that has the name, never nothing.
        n.iter_mut().for_each(|x| x.alive = false);
        let c = choose(&n, "game", Family::V4, Some(Wnam), 2);
        assert_eq!(c.relaxed, Relaxed::Alive);
        assert_eq!(c.addresses.len(), 2);
        let e = explain_family(&n, "game", Family::V4, Some(Wnam), 2);
        assert!(e
            .relaxed
            .unwrap()
            .contains("no node that has the name is alive"));
        // A name no node has gets no address at all (the shell answers NXDOMAIN).
        assert!(choose(&n, "other", Family::V4, Some(Wnam), 2)
            .addresses
            .is_empty());
    }

    #[test]
    fn nodes_spread_before_addresses_and_families_are_answered_apart() {
        let mut n = mesh();
        n[0].addresses = ["192.0.2.1", "192.0.2.11", "2001:db8::1"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let c = choose(&n, "game", Family::V4, Some(Wnam), 2);
        assert_eq!(addrs(&c), ["192.0.2.1", "192.0.2.2"]);
        let c = choose(&n, "game", Family::V4, Some(Wnam), 4);
        assert_eq!(
            addrs(&c),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.11"]
        );
        let c = choose(&n, "game", Family::V6, Some(Weu), 2);
        assert_eq!(addrs(&c), ["2001:db8::1"]);
    }

    #[test]
    fn the_unknown_region_and_ties_are_ranked_by_a_hash_every_node_computes_alike() {
        let mut n = mesh();
        n.push(node("edge-weu-2", Weu, "192.0.2.4"));
        let a = choose(&n, "game", Family::V4, None, 4);
        assert_eq!(a.ranked.len(), 4);
        // The same data in another order decides the same.
        let mut shuffled = n.clone();
        shuffled.reverse();
        let b = choose(&shuffled, "game", Family::V4, None, 4);
        assert_eq!(ids(&n, &a), ids(&shuffled, &b));
        // Two WEU nodes tie for a WEU client; names spread over them.
        let firsts: std::collections::HashSet<String> = (0..32)
            .map(|i| {
                let name = format!("app{i}");
                n.iter_mut()
                    .for_each(|x| x.names = vec![(name.clone(), true)]);
                ids(&n, &choose(&n, &name, Family::V4, Some(Weu), 1))[0].clone()
            })
            .collect();
        assert_eq!(firsts.len(), 2, "{firsts:?}");
    }

    #[test]
    fn a_plan_covers_every_name_family_and_region_and_says_when_the_region_matters() {
        let n = mesh();
        let names = names(&n, &["local".into()]);
        assert_eq!(names, ["game", "local"]);
        let plan = plan(&n, &names, 1);
        assert_eq!(plan[0].v4.len(), SLOTS);
        assert!(plan[0].depends_on_region(Family::V4));
        assert!(!plan[0].depends_on_region(Family::V6), "no IPv6 anywhere");
        assert_eq!(addrs(&plan[0].v4[slot(Some(Seas))]), ["192.0.2.3"]);
    }

    proptest::proptest! {
        #[test]
        fn answers_are_bounded_distinct_and_from_qualifying_nodes(
            flags in proptest::collection::vec((0u8..13, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY), 1..12),
            answers in 1usize..6,
            from in proptest::option::of(0usize..13),
        ) {
            let nodes: Vec<Node> = flags.iter().enumerate().map(|(i, &(r, alive, ready, can))| Node {
                id: format!("n{i}"),
                region: Region::ALL[r as usize],
                addresses: vec![IpAddr::from([10, 0, 0, i as u8])],
                alive,
                ready,
                nameserver: true,
                names: vec![("game".into(), can)],
                rtt_ms: vec![(Region::ALL[(r as usize + 1) % 13], 10 * i as u32)],
            }).collect();
            let from = from.map(|r| Region::ALL[r]);
            let c = choose(&nodes, "game", Family::V4, from, answers);
            proptest::prop_assert!(!c.addresses.is_empty());
            proptest::prop_assert!(c.addresses.len() <= answers);
            let mut seen = c.addresses.clone();
            seen.dedup();
            proptest::prop_assert_eq!(seen.len(), c.addresses.len());
            let strict = nodes.iter().any(|n| n.alive && n.ready && n.names[0].1);
            proptest::prop_assert_eq!(strict, c.relaxed == Relaxed::Nothing);
            // Where a node of the client's region qualifies, one such comes first.
            if let Some(r) = from {
                if c.ranked.iter().any(|&i| nodes[i].region == r) {
                    proptest::prop_assert_eq!(nodes[c.ranked[0]].region, r);
                }
            }
        }
    }
}
