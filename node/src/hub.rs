//! The health hub: where health observations come in (probe attempts from the monitors,
//! failed connects from the proxy, other nodes' rows from the mesh) and the published
//! `Snapshot` (compiled config plus health view) comes out. It wraps the pure `HealthBook`
//! and `View::build_mesh` in a lock, counts and logs flips, and hands this node's rows to
//! whoever publishes them (the mesh).
//!
//! It also keeps the node's own trouble (`core::trouble`): failures that were this node's
//! fault come in here instead of counting against an origin, and `measure_lag` tells it
//! whether the runtime keeps up. Status and `/ready` read it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Quorum;
use crate::core::book::HealthBook;
use crate::core::compiled::{CompiledConfig, OriginKey};
use crate::core::health::{Attempt, Next, OriginHealth};
use crate::core::trouble::{self, LocalCause, LogLine, Trouble, TroubleLog};
use crate::core::verdict::{self, ProbeOutcome, Verdict};
use crate::core::view::{RemoteReport, Report, Snapshot, View};
use crate::metrics::{LocalErrorLabels, Metrics, OriginLabels, ProbeLabels, VerdictLabels};

fn origin_labels(key: &OriginKey) -> OriginLabels {
    OriginLabels {
        pool: key.pool.to_string(),
        origin: key.origin.to_string(),
    }
}

/// Receives this node's rows each time the view is published.
pub type RowSink = Box<dyn Fn(&Report) + Send + Sync>;

/// A down flip to ask peers about: the origin and when its down episode began.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictWanted {
    pub key: OriginKey,
    pub since: Instant,
}

/// What the peers asked about an origin answered.
pub type Answers = Vec<(String, Option<ProbeOutcome>)>;

/// Since when this node has been sick, and the counts that made it so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sick {
    pub since: Instant,
    pub path_down: usize,
    pub checked: usize,
}

/// Health in, snapshots out.
pub struct HealthHub {
    snapshot: ArcSwap<Snapshot>,
    book: Mutex<HealthBook>,
    /// Other nodes' rows, as the mesh last delivered them.
    remote: ArcSwap<Vec<RemoteReport>>,
    quorum: Quorum,
    metrics: Arc<Metrics>,
    sink: OnceLock<RowSink>,
    /// The node's own trouble; a lock of its own, so that a flood of local errors does not
    /// wait on the book.
    trouble: Mutex<TroubleLog>,
    /// Where down flips go to be asked about (set once, by the mesh glue).
    asker: OnceLock<mpsc::Sender<VerdictWanted>>,
    /// The latest answers per origin, while it is down.
    answers: Mutex<HashMap<OriginKey, Answers>>,
    sick: Mutex<Option<Sick>>,
    /// Counts publishes, so that what follows the view (the DNS answers, the advert) wakes
    /// on a change instead of polling.
    published: watch::Sender<u64>,
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
            trouble: Mutex::new(TroubleLog::default()),
            asker: OnceLock::new(),
            answers: Mutex::new(HashMap::new()),
            sick: Mutex::new(None),
            published: watch::Sender::new(0),
        }
    }

    /// Where down flips go from now on, for peers to be asked about them before they are
    /// broadcast (set once, by the mesh glue). Without it nobody is asked.
    pub fn ask_verdicts_to(&self, tx: mpsc::Sender<VerdictWanted>) {
        let _ = self.asker.set(tx);
    }

    /// Takes in what the peers asked about `key`'s down episode since `since` answered, and
    /// republishes with the verdict. Ignored when the origin came back up (or went down anew)
    /// meanwhile.
    pub fn set_verdict(&self, key: &OriginKey, since: Instant, answers: Answers) {
        let verdict = verdict::decide(&answers);
        let mut book = self.book();
        let before = book.verdict(key);
        if !book.set_verdict(key, since, verdict) {
            return;
        }
        lock(&self.answers).insert(key.clone(), answers.clone());
        if before == Some(verdict) {
            // Asked again, same verdict: nothing anyone reads changed but the answers.
            return;
        }
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
            })
            .inc();
        let said: Vec<String> = answers
            .iter()
            .map(|(peer, a)| format!("{peer}: {}", verdict::describe(a)))
            .collect();
        tracing::warn!(
            pool = %key.pool,
            origin = %key.origin,
            verdict = verdict.as_str(),
            answers = %said.join(", "),
            "origin down: {}",
            verdict::meaning(verdict)
        );
        let rt = self.snapshot.load().rt.clone();
        self.publish(&book, rt);
    }

    /// The origins down with a verdict that `which` selects, to ask about again. Their rows
    /// keep their verdict meanwhile (they are broadcast already).
    pub fn to_ask_again(&self, which: impl Fn(Verdict) -> bool) -> Vec<VerdictWanted> {
        self.book()
            .report()
            .rows
            .into_iter()
            .filter(|(_, r)| {
                r.checked
                    && !r.healthy
                    && r.verdict.is_some_and(|v| v != Verdict::Pending && which(v))
            })
            .map(|(key, r)| VerdictWanted {
                key,
                since: r.last_change,
            })
            .collect()
    }

    /// What the peers asked about `key` answered, while it is down.
    pub fn answers(&self, key: &OriginKey) -> Option<Answers> {
        lock(&self.answers).get(key).cloned()
    }

    /// Whether this node is sick now (see `core::verdict`).
    pub fn sick(&self) -> Option<Sick> {
        *lock(&self.sick)
    }

    /// After a flip: a down one is held back from the mesh (`Verdict::Pending`) while peers
    /// are asked; an up one forgets the answers.
    fn after_flip(&self, book: &mut HealthBook, key: &OriginKey, row: &OriginHealth) {
        if row.healthy {
            lock(&self.answers).remove(key);
            return;
        }
        let Some(tx) = self.asker.get() else { return };
        let since = row.last_change;
        if book.set_verdict(key, since, Verdict::Pending) {
            let wanted = VerdictWanted {
                key: key.clone(),
                since,
            };
            if tx.try_send(wanted).is_err() {
                // The asker is behind (a flood of flips) or gone: say so instead of waiting.
                book.set_verdict(key, since, Verdict::Unconfirmed);
            }
        }
    }

    /// Whether the node is sick with `book` as it is, logging and counting a change.
    fn update_sick(&self, book: &HealthBook) -> bool {
        let (path_down, checked) = book.path_down();
        let now_sick = verdict::is_sick(path_down, checked);
        let mut sick = lock(&self.sick);
        match (*sick, now_sick) {
            (None, true) => {
                tracing::error!(
                    path_down,
                    checked,
                    "this node is sick: peers reach {path_down} of the {checked} origins its probes find down; \
                     its health rows are withdrawn from the mesh and it steers with the mesh's view until it agrees again \
                     (check this node's network, DNS and firewall)"
                );
                *sick = Some(Sick {
                    since: Instant::now(),
                    path_down,
                    checked,
                });
            }
            (Some(s), true) => {
                *sick = Some(Sick {
                    path_down,
                    checked,
                    ..s
                })
            }
            (Some(_), false) => {
                tracing::info!("this node agrees with the mesh again: its health rows count again");
                *sick = None;
            }
            (None, false) => {}
        }
        self.metrics.sick.set(i64::from(now_sick));
        now_sick
    }

    /// Where this node's rows go from now on (set once, by the mesh glue).
    pub fn publish_rows_to(&self, sink: RowSink) {
        let _ = self.sink.set(sink);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Changes each time a new snapshot is published.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
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

    /// This node's row for one origin (cheaper than the whole `report`, for the relay).
    pub fn own_row(&self, key: &OriginKey) -> Option<OriginHealth> {
        self.book().row(key).cloned()
    }

    fn book(&self) -> MutexGuard<'_, HealthBook> {
        // A panic while holding the lock leaves the book consistent (every update is one
        // insert), so a poisoned lock is still usable.
        lock(&self.book)
    }

    /// Switches to a new compiled config (start and reload): origins whose probe target did
    /// not change keep their health.
    pub fn apply(&self, rt: Arc<CompiledConfig>) {
        let prev = self.snapshot.load().rt.clone();
        let mut book = self.book();
        book.rebuild(&prev, &rt, Instant::now());
        // Answers about origins whose target changed (or that left) no longer apply.
        let report = book.report();
        lock(&self.answers).retain(|k, _| report.rows.get(k).is_some_and(|r| r.verdict.is_some()));
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
    /// A sick node's own rows count nowhere: not in its view, and withdrawn from the mesh.
    fn publish(&self, book: &HealthBook, rt: Arc<CompiledConfig>) {
        let report = book.report();
        let sick = self.update_sick(book);
        let none = Report::default();
        let counted = if sick { &none } else { &report };
        let remote = self.remote.load();
        let mut view = View::build_mesh(&rt, counted, &remote, self.quorum, Duration::ZERO);
        view.mark_own(&rt, &report, &remote, sick);
        self.snapshot.store(Arc::new(Snapshot {
            rt,
            view: Arc::new(view),
        }));
        if let Some(sink) = self.sink.get() {
            sink(counted);
        }
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Feeds one probe attempt of `key`'s monitor; publishes a new view when a round ended.
    /// An inconclusive attempt (this node's own trouble) ends the round with no verdict.
    pub fn on_attempt(&self, key: &OriginKey, attempt: Attempt) -> Next {
        let failed = matches!(attempt, Attempt::Failed(_));
        if attempt == Attempt::Inconclusive {
            let labels = origin_labels(key);
            self.metrics
                .probes
                .get_or_create(&ProbeLabels {
                    pool: labels.pool,
                    origin: labels.origin,
                    result: "local",
                })
                .inc();
            // Nothing changes that anyone reads: no publish.
            return self
                .book()
                .on_attempt(key, attempt, Instant::now())
                .map_or(Next::Done { changed: false }, |out| out.next);
        }
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
                self.after_flip(&mut book, key, &out.row);
            }
            let rt = self.snapshot.load().rt.clone();
            self.publish(&book, rt);
        }
        out.next
    }

    /// A connect to an origin failed while proxying, by the origin's fault: counted against
    /// it, and enough of them within the monitor's `passive_window` take it down now.
    pub fn on_connect_failure(&self, key: &OriginKey, reason: String) {
        let labels = origin_labels(key);
        self.metrics.connect_failures.get_or_create(&labels).inc();
        let mut book = self.book();
        if let Some(row) = book.on_passive_failure(key, reason, Instant::now()) {
            self.metrics.origin_healthy.get_or_create(&labels).set(0);
            self.on_flip(key, &labels, &row, " (passive)");
            self.after_flip(&mut book, key, &row);
            let rt = self.snapshot.load().rt.clone();
            self.publish(&book, rt);
        }
    }

    fn trouble_log(&self) -> MutexGuard<'_, TroubleLog> {
        // Every update leaves the log consistent; a poisoned lock is still usable.
        lock(&self.trouble)
    }

    /// A failure that was this node's own (out of descriptors, buffers or ports; overloaded),
    /// noticed at `source`: counted, logged (rate-limited) and shown as the node's trouble,
    /// never against an origin.
    pub fn on_local_error(&self, cause: LocalCause, source: &'static str, detail: String) {
        self.metrics
            .local_errors
            .get_or_create(&LocalErrorLabels {
                kind: cause.as_str(),
                source,
            })
            .inc();
        self.metrics.local_trouble.set(1);
        let line = self
            .trouble_log()
            .record(cause, source, detail.clone(), Instant::now());
        log_trouble(line, cause, source, &detail);
    }

    /// Whether the runtime has recently been too late to trust a timeout (see
    /// `core::trouble`).
    pub fn overloaded(&self) -> bool {
        self.trouble_log().overloaded(Instant::now())
    }

    /// The node's own trouble now; empty when it is well.
    pub fn trouble(&self) -> Vec<Trouble> {
        self.trouble_log().current(Instant::now())
    }

    /// One lag measurement from `measure_lag`.
    fn on_tick(&self, lag: Duration) {
        let now = Instant::now();
        let (line, troubled) = {
            let mut log = self.trouble_log();
            let line = log.on_tick(lag, now);
            (line, !log.current(now).is_empty())
        };
        self.metrics.runtime_lag.set(lag.as_secs_f64());
        self.metrics.local_trouble.set(i64::from(troubled));
        if lag > trouble::LATE_TICK {
            self.metrics
                .local_errors
                .get_or_create(&LocalErrorLabels {
                    kind: LocalCause::Overload.as_str(),
                    source: "runtime",
                })
                .inc();
            let detail = format!("timers fire {} ms late", lag.as_millis());
            log_trouble(line, LocalCause::Overload, "runtime", &detail);
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

/// Locks a mutex whose every update leaves its data consistent, so a poisoned lock is still
/// usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn log_trouble(line: LogLine, cause: LocalCause, source: &'static str, detail: &str) {
    if let LogLine::Log { unlogged } = line {
        tracing::warn!(
            kind = cause.as_str(),
            source,
            unlogged,
            "local trouble, not counted against any origin: {detail}; {}",
            cause.advice()
        );
    }
}

/// Measures how late the runtime runs its timers: a tick every `trouble::TICK` on tokio's
/// clock, each reported to the hub as its lag. Ends when the hub is dropped.
pub async fn measure_lag(hub: Weak<HealthHub>) {
    loop {
        let due = Instant::now() + trouble::TICK;
        tokio::time::sleep_until(due).await;
        let lag = Instant::now().saturating_duration_since(due);
        let Some(hub) = hub.upgrade() else { return };
        hub.on_tick(lag);
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
    fn failed_connects_take_the_origin_down_at_the_passive_threshold() {
        let (hub, rt) = hub();
        // The default passive_failures is 3 (within 10 s).
        for _ in 0..2 {
            hub.on_connect_failure(&rt.key(0, 0), "connect refused".into());
            assert!(up(&hub), "one or two failed connects are not a verdict");
        }
        hub.on_connect_failure(&rt.key(0, 0), "connect refused".into());
        assert!(!up(&hub));
        assert_eq!(
            hub.report().rows[&rt.key(0, 0)].reason.as_deref(),
            Some("3 failed connects within 10s: connect refused")
        );
    }

    #[test]
    fn local_errors_are_the_nodes_trouble_not_the_origins() {
        let (hub, rt) = hub();
        let seen: Arc<StdMutex<Vec<Report>>> = Arc::default();
        let s = seen.clone();
        hub.publish_rows_to(Box::new(move |r| s.lock().unwrap().push(r.clone())));
        assert!(hub.trouble().is_empty());
        for _ in 0..10 {
            assert_eq!(
                hub.on_attempt(&rt.key(0, 0), Attempt::Inconclusive),
                Next::Done { changed: false }
            );
            hub.on_local_error(
                LocalCause::Descriptors,
                "probe",
                "Too many open files".into(),
            );
        }
        assert!(up(&hub));
        assert!(!hub.report().rows[&rt.key(0, 0)].checked);
        assert!(seen.lock().unwrap().is_empty(), "nothing to publish");
        let trouble = hub.trouble();
        assert_eq!(trouble.len(), 1);
        assert_eq!(trouble[0].cause, LocalCause::Descriptors);
        let text = hub.metrics.encode();
        assert!(
            text.contains(
                "switchyard_local_errors_total{kind=\"descriptors\",source=\"probe\"} 10"
            ),
            "{text}"
        );
        assert!(text.contains("switchyard_local_trouble 1"), "{text}");
        assert!(text.contains("result=\"local\"} 10"), "{text}");
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
                    verdict: Some(crate::core::verdict::Verdict::Origin),
                },
            )]
            .into(),
        };
        hub.set_remote(vec![peer(true)]);
        assert!(!up(&hub), "the only observer says down");
        hub.set_remote(vec![peer(false)]);
        assert!(up(&hub), "a dead node's rows do not count");
    }

    fn up_answer(peer: &str) -> (String, Option<ProbeOutcome>) {
        (peer.into(), Some(ProbeOutcome::Up { rtt_us: 900 }))
    }

    #[test]
    fn a_down_flip_is_held_back_until_peers_are_asked() {
        let (hub, rt) = hub();
        let key = rt.key(0, 0);
        let (tx, mut asked) = mpsc::channel(4);
        hub.ask_verdicts_to(tx);
        hub.on_attempt(&key, Attempt::Failed("refused".into()));
        let w = asked.try_recv().expect("peers are to be asked");
        assert_eq!(w.key, key);
        let row = &hub.report().rows[&key];
        assert_eq!(row.verdict, Some(Verdict::Pending));
        assert!(!up(&hub), "this node stops using it at once");
        assert_eq!(
            hub.snapshot().view.pools[0].origins[0].verdict,
            Some(Verdict::Pending)
        );
        // The answers: the peers reach it. Only the path is down.
        hub.set_verdict(&key, w.since, vec![up_answer("a"), ("b".into(), None)]);
        assert_eq!(hub.report().rows[&key].verdict, Some(Verdict::Path));
        assert_eq!(hub.answers(&key).unwrap().len(), 2);
        let text = hub.metrics.encode();
        assert!(text.contains("verdict=\"path\"} 1"), "{text}");
        // Answers to an episode that is over are dropped: up, then down anew.
        hub.on_attempt(&key, Attempt::Ok(Duration::from_millis(1)));
        assert_eq!(hub.report().rows[&key].verdict, None);
        assert!(hub.answers(&key).is_none(), "answers go with the episode");
        hub.set_verdict(&key, w.since, vec![up_answer("a")]);
        assert_eq!(hub.report().rows[&key].verdict, None);
        // Nobody to ask: unconfirmed, and asked again when asked for.
        hub.on_attempt(&key, Attempt::Failed("refused".into()));
        let w = asked.try_recv().unwrap();
        hub.set_verdict(&key, w.since, vec![]);
        assert_eq!(hub.report().rows[&key].verdict, Some(Verdict::Unconfirmed));
        let again = hub.to_ask_again(|v| v == Verdict::Unconfirmed);
        assert_eq!(again, vec![w]);
    }

    #[test]
    fn without_a_mesh_nobody_is_asked() {
        let (hub, rt) = hub();
        hub.on_attempt(&rt.key(0, 0), Attempt::Failed("refused".into()));
        assert_eq!(hub.report().rows[&rt.key(0, 0)].verdict, None);
    }

    #[test]
    fn a_node_down_by_its_path_on_most_origins_is_sick_and_withdraws_its_rows() {
        let rt = Arc::new(fixture::one_pool_of(&[
            ("a", "127.0.0.1:1"),
            ("b", "127.0.0.1:2"),
        ]));
        let hub = Arc::new(HealthHub::new(
            rt.clone(),
            Quorum::Majority,
            Arc::new(Metrics::new()),
        ));
        hub.apply(rt.clone());
        let seen: Arc<StdMutex<Vec<Report>>> = Arc::default();
        let s = seen.clone();
        hub.publish_rows_to(Box::new(move |r| s.lock().unwrap().push(r.clone())));
        let (tx, mut asked) = mpsc::channel(4);
        hub.ask_verdicts_to(tx);
        for oi in 0..2 {
            hub.on_attempt(&rt.key(0, oi), Attempt::Failed("refused".into()));
        }
        assert!(hub.sick().is_none(), "pending is not a verdict yet");
        let first = asked.try_recv().unwrap();
        hub.set_verdict(&first.key, first.since, vec![up_answer("x")]);
        assert!(
            hub.sick().is_none(),
            "one origin down by the path is not sick"
        );
        let second = asked.try_recv().unwrap();
        hub.set_verdict(&second.key, second.since, vec![up_answer("x")]);
        let sick = hub.sick().expect("sick");
        assert_eq!((sick.path_down, sick.checked), (2, 2));
        assert!(
            seen.lock().unwrap().last().unwrap().rows.is_empty(),
            "rows withdrawn"
        );
        let view = hub.snapshot().view.clone();
        assert!(view.sick);
        assert!(
            view.pools[0].origins.iter().all(|o| o.up),
            "its own rows set aside: nobody else says down"
        );
        assert!(hub.metrics.encode().contains("switchyard_node_sick 1"));
        // One origin comes back: agreeing again.
        hub.on_attempt(&rt.key(0, 0), Attempt::Ok(Duration::from_millis(1)));
        assert!(hub.sick().is_none());
        assert_eq!(seen.lock().unwrap().last().unwrap().rows.len(), 2);
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
