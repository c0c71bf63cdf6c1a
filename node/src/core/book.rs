//! The health book: one health state machine per origin this node probes, keyed by origin and
//! carried across reloads while the origin's probe target stays the same (a reload that
//! changes a pool's weights must not forget that an origin is down). Plain data with the time
//! passed in; the node state shell wraps it in a lock, counts flips and publishes the view.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::core::compiled::{CompiledConfig, OriginKey};
use crate::core::health::{Attempt, HealthPolicy, HealthState, Next, OriginHealth};
use crate::core::verdict::Verdict;
use crate::core::view::Report;

/// The state machines of every origin this node probes.
#[derive(Debug, Default)]
pub struct HealthBook {
    states: HashMap<OriginKey, (HealthState, HealthPolicy)>,
}

/// What one probe attempt did to the book.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub next: Next,
    /// The origin's row after the attempt.
    pub row: OriginHealth,
}

impl HealthBook {
    /// Makes the book hold the origins `rt` probes from this node. An origin whose probe
    /// target is the same in `prev` keeps its state; a new or changed one starts unchecked.
    pub fn rebuild(&mut self, prev: &CompiledConfig, rt: &CompiledConfig, now: Instant) {
        let mut states = HashMap::new();
        for (pi, pool) in rt.pools.iter().enumerate() {
            for oi in 0..pool.origins.len() {
                let key = rt.key(pi, oi);
                let Some(target) = rt.probe_target(&key) else {
                    continue;
                };
                let m = &target.monitor;
                let policy = HealthPolicy::new(m.retries, m.consecutive_up, m.consecutive_down)
                    .with_passive(m.passive_failures, m.passive_window);
                let same_target = prev.probe_target(&key).as_ref() == Some(&target);
                let state = match self.states.remove(&key) {
                    Some((s, _)) if same_target => s,
                    _ => HealthState::new(now),
                };
                states.insert(key, (state, policy));
            }
        }
        self.states = states;
    }

    /// Feeds one probe attempt of `key`'s monitor; None when the book does not hold `key`
    /// (its monitor was removed by a reload while the attempt ran).
    pub fn on_attempt(
        &mut self,
        key: &OriginKey,
        attempt: Attempt,
        now: Instant,
    ) -> Option<Outcome> {
        let (state, policy) = self.states.get_mut(key)?;
        let next = state.on_attempt(policy, attempt, now);
        Some(Outcome {
            next,
            row: state.row().clone(),
        })
    }

    /// A connect to `key` failed while proxying. Returns the new row when the origin flipped.
    pub fn on_passive_failure(
        &mut self,
        key: &OriginKey,
        reason: String,
        now: Instant,
    ) -> Option<OriginHealth> {
        let (state, policy) = self.states.get_mut(key)?;
        state
            .on_passive_failure(policy, reason, now)
            .then(|| state.row().clone())
    }

    /// Records the verdict on `key`'s down episode that began at `since` (see
    /// `HealthState::set_verdict`); false when it no longer applies.
    pub fn set_verdict(&mut self, key: &OriginKey, since: Instant, verdict: Verdict) -> bool {
        self.states
            .get_mut(key)
            .is_some_and(|(s, _)| s.set_verdict(since, verdict))
    }

    /// This node's row for `key`, if it probes that origin.
    pub fn row(&self, key: &OriginKey) -> Option<&OriginHealth> {
        self.states.get(key).map(|(s, _)| s.row())
    }

    /// This node's verdict on `key`, while it is down.
    pub fn verdict(&self, key: &OriginKey) -> Option<Verdict> {
        self.states.get(key).and_then(|(s, _)| s.row().verdict)
    }

    /// How many checked origins are down by this node's path alone, and how many it has
    /// checked: what `verdict::is_sick` weighs.
    pub fn path_down(&self) -> (usize, usize) {
        let checked = self.states.values().filter(|(s, _)| s.row().checked);
        checked.fold((0, 0), |(path, all), (s, _)| {
            let r = s.row();
            (
                path + usize::from(!r.healthy && r.verdict == Some(Verdict::Path)),
                all + 1,
            )
        })
    }

    /// This node's rows.
    pub fn report(&self) -> Report {
        Report {
            rows: self
                .states
                .iter()
                .map(|(k, (s, _))| (k.clone(), s.row().clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;
    use std::time::Duration;

    fn compile(origin_addr: &str, check_regions: &str) -> CompiledConfig {
        let text = format!(
            r#"
[node]
id = "n1"
region = "WEU"
[[monitor]]
name = "m"
type = "tcp"
passive_failures = 2
[[pool]]
name = "p"
monitor = "m"
check_regions = [{check_regions}]
origins = [{{ name = "o", address = "{origin_addr}" }}, {{ name = "k", address = "127.0.0.1:9" }}]
[[pool]]
name = "unmonitored"
origins = [{{ name = "u", address = "127.0.0.1:7" }}]
[[load_balancer]]
name = "lb"
default_pools = ["p"]
"#
        );
        CompiledConfig::compile(Arc::new(Config::parse(&text, None).unwrap()), None)
    }

    /// Fails attempts until the round ends (the monitor retries first).
    fn down(book: &mut HealthBook, key: &OriginKey, now: Instant) {
        for _ in 0..10 {
            let out = book
                .on_attempt(key, Attempt::Failed("refused".into()), now)
                .unwrap();
            if out.next == (Next::Done { changed: true }) {
                assert!(!out.row.healthy);
                return;
            }
            assert_eq!(out.next, Next::Retry);
        }
        panic!("{key:?} never went down");
    }

    #[test]
    fn holds_only_the_origins_this_node_probes() {
        let now = Instant::now();
        let rt = compile("127.0.0.1:8", "");
        let mut book = HealthBook::default();
        book.rebuild(&rt, &rt, now);
        let mut keys: Vec<String> = book
            .report()
            .rows
            .keys()
            .map(|k| k.origin.to_string())
            .collect();
        keys.sort();
        assert_eq!(keys, ["k", "o"], "the unmonitored pool is not probed");
        // A pool probed from another region only: this WEU node relies on the mesh.
        let elsewhere = compile("127.0.0.1:8", "\"WNAM\"");
        book.rebuild(&rt, &elsewhere, now);
        assert!(book.report().rows.is_empty());
    }

    #[test]
    fn a_reload_keeps_health_unless_the_probe_target_changed() {
        let now = Instant::now();
        let rt = compile("127.0.0.1:8", "");
        let mut book = HealthBook::default();
        book.rebuild(&rt, &rt, now);
        let (o, k) = (rt.key(0, 0), rt.key(0, 1));
        down(&mut book, &o, now);
        down(&mut book, &k, now);
        // Same targets: both stay down.
        let same = compile("127.0.0.1:8", "");
        book.rebuild(&rt, &same, now + Duration::from_secs(1));
        assert!(book.report().rows.values().all(|r| !r.healthy));
        // `o` moves to another address: it starts over, unchecked and presumed up; `k` stays.
        let moved = compile("127.0.0.1:18", "");
        book.rebuild(&same, &moved, now + Duration::from_secs(2));
        let report = book.report();
        assert!(report.rows[&o].healthy && !report.rows[&o].checked);
        assert!(!report.rows[&k].healthy);
    }

    #[test]
    fn unknown_origins_are_ignored() {
        let now = Instant::now();
        let rt = compile("127.0.0.1:8", "");
        let mut book = HealthBook::default();
        let key = rt.key(0, 0);
        assert!(book
            .on_attempt(&key, Attempt::Ok(Duration::from_millis(1)), now)
            .is_none());
        assert!(book
            .on_passive_failure(&key, "refused".into(), now)
            .is_none());
    }

    #[test]
    fn passive_failures_flip_at_the_monitors_threshold_and_report_it_once() {
        let now = Instant::now();
        let rt = compile("127.0.0.1:8", "");
        let mut book = HealthBook::default();
        book.rebuild(&rt, &rt, now);
        let key = rt.key(0, 0);
        // The monitor says passive_failures = 2.
        assert!(book
            .on_passive_failure(&key, "connect refused".into(), now)
            .is_none());
        let row = book.on_passive_failure(&key, "connect refused".into(), now);
        assert_eq!(row.map(|r| r.healthy), Some(false));
        for _ in 0..2 {
            assert!(book
                .on_passive_failure(&key, "connect refused".into(), now)
                .is_none());
        }
    }
}
