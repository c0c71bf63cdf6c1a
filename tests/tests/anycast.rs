//! Anycast on one node, in process, with the App that production runs (port 0): a prefix is
//! announced while its apps can be served and withdrawn when they cannot (`/v1/anycast`),
//! and on SIGTERM's path (`App::shutdown`) the node withdraws first, keeps serving open and
//! new connections through `withdraw_grace`, and only then drains.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::BTreeMap;
use switchyard_node::core::anycast::AnycastReport;
use switchyard_node::status::http_get;
use switchyard_tests::harness::{app_addr, eventually, name_via, node, origin};
use switchyard_tests::origin::{connect_from, read_line};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::ChildStdout;

const WAIT: Duration = Duration::from_secs(10);

async fn anycast(status: SocketAddr) -> AnycastReport {
    let (code, body) = http_get(status, "/v1/anycast")
        .await
        .expect("status answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("an anycast report")
}

async fn announced(status: SocketAddr) -> Vec<bool> {
    anycast(status)
        .await
        .prefixes
        .iter()
        .map(|p| p.announce)
        .collect()
}

fn config(web: SocketAddr, game: SocketAddr, grace: &str) -> String {
    format!(
        r#"
[[monitor]]
name = "tcp"
type = "tcp"
interval = "100ms"
timeout = "100ms"
retries = 0

[[pool]]
name = "web"
monitor = "tcp"
origins = [{{ name = "web-1", address = "{web}" }}]

[[pool]]
name = "game"
monitor = "tcp"
origins = [{{ name = "game-1", address = "{game}" }}]

[[load_balancer]]
name = "web"
default_pools = ["web"]

[[load_balancer]]
name = "game"
default_pools = ["game"]

[[app]]
name = "web"
listen = "127.0.0.1:0"
load_balancer = "web"

[[app]]
name = "game"
listen = "127.0.0.1:0"
load_balancer = "game"

[anycast]
withdraw_grace = "{grace}"
hold_up = "200ms"
hold_down = "0s"

[[anycast.prefix]]
prefix = "192.0.2.0/24"
apps = ["web", "game"]

[[anycast.prefix]]
prefix = "198.51.100.0/24"
apps = ["web"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_is_announced_while_its_apps_can_be_served() -> anyhow::Result<()> {
    let web = origin("web-1").await;
    let mut game = origin("game-1").await;
    let app = node(&config(web.addr(), game.addr(), "0s")).await;
    let status = app.status_addr();

    eventually("both prefixes announced", WAIT, || async {
        announced(status).await == [true, true]
    })
    .await?;

    // The game's only origin stops: the prefix that carries the game is withdrawn, with
    // why; the one that carries only the web stays.
    game.stop().await;
    eventually("the game's prefix withdrawn", WAIT, || async {
        announced(status).await == [false, true]
    })
    .await?;
    let r = anycast(status).await;
    let why = r.prefixes[0].reason.clone().unwrap_or_default();
    assert!(
        why.contains("app \"game\" cannot be served") && why.contains("no healthy pool (game)"),
        "{why}"
    );

    let out = tokio::process::Command::new(switchyard_tests::harness::switchyard_bin()?)
        .args(["status", "--addr", &status.to_string()])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ANYCAST 192.0.2.0/24 (web, game): withdrawn since ")
            && text.contains("; app \"game\" cannot be served")
            && text.contains("ANYCAST 198.51.100.0/24 (web): announced since "),
        "{text}"
    );
    let metrics = http_get(status, "/metrics").await?.1;
    assert!(
        metrics.contains("switchyard_anycast_announced{prefix=\"192.0.2.0/24\"} 0")
            && metrics.contains("switchyard_anycast_announced{prefix=\"198.51.100.0/24\"} 1"),
        "{metrics}"
    );

    game.restart().await?;
    eventually("announced again once the game is back", WAIT, || async {
        announced(status).await == [true, true]
    })
    .await?;
    app.shutdown(Duration::ZERO).await;
    Ok(())
}

/// A reload changes the prefixes: kept ones keep their state, new ones start withdrawn (and
/// wait out hold_up, here an hour, so that nothing races), removed ones leave the report and
/// the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_prefixes() -> anyhow::Result<()> {
    let web = origin("web-1").await;
    let game = origin("game-1").await;
    let body = config(web.addr(), game.addr(), "0s");
    let app = node(&body).await;
    let status = app.status_addr();
    eventually("both prefixes announced", WAIT, || async {
        announced(status).await == [true, true]
    })
    .await?;
    let text = format!(
        "[node]\nid = \"test-1\"\nregion = \"WEU\"\nstatus_listen = \"127.0.0.1:0\"\n\n{}",
        body.replace("198.51.100.0/24", "203.0.113.0/24")
            .replace("hold_up = \"200ms\"", "hold_up = \"1h\"")
    );
    app.reload(switchyard_node::Config::parse(&text, None)?)
        .await?;
    let r = anycast(status).await;
    let now: Vec<(String, bool)> = r
        .prefixes
        .iter()
        .map(|p| (p.prefix.to_string(), p.announce))
        .collect();
    assert_eq!(
        now,
        [
            ("192.0.2.0/24".to_string(), true),
            ("203.0.113.0/24".to_string(), false)
        ]
    );
    eventually("the metric follows the new list", WAIT, || async {
        let metrics = http_get(status, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        metrics.contains("switchyard_anycast_announced{prefix=\"192.0.2.0/24\"} 1")
            && metrics.contains("switchyard_anycast_announced{prefix=\"203.0.113.0/24\"} 0")
            && !metrics.contains("198.51.100.0/24")
    })
    .await?;
    app.shutdown(Duration::ZERO).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_withdraws_first_serves_through_the_grace_then_drains() -> anyhow::Result<()> {
    let web = origin("web-1").await;
    let game = origin("game-1").await;
    // Long enough for the checks below to run inside it; the test waits on conditions,
    // never on the grace itself.
    let app = std::sync::Arc::new(node(&config(web.addr(), game.addr(), "5s")).await);
    let status = app.status_addr();
    let addr = app_addr(&app, "web").await;
    eventually("both prefixes announced", WAIT, || async {
        announced(status).await == [true, true]
    })
    .await?;

    // A connection opened before the signal.
    let mut open = BufReader::new(connect_from(addr, None).await?);
    assert_eq!(read_line(&mut open).await?, "web-1");

    let stopping = {
        let app = app.clone();
        tokio::spawn(async move { app.shutdown(Duration::from_secs(5)).await })
    };
    eventually("withdrawn at once on SIGTERM", WAIT, || async {
        let r = anycast(status).await;
        r.stopping && r.prefixes.iter().all(|p| !p.announce)
    })
    .await?;
    let (code, body) = http_get(status, "/ready").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("anycast prefixes withdrawn"), "{body}");

    // Still serving: new connections, and the open one.
    assert_eq!(name_via(addr).await, "web-1");
    open.get_mut().write_all(b"still here\n").await?;
    assert_eq!(read_line(&mut open).await?, "still here");
    assert!(
        !stopping.is_finished(),
        "the node stopped before its withdraw_grace ran out"
    );

    // Then it drains: the open connection finishes on its own, and the node stops.
    drop(open);
    let cut = tokio::time::timeout(Duration::from_secs(30), stopping).await??;
    assert_eq!(cut, 0);
    assert!(
        !name_via(addr).await.starts_with("web-"),
        "a drained node accepts no more"
    );
    Ok(())
}

/// `switchyard anycast` (the binary, as ExaBGP runs it) against a node in process: it states
/// every prefix once, then one line per change, and withdraws what it announced when the
/// node goes away, still running to see it back; it stops when ExaBGP closes its stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_speaks_exabgp_lines_as_the_node_changes() -> anyhow::Result<()> {
    let web = origin("web-1").await;
    let mut game = origin("game-1").await;
    let app = node(&config(web.addr(), game.addr(), "0s")).await;
    let status = app.status_addr();
    let mut follower = tokio::process::Command::new(switchyard_tests::harness::switchyard_bin()?)
        .args([
            "anycast",
            "--addr",
            &status.to_string(),
            "--interval",
            "100ms",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(follower.stdout.take().expect("piped")).lines();
    // What the follower has told the router so far, by prefix.
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    let (first, second) = ("192.0.2.0/24", "198.51.100.0/24");
    until(
        &mut lines,
        &mut said,
        &[(first, "announce"), (second, "announce")],
    )
    .await?;
    game.stop().await;
    until(
        &mut lines,
        &mut said,
        &[(first, "withdraw"), (second, "announce")],
    )
    .await?;
    app.shutdown(Duration::ZERO).await;
    until(
        &mut lines,
        &mut said,
        &[(first, "withdraw"), (second, "withdraw")],
    )
    .await?;
    assert!(
        follower.try_wait()?.is_none(),
        "the follower keeps running to see the node back"
    );
    // ExaBGP gone (its end of our stdin closed): the follower stops.
    drop(follower.stdin.take());
    let exit = tokio::time::timeout(WAIT, follower.wait()).await??;
    assert!(exit.success(), "{exit}");
    Ok(())
}

/// Reads the follower's lines into `said` until it has said `want` of each prefix.
async fn until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    said: &mut BTreeMap<String, String>,
    want: &[(&str, &str)],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !want
        .iter()
        .all(|(p, w)| said.get(*p).map(String::as_str) == Some(*w))
    {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("want {want:?}, said {said:?}"))??
            .ok_or_else(|| anyhow::anyhow!("the follower closed its stdout"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [verb @ ("announce" | "withdraw"), "route", prefix, "next-hop", "self"] => {
                said.insert(prefix.to_string(), verb.to_string());
            }
            _ => anyhow::bail!("not an ExaBGP command: {line:?}"),
        }
    }
    Ok(())
}

/// `switchyard check` and `switchyard anycast` name what is wrong with `[anycast]`.
#[test]
fn the_command_line_names_what_is_wrong() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sy-anycast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("node.toml");
    let base = format!(
        "[node]\nid = \"n1\"\nregion = \"WEU\"\n\n{}",
        config("127.0.0.1:1".parse()?, "127.0.0.1:2".parse()?, "1s")
    );
    let run = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(switchyard_tests::harness::switchyard_bin()?)
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    };
    let path = file.display().to_string();

    std::fs::write(&file, base.replace("apps = [\"web\"]", "apps = [\"wbe\"]"))?;
    let (ok, text) = run(&["check", "--config", &path])?;
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "{path}:52: [[anycast.prefix]] 198.51.100.0/24: apps: no [[app]] is named \"wbe\" (known: game, web)"
        )),
        "{text}"
    );

    std::fs::write(&file, &base)?;
    let (ok, text) = run(&["anycast", "--bird", "--config", &path])?;
    assert!(!ok, "{text}");
    assert!(
        text.contains("[anycast] has no bird_include: set the file BIRD's config includes"),
        "{text}"
    );
    let (ok, text) = run(&["anycast", "--config", &path, "--interval", "0s"])?;
    assert!(!ok, "{text}");
    assert!(text.contains("--interval must be above 0"), "{text}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
