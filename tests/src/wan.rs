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
        let path = format!("/run/netns/{}", self.netns(region)?);
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

    /// A new IPv4 TCP socket in a region's namespace (not yet bound or connected).
    pub fn tcp_socket(&self, region: &str) -> Result<tokio::net::TcpSocket> {
        Ok(self.in_netns(region, tokio::net::TcpSocket::new_v4)??)
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
        let mut s = UnixStream::connect(&self.control)
            .with_context(|| format!("connect to {}", self.control.display()))?;
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
        if let Err(e) = stop_netns_processes(&names) {
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
fn stop_netns_processes(names: &[String]) -> Result<()> {
    for (sig, grace) in [(libc::SIGTERM, STOP_GRACE), (libc::SIGKILL, STOP_GRACE)] {
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
        let _ = stop_netns_processes(&stale);
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
