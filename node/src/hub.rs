//! The health hub: where health observations come in (probe attempts from the monitors,
//! failed connects from the proxy, other nodes' rows from the mesh) and the published
//! `Snapshot` (compiled config plus health view) comes out. It wraps the pure `HealthBook`
//! and `View::build_mesh` in a lock, counts and logs flips, and hands this node's rows to
//! whoever publishes them (the mesh).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::Quorum;
use crate::core::book::HealthBook;
use crate::core::compiled::{CompiledConfig, OriginKey};
use crate::core::health::{Attempt, Next, OriginHealth};
use crate::core::view::{RemoteReport, Report, Snapshot, View};
use crate::metrics::{Metrics, OriginLabels, ProbeLabels};

fn origin_labels(key: &OriginKey) -> OriginLabels {
    OriginLabels {
        pool: key.pool.to_string(),
        origin: key.origin.to_string(),
    }
}

/// Receives this node's rows each time the view is published.
pub type RowSink = Box<dyn Fn(&Report) + Send + Sync>;

/// Health in, snapshots out.
pub struct HealthHub {
    snapshot: ArcSwap<Snapshot>,
    book: Mutex<HealthBook>,
    /// Other nodes' rows, as the mesh last delivered them.
    remote: ArcSwap<Vec<RemoteReport>>,
    quorum: Quorum,
    metrics: Arc<Metrics>,
    sink: OnceLock<RowSink>,
}

impl HealthHub {
    /// A hub for `rt` with nothing observed yet: every origin presumed up.
    pub fn new(rt: Arc<CompiledConfig>, quorum: Quorum, metrics: Arc<Metrics>) -> HealthHub {
        let view = Arc::new(View::build(&rt, &Report::default()));
        HealthHub {
            snapshot: ArcSwap::from_pointee(Snapshot { rt, view }),
            book: Mutex::new(HealthBook::default()),
            remote: ArcSwap::from_pointee(Vec::new()),
            quorum,
            metrics,
            sink: OnceLock::new(),
        }
    }

    /// Where this node's rows go from now on (set once, by the mesh glue).
    pub fn publish_rows_to(&self, sink: RowSink) {
        let _ = self.sink.set(sink);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// Other nodes' rows, for status.
    pub fn remote(&self) -> Arc<Vec<RemoteReport>> {
        self.remote.load_full()
    }

    /// This node's rows, for status.
    pub fn report(&self) -> Report {
        self.book().report()
    }

    fn book(&self) -> MutexGuard<'_, HealthBook> {
        // A panic while holding the lock leaves the book consistent (every update is one
        // insert), so a poisoned lock is still usable.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches to a new compiled config (start and reload): origins whose probe target did
    /// not change keep their health.
    pub fn apply(&self, rt: Arc<CompiledConfig>) {
        let prev = self.snapshot.load().rt.clone();
        let mut book = self.book();
        book.rebuild(&prev, &rt, Instant::now());
        self.publish(&book, rt);
    }

    /// Takes in what the mesh now knows and republishes the view.
    pub fn set_remote(&self, remote: Vec<RemoteReport>) {
        self.remote.store(Arc::new(remote));
        let book = self.book();
        let rt = self.snapshot.load().rt.clone();
        self.publish(&book, rt);
    }

    /// Rebuilds the view from the book and the mesh, publishes it with `rt`, and hands the
    /// local rows on.
    fn publish(&self, book: &HealthBook, rt: Arc<CompiledConfig>) {
        let report = book.report();
        let remote = self.remote.load();
        let view = Arc::new(View::build_mesh(
            &rt,
            &report,
            &remote,
            self.quorum,
            Duration::ZERO,
        ));
        self.snapshot.store(Arc::new(Snapshot { rt, view }));
        if let Some(sink) = self.sink.get() {
            sink(&report);
        }
    }

    /// Feeds one probe attempt of `key`'s monitor; publishes a new view when a round ended.
    pub fn on_attempt(&self, key: &OriginKey, attempt: Attempt) -> Next {
        let failed = matches!(attempt, Attempt::Failed(_));
        let mut book = self.book();
        let Some(out) = book.on_attempt(key, attempt, Instant::now()) else {
            return Next::Done { changed: false };
        };
        if let Next::Done { changed } = out.next {
            let labels = origin_labels(key);
            self.metrics
                .probes
                .get_or_create(&ProbeLabels {
                    pool: labels.pool.clone(),
                    origin: labels.origin.clone(),
                    result: if failed { "fail" } else { "ok" },
                })
                .inc();
            if let Some(rtt) = out.row.rtt {
                self.metrics
                    .origin_rtt
                    .get_or_create(&labels)
                    .set(rtt.as_secs_f64());
            }
            self.metrics
                .origin_healthy
                .get_or_create(&labels)
                .set(i64::from(out.row.healthy));
            if changed {
                self.on_flip(key, &labels, &out.row, "");
            }
            let rt = self.snapshot.load().rt.clone();
            self.publish(&book, rt);
        }
        out.next
    }

    /// A connect to an origin failed while proxying: count it against the origin now.
    pub fn on_connect_failure(&self, key: &OriginKey, reason: String) {
        let labels = origin_labels(key);
        self.metrics.connect_failures.get_or_create(&labels).inc();
        let mut book = self.book();
        if let Some(row) = book.on_passive_failure(key, reason, Instant::now()) {
            self.metrics.origin_healthy.get_or_create(&labels).set(0);
            self.on_flip(key, &labels, &row, " (passive)");
            let rt = self.snapshot.load().rt.clone();
            self.publish(&book, rt);
        }
    }

    /// Counts and logs an up/down flip, whichever way it was noticed.
    fn on_flip(&self, key: &OriginKey, labels: &OriginLabels, row: &OriginHealth, how: &str) {
        self.metrics.health_changes.get_or_create(labels).inc();
        if row.healthy {
            tracing::info!(pool = %key.pool, origin = %key.origin, "origin up{how}");
        } else {
            let reason = row.reason.as_deref().unwrap_or("");
            tracing::warn!(pool = %key.pool, origin = %key.origin, %reason, "origin down{how}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::compiled::fixture;
    use std::sync::Mutex as StdMutex;
    use switchyard_geo::Region;

    fn hub() -> (Arc<HealthHub>, Arc<CompiledConfig>) {
        let rt = Arc::new(fixture::compile(fixture::ONE_POOL));
        let hub = Arc::new(HealthHub::new(
            rt.clone(),
            Quorum::Majority,
            Arc::new(Metrics::new()),
        ));
        hub.apply(rt.clone());
        (hub, rt)
    }

    fn up(hub: &HealthHub) -> bool {
        hub.snapshot().view.pools[0].origins[0].up
    }

    #[test]
    fn probes_publish_a_new_view_and_hand_rows_to_the_sink() {
        let (hub, rt) = hub();
        let seen: Arc<StdMutex<Vec<Report>>> = Arc::default();
        let s = seen.clone();
        hub.publish_rows_to(Box::new(move |r| s.lock().unwrap().push(r.clone())));
        let key = rt.key(0, 0);
        assert!(up(&hub), "presumed up before the first probe");
        let next = hub.on_attempt(&key, Attempt::Failed("refused".into()));
        assert_eq!(next, Next::Done { changed: true });
        assert!(!up(&hub), "the view follows the probe");
        let rows = seen.lock().unwrap();
        let last = rows.last().expect("the sink got the rows");
        assert!(!last.rows[&key].healthy && last.rows[&key].checked);
        assert!(hub.metrics.encode().contains("switchyard_origin_healthy"));
    }

    #[test]
    fn a_failed_connect_takes_the_origin_down_at_once() {
        let (hub, rt) = hub();
        hub.on_connect_failure(&rt.key(0, 0), "connect refused".into());
        assert!(!up(&hub));
        assert_eq!(
            hub.report().rows[&rt.key(0, 0)].reason.as_deref(),
            Some("connect refused")
        );
    }

    #[test]
    fn remote_rows_count_until_their_node_is_down() {
        let (hub, rt) = hub();
        let key = rt.key(0, 0);
        let peer = |live| RemoteReport {
            node: "n2".into(),
            region: Region::Weu,
            live,
            rows: [(
                key.clone(),
                crate::core::view::Obs {
                    node: "n2".into(),
                    region: Region::Weu,
                    healthy: false,
                    rtt: None,
                    age: Duration::ZERO,
                },
            )]
            .into(),
        };
        hub.set_remote(vec![peer(true)]);
        assert!(!up(&hub), "the only observer says down");
        hub.set_remote(vec![peer(false)]);
        assert!(up(&hub), "a dead node's rows do not count");
    }

    #[test]
    fn attempts_for_origins_a_reload_removed_are_ignored() {
        let (hub, _) = hub();
        let gone = OriginKey {
            pool: "p".into(),
            origin: "removed".into(),
        };
        assert_eq!(
            hub.on_attempt(&gone, Attempt::Failed("x".into())),
            Next::Done { changed: false }
        );
        assert!(up(&hub));
    }
}
