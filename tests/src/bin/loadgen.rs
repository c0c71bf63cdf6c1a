//! `loadgen`: the load generator and upstream of the proxy benchmark (tests/bench/run.sh).
//!
//! Modes:
//! - `serve ADDR`: 64-byte request/reply server. Each request is answered with the same 64
//!   bytes; a request whose first byte is `C` is answered and then the server closes first
//!   (so TIME_WAIT lands on the server side, not on the client's ephemeral ports).
//! - `rate ADDR --conns C --secs S`: C workers, each looping connect, write 64, read 64, close;
//!   prints connections per second and the p50/p99 connect+reply time in microseconds.
//! - `pingpong ADDR --secs S`: one persistent connection, 64-byte ping-pong; prints RTT p50/p99.
//! - `hold ADDR --count N --secs S`: opens N connections (one 64-byte exchange each, so the
//!   whole path is established), prints `ready`, holds them idle for S seconds or until
//!   SIGTERM/SIGINT (or stdin EOF with `--stdin`), then checks they still answer and closes.
//! - `report --samples FILE --json OUT --txt OUT`: medians of the samples run.sh collected,
//!   as a table and as JSON.
//!
//! Every loop is bounded in count and in time. Results go to stdout as one `key=value` line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

/// Request and reply size.
const MSG: usize = 64;
/// First byte of a request after which the server closes.
const CLOSE: u8 = b'C';
/// First byte of a request on a connection that stays open.
const KEEP: u8 = b'P';
/// Latency samples kept at most per run (memory bound; later samples are dropped).
const MAX_SAMPLES: usize = 4_000_000;
/// Iterations at most per rate worker / ping-pong run, whatever the duration.
const MAX_ITERS: u64 = 50_000_000;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for tests/bench/run.sh")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// 64-byte request/reply server.
    Serve {
        addr: SocketAddr,
        /// Runtime worker threads (1: a current-thread runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// New connections per second with a 64-byte request and reply.
    Rate {
        addr: SocketAddr,
        /// Concurrent workers.
        #[arg(long, default_value_t = 32)]
        conns: usize,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Warm-up seconds, not measured.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Runtime worker threads (1: a current-thread runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Per-step timeout in milliseconds (connect, reply, close).
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Round-trip time of 64-byte messages over one persistent connection.
    Pingpong {
        addr: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Opens N connections and holds them idle.
    Hold {
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Longest hold, in seconds; SIGTERM or SIGINT ends it earlier.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Also end the hold when stdin reaches EOF.
        #[arg(long)]
        stdin: bool,
        /// Bound on the whole opening phase, in seconds.
        #[arg(long, default_value_t = 60.0)]
        open_secs: f64,
    },
    /// Turns run.sh's samples into the results table and JSON.
    Report {
        #[arg(long)]
        samples: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        txt: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.cmd {
        Cmd::Serve { addr, threads } => runtime(threads).and_then(|rt| rt.block_on(serve(addr))),
        Cmd::Rate {
            addr,
            conns,
            secs,
            warmup,
            threads,
            timeout_ms,
        } => runtime(threads).and_then(|rt| {
            rt.block_on(rate(
                addr,
                conns.clamp(1, 10_000),
                secs_arg(secs),
                secs_arg(warmup),
                Duration::from_millis(timeout_ms),
            ))
        }),
        Cmd::Pingpong { addr, secs, warmup } => {
            runtime(1).and_then(|rt| rt.block_on(pingpong(addr, secs_arg(secs), secs_arg(warmup))))
        }
        Cmd::Hold {
            addr,
            count,
            secs,
            concurrency,
            stdin,
            open_secs,
        } => runtime(1).and_then(|rt| {
            rt.block_on(hold(
                addr,
                count.min(1_000_000),
                secs_arg(secs),
                concurrency.clamp(1, 4096),
                stdin,
                secs_arg(open_secs),
            ))
        }),
        Cmd::Report { samples, json, txt } => report(&samples, &json, &txt),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Seconds from the command line, bounded to a day.
fn secs_arg(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.0, 86_400.0)
    } else {
        0.0
    })
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.min(64))
            .enable_all()
            .build()?
    };
    Ok(rt)
}

// ---------------------------------------------------------------------------------------
// serve

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let listener = socket.listen(4096)?;
    eprintln!("loadgen: serving 64-byte replies on {addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream));
            }
            Err(_) => {
                // EMFILE and friends: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; MSG];
    // One connection answers as long as requests come; each read waits for a client that
    // may be idle for a long time (hold mode), so there is no timeout here, but the loop
    // ends on EOF or any error.
    loop {
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
        if buf[0] == CLOSE {
            // Close first: FIN from this side, TIME_WAIT here.
            return;
        }
    }
}

fn request(kind: u8) -> [u8; MSG] {
    let mut req = [b'x'; MSG];
    req[0] = kind;
    req
}

// ---------------------------------------------------------------------------------------
// rate

/// One connection: connect, request, reply (the measured part), then wait for the server's
/// FIN so that the client is the passive closer.
async fn one_conn(addr: SocketAddr, step: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut s = timeout(step, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    s.write_all(&request(CLOSE)).await?;
    let mut buf = [0u8; MSG];
    timeout(step, s.read_exact(&mut buf))
        .await
        .context("reply timed out")??;
    let took = start.elapsed();
    if buf[0] != CLOSE {
        bail!("wrong reply");
    }
    // EOF from the server (through the proxy).
    let mut rest = [0u8; 16];
    match timeout(step, s.read(&mut rest)).await {
        Ok(Ok(0)) => Ok(took),
        Ok(Ok(_)) => bail!("unexpected bytes after the reply"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no EOF after the reply"),
    }
}

async fn rate(
    addr: SocketAddr,
    conns: usize,
    secs: Duration,
    warmup: Duration,
    step: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let measure_from = t0 + warmup;
    let end = measure_from + secs;
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::with_capacity(conns);
    let per_worker_cap = MAX_SAMPLES / conns;
    for _ in 0..conns {
        let errors = errors.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(per_worker_cap.min(65_536));
            let mut done = 0u64;
            for _ in 0..MAX_ITERS {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let measured = now >= measure_from;
                match one_conn(addr, step).await {
                    Ok(took) => {
                        if measured && Instant::now() <= end {
                            done += 1;
                            if lat.len() < per_worker_cap {
                                lat.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                            }
                        }
                    }
                    Err(e) => {
                        if measured {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        {
                            let mut f = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if f.is_none() {
                                *f = Some(format!("{e:#}"));
                            }
                        }
                        // Do not spin on a refusing address.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            (done, lat)
        }));
    }
    let mut done = 0u64;
    let mut lat = Vec::new();
    for t in tasks {
        let (d, l) = t.await?;
        done += d;
        lat.extend(l);
    }
    let elapsed = secs.as_secs_f64().max(1e-9);
    lat.sort_unstable();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "conns={conns} secs={:.3} completed={done} cps={:.1} p50_us={} p99_us={} max_us={} errors={errors}",
        elapsed,
        done as f64 / elapsed,
        pct_u32(&lat, 50.0),
        pct_u32(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
    );
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("loadgen rate: first error: {e}");
    }
    if done == 0 {
        bail!("no connection completed");
    }
    Ok(())
}

fn pct_u32(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pct_f64(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------
// pingpong

async fn pingpong(addr: SocketAddr, secs: Duration, warmup: Duration) -> anyhow::Result<()> {
    let step = Duration::from_secs(2);
    let mut s = timeout(step, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    let req = request(KEEP);
    let mut buf = [0u8; MSG];
    let t0 = Instant::now();
    let measure_from = t0 + warmup;
    let end = measure_from + secs;
    let mut rtts: Vec<f64> = Vec::with_capacity(1 << 18);
    for _ in 0..MAX_ITERS {
        let start = Instant::now();
        if start >= end {
            break;
        }
        s.write_all(&req).await?;
        timeout(step, s.read_exact(&mut buf))
            .await
            .context("reply timed out")??;
        if start >= measure_from && rtts.len() < MAX_SAMPLES {
            rtts.push(start.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    if rtts.is_empty() {
        bail!("no round trip measured");
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    rtts.sort_unstable_by(f64::total_cmp);
    println!(
        "count={} p50_us={:.2} p99_us={:.2} mean_us={mean:.2} max_us={:.2}",
        rtts.len(),
        pct_f64(&rtts, 50.0),
        pct_f64(&rtts, 99.0),
        rtts[rtts.len() - 1],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// hold

async fn exchange(s: &mut TcpStream, step: Duration) -> anyhow::Result<()> {
    s.write_all(&request(KEEP)).await?;
    let mut buf = [0u8; MSG];
    timeout(step, s.read_exact(&mut buf))
        .await
        .context("reply timed out")??;
    if buf[0] != KEEP {
        bail!("wrong reply");
    }
    Ok(())
}

async fn hold(
    addr: SocketAddr,
    count: usize,
    secs: Duration,
    concurrency: usize,
    stdin: bool,
    open_secs: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let step = Duration::from_secs(5);
    let t0 = Instant::now();
    let open_deadline = t0 + open_secs;
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let stop_opening = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        if Instant::now() >= open_deadline || stop_opening.load(Ordering::Relaxed) {
            break;
        }
        let permit = sem.clone().acquire_owned().await?;
        let stop_opening = stop_opening.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let r = async {
                let mut s = timeout(step, TcpStream::connect(addr))
                    .await
                    .context("connect timed out")??;
                s.set_nodelay(true)?;
                exchange(&mut s, step).await?;
                anyhow::Ok(s)
            }
            .await;
            if r.is_err() {
                // Out of descriptors or ports: no point in trying thousands more.
                stop_opening.store(true, Ordering::Relaxed);
            }
            r
        });
    }
    let mut open = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => open.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let open_took = t0.elapsed().as_secs_f64();
    println!(
        "ready open={} failed={failed} open_secs={open_took:.2}",
        open.len()
    );
    if let Some(e) = &first_error {
        eprintln!("loadgen hold: first error: {e}");
    }
    // Flush now: run.sh waits for this line before measuring.
    use std::io::Write;
    std::io::stdout().flush()?;

    let stdin_eof = async {
        if stdin {
            let mut sink = [0u8; 256];
            let mut input = tokio::io::stdin();
            // Bounded: each read either returns data (a few per second at most from a
            // script) or EOF.
            for _ in 0..1_000_000 {
                match input.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        } else {
            std::future::pending::<()>().await
        }
    };
    let why = tokio::select! {
        _ = tokio::time::sleep(secs) => "time",
        _ = term.recv() => "signal",
        _ = int.recv() => "signal",
        _ = stdin_eof => "stdin",
    };
    // Are they all still proxied? One more exchange each, a few at a time, bounded.
    let check_deadline = Instant::now() + Duration::from_secs(30);
    let mut alive = 0usize;
    let mut checked = 0usize;
    for chunk in open.chunks_mut(256) {
        if Instant::now() >= check_deadline {
            break;
        }
        let results = futures_join(chunk.iter_mut().map(|s| exchange(s, step))).await;
        checked += results.len();
        alive += results.iter().filter(|r| r.is_ok()).count();
    }
    println!("done reason={why} alive={alive} checked={checked}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Joins a batch of futures on the current task (no extra dependency).
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------
// report

/// The systems, in column order: (key used in the samples, column title).
const SYSTEMS: &[(&str, &str)] = &[
    ("switchyard", "Switchyard"),
    ("haproxy-splice", "HAProxy(splice)"),
    ("haproxy", "HAProxy(no splice)"),
    ("nginx", "nginx"),
    ("direct", "direct"),
];

struct Metric {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    /// Decimals shown.
    prec: usize,
    target: Option<Target>,
}

#[derive(Clone, Copy)]
enum Target {
    /// Switchyard at least this many times HAProxy(splice).
    AtLeastTimesHaproxy(f64),
    /// Switchyard at most this many times HAProxy(splice).
    AtMostTimesHaproxy(f64),
    /// Switchyard below this absolute value.
    Below(f64),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::AtLeastTimesHaproxy(x) => format!(">= {x}x HAProxy(splice)"),
            Target::AtMostTimesHaproxy(1.0) => "<= HAProxy(splice)".into(),
            Target::AtMostTimesHaproxy(x) => format!("<= {x}x HAProxy(splice)"),
            Target::Below(v) => format!("< {v}"),
        }
    }

    fn met(self, sy: Option<f64>, hap: Option<f64>) -> Option<bool> {
        let sy = sy?;
        match self {
            Target::AtLeastTimesHaproxy(x) => Some(sy >= x * hap?),
            Target::AtMostTimesHaproxy(x) => Some(sy <= x * hap?),
            Target::Below(v) => Some(sy < v),
        }
    }
}

const METRICS: &[Metric] = &[
    Metric {
        key: "bulk1_gbps",
        title: "bulk, 1 stream",
        unit: "Gbit/s",
        higher_is_better: true,
        prec: 2,
        target: Some(Target::AtLeastTimesHaproxy(1.5)),
    },
    Metric {
        key: "bulk1_cpu_s_per_gb",
        title: "proxy CPU, 1 stream",
        unit: "CPU s/GB",
        higher_is_better: false,
        prec: 3,
        target: None,
    },
    Metric {
        key: "bulk8_gbps",
        title: "bulk, 8 streams",
        unit: "Gbit/s",
        higher_is_better: true,
        prec: 2,
        target: Some(Target::AtLeastTimesHaproxy(1.5)),
    },
    Metric {
        key: "bulk8_cpu_s_per_gb",
        title: "proxy CPU, 8 streams",
        unit: "CPU s/GB",
        higher_is_better: false,
        prec: 3,
        target: None,
    },
    Metric {
        key: "bulk1_capped_gbps",
        title: "bulk, 1 stream, capped CPU",
        unit: "Gbit/s",
        higher_is_better: true,
        prec: 2,
        target: Some(Target::AtLeastTimesHaproxy(1.5)),
    },
    Metric {
        key: "bulk8_capped_gbps",
        title: "bulk, 8 streams, capped CPU",
        unit: "Gbit/s",
        higher_is_better: true,
        prec: 2,
        target: Some(Target::AtLeastTimesHaproxy(1.5)),
    },
    Metric {
        key: "rate_cps",
        title: "new conns (64 B req/reply)",
        unit: "conn/s",
        higher_is_better: true,
        prec: 0,
        target: Some(Target::AtLeastTimesHaproxy(1.0)),
    },
    Metric {
        key: "rate_p50_us",
        title: "connect+reply p50",
        unit: "us",
        higher_is_better: false,
        prec: 0,
        target: None,
    },
    Metric {
        key: "rate_p99_us",
        title: "connect+reply p99",
        unit: "us",
        higher_is_better: false,
        prec: 0,
        target: Some(Target::AtMostTimesHaproxy(1.0)),
    },
    Metric {
        key: "rate_cpu_us_per_conn",
        title: "proxy CPU per connection",
        unit: "CPU us/conn",
        higher_is_better: false,
        prec: 1,
        target: None,
    },
    Metric {
        key: "rtt_p50_us",
        title: "RTT p50 (persistent)",
        unit: "us",
        higher_is_better: false,
        prec: 2,
        target: None,
    },
    Metric {
        key: "rtt_p99_us",
        title: "RTT p99 (persistent)",
        unit: "us",
        higher_is_better: false,
        prec: 2,
        target: Some(Target::AtMostTimesHaproxy(1.0)),
    },
    Metric {
        key: "rtt_cpu_us_per_rt",
        title: "proxy CPU per round trip",
        unit: "CPU us/RT",
        higher_is_better: false,
        prec: 2,
        target: None,
    },
    Metric {
        key: "idle_rss_per_conn",
        title: "idle memory, RSS",
        unit: "B/conn",
        higher_is_better: false,
        prec: 0,
        target: Some(Target::Below(4096.0)),
    },
    Metric {
        key: "idle_pss_per_conn",
        title: "idle memory, PSS",
        unit: "B/conn",
        higher_is_better: false,
        prec: 0,
        target: None,
    },
];

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => {
            // Enough digits, no exponent surprises for the sizes seen here.
            let s = format!("{x:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s.is_empty() || s == "-" {
                "0".into()
            } else {
                s.to_string()
            }
        }
        _ => "null".into(),
    }
}

fn fmt_val(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "-".into(),
    }
}

/// Samples file format (tab-separated, one record per line):
///   `S <metric> <system> <rep> <value>` a measurement,
///   `M <key> <value...>`                 run metadata (value: the rest of the line),
///   `N <text>`                           a note printed under the table.
fn report(samples: &PathBuf, json: &PathBuf, txt: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(samples)
        .with_context(|| format!("cannot read {}", samples.display()))?;
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut meta: Vec<(String, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.first().copied() {
            Some("S") if f.len() >= 5 => {
                let v: f64 = match f[4].trim().parse() {
                    Ok(v) => v,
                    Err(_) => {
                        eprintln!("loadgen report: line {}: bad value {:?}", i + 1, f[4]);
                        continue;
                    }
                };
                values
                    .entry((f[1].to_string(), f[2].to_string()))
                    .or_default()
                    .push(v);
            }
            Some("M") if f.len() >= 3 => meta.push((f[1].to_string(), f[2..].join("\t"))),
            Some("N") if f.len() >= 2 => notes.push(f[1..].join("\t")),
            _ if line.trim().is_empty() => {}
            _ => eprintln!("loadgen report: line {}: ignored", i + 1),
        }
    }
    let get = |m: &str, s: &str| values.get(&(m.to_string(), s.to_string()));
    let med = |m: &str, s: &str| get(m, s).and_then(|v| median(v));

    // Text table.
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["measurement".to_string(), "unit".to_string()];
    header.extend(SYSTEMS.iter().map(|(_, t)| t.to_string()));
    header.extend([
        "SY/HAP(splice)".to_string(),
        "SY/direct".to_string(),
        "target".to_string(),
    ]);
    rows.push(header);
    let mut json_metrics = Vec::new();
    let mut verdicts = Vec::new();
    for m in METRICS {
        let meds: Vec<Option<f64>> = SYSTEMS.iter().map(|(s, _)| med(m.key, s)).collect();
        let sy = meds[0];
        let hap = meds[1];
        let direct = meds[4];
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let r_hap = ratio(sy, hap);
        let r_direct = ratio(sy, direct);
        let met = m.target.and_then(|t| t.met(sy, hap));
        let target_txt = match (m.target, met) {
            (Some(t), Some(true)) => format!("{}: MET", t.describe()),
            (Some(t), Some(false)) => format!("{}: MISSED", t.describe()),
            (Some(t), None) => format!("{}: n/a", t.describe()),
            (None, _) => String::new(),
        };
        if let Some(t) = m.target {
            verdicts.push(format!(
                "{:<28} {:<26} {}",
                m.title,
                t.describe(),
                match met {
                    Some(true) => "MET",
                    Some(false) => "MISSED",
                    None => "not measured",
                }
            ));
        }
        let mut row = vec![m.title.to_string(), m.unit.to_string()];
        row.extend(meds.iter().map(|v| fmt_val(*v, m.prec)));
        row.push(fmt_val(r_hap, 2));
        row.push(fmt_val(r_direct, 2));
        row.push(target_txt);
        rows.push(row);

        let mut j = String::new();
        let _ = write!(
            j,
            "{{\"key\":{},\"title\":{},\"unit\":{},\"higher_is_better\":{},",
            json_str(m.key),
            json_str(m.title),
            json_str(m.unit),
            m.higher_is_better
        );
        j.push_str("\"median\":{");
        for (i, (s, _)) in SYSTEMS.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            let _ = write!(j, "{}:{}", json_str(s), json_num(meds[i]));
        }
        j.push_str("},\"samples\":{");
        for (i, (s, _)) in SYSTEMS.iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            let v = get(m.key, s).cloned().unwrap_or_default();
            let list: Vec<String> = v.iter().map(|x| json_num(Some(*x))).collect();
            let _ = write!(j, "{}:[{}]", json_str(s), list.join(","));
        }
        let _ = write!(
            j,
            "}},\"ratio_switchyard_over_haproxy_splice\":{},\"ratio_switchyard_over_direct\":{},",
            json_num(r_hap),
            json_num(r_direct)
        );
        match m.target {
            Some(t) => {
                let _ = write!(
                    j,
                    "\"target\":{{\"description\":{},\"met\":{}}}}}",
                    json_str(&t.describe()),
                    match met {
                        Some(b) => b.to_string(),
                        None => "null".into(),
                    }
                );
            }
            None => j.push_str("\"target\":null}"),
        }
        json_metrics.push(j);
    }

    let ncols = rows[0].len();
    let widths: Vec<usize> = (0..ncols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "Switchyard proxy benchmark (tests/bench/run.sh)");
    for (k, v) in &meta {
        let _ = writeln!(out, "  {k}: {v}");
    }
    out.push('\n');
    for (ri, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c < 2 || c == ncols - 1 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
            if c + 1 < ncols {
                line.push_str("  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if ri == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (ncols - 1);
            let _ = writeln!(out, "{}", "-".repeat(total.min(200)));
        }
    }
    out.push_str("\nMedians of the runs; SY = Switchyard. Ratios are Switchyard divided by the other system.\n");
    out.push_str("\nTargets (Switchyard against HAProxy with splice):\n");
    for v in &verdicts {
        let _ = writeln!(out, "  {v}");
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in &notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    std::fs::write(txt, &out).with_context(|| format!("cannot write {}", txt.display()))?;
    print!("{out}");

    let mut j = String::from("{\n  \"meta\": {");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        let _ = write!(j, "\n    {}: {}", json_str(k), json_str(v));
    }
    j.push_str("\n  },\n  \"systems\": [");
    let sys: Vec<String> = SYSTEMS.iter().map(|(s, _)| json_str(s)).collect();
    j.push_str(&sys.join(", "));
    j.push_str("],\n  \"metrics\": [\n    ");
    j.push_str(&json_metrics.join(",\n    "));
    j.push_str("\n  ],\n  \"notes\": [");
    let n: Vec<String> = notes
        .iter()
        .map(|n| format!("\n    {}", json_str(n)))
        .collect();
    j.push_str(&n.join(","));
    j.push_str("\n  ]\n}\n");
    std::fs::write(json, j).with_context(|| format!("cannot write {}", json.display()))?;
    Ok(())
}
