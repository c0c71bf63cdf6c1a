//! Who may claim what: this node's signing key and the certificates of the nodes it has
//! heard of ([`Keys`]). Everything a node claims about itself in the mesh (its SWIM identity,
//! the state of its health rows) carries its signature, and a claim is believed only if it
//! verifies against the certificate of the node it is about, itself checked against the
//! cluster CA. A certificate that names a region limits its node to that region.
//!
//! Certificates are learned once per node: from the handshake of a direct connection (the
//! transport hands the peer's certificate over with what it receives), or asked of the peer
//! that relayed a claim we could not check yet ([`crate::wire::Msg::CertRequest`]). One
//! learned from a handshake replaces what was held; one relayed only fills a gap, so a peer
//! cannot swap a node's current certificate for an old one. At most [`MAX_CERTS`] are kept.
//!
//! The node's TLS material can change while it runs ([`Keys::replace_tls`], on a reload): its
//! own key (a rotated certificate: what it signs from then on), the CAs it trusts and the
//! revocation list. A held certificate that no longer verifies is forgotten; a node whose
//! certificate is revoked (by its id, or by the serial of the certificate held of it) is
//! refused ([`SealRefusal::Revoked`]) until a certificate of it that is not revoked arrives.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use switchyard_geo::Region;

use crate::identity::{NodeIdentity, SignIdentity};
use crate::table::{Seal, SealRefusal};
use crate::tls::{CertSigner, NodeTls, PeerCert};

/// Most certificates kept: as many as the table keeps writers.
pub const MAX_CERTS: usize = crate::table::MAX_WRITERS;

/// How far ahead of this node's clock an epoch or a generation may be (both are the writer's
/// wall clock at its start, in unix ms). Anything further ahead is refused: it could never be
/// replaced by the real node's next start. One day allows for any sane clock skew.
pub const MAX_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// This node's signing key and the certificates it knows.
pub struct Keys {
    /// This node's TLS material: its own certificate, the CAs and the revocation list.
    tls: Mutex<NodeTls>,
    signer: Mutex<Arc<CertSigner>>,
    certs: Mutex<HashMap<String, PeerCert>>,
    /// Nodes whose certificate held here was revoked by its serial, with that serial: refused
    /// until a certificate of theirs that is not revoked arrives.
    revoked: Mutex<HashMap<String, String>>,
    /// The identity last verified of each node: SWIM repeats a node's identity in every
    /// packet it sends and every update about it, and checking the same bytes again would
    /// spend a signature verification on each.
    checked: Mutex<HashMap<String, NodeIdentity>>,
    made: AtomicU64,
    verified: AtomicU64,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("node", &self.tls().node_id())
            .field("certs", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// What changed with new TLS material ([`Keys::replace_tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaced {
    /// This node's own certificate changed: it signs with the new key from now on.
    pub rotated: bool,
    /// Nodes now revoked (listed by id, or the certificate held of them by serial), whose
    /// certificates were forgotten: the mesh drops them.
    pub revoked: Vec<String>,
    /// Nodes whose certificate held here no longer verifies (its CA is no longer trusted):
    /// forgotten, to be learned again from a certificate that does.
    pub untrusted: Vec<String>,
}

/// Where a certificate came from, which decides whether it may replace the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The peer's own handshake: the node holds this certificate's key right now.
    Handshake,
    /// Relayed by another node: believed only where nothing is held.
    Relayed,
}

impl Keys {
    pub fn new(tls: &NodeTls) -> Keys {
        let keys = Keys {
            tls: Mutex::new(tls.clone()),
            signer: Mutex::new(tls.signer()),
            certs: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            checked: Mutex::new(HashMap::new()),
            made: AtomicU64::new(0),
            verified: AtomicU64::new(0),
        };
        if let Some(own) = tls.own_cert() {
            keys.lock().insert(own.node_id.clone(), own);
        }
        keys
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, PeerCert>> {
        guard(&self.certs)
    }

    /// This node's TLS material now.
    pub fn tls(&self) -> NodeTls {
        guard(&self.tls).clone()
    }

    /// Takes new TLS material (a reload): signs with its key from now on, checks what it
    /// trusts against it and forgets certificates that no longer verify. Says what changed,
    /// for the mesh to act on (close connections, drop revoked members, re-sign).
    pub fn replace_tls(&self, tls: &NodeTls) -> Replaced {
        let old = std::mem::replace(&mut *guard(&self.tls), tls.clone());
        *guard(&self.signer) = tls.signer();
        let mut out = Replaced {
            rotated: old.cert_der() != tls.cert_der(),
            ..Replaced::default()
        };
        let own = tls.node_id().to_owned();
        let mut certs = self.lock();
        let mut revoked = guard(&self.revoked);
        // A serial no longer listed is no reason to refuse its node any more.
        revoked.retain(|_, serial| tls.revoked().serial_listed(serial));
        certs.retain(|node, cert| {
            if *node == own {
                return false;
            }
            match tls.check_peer_cert(cert.der()) {
                Ok(_) => true,
                Err(_) if tls.revoked().refuses(cert.der()).is_some() => {
                    if !tls.revoked().node(node) {
                        if let Some(serial) = crate::tls::serial_hex(cert.der()) {
                            revoked.insert(node.clone(), serial);
                        }
                    }
                    out.revoked.push(node.clone());
                    false
                }
                Err(_) => {
                    out.untrusted.push(node.clone());
                    false
                }
            }
        });
        if let Some(cert) = tls.own_cert() {
            certs.insert(own.clone(), cert);
        }
        for node in tls.revoked().nodes() {
            if node != own && !out.revoked.iter().any(|n| n == node) {
                out.revoked.push(node.to_owned());
            }
        }
        drop((certs, revoked));
        let mut checked = guard(&self.checked);
        for node in out.revoked.iter().chain(&out.untrusted) {
            checked.remove(node);
        }
        // Our own identity was checked against the old certificate.
        checked.remove(&own);
        out.revoked.sort();
        out.untrusted.sort();
        out
    }

    /// Whether `node` is revoked: listed by id, or the certificate last held of it by serial.
    pub fn is_revoked(&self, node: &str) -> bool {
        guard(&self.tls).revoked().node(node) || guard(&self.revoked).contains_key(node)
    }

    /// Why a peer presenting `der` as `node` is refused as revoked, if it is.
    pub fn revocation(&self, node: &str, der: Option<&[u8]>) -> Option<String> {
        let tls = self.tls();
        if let Some(why) = der.and_then(|der| tls.revoked().refuses(der)) {
            return Some(why);
        }
        if tls.revoked().node(node) {
            return Some(format!("node id {node} is revoked"));
        }
        guard(&self.revoked)
            .get(node)
            .map(|serial| format!("its certificate (serial {serial}) is revoked"))
    }

    /// Keeps the certificate a peer presented in its handshake, unless it is the one held
    /// already (every message of a connection carries it, so that check comes first).
    pub fn learn_from_handshake(&self, peer_id: &str, der: &[u8]) -> Result<String, String> {
        if self.lock().get(peer_id).is_some_and(|c| c.der() == der) {
            return Ok(peer_id.to_owned());
        }
        self.learn(der, Source::Handshake)
    }

    /// Checks `der` against the cluster CA and keeps it as its node's certificate. Returns
    /// the node id, or why the certificate was refused.
    pub fn learn(&self, der: &[u8], source: Source) -> Result<String, String> {
        let tls = self.tls();
        let cert = tls.check_peer_cert(der)?;
        let node = cert.node_id.clone();
        if node == tls.node_id() {
            // Our own certificate is the one we hold the key of.
            return Ok(node);
        }
        let mut certs = self.lock();
        if source == Source::Relayed && certs.contains_key(&node) {
            return Ok(node);
        }
        // A certificate of it that is not revoked (check_peer_cert said so): its node is
        // believed again.
        guard(&self.revoked).remove(&node);
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
        if !certs.contains_key(&node) && certs.len() >= MAX_CERTS {
            // Full: make room by dropping some other node's certificate; it is fetched again
            // when needed.
            let victim = certs.keys().find(|k| k.as_str() != tls.node_id()).cloned();
            if let Some(victim) = victim {
                certs.remove(&victim);
            }
        }
        certs.insert(node.clone(), cert);
        Ok(node)
    }

    pub fn knows(&self, node: &str) -> bool {
        self.lock().contains_key(node)
    }

    /// The certificates held of `nodes` (DER), for a peer that asked.
    pub fn certs_of<'a>(&self, nodes: impl IntoIterator<Item = &'a String>) -> Vec<Vec<u8>> {
        let certs = self.lock();
        nodes
            .into_iter()
            .filter_map(|n| certs.get(n))
            .map(|c| c.der().to_vec())
            .collect()
    }

    /// Whether `sig` is `node`'s signature over `message`, and `node` may speak for `region`.
    pub fn check(
        &self,
        node: &str,
        region: Region,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), SealRefusal> {
        if self.is_revoked(node) {
            return Err(SealRefusal::Revoked);
        }
        let cert = self
            .lock()
            .get(node)
            .cloned()
            .ok_or(SealRefusal::UnknownSigner)?;
        if cert.region.is_some_and(|r| r != region) {
            return Err(SealRefusal::WrongRegion);
        }
        self.verified.fetch_add(1, Ordering::Relaxed);
        if cert.verifies(message, sig) {
            Ok(())
        } else {
            Err(SealRefusal::BadSignature)
        }
    }

    /// Checks a SWIM identity: signed by its node, for a region its certificate allows.
    pub fn check_identity(&self, id: &NodeIdentity) -> Result<(), SealRefusal> {
        // Before the cache: an identity verified before its node was revoked is not believed.
        if self.is_revoked(&id.id) {
            return Err(SealRefusal::Revoked);
        }
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked
            .get(&id.id)
            .is_some_and(|seen| seen == id && seen.sig == id.sig)
        {
            return Ok(());
        }
        drop(checked);
        self.check(&id.id, id.region, &id.claim(), &id.sig)?;
        checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.len() >= MAX_CERTS && !checked.contains_key(&id.id) {
            checked.clear();
        }
        checked.insert(id.id.clone(), id.clone());
        Ok(())
    }

    /// Signatures made and verified so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.made.load(Ordering::Relaxed),
            self.verified.load(Ordering::Relaxed),
        )
    }
}

impl Seal for Keys {
    fn sign(&self, claim: &[u8]) -> Vec<u8> {
        self.made.fetch_add(1, Ordering::Relaxed);
        let signer = guard(&self.signer).clone();
        signer.sign(claim)
    }

    fn verify(
        &self,
        node: &str,
        region: Region,
        claim: &[u8],
        sig: &[u8],
    ) -> Result<(), SealRefusal> {
        self.check(node, region, claim, sig)
    }
}

impl SignIdentity for Keys {
    fn sign_claim(&self, claim: &[u8]) -> Vec<u8> {
        Seal::sign(self, claim)
    }
}

/// Locks `m`, taking the data of a poisoned lock: every update here leaves it consistent.
fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{init_ca, issue_cert_in, load};

    #[test]
    fn claims_verify_only_for_their_node_and_its_region() {
        let dir = std::env::temp_dir().join(format!("switchyard-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = init_ca(&dir.join("ca"), "prod").unwrap();
        let tls = |id: &str, region| {
            let p = issue_cert_in(&dir.join("ca"), id, region, &dir).unwrap();
            load(&ca.cert, &p.cert, &p.key).unwrap()
        };
        let a = tls("edge-a", Some(Region::Weu));
        let b = tls("edge-b", None);
        let keys_a = Keys::new(&a);
        let keys_b = Keys::new(&b);

        let id = NodeIdentity::unsigned(
            "edge-a",
            Region::Weu,
            "127.0.0.1:1".parse().unwrap(),
            "prod",
            7,
        )
        .signed_by(Arc::new(Keys::new(&a)));
        // b has not heard of a yet.
        assert_eq!(keys_b.check_identity(&id), Err(SealRefusal::UnknownSigner));
        let der = keys_a.certs_of(&["edge-a".to_string()]).remove(0);
        assert_eq!(keys_b.learn(&der, Source::Relayed).unwrap(), "edge-a");
        assert_eq!(keys_b.check_identity(&id), Ok(()));

        // Another generation with the old signature, another region, a signature by b.
        let mut later = id.clone();
        later.generation += 1;
        assert_eq!(
            keys_b.check_identity(&later),
            Err(SealRefusal::BadSignature)
        );
        let elsewhere = NodeIdentity::unsigned("edge-a", Region::Enam, id.addr, "prod", 7)
            .signed_by(Arc::new(Keys::new(&a)));
        assert_eq!(
            keys_b.check_identity(&elsewhere),
            Err(SealRefusal::WrongRegion)
        );
        let by_b = NodeIdentity::unsigned("edge-a", Region::Weu, id.addr, "prod", 7)
            .signed_by(Arc::new(Keys::new(&b)));
        assert_eq!(keys_b.check_identity(&by_b), Err(SealRefusal::BadSignature));

        // foca's renew signs the next generation with the node's key.
        let renewed = foca::Identity::renew(&id).unwrap();
        assert_eq!(renewed.generation, 8);
        assert_eq!(keys_b.check_identity(&renewed), Ok(()));
        let (made, verified) = keys_b.counts();
        assert_eq!(made, 0);
        assert!(verified >= 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
