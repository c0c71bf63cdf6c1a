//! The replication messages peers exchange on QUIC streams: an [`Envelope`] naming cluster and
//! sender around one [`Msg`]. Their serde shape is the wire format (bytes are made in `codec`):
//! variants are only ever appended, so older nodes still decode every message they know.

use serde::{Deserialize, Serialize};

use crate::table::{Batch, Digest};

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
}

/// Most certificates asked for or sent in one message.
pub const MAX_CERTS_PER_MESSAGE: usize = 64;
