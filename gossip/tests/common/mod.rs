//! What the integration tests share: a scratch CA with node certificates, and waiting on a
//! condition against a deadline. (Each test crate uses a part of it.)
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use switchyard_gossip::tls::{self, NodeTls};

/// Upper bound on any wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// A test CA and node certificates in a scratch directory, removed on drop.
pub struct Certs(pub PathBuf);

impl Certs {
    /// A new CA under a directory named for the test crate (`suite`) and the test (`tag`).
    pub fn new(suite: &str, tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("sy-{suite}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        tls::init_ca(&dir.join("ca"), "test").expect("test CA");
        Certs(dir)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca").join("ca.crt")
    }

    /// Issues a certificate for `id`.
    pub fn paths(&self, id: &str) -> tls::CertPaths {
        tls::issue_cert(&self.0.join("ca"), id, &self.0).expect("node certificate")
    }

    /// Issues a certificate for `id` and loads it.
    pub fn node(&self, id: &str) -> NodeTls {
        let p = self.paths(id);
        tls::load(&self.ca(), &p.cert, &p.key).expect("load node TLS")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `cond` holds, polling; panics after [`WAIT`] naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
