//! Black-box tests of the `switchyard` binary: what an operator sees from `check`, `run`,
//! `status`, signals and the status endpoint. Every node runs as a real child process with a
//! config file in a temp dir and tiny in-test origins on loopback.
// The node under test is another process: these tests wait on it in real time, on OS threads.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// How long any condition may take to come true before a test gives up. Generous: the
/// machine is small and builds run alongside.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long socket reads and writes may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, unique to one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-cli-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).expect("write file");
        path
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

/// A loopback address that was free a moment ago.
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// A tiny origin: on accept it writes its name and a newline, then echoes until EOF.
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
                    if conn.write_all(greeting.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // Dropping `conn` closes it, so the node sees the origin end too.
                });
            }
        });
        Origin { addr, stop }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

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

/// A client connection through an app, with the greeting line it read.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects and reads the origin's greeting (its name).
    fn connect(addr: SocketAddr) -> std::io::Result<(Client, String)> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the greeting",
            ));
        }
        Ok((Client { stream, reader }, line.trim_end().to_string()))
    }

    /// Sends a line and returns the line that comes back.
    fn echo(&mut self, text: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// True when the connection has been closed by the other side (EOF or an error).
    fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        !matches!(self.reader.read(&mut buf), Ok(n) if n > 0)
    }
}

/// The greeting of a fresh connection through `addr`, if one could be made.
fn greeting(addr: SocketAddr) -> Option<String> {
    Client::connect(addr).ok().map(|(_, name)| name)
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
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

/// Removes terminal colour codes, which the log writer may put around fields.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A config with one app `web` on `listen` whose load balancer `lb` uses `pool`, and every
/// pool of `pools` (name, origin name, origin address).
fn config(
    node_extra: &str,
    listen: SocketAddr,
    lb_pools: &[&str],
    pools: &[(&str, &str, SocketAddr)],
) -> String {
    let mut text = format!("[node]\nid = \"edge-test-1\"\nregion = \"WNAM\"\n{node_extra}\n");
    for (pool, origin, addr) in pools {
        text.push_str(&format!(
            "\n[[pool]]\nname = \"{pool}\"\norigins = [{{ name = \"{origin}\", address = \"{addr}\" }}]\n"
        ));
    }
    let list: Vec<String> = lb_pools.iter().map(|p| format!("\"{p}\"")).collect();
    text.push_str(&format!(
        "\n[[load_balancer]]\nname = \"lb\"\ndefault_pools = [{}]\n",
        list.join(", ")
    ));
    text.push_str(&format!(
        "\n[[app]]\nname = \"web\"\nlisten = \"{listen}\"\nload_balancer = \"lb\"\n"
    ));
    text
}

/// Runs a short-lived subcommand to completion.
fn run_cmd(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_STATUS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard")
}

/// A `switchyard run` child process; killed on drop if still running. Its stderr (the log)
/// goes to a file; on a failing test the log is printed.
struct Node {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Node {
    /// Starts `switchyard run --config <config>` with `RUST_LOG=info`; with `one_cpu`,
    /// confined to CPU 0 as `taskset -c 0` would.
    fn spawn_on(config: &Path, log: PathBuf, one_cpu: bool) -> Node {
        use std::os::unix::process::CommandExt;
        let err = fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if one_cpu {
            // SAFETY: between fork and exec the closure only makes the sched_setaffinity
            // syscall on a set built on its own stack.
            unsafe {
                cmd.pre_exec(|| {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn switchyard run");
        Node {
            child,
            log,
            status: None,
        }
    }

    /// Starts a node and waits until its status endpoint answers `/live` and it handles
    /// SIGHUP and SIGTERM itself.
    fn start(config: &Path, log: PathBuf, status: SocketAddr) -> Node {
        Node::start_on(config, log, status, false)
    }

    fn start_on(config: &Path, log: PathBuf, status: SocketAddr, one_cpu: bool) -> Node {
        let mut node = Node::spawn_on(config, log, one_cpu);
        wait_for("the status endpoint to answer /live", || {
            node.assert_running();
            matches!(http_get(status, "/live"), Ok((200, _))).then_some(())
        });
        node.wait_signal_handlers();
        node
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// The node installs its signal handlers after it starts listening; a signal sent before
    /// that would kill it outright. Wait until the kernel shows SIGHUP and SIGTERM as caught.
    fn wait_signal_handlers(&mut self) {
        let path = format!("/proc/{}/status", self.child.id());
        let want: u64 = (1 << (libc::SIGHUP - 1)) | (1 << (libc::SIGTERM - 1));
        wait_for("SIGHUP and SIGTERM handlers to be installed", || {
            self.assert_running();
            let text = fs::read_to_string(&path).ok()?;
            let mask = text
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())?;
            (mask & want == want).then_some(())
        });
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet (the
        // status is only taken in `try_exit`, after which no signal is sent).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.try_exit() {
            panic!("switchyard exited early ({st}); log:\n{}", self.log());
        }
    }

    /// Waits for the process to exit and returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        wait_for("switchyard to exit", || self.try_exit())
    }

    /// Everything the node wrote to stderr so far, without colour codes.
    fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- switchyard log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// switchyard check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_accepts_a_good_config_and_says_ok() {
    let dir = TempDir::new("check-ok");
    let text = config(
        "status_listen = \"127.0.0.1:0\"",
        free_addr(),
        &["alpha"],
        &[("alpha", "a", free_addr())],
    );
    let path = dir.write("good.toml", &text);
    let out = run_cmd(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {}; stderr: {stderr}",
        out.status
    );
    assert!(stdout.contains("ok"), "stdout: {stdout}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
}

#[test]
fn check_names_file_line_object_and_field_of_an_unknown_pool() {
    let dir = TempDir::new("check-pool");
    let text = config(
        "status_listen = \"127.0.0.1:0\"",
        free_addr(),
        &["nope"],
        &[("alpha", "a", free_addr())],
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("default_pools"))
        .expect("default_pools line")
        + 1;
    let path = dir.write("unknown-pool.toml", &text);
    let out = run_cmd(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted it; stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    let want = format!(
        "switchyard: {}:{line}: load_balancer \"lb\": default_pools:",
        path.display()
    );
    assert!(
        stderr.starts_with(&want),
        "want {want:?} at the start of: {stderr}"
    );
    assert!(
        stderr.contains("\"nope\""),
        "the bad name is not shown: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_points_at_line_and_column_of_a_syntax_error() {
    let dir = TempDir::new("check-syntax");
    let path = dir.write(
        "syntax.toml",
        "[node]\nid = \"edge-test-1\"\nregion =\nstatus_listen = \"127.0.0.1:0\"\n",
    );
    let out = run_cmd(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted it; stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    let prefix = format!("switchyard: {}:3:", path.display());
    let rest = stderr
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("want {prefix:?} at the start of: {stderr}"));
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        !col.is_empty() && rest[col.len()..].starts_with(": "),
        "no column after the line in: {stderr}"
    );
}

#[test]
fn check_names_a_missing_file() {
    let dir = TempDir::new("check-missing");
    let path = dir.path("does-not-exist.toml");
    let out = run_cmd(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted a missing file");
    assert!(
        stderr.contains(&path.display().to_string()),
        "the path is not named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cert_issue_without_a_ca_names_the_command_that_makes_one() {
    let dir = TempDir::new("no-ca");
    let (ca, certs) = (dir.path("ca"), dir.path("certs"));
    let issue = || {
        run_cmd(&[
            "cert",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--node",
            "edge-1",
            "--out",
            certs.to_str().unwrap(),
        ])
    };
    let out = issue();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "issued without a CA");
    assert!(
        stderr.contains("`switchyard ca init --cluster NAME --out DIR`"),
        "{stderr}"
    );
    // The command it names is real: run it as told, and the issue goes through.
    let made = run_cmd(&[
        "ca",
        "init",
        "--cluster",
        "c",
        "--out",
        ca.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    let out = issue();
    assert!(out.status.success(), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// switchyard run
// ---------------------------------------------------------------------------------------------

#[test]
fn run_fails_in_one_line_when_the_listen_address_is_taken() {
    let dir = TempDir::new("run-inuse");
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().unwrap();
    let origin = Origin::start("a");
    let path = dir.write(
        "inuse.toml",
        &config(
            "status_listen = \"127.0.0.1:0\"",
            taken,
            &["alpha"],
            &[("alpha", "a", origin.addr)],
        ),
    );
    // Default logging, as an operator would start it.
    let mut node = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .map(|child| Node {
            child,
            log: dir.path("stderr"),
            status: None,
        })
        .expect("spawn");
    let status = node.wait_exit();
    let stderr = node.log();
    assert!(
        !status.success(),
        "run succeeded with {taken} held elsewhere"
    );
    assert!(!stderr.contains("panicked"), "panic in: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("switchyard: "), "{stderr}");
    assert!(
        stderr.contains("app \"web\""),
        "the app is not named: {stderr}"
    );
    assert!(
        stderr.contains(&taken.to_string()),
        "the address is not named: {stderr}"
    );
    assert!(
        stderr.contains("another process holds it"),
        "no hint: {stderr}"
    );
    drop(held);
}

#[test]
fn sighup_reloads_new_connections_keep_old_ones_and_refuses_a_broken_file() {
    let dir = TempDir::new("run-hup");
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let status = free_addr();
    let listen = free_addr();
    let node_extra = format!("status_listen = \"{status}\"");
    let path = dir.write(
        "node.toml",
        &config(&node_extra, listen, &["pool-a"], &[("pool-a", "a", a.addr)]),
    );
    let mut node = Node::start(&path, dir.path("log"), status);

    let (mut old, name) = Client::connect(listen).expect("connect through the app");
    assert_eq!(name, "a");

    dir.write(
        "node.toml",
        &config(&node_extra, listen, &["pool-b"], &[("pool-b", "b", b.addr)]),
    );
    node.signal(libc::SIGHUP);
    wait_for("new connections to reach origin b after SIGHUP", || {
        node.assert_running();
        (greeting(listen)? == "b").then_some(())
    });
    assert_eq!(
        old.echo("still here").expect("old connection after reload"),
        "still here",
        "the connection opened before the reload stopped echoing"
    );

    // A broken file is refused; the running config stays.
    dir.write("node.toml", "[node]\nid = \"edge-test-1\"\nregion =\n");
    node.signal(libc::SIGHUP);
    let shown = path.display().to_string();
    wait_for("the log to show the refused reload naming the file", || {
        node.assert_running();
        node.log()
            .lines()
            .any(|l| l.contains("reload refused") && l.contains(&shown))
            .then_some(())
    });
    node.assert_running();
    for _ in 0..3 {
        assert_eq!(
            greeting(listen).as_deref(),
            Some("b"),
            "a new connection after the refused reload"
        );
    }
    assert_eq!(old.echo("and now").expect("old connection"), "and now");
    node.assert_running();
}

/// Starts a node with `drain_timeout` and one connection open through it.
fn drain_setup(tag: &str, drain: &str) -> (TempDir, Origin, Node, SocketAddr, SocketAddr) {
    drain_setup_on(tag, drain, false)
}

/// As [`drain_setup`]; with `one_cpu`, the node is confined to one CPU.
fn drain_setup_on(
    tag: &str,
    drain: &str,
    one_cpu: bool,
) -> (TempDir, Origin, Node, SocketAddr, SocketAddr) {
    let dir = TempDir::new(tag);
    let origin = Origin::start("a");
    let status = free_addr();
    let listen = free_addr();
    let path = dir.write(
        "node.toml",
        &config(
            &format!("status_listen = \"{status}\"\ndrain_timeout = \"{drain}\""),
            listen,
            &["alpha"],
            &[("alpha", "a", origin.addr)],
        ),
    );
    let node = Node::start_on(&path, dir.path("log"), status, one_cpu);
    (dir, origin, node, status, listen)
}

/// Also with the node confined to one CPU, where it runs a current-thread runtime.
#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    for one_cpu in [false, true] {
        sigterm_drains(one_cpu);
    }
}

fn sigterm_drains(one_cpu: bool) {
    let tag = if one_cpu {
        "run-drain-1cpu"
    } else {
        "run-drain"
    };
    let (_dir, _origin, mut node, status, listen) = drain_setup_on(tag, "10s", one_cpu);
    let current_thread = node.log().contains("current-thread runtime");
    assert_eq!(current_thread, one_cpu, "runtime choice:\n{}", node.log());
    assert!(matches!(http_get(status, "/ready"), Ok((200, _))));
    let (mut client, name) = Client::connect(listen).expect("connect through the app");
    assert_eq!(name, "a");

    node.signal(libc::SIGTERM);
    wait_for(
        "/ready to say 503 (or the status endpoint to go away)",
        || match http_get(status, "/ready") {
            Ok((503, _)) | Err(_) => Some(()),
            Ok(_) => None,
        },
    );
    wait_for("new connections to the app to be refused", || {
        TcpStream::connect_timeout(&listen, IO_TIMEOUT)
            .is_err()
            .then_some(())
    });
    assert!(node.try_exit().is_none(), "exited with a connection open");
    assert_eq!(
        client
            .echo("draining")
            .expect("open connection during drain"),
        "draining",
        "the open connection stopped echoing during the drain"
    );

    drop(client);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "exit status {st}");
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("stopped") && l.contains("cut=0")),
        "the connection was cut instead of drained (or the deadline was hit):\n{log}"
    );
}

#[test]
fn sigterm_cuts_connections_left_open_at_the_drain_deadline() {
    let (_dir, _origin, mut node, _status, listen) = drain_setup("run-cut", "1s");
    let (mut client, name) = Client::connect(listen).expect("connect through the app");
    assert_eq!(name, "a");

    node.signal(libc::SIGTERM);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(
        client.is_closed(),
        "the connection left open is still open after the node exited"
    );
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("stopped") && l.contains("cut=1")),
        "the log does not report the cut connection:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// switchyard status and the status endpoint
// ---------------------------------------------------------------------------------------------

/// A running node with two pools and one app, for the status tests.
fn status_setup(tag: &str) -> (TempDir, Origin, Origin, Node, SocketAddr, SocketAddr) {
    let dir = TempDir::new(tag);
    let (one, two) = (Origin::start("origin-one"), Origin::start("origin-two"));
    let status = free_addr();
    let listen = free_addr();
    let path = dir.write(
        "node.toml",
        &config(
            &format!("status_listen = \"{status}\""),
            listen,
            &["pool-alpha", "pool-beta"],
            &[
                ("pool-alpha", "origin-one", one.addr),
                ("pool-beta", "origin-two", two.addr),
            ],
        ),
    );
    let node = Node::start(&path, dir.path("log"), status);
    (dir, one, two, node, status, listen)
}

#[test]
fn status_prints_a_table_and_json_of_the_running_node() {
    let (_dir, _one, _two, mut node, status, _listen) = status_setup("status");
    let addr = status.to_string();

    let out = run_cmd(&["status", "--addr", &addr]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "edge-test-1",
        "web",
        "lb",
        "pool-alpha",
        "pool-beta",
        "origin-one",
        "origin-two",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }

    let out = run_cmd(&["status", "--addr", &addr, "--json"]);
    assert!(
        out.status.success(),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    for key in ["node", "apps", "pools", "load_balancers"] {
        assert!(doc.get(key).is_some(), "no {key:?} in {doc}");
    }
    assert_eq!(doc["node"]["id"], "edge-test-1", "{doc}");
    assert_eq!(doc["apps"][0]["name"], "web", "{doc}");
    assert_eq!(doc["load_balancers"][0]["name"], "lb", "{doc}");
    let pools: Vec<&str> = doc["pools"]
        .as_array()
        .expect("pools is a list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(pools, ["pool-alpha", "pool-beta"], "{doc}");
    assert_eq!(doc["pools"][0]["origins"][0]["name"], "origin-one", "{doc}");
    node.assert_running();
}

#[test]
fn status_against_a_closed_port_fails_naming_the_address() {
    let addr = free_addr().to_string();
    for json in [false, true] {
        let mut args = vec!["status", "--addr", addr.as_str()];
        if json {
            args.push("--json");
        }
        let out = run_cmd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "status succeeded against {addr}");
        assert!(stderr.contains(&addr), "{addr} not named in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn metrics_count_proxied_connections_and_live_answers() {
    let (_dir, _one, _two, mut node, status, listen) = status_setup("metrics");
    let (code, body) = http_get(status, "/live").expect("GET /live");
    assert_eq!(code, 200, "/live: {body}");

    let (mut client, name) = Client::connect(listen).expect("connect through the app");
    assert_eq!(name, "origin-one");
    assert_eq!(client.echo("hello").expect("echo"), "hello");
    drop(client);

    let (code, body) = http_get(status, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("switchyard_connections_total{app=\"web\"} ")),
        "no connections counter for app web in:\n{body}"
    );
    assert!(
        body.contains("switchyard_connections_total{app=\"web\"} 1\n"),
        "the counter does not show the one connection:\n{body}"
    );
    node.assert_running();
}

/// `switchyard explain ARGS`, which must succeed: its output.
fn explain_ok(args: &[&str]) -> String {
    let out = run_cmd(&[&["explain"], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn explain_dns_prints_which_nodes_answer_and_check_places_a_bad_zone() {
    let dir = TempDir::new("explain-dns");
    let status = free_addr();
    let dns = free_addr();
    let mut text = config(
        &format!("status_listen = \"{status}\"\npublic_addresses = [\"192.0.2.7\"]"),
        free_addr(),
        &["alpha"],
        &[("alpha", "a", free_addr())],
    );
    text.push_str(&format!(
        "hostname = \"web\"\n\n[dns]\nlisten = \"{dns}\"\nzone = \"lb.example.com\"\n"
    ));
    let path = dir.write("dns.toml", &text);
    let node = Node::start(&path, dir.path("dns.log"), status);
    let status_arg = status.to_string();
    let stdout = explain_ok(&[
        "--dns",
        "web.lb.example.com",
        "--client",
        "192.0.2.99",
        "--addr",
        &status_arg,
    ]);
    assert!(
        stdout.starts_with("web.lb.example.com for client 192.0.2.99"),
        "{stdout}"
    );
    assert!(stdout.contains("A: 192.0.2.7"), "{stdout}");
    assert!(stdout.contains("  1 edge-test-1 (WNAM)"), "{stdout}");
    assert!(stdout.contains("AAAA: no address (NODATA)"), "{stdout}");
    let out = run_cmd(&[
        "explain",
        "--dns",
        "nope",
        "--client",
        "192.0.2.99",
        "--addr",
        &status_arg,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("known: web.lb.example.com"),
        "{stderr}"
    );
    let out = run_cmd(&["explain", "--client", "192.0.2.99", "--addr", &status_arg]);
    assert!(!out.status.success(), "explain needs --lb or --dns");
    drop(node);

    let bad = dir.write(
        "bad.toml",
        &text.replace("lb.example.com", "lb_example.com"),
    );
    let out = run_cmd(&["check", "--config", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().position(|l| l.starts_with("zone")).unwrap() + 1;
    let want = format!("switchyard: {}:{line}: [dns]: zone:", bad.display());
    assert!(
        stderr.starts_with(&want),
        "want {want:?} at the start of: {stderr}"
    );
}

#[test]
fn explain_shows_the_path_to_the_origin_and_check_refuses_a_bad_relay_policy() {
    let dir = TempDir::new("explain-relay");
    let status = free_addr();
    let text = config(
        &format!("status_listen = \"{status}\""),
        free_addr(),
        &["alpha"],
        &[("alpha", "a", free_addr())],
    )
    .replace("name = \"lb\"\n", "name = \"lb\"\nrelay = \"fastest\"\n");
    let path = dir.write("relay.toml", &text);
    let out = run_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = Node::start(&path, dir.path("relay.log"), status);
    let status_arg = status.to_string();
    let stdout = explain_ok(&[
        "--lb",
        "lb",
        "--client",
        "192.0.2.99",
        "--addr",
        &status_arg,
    ]);
    // No mesh and no probe of its own: nobody to relay through, nothing to compare.
    assert!(
        stdout.contains("   path direct: direct: no RTT from this node"),
        "{stdout}"
    );
    let out = run_cmd(&["status", "--addr", &status_arg]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("RELAY") && table.contains("fastest: direct"),
        "{table}"
    );
    drop(node);

    let bad = dir.write(
        "bad.toml",
        &text.replace("relay = \"fastest\"", "relay = \"always\""),
    );
    let out = run_cmd(&["check", "--config", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().position(|l| l.starts_with("relay")).unwrap() + 1;
    let want = format!(
        "switchyard: {}:{line}: load_balancer \"lb\": relay:",
        bad.display()
    );
    assert!(
        !out.status.success() && stderr.starts_with(&want),
        "want {want:?} at the start of: {stderr}"
    );
    assert!(stderr.contains("\"fastest\""), "says what to use: {stderr}");
}
