//! Target `mesh`: a message off a mesh QUIC stream, decoded as the mesh task decodes it
//! (`codec::decode` of an `Envelope`, and the relay's request and response frames), then
//! handled as the task handles it, with the table, keys and codec the task uses: batches
//! applied to health tables, digests answered and compared, certificates learned.
//!
//! Two tables take every batch. One is [`Unsealed`] (the table's own supported way to leave
//! signatures out), so that made-up batches get past the seal into the replication rules,
//! where the fuzzer can reach them. The other is sealed with real keys (a cluster CA and two
//! node certificates made once per process), so that signatures and certificates from the
//! wire are checked as the mesh checks them.

use std::sync::{Arc, OnceLock};

use switchyard_geo::Region;
use switchyard_gossip::codec;
use switchyard_gossip::keys::{Keys, Source};
use switchyard_gossip::table::{pack, Batch, Observation, Table, Unsealed, Verdict};
use switchyard_gossip::tls::NodeTls;
use switchyard_gossip::wire::{Envelope, Msg, MAX_CERTS_PER_MESSAGE};
use switchyard_gossip::{RelayRequest, RelayResponse};
use tokio::time::Instant;

/// This node, whose tables the messages are applied to.
pub const LOCAL: &str = "edge-wnam-1";
/// A peer whose rows the tables already hold, and whose certificate the sealed one knows.
pub const PEER: &str = "edge-weu-1";
/// The cluster.
pub const CLUSTER: &str = "prod";

/// A table as a running node has it: a few local rows and a peer's rows. Unsealed.
pub fn table() -> Table {
    let mut t = Table::new(LOCAL.into(), Region::Wnam, 1_700_000_000_000, 0xfeed);
    let up = Observation {
        healthy: true,
        rtt_us: Some(1200),
        last_change_ms: 1_700_000_000_100,
        reason: None,
        verdict: None,
    };
    let down = Observation {
        healthy: false,
        rtt_us: None,
        last_change_ms: 1_700_000_000_200,
        reason: Some("connect refused"),
        verdict: Some(Verdict::Origin),
    };
    t.set_local("web", "wnam-1", up, Instant::now());
    t.set_local("web", "wnam-2", down, Instant::now());
    let _ = t.apply(peer_batch(0), Instant::now());
    t
}

/// The peer's full snapshot (two rows) or, from `since` on, the changes after it.
pub fn peer_batch(since: u64) -> Batch {
    let mut peer = Table::new(PEER.into(), Region::Weu, 1_700_000_000_000, 0xfeed);
    peer.set_local(
        "web",
        "weu-1",
        Observation {
            healthy: true,
            rtt_us: Some(900),
            last_change_ms: 1_700_000_000_300,
            reason: None,
            verdict: None,
        },
        Instant::now(),
    );
    peer.set_local(
        "api",
        "weu-2",
        Observation {
            healthy: false,
            rtt_us: None,
            last_change_ms: 1_700_000_000_400,
            reason: Some("status 503"),
            verdict: Some(Verdict::Path),
        },
        Instant::now(),
    );
    peer.local_since(since)
}

/// Certificates made once per process: this node's and the peer's, from one cluster CA.
pub struct Certs {
    pub local: NodeTls,
    pub peer: NodeTls,
}

/// The process's [`Certs`], made on first use in a scratch directory that is removed again.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        use switchyard_gossip::tls::{init_ca, issue_cert_in, load};
        let dir = std::env::temp_dir().join(format!("switchyard-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = init_ca(&dir.join("ca"), CLUSTER).expect("make the cluster CA");
        let node = |id: &str, region: Region| {
            let paths = issue_cert_in(&dir.join("ca"), id, Some(region), &dir.join("certs"))
                .expect("issue a node certificate");
            load(&ca.cert, &paths.cert, &paths.key).expect("load a node certificate")
        };
        let certs = Certs {
            local: node(LOCAL, Region::Wnam),
            peer: node(PEER, Region::Weu),
        };
        let _ = std::fs::remove_dir_all(&dir);
        certs
    })
}

/// Feeds one stream message to the mesh's decoders and, if it decodes, to the tables.
pub fn run(data: &[u8]) {
    // Relay frames come on the same connections (bidirectional streams).
    if let Ok(request) = codec::decode::<RelayRequest>(data) {
        reencodes(&request);
    }
    if let Ok(response) = codec::decode::<RelayResponse>(data) {
        reencodes(&response);
    }
    let Ok(env) = codec::decode::<Envelope>(data) else {
        return;
    };
    reencodes(&env);

    thread_local! {
        // A table is not Sync (its seal cache); the target runs on one thread anyway.
        static TEMPLATE: Table = table();
    }
    let template = TEMPLATE.with(Table::clone);
    let certs = certs();
    let keys = Arc::new(Keys::new(&certs.local));
    keys.learn(certs.peer.cert_der(), Source::Handshake)
        .expect("the peer's certificate is the cluster's");
    let mut unsealed = template.clone().with_seal(Arc::new(Unsealed));
    let mut sealed = template.clone().with_seal(keys.clone());
    let now = Instant::now();

    match env.msg {
        Msg::Push(batch) => {
            apply(&mut unsealed, &batch, now);
            apply(&mut sealed, &batch, now);
        }
        Msg::Delta(batches) => {
            for batch in &batches {
                apply(&mut unsealed, batch, now);
                apply(&mut sealed, batch, now);
            }
        }
        Msg::Digest { digest, .. } => {
            for table in [&unsealed, &sealed] {
                // The task starts the answer at a random writer; any start must do.
                let start = digest.entries.len().wrapping_mul(7919);
                if let (Ok(answer), Ok(_)) = (table.answer(&digest, start), table.compare(&digest))
                {
                    for part in pack(answer.batches) {
                        reencodes(&Msg::Delta(part));
                    }
                }
                let _ = table.delta(&digest);
            }
        }
        Msg::Summary { fingerprint } => {
            let _ = fingerprint == unsealed.digest().fingerprint();
        }
        Msg::CertRequest(nodes) => {
            let _ = keys.certs_of(nodes.iter().take(MAX_CERTS_PER_MESSAGE));
        }
        Msg::Certs(ders) => {
            for der in ders.iter().take(MAX_CERTS_PER_MESSAGE) {
                if keys.learn(der, Source::Relayed).is_err() {
                    let _ = keys.tls().revoked().refuses(der);
                }
            }
        }
        Msg::ProbeAsk { .. } => {}
        Msg::ProbeAnswer { outcome, .. } => {
            let _ = outcome.bounded();
        }
    }
    for table in [&unsealed, &sealed] {
        held_state_is_sound(table);
    }
}

/// Applies `batch` as the task does (it owns the batch; a clone stands for that here).
fn apply(table: &mut Table, batch: &Batch, now: Instant) {
    let _ = table.apply(batch.clone(), now);
}

/// A value the codec decoded encodes again, and that encoding decodes and encodes to itself.
fn reencodes<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let bytes = codec::encode(value).expect("what decoded encodes again");
    let back: T = codec::decode(&bytes).expect("what encoded decodes again");
    assert_eq!(
        codec::encode(&back).expect("encodes"),
        bytes,
        "encoding is stable"
    );
}

/// What a table holds after any message: its own rows within their bounds, and every
/// writer's snapshot acceptable to a holder that has nothing yet (what anti-entropy sends a
/// new node).
fn held_state_is_sound(table: &Table) {
    assert!(
        table.local_within_bounds(),
        "messages never touch local rows"
    );
    let digest = table.digest();
    let _ = digest.fingerprint();
    let _ = table.stats();
    let _ = table.oldest_row_age(Instant::now());
    let mut fresh = Table::new("edge-seas-1".into(), Region::Seas, 1, 0);
    for batch in table.snapshot() {
        reencodes(&batch);
        if let Err(e) = fresh.apply(batch.clone(), Instant::now()) {
            panic!("a held writer's snapshot is refused by a new holder: {e}: {batch:?}");
        }
    }
}
