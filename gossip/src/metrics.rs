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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Dir {
    Sent,
    Received,
}

// Label values in lower case, as Prometheus' own exporters write them.
impl EncodeLabelValue for Dir {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Dir::Sent => "sent",
            Dir::Received => "received",
        })
    }
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    direction: Dir,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    bound: &'static str,
}

/// Every bound the mesh counts in `mesh_bound_hits_total{bound}`, with what hitting it means
/// for the log line (written at most once a minute per bound).
pub(crate) const BOUNDS: &[(&str, &str)] = &[
    ("members", "member table full; updates about new members were not admitted (raise [mesh] expected_size if the cluster really grew)"),
    ("dial", "a send to a member this node has not admitted was dropped"),
    ("links", "peer links full; a new link or connection was refused"),
    ("connections", "QUIC connections full; an incoming connection was refused"),
    ("streams_out", "too many messages in flight to one peer; a message was dropped"),
    ("message_size", "a peer sent a replication message over the size limit; its stream was stopped"),
    ("stream_deadline", "a peer's replication message did not arrive in time; its stream was stopped"),
    ("inbox", "the mesh task's inbox is full; received messages were dropped"),
    ("writer_size", "a batch would grow a writer past the rows-per-writer limit; refused"),
    ("writers", "a batch would add a writer past the writer limit; refused"),
    ("digest", "a digest over the entry limit was refused"),
    ("local_rows", "this node has more health rows than peers accept of one writer; peers refuse its rows (fewer origins, or fewer pools per origin)"),
    ("answer", "an answer to a digest was cut at its size limit; the rest follows in later rounds"),
    ("probe_asks", "a peer asked this node to probe origins more often or more at once than the bound allows; asks were not served"),
];

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
    bound_hits: Family<BoundLabels, Counter>,
    links: Gauge,
    signatures: Family<OpLabels, Counter>,
    relay_refused: Family<ReasonLabels, Counter>,
    relay_streams: Family<PeerLabels, Counter>,
    relay_bytes: Family<PeerLabels, Counter>,
    /// The transport's count of handshakes refused as revoked, as last copied: the counter
    /// `refused{reason="revoked"}` also counts what the mesh task refuses, so it takes the
    /// transport's count as increments.
    revoked_handshakes: std::sync::Arc<AtomicU64>,
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
             a day ahead of this node's clock; revoked: a handshake, message or claim of a node \
             whose certificate is revoked; bad_certificate, pending_full)",
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
        r.register(
            "bound_hits",
            "Times a mesh bound was hit, by bound (members, dial, links, connections, \
             streams_out, message_size, stream_deadline, inbox, writer_size, writers, digest, \
             local_rows, answer)",
            self.bound_hits.clone(),
        );
        r.register("links", "Open links to peers", self.links.clone());
        r.register(
            "relay_refused",
            "Relay streams this node refused, by reason (not_member, revoked, second_hop, \
             per_peer, total, bad_request, deadline, busy: the mesh's checks; not_in_config, \
             origin_down, origin_disabled, not_relaying, unanswered: the node's)",
            self.relay_refused.clone(),
        );
        r.register(
            "relay_streams",
            "Relay streams accepted by the mesh's checks, by peer and direction (sent: this \
             node asked the peer; received: the peer asked this node)",
            self.relay_streams.clone(),
        );
        r.register(
            "relay_bytes",
            "Bytes carried on relay streams, by peer and direction (sent to the peer, received \
             from it), both for streams this node asked for and those it serves",
            self.relay_bytes.clone(),
        );
    }

    /// Counts a relay stream refused, by the mesh's checks or by the node's, by its reason's
    /// label (`RefuseReason::label`: the reasons live with the relay, which counts here).
    pub(crate) fn relay_refused(&self, reason: &'static str) {
        self.relay_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The byte counters of relay streams with `peer`.
    pub(crate) fn relay_bytes(&self, peer: &str) -> ByteCounters {
        let get = |direction| {
            self.relay_bytes
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                    direction,
                })
                .clone()
        };
        ByteCounters {
            received: get(Dir::Received),
            sent: get(Dir::Sent),
        }
    }

    pub(crate) fn relay_stream(&self, peer: &str, direction: Dir) {
        self.relay_streams
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                direction,
            })
            .inc();
    }

    pub(crate) fn bound_hit(&self, bound: &'static str) {
        self.bound_hits.get_or_create(&BoundLabels { bound }).inc();
    }

    /// Times `bound` was hit so far.
    pub(crate) fn bound_hits(&self, bound: &'static str) -> u64 {
        self.bound_hits.get_or_create(&BoundLabels { bound }).get()
    }

    /// Copies a count the transport keeps.
    pub(crate) fn set_bound_hits(&self, bound: &'static str, total: u64) {
        self.bound_hits
            .get_or_create(&BoundLabels { bound })
            .inner()
            .store(total, Ordering::Relaxed);
    }

    pub(crate) fn set_links(&self, links: usize) {
        self.links.set(links as i64);
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

    /// Adds the handshakes the transport refused as revoked since the last call (`total` is
    /// its running count) to `refused{reason="revoked"}`.
    pub(crate) fn set_revoked_handshakes(&self, total: u64) {
        let before = self.revoked_handshakes.swap(total, Ordering::Relaxed);
        if total > before {
            self.refused
                .get_or_create(&ReasonLabels { reason: "revoked" })
                .inc_by(total - before);
        }
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

/// Bytes a relay stream carried, per peer: received from it and sent to it.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    pub received: Counter,
    pub sent: Counter,
}
