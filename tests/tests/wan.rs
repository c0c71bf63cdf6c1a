//! The WAN emulator (root only: skipped otherwise): three region namespaces (WNAM, WEU,
//! SEAS) joined by `wan-emu`. A test origin in WEU, a client in WNAM: the connection works,
//! its round trips take at least the configured latency (a lower bound the emulator
//! guarantees, not a speed target), `cut` makes connects time out while other pairs still
//! work, `heal` restores, `set` raises the lower bound, and packets from or to addresses
//! outside 10.250.0.0/16 are never forwarded. Teardown leaves nothing behind, also after a
//! panic. Every wait has a deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchyard_tests::wan::{skip_without_root, Testbed, DEFAULT_REGIONS};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const WAN_EMU: &str = env!("CARGO_BIN_EXE_wan-emu");
const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
/// Deadline for one connect or exchange that should succeed.
const STEP: Duration = Duration::from_secs(5);
/// How long a connect over a cut link is given before we call it failed.
const CUT_PROBE: Duration = Duration::from_millis(1500);

/// Starts a test origin at addr inside a region and waits until it accepts (from inside
/// the region, so without the WAN).
async fn start_origin(tb: &Testbed, region: &str, name: &str, addr: SocketAddr) -> Result<Child> {
    let child = tb
        .command(region, TEST_ORIGIN)?
        .args(["--name", name, "--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start test-origin in {region}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sock = tb.tcp_socket(region)?;
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), sock.connect(addr)).await {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            bail!("test origin {name} at {addr} not accepting within 10s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects from a region (optionally from a chosen source address); errors on timeout.
async fn connect(
    tb: &Testbed,
    region: &str,
    from: Option<IpAddr>,
    to: SocketAddr,
    within: Duration,
) -> Result<TcpStream> {
    let sock = tb.tcp_socket(region)?;
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    match timeout(within, sock.connect(to)).await {
        Ok(res) => res.with_context(|| format!("connect {region} -> {to}")),
        Err(_) => bail!("connect {region} -> {to}: timed out after {within:?}"),
    }
}

/// Round trips measured from a region to a test origin.
#[derive(Debug)]
struct Rtts {
    connect: Duration,
    echo: Vec<Duration>,
}

impl Rtts {
    fn min_echo(&self) -> Duration {
        self.echo.iter().copied().min().expect("at least one round")
    }
}

/// Connects (timing the handshake: one round trip), reads the origin's name, then times
/// `rounds` echo exchanges of one line each (one round trip each).
async fn measure(
    tb: &Testbed,
    region: &str,
    to: SocketAddr,
    expect_name: &str,
    rounds: usize,
) -> Result<Rtts> {
    let t0 = Instant::now();
    let stream = connect(tb, region, None, to, STEP).await?;
    let connect_time = t0.elapsed();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    timeout(STEP, reader.read_line(&mut line))
        .await
        .context("greeting timed out")??;
    assert_eq!(line.trim_end(), expect_name, "greeting from {to}");
    let mut echo = Vec::new();
    for i in 0..rounds {
        let msg = format!("ping {i}\n");
        let t = Instant::now();
        reader.get_mut().write_all(msg.as_bytes()).await?;
        line.clear();
        timeout(STEP, reader.read_line(&mut line))
            .await
            .context("echo timed out")??;
        echo.push(t.elapsed());
        assert_eq!(line, msg, "echo from {to}");
    }
    Ok(Rtts {
        connect: connect_time,
        echo,
    })
}

fn assert_at_least(what: &str, got: &Rtts, rtt: Duration) {
    assert!(
        got.connect >= rtt,
        "{what}: TCP handshake took {:?}, below the configured round trip {rtt:?}",
        got.connect
    );
    assert!(
        got.min_echo() >= rtt,
        "{what}: fastest echo round trip {:?}, below the configured round trip {rtt:?} (all: {:?})",
        got.min_echo(),
        got.echo
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_latency_cut_heal_and_set() -> Result<()> {
    if skip_without_root("wan_latency_cut_heal_and_set") {
        return Ok(());
    }
    let tb = Testbed::up(WAN_EMU, &DEFAULT_REGIONS)?;
    let weu = SocketAddr::new(tb.addr("WEU", 11), 7000);
    let seas = SocketAddr::new(tb.addr("SEAS", 11), 7000);
    let _weu_origin = start_origin(&tb, "WEU", "weu-1", weu).await?;
    let _seas_origin = start_origin(&tb, "SEAS", "seas-1", seas).await?;

    // Default latency: WNAM-WEU 75 ms round trip.
    let m = measure(&tb, "WNAM", weu, "weu-1", 5).await?;
    eprintln!("WNAM->WEU at 75ms: {m:?}");
    assert_at_least("WNAM->WEU at 75ms", &m, Duration::from_millis(75));
    let m = measure(&tb, "WNAM", seas, "seas-1", 3).await?;
    eprintln!("WNAM->SEAS at 160ms: {m:?}");
    assert_at_least("WNAM->SEAS at 160ms", &m, Duration::from_millis(160));
    let c = tb.counters()?;
    assert!(
        c.link("WNAM", "WEU", "forwarded") > 0 && c.link("WEU", "WNAM", "forwarded") > 0,
        "{c:?}"
    );

    // Within a region traffic stays on the namespace's loopback: not through the emulator.
    let before = tb.counters()?;
    let local = measure(&tb, "WEU", weu, "weu-1", 3).await?;
    eprintln!("WEU->WEU (local): {local:?}");
    let after = tb.counters()?;
    for (link, fields) in &after.links {
        assert_eq!(
            fields.get("forwarded"),
            before.links[link].get("forwarded"),
            "{link:?} forwarded packets of a region-local connection"
        );
    }

    // An established connection, to see a cut stop it too.
    let established = connect(&tb, "WNAM", None, weu, STEP).await?;
    let mut established = BufReader::new(established);
    let mut line = String::new();
    timeout(STEP, established.read_line(&mut line)).await??;

    // Cut: connects time out (no refusal: packets vanish), the open connection stalls,
    // other pairs still work.
    tb.cut("WNAM", "WEU")?;
    let err = connect(&tb, "WNAM", None, weu, CUT_PROBE)
        .await
        .expect_err("connect over a cut link");
    assert!(
        err.to_string().contains("timed out"),
        "expected a timeout, got: {err:#}"
    );
    established.get_mut().write_all(b"during cut\n").await?;
    line.clear();
    assert!(
        timeout(Duration::from_millis(800), established.read_line(&mut line))
            .await
            .is_err(),
        "an echo came back over a cut link: {line:?}"
    );
    let m = measure(&tb, "WNAM", seas, "seas-1", 1).await?;
    assert_at_least(
        "WNAM->SEAS while WNAM-WEU is cut",
        &m,
        Duration::from_millis(160),
    );
    let c = tb.counters()?;
    assert!(
        c.link("WNAM", "WEU", "drop_cut") > 0,
        "cut drops not counted: {}",
        tb.show()?
    );

    // Heal: connects work again.
    tb.heal("WNAM", "WEU")?;
    let m = measure(&tb, "WNAM", weu, "weu-1", 3).await?;
    assert_at_least("WNAM->WEU after heal", &m, Duration::from_millis(75));
    // TCP retransmits what the cut ate: the stalled echo arrives.
    line.clear();
    timeout(Duration::from_secs(10), established.read_line(&mut line))
        .await
        .context("the open connection did not recover after heal")??;
    assert_eq!(line, "during cut\n");

    // Set: a higher latency raises the lower bound; both directions.
    let slow = Duration::from_millis(300);
    tb.set_latency("WEU", "WNAM", slow)?;
    assert!(
        tb.show()?.contains("link WNAM->WEU rtt=300ms"),
        "{}",
        tb.show()?
    );
    let m = measure(&tb, "WNAM", weu, "weu-1", 3).await?;
    eprintln!("WNAM->WEU at 300ms: {m:?}");
    assert_at_least("WNAM->WEU at 300ms", &m, slow);

    tb.down()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_never_forwards_outside_the_testbed_range() -> Result<()> {
    if skip_without_root("wan_never_forwards_outside_the_testbed_range") {
        return Ok(());
    }
    let tb = Testbed::up(WAN_EMU, &DEFAULT_REGIONS)?;
    let weu = SocketAddr::new(tb.addr("WEU", 11), 7000);
    let _origin = start_origin(&tb, "WEU", "weu-1", weu).await?;

    // Inside WNAM's namespace only: a route that sends 10.251.0.0/16 to the emulator, and a
    // local address outside the testbed range to send from. Nothing of it leaves the
    // namespace but into wan-emu, which must drop it.
    tb.ip(
        "WNAM",
        &[
            "route",
            "add",
            "10.251.0.0/16",
            "dev",
            switchyard_tests::wan::DEV,
        ],
    )?;
    tb.ip("WNAM", &["address", "add", "10.251.1.1/32", "dev", "lo"])?;
    let before = tb.counters()?;

    let outside_dst: SocketAddr = "10.251.2.11:7000".parse()?;
    let err = connect(&tb, "WNAM", None, outside_dst, CUT_PROBE)
        .await
        .expect_err("connect outside 10.250/16");
    assert!(err.to_string().contains("timed out"), "{err:#}");
    let outside_src: IpAddr = "10.251.1.1".parse()?;
    let err = connect(&tb, "WNAM", Some(outside_src), weu, CUT_PROBE)
        .await
        .expect_err("connect from outside 10.250/16");
    assert!(err.to_string().contains("timed out"), "{err:#}");

    let after = tb.counters()?;
    // At least one SYN each (more with retransmits).
    assert!(
        after.dropped("outside") >= before.dropped("outside") + 2,
        "outside drops {} -> {}:\n{}",
        before.dropped("outside"),
        after.dropped("outside"),
        tb.show()?
    );
    for (link, fields) in &after.links {
        assert_eq!(
            fields.get("forwarded"),
            before.links[link].get("forwarded"),
            "{link:?} forwarded a packet from or to outside 10.250.0.0/16"
        );
    }

    // The same origin is reachable from a testbed address: the drops were for the range.
    measure(&tb, "WNAM", weu, "weu-1", 1).await?;
    tb.down()
}

/// Whether a process exists and is not a zombie.
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit(") ")
        .next()
        .is_some_and(|s| !s.starts_with('Z'))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_teardown_leaves_nothing_even_on_panic() -> Result<()> {
    if skip_without_root("wan_teardown_leaves_nothing_even_on_panic") {
        return Ok(());
    }
    // A testbed with a process running inside, dropped by a panic's unwinding.
    let (tx, rx) = std::sync::mpsc::channel();
    let res = std::thread::spawn(move || {
        let tb = Testbed::up(WAN_EMU, &["WNAM", "WEU"]).expect("testbed up");
        let child = tb.exec("WEU", "sleep", ["30"]).expect("sleep in WEU");
        let names: Vec<String> = tb.regions().iter().map(|r| r.netns.clone()).collect();
        let emu = tb.emulator_pid().expect("emulator runs");
        tx.send((names, child, emu, tb.dir().to_path_buf()))
            .expect("send");
        panic!("deliberate panic with a testbed up");
    })
    .join();
    assert!(res.is_err(), "the thread should have panicked");
    let (names, mut child, emu, dir) = rx.recv()?;
    for ns in &names {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    // The sleep was killed (teardown waits until the namespace has no process), and the
    // emulator stopped and was reaped.
    let status = child.try_wait()?;
    assert!(
        status.is_some(),
        "process {} in the testbed still running after teardown",
        child.id()
    );
    assert!(!running(emu), "wan-emu {emu} still running after teardown");
    assert!(!dir.exists(), "{} left behind", dir.display());

    // A clean down: namespaces, the emulator's devices (they live in the namespaces) and its
    // temporary directory are gone.
    let tb = Testbed::up(WAN_EMU, &["WNAM", "SEAS"])?;
    let names: Vec<String> = tb.regions().iter().map(|r| r.netns.clone()).collect();
    let (emu, dir) = (
        tb.emulator_pid().expect("emulator runs"),
        tb.dir().to_path_buf(),
    );
    assert!(tb
        .ip("WNAM", &["link", "show", "dev", switchyard_tests::wan::DEV])
        .is_ok());
    tb.down()?;
    for ns in &names {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    assert!(!running(emu), "wan-emu {emu} still running after down");
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}
