//! Helpers the integration tests share: start a node from TOML text on port 0, start test
//! origins, and wait for a condition with a deadline (never a fixed sleep).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchyard_node::{App, Config, StartOptions};

use crate::origin::{first_line, OriginConfig, TestOrigin};

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=debug cargo test ...).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `cond` every 20 ms until it holds; fails naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not true within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a test origin on 127.0.0.1, port 0.
pub async fn origin(name: &str) -> TestOrigin {
    origin_with(name, false).await
}

/// Starts a test origin that expects a PROXY header.
pub async fn origin_with(name: &str, accept_proxy: bool) -> TestOrigin {
    TestOrigin::start(OriginConfig {
        name: name.into(),
        listen: "127.0.0.1:0".parse().expect("literal address"),
        http: Some("127.0.0.1:0".parse().expect("literal address")),
        accept_proxy,
    })
    .await
    .expect("test origin starts")
}

/// Starts a node from TOML text; `[node]` is prepended with a status endpoint on port 0.
pub async fn node(body: &str) -> App {
    let text = format!(
        "[node]\nid = \"test-1\"\nregion = \"WEU\"\nstatus_listen = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n\n{body}"
    );
    init_logs();
    let cfg = Config::parse(&text, None).expect("test config is valid");
    App::start(cfg, StartOptions::default())
        .await
        .expect("node starts")
}

/// The first address of an app.
pub async fn app_addr(app: &App, name: &str) -> SocketAddr {
    app.app_addrs(name).await[0]
}

/// Connects through the node and returns the origin's name line, or an error string.
pub async fn name_via(addr: SocketAddr) -> String {
    name_from(addr, None).await
}

/// Like `name_via`, from a chosen local source address.
pub async fn name_from(addr: SocketAddr, from: Option<IpAddr>) -> String {
    match first_line(addr, from, Duration::from_secs(3)).await {
        Ok(line) => line,
        Err(e) => format!("error: {e}"),
    }
}

/// A TCP monitor `tcp` probing every 200 ms with one attempt a round, so that an origin's
/// health follows a test within a second.
pub const FAST_TCP_MONITOR: &str = r#"
[[monitor]]
name = "tcp"
type = "tcp"
interval = "200ms"
timeout = "150ms"
retries = 0
"#;

/// Short SWIM timings for in-process meshes, so that detection takes about a second instead
/// of ten.
pub const FAST_MESH: &str = r#"probe_period = "200ms"
probe_timeout = "100ms"
suspect_timeout = "1s"
announce_interval = "300ms"
anti_entropy_interval = "300ms""#;

/// One certificate per node of `nodes` (id and the region it names, as `switchyard cert
/// issue --region` makes them, so that every claim's region is checked), from a fresh CA
/// for `cluster` in `dir`, loaded as a node loads its own.
pub fn node_certs(
    dir: &std::path::Path,
    cluster: &str,
    nodes: &[(String, switchyard_geo::Region)],
) -> anyhow::Result<Vec<switchyard_gossip::tls::NodeTls>> {
    use anyhow::Context;
    use switchyard_gossip::tls;
    let ca_dir = dir.join("ca");
    tls::init_ca(&ca_dir, cluster).with_context(|| format!("creating the {cluster} CA"))?;
    let ca = ca_dir.join(tls::CA_CERT_FILE);
    nodes
        .iter()
        .map(|(id, region)| {
            let paths = tls::issue_cert_in(&ca_dir, id, Some(*region), dir)
                .with_context(|| format!("issuing a certificate for {id}"))?;
            tls::load(&ca, &paths.cert, &paths.key)
                .with_context(|| format!("loading the certificate of {id}"))
        })
        .collect()
}

/// A test CA in a scratch directory that issues node certificates next to it; removed on
/// drop.
pub struct MeshCerts {
    pub dir: std::path::PathBuf,
}

impl MeshCerts {
    /// A fresh CA under the temp directory; `tag` keeps concurrent tests apart.
    pub fn new(tag: &str) -> MeshCerts {
        let dir = std::env::temp_dir().join(format!("sy-mesh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        switchyard_gossip::tls::init_ca(&dir.join("ca"), "test").expect("test CA");
        MeshCerts { dir }
    }

    /// Issues `{dir}/{id}.crt` and `{dir}/{id}.key` for a node in `region` (a region code,
    /// e.g. `WEU`), which the certificate names, as `switchyard cert issue --region` does: the
    /// node must then be configured in that region, and peers drop its claims about others.
    pub fn issue(&self, id: &str, region: &str) {
        let region: switchyard_geo::Region = region
            .parse()
            .unwrap_or_else(|e| panic!("a certificate for {id}: {e}"));
        switchyard_gossip::tls::issue_cert_in(&self.dir.join("ca"), id, Some(region), &self.dir)
            .expect("node certificate");
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca").join("ca.crt")
    }

    /// The `[node]` and `[mesh]` sections of node `id` in `region` (status endpoint and mesh on
    /// port 0, [`FAST_MESH`] timings), joining through `seeds`.
    pub fn node_toml(&self, id: &str, region: &str, seeds: &[SocketAddr]) -> String {
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"[node]
id = "{id}"
region = "{region}"
status_listen = "127.0.0.1:0"
drain_timeout = "1s"

[mesh]
cluster = "test"
listen = "127.0.0.1:0"
seeds = [{}]
ca = "{}"
cert = "{}"
key = "{}"
{FAST_MESH}
"#,
            seeds.join(", "),
            self.ca().display(),
            self.dir.join(format!("{id}.crt")).display(),
            self.dir.join(format!("{id}.key")).display(),
        )
    }
}

impl Drop for MeshCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the running binary: where cargo put the workspace's other binaries, for
/// the tools (testnet, chaos-soak) that run them.
pub fn bin_dir() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))
}

/// A node's status document from `switchyard status --addr ADDR --json`, run by the
/// `switchyard` binary at `bin`, inside network namespace `netns` when given (`ip netns exec`).
pub fn node_status(
    bin: &std::path::Path,
    netns: Option<&str>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<switchyard_node::status::Status> {
    use anyhow::Context;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    let out = cmd
        .args(["status", "--addr", &addr.to_string(), "--json"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .context("run switchyard status")?;
    if !out.status.success() {
        anyhow::bail!("switchyard status --addr {addr} failed");
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{addr}'s status is not a status document"))
}

/// The `switchyard` binary, for tests that run it as a process: next to this crate's
/// binaries, in target/<profile>/ (the test executable is in target/<profile>/deps/).
pub fn switchyard_bin() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    let bin = dir.join("switchyard");
    if !bin.is_file() {
        anyhow::bail!(
            "no switchyard binary at {}: build it with cargo build -p switchyard-node",
            bin.display()
        );
    }
    Ok(bin)
}
