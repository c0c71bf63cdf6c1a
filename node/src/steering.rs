//! Steering: which pool and which origin serve one connection. A pure function of the
//! runtime, the health view, the load balancer, the client and the time; randomness comes in
//! as a number. No I/O and no allocation, so it is tested table by table and costs well under
//! a microsecond. A `Trace` receives the reasons when someone asks (explain); the proxy
//! passes `()`, which compiles to nothing.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::config::{OriginSteering, SteeringPolicy};
use crate::runtime::{Runtime, View};

/// The origin a client was sent to before, and until when it may keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sticky {
    pub pool: usize,
    pub origin: usize,
    pub expires: Instant,
}

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
}

/// Why a pool was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolWhy {
    /// Session affinity kept the client's previous origin.
    Affinity,
    /// The first healthy pool of `default_pools`, at this position.
    Failover { rank: usize },
    /// Drawn by pool weight among the healthy default pools.
    Random,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub pool: usize,
    pub origin: usize,
    pub pool_why: PoolWhy,
    pub origin_why: OriginWhy,
}

/// What steering considered, for explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A pool passed over: `up` usable origins where `minimum` are needed.
    PoolUnhealthy {
        pool: usize,
        up: usize,
        minimum: usize,
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

/// Chooses a pool and an origin for a connection to load balancer `lb`. None when the
/// chosen pool has no enabled origin left to try.
pub fn decide(
    rt: &Runtime,
    view: &View,
    lb: usize,
    req: &Request<'_>,
    trace: &mut impl Trace,
) -> Option<Decision> {
    let lb = &rt.load_balancers[lb];
    if let Some(s) = req.sticky {
        if req.now >= s.expires {
            trace.step(Step::StickyExpired);
        } else if usable(view, req, s.pool, s.origin) {
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

    let healthy = |pool: usize, trace: &mut dyn FnMut(Step)| {
        let up = up_count(view, req, pool);
        let minimum = rt.pools[pool].minimum_origins;
        if up < minimum {
            trace(Step::PoolUnhealthy { pool, up, minimum });
        }
        up >= minimum
    };
    let mut note = |s: Step| trace.step(s);

    let chosen = match lb.policy {
        SteeringPolicy::Random => {
            let total: f64 = lb
                .default_pools
                .iter()
                .zip(&lb.pool_weights)
                .filter(|(p, _)| healthy(**p, &mut note))
                .map(|(_, w)| *w)
                .sum();
            let draw = unit(req.random) * total;
            let mut acc = 0.0;
            let mut pick = None;
            for (p, w) in lb.default_pools.iter().zip(&lb.pool_weights) {
                if *w > 0.0 && up_count(view, req, *p) >= rt.pools[*p].minimum_origins {
                    acc += w;
                    pick = Some(*p);
                    if draw < acc {
                        break;
                    }
                }
            }
            pick.map(|p| (p, PoolWhy::Random))
        }
        // Geo, dynamic and proximity are refused by validation until GeoIP and the mesh
        // land; should one get here, failover order is their documented last resort.
        _ => lb
            .default_pools
            .iter()
            .enumerate()
            .find(|(_, p)| healthy(**p, &mut note))
            .map(|(rank, p)| (*p, PoolWhy::Failover { rank })),
    };
    let (pool, pool_why) = chosen.unwrap_or((lb.fallback_pool, PoolWhy::Fallback));
    trace.step(Step::PoolTaken {
        pool,
        why: pool_why,
    });
    let (origin, origin_why) = pick_origin(rt, view, pool, req)?;
    Some(Decision {
        pool,
        origin,
        pool_why,
        origin_why,
    })
}

fn usable(view: &View, req: &Request<'_>, pool: usize, origin: usize) -> bool {
    view.pools
        .get(pool)
        .and_then(|p| p.origins.get(origin))
        .is_some_and(|o| o.up)
        && !req.exclude.contains(&(pool, origin))
}

fn up_count(view: &View, req: &Request<'_>, pool: usize) -> usize {
    (0..view.pools[pool].origins.len())
        .filter(|o| usable(view, req, pool, *o))
        .count()
}

/// Picks an origin of `pool`: among its usable origins, or, when none is (a fallback pool
/// is used regardless of health), among its enabled origins not yet tried.
fn pick_origin(
    rt: &Runtime,
    view: &View,
    pool: usize,
    req: &Request<'_>,
) -> Option<(usize, OriginWhy)> {
    let p = &rt.pools[pool];
    let any_usable = (0..p.origins.len()).any(|o| usable(view, req, pool, o));
    let candidate = |o: usize| {
        if any_usable {
            usable(view, req, pool, o)
        } else {
            p.origins[o].enabled && !req.exclude.contains(&(pool, o))
        }
    };
    let n = p.origins.len();
    if !(0..n).any(candidate) {
        return None;
    }
    // A weight of 0 takes no traffic, unless every candidate weighs 0.
    let all_zero = (0..n)
        .filter(|o| candidate(*o))
        .all(|o| p.origins[o].weight <= 0.0);
    let weight = |o: usize| {
        if all_zero {
            1.0
        } else {
            p.origins[o].weight
        }
    };
    let weighted = |o: usize| candidate(o) && weight(o) > 0.0;

    let origin = match p.steering {
        OriginSteering::Random => {
            let total: f64 = (0..n).filter(|o| weighted(*o)).map(weight).sum();
            let draw = unit(req.random) * total;
            let mut acc = 0.0;
            let mut pick = None;
            for o in (0..n).filter(|o| weighted(*o)) {
                acc += weight(o);
                pick = Some(o);
                if draw < acc {
                    break;
                }
            }
            pick
        }
        OriginSteering::Hash => {
            // Weighted rendezvous hashing: each origin's score depends only on the client
            // and that origin, so removing one origin moves only the clients it had.
            let client = hash_ip(req.client);
            (0..n)
                .filter(|o| weighted(*o))
                .map(|o| {
                    let h = mix(client ^ hash_str(&p.origins[o].name));
                    // In (0, 1]: never ln(0).
                    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    (o, -weight(o) / u.ln())
                })
                .fold(None, |best: Option<(usize, f64)>, (o, s)| match best {
                    Some((_, bs)) if bs >= s => best,
                    _ => Some((o, s)),
                })
                .map(|(o, _)| o)
        }
        OriginSteering::LeastConnections => {
            // Start at a random origin so that ties spread instead of piling on the first.
            let start = (req.random % n as u64) as usize;
            (0..n)
                .map(|i| (start + i) % n)
                .filter(|o| weighted(*o))
                .map(|o| {
                    let active = p.origins[o].active.load(Ordering::Relaxed) as f64;
                    (o, (active + 1.0) / weight(o))
                })
                .fold(None, |best: Option<(usize, f64)>, (o, s)| match best {
                    Some((_, bs)) if bs <= s => best,
                    _ => Some((o, s)),
                })
                .map(|(o, _)| o)
        }
    }?;
    let why = if !any_usable {
        OriginWhy::NoneHealthy
    } else {
        match p.steering {
            OriginSteering::Random => OriginWhy::Random,
            OriginSteering::Hash => OriginWhy::Hash,
            OriginSteering::LeastConnections => OriginWhy::LeastConnections,
        }
    };
    Some((origin, why))
}

/// A draw in [0, 1).
fn unit(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's finalizer: a fixed, well-mixed function, the same on every node and release.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a: stable across processes, unlike std's randomly keyed hasher.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hash_str(s: &str) -> u64 {
    mix(fnv(s.as_bytes()))
}

fn hash_ip(ip: IpAddr) -> u64 {
    match crate::config::canonical_ip(ip) {
        IpAddr::V4(v4) => mix(fnv(&v4.octets())),
        IpAddr::V6(v6) => mix(fnv(&v6.octets())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::OriginHealth;
    use crate::runtime::{Report, Snapshot};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn runtime(pools: &str, lb: &str) -> Runtime {
        let text = format!(
            "[node]\nid = \"n1\"\nregion = \"WEU\"\n[[monitor]]\nname = \"m\"\ntype = \"tcp\"\n{pools}\n{lb}\n"
        );
        Runtime::compile(Arc::new(Config::parse(&text, None).unwrap()), None)
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
    fn view(rt: &Runtime, down: &[&str]) -> View {
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
        }
    }

    fn pick(rt: &Runtime, v: &View, r: &Request<'_>) -> Option<(String, String, PoolWhy)> {
        decide(rt, v, 0, r, &mut ()).map(|d| {
            (
                rt.pools[d.pool].name.to_string(),
                rt.pools[d.pool].origins[d.origin].name.to_string(),
                d.pool_why,
            )
        })
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

    fn hash_runtime(weights: &[f64]) -> Runtime {
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

    fn random_runtime(weights: &[f64]) -> Runtime {
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

        /// Weighted random follows the weights within 3 points over 4,000 draws.
        #[test]
        fn weights_are_respected(weights in proptest::collection::vec(0.05f64..=1.0, 2..5), seed in any::<u64>()) {
            let rt = random_runtime(&weights);
            let v = view(&rt, &[]);
            let n = 4000u64;
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
}
