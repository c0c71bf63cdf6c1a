//! The status endpoint's defences: a client may not hold its connections (and so the node's
//! descriptors) by sending half a request, by idling on a kept-alive connection, by moving no
//! bytes at all, or by opening more connections than the cap. Timeouts are shortened through
//! `StartOptions` so that each case ends quickly; every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_node::status::{self, StatusLimits};
use switchyard_node::{App, Config, StartOptions};
use switchyard_tests::harness::{eventually, init_logs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that no case here ends by waiting for it.
const LONG: Duration = Duration::from_secs(120);
/// How long a test waits for what it expects before failing.
const DEADLINE: Duration = Duration::from_secs(10);

async fn node(limits: StatusLimits) -> App {
    init_logs();
    let text = "[node]\nid = \"status-1\"\nregion = \"WEU\"\nstatus_listen = \"127.0.0.1:0\"\n";
    let cfg = Config::parse(text, None).expect("test config is valid");
    App::start(
        cfg,
        StartOptions {
            status_limits: limits,
            ..Default::default()
        },
    )
    .await
    .expect("node starts")
}

/// Reads until the server closes the connection (end of stream or reset) and returns what
/// came before; an error if it is still open at the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => anyhow::bail!(
                "the server kept the connection open past {DEADLINE:?} (got {} bytes)",
                got.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one answer of known length framing (`content-length`) off a kept-alive connection.
async fn read_answer(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + len {
                return Ok(text);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("no whole answer within {DEADLINE:?}"))??;
        anyhow::ensure!(n > 0, "closed before the answer was whole");
        got.extend_from_slice(&buf[..n]);
    }
}

async fn metric(addr: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, body) = status::http_get(addr, "/metrics").await.ok()?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until the metric whose line starts with `line_start` reads `want`: the server
/// counts a cut connection just after closing it.
async fn metric_reaches(addr: SocketAddr, line_start: &str, want: f64) -> anyhow::Result<()> {
    eventually(&format!("{line_start} reads {want}"), DEADLINE, || async {
        metric(addr, line_start).await == Some(want)
    })
    .await
}

#[tokio::test]
async fn a_client_that_sends_half_a_request_is_cut_off() -> anyhow::Result<()> {
    let app = node(StatusLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: LONG,
        max_connections: 256,
    })
    .await;
    let mut slow = TcpStream::connect(app.status_addr()).await?;
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .await?;
    read_until_closed(&mut slow).await?;
    metric_reaches(
        app.status_addr(),
        "switchyard_status_connections_timed_out_total{reason=\"header\"}",
        1.0,
    )
    .await?;
    // Whole requests are still answered.
    let (code, body) = status::http_get(app.status_addr(), "/live").await?;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_client_is_cut_off() -> anyhow::Result<()> {
    let app = node(StatusLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: LONG,
        max_connections: 256,
    })
    .await;
    let mut client = TcpStream::connect(app.status_addr()).await?;
    // Two requests on one connection: keep-alive works, and each answer is whole.
    for _ in 0..2 {
        client
            .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let answer = read_answer(&mut client).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok\n"), "{answer}");
    }
    // Then the client says nothing more, and the server lets it go.
    let after = read_until_closed(&mut client).await?;
    assert!(
        after.is_empty() || after.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&after)
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_on_which_no_byte_moves_is_cut_off() -> anyhow::Result<()> {
    // The header timeout is long: only the idle timeout can end these.
    let app = node(StatusLimits {
        header_timeout: LONG,
        idle_timeout: Duration::from_millis(300),
        max_connections: 256,
    })
    .await;
    let mut silent = TcpStream::connect(app.status_addr()).await?;
    read_until_closed(&mut silent).await?;
    let mut stalled = TcpStream::connect(app.status_addr()).await?;
    stalled.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
    read_until_closed(&mut stalled).await?;
    metric_reaches(
        app.status_addr(),
        "switchyard_status_connections_timed_out_total{reason=\"idle\"}",
        2.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_earlier_ones_work() -> anyhow::Result<()> {
    let app = node(StatusLimits {
        header_timeout: LONG,
        idle_timeout: LONG,
        max_connections: 2,
    })
    .await;
    let addr = app.status_addr();
    let mut first = TcpStream::connect(addr).await?;
    let second = TcpStream::connect(addr).await?;
    // The third is accepted by the kernel, then closed at once, without an answer.
    let mut third = TcpStream::connect(addr).await?;
    let _ = third
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let refused = read_until_closed(&mut third).await?;
    assert!(
        refused.is_empty(),
        "answered past the cap: {}",
        String::from_utf8_lossy(&refused)
    );
    // The connections within the cap are served.
    first
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let answer = read_answer(&mut first).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // One closed frees its slot for the next client.
    drop(second);
    eventually("a new connection is served", DEADLINE, || async {
        status::http_get(addr, "/live")
            .await
            .is_ok_and(|(code, _)| code == 200)
    })
    .await?;
    // At least the third; the wait for a free slot may have been refused a few times too.
    eventually("the refusal is counted", DEADLINE, || async {
        metric(addr, "switchyard_status_connections_refused_total")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await?;
    Ok(())
}
