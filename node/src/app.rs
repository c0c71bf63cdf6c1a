//! `App`: one running node. It wires the shells together (listeners and the proxy, monitors,
//! the health hub, the mesh, the status endpoint), applies reloads all-or-nothing, and drains
//! on shutdown. Production
//! (`switchyard run`) and the tests start this same code; tests bind port 0 and ask the
//! handle where things listen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, Listen};
use crate::core::affinity::Affinity;
use crate::core::anycast::Announcer;
use crate::core::compiled::{CompiledConfig, ProbeTarget};
use crate::core::health::Attempt;
use crate::dns::{DnsMetrics, DnsState};
use crate::error::Error;
use crate::hub::HealthHub;
use crate::locate::Locator;
use crate::metrics::{Metrics, ResultLabels};
use crate::monitor::probe::Prober;
use crate::monitor::MonitorSet;
use crate::proxy::{self, AppSlot, DecisionCounters, ProxyContext};
use crate::state::{AppInfo, NodeState};
use crate::status;

/// How often the anycast prefixes are weighed: well below any useful hold, and cheap (a
/// pass over the apps' load balancers).
const ANYCAST_TICK: Duration = Duration::from_millis(250);

struct Listening {
    slot: Arc<AppSlot>,
    listen: Listen,
    addrs: Vec<SocketAddr>,
    stop: CancellationToken,
}

/// Options that do not come from the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Where the config was read from, for reloads from the file.
    pub config_path: Option<PathBuf>,
    /// The status endpoint's timeouts and connection cap (tests shorten them).
    pub status_limits: status::StatusLimits,
}

/// A running node.
pub struct App {
    state: Arc<NodeState>,
    proxy: Arc<ProxyContext>,
    status_addr: SocketAddr,
    /// Where DNS answers (UDP and TCP), with `[dns]`.
    dns_addr: Option<SocketAddr>,
    status_stop: CancellationToken,
    config_path: Option<PathBuf>,
    running: tokio::sync::Mutex<Running>,
}

/// What reloads change, one at a time.
struct Running {
    listeners: HashMap<String, Listening>,
    monitors: MonitorSet,
}

impl App {
    /// Binds every listener, starts monitors and the status endpoint. Fails, with nothing left
    /// running, when any address cannot be bound.
    pub async fn start(config: Config, opts: StartOptions) -> Result<App, Error> {
        config.validate()?;
        let config = Arc::new(config);
        let rt = Arc::new(CompiledConfig::compile(config.clone(), None));
        let locator = Arc::new(Locator::new(config.geo.as_ref(), config.node.region)?);
        let mut metrics = Metrics::new();
        let mesh = match &config.mesh {
            Some(m) => Some(Arc::new(crate::mesh::start(&config, m, &mut metrics)?)),
            None => None,
        };
        let dns_metrics = DnsMetrics::default();
        if config.dns.is_some() {
            dns_metrics.register(metrics.registry_mut());
        }
        let metrics = Arc::new(metrics);
        let quorum = config.mesh.as_ref().map(|m| m.quorum).unwrap_or_default();
        let health = Arc::new(HealthHub::new(rt, quorum, metrics.clone()));
        tokio::spawn(crate::hub::measure_lag(Arc::downgrade(&health)));
        let clock = Clock::start();
        let mut monitors = MonitorSet::default();
        if let Some(mesh) = &mesh {
            let probe_now = probe_now(monitors.prober(), Arc::downgrade(&health));
            crate::mesh::connect(mesh, &health, clock, probe_now);
        }
        let affinity = Arc::new(Affinity::new(
            crate::core::affinity::DEFAULT_CAPACITY,
            metrics.affinity_evictions.clone(),
            metrics.affinity_entries.clone(),
        ));
        let dns = match &config.dns {
            Some(section) => {
                let sockets = crate::dns::bind(section.listen).await?;
                let now = mesh.as_ref().map(|m| m.state().borrow().clone());
                let dns = DnsState::new(
                    section,
                    &health,
                    now.as_deref(),
                    locator.clone(),
                    true,
                    dns_metrics,
                )?;
                Some((Arc::new(dns), sockets))
            }
            None => None,
        };
        let state = Arc::new(NodeState {
            health: health.clone(),
            metrics: metrics.clone(),
            affinity: affinity.clone(),
            locator: locator.clone(),
            mesh,
            clock,
            apps: ArcSwap::from_pointee(Vec::new()),
            draining: AtomicBool::new(false),
            withdrawing: AtomicBool::new(false),
            anycast: Mutex::new(Announcer::new(
                config.anycast.as_ref(),
                tokio::time::Instant::now(),
            )),
            dns: dns.as_ref().map(|(d, _)| d.clone()),
            relays: Arc::default(),
        });
        {
            // The anycast prefixes follow health and readiness on their own clock, so that
            // the holds count the same however often followers ask.
            let weak = Arc::downgrade(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ANYCAST_TICK);
                loop {
                    tick.tick().await;
                    let Some(state) = weak.upgrade() else {
                        return;
                    };
                    state.weigh_anycast(tokio::time::Instant::now());
                }
            });
        }
        let ready: crate::dns::Ready = {
            let weak = Arc::downgrade(&state);
            Arc::new(move || weak.upgrade().is_some_and(|s| s.ready()))
        };
        if let Some(mesh) = &state.mesh {
            crate::mesh::advertise(mesh, &health, ready.clone());
        }
        let status_stop = CancellationToken::new();
        let dns_addr = match (dns, &config.dns) {
            (Some((dns, (udp, tcp))), Some(section)) => {
                let addr = udp.local_addr().unwrap_or(section.listen);
                tokio::spawn(crate::dns::follow(
                    Arc::downgrade(&dns),
                    Arc::downgrade(&health),
                    state.mesh.as_ref().map(|m| m.state()),
                    section.clone(),
                    ready,
                ));
                // DNS stops with the status endpoint: last, after the drain, so that a
                // draining node keeps answering (without itself) while it drains.
                tokio::spawn(crate::dns::serve_udp(udp, dns.clone(), status_stop.clone()));
                tokio::spawn(crate::dns::serve_tcp(tcp, dns, status_stop.clone()));
                tracing::info!(dns = %addr, zone = %section.zone_name(), "answering DNS");
                Some(addr)
            }
            _ => None,
        };
        let proxy = Arc::new(ProxyContext {
            health,
            locator: locator.clone(),
            affinity,
            metrics,
            decisions: DecisionCounters::default(),
            connections: TaskTracker::new(),
            abort: CancellationToken::new(),
            mesh: state.mesh.clone(),
            // One decision state: the proxy's choices are what explain and status show.
            relays: state.relays.clone(),
        });
        if let Some(mesh) = &state.mesh {
            crate::peer_relay::serve(mesh, proxy.clone());
        }
        {
            // A replaced GeoIP file is picked up without a reload.
            let weak = Arc::downgrade(&locator);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let Some(locator) = weak.upgrade() else {
                        return;
                    };
                    // A changed file is read off the runtime's threads (see try_reload).
                    let _ = tokio::task::spawn_blocking(move || locator.reload_if_changed()).await;
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
            state: state.clone(),
            proxy,
            status_addr,
            dns_addr,
            status_stop,
            config_path: opts.config_path,
            running: tokio::sync::Mutex::new(Running {
                listeners: HashMap::new(),
                monitors,
            }),
        };
        app.apply(config).await?;
        tokio::spawn(status::serve_with(
            status_listener,
            state,
            app.status_stop.clone(),
            opts.status_limits,
        ));
        tracing::info!(status = %status_addr, "node started");
        Ok(app)
    }

    /// What the status endpoint reads: for tests that look without HTTP.
    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Where DNS answers, UDP and TCP (with `[dns]`).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// Where an app listens (one address per port of a range).
    pub async fn app_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let st = self.running.lock().await;
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
        self.state.metrics.reloads.get_or_create(&label).inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::error!("config reload refused, keeping the running config: {e}"),
        }
        result
    }

    async fn try_reload(&self, config: Config) -> Result<(), Error> {
        config.validate()?;
        let old = self.state.health.snapshot().rt.config.clone();
        if config.node.id != old.node.id || config.node.region != old.node.region {
            return Err(Error::Reload(format!(
                "[node] id and region cannot change on reload (running as {:?} in {}); restart the node to change them",
                old.node.id, old.node.region
            )));
        }
        // The mesh's TLS files (CA bundle, certificate and key, revocation list) are read
        // again on every reload, and checked against the running node before anything
        // changes: a bad one refuses the whole reload, naming the file, and the running
        // material stays. Installed only once the rest has been applied.
        let tls = match (&self.state.mesh, &config.mesh) {
            (Some(mesh), Some(m)) => {
                let tls = crate::mesh::load_tls(m)?;
                Some((mesh.prepare_tls(&tls)?, m.clone()))
            }
            _ => None,
        };
        // Reading a GeoIP database can take a while; off the runtime's threads, so that a
        // node on one CPU (a current-thread runtime) keeps proxying meanwhile.
        let (locator, geo) = (self.state.locator.clone(), config.geo.clone());
        tokio::task::spawn_blocking(move || locator.reload(geo.as_ref()))
            .await
            .map_err(|e| Error::Reload(format!("the GeoIP reload did not finish: {e}")))??;
        let restart_only = |c: &Config| c.mesh.as_ref().map(|m| m.without_tls_files());
        if restart_only(&config) != restart_only(&old) {
            tracing::warn!(
                "[mesh] changed; it takes effect on restart (its ca, cert, key and revoked files \
                 are read again on every reload)"
            );
        }
        if let Some(mesh) = &self.state.mesh {
            mesh.set_fingerprint(config.fingerprint());
        }
        if config.dns.as_ref().map(|d| d.listen) != old.dns.as_ref().map(|d| d.listen) {
            tracing::warn!(
                "[dns] listen changed (or [dns] was added or removed); it takes effect on restart \
                 (zone, ttl, answers and hostnames take effect now)"
            );
        }
        if config.node.status_listen != old.node.status_listen {
            tracing::warn!(
                "[node] status_listen changed to {}; it takes effect on restart",
                config.node.status_listen
            );
        }
        self.apply(Arc::new(config)).await?;
        if let (Some(mesh), Some((prepared, m))) = (&self.state.mesh, tls) {
            crate::mesh::install_tls(mesh, prepared, &m, &self.state.metrics).await;
        }
        Ok(())
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
                self.state
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
        let mut st = self.running.lock().await;

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

        // 2. The new compiled config and view, with health carried over.
        let prev = self.state.health.snapshot().rt.clone();
        let rt = Arc::new(CompiledConfig::compile(config.clone(), Some(&prev)));
        self.state.health.apply(rt.clone());

        // 3. Monitors follow the new targets, and the anycast prefixes the new list.
        st.monitors.sync(&rt, &self.state.health);
        self.state
            .anycast
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconfigure(config.anycast.as_ref(), tokio::time::Instant::now());
        // Prefixes a reload removed leave the metric; the next weighing sets the others.
        self.state.metrics.anycast_announced.clear();

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
                    None => Arc::new(AppSlot::new(cfg, &self.state.metrics)),
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
                        self.proxy.clone(),
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
        self.state.apps.store(Arc::new(infos));
        Ok(())
    }

    /// Stops everything at once without leaving the mesh, as a crash would (for tests of
    /// failure detection).
    #[cfg(feature = "test-util")]
    pub async fn kill(&self) {
        {
            let mut st = self.running.lock().await;
            for l in st.listeners.values() {
                l.stop.cancel();
            }
            st.monitors.stop_all();
        }
        self.proxy.abort.cancel();
        if let Some(mesh) = &self.state.mesh {
            mesh.kill().await;
        }
        self.status_stop.cancel();
    }

    /// SIGTERM: with `[anycast]`, withdraws the prefixes first and keeps serving (new
    /// connections too) for `withdraw_grace`, so that routers move traffic away before the
    /// node stops accepting; then drains (see [`App::drain`]). Returns the number of
    /// connections cut at the drain's deadline.
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.withdraw().await;
        self.drain(drain).await
    }

    /// Withdraws the anycast prefixes and waits out `withdraw_grace`, serving as before.
    /// Returns at once without `[anycast]`.
    pub async fn withdraw(&self) {
        let grace = match &self.state.health.snapshot().rt.config.anycast {
            Some(a) => a.withdraw_grace,
            None => return,
        };
        self.state.withdrawing.store(true, Ordering::Relaxed);
        self.state.weigh_anycast(tokio::time::Instant::now());
        tracing::info!(grace = ?grace, "anycast prefixes withdrawn; serving through the grace period before draining");
        tokio::time::sleep(grace).await;
    }

    /// Stops accepting, waits up to `drain` for open connections to finish, then ends the
    /// rest. Returns the number of connections that were cut at the deadline.
    pub async fn drain(&self, drain: Duration) -> usize {
        self.state.draining.store(true, Ordering::Relaxed);
        {
            let mut st = self.running.lock().await;
            for l in st.listeners.values() {
                l.stop.cancel();
            }
            st.monitors.stop_all();
        }
        let open = || self.proxy.connections.len();
        tracing::info!(open = open(), drain = ?drain, "draining");
        self.proxy.connections.close();
        let cut = match tokio::time::timeout(drain, self.proxy.connections.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let n = open();
                self.proxy.abort.cancel();
                self.proxy.connections.wait().await;
                n
            }
        };
        if let Some(mesh) = &self.state.mesh {
            mesh.leave().await;
        }
        self.status_stop.cancel();
        tracing::info!(cut, "stopped");
        cut
    }
}

/// How this node answers a peer's ask to probe an origin now: one attempt, as its monitor
/// makes them.
fn probe_now(prober: Prober, health: Weak<HealthHub>) -> crate::mesh::ProbeNow {
    Arc::new(move |target: ProbeTarget| {
        let (prober, health) = (prober.clone(), health.clone());
        Box::pin(async move {
            let Some(health) = health.upgrade() else {
                return Attempt::Inconclusive;
            };
            let spec = crate::monitor::spec_of(&target.monitor);
            crate::monitor::probe_once(&prober, &spec, &target, &health).await
        })
    })
}
