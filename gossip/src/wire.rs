//! The replication messages peers exchange on QUIC streams: an [`Envelope`] naming cluster and
//! sender around one [`Msg`]. Their serde shape is the wire format (bytes are made in `codec`):
//! variants are only ever appended, so older nodes still decode every message they know.

use serde::{Deserialize, Serialize};

use crate::table::{truncate, Batch, Digest};

/// Replication messages, on streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub cluster: String,
    pub from: String,
    pub msg: Msg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// The sender's own changed rows.
    Push(Batch),
    /// What the sender holds; the receiver answers with what the sender lacks, and, unless
    /// `reply`, with its own digest when the sender holds something newer.
    Digest {
        digest: Digest,
        reply: bool,
    },
    Delta(Vec<Batch>),
    /// Anti-entropy's opening: the fingerprint of the sender's digest. A receiver whose own
    /// digest differs answers with its [`Msg::Digest`], which starts the usual exchange.
    /// (Appended last, so older nodes still decode every other message.)
    Summary {
        fingerprint: u64,
    },
    /// "Send me the certificates of these nodes": the receiver relayed a claim of theirs that
    /// the sender could not check yet. At most [`MAX_CERTS_PER_MESSAGE`] are answered.
    CertRequest(Vec<String>),
    /// Node certificates (DER), each checked against the cluster CA on arrival.
    Certs(Vec<Vec<u8>>),
    /// "Probe this origin now and tell me": the sender's own probes of it started failing,
    /// and it asks before it broadcasts the origin down. Names from the shared config, never
    /// an address, so a peer can only make the receiver probe what it probes anyway.
    ProbeAsk {
        id: u64,
        pool: String,
        origin: String,
    },
    /// The answer to the [`Msg::ProbeAsk`] of the same id.
    ProbeAnswer {
        id: u64,
        outcome: ProbeOutcome,
    },
}

/// What one probe asked of a peer found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeOutcome {
    /// The probe succeeded, in this many microseconds.
    Up { rtt_us: u32 },
    /// The probe failed, for this reason.
    Down { reason: String },
    /// No verdict: the origin is not in the peer's config or not monitored there, or the
    /// peer's own trouble (out of descriptors, overloaded) spoiled the probe.
    Unknown { why: String },
}

/// Longest reason or explanation in a [`ProbeOutcome`], in bytes.
pub const MAX_OUTCOME_TEXT: usize = 256;

impl ProbeOutcome {
    /// The outcome with its text cut to [`MAX_OUTCOME_TEXT`] bytes.
    pub fn bounded(self) -> ProbeOutcome {
        let cut = |s: String| truncate(&s, MAX_OUTCOME_TEXT).to_string();
        match self {
            ProbeOutcome::Down { reason } => ProbeOutcome::Down {
                reason: cut(reason),
            },
            ProbeOutcome::Unknown { why } => ProbeOutcome::Unknown { why: cut(why) },
            up => up,
        }
    }
}

/// Most certificates asked for or sent in one message.
pub const MAX_CERTS_PER_MESSAGE: usize = 64;
