//! One steering decision, GeoIP lookup included: the work the proxy does per connection
//! before it dials. Target: under 1 µs at p99, with no heap allocation.
//!
//! `cargo bench -p switchyard-node --bench steering` prints criterion's figures, then p50/p99
//! over single timed decisions and the allocations counted per decision.
// A benchmark times with the OS clock: paused time would measure nothing.
#![allow(clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use switchyard_node::config::{Config, GeoConfig};
use switchyard_node::core::affinity::Affinity;
use switchyard_node::core::compiled::CompiledConfig;
use switchyard_node::core::steering::{decide, Request};
use switchyard_node::core::view::{Report, View};
use switchyard_node::locate::Locator;

/// Counts every allocation, to show the hot path makes none.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
[node]
id = "edge-weu"
region = "WEU"

[[monitor]]
name = "tcp"
type = "tcp"

[[pool]]
name = "wnam"
monitor = "tcp"
latitude = 37.4
longitude = -122.1
origin_steering = "hash"
origins = [{ name = "wnam-1", address = "10.0.1.1:443" }, { name = "wnam-2", address = "10.0.1.2:443" }]

[[pool]]
name = "weu"
monitor = "tcp"
latitude = 50.1
longitude = 8.7
origin_steering = "hash"
origins = [{ name = "weu-1", address = "10.0.2.1:443" }, { name = "weu-2", address = "10.0.2.2:443" }]

[[pool]]
name = "seas"
monitor = "tcp"
latitude = 1.35
longitude = 103.8
origin_steering = "hash"
origins = [{ name = "seas-1", address = "10.0.3.1:443" }, { name = "seas-2", address = "10.0.3.2:443" }]

[[load_balancer]]
name = "geo"
steering = "geo"
default_pools = ["wnam", "weu", "seas"]
region_pools = { WNAM = ["wnam"], WEU = ["weu"], SEAS = ["seas"] }

[[load_balancer]]
name = "dynamic"
steering = "dynamic"
default_pools = ["wnam", "weu", "seas"]

[[load_balancer]]
name = "proximity"
steering = "proximity"
default_pools = ["wnam", "weu", "seas"]
"#;

/// A GeoIP database of 1,000 /24 networks over a few countries.
fn database(dir: &std::path::Path) -> std::path::PathBuf {
    let countries = [
        "US,CA,37.3,-121.9",
        "DE,HE,50.1,8.7",
        "SG,,1.35,103.8",
        "GB,ENG,51.5,-0.1",
        "JP,13,35.7,139.7",
    ];
    let mut csv = String::new();
    for i in 0..1000u32 {
        let net = Ipv4Addr::from(0x5000_0000 + (i << 8));
        csv.push_str(&format!(
            "{net}/24,{}\n",
            countries[i as usize % countries.len()]
        ));
    }
    let path = dir.join("bench.mmdb");
    switchyard_geo::geoip::build(&csv, &path).expect("bench database builds");
    path
}

struct Fixture {
    rt: CompiledConfig,
    view: View,
    geo: Locator,
    affinity: Affinity,
    clients: Vec<IpAddr>,
}

fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("sy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = Config::parse(CONFIG, None).expect("bench config is valid");
    let rt = CompiledConfig::compile(Arc::new(cfg), None);
    let view = View::build(&rt, &Report::default());
    let geo = Locator::new(
        Some(&GeoConfig {
            database: Some(database(&dir)),
            ..GeoConfig::default()
        }),
        rt.region,
    )
    .expect("bench database opens");
    let clients = (0..4096u32)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::from(
                0x5000_0000 + (i.wrapping_mul(2_654_435_761) % (1000 << 8)),
            ))
        })
        .collect();
    Fixture {
        rt,
        view,
        geo,
        affinity: Affinity::default(),
        clients,
    }
}

fn one(f: &Fixture, lb: usize, client: IpAddr, random: u64, now: tokio::time::Instant) -> usize {
    let geo = f.geo.locate_fast(client);
    let req = Request::new(&f.rt, lb, &f.affinity, client, geo, now, random);
    decide(&f.rt, &f.view, lb, &req, &mut ())
        .map(|d| d.origin)
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let now = tokio::time::Instant::now();
    for (lb, name) in [(0, "geo"), (1, "dynamic"), (2, "proximity")] {
        let mut i = 0usize;
        c.bench_function(&format!("decide+geoip/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % f.clients.len();
                black_box(one(&f, lb, black_box(f.clients[i]), i as u64, now))
            })
        });
    }
    c.bench_function("geoip/locate_fast", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % f.clients.len();
            black_box(f.geo.locate_fast(black_box(f.clients[i])))
        })
    });
}

/// p50 and p99 of single decisions, and allocations per decision.
fn percentiles() {
    let f = fixture();
    let now = tokio::time::Instant::now();
    println!("\nsingle decisions (GeoIP lookup included), 200,000 each:");
    println!(
        "{:<12} {:>8} {:>8} {:>14}",
        "policy", "p50 ns", "p99 ns", "allocs/decision"
    );
    for (lb, name) in [(0, "geo"), (1, "dynamic"), (2, "proximity")] {
        // Warm up.
        for (i, c) in f.clients.iter().enumerate() {
            black_box(one(&f, lb, *c, i as u64, now));
        }
        let n = 200_000usize;
        let mut samples = Vec::with_capacity(n);
        let before = ALLOCS.load(Ordering::Relaxed);
        for i in 0..n {
            let c = f.clients[i % f.clients.len()];
            let t = Instant::now();
            black_box(one(&f, lb, c, i as u64, now));
            samples.push(t.elapsed().as_nanos() as u64);
        }
        // `samples` was allocated up front; nothing in the loop may allocate.
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        samples.sort_unstable();
        println!(
            "{:<12} {:>8} {:>8} {:>14.3}",
            name,
            samples[n / 2],
            samples[n * 99 / 100],
            allocs as f64 / n as f64
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
