//! The mesh's Prometheus metrics ([`MeshMetrics`]), registered under `mesh_` in the node's one
//! registry, and the few ways the mesh task updates them.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::MemberState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(crate) enum Dir {
    Sent,
    Received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MsgLabels {
    direction: Dir,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The mesh's metrics, registered in the node's one registry.
#[derive(Clone, Default)]
pub struct MeshMetrics {
    members: Family<StateLabels, Gauge>,
    messages: Family<MsgLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    decode_errors: Counter,
    oldest_row_age: Gauge<f64, AtomicU64>,
    bytes_sent: Counter,
    bytes_received: Counter,
    signatures: Family<OpLabels, Counter>,
}

impl MeshMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mesh");
        r.register("members", "Mesh members by state", self.members.clone());
        r.register(
            "messages",
            "Mesh messages by direction and type",
            self.messages.clone(),
        );
        r.register(
            "refused",
            "Peers or messages refused (wrong_ca, wrong_id, wrong_cluster; bad_signature, \
             unknown_signer, wrong_region: a claim not signed by the node it is about, or for a \
             region its certificate does not name; future_epoch, future_generation: more than \
             a day ahead of this node's clock; bad_certificate, pending_full)",
            self.refused.clone(),
        );
        r.register(
            "decode_errors",
            "Mesh messages that failed to decode",
            self.decode_errors.clone(),
        );
        r.register(
            "oldest_row_age_seconds",
            "Age of the oldest replicated health row",
            self.oldest_row_age.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes sent to peers (QUIC payload)",
            self.bytes_sent.clone(),
        );
        r.register(
            "signatures",
            "Signatures this node made (op=made) and checked (op=verified)",
            self.signatures.clone(),
        );
        r.register(
            "bytes_received",
            "Bytes received from peers (QUIC payload)",
            self.bytes_received.clone(),
        );
    }

    pub(crate) fn msg(&self, direction: Dir, r#type: &'static str) {
        self.messages
            .get_or_create(&MsgLabels { direction, r#type })
            .inc();
    }

    pub(crate) fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn decode_error(&self) {
        self.decode_errors.inc();
    }

    pub(crate) fn set_members(&self, state: MemberState, count: i64) {
        self.members
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .set(count);
    }

    /// Copies the transport's own counters, which it keeps without access to the registry.
    pub(crate) fn set_transport_totals(&self, bytes_sent: u64, bytes_received: u64, refused: u64) {
        self.bytes_sent.inner().store(bytes_sent, Ordering::Relaxed);
        self.bytes_received
            .inner()
            .store(bytes_received, Ordering::Relaxed);
        // Handshakes refused by TLS (no certificate from the cluster CA) are counted by the
        // transport.
        self.refused
            .get_or_create(&ReasonLabels { reason: "wrong_ca" })
            .inner()
            .store(refused, Ordering::Relaxed);
    }

    /// Copies the signing counters, kept by the node's keys.
    pub(crate) fn set_signatures(&self, made: u64, verified: u64) {
        for (op, n) in [("made", made), ("verified", verified)] {
            self.signatures
                .get_or_create(&OpLabels { op })
                .inner()
                .store(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_oldest_row_age(&self, seconds: f64) {
        self.oldest_row_age.set(seconds);
    }
}
