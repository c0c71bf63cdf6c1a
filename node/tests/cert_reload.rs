//! Certificates reloaded with the config (SIGHUP runs `App::reload_from_file`, the code these
//! tests call): a reload naming a certificate that cannot be read is refused whole, naming
//! the file, and the node keeps its mesh; a re-issued certificate is taken without a restart;
//! a revocation list drops the node it names. Two nodes in process, on port 0.
//!
//! Every wait polls a condition against a deadline.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_node::{status, App, Config, StartOptions};

const DEADLINE: Duration = Duration::from_secs(20);

/// A scratch directory with a test CA, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sy-cert-reload-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        switchyard_gossip::tls::init_ca(&dir.join("ca"), "test").unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Issues (or re-issues: a new key) `id`'s certificate into the scratch directory.
    fn issue(&self, id: &str) {
        switchyard_gossip::tls::issue_cert(&self.0.join("ca"), id, &self.0).unwrap();
    }

    /// Writes node `id`'s config (`cert` and `revoked` as given) and returns its path.
    fn config(
        &self,
        id: &str,
        seeds: &[SocketAddr],
        cert: &Path,
        revoked: Option<&Path>,
    ) -> PathBuf {
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let revoked = revoked
            .map(|p| format!("revoked = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let text = format!(
            r#"[node]
id = "{id}"
region = "WEU"
status_listen = "127.0.0.1:0"
drain_timeout = "1s"

[mesh]
cluster = "test"
listen = "127.0.0.1:0"
seeds = [{seeds}]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{revoked}probe_period = "200ms"
probe_timeout = "100ms"
suspect_timeout = "1s"
announce_interval = "300ms"
anti_entropy_interval = "300ms"
"#,
            seeds = seeds.join(", "),
            ca = self.path("ca/ca.crt").display(),
            cert = cert.display(),
            key = self.path(&format!("{id}.key")).display(),
        );
        let path = self.path(&format!("{id}.toml"));
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

async fn start(config: &Path) -> App {
    let cfg = Config::load(config).unwrap();
    App::start(
        cfg,
        StartOptions {
            config_path: Some(config.to_owned()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// `id`'s state and generation as `app` sees it.
fn member(app: &App, id: &str) -> Option<(String, u64)> {
    status::document(app.state())
        .members
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| (m.state, m.generation))
}

fn alive(app: &App, id: &str) -> bool {
    member(app, id).is_some_and(|(s, _)| s == "alive")
}

fn metric(app: &App, series: &str) -> Option<f64> {
    app.state()
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}\n{}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn members(apps: &[&App]) -> String {
    apps.iter()
        .map(|a| {
            let d = status::document(a.state());
            format!(
                "{}: {:?}\n",
                d.node.id,
                d.members
                    .iter()
                    .map(|m| (&m.id, &m.state, m.generation))
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reload_with_an_unreadable_certificate_is_refused_naming_it_and_the_mesh_keeps_going() {
    let dir = Scratch::new("bad-cert");
    dir.issue("edge-a");
    dir.issue("edge-b");
    let a_cert = dir.path("edge-a.crt");
    let a_config = dir.config("edge-a", &[], &a_cert, None);
    let a = start(&a_config).await;
    let a_mesh = a.state().mesh.as_ref().unwrap().local_addr();
    let b = start(&dir.config("edge-b", &[a_mesh], &dir.path("edge-b.crt"), None)).await;
    wait_until(
        "edge-a and edge-b to see each other alive",
        || alive(&a, "edge-b") && alive(&b, "edge-a"),
        || members(&[&a, &b]),
    )
    .await;

    // SIGHUP with a config whose certificate path does not exist: refused, naming it.
    let missing = dir.path("no-such-dir/edge-a.crt");
    dir.config("edge-a", &[], &missing, None);
    let err = a.reload_from_file().await.unwrap_err().to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("node certificate"),
        "the refusal must name the certificate file: {err}"
    );
    assert_eq!(
        metric(&a, "switchyard_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    // A certificate that is not this node's: refused too.
    dir.config("edge-a", &[], &dir.path("edge-b.crt"), None);
    let err = a.reload_from_file().await.unwrap_err().to_string();
    assert!(err.contains("edge-b.crt"), "{err}");

    // The node runs on with its certificate: the mesh still works both ways.
    let (_, generation) = member(&b, "edge-a").unwrap();
    assert!(
        alive(&a, "edge-b") && alive(&b, "edge-a"),
        "{}",
        members(&[&a, &b])
    );

    // A good reload with a re-issued certificate (new key, same id) is taken without a
    // restart: edge-b sees edge-a's identity signed again with the new key.
    dir.issue("edge-a");
    dir.config("edge-a", &[], &a_cert, None);
    a.reload_from_file().await.unwrap();
    wait_until(
        "edge-b to see edge-a alive under its re-signed identity",
        || member(&b, "edge-a").is_some_and(|(s, g)| s == "alive" && g > generation),
        || members(&[&a, &b]),
    )
    .await;
    assert!(
        metric(&a, "switchyard_mesh_certificate_days_left").is_some_and(|d| d > 700.0),
        "the days left follow the new certificate"
    );

    // A revocation list naming edge-b, on the next reload: edge-a drops it.
    let list = dir.path("revoked.txt");
    fs::write(&list, "node:edge-b  # decommissioned\n").unwrap();
    dir.config("edge-a", &[], &a_cert, Some(&list));
    a.reload_from_file().await.unwrap();
    wait_until(
        "edge-a to drop the revoked edge-b",
        || !alive(&a, "edge-b"),
        || members(&[&a, &b]),
    )
    .await;
    // edge-b, still running, keeps knocking; its handshakes are refused as revoked.
    wait_until(
        "edge-a to count edge-b's refused handshakes",
        || metric(&a, "switchyard_mesh_refused_total{reason=\"revoked\"}").is_some_and(|n| n > 0.0),
        || a.state().metrics.encode(),
    )
    .await;
    b.shutdown(Duration::ZERO).await;
    a.shutdown(Duration::ZERO).await;
}

/// `switchyard cert issue` prints the serial, `switchyard cert revoke` appends it to a list,
/// and a node whose own certificate the list revokes refuses to start, naming the list.
#[tokio::test]
async fn a_node_whose_own_certificate_is_revoked_does_not_start() {
    let dir = Scratch::new("own-revoked");
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let ca = dir.path("ca");
    let (ok, issued) = run(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--node",
        "edge-a",
        "--out",
        dir.0.to_str().unwrap(),
    ]);
    assert!(ok, "{issued}");
    let serial = switchyard_gossip::tls::serial_of_file(&dir.path("edge-a.crt")).unwrap();
    assert!(issued.contains(&format!("serial {serial}")), "{issued}");

    let list = dir.path("revoked.txt");
    let cert = dir.path("edge-a.crt");
    let (ok, added) = run(&[
        "cert",
        "revoke",
        "--list",
        list.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{added}");
    assert_eq!(
        fs::read_to_string(&list).unwrap(),
        format!("serial:{serial}\n")
    );
    let (ok, again) = run(&[
        "cert",
        "revoke",
        "--list",
        list.to_str().unwrap(),
        "--serial",
        &serial.to_uppercase(),
    ]);
    assert!(ok && again.contains("already revokes it"), "{again}");
    let (ok, bad) = run(&[
        "cert",
        "revoke",
        "--list",
        list.to_str().unwrap(),
        "--serial",
        "xyz",
    ]);
    assert!(!ok && bad.contains("not hex"), "{bad}");

    let config = dir.config("edge-a", &[], &cert, Some(&list));
    let err = match App::start(Config::load(&config).unwrap(), StartOptions::default()).await {
        Ok(_) => panic!("a node started with a revoked certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("revoked") && err.contains(&format!("{}:1", list.display())),
        "the error must say the certificate is revoked, and where: {err}"
    );
}
