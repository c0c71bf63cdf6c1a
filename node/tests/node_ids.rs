//! One node-id rule: `switchyard check` (the `[node] id` of a config) and `switchyard cert
//! issue --node` accept exactly the same ids, so no node passes its check only to be refused a
//! certificate, or the other way round.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard")
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

/// Removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn check_accepts(dir: &Path, n: usize, id: &str) -> bool {
    let config = dir.join(format!("config-{n}.toml"));
    fs::write(&config, format!("[node]\nid = {id:?}\nregion = \"WNAM\"\n")).unwrap();
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    if !ok(&out) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("[node]") && err.contains("id"),
            "{id:?}: {err}"
        );
    }
    ok(&out)
}

fn cert_issue_accepts(dir: &Path, id: &str) -> bool {
    let ca = dir.join("ca");
    // `--node=ID`, so that an id starting with '-' is not taken for an option.
    let out = run(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        &format!("--node={id}"),
        "--out",
        dir.join("certs").to_str().unwrap(),
    ]);
    ok(&out)
}

#[test]
fn check_and_cert_issue_accept_the_same_node_ids() {
    let dir =
        Scratch(std::env::temp_dir().join(format!("switchyard-node-ids-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    fs::create_dir_all(&dir.0).unwrap();
    let init = run(&[
        "ca",
        "init",
        "--out",
        dir.0.join("ca").to_str().unwrap(),
        "--cluster",
        "test",
    ]);
    assert!(ok(&init), "{}", String::from_utf8_lossy(&init.stderr));

    let len_63 = "a".repeat(63);
    let len_64 = "a".repeat(64);
    let cases = [
        ("edge-weu-1", true),
        ("edge_weu.1a", true),
        ("a_b", true),
        (len_63.as_str(), true),
        // Its last label is all digits: a DNS name that looks like an IP address.
        ("edge.1", false),
        ("-edge", false),
        (len_64.as_str(), false),
    ];
    for (n, (id, accepted)) in cases.into_iter().enumerate() {
        let check = check_accepts(&dir.0, n, id);
        let issue = cert_issue_accepts(&dir.0, id);
        assert_eq!(check, issue, "{id:?}: check {check}, cert issue {issue}");
        assert_eq!(check, accepted, "{id:?}");
    }
}
