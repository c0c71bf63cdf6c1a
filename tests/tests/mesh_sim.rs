//! The mesh under simulation (`switchyard_tests::sim`): small meshes of the real state
//! machines, several seeds, each scenario, and the properties operators depend on: the
//! membership converges, every table ends with every running writer's rows as the writer
//! holds them (nothing lost, nothing resurrected), no member is a ghost at the end (a crashed
//! node held alive, a running one missing), and a running node reachable from its peers is
//! never declared down, under loss and stalls too.

use switchyard_tests::sim::{Options, Report, Scenario, Sim};

const NODES: usize = 30;
const SEEDS: [u64; 3] = [1, 2, 3];

fn run(scenario: Scenario, seed: u64) -> Report {
    let dir = std::env::temp_dir().join(format!(
        "mesh-sim-test-{}-{scenario}-{seed}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sim = Sim::new(Options::new(NODES, seed, scenario), &dir);
    let _ = std::fs::remove_dir_all(&dir);
    sim.unwrap().run()
}

/// Runs `scenario` for every seed, two at a time.
fn runs(scenario: Scenario) -> Vec<Report> {
    std::thread::scope(|s| {
        let handles: Vec<_> = SEEDS
            .iter()
            .map(|&seed| s.spawn(move || run(scenario, seed)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_settled(r: &Report) {
    let line = r.line();
    assert!(r.converge_s.is_some(), "membership never converged: {line}");
    assert!(r.rows_converged, "tables differ at the end: {line}");
    assert_eq!(r.ghosts, 0, "ghost or missing members at the end: {line}");
}

#[test]
fn a_quiet_mesh_converges_with_no_false_downs() {
    for r in runs(Scenario::Steady) {
        assert_settled(&r);
        assert_eq!(r.false_downs, 0, "{}", r.line());
    }
}

#[test]
fn five_percent_loss_makes_no_false_downs_and_flips_still_arrive() {
    for r in runs(Scenario::Loss5) {
        assert_settled(&r);
        assert_eq!(r.false_downs, 0, "{}", r.line());
        assert!(r.flip_p99_ms.is_some(), "{}", r.line());
        assert_eq!(r.flips_lost, 0, "{}", r.line());
    }
}

#[test]
fn nodes_that_stall_for_two_seconds_are_not_declared_down() {
    for r in runs(Scenario::Stall) {
        assert_settled(&r);
        assert_eq!(r.false_downs, 0, "{}", r.line());
    }
}

#[test]
fn a_crashed_node_is_known_down_everywhere_and_stays_down() {
    for r in runs(Scenario::Crash) {
        assert_settled(&r);
        assert!(r.crash_detect_p99_s.is_some(), "{}", r.line());
        assert_eq!(r.false_downs, 0, "{}", r.line());
    }
}

#[test]
fn a_healed_partition_merges_and_tables_agree() {
    for r in runs(Scenario::Partition) {
        assert_settled(&r);
        assert!(r.heal_converge_s.is_some(), "{}", r.line());
        // Downs right after the heal are SWIM's (counted apart); none later.
        assert_eq!(r.false_downs, 0, "{}", r.line());
    }
}

#[test]
fn flips_reach_every_node() {
    for r in runs(Scenario::Flip) {
        assert_settled(&r);
        assert_eq!(r.flips_lost, 0, "{}", r.line());
    }
}

#[test]
fn one_seed_gives_one_fault_schedule() {
    let a = run(Scenario::Churn, 7);
    let b = run(Scenario::Churn, 7);
    // The faults start once the membership converged; their offsets from the first one.
    let schedule = |r: &Report| -> Vec<String> {
        let faults: Vec<&(f64, String)> = r
            .log
            .iter()
            .filter(|(_, what)| what.starts_with("crash") || what.starts_with("restart"))
            .collect();
        let first = faults.first().map_or(0.0, |(t, _)| *t);
        faults
            .iter()
            .map(|(t, what)| format!("{:.3} {what}", t - first))
            .collect()
    };
    assert!(!schedule(&a).is_empty());
    assert_eq!(schedule(&a), schedule(&b));
}
