//! Steering: which pool and which origin serve one connection. A pure function of the
//! compiled config, the health view, the load balancer, the client and the time; randomness comes in
//! as a number. No I/O and no allocation, so it is tested table by table and costs well under
//! a microsecond. A `Trace` receives the reasons when someone asks (explain); the proxy
//! passes `()`, which compiles to nothing.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use switchyard_geo::Region;

use crate::config::{canonical_ip, RelayPolicy, SessionAffinity, SteeringPolicy, Vantage};
use crate::core::affinity::{Affinity, Sticky};
use crate::core::client::ClientGeo;
use crate::core::compiled::CompiledConfig;
use crate::core::view::View;

mod origin;
use origin::pick_origin;

/// One connection to steer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub client: IpAddr,
    pub now: Instant,
    /// A uniform random draw, for weighted choices.
    pub random: u64,
    /// Origins already tried for this connection, which failed to connect.
    pub exclude: &'a [(usize, usize)],
    pub sticky: Option<Sticky>,
    pub geo: ClientGeo,
}

/// The draw explain and status use: the middle of the range, where a weighted draw lands on
/// the bulk of the weight, so that asking twice gives the same answer.
pub const TYPICAL_DRAW: u64 = u64::MAX / 2;

impl Request<'static> {
    /// A new connection from `client` to load balancer `lb`: the one constructor that the
    /// proxy, explain and status share, so they agree. The client's session affinity, where
    /// the load balancer keeps one, is looked up here.
    pub fn new(
        rt: &CompiledConfig,
        lb: usize,
        affinity: &Affinity,
        client: IpAddr,
        geo: ClientGeo,
        now: Instant,
        random: u64,
    ) -> Request<'static> {
        let client = canonical_ip(client);
        let lb = &rt.load_balancers[lb];
        let sticky = match lb.affinity {
            SessionAffinity::ClientIp => affinity.get(rt, &lb.name, client),
            SessionAffinity::None => None,
        };
        Request {
            client,
            now,
            random,
            exclude: &[],
            sticky,
            geo,
        }
    }
}

impl Request<'_> {
    /// The same request, skipping origins already tried for this connection.
    pub fn excluding(self, exclude: &[(usize, usize)]) -> Request<'_> {
        Request { exclude, ..self }
    }
}

/// Where geo steering's list of pools came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListSource {
    NodePools,
    CountryPools,
    RegionPools,
    DefaultPools,
}

/// Why a pool was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolWhy {
    /// Session affinity kept the client's previous origin.
    Affinity,
    /// The first healthy pool of `default_pools`, at this position.
    Failover { rank: usize },
    /// Drawn by pool weight among the healthy default pools.
    Random,
    /// Geo steering: the first healthy pool of the list from `source`, at this position
    /// (positions past that list count on into `default_pools`).
    Geo { source: ListSource, rank: usize },
    /// Dynamic steering: the healthy pool with the lowest RTT from `from`.
    Dynamic { rtt: Duration, from: Region },
    /// Proximity steering: the healthy pool nearest the client.
    Proximity { km: f64 },
    /// Dynamic or proximity without data to rank by: failover order.
    Unranked { rank: usize },
    /// No default pool was healthy.
    Fallback,
}

/// Why an origin was chosen within its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginWhy {
    Affinity,
    Random,
    Hash,
    LeastConnections,
    /// The pool had no healthy origin; an enabled one was used regardless of health.
    NoneHealthy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub pool: usize,
    pub origin: usize,
    pub pool_why: PoolWhy,
    pub origin_why: OriginWhy,
}

/// What steering considered, for explain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The region whose view of health this decision uses.
    HealthFrom {
        region: Region,
    },
    /// Geo steering took its list from here.
    List {
        source: ListSource,
    },
    /// A pool passed over: `up` usable origins where `minimum` are needed.
    PoolUnhealthy {
        pool: usize,
        up: usize,
        minimum: usize,
    },
    /// Dynamic steering: a healthy pool's RTT (None: no data).
    PoolRtt {
        pool: usize,
        rtt: Option<Duration>,
    },
    /// Proximity steering: a healthy pool's distance from the client.
    PoolDistance {
        pool: usize,
        km: Option<f64>,
    },
    PoolTaken {
        pool: usize,
        why: PoolWhy,
    },
    StickyExpired,
    StickyOriginDown,
}

/// Receives the steps of a decision.
pub trait Trace {
    fn step(&mut self, _step: Step) {}
}

impl Trace for () {}

impl Trace for Vec<Step> {
    fn step(&mut self, step: Step) {
        self.push(step);
    }
}

/// What a decision reads.
pub(super) struct Ctx<'a, 'r> {
    pub(super) rt: &'a CompiledConfig,
    view: &'a View,
    pub(super) req: &'a Request<'r>,
    /// Health is judged as seen from here: the client's region, else the node's.
    from: Region,
    /// The load balancer's relay policy: an origin down from here by the path alone stays
    /// usable while a peer reaches it, unless it is off.
    relay: RelayPolicy,
}

impl Ctx<'_, '_> {
    pub(super) fn usable(&self, pool: usize, origin: usize) -> bool {
        self.view
            .pools
            .get(pool)
            .and_then(|p| p.origins.get(origin))
            .is_some_and(|o| o.up_for(self.from, self.rt.region, self.relay))
            && !self.req.exclude.contains(&(pool, origin))
    }

    fn up_count(&self, pool: usize) -> usize {
        (0..self.view.pools[pool].origins.len())
            .filter(|o| self.usable(pool, *o))
            .count()
    }

    /// Whether a pool is healthy, telling `trace` when it is not.
    fn healthy(&self, pool: usize, trace: &mut impl Trace) -> bool {
        let up = self.up_count(pool);
        let minimum = self.rt.pools[pool].minimum_origins;
        if up < minimum {
            trace.step(Step::PoolUnhealthy { pool, up, minimum });
        }
        up >= minimum
    }

    /// A pool's RTT as measured from `region`: the mean over its usable origins.
    fn pool_rtt(&self, pool: usize, region: Region) -> Option<Duration> {
        let (sum, n) = self.view.pools[pool]
            .origins
            .iter()
            .enumerate()
            .filter(|(o, _)| self.usable(pool, *o))
            .filter_map(|(_, o)| o.rtt_from(region, self.rt.region))
            .fold((Duration::ZERO, 0u32), |(s, n), d| (s + d, n + 1));
        (n > 0).then(|| sum / n)
    }
}

/// Chooses a pool and an origin for a connection to load balancer `lb`. None when the
/// chosen pool has no enabled origin left to try.
pub fn decide(
    rt: &CompiledConfig,
    view: &View,
    lb: usize,
    req: &Request<'_>,
    trace: &mut impl Trace,
) -> Option<Decision> {
    let lb = &rt.load_balancers[lb];
    let cx = Ctx {
        rt,
        view,
        req,
        from: req.geo.region.unwrap_or(rt.region),
        relay: lb.relay,
    };
    if lb.policy != SteeringPolicy::Failover && lb.policy != SteeringPolicy::Random
        || req.geo.region.is_some()
    {
        trace.step(Step::HealthFrom { region: cx.from });
    }
    if let Some(s) = req.sticky {
        if req.now >= s.expires {
            trace.step(Step::StickyExpired);
        } else if cx.usable(s.pool, s.origin) {
            trace.step(Step::PoolTaken {
                pool: s.pool,
                why: PoolWhy::Affinity,
            });
            return Some(Decision {
                pool: s.pool,
                origin: s.origin,
                pool_why: PoolWhy::Affinity,
                origin_why: OriginWhy::Affinity,
            });
        } else {
            trace.step(Step::StickyOriginDown);
        }
    }

    let first_healthy = |list: &mut dyn Iterator<Item = usize>, trace: &mut _| {
        list.enumerate().find(|(_, p)| cx.healthy(*p, trace))
    };

    let chosen = match lb.policy {
        SteeringPolicy::Failover => first_healthy(&mut lb.default_pools.iter().copied(), trace)
            .map(|(rank, p)| (p, PoolWhy::Failover { rank })),
        SteeringPolicy::Random => {
            let total: f64 = lb
                .default_pools
                .iter()
                .zip(&lb.pool_weights)
                .filter(|(p, _)| cx.healthy(**p, trace))
                .map(|(_, w)| *w)
                .sum();
            let draw = unit(req.random) * total;
            let mut acc = 0.0;
            let mut pick = None;
            for (p, w) in lb.default_pools.iter().zip(&lb.pool_weights) {
                if *w > 0.0 && cx.up_count(*p) >= rt.pools[*p].minimum_origins {
                    acc += w;
                    pick = Some(*p);
                    if draw < acc {
                        break;
                    }
                }
            }
            pick.map(|p| (p, PoolWhy::Random))
        }
        SteeringPolicy::Geo => {
            let country = req.geo.country.and_then(|c| {
                lb.country_pools
                    .binary_search_by_key(&c, |(k, _)| *k)
                    .ok()
                    .map(|i| lb.country_pools[i].1.as_slice())
            });
            let region = req
                .geo
                .region
                .map(|r| lb.region_pools[r.index()].as_slice())
                .filter(|l| !l.is_empty());
            let (source, list) = match (lb.node_pools.as_deref(), country, region) {
                (Some(l), _, _) => (ListSource::NodePools, l),
                (None, Some(l), _) => (ListSource::CountryPools, l),
                (None, None, Some(l)) => (ListSource::RegionPools, l),
                (None, None, None) => (ListSource::DefaultPools, &[][..]),
            };
            trace.step(Step::List { source });
            first_healthy(
                &mut list.iter().chain(lb.default_pools.iter()).copied(),
                trace,
            )
            .map(|(rank, p)| (p, PoolWhy::Geo { source, rank }))
        }
        SteeringPolicy::Dynamic => {
            let from = match lb.vantage {
                Vantage::Client => cx.from,
                Vantage::Node => rt.region,
            };
            let mut best: Option<(usize, Duration)> = None;
            let mut first: Option<(usize, usize)> = None;
            for (rank, p) in lb.default_pools.iter().copied().enumerate() {
                if !cx.healthy(p, trace) {
                    continue;
                }
                first.get_or_insert((rank, p));
                let rtt = cx.pool_rtt(p, from);
                trace.step(Step::PoolRtt { pool: p, rtt });
                if let Some(rtt) = rtt {
                    if best.is_none_or(|(_, b)| rtt < b) {
                        best = Some((p, rtt));
                    }
                }
            }
            match (best, first) {
                (Some((p, rtt)), _) => Some((p, PoolWhy::Dynamic { rtt, from })),
                (None, Some((rank, p))) => Some((p, PoolWhy::Unranked { rank })),
                (None, None) => None,
            }
        }
        SteeringPolicy::Proximity => {
            let mut best: Option<(usize, f64)> = None;
            let mut first: Option<(usize, usize)> = None;
            for (rank, p) in lb.default_pools.iter().copied().enumerate() {
                if !cx.healthy(p, trace) {
                    continue;
                }
                first.get_or_insert((rank, p));
                let km = req
                    .geo
                    .location
                    .zip(rt.pools[p].location)
                    .map(|(a, b)| great_circle_km(a, b));
                trace.step(Step::PoolDistance { pool: p, km });
                if let Some(km) = km {
                    if best.is_none_or(|(_, b)| km < b) {
                        best = Some((p, km));
                    }
                }
            }
            match (best, first) {
                (Some((p, km)), _) => Some((p, PoolWhy::Proximity { km })),
                (None, Some((rank, p))) => Some((p, PoolWhy::Unranked { rank })),
                (None, None) => None,
            }
        }
    };
    let (pool, pool_why) = chosen.unwrap_or((lb.fallback_pool, PoolWhy::Fallback));
    trace.step(Step::PoolTaken {
        pool,
        why: pool_why,
    });
    let (origin, origin_why) = pick_origin(&cx, pool)?;
    Some(Decision {
        pool,
        origin,
        pool_why,
        origin_why,
    })
}

/// Distance between two points on the Earth (haversine, mean radius).
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// A draw in [0, 1).
pub(super) fn unit(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::origin::mix;
    use super::*;
    use crate::config::Config;
    use crate::core::health::OriginHealth;
    use crate::core::view::{Report, Snapshot};
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    fn runtime(pools: &str, lb: &str) -> CompiledConfig {
        let text = format!(
            "[node]\nid = \"n1\"\nregion = \"WEU\"\n[[monitor]]\nname = \"m\"\ntype = \"tcp\"\n{pools}\n{lb}\n"
        );
        CompiledConfig::compile(Arc::new(Config::parse(&text, None).unwrap()), None)
    }

    const POOLS: &str = r#"
[[pool]]
name = "a"
monitor = "m"
origins = [{ name = "a1", address = "127.0.0.1:1" }, { name = "a2", address = "127.0.0.1:2" }]
[[pool]]
name = "b"
monitor = "m"
minimum_origins = 2
origins = [{ name = "b1", address = "127.0.0.1:3" }, { name = "b2", address = "127.0.0.1:4" }]
[[pool]]
name = "c"
monitor = "m"
origins = [{ name = "c1", address = "127.0.0.1:5" }]
"#;

    const FAILOVER: &str = r#"
[[load_balancer]]
name = "lb"
default_pools = ["a", "b"]
fallback_pool = "c"
"#;

    /// A view in which the named origins are down.
    fn view(rt: &CompiledConfig, down: &[&str]) -> View {
        let now = Instant::now();
        let mut report = Report::default();
        for (pi, p) in rt.pools.iter().enumerate() {
            for (oi, o) in p.origins.iter().enumerate() {
                let mut row = OriginHealth::unchecked(now);
                row.checked = true;
                row.healthy = !down.contains(&&*o.name);
                report.rows.insert(rt.key(pi, oi), row);
            }
        }
        View::build(rt, &report)
    }

    fn req(client: &str, random: u64) -> Request<'static> {
        Request {
            client: client.parse().unwrap(),
            now: Instant::now(),
            random,
            exclude: &[],
            sticky: None,
            geo: ClientGeo::default(),
        }
    }

    fn pick(rt: &CompiledConfig, v: &View, r: &Request<'_>) -> Option<(String, String, PoolWhy)> {
        decide(rt, v, 0, r, &mut ()).map(|d| {
            (
                rt.pools[d.pool].name.to_string(),
                rt.pools[d.pool].origins[d.origin].name.to_string(),
                d.pool_why,
            )
        })
    }

    #[test]
    fn a_path_down_from_here_alone_keeps_the_origin_for_a_load_balancer_that_relays() {
        use crate::config::Quorum;
        use crate::core::verdict::Verdict;
        use crate::core::view::{Obs, RemoteReport};
        const TWO: &str = r#"
[[pool]]
name = "p"
monitor = "m"
origins = [{ name = "p1", address = "127.0.0.1:1" }]
[[pool]]
name = "q"
monitor = "m"
origins = [{ name = "q1", address = "127.0.0.1:2" }]
"#;
        let steer = |relay: &str, verdict: Verdict| {
            let lb = format!(
                "[[load_balancer]]\nname = \"lb\"\ndefault_pools = [\"p\", \"q\"]\nrelay = \"{relay}\"\n"
            );
            let rt = runtime(TWO, &lb);
            let key = rt.key(0, 0);
            // This node's own probes find p1 down, with `verdict`; a live peer reaches it.
            let mut row = OriginHealth::unchecked(Instant::now());
            row.checked = true;
            row.healthy = false;
            row.verdict = Some(verdict);
            let mut report = Report::default();
            report.rows.insert(key.clone(), row);
            let obs = Obs {
                node: "peer".into(),
                region: Region::Wnam,
                healthy: true,
                rtt: Some(Duration::from_millis(5)),
                age: Duration::ZERO,
                verdict: None,
            };
            let remote = [RemoteReport {
                node: "peer".into(),
                region: Region::Wnam,
                live: true,
                rows: [(key, obs)].into(),
            }];
            let mut v = View::build_mesh(&rt, &report, &remote, Quorum::Majority, Duration::ZERO);
            v.mark_own(&rt, &report, &remote, false);
            pick(&rt, &v, &req("192.0.2.1", 7)).map(|(p, o, _)| format!("{p}/{o}"))
        };
        assert_eq!(steer("failover", Verdict::Path).as_deref(), Some("p/p1"));
        assert_eq!(steer("fastest", Verdict::Path).as_deref(), Some("p/p1"));
        // As before relaying: relay off, or the origin itself down.
        assert_eq!(steer("off", Verdict::Path).as_deref(), Some("q/q1"));
        assert_eq!(steer("failover", Verdict::Origin).as_deref(), Some("q/q1"));
    }

    #[test]
    fn failover_table() {
        let rt = runtime(POOLS, FAILOVER);
        // (down origins, expected pool, expected why)
        let table: &[(&[&str], &str, PoolWhy)] = &[
            (&[], "a", PoolWhy::Failover { rank: 0 }),
            (&["a1"], "a", PoolWhy::Failover { rank: 0 }),
            (&["a1", "a2"], "b", PoolWhy::Failover { rank: 1 }),
            // b needs two origins up.
            (&["a1", "a2", "b1"], "c", PoolWhy::Fallback),
            // The fallback pool is used regardless of its health.
            (&["a1", "a2", "b1", "c1"], "c", PoolWhy::Fallback),
        ];
        for (down, pool, why) in table {
            let v = view(&rt, down);
            let (p, o, w) = pick(&rt, &v, &req("192.0.2.1", 7)).unwrap();
            assert_eq!((p.as_str(), w), (*pool, *why), "down {down:?}");
            assert!(
                !down.contains(&o.as_str()) || *pool == "c",
                "down {down:?} got {o}"
            );
        }
    }

    #[test]
    fn trace_says_why_pools_were_passed_over() {
        let rt = runtime(POOLS, FAILOVER);
        let v = view(&rt, &["a1", "a2", "b1"]);
        let mut steps = Vec::new();
        decide(&rt, &v, 0, &req("192.0.2.1", 0), &mut steps).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::PoolUnhealthy {
                    pool: 0,
                    up: 0,
                    minimum: 1
                },
                Step::PoolUnhealthy {
                    pool: 1,
                    up: 1,
                    minimum: 2
                },
                Step::PoolTaken {
                    pool: 2,
                    why: PoolWhy::Fallback
                },
            ]
        );
    }

    #[test]
    fn no_monitor_means_every_enabled_origin_is_up() {
        let pools = r#"
[[pool]]
name = "a"
origins = [{ name = "a1", address = "127.0.0.1:1", enabled = false }, { name = "a2", address = "127.0.0.1:2" }]
"#;
        let rt = runtime(
            pools,
            "[[load_balancer]]\nname = \"lb\"\ndefault_pools = [\"a\"]\n",
        );
        let v = View::build(&rt, &Report::default());
        for r in 0..50u64 {
            let (_, o, _) = pick(&rt, &v, &req("192.0.2.1", mix(r))).unwrap();
            assert_eq!(o, "a2");
        }
    }

    #[test]
    fn excluded_origins_are_skipped_then_the_next_pool() {
        let rt = runtime(POOLS, FAILOVER);
        let v = view(&rt, &[]);
        let exclude = [(0, 0)];
        let r = Request {
            exclude: &exclude,
            ..req("192.0.2.1", 0)
        };
        assert_eq!(pick(&rt, &v, &r).unwrap().1, "a2");
        let exclude = [(0, 0), (0, 1)];
        let r = Request {
            exclude: &exclude,
            ..req("192.0.2.1", 0)
        };
        assert_eq!(pick(&rt, &v, &r).unwrap().0, "b");
        // Nothing left in the fallback pool: no decision.
        let exclude = [(0, 0), (0, 1), (1, 0), (2, 0)];
        let r = Request {
            exclude: &exclude,
            ..req("192.0.2.1", 0)
        };
        assert_eq!(pick(&rt, &v, &r), None);
    }

    #[test]
    fn random_pools_follow_weights_and_skip_unhealthy() {
        let lb = r#"
[[load_balancer]]
name = "lb"
steering = "random"
default_pools = ["a", "c"]
fallback_pool = "b"
pool_weights = { a = 0.25, c = 0.75 }
"#;
        let rt = runtime(POOLS, lb);
        let v = view(&rt, &[]);
        let n = 20_000u64;
        let a = (0..n)
            .filter(|i| pick(&rt, &v, &req("192.0.2.1", mix(*i))).unwrap().0 == "a")
            .count() as f64;
        assert!((a / n as f64 - 0.25).abs() < 0.02, "{a}");
        let v = view(&rt, &["c1"]);
        for i in 0..100 {
            assert_eq!(pick(&rt, &v, &req("192.0.2.1", mix(i))).unwrap().0, "a");
        }
        let v = view(&rt, &["c1", "a1", "a2"]);
        assert_eq!(
            pick(&rt, &v, &req("192.0.2.1", 1)).unwrap().2,
            PoolWhy::Fallback
        );
    }

    #[test]
    fn affinity_keeps_the_origin_while_up_and_fresh() {
        let rt = runtime(POOLS, FAILOVER);
        let now = Instant::now();
        let sticky = Sticky {
            pool: 1,
            origin: 1,
            expires: now + Duration::from_secs(60),
        };
        let r = Request {
            sticky: Some(sticky),
            now,
            ..req("192.0.2.1", 0)
        };
        let v = view(&rt, &[]);
        assert_eq!(
            pick(&rt, &v, &r).unwrap(),
            ("b".into(), "b2".into(), PoolWhy::Affinity)
        );
        let v = view(&rt, &["b2"]);
        assert_eq!(pick(&rt, &v, &r).unwrap().0, "a");
        let late = Request {
            now: now + Duration::from_secs(61),
            ..r
        };
        assert_eq!(pick(&rt, &view(&rt, &[]), &late).unwrap().0, "a");
    }

    #[test]
    fn least_connections_prefers_the_idle_origin() {
        let pools = r#"
[[pool]]
name = "a"
origin_steering = "least_connections"
origins = [{ name = "a1", address = "127.0.0.1:1" }, { name = "a2", address = "127.0.0.1:2" }]
"#;
        let rt = runtime(
            pools,
            "[[load_balancer]]\nname = \"lb\"\ndefault_pools = [\"a\"]\n",
        );
        let v = View::build(&rt, &Report::default());
        rt.pools[0].origins[0].active.store(5, Ordering::Relaxed);
        for r in 0..20 {
            assert_eq!(pick(&rt, &v, &req("192.0.2.1", r)).unwrap().1, "a2");
        }
    }

    #[test]
    fn snapshot_holds_runtime_and_view_together() {
        let rt = Arc::new(runtime(POOLS, FAILOVER));
        let view = Arc::new(view(&rt, &[]));
        let s = Snapshot { rt, view };
        assert_eq!(s.view.pools.len(), s.rt.pools.len());
    }

    fn hash_runtime(weights: &[f64]) -> CompiledConfig {
        let origins: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ name = \"o{i}\", address = \"127.0.0.1:{}\", weight = {w:?} }}",
                    i + 1
                )
            })
            .collect();
        let pools = format!(
            "[[pool]]\nname = \"p\"\nmonitor = \"m\"\norigin_steering = \"hash\"\norigins = [{}]\n",
            origins.join(", ")
        );
        runtime(
            &pools,
            "[[load_balancer]]\nname = \"lb\"\ndefault_pools = [\"p\"]\n",
        )
    }

    fn random_runtime(weights: &[f64]) -> CompiledConfig {
        let origins: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{ name = \"o{i}\", address = \"127.0.0.1:{}\", weight = {w:?} }}",
                    i + 1
                )
            })
            .collect();
        let pools = format!(
            "[[pool]]\nname = \"p\"\nmonitor = \"m\"\norigins = [{}]\n",
            origins.join(", ")
        );
        runtime(
            &pools,
            "[[load_balancer]]\nname = \"lb\"\ndefault_pools = [\"p\"]\n",
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Never a disabled or down origin while an up one exists in the chosen pool.
        #[test]
        fn never_a_down_origin_while_one_is_up(
            down in proptest::collection::vec(any::<bool>(), 5),
            random in any::<u64>(),
            client in any::<u32>(),
        ) {
            let rt = random_runtime(&[1.0, 0.5, 0.2, 1.0, 0.0]);
            let names: Vec<String> = (0..5).filter(|i| down[*i]).map(|i| format!("o{i}")).collect();
            let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            let v = view(&rt, &names);
            let r = Request { client: IpAddr::from(client.to_be_bytes()), ..req("192.0.2.1", random) };
            let d = decide(&rt, &v, 0, &r, &mut ()).unwrap();
            if v.pools[0].origins.iter().any(|o| o.up) {
                prop_assert!(v.pools[0].origins[d.origin].up);
            }
        }

        /// Weighted random follows the weights within 3 points over 20,000 draws. (Over 4,000
        /// draws 3 points is about 4 standard deviations, which 64 cases of up to 4 origins
        /// crossed in a few percent of runs.)
        #[test]
        fn weights_are_respected(weights in proptest::collection::vec(0.05f64..=1.0, 2..5), seed in any::<u64>()) {
            let rt = random_runtime(&weights);
            let v = view(&rt, &[]);
            let n = 20_000u64;
            let mut counts = vec![0u64; weights.len()];
            for i in 0..n {
                let d = decide(&rt, &v, 0, &req("192.0.2.1", mix(seed ^ i)), &mut ()).unwrap();
                counts[d.origin] += 1;
            }
            let total: f64 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                let share = counts[i] as f64 / n as f64;
                prop_assert!((share - w / total).abs() < 0.03, "origin {i}: {share} vs {}", w / total);
            }
        }

        /// Consistent hashing: when an origin fails, only its clients move.
        #[test]
        fn hash_moves_only_the_failed_origins_clients(failed in 0usize..4, seed in any::<u32>()) {
            let rt = hash_runtime(&[1.0, 1.0, 0.5, 1.0]);
            let before = view(&rt, &[]);
            let name = format!("o{failed}");
            let after = view(&rt, &[name.as_str()]);
            let mut moved_others = 0;
            for i in 0..500u32 {
                let client = IpAddr::from((seed.wrapping_add(i.wrapping_mul(2_654_435_761))).to_be_bytes());
                let r = Request { client, ..req("192.0.2.1", 0) };
                let a = decide(&rt, &before, 0, &r, &mut ()).unwrap().origin;
                let b = decide(&rt, &after, 0, &r, &mut ()).unwrap().origin;
                if a != failed && a != b {
                    moved_others += 1;
                }
                prop_assert_ne!(b, failed);
            }
            prop_assert_eq!(moved_others, 0);
        }
    }

    #[test]
    fn hash_is_stable_for_a_client_and_spreads_clients() {
        let rt = hash_runtime(&[1.0, 1.0, 1.0]);
        let v = view(&rt, &[]);
        let mut seen = [0; 3];
        for i in 0..300u32 {
            let client = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let r = Request {
                client,
                ..req("192.0.2.1", u64::from(i))
            };
            let a = decide(&rt, &v, 0, &r, &mut ()).unwrap().origin;
            let b = decide(&rt, &v, 0, &Request { random: 99, ..r }, &mut ())
                .unwrap()
                .origin;
            assert_eq!(a, b);
            seen[a] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
    }

    mod geo {
        use super::*;
        use crate::core::compiled::OriginKey;
        use crate::core::view::{Obs, RemoteReport};
        use std::collections::HashMap;

        const POOLS3: &str = r#"
[[pool]]
name = "wnam"
monitor = "m"
latitude = 37.4
longitude = -122.1
origins = [{ name = "wnam-1", address = "127.0.0.1:1" }]
[[pool]]
name = "weu"
monitor = "m"
latitude = 52.4
longitude = 4.9
origins = [{ name = "weu-1", address = "127.0.0.1:2" }]
[[pool]]
name = "seas"
monitor = "m"
latitude = 1.35
longitude = 103.8
origins = [{ name = "seas-1", address = "127.0.0.1:3" }]
"#;

        fn lb(policy: &str, extra: &str) -> String {
            format!(
                "[[load_balancer]]\nname = \"lb\"\nsteering = \"{policy}\"\ndefault_pools = [\"wnam\", \"weu\", \"seas\"]\nfallback_pool = \"seas\"\n{extra}\n"
            )
        }

        /// A view from other nodes' rows: (node, region, origin, healthy, rtt ms).
        fn mesh_view(rt: &CompiledConfig, rows: &[(&str, Region, &str, bool, u64)]) -> View {
            let mut reports: Vec<RemoteReport> = Vec::new();
            for (node, region, origin, healthy, rtt) in rows {
                let pool = origin.split('-').next().unwrap();
                let key = OriginKey {
                    pool: pool.into(),
                    origin: (*origin).into(),
                };
                let obs = Obs {
                    node: (*node).into(),
                    region: *region,
                    healthy: *healthy,
                    rtt: Some(Duration::from_millis(*rtt)),
                    age: Duration::ZERO,
                    verdict: None,
                };
                match reports.iter_mut().find(|r| &*r.node == *node) {
                    Some(r) => {
                        r.rows.insert(key, obs);
                    }
                    None => reports.push(RemoteReport {
                        node: (*node).into(),
                        region: *region,
                        live: true,
                        rows: HashMap::from([(key, obs)]),
                    }),
                }
            }
            View::build_mesh(
                rt,
                &Report::default(),
                &reports,
                crate::config::Quorum::Majority,
                Duration::ZERO,
            )
        }

        fn from(
            region: Option<Region>,
            country: Option<&str>,
            location: Option<(f64, f64)>,
        ) -> Request<'static> {
            Request {
                geo: ClientGeo {
                    region,
                    country: country.map(|c| [c.as_bytes()[0], c.as_bytes()[1]]),
                    location,
                },
                ..req("192.0.2.1", 0)
            }
        }

        fn pool_of(rt: &CompiledConfig, v: &View, r: &Request<'_>) -> (String, PoolWhy) {
            let d = decide(rt, v, 0, r, &mut ()).unwrap();
            (rt.pools[d.pool].name.to_string(), d.pool_why)
        }

        use Region::*;

        #[test]
        fn geo_table() {
            let rt = runtime(
                POOLS3,
                &lb("geo", "region_pools = { WEU = [\"weu\"], SEAS = [\"seas\"] }\ncountry_pools = { DE = [\"seas\"] }"),
            );
            let all_up = View::build(&rt, &Report::default());
            let weu_down = mesh_view(
                &rt,
                &[
                    ("x", Weu, "weu-1", false, 5),
                    ("y", Weu, "wnam-1", true, 80),
                ],
            );
            let everything_down = mesh_view(
                &rt,
                &[
                    ("x", Weu, "weu-1", false, 5),
                    ("x", Weu, "wnam-1", false, 5),
                    ("x", Weu, "seas-1", false, 5),
                ],
            );
            let rg = |rank| PoolWhy::Geo {
                source: ListSource::RegionPools,
                rank,
            };
            let table: Vec<(&View, Request<'static>, &str, PoolWhy)> = vec![
                (&all_up, from(Some(Weu), Some("FR"), None), "weu", rg(0)),
                (&all_up, from(Some(Seas), None, None), "seas", rg(0)),
                (
                    &all_up,
                    from(Some(Weu), Some("DE"), None),
                    "seas",
                    PoolWhy::Geo {
                        source: ListSource::CountryPools,
                        rank: 0,
                    },
                ),
                // No list for the region: default pools.
                (
                    &all_up,
                    from(Some(Enam), Some("US"), None),
                    "wnam",
                    PoolWhy::Geo {
                        source: ListSource::DefaultPools,
                        rank: 0,
                    },
                ),
                (
                    &all_up,
                    from(None, None, None),
                    "wnam",
                    PoolWhy::Geo {
                        source: ListSource::DefaultPools,
                        rank: 0,
                    },
                ),
                // The region's pool is down: its list, then default_pools in order.
                (&weu_down, from(Some(Weu), Some("FR"), None), "wnam", rg(1)),
                (
                    &everything_down,
                    from(Some(Weu), None, None),
                    "seas",
                    PoolWhy::Fallback,
                ),
            ];
            for (view, r, want, why) in table {
                assert_eq!(
                    pool_of(&rt, view, &r),
                    (want.to_string(), why),
                    "{:?}",
                    r.geo
                );
            }
        }

        #[test]
        fn geo_node_pools_win() {
            let rt = runtime(
                POOLS3,
                &lb(
                    "geo",
                    "region_pools = { WEU = [\"weu\"] }\nnode_pools = { n1 = [\"seas\"] }",
                ),
            );
            let v = View::build(&rt, &Report::default());
            assert_eq!(pool_of(&rt, &v, &from(Some(Weu), None, None)).0, "seas");
        }

        #[test]
        fn health_is_judged_from_the_clients_region() {
            let rt = runtime(
                POOLS3,
                &lb(
                    "geo",
                    "region_pools = { WEU = [\"weu\"], WNAM = [\"weu\"] }",
                ),
            );
            // WEU observers see weu-1 down; WNAM observers see it up.
            let v = mesh_view(
                &rt,
                &[
                    ("e1", Weu, "weu-1", false, 5),
                    ("n1x", Wnam, "weu-1", true, 80),
                ],
            );
            assert_eq!(pool_of(&rt, &v, &from(Some(Weu), None, None)).0, "wnam");
            assert_eq!(pool_of(&rt, &v, &from(Some(Wnam), None, None)).0, "weu");
            // A region nobody observes from uses the node's region (WEU here).
            assert_eq!(pool_of(&rt, &v, &from(Some(Seas), None, None)).0, "wnam");
        }

        #[test]
        fn dynamic_follows_the_client_regions_rtt() {
            let rows = [
                ("e1", Weu, "weu-1", true, 10),
                ("e1", Weu, "wnam-1", true, 80),
                ("e1", Weu, "seas-1", true, 170),
                ("w1", Wnam, "weu-1", true, 75),
                ("w1", Wnam, "wnam-1", true, 5),
                ("w1", Wnam, "seas-1", true, 160),
            ];
            let rt = runtime(POOLS3, &lb("dynamic", ""));
            let v = mesh_view(&rt, &rows);
            let dynamic = |ms, from| PoolWhy::Dynamic {
                rtt: Duration::from_millis(ms),
                from,
            };
            assert_eq!(
                pool_of(&rt, &v, &from(Some(Weu), None, None)),
                ("weu".into(), dynamic(10, Weu))
            );
            assert_eq!(
                pool_of(&rt, &v, &from(Some(Wnam), None, None)),
                ("wnam".into(), dynamic(5, Wnam))
            );
            // No observer in SEAS: the receiving node's region (WEU) measures.
            assert_eq!(pool_of(&rt, &v, &from(Some(Seas), None, None)).0, "weu");
            // An unhealthy pool is not ranked, however fast.
            let mut down = rows.to_vec();
            down[0].3 = false;
            let v2 = mesh_view(&rt, &down);
            assert_eq!(
                pool_of(&rt, &v2, &from(Some(Weu), None, None)),
                ("wnam".into(), dynamic(80, Weu))
            );
            // vantage = node: the node's region, whoever the client is.
            let rt_node = runtime(POOLS3, &lb("dynamic", "vantage = \"node\""));
            let v3 = mesh_view(&rt_node, &rows);
            assert_eq!(
                pool_of(&rt_node, &v3, &from(Some(Wnam), None, None)).0,
                "weu"
            );
            // No RTT data at all: failover order.
            let none = View::build(&rt, &Report::default());
            assert_eq!(
                pool_of(&rt, &none, &from(Some(Weu), None, None)),
                ("wnam".into(), PoolWhy::Unranked { rank: 0 })
            );
        }

        #[test]
        fn proximity_picks_the_nearest_healthy_pool() {
            let rt = runtime(POOLS3, &lb("proximity", ""));
            let v = View::build(&rt, &Report::default());
            let frankfurt = Some((50.1, 8.7));
            let (p, why) = pool_of(&rt, &v, &from(Some(Weu), None, frankfurt));
            assert_eq!(p, "weu");
            let PoolWhy::Proximity { km } = why else {
                panic!("{why:?}")
            };
            assert!((km - 366.0).abs() < 20.0, "{km}");
            assert_eq!(
                pool_of(&rt, &v, &from(None, None, Some((13.7, 100.5)))).0,
                "seas"
            );
            // No location: failover order.
            assert_eq!(
                pool_of(&rt, &v, &from(None, None, None)),
                ("wnam".into(), PoolWhy::Unranked { rank: 0 })
            );
            // The nearest pool is down (seen from the node's region): the next nearest.
            let v2 = mesh_view(&rt, &[("e1", Weu, "weu-1", false, 5)]);
            assert_eq!(pool_of(&rt, &v2, &from(None, None, frankfurt)).0, "wnam");
        }

        #[test]
        fn trace_explains_a_geo_decision() {
            let rt = runtime(POOLS3, &lb("geo", "region_pools = { WEU = [\"weu\"] }"));
            let v = mesh_view(&rt, &[("e1", Weu, "weu-1", false, 5)]);
            let mut steps = Vec::new();
            decide(&rt, &v, 0, &from(Some(Weu), None, None), &mut steps).unwrap();
            assert_eq!(
                steps,
                vec![
                    Step::HealthFrom { region: Weu },
                    Step::List {
                        source: ListSource::RegionPools
                    },
                    Step::PoolUnhealthy {
                        pool: 1,
                        up: 0,
                        minimum: 1
                    },
                    Step::PoolTaken {
                        pool: 0,
                        why: PoolWhy::Geo {
                            source: ListSource::RegionPools,
                            rank: 1
                        }
                    },
                ]
            );
        }

        #[test]
        fn great_circle_distances() {
            let london = (51.5, -0.13);
            let new_york = (40.7, -74.0);
            let d = great_circle_km(london, new_york);
            assert!((d - 5570.0).abs() < 30.0, "{d}");
            assert_eq!(great_circle_km(london, london), 0.0);
        }
    }
}
