//! `testnet`: a Switchyard test network, run through `./testnet.sh` (which builds this binary
//! and execs it from the repository root). Three nodes, one per region (WNAM, WEU, SEAS), in
//! front of six test origins, two per region, laid out by [`switchyard_tests::topology`]. Every
//! process runs in the background in its own session, with its pid file and log under
//! `.testnet/`, so that later invocations find it again. `./testnet.sh help` lists the commands.
//!
//! WAN mode (`up --wan`, root only) runs the same testnet with each region in its own network
//! namespace, joined through wan-emu with a WAN's latencies ([`switchyard_tests::wan::Detached`],
//! state in `.testnet/wan/`); `.testnet/mode` says `wan` while it is up, so the other commands
//! follow it.
//!
//! Messages start with `testnet.sh:` because that is the command people type.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_node::status::Status;
use switchyard_tests::topology::{self, Mode, NodeFiles, Topology, APPS, REGION_NAMES, WAN_RTT};
use switchyard_tests::wan::{self, Detached};

const STATE: &str = ".testnet";
const WAN_DIR: &str = ".testnet/wan";
const MODE_FILE: &str = ".testnet/mode";
const CERTS: &str = ".testnet/certs";
const GEO_CSV: &str = ".testnet/geo.csv";
const GEO_DB: &str = ".testnet/geo.mmdb";
const MANIFEST: &str = ".testnet/manifest.json";

const USAGE: &str = "\
usage: ./testnet.sh COMMAND

  up                         build, start 6 origins and 3 nodes on loopback, wait until ready
                             and the nodes form one mesh (certificates in .testnet/certs/)
  up --wan                   the same in WAN mode (root only): each region in its own network
                             namespace (sy-wnam, sy-weu, sy-seas), joined through wan-emu with
                             a WAN's latencies (tests/wan/README.md); region i is 10.250.i.0/24:
                             node .1 (status :9900, mesh :7946), origins .11 .12, client .100.
                             The commands below then act inside the namespaces
  down                       stop everything testnet.sh started (logs stay in .testnet/);
                             in WAN mode also wan-emu and the namespaces it made
  status                     each node's `switchyard status` (with its mesh members), and
                             which origins run
                             (exit 3 when something is not running)
  origin down|up NAME        stop / start one origin (wnam-1 wnam-2 weu-1 weu-2 seas-1 seas-2)
  node down|up ID            stop (SIGTERM, graceful drain, leaves the mesh) / start one
                             node and wait until it rejoins (edge-wnam edge-weu edge-seas)
  client [--from REGION] [--app NAME] [--node ID] [--timeout DUR]
                             connect through a node's app (default: edge-wnam, failover) from
                             the region's client address (default: the node's region) and
                             print the origin's name. Apps: failover, geo, dynamic, proximity,
                             hash (see .testnet/manifest.json); regions: WNAM WEU SEAS
  wan set A B DUR            WAN mode: the round-trip time between regions A and B (e.g. 120ms)
  wan cut A B | heal A B     WAN mode: drop everything between A and B (B may be '*') / undo
  wan loss A B PCT           WAN mode: drop each packet between A and B with this probability
  wan show                   WAN mode: the latency matrix and wan-emu's counters
  help                       this text

Environment: TESTNET_READY_TIMEOUT (s, default 30), TESTNET_MESH_TIMEOUT (s, default 30),
TESTNET_STOP_TIMEOUT (s, default 15), TESTNET_SKIP_BUILD=1 (up: use the binaries already
built), RUST_LOG (default info), WAN_NETNS_PREFIX (up --wan: namespaces <prefix><region>,
default sy-) and WAN_LIFETIME (up --wan: wan-emu removes the testbed after this long,
default 12h).
";

// ---- Errors and exit codes ------------------------------------------------------------------

/// Ends the command: `Usage` exits 2 with the usage text, `Exit` with its code (after its
/// message, if any), anything else (anyhow) exits 1 with `testnet.sh: <error>`.
#[derive(Debug)]
enum Stop {
    Usage(String),
    Exit(u8, String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Usage(m) | Stop::Exit(_, m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Stop {}

fn bad_usage(msg: impl Into<String>) -> anyhow::Error {
    Stop::Usage(msg.into()).into()
}

macro_rules! die {
    ($($t:tt)*) => { return Err(anyhow!($($t)*)) };
}

/// Prints a line to stdout; a closed pipe is not an error worth failing a command for.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn warn(msg: &str) {
    eprintln!("testnet.sh: {msg}");
}

// ---- Signals --------------------------------------------------------------------------------

/// The signal that interrupted an armed command (0: none). Only commands that start processes
/// catch signals, so that they can stop what they started before exiting 128 + signal.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

const CAUGHT: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn catch_signals(on: bool) {
    for sig in CAUGHT {
        let handler = if on {
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
        } else {
            libc::SIG_DFL
        };
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}

fn interrupted() -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        sig => Err(Stop::Exit(128 + sig as u8, String::new()).into()),
    }
}

/// Waits between polls, and notices a signal.
fn pause(d: Duration) -> Result<()> {
    interrupted()?;
    std::thread::sleep(d);
    interrupted()
}

// ---- Settings and context -------------------------------------------------------------------

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

struct Ctx {
    mode: Mode,
    topo: Topology,
    /// Region -> network namespace (WAN mode).
    netns: BTreeMap<String, String>,
    /// The repository root (the working directory; testnet.sh changes to it).
    root: PathBuf,
    /// Where the binaries are: this one's directory.
    bin: PathBuf,
    ready_timeout: Duration,
    mesh_timeout: Duration,
    stop_timeout: Duration,
    testbed: Detached,
    /// Held while the command starts or stops processes.
    lock: Option<File>,
}

impl Ctx {
    fn new(mode: Mode) -> Result<Ctx> {
        let root = std::env::current_dir().context("the current directory")?;
        let bin = switchyard_tests::harness::bin_dir().context("the path of this binary")?;
        let mut ctx = Ctx {
            mode,
            topo: Topology::new(mode),
            netns: BTreeMap::new(),
            root: root.clone(),
            bin,
            ready_timeout: env_secs("TESTNET_READY_TIMEOUT", 30),
            mesh_timeout: env_secs("TESTNET_MESH_TIMEOUT", 30),
            stop_timeout: env_secs("TESTNET_STOP_TIMEOUT", 15),
            testbed: Detached::new(root.join(WAN_DIR)),
            lock: None,
        };
        ctx.load_netns();
        Ok(ctx)
    }

    fn use_wan(&mut self) {
        self.mode = Mode::Wan;
        self.topo = Topology::new(Mode::Wan);
        self.load_netns();
    }

    /// The namespaces the testbed recorded (default: <prefix><region>).
    fn load_netns(&mut self) {
        let prefix = std::env::var("WAN_NETNS_PREFIX").unwrap_or_else(|_| "sy-".into());
        self.netns = REGION_NAMES
            .iter()
            .map(|r| (r.to_string(), format!("{prefix}{}", r.to_ascii_lowercase())))
            .collect();
        for r in self.testbed.regions() {
            self.netns.insert(r.name, r.netns);
        }
    }

    fn wan(&self) -> bool {
        self.mode == Mode::Wan
    }

    fn netns_of(&self, region: &str) -> &str {
        self.netns.get(region).map(String::as_str).unwrap_or("")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `x` relative to the root, for messages.
    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn is_node(&self, name: &str) -> bool {
        self.topo.node(name).is_some()
    }

    fn node_ids(&self) -> Vec<String> {
        self.topo.nodes.iter().map(|n| n.id.clone()).collect()
    }

    fn origin_names(&self) -> Vec<String> {
        self.topo.origins.iter().map(|o| o.name.clone()).collect()
    }

    fn all_names(&self) -> Vec<String> {
        let mut all = self.node_ids();
        all.extend(self.origin_names());
        all
    }

    fn region_of(&self, name: &str) -> String {
        self.topo.region_of(name).unwrap_or("").to_string()
    }

    /// A command for `program`, inside `region`'s namespace in WAN mode (`ip netns exec` execs
    /// it, so its pid is the program's).
    fn command(&self, region: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if self.wan() && !region.is_empty() {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", self.netns_of(region)])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Runs `f` inside `region`'s namespace in WAN mode, here on loopback.
    fn in_region<T: Send>(&self, region: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        if self.wan() && !region.is_empty() {
            wan::in_netns(self.netns_of(region), f)
        } else {
            Ok(f())
        }
    }

    fn need_bins(&self) -> Result<()> {
        let mut bins = vec!["switchyard", "test-origin", "sy-client"];
        if self.wan() {
            bins.push("wan-emu");
        }
        for b in bins {
            if !self.bin(b).is_file() {
                die!(
                    "{} is missing; run ./testnet.sh up (it builds them)",
                    self.rel(&self.bin(b))
                );
            }
        }
        Ok(())
    }

    /// One lock for commands that start or stop processes, so two never race into duplicates.
    fn lock(&mut self) -> Result<()> {
        std::fs::create_dir_all(STATE).with_context(|| format!("create {STATE}"))?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(STATE).join("lock"))
            .with_context(|| format!("open {STATE}/lock"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            } == 0
            {
                self.lock = Some(f);
                return Ok(());
            }
            if Instant::now() >= deadline {
                die!("another testnet.sh has held {STATE}/lock for 2 minutes; giving up");
            }
            pause(Duration::from_millis(100))?;
        }
    }
}

fn is_root() -> bool {
    wan::is_root()
}

/// Exits 2 unless root (WAN mode makes namespaces and runs processes in them).
fn need_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    Err(Stop::Exit(
        2,
        format!(
            "{what} needs root (network namespaces, a TUN device); run it as root, e.g. with sudo"
        ),
    )
    .into())
}

fn recorded_mode() -> Mode {
    match std::fs::read_to_string(MODE_FILE) {
        Ok(s) if s.trim() == "wan" => Mode::Wan,
        _ => Mode::Loopback,
    }
}

// ---- Processes ------------------------------------------------------------------------------

fn pidfile(name: &str) -> PathBuf {
    Path::new(STATE).join(format!("{name}.pid"))
}

fn logfile(name: &str) -> String {
    format!("{STATE}/{name}.log")
}

fn config_of(id: &str) -> String {
    format!("{STATE}/{id}.toml")
}

impl Ctx {
    /// What the command line of NAME's process contains, so a reused pid is never taken for it.
    fn marker(&self, name: &str) -> String {
        if self.is_node(name) {
            format!(" run --config {} ", config_of(name))
        } else {
            format!(" --name {name} --listen ")
        }
    }

    /// The pid of NAME's process if it runs.
    fn running_pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(pidfile(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if !wan::pid_alive(pid) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(&self.marker(name)).then_some(pid)
    }

    /// Starts NAME in the background (in its region's namespace in WAN mode), in its own
    /// session so the terminal's Ctrl-C does not reach it, logging to its log.
    fn launch(&self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let log_path = logfile(name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {log_path}"))?;
        writeln!(log, "--- testnet.sh: starting {name} at {}", local_time())?;
        let mut cmd = self.command(&self.region_of(name), program);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} for {name}", program.display()))?;
        std::fs::write(pidfile(name), format!("{}\n", child.id()))?;
        Ok(())
    }

    fn start_origin(&self, name: &str) -> Result<()> {
        let o = self.topo.origin(name).expect("a known origin");
        self.launch(
            name,
            &self.bin("test-origin"),
            &[
                "--name".into(),
                name.into(),
                "--listen".into(),
                o.data().to_string(),
                "--http".into(),
                o.health().to_string(),
            ],
        )
    }

    fn start_node(&self, id: &str) -> Result<()> {
        self.launch(
            id,
            &self.bin("switchyard"),
            &["run".into(), "--config".into(), config_of(id)],
        )
    }

    /// Fails with the log's tail when NAME's process has exited.
    fn check_alive(&self, name: &str) -> Result<()> {
        // A process just started may not show its own command line yet (`ip netns exec`
        // between its fork and its exec): give it a moment before calling it gone.
        for _ in 0..40 {
            if self.running_pid(name).is_some() {
                return Ok(());
            }
            let pid = std::fs::read_to_string(pidfile(name))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if !pid.is_some_and(wan::pid_alive) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = logfile(name);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail: Vec<String> = lines[lines.len().saturating_sub(15)..]
            .iter()
            .map(|l| format!("    {l}"))
            .collect();
        die!(
            "{name} exited during startup ({}); the end of {log}:\n{}",
            exit_of(name),
            tail.join("\n")
        )
    }

    /// GET http://ADDR/PATH's status code (0: no answer), asked inside REGION's namespace in
    /// WAN mode.
    fn http_code(&self, addr: SocketAddr, path: &str, region: &str) -> u16 {
        self.in_region(region, || http_code(addr, path))
            .unwrap_or(0)
    }

    /// Whether NAME is ready: a node's /ready answers 200; an origin's health port answers 200.
    fn is_ready(&self, name: &str) -> bool {
        let region = self.region_of(name);
        match (self.topo.node(name), self.topo.origin(name)) {
            (Some(n), _) => self.http_code(n.status, "/ready", &region) == 200,
            (_, Some(o)) => self.http_code(o.health(), "/", &region) == 200,
            _ => false,
        }
    }

    /// Polls until all are ready, failing with the log of one that is not.
    fn wait_ready(&self, names: &[String]) -> Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut pending: Vec<String> = names.to_vec();
        loop {
            let mut left = Vec::new();
            for name in &pending {
                self.check_alive(name)?;
                if !self.is_ready(name) {
                    left.push(name.clone());
                }
            }
            pending = left;
            let Some(name) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let mut what = match (self.topo.node(name), self.topo.origin(name)) {
                    (Some(n), _) => format!("GET http://{}/ready did not answer 200", n.status),
                    (_, Some(o)) => {
                        format!("its health check http://{}/ did not answer 200", o.health())
                    }
                    _ => String::new(),
                };
                if self.wan() {
                    what.push_str(&format!(
                        " (asked inside namespace {})",
                        self.netns_of(&self.region_of(name))
                    ));
                }
                die!(
                    "{name} is not ready after {}s: {what}; see {}",
                    self.ready_timeout.as_secs(),
                    logfile(name)
                );
            }
            pause(Duration::from_millis(100))?;
        }
    }

    /// ID's status document, from `switchyard status --json` (inside its namespace).
    fn status_of(&self, id: &str) -> Result<Status> {
        let node = self.topo.node(id).expect("a known node");
        let netns = self.wan().then(|| self.netns_of(&node.region));
        switchyard_tests::harness::node_status(&self.bin("switchyard"), netns, node.status)
            .with_context(|| format!("{id}'s status"))
    }

    /// Whether ID lists every one of WANT alive; else what it lists.
    fn sees_alive(&self, id: &str, want: &[String]) -> Result<(), String> {
        let node = self.topo.node(id).expect("a known node");
        let Ok(s) = self.status_of(id) else {
            return Err(format!("its status ({}) did not answer", node.status));
        };
        let seen: Vec<String> = s
            .members
            .iter()
            .map(|m| format!("{} {}", m.id, m.state))
            .collect();
        let all = want
            .iter()
            .all(|w| s.members.iter().any(|m| &m.id == w && m.state == "alive"));
        if all {
            Ok(())
        } else if seen.is_empty() {
            Err("it lists no members".into())
        } else {
            Err(format!("it lists {}", seen.join(", ")))
        }
    }

    /// Polls until each of IDS lists all of them alive; fails naming one that does not.
    fn wait_mesh(&self, ids: &[String]) -> Result<()> {
        let deadline = Instant::now() + self.mesh_timeout;
        let mut pending: Vec<String> = ids.to_vec();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut left = Vec::new();
            for id in &pending {
                self.check_alive(id)?;
                if let Err(s) = self.sees_alive(id, ids) {
                    seen.insert(id.clone(), s);
                    left.push(id.clone());
                }
            }
            pending = left;
            let Some(id) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                die!(
                    "the mesh did not form within {}s: {id} does not list {} all alive ({}); see {}",
                    self.mesh_timeout.as_secs(),
                    ids.join(" "),
                    seen.get(id).map(String::as_str).unwrap_or(""),
                    logfile(id)
                );
            }
            pause(Duration::from_millis(200))?;
        }
    }

    /// SIGTERM, then SIGKILL after the stop timeout; removes pid files. Only processes whose
    /// pid file names them, and still run what testnet.sh started, are signalled. Says what it
    /// stopped on `out`.
    fn stop(&self, names: &[String], out: &mut dyn Write) -> Result<()> {
        let mut pids: Vec<(String, u32, bool)> = Vec::new();
        for name in names {
            match self.running_pid(name) {
                Some(pid) => {
                    signal(pid, libc::SIGTERM);
                    pids.push((name.clone(), pid, false));
                }
                None => {
                    let _ = std::fs::remove_file(pidfile(name));
                }
            }
        }
        let deadline = Instant::now() + self.stop_timeout;
        while !pids.is_empty() {
            let now = Instant::now();
            // One liveness check per process and round: one that exits between two checks
            // would otherwise be dropped from the list with its pid file left behind.
            let mut exited = Vec::new();
            for (name, pid, killed) in pids.iter_mut() {
                if !wan::pid_alive(*pid) {
                    let _ = writeln!(out, "stopped {name} (pid {pid})");
                    let _ = std::fs::remove_file(pidfile(name));
                    exited.push(*pid);
                } else if now >= deadline && !*killed {
                    warn(&format!(
                        "{name} (pid {pid}) did not exit {}s after SIGTERM; sending SIGKILL",
                        self.stop_timeout.as_secs()
                    ));
                    signal(*pid, libc::SIGKILL);
                    *killed = true;
                }
            }
            pids.retain(|(_, pid, _)| !exited.contains(pid));
            if pids.is_empty() {
                break;
            }
            if now >= deadline + Duration::from_secs(5) {
                let left: Vec<&str> = pids.iter().map(|p| p.0.as_str()).collect();
                die!("could not stop: {}", left.join(" "));
            }
            // Not `pause`: stopping goes on when a signal arrives, or cleanup would stop short.
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether something accepts TCP connections on ADDR, or a UDP socket holds UDP ADDR.
    fn check_free(&self, names: &[String]) -> Result<()> {
        for name in names {
            let region = self.region_of(name);
            let tcp: Vec<SocketAddr> = match (self.topo.node(name), self.topo.origin(name)) {
                (Some(n), _) => std::iter::once(n.status)
                    .chain(n.apps.iter().map(|a| a.1))
                    .collect(),
                (_, Some(o)) => vec![o.data(), o.health()],
                _ => Vec::new(),
            };
            for addr in tcp {
                let taken = self
                    .in_region(&region, || {
                        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
                    })
                    .unwrap_or(false);
                if taken {
                    die!(
                        "{addr} (for {name}) is already in use; is another testnet running? \
                         (./testnet.sh down there, or find it with: ss -ltnp)"
                    );
                }
            }
            if let Some(n) = self.topo.node(name) {
                let mesh = n.mesh;
                let taken = self
                    .in_region(&region, || {
                        matches!(UdpSocket::bind(mesh), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
                    })
                    .unwrap_or(false);
                if taken {
                    die!(
                        "UDP {mesh} (the mesh address of {name}) is already in use; is another \
                         testnet running? (./testnet.sh down there, or find it with: ss -lunp)"
                    );
                }
            }
        }
        Ok(())
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; the pid file named this process.
        unsafe { libc::kill(pid, sig) };
    }
}

/// GET http://ADDR/PATH's status code, 0 when nothing answers within 2 s.
fn http_code(addr: SocketAddr, path: &str) -> u16 {
    let get = || -> std::io::Result<u16> {
        let t = Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&addr, t)?;
        s.set_read_timeout(Some(t))?;
        s.set_write_timeout(Some(t))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    };
    get().unwrap_or(0)
}

/// Now, as `date '+%F %T'` prints it.
fn local_time() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return String::from("?");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Runs a command to completion; its stdout and stderr together, trailing newlines removed
/// (as `$(...)` gives them), and whether it succeeded.
fn capture(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {:?}", cmd.get_program()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((
        out.status.success(),
        text.trim_end_matches('\n').to_string(),
    ))
}

// ---- Files ----------------------------------------------------------------------------------

/// Whether `a` was modified before `b` (bash's `-ot`).
fn older(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(a), Some(b)) if a < b)
}

fn non_empty(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}

/// Writes through a temporary file, so readers never see half a file.
fn write_atomic(path: &str, text: &str) -> Result<()> {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {tmp}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {tmp} to {path}"))
}

/// The region that node certificate `crt` (with its key, checked against the CA `ca_crt` as
/// the node will) lets its node speak for: None when it names none; Err when it does not load.
fn cert_region(ca_crt: &Path, crt: &Path, key: &Path) -> Result<Option<String>, String> {
    let tls = switchyard_gossip::tls::load(ca_crt, crt, key).map_err(|e| e.to_string())?;
    Ok(tls.region().map(|r| r.code().to_string()))
}

impl Ctx {
    /// Creates the cluster CA unless it exists, and a certificate naming the node's region for
    /// each ID that has none, one older than the CA (so from another CA), or one that does not
    /// name the node's region (issued before certificates named regions, or for another).
    fn ensure_certs(&self, ids: &[String]) -> Result<()> {
        let certs = Path::new(CERTS);
        let ca = certs.join("ca");
        let (ca_crt, ca_key) = (ca.join("ca.crt"), ca.join("ca.key"));
        let sy = self.bin("switchyard");
        if !non_empty(&ca_crt) || !non_empty(&ca_key) {
            // Half a CA is of no use.
            let _ = std::fs::remove_file(&ca_crt);
            let _ = std::fs::remove_file(&ca_key);
            let (ok, out) = capture(
                Command::new(&sy)
                    .args(["ca", "init", "--out"])
                    .arg(&ca)
                    .args(["--cluster", &self.topo.cluster]),
            )?;
            if !ok {
                die!("cannot create the cluster CA in {}: {out}", ca.display());
            }
            say!("  {out}");
        }
        for id in ids {
            let region = match self.topo.node(id) {
                Some(n) => n.region.clone(),
                None => die!("no node {id} in the testnet's topology"),
            };
            let (crt, key) = (
                certs.join(format!("{id}.crt")),
                certs.join(format!("{id}.key")),
            );
            let fresh = non_empty(&crt) && non_empty(&key) && !older(&crt, &ca_crt);
            if fresh {
                match cert_region(&ca_crt, &crt, &key) {
                    Ok(Some(r)) if r == region => continue,
                    Ok(Some(r)) => say!("  {id}'s certificate is for {r}: reissuing for {region}"),
                    Ok(None) => {
                        say!("  {id}'s certificate names no region: reissuing for {region}")
                    }
                    Err(e) => say!("  {id}'s certificate does not load ({e}): reissuing"),
                }
            }
            let (ok, out) = capture(
                Command::new(&sy)
                    .args(["cert", "issue", "--ca"])
                    .arg(&ca)
                    .args(["--node", id, "--region", &region, "--out", CERTS]),
            )?;
            if !ok {
                die!("cannot issue a certificate for {id} in {region}: {out}");
            }
            say!("  {out}");
        }
        Ok(())
    }

    /// Writes the GeoIP CSV, builds the database from it with `switchyard geoip build`, and
    /// checks with `switchyard geoip lookup` that each region's client is placed in its region.
    fn build_geoip(&self) -> Result<()> {
        let mut csv = format!(
            "# Written by ./testnet.sh up: where the testnet clients are. Built into\n\
             # {GEO_DB} with: switchyard geoip build --from {GEO_CSV} --out {GEO_DB}\n\
             cidr,country,subdivision,latitude,longitude\n"
        );
        for row in self.topo.geo_rows() {
            csv.push_str(&row);
            csv.push('\n');
        }
        write_atomic(GEO_CSV, &csv)?;
        let sy = self.bin("switchyard");
        let (ok, out) = capture(
            Command::new(&sy).args(["geoip", "build", "--from", GEO_CSV, "--out", GEO_DB]),
        )?;
        if !ok {
            die!("cannot build the GeoIP database {GEO_DB} from {GEO_CSV}: {out}");
        }
        say!("  {out}");
        for c in &self.topo.clients {
            let (ip, r) = (c.ip.to_string(), c.region.name);
            let (ok, out) =
                capture(Command::new(&sy).args(["geoip", "lookup", &ip, "--db", GEO_DB]))?;
            if !ok {
                die!("switchyard geoip lookup {ip} --db {GEO_DB} failed: {out}");
            }
            if !places_in(&out, r) {
                die!(
                    "the GeoIP database {GEO_DB} does not place {ip} (the {r} client) in region \
                     {r}; switchyard geoip lookup {ip} --db {GEO_DB} says: {out}"
                );
            }
            say!("  {}", out.lines().next().unwrap_or(""));
        }
        Ok(())
    }

    fn node_files(&self, id: &str) -> NodeFiles {
        NodeFiles::under(&self.root.join(CERTS), id, &self.root.join(GEO_DB))
    }

    fn write_config(&self, id: &str) -> Result<()> {
        let files = self.node_files(id);
        // Typed first: a topology that does not make a valid config is a bug here, not there.
        self.topo
            .node_config(id, &files)
            .map_err(|e| anyhow!("the topology makes an invalid config for {id}: {e}"))?;
        write_atomic(
            &config_of(id),
            &self
                .topo
                .node_config_text(id, &files, "Written by ./testnet.sh up."),
        )
    }

    fn check_config(&self, id: &str) -> Result<()> {
        let (ok, out) = capture(Command::new(self.bin("switchyard")).args([
            "check",
            "--config",
            &config_of(id),
        ]))?;
        if !ok {
            die!("{} is invalid: {out}", config_of(id));
        }
        say!("  {out}");
        Ok(())
    }

    fn write_manifest(&self) -> Result<()> {
        let netns: Vec<(String, String)> = REGION_NAMES
            .iter()
            .map(|r| (r.to_string(), self.netns_of(r).to_string()))
            .collect();
        write_atomic(MANIFEST, &self.topo.manifest(&netns))
    }
}

/// Whether `switchyard geoip lookup`'s answer says `region R` (a word, then space, comma or end).
fn places_in(out: &str, region: &str) -> bool {
    let want = format!("region {region}");
    out.match_indices(&want).any(|(i, _)| {
        let before = out[..i].chars().next_back();
        let after = out[i + want.len()..].chars().next();
        before.is_none_or(char::is_whitespace)
            && after.is_none_or(|c| c.is_whitespace() || c == ',')
    })
}

// ---- The summary ----------------------------------------------------------------------------

impl Ctx {
    fn print_summary(&self) {
        let b = self.rel(&self.bin);
        let t = &self.topo;
        let pid = |name: &str| {
            self.running_pid(name)
                .map_or_else(|| "-".to_string(), |p| p.to_string())
        };
        say!("nodes:");
        for n in &t.nodes {
            say!(
                "  {:<10} {:<5} status {:<15}  mesh {}  pid {:<7} log {}",
                n.id,
                n.region,
                n.status.to_string(),
                n.mesh,
                pid(&n.id),
                logfile(&n.id)
            );
            let apps: Vec<String> = n
                .apps
                .iter()
                .map(|(a, addr)| format!("{a} {addr}"))
                .collect();
            say!("  {:<10} apps: {}", "", apps.join("  "));
        }
        say!("origins:");
        for o in &t.origins {
            say!(
                "  {:<7} pool {:<5} {:<5} {}  health http://{}/  pid {:<7} log {}",
                o.name,
                o.pool,
                o.region,
                o.data(),
                o.health(),
                pid(&o.name),
                logfile(&o.name)
            );
        }
        let clients: String = t
            .clients
            .iter()
            .map(|c| format!("  {} {}", c.region.name, c.ip))
            .collect();
        say!("client source addresses:{clients}");
        say!(
            "configs: {STATE}/<node>.toml   manifest: {STATE}/manifest.json   mesh certificates: {CERTS}/"
        );
        say!("GeoIP database: {GEO_DB} (from {GEO_CSV})\n");
        if self.wan() {
            self.print_wan_summary(&b);
            return;
        }
        let wnam = t.node("edge-wnam").expect("edge-wnam");
        let failover = wnam.app("failover").expect("the failover app");
        let weu_client = t.client("WEU").expect("a WEU client").ip;
        let status = wnam.status;
        let dns = wnam.dns;
        let zone = topology::DNS_ZONE;
        say!(
            "try:
  {b}/sy-client {failover}          # prints the origin's name
  dig @{dns_ip} -p {dns_port} failover.{zone}        # every node answers DNS: the nodes to connect to
  dig @{dns_ip} -p {dns_port} geo.{zone} +subnet={weu_client}/32   # for a WEU client: edge-weu first
  {b}/switchyard explain --dns geo.{zone} --client {weu_client} --addr {status}   # why those nodes
  ./testnet.sh client --from WEU --node edge-weu
  ./testnet.sh client --from WEU --app geo --node edge-wnam        # WEU client, WNAM node: a weu origin
  ./testnet.sh client --from SEAS --app proximity --node edge-weu  # the nearest pool's: a seas origin
  ./testnet.sh client --from WNAM --app hash --node edge-seas      # the same origin from every node
  ./testnet.sh client --from WEU --app dynamic                     # the pool of lowest RTT from WEU
  ./testnet.sh client --from WNAM --app relay                      # pool weu only; relay = \"fastest\"
  {b}/switchyard explain --lb geo --client {weu_client} --addr {status}   # why that origin
  {b}/switchyard geoip lookup {weu_client} --db {GEO_DB}   # where a client is
  {b}/switchyard status --addr {status}   # members, and who sees which origin
  ./testnet.sh origin down wnam-1                 # and wnam-2: edge-wnam fails over to weu
  ./testnet.sh node down edge-weu                 # it leaves the mesh; then watch it go down:
  {b}/switchyard status --addr {status}   # edge-weu is down in the member list
  ./testnet.sh node up edge-weu                   # it rejoins, with a new generation
  ./testnet.sh status
  ./testnet.sh down",
            dns_ip = dns.ip(),
            dns_port = dns.port(),
        );
    }

    /// The WAN part of the summary: namespaces, latencies, and what to try.
    fn print_wan_summary(&self, b: &str) {
        say!("WAN mode: every process runs in its region's namespace; wan-emu joins them");
        for r in &topology::REGIONS {
            let ns = self.netns_of(r.name);
            say!(
                "  {:<5} namespace {:<8} 10.250.{}.0/24   (ip netns exec {ns} CMD...)",
                r.name,
                ns,
                r.index
            );
        }
        say!("  testbed state, wan-emu log and control socket: {WAN_DIR}/");
        if let Ok(show) = self.testbed.control("show") {
            for l in wan::matrix(&show).lines() {
                say!("  {l}");
            }
        }
        let ns_wnam = self.netns_of("WNAM");
        let wnam = self.topo.node("edge-wnam").expect("edge-wnam");
        let (status, dns) = (wnam.status, wnam.dns);
        let zone = topology::DNS_ZONE;
        let weu_client = self.topo.client("WEU").expect("a WEU client").ip;
        let wnam_client = self.topo.client("WNAM").expect("a WNAM client").ip;
        say!(
            "
try:
  ./testnet.sh client --from WNAM                                  # edge-wnam's failover app: a wnam origin
  ./testnet.sh client --from WEU --app geo --node edge-wnam        # across the WAN: a weu origin
  ./testnet.sh client --from SEAS --app proximity --node edge-weu  # the nearest pool's: a seas origin
  ./testnet.sh client --from WEU --app dynamic                     # the pool of lowest RTT from WEU
  ./testnet.sh wan show                           # latencies and per-link counters
  ./testnet.sh wan set WNAM WEU 300ms             # a round-trip time between two regions
  ./testnet.sh wan cut WNAM WEU                   # and: ./testnet.sh wan heal WNAM WEU
  ./testnet.sh client --from WNAM --app relay     # cut from WNAM, weu still serves: through a peer
  ip netns exec {ns_wnam} {b}/switchyard explain --lb relay --client {wnam_client} --addr {status}   # the path, and why
  ip netns exec {ns_wnam} {b}/switchyard status --addr {status}   # members and RTTs
  ip netns exec {ns_wnam} {b}/switchyard explain --lb geo --client {weu_client} --addr {status}
  ip netns exec {ns_wnam} dig @{dns_ip} -p {dns_port} geo.{zone} +subnet={weu_client}/32   # edge-weu first
  ./testnet.sh origin down wnam-1                 # and wnam-2: edge-wnam fails over to weu
  ./testnet.sh node down edge-weu                 # and: ./testnet.sh node up edge-weu
  ./testnet.sh status
  ./testnet.sh down                               # also removes the namespaces",
            dns_ip = dns.ip(),
            dns_port = dns.port(),
        );
    }
}

// ---- The WAN testbed ------------------------------------------------------------------------

impl Ctx {
    /// Stops the WAN testbed, if there is one: wan-emu, every process left in its namespaces,
    /// and the namespaces (only those it recorded making).
    fn wan_down(&self, out: &mut dyn Write) -> Result<()> {
        if !self.testbed.state_present() {
            return Ok(());
        }
        let grace = env_secs("WAN_STOP_TIMEOUT", 10);
        let removed = self.testbed.down(grace).with_context(|| {
            format!(
                "the WAN testbed did not come down cleanly; see {WAN_DIR}/wan-emu.log and \
                 ip netns list"
            )
        })?;
        if removed.is_empty() {
            let _ = writeln!(out, "WAN testbed down");
        } else {
            let _ = writeln!(out, "WAN testbed down (removed {})", removed.join(" "));
        }
        Ok(())
    }

    fn wan_up(&mut self) -> Result<()> {
        let prefix = std::env::var("WAN_NETNS_PREFIX").unwrap_or_else(|_| "sy-".into());
        let lifetime = std::env::var("WAN_LIFETIME").unwrap_or_else(|_| "12h".into());
        let namespaces: Vec<String> = REGION_NAMES
            .iter()
            .map(|r| format!("{prefix}{}", r.to_ascii_lowercase()))
            .collect();
        say!(
            "starting the WAN testbed: wan-emu between the namespaces {}",
            namespaces.join(" ")
        );
        let regions = self
            .testbed
            .up(
                &self.bin("wan-emu"),
                &REGION_NAMES,
                &prefix,
                &WAN_RTT,
                &lifetime,
                env_secs("WAN_READY_TIMEOUT", 15),
            )
            .context("the WAN testbed did not come up")?;
        say!(
            "WAN testbed up (wan-emu pid {}, control {}, log {}):",
            self.testbed
                .pid()
                .map_or_else(|| "?".into(), |p| p.to_string()),
            self.testbed.control_path().display(),
            self.testbed.log_path().display()
        );
        for r in &regions {
            say!(
                "  {}  namespace {}  addresses 10.250.{}.0/24",
                r.name,
                r.netns,
                r.index
            );
            // The topology's addresses assume each region's index.
            let want = topology::region(&r.name).map(|s| s.index);
            if want != Some(r.index) {
                die!(
                    "the WAN testbed gave region {} index {}, not {want:?}",
                    r.name,
                    r.index
                );
            }
        }
        self.load_netns();
        if let Ok(show) = self.testbed.control("show") {
            print!("{}", wan::matrix(&show));
        }
        Ok(())
    }

    /// In WAN mode: root, and the testbed runs.
    fn need_wan(&self, what: &str) -> Result<()> {
        if !self.wan() {
            return Ok(());
        }
        need_root(what)?;
        if !self.testbed.is_running() {
            die!(
                "the WAN testbed is down (wan-emu is not running); start afresh: \
                 ./testnet.sh down; ./testnet.sh up --wan"
            );
        }
        Ok(())
    }
}

// ---- Commands -------------------------------------------------------------------------------

/// What an armed command stops when it does not finish (an error or a signal).
struct Armed {
    what: String,
    names: Vec<String>,
    wan: bool,
}

impl Ctx {
    /// Runs `body`; when it fails or a signal arrives, stops what it started and passes the
    /// failure on (a signal as exit 128 + signal).
    fn armed(
        &mut self,
        what: &str,
        names: Vec<String>,
        body: impl FnOnce(&mut Ctx, &mut Armed) -> Result<()>,
    ) -> Result<()> {
        catch_signals(true);
        let mut armed = Armed {
            what: what.to_string(),
            names,
            wan: false,
        };
        let res = body(self, &mut armed).and_then(|()| interrupted());
        catch_signals(false);
        let Err(e) = res else { return Ok(()) };
        // Report the failure first, then the cleanup.
        match e.downcast_ref::<Stop>() {
            Some(Stop::Exit(_, m)) if m.is_empty() => {}
            Some(s) => warn(&s.to_string()),
            None => warn(&format!("{e:#}")),
        }
        warn(&format!(
            "{} did not finish; stopping what it started",
            armed.what
        ));
        let mut err = std::io::stderr();
        if let Err(e) = self.stop(&armed.names, &mut err) {
            warn(&format!("{e:#}"));
        }
        if armed.wan {
            match self.wan_down(&mut err) {
                Ok(()) => {
                    let _ = std::fs::remove_file(MODE_FILE);
                }
                Err(e) => warn(&format!("{e:#}")),
            }
        }
        let code = match e.downcast_ref::<Stop>() {
            Some(Stop::Exit(c, _)) => *c,
            _ => 1,
        };
        Err(Stop::Exit(code, String::new()).into())
    }

    fn cmd_up(&mut self, wan: bool) -> Result<()> {
        if wan {
            self.use_wan();
            need_root("./testnet.sh up --wan")?;
        }
        self.lock()?;
        let prev = recorded_mode();
        // Switching from WAN mode takes root too: its processes and namespaces are root's.
        if prev == Mode::Wan {
            need_root("stopping the WAN testnet (it is up in WAN mode)")?;
        }
        let all = self.all_names();
        let running = all.iter().filter(|n| self.running_pid(n).is_some()).count();
        let total = all.len();
        if running == total
            && Path::new(MANIFEST).is_file()
            && prev == self.mode
            && (!self.wan() || self.testbed.is_running())
        {
            say!(
                "testnet is already up{} (stop it with ./testnet.sh down)",
                if self.wan() { " in WAN mode" } else { "" }
            );
            self.print_summary();
            return Ok(());
        }
        let mode_name = |m: Mode| if m == Mode::Wan { "wan" } else { "loopback" };
        self.armed("up", all.clone(), |ctx, armed| {
            if prev != ctx.mode && running > 0 {
                say!(
                    "testnet is up in {} mode ({running} of {total} processes); stopping it for {} mode",
                    mode_name(prev),
                    mode_name(ctx.mode)
                );
            } else if running > 0 {
                say!("testnet is partly up ({running} of {total} processes); restarting it cleanly");
            }
            ctx.stop(&all, &mut std::io::stdout())?;
            let _ = std::fs::remove_file(MANIFEST);
            if prev == Mode::Wan {
                ctx.wan_down(&mut std::io::stdout())?;
                let _ = std::fs::remove_file(MODE_FILE);
            }
            // The wrapper built this binary and the others into one directory; scripts read it.
            std::fs::write(
                Path::new(STATE).join("bin-dir"),
                format!("{}\n", ctx.rel(&ctx.bin)),
            )?;
            ctx.need_bins()?;
            if ctx.wan() {
                // Recorded first, so `down` cleans up after an `up --wan` that was killed.
                std::fs::write(MODE_FILE, "wan\n")?;
                armed.wan = true;
                ctx.wan_up()?;
            }
            interrupted()?;
            say!("mesh certificates in {CERTS}/ (cluster {})", ctx.topo.cluster);
            ctx.ensure_certs(&ctx.node_ids())?;
            say!("GeoIP database {GEO_DB} (from {GEO_CSV})");
            ctx.build_geoip()?;
            say!("writing and checking configs");
            for id in ctx.node_ids() {
                ctx.write_config(&id)?;
                ctx.check_config(&id)?;
            }
            let mut order = ctx.origin_names();
            order.extend(ctx.node_ids());
            ctx.check_free(&order)?;
            for name in &order {
                File::create(logfile(name)).with_context(|| format!("create {}", logfile(name)))?;
            }
            let origins = ctx.origin_names();
            say!("starting origins: {}", origins.join(" "));
            for name in &origins {
                ctx.start_origin(name)?;
            }
            ctx.wait_ready(&origins)?;
            let nodes = ctx.node_ids();
            say!("starting nodes: {}", nodes.join(" "));
            for id in &nodes {
                ctx.start_node(id)?;
            }
            ctx.wait_ready(&nodes)?;
            let meshes: Vec<String> = ctx.topo.nodes.iter().map(|n| n.mesh.to_string()).collect();
            say!("waiting for the mesh: {} on {}", nodes.join(" "), meshes.join(" "));
            ctx.wait_mesh(&nodes)?;
            say!("mesh formed: {} members alive", nodes.len());
            ctx.write_manifest()
        })?;
        say!("");
        say!(
            "testnet is up{}",
            if self.wan() { " in WAN mode" } else { "" }
        );
        self.print_summary();
        Ok(())
    }

    fn cmd_down(&mut self) -> Result<()> {
        if !Path::new(STATE).is_dir() {
            say!("testnet is not running");
            return Ok(());
        }
        // In WAN mode the testbed goes too: wan-emu, and the namespaces it recorded making.
        let wan = self.wan();
        if wan {
            need_root("./testnet.sh down (the testnet is up in WAN mode)")?;
        }
        self.lock()?;
        let all = self.all_names();
        let mut any = all.iter().any(|n| self.running_pid(n).is_some());
        self.stop(&all, &mut std::io::stdout())?;
        let _ = std::fs::remove_file(MANIFEST);
        if wan {
            any |= self.testbed.state_present();
            self.wan_down(&mut std::io::stdout())?;
            let _ = std::fs::remove_file(MODE_FILE);
        }
        if any {
            say!("testnet is down (logs stay in {STATE}/)");
        } else {
            say!("testnet is not running");
        }
        Ok(())
    }

    fn cmd_status(&mut self) -> Result<()> {
        if self.wan() {
            need_root("./testnet.sh status (the testnet is up in WAN mode)")?;
        }
        let mut rc = 0;
        let sy = self.bin("switchyard");
        for n in &self.topo.nodes {
            let where_ = if self.wan() {
                format!(", namespace {}", self.netns_of(&n.region))
            } else {
                String::new()
            };
            match self.running_pid(&n.id) {
                Some(pid) => {
                    say!(
                        "== {} ({}, pid {pid}, status {}{where_})",
                        n.id,
                        n.region,
                        n.status
                    );
                    let answer = if sy.is_file() {
                        capture(self.command(&n.region, &sy).args([
                            "status",
                            "--addr",
                            &n.status.to_string(),
                        ]))?
                    } else {
                        (false, format!("{} is missing", self.rel(&sy)))
                    };
                    match answer {
                        (true, out) => say!("{out}"),
                        (false, out) => {
                            say!("{} runs but its status did not answer: {out}", n.id);
                            rc = 3;
                        }
                    }
                }
                None => {
                    say!("== {} ({}): down", n.id, n.region);
                    rc = 3;
                }
            }
            say!("");
        }
        say!("== origins");
        for o in &self.topo.origins {
            match self.running_pid(&o.name) {
                Some(pid) => say!(
                    "  {:<7} {:<5} {}  running (pid {pid})",
                    o.name,
                    o.pool,
                    o.data()
                ),
                None => {
                    say!("  {:<7} {:<5} {}  down", o.name, o.pool, o.data());
                    rc = 3;
                }
            }
        }
        if self.wan() {
            say!("");
            match self.testbed.control("show") {
                Ok(show) if self.testbed.is_running() => {
                    say!("== WAN testbed (wan-emu; state in {WAN_DIR}/)");
                    for l in show.lines() {
                        say!("  {l}");
                    }
                }
                _ => {
                    say!("== WAN testbed: down");
                    rc = 3;
                }
            }
        }
        if rc != 0 {
            return Err(Stop::Exit(rc, String::new()).into());
        }
        Ok(())
    }

    fn cmd_origin(&mut self, action: Action, name: &str) -> Result<()> {
        if self.topo.origin(name).is_none() {
            return Err(bad_usage(format!(
                "unknown origin {name}; one of: {}",
                self.origin_names().join(" ")
            )));
        }
        if self.wan() {
            need_root("./testnet.sh origin (the testnet is up in WAN mode)")?;
        }
        self.lock()?;
        match action {
            Action::Down => self.down_one(name),
            Action::Up => {
                if let Some(pid) = self.running_pid(name) {
                    say!("{name} is already running (pid {pid})");
                    return Ok(());
                }
                self.need_bins()?;
                self.need_wan("./testnet.sh origin up")?;
                self.check_free(&[name.to_string()])?;
                self.armed(
                    &format!("origin up {name}"),
                    vec![name.to_string()],
                    |ctx, _| {
                        ctx.start_origin(name)?;
                        ctx.wait_ready(&[name.to_string()])
                    },
                )?;
                let o = self.topo.origin(name).expect("checked above");
                say!(
                    "started {name} (pid {}) on {}",
                    self.running_pid(name)
                        .map_or_else(|| "?".into(), |p| p.to_string()),
                    o.data()
                );
                Ok(())
            }
        }
    }

    fn down_one(&self, name: &str) -> Result<()> {
        if self.running_pid(name).is_some() {
            self.stop(&[name.to_string()], &mut std::io::stdout())
        } else {
            let _ = std::fs::remove_file(pidfile(name));
            say!("{name} is not running");
            Ok(())
        }
    }

    fn cmd_node(&mut self, action: Action, id: &str) -> Result<()> {
        if !self.is_node(id) {
            return Err(bad_usage(format!(
                "unknown node {id}; one of: {}",
                self.node_ids().join(" ")
            )));
        }
        if self.wan() {
            need_root("./testnet.sh node (the testnet is up in WAN mode)")?;
        }
        self.lock()?;
        match action {
            Action::Down => self.down_one(id),
            Action::Up => {
                if let Some(pid) = self.running_pid(id) {
                    say!("{id} is already running (pid {pid})");
                    return Ok(());
                }
                self.need_bins()?;
                self.need_wan("./testnet.sh node up")?;
                let ca = Path::new(CERTS).join("ca");
                if !non_empty(&ca.join("ca.crt")) || !non_empty(&ca.join("ca.key")) {
                    die!(
                        "the cluster CA ({CERTS}/ca) is missing; start afresh: ./testnet.sh down; \
                         ./testnet.sh up"
                    );
                }
                self.ensure_certs(&[id.to_string()])?;
                if !non_empty(Path::new(GEO_DB)) {
                    self.build_geoip()?;
                }
                if !Path::new(&config_of(id)).is_file() {
                    self.write_config(id)?;
                }
                self.check_config(id)?;
                self.check_free(&[id.to_string()])?;
                let mut mesh = Vec::new();
                self.armed(&format!("node up {id}"), vec![id.to_string()], |ctx, _| {
                    ctx.start_node(id)?;
                    ctx.wait_ready(&[id.to_string()])?;
                    // It rejoins once it and the other running nodes list each other alive.
                    mesh = ctx
                        .node_ids()
                        .into_iter()
                        .filter(|n| ctx.running_pid(n).is_some())
                        .collect();
                    ctx.wait_mesh(&mesh)
                })?;
                let n = self.topo.node(id).expect("checked above");
                say!(
                    "started {id} (pid {}), status {}, mesh {}",
                    self.running_pid(id)
                        .map_or_else(|| "?".into(), |p| p.to_string()),
                    n.status,
                    n.mesh
                );
                say!("{id} is in the mesh: {} alive", mesh.join(" "));
                Ok(())
            }
        }
    }

    fn cmd_client(&mut self, args: ClientArgs) -> Result<()> {
        let node_id = args.node.unwrap_or_else(|| self.topo.nodes[0].id.clone());
        let Some(node) = self.topo.node(&node_id) else {
            return Err(bad_usage(format!(
                "unknown node {node_id}; one of: {}",
                self.node_ids().join(" ")
            )));
        };
        let app = args.app.unwrap_or_else(|| "failover".into());
        let Some(addr) = node.app(&app) else {
            return Err(bad_usage(format!(
                "unknown app {app}; one of: {}",
                APPS.join(" ")
            )));
        };
        let region = args
            .from
            .map(|r| r.to_ascii_uppercase())
            .unwrap_or_else(|| node.region.clone());
        let Some(client) = self.topo.client(&region) else {
            return Err(bad_usage(format!(
                "unknown region {region}; one of: {}",
                REGION_NAMES.join(" ")
            )));
        };
        let from = client.ip.to_string();
        self.need_bins()?;
        // From inside the client's region's namespace, so it crosses the WAN to other regions.
        self.need_wan("./testnet.sh client")?;
        let err = self
            .command(&region, self.bin("sy-client"))
            .args([
                addr.to_string(),
                "--from".into(),
                from,
                "--timeout".into(),
                args.timeout.unwrap_or_else(|| "5s".into()),
            ])
            .exec();
        die!("cannot run {}: {err}", self.rel(&self.bin("sy-client")))
    }

    fn cmd_wan(&mut self, words: Vec<String>) -> Result<()> {
        const USAGE_WAN: &str =
            "usage: ./testnet.sh wan set A B DUR | cut A B | heal A B | loss A B PCT | show";
        let ok = matches!(
            (words.first().map(String::as_str), words.len()),
            (Some("set" | "loss"), 4) | (Some("cut" | "heal"), 3) | (Some("show"), 1)
        );
        if !ok {
            return Err(bad_usage(USAGE_WAN));
        }
        for arg in words.iter().skip(1).take(2) {
            if arg != "*" && !REGION_NAMES.contains(&arg.to_ascii_uppercase().as_str()) {
                return Err(bad_usage(format!(
                    "unknown region {arg}; one of: {} (B may be '*': all others)",
                    REGION_NAMES.join(" ")
                )));
            }
        }
        if !self.wan() {
            die!("the testnet is not in WAN mode; start it with ./testnet.sh up --wan");
        }
        self.need_wan("./testnet.sh wan")?;
        let reply = self.testbed.control(&words.join(" "))?;
        print!("{reply}");
        if words[0] != "show" {
            // The matrix as it is now.
            print!("{}", wan::matrix(&self.testbed.control("show")?));
        }
        Ok(())
    }
}

// ---- Command line ---------------------------------------------------------------------------

#[derive(Debug, Parser)]
#[command(
    name = "testnet.sh",
    disable_help_flag = true,
    disable_help_subcommand = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    Down,
    Up,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    app: Option<String>,
    #[arg(long)]
    node: Option<String>,
    #[arg(long)]
    timeout: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Up {
        #[arg(long)]
        wan: bool,
    },
    Down,
    Status,
    Origin {
        action: Action,
        name: String,
    },
    Node {
        action: Action,
        id: String,
    },
    Client(ClientArgs),
    Wan {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    #[command(alias = "-h", alias = "--help")]
    Help,
}

/// The message testnet.sh gave for a command line clap rejects.
fn usage_message(args: &[String], err: &clap::Error) -> String {
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let rest = &args[2.min(args.len())..];
    match cmd {
        "up" => match rest.iter().find(|a| *a != "--wan") {
            Some(a) => format!("unknown up option {a} (up takes only --wan)"),
            None => "up takes only --wan".into(),
        },
        "down" | "status" => format!("{cmd} takes no arguments"),
        "origin" => "usage: ./testnet.sh origin down|up NAME".into(),
        "node" => "usage: ./testnet.sh node down|up ID".into(),
        "client" => {
            let known = ["--from", "--app", "--node", "--timeout"];
            match rest.iter().find(|a| !known.contains(&a.as_str())) {
                Some(a) if err.kind() == clap::error::ErrorKind::UnknownArgument => {
                    format!("unknown client option {a}")
                }
                _ => match rest.last() {
                    Some(a) if known.contains(&a.as_str()) => format!("{a} needs a value"),
                    _ => format!("bad client arguments: {}", err.kind()),
                },
            }
        }
        "" => String::new(),
        _ => format!("unknown command: {cmd}"),
    }
}

fn run(args: Vec<String>) -> Result<()> {
    if args.len() < 2 {
        return Err(bad_usage(""));
    }
    let cli = Cli::try_parse_from(&args).map_err(|e| bad_usage(usage_message(&args, &e)))?;
    // `up` picks its mode (--wan); the other commands follow the running testnet's.
    let mut ctx = Ctx::new(Mode::Loopback)?;
    if !matches!(cli.cmd, Cmd::Up { .. }) && recorded_mode() == Mode::Wan {
        ctx.use_wan();
    }
    match cli.cmd {
        Cmd::Up { wan } => ctx.cmd_up(wan),
        Cmd::Down => ctx.cmd_down(),
        Cmd::Status => ctx.cmd_status(),
        Cmd::Origin { action, name } => ctx.cmd_origin(action, &name),
        Cmd::Node { action, id } => ctx.cmd_node(action, &id),
        Cmd::Client(a) => ctx.cmd_client(a),
        Cmd::Wan { words } => ctx.cmd_wan(words),
        Cmd::Help => {
            print!("{USAGE}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Stop>() {
            Some(Stop::Usage(msg)) => {
                if !msg.is_empty() {
                    warn(msg);
                }
                eprint!("{USAGE}");
                ExitCode::from(2)
            }
            Some(Stop::Exit(code, msg)) => {
                if !msg.is_empty() {
                    warn(msg);
                }
                ExitCode::from(*code)
            }
            None => {
                warn(&format!("{e:#}"));
                ExitCode::FAILURE
            }
        },
    }
}

/// How NAME's process ended, if it was our child and has ended: so that a start-up failure
/// that logged nothing still says whether the process exited, was killed, or still runs.
fn exit_of(name: &str) -> String {
    let Some(pid) = std::fs::read_to_string(pidfile(name))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return "no pid file".into();
    };
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`; WNOHANG never blocks.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match got {
        0 => format!("pid {pid} still runs, but not as {name}"),
        p if p == pid && libc::WIFEXITED(status) => {
            format!("pid {pid} exited with status {}", libc::WEXITSTATUS(status))
        }
        p if p == pid && libc::WIFSIGNALED(status) => {
            format!("pid {pid} was killed by signal {}", libc::WTERMSIG(status))
        }
        _ => format!("pid {pid} is gone"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_region_from_geoip_lookup() {
        assert!(places_in("127.0.2.1: DE, region WEU, 50.11,8.68", "WEU"));
        assert!(places_in("region WEU", "WEU"));
        assert!(!places_in("region WEUX", "WEU"));
        assert!(!places_in("xregion WEU", "WEU"));
    }

    #[test]
    fn usage_messages_match_the_script() {
        let args = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        for (line, want) in [
            (
                "t up --fast",
                "unknown up option --fast (up takes only --wan)",
            ),
            ("t down x", "down takes no arguments"),
            (
                "t origin sideways wnam-1",
                "usage: ./testnet.sh origin down|up NAME",
            ),
            ("t client --color red", "unknown client option --color"),
            ("t client --from", "--from needs a value"),
            ("t launch", "unknown command: launch"),
        ] {
            let a = args(line);
            let err = Cli::try_parse_from(&a).expect_err(line);
            assert_eq!(usage_message(&a, &err), want, "{line}");
        }
    }
}
