//! A WAN testbed for root-only end-to-end tests: one network namespace per region, joined
//! through the `wan-emu` userspace WAN emulator (this kernel has no `tc netem`).
//!
//! [`Testbed::up`] creates a namespace per region, `sy-wan-<pid>-<k>-<region>` (unique
//! per test process and testbed), and starts `wan-emu run`, which puts a TUN device
//! `sy-wan0` in each namespace and gives region i (1-based, in the order given) the
//! addresses 10.250.i.0/24 on the namespace's loopback (every one of them is local and
//! bindable: see [`Testbed::addr`]) and the route to 10.250.0.0/16 through its TUN. Traffic
//! within a region stays on its loopback; traffic between regions goes through the
//! emulator, which delays each packet by half the pair's round-trip time, and can cut a
//! link or lose packets. See `tests/wan/README.md`.
//!
//! Dropping the [`Testbed`] (also while unwinding from a panic) kills every process still
//! in its namespaces, stops the emulator (its TUN devices go with it), deletes the
//! namespaces and its temporary directory. If the test process is killed instead, its
//! emulator notices its standard input (a pipe from the test process) close, stops the
//! processes in the namespaces and deletes them (`--owns-netns`); it also exits by itself
//! after 30 minutes. The next [`Testbed::up`] removes namespaces and directories that a
//! dead test process left behind anyway.
//!
//! [`Detached`] is the same testbed for the `testnet` binary (`./testnet.sh up --wan`): it
//! outlives the process that starts it, with fixed namespace names and its state in a
//! directory that later commands read back.
//!
//! Everything here needs root; tests start with [`skip_without_root`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The TUN device's name inside every region namespace.
pub const DEV: &str = "sy-wan0";

/// The regions of the default testbed, with indexes 1, 2, 3 (10.250.1.0/24 ...).
pub const DEFAULT_REGIONS: [&str; 3] = ["WNAM", "WEU", "SEAS"];

/// How long the emulator may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The emulator stops by itself after this long, whatever happens to the test.
const EMU_LIFETIME: &str = "30m";
/// How long a control command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long teardown waits for processes to exit after SIGTERM, then after SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Whether this process runs as root (the testbed needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For root-only tests: when not root, prints `<test>: skipped: needs root (CI runs as
/// root)` and returns true, so the test returns early:
///
/// ```no_run
/// if switchyard_tests::wan::skip_without_root("my_test") { return; }
/// ```
pub fn skip_without_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root (CI runs as root)");
    true
}

/// One region of a running testbed.
#[derive(Debug, Clone)]
pub struct Region {
    /// Upper case, e.g. `WNAM`.
    pub name: String,
    /// The third octet of the region's addresses: 10.250.index.0/24.
    pub index: u8,
    /// The network namespace, for `ip netns exec` or `ip -n`.
    pub netns: String,
}

/// Counters from the emulator's `show`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Global drops: `outside` (source or destination outside 10.250.0.0/16), `not_ipv4`,
    /// `bad_source`, `no_region`, `intra`.
    pub drops: BTreeMap<String, u64>,
    /// Per directed link (from, to): `forwarded`, `bytes`, `queued`, `drop_cut`, `drop_loss`,
    /// `drop_full`, `write_errors`.
    pub links: BTreeMap<(String, String), BTreeMap<String, u64>>,
}

impl Counters {
    /// A global drop counter (0 when absent).
    pub fn dropped(&self, kind: &str) -> u64 {
        self.drops.get(kind).copied().unwrap_or(0)
    }

    /// A counter of the directed link `from`->`to` (0 when absent).
    pub fn link(&self, from: &str, to: &str, field: &str) -> u64 {
        self.links
            .get(&(from.to_ascii_uppercase(), to.to_ascii_uppercase()))
            .and_then(|m| m.get(field))
            .copied()
            .unwrap_or(0)
    }

    /// Parses the text of `show`.
    pub fn parse(show: &str) -> Counters {
        let mut c = Counters::default();
        let numbers = |words: std::str::SplitWhitespace<'_>| -> BTreeMap<String, u64> {
            words
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        };
        for line in show.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("drops") => c.drops = numbers(words),
                Some("link") => {
                    let Some((a, b)) = words.next().and_then(|p| p.split_once("->")) else {
                        continue;
                    };
                    c.links
                        .insert((a.to_string(), b.to_string()), numbers(words));
                }
                _ => {}
            }
        }
        c
    }
}

/// A running testbed; see the module docs. Dropping it tears everything down.
#[derive(Debug)]
pub struct Testbed {
    tag: String,
    regions: Vec<Region>,
    dir: PathBuf,
    control: PathBuf,
    emu: Option<Child>,
}

/// Testbeds made by this process so far, for unique names.
static SEQ: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Creates one namespace per region (region i of `regions` gets 10.250.(i+1).0/24) and
    /// starts the emulator at `wan_emu` (in the tests crate's integration tests:
    /// `env!("CARGO_BIN_EXE_wan-emu")`) with its default latencies (WNAM-WEU 75 ms,
    /// WNAM-SEAS 160 ms, WEU-SEAS 170 ms round trip; 100 ms for other pairs).
    pub fn up(wan_emu: impl AsRef<Path>, regions: &[&str]) -> Result<Testbed> {
        if !is_root() {
            bail!("the WAN testbed needs root");
        }
        if regions.len() < 2 || regions.len() > 254 {
            bail!("a testbed needs 2..254 regions, not {}", regions.len());
        }
        let wan_emu = wan_emu.as_ref();
        if !wan_emu.is_file() {
            bail!("no wan-emu binary at {}", wan_emu.display());
        }
        remove_stale();

        let pid = std::process::id();
        let tag = format!("sy-wan-{pid}-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // From here on, Drop cleans up whatever was made, if a step fails.
        let mut tb = Testbed {
            control: dir.join("control.sock"),
            dir,
            tag,
            regions: Vec::new(),
            emu: None,
        };
        for (i, r) in regions.iter().enumerate() {
            let name = r.to_ascii_uppercase();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("bad region name {r:?}");
            }
            if tb.regions.iter().any(|x| x.name == name) {
                bail!("region {name} given twice");
            }
            let netns = format!("{}-{}", tb.tag, name.to_ascii_lowercase());
            run_ip(&["netns", "add", &netns])?;
            tb.regions.push(Region {
                name,
                index: u8::try_from(i + 1).expect("at most 254 regions"),
                netns,
            });
        }

        let log = File::create(tb.dir.join("wan-emu.log"))?;
        let mut cmd = Command::new(wan_emu);
        cmd.arg("run").arg("--control").arg(&tb.control).args([
            "--lifetime",
            EMU_LIFETIME,
            "--exit-on-stdin-eof",
            "--owns-netns",
        ]);
        for r in &tb.regions {
            cmd.arg("--region")
                .arg(format!("{}:{}:{}", r.name, r.index, r.netns));
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", wan_emu.display()))?;
        tb.emu = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if tb.control("show").is_ok() {
                return Ok(tb);
            }
            if let Some(status) = tb.emu.as_mut().expect("just set").try_wait()? {
                bail!(
                    "wan-emu exited ({status}) before it was ready:\n{}",
                    tb.emulator_log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "wan-emu not ready within {READY_TIMEOUT:?}:\n{}",
                    tb.emulator_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The regions, in index order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// A region by name (any case).
    pub fn region(&self, name: &str) -> Result<&Region> {
        let up = name.to_ascii_uppercase();
        self.regions.iter().find(|r| r.name == up).ok_or_else(|| {
            let known: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
            anyhow!(
                "no region {name:?} in this testbed (known: {})",
                known.join(" ")
            )
        })
    }

    /// The namespace of a region.
    pub fn netns(&self, region: &str) -> Result<&str> {
        Ok(&self.region(region)?.netns)
    }

    /// Address `n` (1..=254) of a region: 10.250.<index>.n, local (bindable) in the region's
    /// namespace only. Panics on an unknown region or n outside 1..=254.
    pub fn addr(&self, region: &str, n: u8) -> IpAddr {
        assert!((1..=254).contains(&n), "address {n}: must be 1..=254");
        let r = self.region(region).unwrap_or_else(|e| panic!("{e}"));
        IpAddr::V4(Ipv4Addr::new(10, 250, r.index, n))
    }

    /// A command that runs `program` inside a region's namespace (`ip netns exec`), to add
    /// arguments and stdio to before spawning. Whatever it starts is killed at teardown.
    pub fn command(&self, region: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns(region)?])
            .arg(program);
        Ok(cmd)
    }

    /// Starts `program args...` inside a region's namespace, stdin closed, stdout and
    /// stderr inherited.
    pub fn exec<I, S>(&self, region: &str, program: impl AsRef<OsStr>, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        self.command(region, program)?
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} in {region}", Path::new(program).display()))
    }

    /// Runs `ip -n <netns> args...` (e.g. to add a route inside a region) and returns its
    /// output.
    pub fn ip(&self, region: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.netns(region)?];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs `f` on a fresh thread inside a region's namespace and returns its result.
    /// Sockets keep the namespace they were created in, so this makes sockets for the
    /// calling process, e.g. `tb.in_netns("WNAM", tokio::net::TcpSocket::new_v4)??` and then
    /// bind or connect it from anywhere. A panic in `f` propagates.
    pub fn in_netns<T, F>(&self, region: &str, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        in_netns(self.netns(region)?, f)
    }

    /// A new IPv4 TCP socket in a region's namespace (not yet bound or connected).
    pub fn tcp_socket(&self, region: &str) -> Result<tokio::net::TcpSocket> {
        Ok(self.in_netns(region, tokio::net::TcpSocket::new_v4)??)
    }

    /// Adds `iptables` rules inside a region's namespace (each inserted at the head of its
    /// chain) and returns a guard that deletes them when dropped, also while unwinding from a
    /// failed assertion. For what the emulator cannot do: it cuts a whole pair of regions,
    /// while a rule can cut one node's path to some hosts and leave the rest of the link up.
    /// Fails with a clear message when `iptables` is not installed (see [`iptables_check`]).
    pub fn firewall(&self, region: &str, rules: &[Rule]) -> Result<Firewall> {
        iptables_check()?;
        let mut fw = Firewall {
            netns: self.netns(region)?.to_string(),
            rules: Vec::new(),
        };
        for rule in rules {
            fw.iptables("-I", rule)
                .with_context(|| format!("add an iptables rule in {region}"))?;
            // Recorded only once added: deleting a rule that is not there fails.
            fw.rules.push(rule.clone());
        }
        Ok(fw)
    }

    /// Sets the round-trip time between two regions (each direction gets half).
    pub fn set_latency(&self, a: &str, b: &str, rtt: Duration) -> Result<()> {
        self.control(&format!("set {a} {b} {}us", rtt.as_micros()))?;
        Ok(())
    }

    /// Cuts the link between two regions: every packet either way is dropped.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.control(&format!("cut {a} {b}"))?;
        Ok(())
    }

    /// Undoes [`cut`](Self::cut).
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        self.control(&format!("heal {a} {b}"))?;
        Ok(())
    }

    /// Drops each packet between two regions with this probability, in percent.
    pub fn set_loss(&self, a: &str, b: &str, percent: f64) -> Result<()> {
        self.control(&format!("loss {a} {b} {percent}%"))?;
        Ok(())
    }

    /// The emulator's `show`: the latency matrix, per-link counters and drop counters.
    pub fn show(&self) -> Result<String> {
        self.control("show")
    }

    /// The emulator's counters.
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters::parse(&self.show()?))
    }

    /// Sends one control line; returns the reply without its final `ok`.
    pub fn control(&self, line: &str) -> Result<String> {
        control(&self.control, line)
    }

    /// The emulator's process id (None after teardown).
    pub fn emulator_pid(&self) -> Option<u32> {
        self.emu.as_ref().map(Child::id)
    }

    /// The testbed's temporary directory (control socket, emulator log); removed at teardown.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the emulator wrote to stdout and stderr so far.
    pub fn emulator_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wan-emu.log")).unwrap_or_default()
    }

    /// Tears everything down now (Drop does the same, and reports instead of returning).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        let names: Vec<String> = self.regions.iter().map(|r| r.netns.clone()).collect();
        if let Err(e) = stop_netns_processes(&names, STOP_GRACE) {
            errors.push(format!("{e:#}"));
        }
        if let Some(mut emu) = self.emu.take() {
            // Closing its stdin asks it to exit; SIGTERM too; SIGKILL if it lingers.
            drop(emu.stdin.take());
            signal(emu.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(emu.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(emu.try_wait(), Ok(None)) {
                let _ = emu.kill();
            }
            let _ = emu.wait();
        }
        for ns in &names {
            if let Err(e) = delete_netns(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        self.regions.clear();
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                errors.push(format!("remove {}: {e}", self.dir.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("testbed {} teardown: {}", self.tag, errors.join("; "))
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// Checks that `iptables` can run, for tests that cut paths with it: fails with what to
/// install when it cannot. CI installs it (`.ci/run`).
pub fn iptables_check() -> Result<()> {
    match Command::new("iptables")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "iptables --version failed ({}): {}; this test cuts one node's path with iptables \
             rules inside a testbed namespace",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "iptables is not installed (apt-get install iptables): this test cuts one node's \
             path with iptables rules inside a testbed namespace"
        ),
        Err(e) => Err(anyhow!(e).context("run iptables --version")),
    }
}

/// One iptables rule: its chain and the match and target after it, e.g. chain `OUTPUT`,
/// spec `-s 10.250.1.1 -d 10.250.2.11 -p tcp -j DROP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    /// A rule of `chain` from its spec's words, split on whitespace.
    pub fn new(chain: &str, spec: &str) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: spec.split_whitespace().map(str::to_string).collect(),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.chain, self.spec.join(" "))
    }
}

/// Rules added by [`Testbed::firewall`]; dropping it deletes them. The namespace's own
/// deletion would remove them too, but a test that heals mid-way, or a testbed whose
/// teardown failed, must not keep a cut that nothing shows.
#[derive(Debug)]
pub struct Firewall {
    netns: String,
    rules: Vec<Rule>,
}

impl Firewall {
    /// The rules in force, in the order they were added.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Deletes the rules now, and says which could not be deleted.
    pub fn remove(mut self) -> Result<()> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        // Newest first, so that each delete matches the rule this guard added.
        while let Some(rule) = self.rules.pop() {
            if let Err(e) = self.iptables("-D", &rule) {
                failed.push(format!("{rule}: {e:#}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!(
                "could not delete iptables rules in {}: {}",
                self.netns,
                failed.join("; ")
            )
        }
    }

    /// Runs `ip netns exec <netns> iptables -w <op> <chain> <spec...>`.
    fn iptables(&self, op: &str, rule: &Rule) -> Result<()> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "iptables",
                "-w",
                op,
                &rule.chain,
            ])
            .args(&rule.spec)
            .stdin(Stdio::null())
            .output()
            .context("run ip netns exec ... iptables")?;
        if !out.status.success() {
            bail!(
                "iptables {op} {rule} in {}: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("{e:#}");
        }
    }
}

/// A testbed that outlives the process that starts it, for `testnet up --wan`: its state is
/// a directory (`regions`, `wan-emu.pid`, `control.sock`, `wan-emu.log`) that later commands
/// read back. Namespaces are named `<prefix><region in lower case>`; `up` refuses a name that
/// exists, and `down` removes only the namespaces recorded in `regions`. The emulator runs in
/// its own session with `--owns-netns` and a lifetime: when it exits, for whatever reason, it
/// stops the processes in its namespaces and deletes them, so a forgotten testbed goes away.
#[derive(Debug, Clone)]
pub struct Detached {
    dir: PathBuf,
}

impl Detached {
    /// The testbed whose state is (or is to be) in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Detached {
        Detached { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn regions_file(&self) -> PathBuf {
        self.dir.join("regions")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("wan-emu.pid")
    }

    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("wan-emu.log")
    }

    /// The regions recorded by `up`, in index order (empty when none).
    pub fn regions(&self) -> Vec<Region> {
        let text = std::fs::read_to_string(self.regions_file()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (name, index, netns) = (w.next()?, w.next()?, w.next()?);
                Some(Region {
                    name: name.to_string(),
                    index: index.parse().ok()?,
                    netns: netns.to_string(),
                })
            })
            .collect()
    }

    /// The running emulator's pid: its pid file names a live wan-emu with this control socket.
    pub fn pid(&self) -> Option<u32> {
        let want = format!("--control {}", self.control_path().display());
        pid_running(&self.pid_file(), &want)
    }

    /// Whether the emulator runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether there is state: a testbed up, or what one left behind.
    pub fn state_present(&self) -> bool {
        std::fs::metadata(self.regions_file()).is_ok_and(|m| m.len() > 0)
            || self.pid_file().exists()
    }

    /// Creates a namespace per region (region i of `regions` gets 10.250.(i+1).0/24) and starts
    /// the emulator at `wan_emu` with the round-trip times `rtts`, for `lifetime` (`12h`);
    /// waits up to `ready` until it answers. On failure removes what it made.
    pub fn up(
        &self,
        wan_emu: &Path,
        regions: &[&str],
        prefix: &str,
        rtts: &[(&str, &str, Duration)],
        lifetime: &str,
        ready: Duration,
    ) -> Result<Vec<Region>> {
        if !is_root() {
            bail!("the WAN testbed needs root (network namespaces and TUN devices)");
        }
        if regions.len() < 2 || regions.len() > 254 {
            bail!("a testbed needs 2..254 regions, not {}", regions.len());
        }
        if !prefix.starts_with("sy-") {
            bail!("the namespace prefix must start with sy- (is {prefix:?}; WAN_NETNS_PREFIX)");
        }
        if !wan_emu.is_file() {
            bail!(
                "no wan-emu binary at {}: cargo build --release -p switchyard-tests --bin wan-emu",
                wan_emu.display()
            );
        }
        if self.is_running() {
            bail!(
                "the WAN testbed in {} is already up; take it down first",
                self.dir.display()
            );
        }
        if self.state_present() {
            eprintln!(
                "wan testbed: removing what a previous up left behind in {}",
                self.dir.display()
            );
            self.down(STOP_GRACE)?;
        }
        let mut planned = Vec::new();
        for (i, r) in regions.iter().enumerate() {
            let name = r.to_ascii_uppercase();
            if name.is_empty()
                || name.len() > 16
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                bail!("bad region name {r:?}");
            }
            let netns = format!("{prefix}{}", name.to_ascii_lowercase());
            if Path::new("/run/netns").join(&netns).exists() {
                bail!(
                    "namespace {netns} exists and this testbed did not create it; remove it \
                     (ip netns pids {netns}; ip netns delete {netns}) or set WAN_NETNS_PREFIX"
                );
            }
            planned.push(Region {
                name,
                index: u8::try_from(i + 1).expect("at most 254 regions"),
                netns,
            });
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let made = self.start(wan_emu, &planned, rtts, lifetime, ready);
        if made.is_err() {
            let _ = self.down(STOP_GRACE);
        }
        made.map(|()| planned)
    }

    fn start(
        &self,
        wan_emu: &Path,
        regions: &[Region],
        rtts: &[(&str, &str, Duration)],
        lifetime: &str,
        ready: Duration,
    ) -> Result<()> {
        let mut record = String::new();
        for r in regions {
            // Recorded before it is made, so that down removes it whatever happens next.
            record.push_str(&format!("{} {} {}\n", r.name, r.index, r.netns));
            std::fs::write(self.regions_file(), &record)?;
            run_ip(&["netns", "add", &r.netns])?;
        }
        let log = File::create(self.log_path())?;
        let mut cmd = Command::new(wan_emu);
        cmd.arg("run")
            .arg("--control")
            .arg(self.control_path())
            .args(["--lifetime", lifetime, "--owns-netns"]);
        for r in regions {
            cmd.arg("--region")
                .arg(format!("{}:{}:{}", r.name, r.index, r.netns));
        }
        for (a, b, rtt) in rtts {
            cmd.arg("--rtt")
                .arg(format!("{a}-{b}={}us", rtt.as_micros()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session, so that signals to the caller's process group do not reach it.
        // SAFETY: setsid is async-signal-safe and touches no memory of this process.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", wan_emu.display()))?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))?;
        let deadline = Instant::now() + ready;
        loop {
            if self.control("show").is_ok() {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "wan-emu exited ({status}) before it was ready; {}:\n{}",
                    self.log_path().display(),
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "wan-emu not ready within {ready:?}; {}:\n{}",
                    self.log_path().display(),
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the emulator (which stops the processes in its namespaces and deletes them),
    /// then anything it left: processes (SIGTERM, SIGKILL after `grace`) and the recorded
    /// namespaces. Returns the namespaces recorded.
    pub fn down(&self, grace: Duration) -> Result<Vec<String>> {
        let names: Vec<String> = self.regions().into_iter().map(|r| r.netns).collect();
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + grace + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                eprintln!("wan testbed: wan-emu {pid} did not exit; killing it");
                signal(pid, libc::SIGKILL);
            }
        }
        let mut errors = Vec::new();
        if let Err(e) = stop_netns_processes(&names, grace) {
            errors.push(format!("{e:#}"));
        }
        for ns in &names {
            if let Err(e) = delete_netns(ns) {
                errors.push(format!("{e:#}"));
            }
        }
        for f in [self.pid_file(), self.regions_file(), self.control_path()] {
            let _ = std::fs::remove_file(f);
        }
        if errors.is_empty() {
            Ok(names)
        } else {
            bail!("WAN testbed down: {}", errors.join("; "))
        }
    }

    /// Sends one control line; returns the reply without its final `ok`.
    pub fn control(&self, line: &str) -> Result<String> {
        control(&self.control_path(), line)
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends one line to a wan-emu control socket; returns the reply without its final `ok`, or
/// fails with the emulator's `error:` line.
pub fn control(socket: &Path, line: &str) -> Result<String> {
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connect to {}", socket.display()))?;
    s.set_read_timeout(Some(CONTROL_TIMEOUT))?;
    s.set_write_timeout(Some(CONTROL_TIMEOUT))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .with_context(|| format!("wan-emu reply to {line:?}"))?;
    let body = reply.strip_suffix('\n').unwrap_or(&reply);
    let (text, last) = body.rsplit_once('\n').unwrap_or(("", body));
    match last {
        "ok" => Ok(if text.is_empty() {
            String::new()
        } else {
            format!("{text}\n")
        }),
        _ => bail!("wan-emu: {line:?}: {}", last.trim_start_matches("error: ")),
    }
}

/// The lines of `show` before the per-link counters: the latency matrix.
pub fn matrix(show: &str) -> String {
    show.lines()
        .take_while(|l| !l.starts_with("link "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The pid in `pid_file` if that process runs and its command line (arguments joined by
/// spaces) contains `marker`, so that a reused pid is never taken for it.
pub fn pid_running(pid_file: &Path, marker: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(marker).then_some(pid)
}

/// Runs `f` on a fresh thread inside the network namespace `/run/netns/<netns>` and returns
/// its result; sockets it makes stay in that namespace. A panic in `f` propagates.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{netns}");
    let ns = File::open(&path).with_context(|| format!("open {path}"))?;
    let joined = std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            // SAFETY: setns on an fd we hold; it moves only this (short-lived) thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {path}"));
            }
            Ok(f())
        })
        .join()
    });
    match joined {
        Ok(res) => res,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn run_ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; pid is a process we started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The processes in a namespace (ip netns pids), without this process.
fn netns_pids(ns: &str) -> Vec<u32> {
    let me = std::process::id();
    run_ip(&["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| p != me)
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM to every process in the namespaces, SIGKILL to those left after a grace period;
/// fails if some are still there after that.
fn stop_netns_processes(names: &[String], grace: Duration) -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let pids: Vec<u32> = names.iter().flat_map(|ns| netns_pids(ns)).collect();
        if pids.is_empty() {
            return Ok(());
        }
        pids.iter().for_each(|&p| signal(p, sig));
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if names.iter().all(|ns| netns_pids(ns).is_empty()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left: Vec<u32> = names.iter().flat_map(|ns| netns_pids(ns)).collect();
    if left.is_empty() {
        Ok(())
    } else {
        bail!("processes still running in the testbed's namespaces: {left:?}")
    }
}

fn delete_netns(ns: &str) -> Result<()> {
    if !Path::new("/run/netns").join(ns).exists() {
        return Ok(());
    }
    run_ip(&["netns", "delete", ns]).map(|_| ())
}

/// Whether `name` is `sy-wan-<pid>-<seq>` (a testbed's tag, or with `-<region>` its
/// namespace's name) and that process is gone.
fn stale_tag(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("sy-wan-") else {
        return false;
    };
    let mut parts = rest.splitn(3, '-');
    let (Some(pid), Some(seq)) = (parts.next(), parts.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(pid) && digits(seq) && !Path::new("/proc").join(pid).exists()
}

/// Removes namespaces and temporary directories of testbeds whose process died without
/// tearing down (killed): names `sy-wan-<pid>-<seq>[-<region>]` whose pid is not running.
fn remove_stale() {
    let listed = run_ip(&["netns", "list"]).unwrap_or_default();
    let stale: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.matches('-').count() == 4 && stale_tag(n))
        .map(str::to_string)
        .collect();
    if !stale.is_empty() {
        let _ = stop_netns_processes(&stale, STOP_GRACE);
        for ns in &stale {
            match delete_netns(ns) {
                Ok(()) => eprintln!(
                    "wan testbed: removed stale namespace {ns} (its test process is gone)"
                ),
                Err(e) => eprintln!("wan testbed: stale namespace {ns}: {e:#}"),
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.matches('-').count() == 3 && stale_tag(&name) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show() {
        let show = "rtt WNAM WEU\n\
                    link WNAM->WEU rtt=75ms state=up loss=0% queued=0 forwarded=5 bytes=273 drop_cut=1\n\
                    drops outside=3 not_ipv4=0\n";
        let c = Counters::parse(show);
        assert_eq!(c.link("wnam", "weu", "forwarded"), 5);
        assert_eq!(c.link("WNAM", "WEU", "drop_cut"), 1);
        assert_eq!(c.link("WEU", "WNAM", "forwarded"), 0);
        assert_eq!(c.dropped("outside"), 3);
        assert_eq!(c.dropped("nothing"), 0);
    }

    #[test]
    fn recognises_stale_tags() {
        // pid 0 never has a /proc entry; this process's own does.
        assert!(stale_tag("sy-wan-0-3"));
        assert!(stale_tag("sy-wan-0-3-wnam"));
        assert!(!stale_tag(&format!("sy-wan-{}-0-wnam", std::process::id())));
        assert!(!stale_tag("sy-wnam"));
        assert!(!stale_tag("sy-0-1-wnam"));
        assert!(!stale_tag("sy-wan-x-1-wnam"));
        assert!(!stale_tag("sy-mesh-bench-0-1"));
    }
}
