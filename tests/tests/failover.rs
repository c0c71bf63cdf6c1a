//! A node in front of two pools of two test origins: failover when the primary's origins stop,
//! failback when they return, within interval x (retries + 1) plus one second.

use std::collections::HashSet;
use std::time::Duration;

use switchyard_tests::harness::{app_addr, eventually, name_via, node, origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_secondary_pool_and_back() -> anyhow::Result<()> {
    let mut p1 = origin("primary-1").await;
    let mut p2 = origin("primary-2").await;
    let s1 = origin("secondary-1").await;
    let s2 = origin("secondary-2").await;
    let interval = Duration::from_millis(500);
    let retries = 1u32;
    let cfg = format!(
        r#"
[[monitor]]
name = "tcp"
type = "tcp"
interval = "{}ms"
timeout = "250ms"
retries = {retries}

[[pool]]
name = "primary"
monitor = "tcp"
origins = [{{ name = "primary-1", address = "{}" }}, {{ name = "primary-2", address = "{}" }}]

[[pool]]
name = "secondary"
monitor = "tcp"
origins = [{{ name = "secondary-1", address = "{}" }}, {{ name = "secondary-2", address = "{}" }}]

[[load_balancer]]
name = "lb"
steering = "failover"
default_pools = ["primary", "secondary"]
fallback_pool = "secondary"

[[app]]
name = "failover"
listen = "127.0.0.1:0"
load_balancer = "lb"
"#,
        interval.as_millis(),
        p1.addr(),
        p2.addr(),
        s1.addr(),
        s2.addr()
    );
    let app = node(&cfg).await;
    let addr = app_addr(&app, "failover").await;
    let bound = interval * (retries + 1) + Duration::from_secs(1);

    // Both primary origins serve while healthy.
    let mut seen = HashSet::new();
    for _ in 0..40 {
        seen.insert(name_via(addr).await);
    }
    assert_eq!(
        seen,
        HashSet::from(["primary-1".to_string(), "primary-2".to_string()])
    );

    // Stop the primary pool: new connections reach the secondary within the bound. Only
    // monitors may notice; no client connection is made until the wait begins.
    p1.stop().await;
    p2.stop().await;
    eventually("monitor marks the primary pool down", bound, || async {
        let s = switchyard_node::status::document(app.state());
        !s.pools[0].healthy
    })
    .await?;
    for _ in 0..20 {
        let name = name_via(addr).await;
        assert!(name.starts_with("secondary-"), "got {name}");
    }

    // Restart: connections come back to the primary.
    p1.restart().await?;
    p2.restart().await?;
    eventually(
        "connections fail back to the primary pool",
        bound,
        || async { name_via(addr).await.starts_with("primary-") },
    )
    .await?;
    eventually("both primary origins are up again", bound, || async {
        let s = switchyard_node::status::document(app.state());
        s.pools[0].healthy
            && s.pools[0]
                .origins
                .iter()
                .all(|o| o.healthy && o.rtt_ms.is_some())
    })
    .await?;
    app.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_retries_another_origin_and_marks_it_down() -> anyhow::Result<()> {
    let mut dead = origin("dead").await;
    let live = origin("live").await;
    // A long interval: only passive health can notice the dead origin in time.
    let cfg = format!(
        r#"
[[monitor]]
name = "tcp"
type = "tcp"
interval = "1h"
timeout = "1s"

[[pool]]
name = "p"
monitor = "tcp"
origins = [{{ name = "dead", address = "{}" }}, {{ name = "live", address = "{}" }}]

[[load_balancer]]
name = "lb"
default_pools = ["p"]

[[app]]
name = "a"
listen = "127.0.0.1:0"
load_balancer = "lb"
"#,
        dead.addr(),
        live.addr()
    );
    let app = node(&cfg).await;
    let addr = app_addr(&app, "a").await;
    // Let the first probe round pass so both origins are checked and up.
    eventually("first probes", Duration::from_secs(5), || async {
        switchyard_node::status::document(app.state()).pools[0]
            .origins
            .iter()
            .all(|o| o.last_change.is_some())
    })
    .await?;
    dead.stop().await;
    // Every connection is served, by retrying on the live origin; the dead one goes down
    // once `passive_failures` (3) connects to it have failed within `passive_window`.
    let dead_down = || !switchyard_node::status::document(app.state()).pools[0].origins[0].healthy;
    for _ in 0..100 {
        assert_eq!(name_via(addr).await, "live");
        if dead_down() {
            break;
        }
    }
    let s = switchyard_node::status::document(app.state());
    let dead_row = &s.pools[0].origins[0];
    assert!(!dead_row.healthy);
    assert_eq!(
        dead_row.reason.as_deref(),
        Some("3 failed connects within 10s: connect refused")
    );
    app.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
