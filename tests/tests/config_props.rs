//! Every config that `switchyard check` accepts runs: generated config files, edge values
//! included (zero, one, durations past what the clock can add, empty lists, many objects),
//! are validated as `check` does, and each one accepted starts the node the binary runs,
//! takes a connection through an app, reloads, and shuts down, with no panic anywhere. Tokio
//! swallows a task's panic (the node would run on without, say, its mesh), so a panic hook
//! counts them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use switchyard_node::{App, Config, StartOptions};
use switchyard_tests::harness::{init_logs, origin, MeshCerts};
use switchyard_tests::origin::TestOrigin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Panics anywhere in the process, tasks included.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// How long the test waits for anything before moving on or failing.
const DEADLINE: Duration = Duration::from_secs(5);

/// Values that break a node or lie past an edge, whatever the field: zero, a nanosecond,
/// days, more than the clock can add, counts far past any sane one.
const EDGES: &[&str] = &[
    "0",
    "\"0s\"",
    "\"1ns\"",
    "\"9ms\"",
    "\"8days\"",
    "\"300000000000years\"",
    "18446744073709551615",
];

/// Counts past any sane one, and past what the field's type holds.
const COUNT_EDGES: &[&str] = &["0", "11", "101", "4294967295", "18446744073709551615"];

/// A duration field's value: mostly one of `sane` (the edges of its range among them), one
/// in thirty from `EDGES`.
fn value(sane: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop_oneof![
        29 => prop::sample::select(sane),
        1 => prop::sample::select(EDGES),
    ]
}

/// A count field's value, likewise.
fn number(sane: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    prop_oneof![
        29 => prop::sample::select(sane),
        1 => prop::sample::select(COUNT_EDGES),
    ]
}

/// A reference to one of the objects of a kind: mostly an index (taken modulo their number),
/// one in twenty a name that does not exist.
fn reference() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![19 => (0usize..4).prop_map(Some), 1 => Just(None)]
}

fn name_of(prefix: &str, r: Option<usize>, n: usize) -> String {
    match r {
        Some(i) if n > 0 => format!("{prefix}{}", i % n),
        _ => format!("{prefix}-none"),
    }
}

#[derive(Debug, Clone)]
struct Monitor {
    kind: &'static str,
    interval: &'static str,
    timeout: &'static str,
    retries: &'static str,
    consecutive_up: &'static str,
    consecutive_down: &'static str,
}

#[derive(Debug, Clone)]
struct Pool {
    /// Which monitor, if any.
    monitor: Option<Option<usize>>,
    /// Per origin: whether it is the live test origin (else a refused port), its weight,
    /// whether it is enabled.
    origins: Vec<(bool, f64, bool)>,
    minimum_origins: &'static str,
    steering: &'static str,
}

#[derive(Debug, Clone)]
struct LoadBalancer {
    steering: &'static str,
    default_pools: Vec<Option<usize>>,
    affinity: bool,
    affinity_ttl: &'static str,
}

#[derive(Debug, Clone)]
struct AppGen {
    lb: Option<usize>,
    connect_timeout: &'static str,
    idle_timeout: &'static str,
    max_connections: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Mesh {
    expected_size: &'static str,
    /// probe_period, probe_timeout, suspect_timeout, announce_interval, anti_entropy_interval.
    timings: [Option<&'static str>; 5],
}

#[derive(Debug, Clone)]
struct Generated {
    drain_timeout: &'static str,
    monitors: Vec<Monitor>,
    pools: Vec<Pool>,
    load_balancers: Vec<LoadBalancer>,
    apps: Vec<AppGen>,
    mesh: Option<Mesh>,
}

fn monitor() -> impl Strategy<Value = Monitor> {
    (
        prop::sample::select(vec!["tcp", "http"]),
        value(&["\"10ms\"", "\"250ms\"", "\"1s\"", "60", "\"1day\""]),
        // At most the shortest interval, so that most pairs are valid.
        value(&["\"1ms\"", "\"5ms\"", "\"10ms\""]),
        number(&["0", "2", "10"]),
        number(&["0", "1", "100"]),
        number(&["0", "1", "100"]),
    )
        .prop_map(
            |(kind, interval, timeout, retries, consecutive_up, consecutive_down)| Monitor {
                kind,
                interval,
                timeout,
                retries,
                consecutive_up,
                consecutive_down,
            },
        )
}

fn origin_gen() -> impl Strategy<Value = (bool, f64, bool)> {
    (
        any::<bool>(),
        prop_oneof![29 => prop::sample::select(vec![0.0, 0.5, 1.0]), 1 => Just(1.5)],
        prop::bool::weighted(0.9),
    )
}

fn pool() -> impl Strategy<Value = Pool> {
    (
        prop::option::of(reference()),
        // Empty now and then; many, to stand for a large pool.
        prop_oneof![1 => Just(0usize), 18 => 1usize..4, 1 => 30usize..60]
            .prop_flat_map(|n| prop::collection::vec(origin_gen(), n)),
        number(&["1"]),
        prop::sample::select(vec!["random", "hash", "least_connections"]),
    )
        .prop_map(|(monitor, origins, minimum_origins, steering)| Pool {
            monitor,
            origins,
            minimum_origins,
            steering,
        })
}

fn load_balancer() -> impl Strategy<Value = LoadBalancer> {
    (
        prop::sample::select(vec!["failover", "random", "geo", "dynamic"]),
        prop_oneof![1 => Just(Vec::new()), 19 => prop::collection::vec(reference(), 1..4)],
        any::<bool>(),
        value(&["\"1s\"", "\"10m\"", "\"23h\"", "\"7days\""]),
    )
        .prop_map(
            |(steering, default_pools, affinity, affinity_ttl)| LoadBalancer {
                steering,
                default_pools,
                affinity,
                affinity_ttl,
            },
        )
}

fn app() -> impl Strategy<Value = AppGen> {
    (
        reference(),
        value(&["\"1ms\"", "\"1s\"", "\"10m\""]),
        value(&["\"1s\"", "300", "\"7days\""]),
        prop::option::of(number(&["1", "10000"])),
    )
        .prop_map(
            |(lb, connect_timeout, idle_timeout, max_connections)| AppGen {
                lb,
                connect_timeout,
                idle_timeout,
                max_connections,
            },
        )
}

fn mesh() -> impl Strategy<Value = Mesh> {
    let period = || value(&["\"100ms\"", "\"1s\"", "\"1h\""]);
    (
        number(&["1", "50", "10000"]),
        (
            prop::option::of(value(&["\"100ms\"", "\"1s\"", "\"5m\""])),
            prop::option::of(value(&["\"10ms\"", "\"50ms\""])),
            prop::option::of(period()),
            prop::option::of(period()),
            prop::option::of(period()),
        ),
    )
        .prop_map(|(expected_size, (a, b, c, d, e))| Mesh {
            expected_size,
            timings: [a, b, c, d, e],
        })
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        value(&["0", "\"1s\"", "\"30s\"", "\"1day\""]),
        prop::collection::vec(monitor(), 0..3),
        prop::collection::vec(pool(), 1..4),
        prop::collection::vec(load_balancer(), 1..3),
        prop::collection::vec(app(), 0..3),
        prop::option::weighted(0.3, mesh()),
    )
        .prop_map(
            |(drain_timeout, monitors, pools, load_balancers, apps, mesh)| Generated {
                drain_timeout,
                monitors,
                pools,
                load_balancers,
                apps,
                mesh,
            },
        )
}

impl Generated {
    /// The config file: the live origin at `live`, certificates from `certs`.
    fn toml(&self, live: SocketAddr, certs: &MeshCerts) -> String {
        let mut t = format!(
            "[node]\nid = \"prop-1\"\nregion = \"WEU\"\nstatus_listen = \"127.0.0.1:0\"\ndrain_timeout = {}\n\n",
            self.drain_timeout
        );
        if let Some(m) = &self.mesh {
            t += &format!(
                "[mesh]\ncluster = \"prop\"\nlisten = \"127.0.0.1:0\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nexpected_size = {}\n",
                certs.ca().display(),
                certs.dir.join("prop-1.crt").display(),
                certs.dir.join("prop-1.key").display(),
                m.expected_size,
            );
            let names = [
                "probe_period",
                "probe_timeout",
                "suspect_timeout",
                "announce_interval",
                "anti_entropy_interval",
            ];
            for (name, value) in names.iter().zip(m.timings) {
                if let Some(v) = value {
                    t += &format!("{name} = {v}\n");
                }
            }
            t += "\n";
        }
        for (i, m) in self.monitors.iter().enumerate() {
            t += &format!(
                "[[monitor]]\nname = \"m{i}\"\ntype = \"{}\"\ninterval = {}\ntimeout = {}\nretries = {}\nconsecutive_up = {}\nconsecutive_down = {}\n\n",
                m.kind, m.interval, m.timeout, m.retries, m.consecutive_up, m.consecutive_down
            );
        }
        for (i, p) in self.pools.iter().enumerate() {
            t += &format!(
                "[[pool]]\nname = \"p{i}\"\nminimum_origins = {}\norigin_steering = \"{}\"\n",
                p.minimum_origins, p.steering
            );
            match p.monitor {
                // With no monitor defined, only a name that does not exist is a reference.
                Some(Some(_)) if self.monitors.is_empty() => {}
                Some(m) => {
                    t += &format!("monitor = \"{}\"\n", name_of("m", m, self.monitors.len()))
                }
                None => {}
            }
            let origins: Vec<String> = p
                .origins
                .iter()
                .enumerate()
                .map(|(j, (is_live, weight, enabled))| {
                    let addr = if *is_live {
                        live.to_string()
                    } else {
                        // Nothing listens on port 1: connects are refused at once.
                        "127.0.0.1:1".to_string()
                    };
                    format!(
                        "{{ name = \"o{j}\", address = \"{addr}\", weight = {weight:?}, enabled = {enabled} }}"
                    )
                })
                .collect();
            t += &format!("origins = [{}]\n\n", origins.join(", "));
        }
        for (i, lb) in self.load_balancers.iter().enumerate() {
            let pools: Vec<String> = lb
                .default_pools
                .iter()
                .map(|p| format!("\"{}\"", name_of("p", *p, self.pools.len())))
                .collect();
            t += &format!(
                "[[load_balancer]]\nname = \"lb{i}\"\nsteering = \"{}\"\ndefault_pools = [{}]\nsession_affinity = \"{}\"\naffinity_ttl = {}\n\n",
                lb.steering,
                pools.join(", "),
                if lb.affinity { "client_ip" } else { "none" },
                lb.affinity_ttl
            );
        }
        for (i, a) in self.apps.iter().enumerate() {
            t += &format!(
                "[[app]]\nname = \"a{i}\"\nlisten = \"127.0.0.1:0\"\nload_balancer = \"{}\"\nconnect_timeout = {}\nidle_timeout = {}\n",
                name_of("lb", a.lb, self.load_balancers.len()),
                a.connect_timeout,
                a.idle_timeout
            );
            if let Some(n) = a.max_connections {
                t += &format!("max_connections = {n}\n");
            }
            t += "\n";
        }
        t
    }
}

/// Starts the node, takes a connection through each app, reloads, shuts down.
async fn exercise(cfg: Config) -> Result<(), String> {
    let app = App::start(cfg.clone(), StartOptions::default())
        .await
        .map_err(|e| format!("a config check accepts did not start: {e}"))?;
    if let Some(mesh) = &app.state().mesh {
        // The mesh task has run (and created its timers) once it publishes this node.
        let mut rx = mesh.state();
        let ran = tokio::time::timeout(DEADLINE, rx.wait_for(|s| !s.members.is_empty())).await;
        if !matches!(ran, Ok(Ok(_))) {
            return Err("the mesh task never published its state".into());
        }
    }
    for a in &cfg.apps {
        for addr in app.app_addrs(&a.name).await {
            through(addr).await;
        }
    }
    let (code, _) = switchyard_node::status::http_get(app.status_addr(), "/v1/status")
        .await
        .map_err(|e| format!("status did not answer: {e}"))?;
    if code != 200 {
        return Err(format!("status answered {code}"));
    }
    app.reload(cfg.clone())
        .await
        .map_err(|e| format!("reloading the same config was refused: {e}"))?;
    if let Some(a) = cfg.apps.first() {
        for addr in app.app_addrs(&a.name).await {
            through(addr).await;
        }
    }
    app.shutdown(Duration::from_millis(100)).await;
    Ok(())
}

/// One connection through an app: whatever answers (the origin's name, a refusal, nothing
/// within the deadline), it must not panic the node.
async fn through(addr: SocketAddr) {
    let Ok(Ok(mut s)) = tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await else {
        return;
    };
    let _ = s.write_all(b"hello\n").await;
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await;
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Validates `text` as `check` does; when accepted, runs it. `Ok(true)`: accepted and ran;
/// `Ok(false)`: refused, naming where; `Err`: a refusal without a location, a panic, or a
/// node that did not run.
fn check_and_run(rt: &tokio::runtime::Runtime, text: &str) -> Result<bool, String> {
    let cfg = match Config::parse(text, None) {
        Ok(cfg) => cfg,
        Err(e) => {
            // A refusal names where: "config:LINE: ..." or "config: ...".
            if !e.to_string().starts_with("config") {
                return Err(format!("a refusal without its location: {e}"));
            }
            if std::env::var_os("PROPS_DEBUG").is_some() {
                eprintln!("refused: {e}");
            }
            return Ok(false);
        }
    };
    let before = PANICS.load(Ordering::SeqCst);
    let outcome = rt.block_on(exercise(cfg));
    let panics = PANICS.load(Ordering::SeqCst) - before;
    if panics > 0 {
        return Err(format!(
            "a config check accepts panicked the node ({panics} panics):\n{text}"
        ));
    }
    outcome.map_err(|e| format!("{e}\n{text}"))?;
    Ok(true)
}

/// A config that runs: every object once, the mesh on, every value sane.
fn base() -> Generated {
    Generated {
        drain_timeout: "\"1s\"",
        monitors: vec![Monitor {
            kind: "tcp",
            interval: "\"1s\"",
            timeout: "\"500ms\"",
            retries: "2",
            consecutive_up: "1",
            consecutive_down: "1",
        }],
        pools: vec![Pool {
            monitor: Some(Some(0)),
            origins: vec![(true, 1.0, true), (false, 0.5, true)],
            minimum_origins: "1",
            steering: "hash",
        }],
        load_balancers: vec![LoadBalancer {
            steering: "failover",
            default_pools: vec![Some(0)],
            affinity: true,
            affinity_ttl: "\"10m\"",
        }],
        apps: vec![AppGen {
            lb: Some(0),
            connect_timeout: "\"5s\"",
            idle_timeout: "300",
            max_connections: Some("100"),
        }],
        mesh: Some(Mesh {
            expected_size: "50",
            timings: [
                Some("\"1s\""),
                Some("\"250ms\""),
                Some("\"3s\""),
                Some("\"1s\""),
                Some("\"1s\""),
            ],
        }),
    }
}

/// Every edge value in every duration and count field of an otherwise sane config, one at a
/// time: each is refused with its location, or runs without a panic.
#[test]
fn every_edge_value_in_every_field_is_refused_or_runs() {
    init_logs();
    count_panics();
    let rt = runtime();
    let certs = MeshCerts::new("edges");
    certs.issue("prop-1", "WEU");
    let live: TestOrigin = rt.block_on(origin("live-edges"));
    type Set = fn(&mut Generated, &'static str);
    let durations: [(&str, Set); 13] = [
        ("drain_timeout", |g, v| g.drain_timeout = v),
        ("monitor interval", |g, v| g.monitors[0].interval = v),
        ("monitor timeout", |g, v| g.monitors[0].timeout = v),
        ("affinity_ttl", |g, v| g.load_balancers[0].affinity_ttl = v),
        ("connect_timeout", |g, v| g.apps[0].connect_timeout = v),
        ("idle_timeout", |g, v| g.apps[0].idle_timeout = v),
        ("probe_period", |g, v| set_timing(g, 0, v)),
        ("probe_timeout", |g, v| set_timing(g, 1, v)),
        ("suspect_timeout", |g, v| set_timing(g, 2, v)),
        ("announce_interval", |g, v| set_timing(g, 3, v)),
        ("anti_entropy_interval", |g, v| set_timing(g, 4, v)),
        // The monitor's timeout at its interval, the longest it may be.
        ("monitor interval = timeout", |g, v| {
            g.monitors[0].interval = v;
            g.monitors[0].timeout = v;
        }),
        // The probe timeout just below the period.
        ("probe_period > probe_timeout", |g, v| {
            set_timing(g, 0, v);
            set_timing(g, 1, "\"9ms\"");
        }),
    ];
    let counts: [(&str, Set); 6] = [
        ("retries", |g, v| g.monitors[0].retries = v),
        ("consecutive_up", |g, v| g.monitors[0].consecutive_up = v),
        ("consecutive_down", |g, v| {
            g.monitors[0].consecutive_down = v
        }),
        ("minimum_origins", |g, v| g.pools[0].minimum_origins = v),
        ("max_connections", |g, v| {
            g.apps[0].max_connections = Some(v)
        }),
        ("expected_size", |g, v| {
            if let Some(m) = g.mesh.as_mut() {
                m.expected_size = v;
            }
        }),
    ];
    let mut cases = vec![("base", base())];
    for (field, set) in durations {
        for v in EDGES
            .iter()
            .chain(&["\"10ms\"", "\"100ms\"", "\"1h\"", "\"7days\""])
        {
            let mut g = base();
            set(&mut g, v);
            cases.push((field, g));
        }
    }
    for (field, set) in counts {
        for v in COUNT_EDGES.iter().chain(&["1", "10000"]) {
            let mut g = base();
            set(&mut g, v);
            cases.push((field, g));
        }
    }
    let mut ran = 0;
    let mut failures = Vec::new();
    for (field, g) in &cases {
        match check_and_run(rt, &g.toml(live.addr(), &certs)) {
            Ok(true) => ran += 1,
            Ok(false) => {}
            Err(e) => failures.push(format!("{field}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The base config and the in-range edges ran.
    assert!(ran > cases.len() / 4, "only {ran} of {} ran", cases.len());
}

fn set_timing(g: &mut Generated, i: usize, v: &'static str) {
    if let Some(m) = g.mesh.as_mut() {
        m.timings[i] = Some(v);
    }
}

#[test]
fn every_config_check_accepts_runs_without_a_panic() {
    init_logs();
    count_panics();
    let rt = runtime();
    let certs = MeshCerts::new("props");
    certs.issue("prop-1", "WEU");
    let live: TestOrigin = rt.block_on(origin("live"));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let accepted = AtomicUsize::new(0);
    let with_mesh = AtomicUsize::new(0);
    let result = runner.run(&generated(), |g| {
        let text = g.toml(live.addr(), &certs);
        let ran = check_and_run(rt, &text);
        prop_assert!(ran.is_ok(), "{}", ran.err().unwrap_or_default());
        if ran == Ok(true) {
            accepted.fetch_add(1, Ordering::SeqCst);
            if g.mesh.is_some() {
                with_mesh.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Most generated configs break some rule; enough must pass to exercise the node.
    let accepted = accepted.into_inner();
    assert!(accepted > 0, "no generated config was accepted");
    eprintln!(
        "{accepted} of 128 generated configs were accepted and ran, {} with a mesh",
        with_mesh.into_inner()
    );
}
