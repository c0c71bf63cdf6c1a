//! `App`: one running node. It owns the listeners, the monitors, the health report and the
//! published snapshot, applies reloads all-or-nothing, and drains on shutdown. Production
//! (`switchyard run`) and the tests start this same code; tests bind port 0 and ask the
//! handle where things listen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Config, Listen};
use crate::config::{MeshSection, Quorum};
use crate::error::Error;
use crate::geo::Geo;
use crate::health::{Attempt, HealthPolicy, HealthState, Next, OriginHealth};
use crate::metrics::{AppLabels, BytesLabels, Direction, Metrics, OriginLabels, ResultLabels};
use crate::monitor::{self, MonitorSet};
use crate::proxy::{self, Affinity, DecisionCounters};
use crate::runtime::{Obs, OriginKey, RemoteReport, Report, Runtime, Snapshot, View};
use crate::status;
use switchyard_gossip::{LocalRow, Mesh, MeshConfig, MeshMetrics, MeshState, Profile, Timings};

/// Counters of one app, kept across reloads while the app keeps its name.
#[derive(Clone)]
pub struct AppStats {
    pub total: prometheus_client::metrics::counter::Counter,
    pub active: prometheus_client::metrics::gauge::Gauge,
    pub bytes_in: prometheus_client::metrics::counter::Counter,
    pub bytes_out: prometheus_client::metrics::counter::Counter,
}

impl AppStats {
    fn new(metrics: &Metrics, app: &str) -> AppStats {
        let l = AppLabels {
            app: app.to_string(),
        };
        let b = |direction| BytesLabels {
            app: app.to_string(),
            direction,
        };
        // One statement each: a family's read guard lives until the end of its statement,
        // and a second get_or_create on the same family would wait for it forever.
        let total = metrics.connections.get_or_create(&l).clone();
        let active = metrics.active.get_or_create(&l).clone();
        let bytes_in = metrics.bytes.get_or_create(&b(Direction::In)).clone();
        let bytes_out = metrics.bytes.get_or_create(&b(Direction::Out)).clone();
        AppStats {
            total,
            active,
            bytes_in,
            bytes_out,
        }
    }
}

/// One app as its listeners see it: the config swaps on reload, the counters stay.
pub struct AppSlot {
    pub cfg: ArcSwap<AppConfig>,
    pub stats: AppStats,
    /// Open connections, for `max_connections`.
    pub open: AtomicU32,
}

struct Listening {
    slot: Arc<AppSlot>,
    listen: Listen,
    addrs: Vec<SocketAddr>,
    stop: CancellationToken,
}

/// Health of every monitored origin, kept across reloads for origins whose probe target did
/// not change.
struct HealthBook {
    states: HashMap<OriginKey, (HealthState, HealthPolicy)>,
}

/// What every task of the node shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    health: Mutex<HealthBook>,
    pub metrics: Metrics,
    pub affinity: Affinity,
    /// Per-(load balancer, pool) decision counters for the current runtime.
    pub decision_counters: DecisionCounters,
    pub started: Instant,
    pub started_wall: SystemTime,
    /// Connections being proxied, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Cancelled when the drain deadline passes: open connections end.
    pub abort: CancellationToken,
    /// The apps as status lists them, replaced on reload.
    pub apps: ArcSwap<Vec<AppInfo>>,
    /// Set when shutdown begins, so `/ready` tells load balancers in front to stop sending.
    pub draining: AtomicBool,
    /// The mesh, when `[mesh]` is configured.
    pub mesh: Option<Mesh>,
    /// Where clients are.
    pub geo: Geo,
    /// Other nodes' rows, as the mesh last delivered them.
    remote: ArcSwap<Vec<RemoteReport>>,
    quorum: Quorum,
}

/// An app as status shows it.
pub struct AppInfo {
    pub listen: String,
    pub slot: Arc<AppSlot>,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn book(&self) -> MutexGuard<'_, HealthBook> {
        // A panic while holding the lock leaves the book consistent (every update is one
        // insert), so a poisoned lock is still usable.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the view from the book and the mesh, publishes it with the runtime, and
    /// hands the local rows to the mesh.
    fn publish(&self, book: &HealthBook, rt: Arc<Runtime>) {
        let report = Report {
            rows: book
                .states
                .iter()
                .map(|(k, (s, _))| (k.clone(), s.row().clone()))
                .collect(),
        };
        let remote = self.remote.load();
        let view = Arc::new(View::build_mesh(
            &rt,
            &report,
            &remote,
            self.quorum,
            Duration::ZERO,
        ));
        self.snapshot.store(Arc::new(Snapshot { rt, view }));
        if let Some(mesh) = &self.mesh {
            let rows = report
                .rows
                .iter()
                .filter(|(_, r)| r.checked)
                .map(|(k, r)| LocalRow {
                    pool: k.pool.to_string(),
                    origin: k.origin.to_string(),
                    healthy: r.healthy,
                    rtt: r.rtt,
                    last_change_ms: wall_ms(self, r.last_change),
                    reason: r.reason.clone(),
                })
                .collect();
            mesh.set_local(rows);
        }
    }

    /// Takes in what the mesh now knows and republishes the view.
    fn on_mesh_state(&self, state: &MeshState) {
        let remote: Vec<RemoteReport> = state
            .writers
            .iter()
            .filter(|w| w.node != state.local.id)
            .map(|w| {
                let node: Arc<str> = w.node.as_str().into();
                RemoteReport {
                    node: node.clone(),
                    region: w.region,
                    live: w.live,
                    rows: w
                        .rows
                        .iter()
                        .map(|(row, age)| {
                            (
                                OriginKey {
                                    pool: row.pool.as_str().into(),
                                    origin: row.origin.as_str().into(),
                                },
                                Obs {
                                    node: node.clone(),
                                    region: w.region,
                                    healthy: row.healthy,
                                    rtt: row.rtt_us.map(|us| Duration::from_micros(u64::from(us))),
                                    age: *age,
                                },
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        self.remote.store(Arc::new(remote));
        let book = self.book();
        let rt = self.snapshot.load().rt.clone();
        self.publish(&book, rt);
    }

    /// Other nodes' rows, for status.
    pub fn remote(&self) -> Arc<Vec<RemoteReport>> {
        self.remote.load_full()
    }

    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// Feeds one probe attempt of `key`'s monitor; publishes a new view when health or RTT
    /// changed.
    pub fn on_attempt(&self, key: &OriginKey, attempt: Attempt) -> Next {
        let now = Instant::now();
        let mut book = self.book();
        let Some((state, policy)) = book.states.get_mut(key) else {
            return Next::Done { changed: false };
        };
        let failed = matches!(attempt, Attempt::Failed(_));
        let next = state.on_attempt(policy, attempt, now);
        if let Next::Done { changed } = next {
            let row = state.row().clone();
            let labels = OriginLabels::of(key);
            let result = if failed { "fail" } else { "ok" };
            self.metrics
                .probes
                .get_or_create(&crate::metrics::ProbeLabels {
                    pool: labels.pool.clone(),
                    origin: labels.origin.clone(),
                    result,
                })
                .inc();
            if let Some(rtt) = row.rtt {
                self.metrics
                    .origin_rtt
                    .get_or_create(&labels)
                    .set(rtt.as_secs_f64());
            }
            self.metrics
                .origin_healthy
                .get_or_create(&labels)
                .set(i64::from(row.healthy));
            if changed {
                self.on_flip(key, &labels, &row, "");
            }
            let rt = self.snapshot.load().rt.clone();
            self.publish(&book, rt);
        }
        next
    }

    /// A connect to an origin failed while proxying: count it against the origin now.
    pub fn on_connect_failure(&self, key: &OriginKey, reason: String) {
        let labels = OriginLabels::of(key);
        self.metrics.connect_failures.get_or_create(&labels).inc();
        let mut book = self.book();
        let Some((state, policy)) = book.states.get_mut(key) else {
            return;
        };
        if state.on_passive_failure(policy, reason, Instant::now()) {
            let row = state.row().clone();
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

    /// Health rows of the local report, for status.
    pub fn report(&self) -> Report {
        Report {
            rows: self
                .book()
                .states
                .iter()
                .map(|(k, (s, _))| (k.clone(), s.row().clone()))
                .collect(),
        }
    }
}

/// Options that do not come from the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Where the config was read from, for reloads from the file.
    pub config_path: Option<PathBuf>,
}

/// A running node.
pub struct App {
    shared: Arc<Shared>,
    status_addr: SocketAddr,
    status_stop: CancellationToken,
    config_path: Option<PathBuf>,
    state: tokio::sync::Mutex<AppState>,
}

struct AppState {
    listeners: HashMap<String, Listening>,
    monitors: MonitorSet,
}

impl App {
    /// Binds every listener, starts monitors and the status endpoint. Fails, with nothing left
    /// running, when any address cannot be bound.
    pub async fn start(config: Config, opts: StartOptions) -> Result<App, Error> {
        config.validate()?;
        let config = Arc::new(config);
        let rt = Arc::new(Runtime::compile(config.clone(), None));
        let view = Arc::new(View::build(&rt, &Report::default()));
        let geo = Geo::new(config.geo.as_ref(), config.node.region)?;
        let mut metrics = Metrics::new();
        let mesh = match &config.mesh {
            Some(m) => Some(start_mesh(&config, m, &mut metrics)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot { rt, view }),
            health: Mutex::new(HealthBook {
                states: HashMap::new(),
            }),
            metrics,
            affinity: Affinity::default(),
            decision_counters: DecisionCounters::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            connections: TaskTracker::new(),
            abort: CancellationToken::new(),
            apps: ArcSwap::from_pointee(Vec::new()),
            draining: AtomicBool::new(false),
            mesh,
            geo,
            remote: ArcSwap::from_pointee(Vec::new()),
            quorum: config.mesh.as_ref().map(|m| m.quorum).unwrap_or_default(),
        });
        {
            // A replaced GeoIP file is picked up without a reload.
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    // A changed file is read off the runtime's threads (see try_reload).
                    let _ =
                        tokio::task::spawn_blocking(move || shared.geo.reload_if_changed()).await;
                }
            });
        }
        if let Some(mesh) = &shared.mesh {
            let mut rx = mesh.state();
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let state = rx.borrow_and_update().clone();
                    let Some(shared) = weak.upgrade() else { return };
                    shared.on_mesh_state(&state);
                }
            });
        }

        let status_listener =
            TcpListener::bind(config.node.status_listen)
                .await
                .map_err(|source| Error::Bind {
                    what: "[node] status_listen".into(),
                    addr: config.node.status_listen,
                    source,
                })?;
        let status_addr = status_listener.local_addr().map_err(|source| Error::Bind {
            what: "[node] status_listen".into(),
            addr: config.node.status_listen,
            source,
        })?;

        let app = App {
            shared: shared.clone(),
            status_addr,
            status_stop: CancellationToken::new(),
            config_path: opts.config_path,
            state: tokio::sync::Mutex::new(AppState {
                listeners: HashMap::new(),
                monitors: MonitorSet::default(),
            }),
        };
        app.apply(config).await?;
        tokio::spawn(status::serve(
            status_listener,
            shared,
            app.status_stop.clone(),
        ));
        tracing::info!(status = %status_addr, "node started");
        Ok(app)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Where an app listens (one address per port of a range).
    pub async fn app_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let st = self.state.lock().await;
        st.listeners
            .get(name)
            .map(|l| l.addrs.clone())
            .unwrap_or_default()
    }

    /// Replaces the config for new connections; open connections keep going. An invalid
    /// config, or one whose listeners cannot be bound, is refused and the old one stays.
    pub async fn reload(&self, config: Config) -> Result<(), Error> {
        let result = self.try_reload(config).await;
        let label = ResultLabels {
            result: if result.is_ok() { "ok" } else { "error" },
        };
        self.shared.metrics.reloads.get_or_create(&label).inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!("config reload refused, keeping the running config: {e}"),
        }
        result
    }

    async fn try_reload(&self, config: Config) -> Result<(), Error> {
        config.validate()?;
        let old = self.shared.snapshot().rt.config.clone();
        if config.node.id != old.node.id || config.node.region != old.node.region {
            return Err(Error::Reload(format!(
                "[node] id and region cannot change on reload (running as {:?} in {}); restart the node to change them",
                old.node.id, old.node.region
            )));
        }
        // Reading a GeoIP database can take a while; off the runtime's threads, so that a
        // node on one CPU (a current-thread runtime) keeps proxying meanwhile.
        let (shared, geo) = (self.shared.clone(), config.geo.clone());
        tokio::task::spawn_blocking(move || shared.geo.reload(geo.as_ref()))
            .await
            .map_err(|e| Error::Reload(format!("the GeoIP reload did not finish: {e}")))??;
        if config.mesh != old.mesh {
            tracing::warn!("[mesh] changed; it takes effect on restart");
        }
        if let Some(mesh) = &self.shared.mesh {
            mesh.set_fingerprint(config.fingerprint());
        }
        if config.node.status_listen != old.node.status_listen {
            tracing::warn!(
                "[node] status_listen changed to {}; it takes effect on restart",
                config.node.status_listen
            );
        }
        self.apply(Arc::new(config)).await
    }

    /// Reads the config file again and reloads it (SIGHUP).
    pub async fn reload_from_file(&self) -> Result<(), Error> {
        let Some(path) = &self.config_path else {
            return Err(Error::Reload(
                "this node was not started from a config file".into(),
            ));
        };
        match Config::load(path) {
            Ok(cfg) => self.reload(cfg).await,
            Err(e) => {
                self.shared
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::error!("config reload refused, keeping the running config: {e}");
                Err(e.into())
            }
        }
    }

    /// Binds what is new first, so that a failure changes nothing; then swaps.
    async fn apply(&self, config: Arc<Config>) -> Result<(), Error> {
        let mut st = self.state.lock().await;

        // 1. Listeners for apps that are new or moved.
        let mut fresh: HashMap<String, (Vec<TcpListener>, Listen)> = HashMap::new();
        for app in &config.apps {
            if st
                .listeners
                .get(&app.name)
                .is_some_and(|l| l.listen == app.listen)
            {
                continue;
            }
            let mut bound = Vec::new();
            for addr in app.listen.addrs() {
                let listener = proxy::bind(addr).map_err(|source| Error::Bind {
                    what: format!("app {:?}", app.name),
                    addr,
                    source,
                })?;
                bound.push(listener);
            }
            fresh.insert(app.name.clone(), (bound, app.listen));
        }

        // 2. The new runtime and view, with health carried over.
        let prev = self.shared.snapshot().rt.clone();
        let rt = Arc::new(Runtime::compile(config.clone(), Some(&prev)));
        {
            let mut book = self.shared.book();
            let now = Instant::now();
            let mut states = HashMap::new();
            for (pi, pool) in rt.pools.iter().enumerate() {
                let Some(mon) = pool.monitor.as_deref().and_then(|m| config.monitor(m)) else {
                    continue;
                };
                if !pool.probed_from(rt.region) {
                    continue;
                }
                let policy =
                    HealthPolicy::new(mon.retries, mon.consecutive_up, mon.consecutive_down);
                for oi in 0..pool.origins.len() {
                    let key = rt.key(pi, oi);
                    let same_target =
                        monitor::target_of(&prev, &key) == monitor::target_of(&rt, &key);
                    let state = match book.states.remove(&key) {
                        Some((s, _)) if same_target => s,
                        _ => HealthState::new(now),
                    };
                    states.insert(key, (state, policy));
                }
            }
            book.states = states;
            self.shared.publish(&book, rt.clone());
        }

        // 3. Monitors follow the new targets.
        st.monitors.sync(&rt, &self.shared);

        // 4. Swap app configs, start new listeners, stop removed ones.
        let mut keep: HashMap<String, Listening> = HashMap::new();
        for app in &config.apps {
            let cfg = Arc::new(app.clone());
            if let Some((listeners, listen)) = fresh.remove(&app.name) {
                let slot = match st.listeners.remove(&app.name) {
                    Some(old) => {
                        old.stop.cancel();
                        old.slot.cfg.store(cfg);
                        old.slot
                    }
                    None => Arc::new(AppSlot {
                        cfg: ArcSwap::new(cfg),
                        stats: AppStats::new(&self.shared.metrics, &app.name),
                        open: AtomicU32::new(0),
                    }),
                };
                let stop = CancellationToken::new();
                let mut addrs = Vec::new();
                for (offset, listener) in listeners.into_iter().enumerate() {
                    addrs.push(
                        listener
                            .local_addr()
                            .unwrap_or(SocketAddr::new(listen.ip, 0)),
                    );
                    tokio::spawn(proxy::serve(
                        listener,
                        offset as u16,
                        slot.clone(),
                        self.shared.clone(),
                        stop.clone(),
                    ));
                }
                tracing::info!(app = %app.name, listen = %listen, "app listening");
                keep.insert(
                    app.name.clone(),
                    Listening {
                        slot,
                        listen,
                        addrs,
                        stop,
                    },
                );
            } else if let Some(l) = st.listeners.remove(&app.name) {
                l.slot.cfg.store(cfg);
                keep.insert(app.name.clone(), l);
            }
        }
        for (name, gone) in st.listeners.drain() {
            tracing::info!(app = %name, "app removed; its open connections continue");
            gone.stop.cancel();
        }
        st.listeners = keep;
        let infos = config
            .apps
            .iter()
            .filter_map(|a| st.listeners.get(&a.name))
            .map(|l| AppInfo {
                listen: match (l.listen.is_range(), l.addrs.first()) {
                    (false, Some(addr)) => addr.to_string(),
                    _ => l.listen.to_string(),
                },
                slot: l.slot.clone(),
            })
            .collect();
        self.shared.apps.store(Arc::new(infos));
        Ok(())
    }

    /// Stops everything at once without leaving the mesh, as a crash would (for tests of
    /// failure detection).
    #[cfg(feature = "test-util")]
    pub async fn kill(&self) {
        {
            let mut st = self.state.lock().await;
            for l in st.listeners.values() {
                l.stop.cancel();
            }
            st.monitors.stop_all();
        }
        self.shared.abort.cancel();
        if let Some(mesh) = &self.shared.mesh {
            mesh.kill().await;
        }
        self.status_stop.cancel();
    }

    /// Stops accepting, waits up to `drain` for open connections to finish, then ends the
    /// rest. Returns the number of connections that were cut at the deadline.
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.shared.draining.store(true, Ordering::Relaxed);
        {
            let mut st = self.state.lock().await;
            for l in st.listeners.values() {
                l.stop.cancel();
            }
            st.monitors.stop_all();
        }
        let open = || self.shared.connections.len();
        tracing::info!(open = open(), drain = ?drain, "draining");
        self.shared.connections.close();
        let cut = match tokio::time::timeout(drain, self.shared.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let n = open();
                self.shared.abort.cancel();
                self.shared.connections.wait().await;
                n
            }
        };
        if let Some(mesh) = &self.shared.mesh {
            mesh.leave().await;
        }
        self.status_stop.cancel();
        tracing::info!(cut, "stopped");
        cut
    }
}

/// Milliseconds since the Unix epoch of a tokio instant, through the node's start time.
pub fn wall_ms(shared: &Shared, at: Instant) -> u64 {
    let since = at.saturating_duration_since(shared.started);
    let wall = shared.started_wall + since;
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Loads the mesh's certificates and joins the mesh.
fn start_mesh(config: &Config, m: &MeshSection, metrics: &mut Metrics) -> Result<Mesh, Error> {
    let tls = switchyard_gossip::tls::load(&m.ca, &m.cert, &m.key)?;
    let mesh_metrics = MeshMetrics::default();
    mesh_metrics.register(metrics.registry_mut());
    let cfg = MeshConfig {
        node_id: config.node.id.clone(),
        region: config.node.region,
        cluster: m.cluster.clone(),
        listen: m.listen,
        advertise: m.advertise,
        seeds: m.seeds.clone(),
        profile: m.profile,
        expected_size: m.expected_size,
        timings: mesh_timings(m.profile, m),
        fingerprint: config.fingerprint(),
    };
    Ok(Mesh::start(cfg, &tls, mesh_metrics)?)
}

/// SWIM and replication timings: the profile's, with the config's overrides.
fn mesh_timings(profile: Profile, m: &MeshSection) -> Timings {
    let mut t = Timings::for_profile(profile, m.expected_size);
    if let Some(d) = m.probe_period {
        t.probe_period = d;
    }
    if let Some(d) = m.probe_timeout {
        t.probe_rtt = d;
    }
    if let Some(d) = m.suspect_timeout {
        t.suspect_to_down_after = d;
    }
    if let Some(d) = m.announce_interval {
        t.announce_period = d;
    }
    if let Some(d) = m.anti_entropy_interval {
        t.anti_entropy_period = d;
    }
    t
}
