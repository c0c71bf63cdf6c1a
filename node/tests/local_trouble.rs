//! Local trouble stays local, shown with real processes: a node that runs out of file
//! descriptors (a flood of idle clients under a tiny RLIMIT_NOFILE) sees its own probes and
//! connects fail, and must neither mark its origins down nor tell the mesh so. It says it is
//! in trouble instead: `/ready` answers 503 with the reason, and status shows it.
// The nodes under test are other processes: these tests wait on them in real time, on OS
// threads.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switchyard_node::status::Status;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// How long any condition may take to come true. Generous: the machine is small and builds
/// run alongside.
const PATIENCE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors the flooded node may open beyond what it holds once settled: a few idle
/// clients' worth.
const HEADROOM: u64 = 12;
/// Idle clients in the flood: more than the headroom can hold.
const FLOOD: u64 = HEADROOM + 20;

/// Polls `f` until it returns Some, or panics naming `what` once `PATIENCE` has passed.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("gave up after {PATIENCE:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

fn free_udp() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0/udp");
    s.local_addr().expect("local_addr")
}

/// An origin that writes its name on accept and then holds the connection until the client
/// closes it.
struct Origin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Origin {
    fn start(name: &str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let greeting = format!("{name}\n");
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let greeting = greeting.clone();
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
                    if conn.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Origin { addr, stop }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A `switchyard run` child, killed on drop; its log goes to a file, printed on failure.
struct Node {
    child: Child,
    log: PathBuf,
    status: SocketAddr,
}

impl Node {
    fn start(config: &Path, log: PathBuf, status: SocketAddr) -> Node {
        let err = fs::File::create(&log).expect("create log file");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn switchyard run");
        let mut node = Node { child, log, status };
        wait_for("the status endpoint to answer /live", || {
            if let Ok(Some(st)) = node.child.try_wait() {
                panic!("switchyard exited early ({st}); log:\n{}", node.log());
            }
            matches!(http_get(status, "/live"), Ok((200, _))).then_some(())
        });
        node
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// The process's open descriptor numbers.
    fn fds(&self) -> Vec<u64> {
        fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The lowest descriptor number not in use: the kernel's next one. A limit of exactly
    /// this leaves the process no descriptor to open (the limit bounds numbers, not counts).
    fn next_fd(&self) -> u64 {
        let mut fds = self.fds();
        fds.sort_unstable();
        let mut next = 0;
        for fd in fds {
            if fd > next {
                break;
            }
            next = fd + 1;
        }
        next
    }

    /// Lowers the running process's descriptor limit (soft and hard) to `n` with prlimit(2);
    /// never raises it (that would need privileges the test may not have).
    fn limit_fds(&self, n: u64) {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit(2) on our own child's pid, reading its limit into our stack.
        let rc =
            unsafe { libc::prlimit(self.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let n = n.min(old.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: as above, setting a limit from our stack.
        let rc =
            unsafe { libc::prlimit(self.pid(), libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Option<Status> {
        let (code, body) = http_get(self.status, "/v1/status").ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- switchyard log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// A plain HTTP/1.1 GET; the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone());
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(bad)?;
    Ok((code, body))
}

/// Node `id`'s config: a mesh of fast SWIM timings, a 200 ms TCP monitor on two origins, and
/// one app. `consecutive_up` is high so that an origin wrongly marked down stays down for the
/// rest of the test, where a check would see it.
#[allow(clippy::too_many_arguments)]
fn config(
    dir: &TempDir,
    id: &str,
    region: &str,
    status: SocketAddr,
    mesh: SocketAddr,
    seeds: &[SocketAddr],
    app: SocketAddr,
    origins: &[&Origin],
) -> PathBuf {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let origins: Vec<String> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{{ name = \"o{}\", address = \"{}\" }}", i + 1, o.addr))
        .collect();
    let text = format!(
        r#"[node]
id = "{id}"
region = "{region}"
status_listen = "{status}"
drain_timeout = "1s"

[mesh]
cluster = "test"
listen = "{mesh}"
seeds = [{seeds}]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
probe_period = "200ms"
probe_timeout = "100ms"
suspect_timeout = "1s"
announce_interval = "300ms"
anti_entropy_interval = "300ms"

[[monitor]]
name = "tcp"
type = "tcp"
interval = "200ms"
timeout = "150ms"
retries = 0
consecutive_up = 100

[[pool]]
name = "p"
monitor = "tcp"
origins = [{origins}]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "web"
listen = "{app}"
load_balancer = "lb"
connect_timeout = "2s"
"#,
        seeds = seeds.join(", "),
        origins = origins.join(", "),
        ca = dir.path("ca/ca.crt").display(),
        cert = dir.path(&format!("{id}.crt")).display(),
        key = dir.path(&format!("{id}.key")).display(),
    );
    let path = dir.path(&format!("{id}.toml"));
    fs::write(&path, text).expect("write config");
    path
}

/// Each origin's observers as `node`'s status shows them: (origin, observer, healthy).
fn observers(s: &Status) -> Vec<(String, String, bool)> {
    s.pools
        .iter()
        .flat_map(|p| p.origins.iter())
        .flat_map(|o| {
            o.observers
                .iter()
                .map(|(n, obs)| (o.name.clone(), n.clone(), obs.healthy))
        })
        .collect()
}

fn all_up_seen_by_both(s: &Status) -> bool {
    let obs = observers(s);
    obs.len() == 4 && obs.iter().all(|(_, _, up)| *up)
}

#[test]
fn a_node_out_of_descriptors_keeps_its_origins_up_everywhere_and_says_it_is_in_trouble() {
    let dir = TempDir::new("emfile");
    switchyard_gossip::tls::init_ca(&dir.path("ca"), "test").expect("test CA");
    for id in ["sick", "well"] {
        switchyard_gossip::tls::issue_cert(&dir.path("ca"), id, &dir.0).expect("node cert");
    }
    let (o1, o2) = (Origin::start("o1"), Origin::start("o2"));
    let (sick_status, well_status) = (free_tcp(), free_tcp());
    let (sick_mesh, well_mesh) = (free_udp(), free_udp());
    let sick_app = free_tcp();
    let sick_cfg = config(
        &dir,
        "sick",
        "WEU",
        sick_status,
        sick_mesh,
        &[],
        sick_app,
        &[&o1, &o2],
    );
    let well_cfg = config(
        &dir,
        "well",
        "WNAM",
        well_status,
        well_mesh,
        &[sick_mesh],
        free_tcp(),
        &[&o1, &o2],
    );
    let sick = Node::start(&sick_cfg, dir.path("sick.log"), sick_status);
    let well = Node::start(&well_cfg, dir.path("well.log"), well_status);
    wait_for("both nodes to see both origins up, from both nodes", || {
        let (a, b) = (sick.status()?, well.status()?);
        (all_up_seen_by_both(&a) && all_up_seen_by_both(&b)).then_some(())
    });

    // Leave the sick node a few idle clients' worth of descriptors, then flood it with idle
    // clients until it runs out.
    let settled = sick.next_fd();
    assert!(settled > 3, "cannot see the node's descriptors");
    sick.limit_fds(settled + HEADROOM);
    // Every accepted client holds at least one descriptor: HEADROOM of them exhaust the
    // limit, and the rest wait in the listen queue, where the node keeps failing to accept.
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|i| {
            TcpStream::connect_timeout(&sick_app, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("flood connection {i} failed: {e}"))
        })
        .collect();
    wait_for("the sick node to run out of descriptors", || {
        sick.log().contains("Too many open files").then_some(())
    });
    // Its monitor's probes now fail for want of a socket: on today's
    // code as an "origin down", with the fix as local trouble.
    let probe_failures = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("Too many open files")
                    && (l.contains("probing") || l.contains("origin down"))
            })
            .count()
    };
    // An accepted client whose origin connect then fails is closed again, so the node can
    // hover one descriptor short of its limit, where its probes still get a socket. Pin it
    // at the limit (lowered to its next descriptor number) until a probe has hit it.
    wait_for("the sick node's probes to hit the descriptor limit", || {
        if probe_failures(&sick.log()) >= 1 {
            return Some(());
        }
        sick.limit_fds(sick.next_fd());
        None
    });
    let log = sick.log();
    assert!(
        !log.contains("origin down"),
        "the sick node blamed its origins for its own descriptor limit"
    );
    // The well node's view, with the sick node's rows in it, stays all up.
    let seen = well.status().expect("the well node's status");
    assert!(
        all_up_seen_by_both(&seen),
        "the well node sees {:?}",
        observers(&seen)
    );

    // Let go of the flood: the sick node answers again, and says what happened.
    drop(flood);
    let (code, body) = wait_for("the sick node's /ready to answer", || {
        http_get(sick_status, "/ready").ok()
    });
    assert_eq!(code, 503, "/ready: {body}");
    assert!(
        body.contains("descriptors") && body.contains("Too many open files"),
        "/ready: {body}"
    );
    let s = sick.status().expect("the sick node's status");
    let kinds: Vec<&str> = s.node.trouble.iter().map(|t| t.kind.as_str()).collect();
    assert!(
        kinds.contains(&"descriptors"),
        "trouble: {:?}",
        s.node.trouble
    );
    assert!(
        all_up_seen_by_both(&s),
        "the sick node's own view: {:?}",
        observers(&s)
    );
    assert!(switchyard_node::status::render(&s).contains("TROUBLE descriptors"));
    let (_, metrics) = http_get(sick_status, "/metrics").expect("metrics");
    assert!(
        metrics.contains("switchyard_local_errors_total{kind=\"descriptors\",source=\"probe\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_local_trouble 1"), "{metrics}");
    // And the well node still sees every origin up from both nodes.
    let seen = well.status().expect("the well node's status");
    assert!(
        all_up_seen_by_both(&seen),
        "the well node sees {:?}",
        observers(&seen)
    );
}
