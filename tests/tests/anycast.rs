//! Anycast on one node, in process, with the App that production runs (port 0): a prefix is
//! announced while its apps can be served and withdrawn when they cannot (`/v1/anycast`),
//! and on SIGTERM's path (`App::shutdown`) the node withdraws first, keeps serving open and
//! new connections through `withdraw_grace`, and only then drains.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_node::core::anycast::AnycastReport;
use switchyard_node::status::http_get;
use switchyard_tests::harness::{app_addr, eventually, name_via, node, origin};
use switchyard_tests::origin::{connect_from, read_line};
use tokio::io::{AsyncWriteExt, BufReader};

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

    game.restart().await?;
    eventually("announced again once the game is back", WAIT, || async {
        announced(status).await == [true, true]
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
