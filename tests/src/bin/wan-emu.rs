//! `wan-emu`: a userspace WAN emulator for Switchyard's multi-region testbed, for kernels
//! without `tc netem`.
//!
//! Each region is a network namespace (made by the caller: `switchyard_tests::wan::Detached` or
//! `switchyard_tests::wan::Testbed`). For every region `wan-emu run` creates a TUN device,
//! `sy-wan0`, directly inside that region's namespace (a setns'd thread opens
//! `/dev/net/tun`), and configures the namespace:
//!
//! ```text
//! lo       up, 10.250.<i>.1/24   (the kernel makes the whole /24 local: every 10.250.<i>.n
//!                                  is an address of the region, bindable, no wire)
//! sy-wan0  up, no address; route 10.250.0.0/16 dev sy-wan0 src 10.250.<i>.1
//! ```
//!
//! So traffic within a region stays on the namespace's loopback, and traffic to another
//! region leaves through `sy-wan0` into this process, which reads the IPv4 packet, finds the
//! destination region from the third octet (10.250.<j>.x), holds it for half the pair's
//! round-trip time and writes it to region j's TUN, unless the link is cut or the packet is
//! lost (configured loss rate) or the link's queue is full. Packets whose source or
//! destination is outside 10.250.0.0/16 are never forwarded, nor non-IPv4 packets, nor
//! packets whose source is not the region they came from: they are dropped and counted.
//!
//! The delay is a lower bound: a packet read at t is written at t + rtt/2 or later (FIFO per
//! directed link, so no reordering; after a latency decrease, packets queued behind slower
//! ones wait for them). Bandwidth is not modelled.
//!
//! When the process exits its TUN file descriptors close and the kernel deletes the
//! devices, with their routes. The caller deletes the namespaces, or with `--owns-netns`
//! the emulator does as it exits (after stopping the processes in them), whatever made it
//! exit: a signal, `--lifetime`, `--exit-on-stdin-eof` or an error.
//!
//! Control: a line protocol on a Unix socket (`--control PATH`), one command a line, every
//! reply ending with a line `ok` or `error: ...`:
//!
//! ```text
//! set A B 120ms     round-trip time of the pair (both directions get 60 ms)
//! cut A B           drop everything between A and B (also what is already in flight)
//! heal A B          undo cut
//! loss A B 5%       drop each packet, each direction, with this probability
//! show              the matrix, per-link counters, drop counters
//! ```
//!
//! B may be `*` (every other region). `wan-emu ctl --control PATH set WNAM WEU 120ms` sends
//! one command and prints the reply (exit 1 on `error:`), for scripts.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The testbed's address range: 10.250.0.0/16, region i owns 10.250.i.0/24.
const NET: [u8; 2] = [10, 250];
/// The TUN device's name inside every region namespace.
const DEV: &str = "sy-wan0";
/// Round-trip times of the default regions, in milliseconds.
const DEFAULT_RTTS: &[(&str, &str, u64)] = &[
    ("WNAM", "WEU", 75),
    ("WNAM", "SEAS", 160),
    ("WEU", "SEAS", 170),
];
/// Bigger than any packet a TUN hands out without offloads (MTU 1500; 64 KiB is IPv4's max).
const READ_BUF: usize = 65536;
/// Longest control line accepted.
const MAX_LINE: u64 = 1024;
/// How long a control connection may stay open.
const CONTROL_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "wan-emu",
    about = "Userspace WAN emulator between region network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a TUN device in each region's namespace and forward between them.
    Run(RunArgs),
    /// Send one control command to a running wan-emu and print the reply.
    Ctl {
        /// The control socket of the running wan-emu.
        #[arg(long)]
        control: PathBuf,
        /// Give up after this long: 5s, 250ms.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// The command, e.g. `set WNAM WEU 120ms`, `cut WNAM SEAS`, `show`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Control socket path (line protocol: set, cut, heal, loss, show).
    #[arg(long)]
    control: PathBuf,
    /// A region, NAME:INDEX:NETNS, e.g. WNAM:1:sy-wnam: its addresses are 10.250.INDEX.0/24
    /// and NETNS is a namespace under /run/netns (ip netns add). Two or more.
    #[arg(long = "region", required = true, value_parser = parse_region)]
    regions: Vec<RegionArg>,
    /// Round-trip time of a pair, A-B=DUR (e.g. WNAM-WEU=75ms); overrides the defaults
    /// (WNAM-WEU 75ms, WNAM-SEAS 160ms, WEU-SEAS 170ms).
    #[arg(long = "rtt", value_parser = parse_rtt_arg)]
    rtts: Vec<(String, String, Duration)>,
    /// Round-trip time of pairs with neither a default nor --rtt.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    default_rtt: Duration,
    /// Packets each directed link may hold in flight; more are dropped and counted.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    queue: u32,
    /// Exit after this long (0: never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    lifetime: Duration,
    /// Exit when standard input closes (so the emulator dies with the process that
    /// started it, even if that one is killed).
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// The namespaces are the emulator's: when it exits (lifetime, stdin closed, signal,
    /// error), it stops every process in them (SIGTERM, then SIGKILL) and deletes them. So
    /// a testbed whose owner died goes away by itself.
    #[arg(long)]
    owns_netns: bool,
}

#[derive(Debug, Clone)]
struct RegionArg {
    name: String,
    index: u8,
    netns: String,
}

fn parse_region(s: &str) -> Result<RegionArg, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, index, netns] = parts[..] else {
        return Err(format!(
            "{s:?}: expected NAME:INDEX:NETNS, e.g. WNAM:1:sy-wnam"
        ));
    };
    let name = region_name(name)?;
    let index: u8 = index
        .parse()
        .ok()
        .filter(|i| (1..=254).contains(i))
        .ok_or_else(|| format!("{s:?}: INDEX must be 1..254"))?;
    if netns.is_empty() || netns.contains('/') || netns.starts_with('.') {
        return Err(format!("{s:?}: bad namespace name {netns:?}"));
    }
    Ok(RegionArg {
        name,
        index,
        netns: netns.to_string(),
    })
}

fn region_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 16 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad region name {s:?} (letters, digits, _)"));
    }
    Ok(s.to_ascii_uppercase())
}

fn parse_rtt_arg(s: &str) -> Result<(String, String, Duration), String> {
    let (pair, dur) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected A-B=DUR, e.g. WNAM-WEU=75ms"))?;
    let (a, b) = pair
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected A-B=DUR, e.g. WNAM-WEU=75ms"))?;
    Ok((region_name(a)?, region_name(b)?, parse_duration(dur)?))
}

/// `120ms`, `0.12s`, `500us`, or a bare number of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 120ms, 1.5s)"))?;
    let scale = match unit {
        "" | "ms" => 1e-3,
        "s" => 1.0,
        "us" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m, h)")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 86400.0 * 365.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `5%`, `0.5%`, `5` (percent): parts per million.
fn parse_loss(s: &str) -> Result<u32, String> {
    let num = s.strip_suffix('%').unwrap_or(s);
    let pct: f64 = num
        .parse()
        .map_err(|_| format!("bad loss {s:?} (e.g. 5%)"))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("loss {s:?} must be 0%..100%"));
    }
    Ok((pct * 10_000.0).round() as u32)
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else {
        let s = format!("{:.3}", ns as f64 / 1e6);
        format!("{}ms", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn fmt_loss(ppm: u32) -> String {
    let s = format!("{:.4}", f64::from(ppm) / 10_000.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Ctl {
            control,
            timeout,
            words,
        } => ctl(&control, timeout, &words.join(" ")),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wan-emu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---- ctl ---------------------------------------------------------------------------------------

fn ctl(control: &Path, timeout: Duration, line: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(control)
        .with_context(|| format!("connect to {}", control.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .with_context(|| format!("read reply from {}", control.display()))?;
    let mut lines: Vec<&str> = reply.lines().collect();
    // Output piped into `head` may close early; that is not an error worth a panic.
    let print = |lines: &[&str]| {
        let mut out = std::io::stdout().lock();
        for l in lines {
            if writeln!(out, "{l}").is_err() {
                break;
            }
        }
    };
    match lines.pop() {
        Some("ok") => {
            print(&lines);
            Ok(ExitCode::SUCCESS)
        }
        Some(err) if err.starts_with("error:") => {
            print(&lines);
            eprintln!("wan-emu: {}", err.trim_start_matches("error:").trim());
            Ok(ExitCode::FAILURE)
        }
        _ => bail!("unexpected reply from {}: {reply:?}", control.display()),
    }
}

// ---- setup -------------------------------------------------------------------------------------

/// Creates the TUN device `DEV` inside namespace `netns`, on a thread of its own that joins
/// the namespace (the rest of the process stays where it is), and returns its fd
/// (non-blocking). The device lives as long as the fd.
fn create_tun(netns: &str) -> anyhow::Result<OwnedFd> {
    let netns = netns.to_string();
    std::thread::spawn(move || -> anyhow::Result<OwnedFd> {
        let ns_path = format!("/run/netns/{netns}");
        let ns = std::fs::File::open(&ns_path)
            .with_context(|| format!("open {ns_path} (create it with `ip netns add {netns}`)"))?;
        // SAFETY: plain syscalls on fds we own; setns affects this thread only.
        unsafe {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error()).context(format!("setns into {netns}"));
            }
            let path = CString::new("/dev/net/tun").expect("no NUL");
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("open /dev/net/tun");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut req: libc::ifreq = std::mem::zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(DEV.bytes()) {
                *dst = src as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            if libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) != 0 {
                return Err(io::Error::last_os_error())
                    .context(format!("create TUN device {DEV} in {netns} (TUNSETIFF)"));
            }
            // No IPv6 on the WAN device: it would only send solicitations we drop anyway.
            // Best effort (IPv6 may be off); /proc/sys/net follows this thread's namespace.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{DEV}/disable_ipv6"), "1");
            Ok(fd)
        }
    })
    .join()
    .map_err(|_| anyhow!("TUN setup thread panicked"))?
}

/// Configures namespace `netns` for region `index`: loopback up with the region's /24,
/// the TUN up and the route to the other regions through it.
fn configure_netns(netns: &str, index: u8) -> anyhow::Result<()> {
    let batch = format!(
        "link set dev lo up\n\
         address replace 10.250.{index}.1/24 dev lo\n\
         link set dev {DEV} up\n\
         route replace 10.250.0.0/16 dev {DEV} src 10.250.{index}.1\n"
    );
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ip (iproute2)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(batch.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "configure namespace {netns}: ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The pids in a namespace (`ip netns pids`).
fn netns_pids(ns: &str) -> Vec<libc::pid_t> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops every process in the namespaces (SIGTERM, 2 s, SIGKILL, 2 s) and deletes them.
fn release_netns(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let me = std::process::id() as libc::pid_t;
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let pids: Vec<_> = names
            .iter()
            .flat_map(|ns| netns_pids(ns))
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p, sig) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && names.iter().any(|ns| !netns_pids(ns).is_empty())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for ns in names {
        if Path::new("/run/netns").join(ns).exists() {
            let ok = Command::new("ip")
                .args(["netns", "delete", ns])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("wan-emu: could not delete namespace {ns}");
            }
        }
    }
}

// ---- the emulator ------------------------------------------------------------------------------

struct Region {
    name: String,
    index: u8,
    netns: String,
    tun: AsyncFd<OwnedFd>,
}

/// Settings of an (unordered) pair; shared by both directions.
struct Link {
    rtt_ns: AtomicU64,
    cut: AtomicBool,
    loss_ppm: AtomicU32,
}

impl Link {
    fn one_way(&self) -> Duration {
        Duration::from_nanos(self.rtt_ns.load(Relaxed) / 2)
    }
}

/// A directed link: its queue and counters.
struct Dir {
    link: Arc<Link>,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    forwarded: AtomicU64,
    bytes: AtomicU64,
    drop_cut: AtomicU64,
    drop_loss: AtomicU64,
    drop_full: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(Default)]
struct Drops {
    /// Source or destination outside 10.250.0.0/16.
    outside: AtomicU64,
    /// Not IPv4, or too short to be.
    not_ipv4: AtomicU64,
    /// Source not in the region whose TUN the packet came from.
    bad_source: AtomicU64,
    /// Destination 10.250.j.x with no region j.
    no_region: AtomicU64,
    /// Destination in the packet's own region (should stay on its loopback).
    intra: AtomicU64,
}

struct Emu {
    regions: Vec<Region>,
    /// Region position by address index (third octet).
    by_index: [Option<usize>; 256],
    /// dirs[src][dst], None on the diagonal.
    dirs: Vec<Vec<Option<Arc<Dir>>>>,
    drops: Drops,
    queue: u32,
}

impl Emu {
    fn find(&self, name: &str) -> Result<usize, String> {
        let up = name.to_ascii_uppercase();
        self.regions
            .iter()
            .position(|r| r.name == up)
            .ok_or_else(|| {
                let known: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
                format!("no region {name:?} (known: {})", known.join(" "))
            })
    }

    /// The pairs a command names: A B, or A * for every region but A.
    fn pairs(&self, a: &str, b: &str) -> Result<Vec<(usize, usize)>, String> {
        let a = self.find(a)?;
        if b == "*" {
            return Ok((0..self.regions.len())
                .filter(|&j| j != a)
                .map(|j| (a, j))
                .collect());
        }
        let b = self.find(b)?;
        if a == b {
            return Err("a region has no link to itself".into());
        }
        Ok(vec![(a, b)])
    }

    fn link(&self, a: usize, b: usize) -> &Link {
        &self.dirs[a][b].as_ref().expect("not diagonal").link
    }

    /// Handles one packet read from region `from`'s TUN.
    fn route(&self, from: usize, pkt: &[u8], rng: &mut u64) {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            self.drops.not_ipv4.fetch_add(1, Relaxed);
            return;
        }
        let (src, dst) = (&pkt[12..16], &pkt[16..20]);
        if src[..2] != NET || dst[..2] != NET {
            self.drops.outside.fetch_add(1, Relaxed);
            return;
        }
        if self.by_index[usize::from(src[2])] != Some(from) {
            self.drops.bad_source.fetch_add(1, Relaxed);
            return;
        }
        let Some(to) = self.by_index[usize::from(dst[2])] else {
            self.drops.no_region.fetch_add(1, Relaxed);
            return;
        };
        if to == from {
            self.drops.intra.fetch_add(1, Relaxed);
            return;
        }
        let dir = self.dirs[from][to].as_ref().expect("from != to");
        if dir.link.cut.load(Relaxed) {
            dir.drop_cut.fetch_add(1, Relaxed);
            return;
        }
        let loss = dir.link.loss_ppm.load(Relaxed);
        if loss > 0 && (next_random(rng) % 1_000_000) < u64::from(loss) {
            dir.drop_loss.fetch_add(1, Relaxed);
            return;
        }
        let due = Instant::now() + dir.link.one_way();
        if dir.tx.try_send((due, pkt.to_vec())).is_err() {
            dir.drop_full.fetch_add(1, Relaxed);
        }
    }

    fn control(&self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let res = match words[..] {
            ["set", a, b, d] => parse_duration(d).and_then(|d| {
                for (i, j) in self.pairs(a, b)? {
                    self.link(i, j).rtt_ns.store(d.as_nanos() as u64, Relaxed);
                }
                Ok(String::new())
            }),
            ["cut", a, b] => self.pairs(a, b).map(|ps| {
                ps.into_iter()
                    .for_each(|(i, j)| self.link(i, j).cut.store(true, Relaxed));
                String::new()
            }),
            ["heal", a, b] => self.pairs(a, b).map(|ps| {
                ps.into_iter()
                    .for_each(|(i, j)| self.link(i, j).cut.store(false, Relaxed));
                String::new()
            }),
            ["loss", a, b, p] => parse_loss(p).and_then(|p| {
                for (i, j) in self.pairs(a, b)? {
                    self.link(i, j).loss_ppm.store(p, Relaxed);
                }
                Ok(String::new())
            }),
            ["show"] => Ok(self.show()),
            ["help"] | [] => Ok(
                "commands: set A B 120ms | cut A B | heal A B | loss A B 5% | show \
                                 (B may be *)\n"
                    .to_string(),
            ),
            _ => Err(format!("unknown command {line:?} (try help)")),
        };
        match res {
            Ok(text) => format!("{text}ok\n"),
            Err(e) => format!("error: {e}\n"),
        }
    }

    fn show(&self) -> String {
        let mut out = String::new();
        let width = self
            .regions
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(4)
            .max(12);
        let _ = write!(out, "{:<width$}", "rtt");
        for r in &self.regions {
            let _ = write!(out, " {:>width$}", r.name);
        }
        out.push('\n');
        for (i, r) in self.regions.iter().enumerate() {
            let _ = write!(out, "{:<width$}", r.name);
            for j in 0..self.regions.len() {
                let cell = if i == j {
                    "-".to_string()
                } else {
                    let l = self.link(i, j);
                    let mut c = fmt_duration(Duration::from_nanos(l.rtt_ns.load(Relaxed)));
                    let loss = l.loss_ppm.load(Relaxed);
                    if loss > 0 {
                        c = format!("{c}~{}", fmt_loss(loss));
                    }
                    if l.cut.load(Relaxed) {
                        c = format!("cut({c})");
                    }
                    c
                };
                let _ = write!(out, " {cell:>width$}");
            }
            out.push('\n');
        }
        for (i, a) in self.regions.iter().enumerate() {
            for (j, b) in self.regions.iter().enumerate() {
                let Some(d) = &self.dirs[i][j] else { continue };
                let l = &d.link;
                let _ = writeln!(
                    out,
                    "link {}->{} rtt={} state={} loss={} queued={} forwarded={} bytes={} \
                     drop_cut={} drop_loss={} drop_full={} write_errors={}",
                    a.name,
                    b.name,
                    fmt_duration(Duration::from_nanos(l.rtt_ns.load(Relaxed))),
                    if l.cut.load(Relaxed) { "cut" } else { "up" },
                    fmt_loss(l.loss_ppm.load(Relaxed)),
                    self.queue as usize - d.tx.capacity(),
                    d.forwarded.load(Relaxed),
                    d.bytes.load(Relaxed),
                    d.drop_cut.load(Relaxed),
                    d.drop_loss.load(Relaxed),
                    d.drop_full.load(Relaxed),
                    d.write_errors.load(Relaxed),
                );
            }
        }
        let dr = &self.drops;
        let _ = writeln!(
            out,
            "drops outside={} not_ipv4={} bad_source={} no_region={} intra={}",
            dr.outside.load(Relaxed),
            dr.not_ipv4.load(Relaxed),
            dr.bad_source.load(Relaxed),
            dr.no_region.load(Relaxed),
            dr.intra.load(Relaxed),
        );
        for r in &self.regions {
            let _ = writeln!(
                out,
                "region {} index={} netns={} net=10.250.{}.0/24 dev={DEV}",
                r.name, r.index, r.netns, r.index
            );
        }
        out
    }
}

/// xorshift64*: loss decisions need no more than this.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

async fn read_loop(emu: Arc<Emu>, from: usize) -> io::Result<()> {
    let tun = &emu.regions[from].tun;
    let mut buf = vec![0u8; READ_BUF];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = (seed ^ (from as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    loop {
        let mut guard = tun.readable().await?;
        // SAFETY: reading into a buffer we own from an fd we own.
        let res = guard.try_io(|fd| {
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(Ok(n)) => emu.route(from, &buf[..n], &mut rng),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

async fn deliver_loop(
    emu: Arc<Emu>,
    to: usize,
    dir: Arc<Dir>,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
) {
    let tun = &emu.regions[to].tun;
    while let Some((due, pkt)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if dir.link.cut.load(Relaxed) {
            dir.drop_cut.fetch_add(1, Relaxed);
            continue;
        }
        let res = loop {
            let mut guard = match tun.writable().await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            // SAFETY: writing a buffer we own to an fd we own.
            let r = guard.try_io(|fd| {
                let n = unsafe { libc::write(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(r) => break r,
                Err(_would_block) => {}
            }
        };
        match res {
            Ok(_) => {
                dir.forwarded.fetch_add(1, Relaxed);
                dir.bytes.fetch_add(pkt.len() as u64, Relaxed);
            }
            Err(e) => {
                if dir.write_errors.fetch_add(1, Relaxed) == 0 {
                    eprintln!("wan-emu: write to {DEV} of {}: {e}", emu.regions[to].name);
                }
            }
        }
    }
}

async fn control_conn(emu: Arc<Emu>, stream: UnixStream) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(MAX_LINE * 64));
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let reply = if line.len() as u64 > MAX_LINE {
            "error: line too long\n".to_string()
        } else {
            emu.control(line.trim())
        };
        wr.write_all(reply.as_bytes()).await?;
    }
}

/// Binds the control socket, replacing a stale one (a socket nobody answers on) but never
/// another kind of file or a live emulator's socket.
fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{}: another wan-emu is listening there", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let n = args.regions.len();
    if n < 2 {
        bail!("need two or more --region");
    }
    for (i, a) in args.regions.iter().enumerate() {
        for b in &args.regions[..i] {
            if a.name == b.name || a.index == b.index || a.netns == b.netns {
                bail!(
                    "--region {}:{}:{} clashes with {}:{}:{}",
                    a.name,
                    a.index,
                    a.netns,
                    b.name,
                    b.index,
                    b.netns
                );
            }
        }
    }
    let names: Vec<&str> = args.regions.iter().map(|r| r.name.as_str()).collect();
    for (a, b, _) in &args.rtts {
        if !names.contains(&a.as_str()) || !names.contains(&b.as_str()) || a == b {
            bail!(
                "--rtt {a}-{b}: not a pair of two of the regions ({})",
                names.join(" ")
            );
        }
    }

    let owned: Vec<String> = if args.owns_netns {
        args.regions.iter().map(|r| r.netns.clone()).collect()
    } else {
        Vec::new()
    };
    let res = setup_and_serve(args);
    // The TUN fds are closed by now (the devices are gone); then the namespaces.
    release_netns(&owned);
    res
}

fn setup_and_serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let n = args.regions.len();
    // TUN devices first (plain threads), then the runtime.
    let mut tuns = Vec::with_capacity(n);
    for r in &args.regions {
        tuns.push(create_tun(&r.netns).with_context(|| format!("region {}", r.name))?);
        configure_netns(&r.netns, r.index).with_context(|| format!("region {}", r.name))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(args, tuns))
}

async fn serve(args: RunArgs, tuns: Vec<OwnedFd>) -> anyhow::Result<ExitCode> {
    let n = args.regions.len();
    let mut regions = Vec::with_capacity(n);
    let mut by_index = [None; 256];
    for (i, (r, fd)) in args.regions.iter().zip(tuns).enumerate() {
        by_index[usize::from(r.index)] = Some(i);
        regions.push(Region {
            name: r.name.clone(),
            index: r.index,
            netns: r.netns.clone(),
            // SAFETY: the fd is ours, open, and closed only when the AsyncFd is dropped.
            tun: unsafe { AsyncFd::register(fd)? },
        });
    }
    let rtt_of = |a: &str, b: &str| -> Duration {
        let same = |x: &str, y: &str| (x == a && y == b) || (x == b && y == a);
        if let Some((_, _, d)) = args.rtts.iter().rev().find(|(x, y, _)| same(x, y)) {
            return *d;
        }
        DEFAULT_RTTS
            .iter()
            .find(|(x, y, _)| same(x, y))
            .map_or(args.default_rtt, |(_, _, ms)| Duration::from_millis(*ms))
    };
    let mut links: Vec<Vec<Option<Arc<Link>>>> = vec![vec![None; n]; n];
    for i in 0..n {
        for j in (i + 1)..n {
            let l = Arc::new(Link {
                rtt_ns: AtomicU64::new(rtt_of(&regions[i].name, &regions[j].name).as_nanos() as u64),
                cut: AtomicBool::new(false),
                loss_ppm: AtomicU32::new(0),
            });
            links[i][j] = Some(l.clone());
            links[j][i] = Some(l);
        }
    }
    let mut rxs = VecDeque::new();
    let mut dirs: Vec<Vec<Option<Arc<Dir>>>> = vec![vec![None; n]; n];
    for i in 0..n {
        for j in 0..n {
            let Some(link) = links[i][j].clone() else {
                continue;
            };
            let (tx, rx) = mpsc::channel(args.queue as usize);
            let dir = Arc::new(Dir {
                link,
                tx,
                forwarded: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                drop_cut: AtomicU64::new(0),
                drop_loss: AtomicU64::new(0),
                drop_full: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
            });
            rxs.push_back((j, dir.clone(), rx));
            dirs[i][j] = Some(dir);
        }
    }
    let emu = Arc::new(Emu {
        regions,
        by_index,
        dirs,
        drops: Drops::default(),
        queue: args.queue,
    });

    let mut tasks = tokio::task::JoinSet::new();
    for (to, dir, rx) in rxs {
        let emu = emu.clone();
        tasks.spawn(async move {
            deliver_loop(emu, to, dir, rx).await;
            Ok(())
        });
    }
    for from in 0..n {
        let emu = emu.clone();
        tasks.spawn(async move {
            read_loop(emu.clone(), from)
                .await
                .map_err(|e| anyhow!("read from {DEV} of {}: {e}", emu.regions[from].name))
        });
    }

    let listener = bind_control(&args.control)?;
    let control = args.control.clone();
    {
        let emu = emu.clone();
        tasks.spawn(async move {
            loop {
                let (stream, _): (UnixStream, _) = listener
                    .accept()
                    .await
                    .context("accept on the control socket")?;
                let emu = emu.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONTROL_IDLE, control_conn(emu, stream)).await;
                });
            }
        });
    }

    let (stop_tx, mut stop_rx) = mpsc::channel::<&'static str>(4);
    if args.exit_on_stdin_eof {
        let tx = stop_tx.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut sink), Ok(k) if k > 0) {}
            let _ = tx.blocking_send("standard input closed");
        });
    }
    if !args.lifetime.is_zero() {
        let tx = stop_tx.clone();
        let lifetime = args.lifetime;
        tokio::spawn(async move {
            tokio::time::sleep(lifetime).await;
            let _ = tx.send("lifetime over").await;
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    println!(
        "wan-emu: ready: {} (control {})",
        emu.regions
            .iter()
            .map(|r| format!("{}=10.250.{}.0/24@{}", r.name, r.index, r.netns))
            .collect::<Vec<_>>()
            .join(" "),
        control.display()
    );
    let outcome = tokio::select! {
        why = stop_rx.recv() => { eprintln!("wan-emu: exiting: {}", why.unwrap_or("stopped")); Ok(ExitCode::SUCCESS) }
        _ = sigterm.recv() => Ok(ExitCode::SUCCESS),
        _ = sigint.recv() => Ok(ExitCode::SUCCESS),
        res = tasks.join_next() => match res {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow!("task failed: {e}")),
            _ => Err(anyhow!("a task ended")),
        },
    };
    let _ = std::fs::remove_file(&control);
    // The TUN fds close with `emu`: the kernel removes the devices and their routes.
    tasks.abort_all();
    outcome
}
