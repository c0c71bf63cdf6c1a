//! The docker compose demo (`deploy/compose/`) is the testnet's topology in containers: its
//! hand-written, commented configs must not drift from `switchyard_tests::topology`. This
//! checks that they name the same nodes and regions, pools in the same places, the same
//! failover and geo load balancers, apps in front of them, the same health monitor port and
//! path, and that its demo GeoIP data places each region's clients where the testnet does.
//! What is the compose demo's own (addresses, one origin a pool, timings) is left alone.

use std::path::PathBuf;

use switchyard_node::Config;
use switchyard_tests::topology::{self, Mode, Topology, HEALTH_PORT, ORIGIN_PORT};

fn compose_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose")
}

fn compose_config(id: &str) -> Config {
    let path = compose_dir().join("configs").join(format!("{id}.toml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Config::parse(&text, Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn compose_configs_follow_the_testnet_topology() {
    let topo = Topology::new(Mode::Loopback);
    let mut mesh_addrs = Vec::new();
    for (id, region) in topology::NODES {
        let cfg = compose_config(id);
        let at = format!("deploy/compose/configs/{id}.toml");
        assert_eq!(cfg.node.id, id, "{at}: node id");
        assert_eq!(cfg.node.region.to_string(), region, "{at}: region");

        let [monitor] = cfg.monitors.as_slice() else {
            panic!(
                "{at}: one monitor, like the testnet, not {:?}",
                cfg.monitors
            );
        };
        assert_eq!(monitor.port, Some(HEALTH_PORT), "{at}: monitor port");
        assert_eq!(
            monitor.path.as_deref(),
            Some(topo.monitor.path.as_str()),
            "{at}"
        );
        let want_codes = topo.monitor.expected_codes.as_deref().map(|c| {
            c.parse::<switchyard_node::config::ExpectedCodes>()
                .expect("the topology's expected codes parse")
        });
        assert_eq!(monitor.expected_codes, want_codes, "{at}: expected codes");

        let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
        let want: Vec<&str> = topology::POOLS.iter().map(|p| p.0).collect();
        assert_eq!(names, want, "{at}: pools");
        for (pool, (name, pool_region, lat, lon)) in cfg.pools.iter().zip(topology::POOLS) {
            assert_eq!(
                (pool.latitude, pool.longitude),
                (Some(lat), Some(lon)),
                "{at}: pool {name}'s place"
            );
            assert_eq!(pool.monitor.as_deref(), Some("http"), "{at}: pool {name}");
            assert!(!pool.origins.is_empty(), "{at}: pool {name} has no origins");
            for o in &pool.origins {
                assert!(
                    o.address.port == ORIGIN_PORT,
                    "{at}: origin {} of {name} ({pool_region}) is not on port {ORIGIN_PORT}",
                    o.name
                );
            }
        }

        assert!(!cfg.load_balancers.is_empty(), "{at}: no load balancers");
        for lb in &cfg.load_balancers {
            let want = topo
                .load_balancer(&lb.name)
                .unwrap_or_else(|| panic!("{at}: load balancer {} is not the testnet's", lb.name));
            assert_eq!(
                lb.steering.as_str(),
                want.steering,
                "{at}: {} steering",
                lb.name
            );
            assert_eq!(
                lb.default_pools, want.default_pools,
                "{at}: {} pools",
                lb.name
            );
            assert_eq!(
                lb.fallback_pool, want.fallback_pool,
                "{at}: {} fallback",
                lb.name
            );
            let mut region_pools: Vec<(String, Vec<String>)> = lb
                .region_pools
                .iter()
                .map(|(r, p)| (r.to_string(), p.clone()))
                .collect();
            region_pools.sort();
            let mut want_rp = want.region_pools.clone();
            want_rp.sort();
            assert_eq!(region_pools, want_rp, "{at}: {} region pools", lb.name);
        }
        for app in &cfg.apps {
            assert!(
                topology::APPS.contains(&app.name.as_str()),
                "{at}: app {} is not one of the testnet's {:?}",
                app.name,
                topology::APPS
            );
            assert_eq!(app.load_balancer, app.name, "{at}: app {}", app.name);
        }

        let mesh = cfg
            .mesh
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: no [mesh]"));
        mesh_addrs.push((id, mesh.advertise, mesh.seeds.clone()));
    }
    // Every node seeds from the others' addresses.
    for (id, _, seeds) in &mesh_addrs {
        let others: Vec<_> = (mesh_addrs.iter())
            .filter(|(o, ..)| o != id)
            .filter_map(|(_, adv, _)| *adv)
            .collect();
        assert_eq!(seeds, &others, "{id}: seeds are the other nodes' addresses");
    }
}

#[test]
fn compose_geoip_places_clients_as_the_testnet_does() {
    let path = compose_dir().join("geo.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut seen = Vec::new();
    for line in text.lines() {
        let Some((row, comment)) = line.split_once('#') else {
            continue;
        };
        let cols: Vec<&str> = row.trim().split(',').collect();
        if cols.len() != 5 || cols[0] == "cidr" {
            continue;
        }
        // The comment names the region: `# WNAM: San Jose, California`.
        let name = comment.trim().split(':').next().unwrap_or("");
        let r = topology::region(name)
            .unwrap_or_else(|| panic!("{}: {line:?} names no testnet region", path.display()));
        assert_eq!(
            (cols[1], cols[2]),
            (r.country, r.subdivision),
            "{}: {line:?}",
            path.display()
        );
        let coord = |s: &str| s.parse::<f64>().unwrap();
        assert_eq!(
            (coord(cols[3]), coord(cols[4])),
            (r.latitude, r.longitude),
            "{}: {line:?}",
            path.display()
        );
        seen.push(r.name);
    }
    assert_eq!(seen, topology::REGION_NAMES, "{}", path.display());
}
