//! Anycast over real BGP (root only; says so and passes when not root): two Switchyard nodes,
//! each in its own network namespace with the anycast address 192.0.2.1 on its loopback, a
//! test origin, and ExaBGP running `switchyard anycast` as its process; a router namespace
//! where BIRD peers with both ExaBGPs and installs the best route into its kernel; a client
//! namespace behind the router.
//!
//! ```text
//!   client 10.99.0.2 ── 10.99.0.1 router (BIRD, AS 65000) 10.99.1.1 ── 10.99.1.2 node-1 (AS 65001)
//!                                                         10.99.2.1 ── 10.99.2.2 node-2 (AS 65002)
//! ```
//!
//! It checks that BIRD's table holds 192.0.2.0/24 from exactly the nodes that can serve: an
//! origin stopped withdraws its node's route and a restarted one brings it back; a node
//! killed outright is withdrawn by `switchyard anycast` once it stops answering, and
//! announced again when it returns. Then a planned drain: SIGTERM to the node holding the
//! best route while a client keeps opening connections to 192.0.2.1 and holds one open; no
//! connection fails, new ones move to the other node, and the open one keeps flowing until
//! the client ends it. The router keeps an established flow on the path it started on
//! (conntrack marks), as a stateful router or a flow-pinning ECMP group does: without that,
//! no node could keep a connection whose packets are routed elsewhere.
//!
//! Needs `exabgp`, `bird` and `birdc` (Debian: `apt-get install exabgp bird2`), `ip` and
//! `iptables`; a missing tool fails the test, naming it. Every wait has a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use switchyard_tests::harness::switchyard_bin;
use switchyard_tests::origin::read_line;
use switchyard_tests::wan::{in_netns, skip_without_root};
use tokio::io::{AsyncWriteExt, BufReader};

const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
const PREFIX: &str = "192.0.2.0/24";
const ANYCAST: &str = "192.0.2.1:8080";
/// For a route to appear or go: ExaBGP's session, the follower's poll, the holds. Generous.
const ROUTE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// Nodes 1 and 2 speak BGP through ExaBGP; node 3 through a BIRD of its own, whose include
/// file `switchyard anycast --bird` maintains.
const NODES: [u8; 3] = [1, 2, 3];
const ALL: [&str; 3] = ["node1", "node2", "node3"];

/// Runs a command to completion; fails with its output.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces, processes and files of one run; Drop stops and removes them all.
struct Lab {
    tag: String,
    dir: PathBuf,
    switchyard: PathBuf,
    procs: Vec<(String, Child)>,
    t0: Instant,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn ip(&self, ns: &str, args: &str) -> Result<String> {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", &ns, "ip"];
        all.extend(args.split_whitespace());
        run("ip", &all)
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend(args);
        run("ip", &all)
    }

    fn note(&self, what: impl AsRef<str>) {
        eprintln!(
            "[{:7.3}s] {}",
            self.t0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }

    /// Starts `program` inside namespace `ns`, its output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let ns = self.ns(ns);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args)
            .envs(exabgp_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {program}"))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    fn signal(&mut self, name: &str, sig: i32) -> Result<()> {
        let (_, child) = self
            .procs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        Ok(())
    }

    /// Kills `name` (SIGKILL) and reaps it.
    fn kill(&mut self, name: &str) -> Result<()> {
        let i = self
            .procs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        let (_, mut child) = self.procs.remove(i);
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// Waits for `name` to exit on its own; returns whether it exited 0.
    async fn exited(&mut self, name: &str, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            let i = self
                .procs
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| anyhow!("no process {name}"))?;
            if let Some(status) = self.procs[i].1.try_wait()? {
                self.procs.remove(i);
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                bail!("{name} did not exit within {within:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn start_origin(&mut self, node: u8) -> Result<()> {
        let name = format!("origin-{node}");
        self.spawn(
            &name,
            &format!("n{node}"),
            TEST_ORIGIN,
            &["--name", &name, "--listen", "127.0.0.1:7000"],
        )
    }

    fn start_node(&mut self, node: u8) -> Result<()> {
        let config = self.dir.join(format!("node-{node}.toml"));
        let switchyard = self.switchyard.display().to_string();
        self.spawn(
            &format!("node-{node}"),
            &format!("n{node}"),
            &switchyard,
            &["run", "--config", &config.display().to_string()],
        )
    }

    /// The nodes whose route to the prefix BIRD holds now (by its protocol names).
    fn routes(&self) -> Result<Vec<String>> {
        let sock = self.dir.join("bird.ctl").display().to_string();
        let out = match self.exec("r", "birdc", &["-s", &sock, "show", "route", PREFIX]) {
            Ok(out) => out,
            // birdc fails on a prefix it has no route to.
            Err(e) if e.to_string().contains("Network not found") => String::new(),
            Err(e) => return Err(e),
        };
        let mut from: Vec<String> = out
            .split('[')
            .skip(1)
            .filter_map(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with("node"))
            .map(str::to_string)
            .collect();
        from.sort();
        Ok(from)
    }

    async fn routes_become(&self, want: &[&str]) -> Result<()> {
        let deadline = Instant::now() + ROUTE;
        loop {
            // BIRD may still be starting: its errors count only at the deadline.
            let got = self.routes();
            if got.as_ref().is_ok_and(|g| g == want) {
                self.note(format!("BIRD holds {PREFIX} from {want:?}"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("BIRD's routes to {PREFIX}: want {want:?}, got {got:?} after {ROUTE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A TCP connection from the client namespace `ns` to the anycast address; returns it and
/// the origin's greeting.
async fn connect(ns: &str) -> Result<(BufReader<tokio::net::TcpStream>, String)> {
    let socket = in_netns(ns, tokio::net::TcpSocket::new_v4)??;
    let addr: SocketAddr = ANYCAST.parse()?;
    let step = async {
        let mut s = BufReader::new(socket.connect(addr).await?);
        let name = read_line(&mut s).await?;
        anyhow::Ok((s, name))
    };
    tokio::time::timeout(Duration::from_secs(5), step)
        .await
        .map_err(|_| anyhow!("no greeting from {ANYCAST} within 5s"))?
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
        // What those started (ExaBGP's `switchyard anycast`) goes with its namespace.
        for ns in ["r", "c", "n1", "n2", "n3"] {
            kill_all_in(&self.ns(ns));
        }
        for ns in ["r", "c", "n1", "n2", "n3"] {
            let _ = run("ip", &["netns", "del", &self.ns(ns)]);
        }
        if std::thread::panicking() || std::env::var_os("KEEP_LOGS").is_some() {
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "==== {}\n{}",
                        entry.path().display(),
                        std::fs::read_to_string(entry.path()).unwrap_or_default()
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// ExaBGP as root in the foreground, without its CLI pipes, logging to stdout.
fn exabgp_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("exabgp_daemon_user", "root"),
        ("exabgp_daemon_daemonize", "false"),
        ("exabgp_daemon_drop", "false"),
        ("exabgp_api_cli", "false"),
        ("exabgp_log_destination", "stdout"),
    ]
}

fn node_config(node: u8, dir: &Path) -> String {
    let bird = format!(
        "bird_include = \"{}\"\nbird_reload = [\"birdc\", \"-s\", \"{}\", \"configure\"]\n",
        dir.join(format!("bird-{node}-anycast.conf")).display(),
        dir.join(format!("bird-{node}.ctl")).display()
    );
    format!(
        r#"[node]
id = "anycast-{node}"
region = "WEU"
status_listen = "127.0.0.1:9900"
drain_timeout = "60s"

[[monitor]]
name = "tcp"
type = "tcp"
interval = "200ms"
timeout = "200ms"
retries = 0

[[pool]]
name = "local"
monitor = "tcp"
origins = [{{ name = "origin-{node}", address = "127.0.0.1:7000" }}]

[[load_balancer]]
name = "web"
default_pools = ["local"]

[[app]]
name = "web"
listen = "{ANYCAST}"
load_balancer = "web"

[anycast]
withdraw_grace = "5s"
hold_up = "1s"
hold_down = "1s"
{bird}
[[anycast.prefix]]
prefix = "{PREFIX}"
apps = ["web"]
"#
    )
}

/// README's ExaBGP snippet, with this lab's addresses.
fn exabgp_config(node: u8, switchyard: &Path) -> String {
    format!(
        r#"process switchyard {{
    run {} anycast --addr 127.0.0.1:9900 --interval 200ms;
    encoder text;
}}

neighbor 10.99.{node}.1 {{
    router-id 10.99.{node}.2;
    local-address 10.99.{node}.2;
    local-as 6500{node};
    peer-as 65000;
    api {{
        processes [ switchyard ];
    }}
}}
"#,
        switchyard.display()
    )
}

/// README's BIRD snippet for a node's own BIRD, with this lab's addresses: the include file
/// holds `protocol static switchyard_anycast4` (and 6) with the announced prefixes.
fn speaker_bird_config(node: u8, include: &Path) -> String {
    format!(
        r#"router id 10.99.{node}.2;
include "{}";
protocol device {{ }}
protocol bgp upstream {{
    local 10.99.{node}.2 as 6500{node};
    neighbor 10.99.{node}.1 as 65000;
    hold time 9;
    connect retry time 1;
    ipv4 {{ import none; export where proto = "switchyard_anycast4"; }};
}}
"#,
        include.display()
    )
}

/// README's BIRD snippet for the router: a BGP session per node, the best route into the
/// kernel.
fn bird_config() -> String {
    let mut text = String::from(
        r#"router id 10.99.0.1;
protocol device { }
protocol kernel {
    ipv4 { import none; export all; };
}
"#,
    );
    for node in NODES {
        text.push_str(&format!(
            r#"protocol bgp node{node} {{
    local 10.99.{node}.1 as 65000;
    neighbor 10.99.{node}.2 as 6500{node};
    hold time 9;
    connect retry time 1;
    ipv4 {{ import all; export none; }};
}}
"#
        ));
    }
    text
}

/// BIRD's protocol names of every node but `node`.
fn all_but(node: u8) -> Vec<&'static str> {
    ALL.into_iter()
        .filter(|n| *n != format!("node{node}"))
        .collect()
}

/// Namespaces (and what runs in them) of an earlier run of this test whose process was
/// killed before its Drop ran: `sya<pid>-*` of a pid no longer alive.
fn remove_leftovers() {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = ns
            .strip_prefix("sya")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if switchyard_tests::wan::pid_alive(pid) {
            continue;
        }
        kill_all_in(ns);
        let _ = run("ip", &["netns", "del", ns]);
    }
}

/// SIGKILLs every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) has no memory preconditions; these processes are this test's, in
        // namespaces it made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Namespaces, links, addresses and routes; the router's flow pinning.
fn build(lab: &Lab) -> Result<()> {
    for ns in ["r", "c", "n1", "n2", "n3"] {
        run("ip", &["netns", "add", &lab.ns(ns)])?;
        lab.ip(ns, "link set lo up")?;
    }
    for (peer, net) in [("c", 0), ("n1", 1), ("n2", 2), ("n3", 3)] {
        let (a, b) = (format!("r-{peer}"), format!("{peer}-r"));
        lab.ip(
            "r",
            &format!(
                "link add {a} type veth peer name {b} netns {}",
                lab.ns(peer)
            ),
        )?;
        lab.ip("r", &format!("addr add 10.99.{net}.1/24 dev {a}"))?;
        lab.ip("r", &format!("link set {a} up"))?;
        lab.ip(peer, &format!("addr add 10.99.{net}.2/24 dev {b}"))?;
        lab.ip(peer, &format!("link set {b} up"))?;
        lab.ip(peer, &format!("route add default via 10.99.{net}.1"))?;
    }
    lab.exec("r", "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    for node in NODES {
        lab.ip(&format!("n{node}"), "addr add 192.0.2.1/32 dev lo")?;
        // A flow's later packets follow the mark of the node its first packet went to.
        lab.exec(
            "r",
            "iptables",
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                &format!("r-n{node}"),
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "CONNMARK",
                "--set-mark",
                &node.to_string(),
            ],
        )?;
        lab.ip("r", &format!("rule add fwmark {node} table 10{node}"))?;
        lab.ip(
            "r",
            &format!("route add {PREFIX} via 10.99.{node}.2 table 10{node}"),
        )?;
    }
    lab.exec(
        "r",
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "r-c",
            "-j",
            "CONNMARK",
            "--restore-mark",
        ],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_holds_the_prefix_from_exactly_the_nodes_that_can_serve() -> Result<()> {
    if skip_without_root("bird_holds_the_prefix_from_exactly_the_nodes_that_can_serve") {
        return Ok(());
    }
    for tool in ["exabgp", "bird", "birdc", "iptables"] {
        run("sh", &["-c", &format!("command -v {tool}")]).map_err(|_| {
            anyhow!("{tool} is not installed: apt-get install exabgp bird2 iptables")
        })?;
    }
    let switchyard = switchyard_bin()?;
    remove_leftovers();
    let tag = format!("sya{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let mut lab = Lab {
        tag,
        dir,
        switchyard,
        procs: Vec::new(),
        t0: Instant::now(),
    };
    build(&lab)?;
    lab.note("namespaces up: router, client, node-1, node-2, node-3");

    std::fs::write(lab.dir.join("bird.conf"), bird_config())?;
    let (conf, sock) = (
        lab.dir.join("bird.conf").display().to_string(),
        lab.dir.join("bird.ctl").display().to_string(),
    );
    lab.spawn("bird", "r", "bird", &["-f", "-c", &conf, "-s", &sock])?;
    for node in NODES {
        let config = lab.dir.join(format!("node-{node}.toml"));
        std::fs::write(&config, node_config(node, &lab.dir))?;
        lab.start_origin(node)?;
        lab.start_node(node)?;
        let ns = format!("n{node}");
        if node == 3 {
            // BIRD must find its include file at start; `switchyard anycast --bird` then
            // rewrites it.
            let include = lab.dir.join(format!("bird-{node}-anycast.conf"));
            std::fs::write(&include, "")?;
            let conf = lab.dir.join(format!("bird-{node}.conf"));
            std::fs::write(&conf, speaker_bird_config(node, &include))?;
            let sock = lab.dir.join(format!("bird-{node}.ctl"));
            let (conf, sock) = (conf.display().to_string(), sock.display().to_string());
            lab.spawn("bird-3", &ns, "bird", &["-f", "-c", &conf, "-s", &sock])?;
            let switchyard = lab.switchyard.display().to_string();
            let config = config.display().to_string();
            let args = [
                "anycast",
                "--bird",
                "--config",
                &config,
                "--interval",
                "200ms",
            ];
            lab.spawn("anycast-3", &ns, &switchyard, &args)?;
        } else {
            let exa = lab.dir.join(format!("exabgp-{node}.conf"));
            std::fs::write(&exa, exabgp_config(node, &lab.switchyard))?;
            let exa = exa.display().to_string();
            lab.spawn(&format!("exabgp-{node}"), &ns, "exabgp", &[&exa])?;
        }
    }
    lab.note("the router's BIRD; three origins and nodes; ExaBGP by nodes 1 and 2, BIRD by node 3");
    lab.routes_become(&ALL).await?;

    // 1. One node's only origin stops (SIGKILL): that node cannot serve, its route goes;
    // restarted, it comes back. Through ExaBGP (node 1) and through BIRD's include file
    // (node 3).
    // 2. A node killed outright (SIGKILL): `switchyard anycast` loses it and withdraws;
    // restarted, it announces again once it can serve. Again through both speakers.
    for (what, node) in [("origin", 1), ("origin", 3), ("node", 2), ("node", 3)] {
        let name = format!("{what}-{node}");
        lab.kill(&name)?;
        lab.note(format!("{name} killed"));
        let others = all_but(node);
        lab.routes_become(&others).await?;
        match what {
            "origin" => lab.start_origin(node)?,
            _ => lab.start_node(node)?,
        }
        lab.note(format!("{name} restarted"));
        lab.routes_become(&ALL).await?;
    }

    // 3. A planned drain of the node the router prefers, under load.
    let client_ns = lab.ns("c");
    let (mut held, first) = connect(&client_ns).await?;
    let drained: u8 = first
        .strip_prefix("origin-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("greeting {first:?} from {ANYCAST}"))?;
    let others = all_but(drained);
    lab.note(format!("connection held through node-{drained}"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, moved) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients = {
        let (stop, ok, moved) = (stop.clone(), ok.clone(), moved.clone());
        let drained_origin = format!("origin-{drained}");
        let client_ns = client_ns.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match connect(&client_ns).await {
                    Ok((_, name)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if name != drained_origin {
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => return Err(e.context("a new connection during the drain failed")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    let node = format!("node-{drained}");
    lab.signal(&node, libc::SIGTERM)?;
    lab.note(format!("SIGTERM to {node}"));
    lab.routes_become(&others).await?;
    // The grace runs out and the node drains (its listener closed): the held connection
    // still flows, and new connections keep being served by the other node.
    let log = lab.dir.join(format!("{node}.log"));
    let deadline = Instant::now() + ROUTE;
    // App::drain's log line: its listeners are closed.
    while !std::fs::read_to_string(&log)?.contains("draining open=") {
        if Instant::now() >= deadline {
            bail!("{node} did not start draining within {ROUTE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    lab.note(format!("{node} draining: its grace is over"));
    for i in 0..3 {
        let line = format!("still here {i}");
        held.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let echoed = tokio::time::timeout(Duration::from_secs(5), read_line(&mut held))
            .await
            .map_err(|_| anyhow!("the held connection stopped echoing"))??;
        assert_eq!(echoed, line);
    }
    drop(held);
    let clean = lab.exited(&node, ROUTE).await?;
    stop.store(true, Ordering::Relaxed);
    clients.await??;
    lab.note(format!(
        "{node} exited ({}) once the held connection ended; {} new connections during the drain, all served, {} by the other nodes",
        if clean { "0" } else { "non-zero" },
        ok.load(Ordering::Relaxed),
        moved.load(Ordering::Relaxed)
    ));
    assert!(clean, "{node} did not exit cleanly after its drain");
    assert!(
        moved.load(Ordering::Relaxed) > 0,
        "new connections did not move to the other node"
    );
    Ok(())
}

/// README's "Anycast" section shows the configs this test runs (with the lab's addresses).
#[test]
fn readme_shows_the_configs_this_test_runs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let include = Path::new("/etc/bird/switchyard-anycast.conf");
    for (what, text) in [
        (
            "ExaBGP's config",
            exabgp_config(1, Path::new("/usr/local/bin/switchyard")),
        ),
        ("the router's BIRD config", bird_config()),
        ("node 3's BIRD config", speaker_bird_config(3, include)),
    ] {
        assert!(
            readme.contains(&text),
            "README's Anycast section should show {what} as the test runs it:\n{text}"
        );
    }
}
