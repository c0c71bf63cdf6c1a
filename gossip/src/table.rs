//! The replicated health table: every node's view of every origin, as each node probes it.
//! Each node is the only writer of its own rows and numbers its changes; the others hold
//! copies, learned from pushes, anti-entropy deltas and snapshots that may arrive late, twice,
//! out of order or not at all. This module is the pure core of that replication (what to
//! send, what to accept), with time passed in and no I/O, so convergence is tested by
//! simulation.
//!
//! Versions. A writer's rows belong to an epoch (its boot, e.g. unix ms at start: it must
//! grow across restarts) and each change takes the next sequence number of that epoch: the
//! changed row carries it, and so does a batch. A removal or a fingerprint change takes a
//! number too, without a row. A holder tracks per writer the highest seq up to which it has
//! every change (`seq` in the [`Digest`]), so anti-entropy only ships what is missing. A
//! removal cannot be shipped as rows, so a writer remembers the seq of its latest removal
//! (`removed_seq`) and anyone asked for changes since before it answers with a full batch.
//!
//! Invariant a holder keeps for each writer (epoch E, complete up to C): it holds exactly the
//! rows the writer had at seq C, with the writer's signature over that state (its *seal*).
//! [`Table::apply`] builds the state a batch leads to (a full batch's rows, or a delta laid
//! over the state held, which must reach back to the delta's base) and takes it only if the
//! writer's seal in the batch is a valid signature over it ([`Seal`]). So a relay can hand on
//! another writer's rows but cannot change, add or withhold a single one: it can only be late.
//! A delta whose base is ahead of what is held cannot be checked and is ignored
//! ([`Ignored::Gap`]); the holder asks for what it lacks instead. The writer signs its state
//! once per seq it sends (batches, not rows), and holders keep the seal to relay.

use std::cell::RefCell;
use std::collections::{btree_map, BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_geo::Region;
use tokio::time::Instant;

use crate::hash::{fnv1a, FNV_OFFSET};
use crate::identity::put_field;

/// Most rows one batch may carry.
pub const MAX_ROWS: usize = 10_000;
/// Longest node, pool or origin name, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest reason, in bytes; longer local reasons are cut to fit.
pub const MAX_REASON: usize = 1024;
/// Longest reason a node puts in its own rows ([`Table::set_local`] cuts longer ones): short
/// enough that what a node's config makes it gossip can be bounded ([`local_row_cost`]).
pub const LOCAL_REASON: usize = 160;
/// Most writers a table holds, so a confused peer inventing names cannot grow it unbounded.
pub const MAX_WRITERS: usize = 4096;
/// Most forgotten writers remembered (see [`Table::forget`]).
const MAX_FORGOTTEN: usize = 4096;
/// Most rows one writer may hold here. Equal to [`MAX_ROWS`], so a full snapshot of any
/// writer a holder accepted fits one batch: a writer allowed to grow past what one batch
/// carries could never be snapshotted again, and anti-entropy for it would break for good.
/// A batch that would grow a writer past it is refused whole ([`TableError::WriterTooLarge`]).
pub const MAX_WRITER_ROWS: usize = MAX_ROWS;
/// Most bytes of rows one writer may hold here, counted as encoded ([`row_cost`]), for the
/// same reason: a full snapshot of any writer must fit one stream message
/// (`transport::MAX_STREAM`, 2 MiB), with room left for the envelope and a signature. At a
/// typical 100 bytes a row this is about 10,000 rows.
pub const MAX_WRITER_BYTES: usize = 1 << 20;
/// Most entries a digest may carry: one per writer a table may hold, plus the local one. A
/// larger digest is refused unread ([`TableError::DigestTooLarge`]).
pub const MAX_DIGEST: usize = MAX_WRITERS + 1;
/// Most bytes of rows ([`row_cost`]) one answer to a digest carries, and most batches: an
/// empty or stale digest is answered with the first writers it lacks up to this, never with
/// the whole table at once; the asker pulls the rest in the following anti-entropy rounds.
/// An answer always carries at least one batch, so every writer can be sent.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;
/// See [`MAX_ANSWER_BYTES`].
pub const MAX_ANSWER_BATCHES: usize = 128;

/// Most public addresses one writer may advertise ([`Advert::addresses`]).
pub const MAX_ADVERT_ADDRESSES: usize = 16;
/// Most names one writer may advertise ([`Advert::names`]).
pub const MAX_ADVERT_NAMES: usize = 256;
/// Longest advertised name, in bytes: one DNS label.
pub const MAX_ADVERT_NAME: usize = 63;

/// What a writer says of itself for the mesh's DNS, signed with its rows: where clients
/// reach it, whether it takes connections now, which names it can serve now, and how far
/// it is from each region. Changes push at once, like a flip. Bounded
/// ([`MAX_ADVERT_ADDRESSES`], [`MAX_ADVERT_NAMES`], [`MAX_ADVERT_NAME`]) and canonical
/// (names and regions sorted, each once), so two holders of one claim agree byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The node's public addresses (`[node] public_addresses`).
    pub addresses: Vec<IpAddr>,
    /// Not draining, not sick, no local trouble: what `/ready` says.
    pub ready: bool,
    /// It answers DNS for the zone (`[dns]`), so it is one of the zone's nameservers.
    pub nameserver: bool,
    /// Each DNS name the node's apps serve (the app's `hostname`), and whether that app's
    /// load balancer has a healthy pool in the node's own view now.
    pub names: Vec<(String, bool)>,
    /// The node's mean SWIM round trip to each region's live members, in milliseconds.
    pub rtt_ms: Vec<(Region, u32)>,
}

impl Advert {
    /// An upper bound of its encoded size, for [`batch_cost`].
    fn cost(&self) -> usize {
        self.addresses.len() * 18
            + self.names.iter().map(|(n, _)| n.len() + 4).sum::<usize>()
            + self.rtt_ms.len() * 8
            + 8
    }

    /// Its signed form (see [`Writer::claim`]).
    fn put_claim(&self, out: &mut Vec<u8>) {
        out.extend((self.addresses.len() as u64).to_le_bytes());
        for a in &self.addresses {
            match a {
                IpAddr::V4(v4) => {
                    out.push(4);
                    out.extend(v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(6);
                    out.extend(v6.octets());
                }
            }
        }
        out.push(u8::from(self.ready));
        out.push(u8::from(self.nameserver));
        out.extend((self.names.len() as u64).to_le_bytes());
        for (name, serving) in &self.names {
            put_field(out, name.as_bytes());
            out.push(u8::from(*serving));
        }
        out.extend((self.rtt_ms.len() as u64).to_le_bytes());
        for (region, ms) in &self.rtt_ms {
            put_field(out, region.code().as_bytes());
            out.extend(ms.to_le_bytes());
        }
    }

    /// Why peers would refuse it, if they would.
    pub fn check(&self) -> Result<(), String> {
        if self.addresses.len() > MAX_ADVERT_ADDRESSES {
            return Err(format!(
                "{} addresses, over the {MAX_ADVERT_ADDRESSES}-address limit",
                self.addresses.len()
            ));
        }
        if self.names.len() > MAX_ADVERT_NAMES {
            return Err(format!(
                "{} names, over the {MAX_ADVERT_NAMES}-name limit",
                self.names.len()
            ));
        }
        for (name, _) in &self.names {
            if name.is_empty() || name.len() > MAX_ADVERT_NAME {
                return Err(format!(
                    "a name of {} bytes: names are 1 to {MAX_ADVERT_NAME} bytes",
                    name.len()
                ));
            }
        }
        if self.names.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err("names not sorted, or one twice".into());
        }
        if self
            .rtt_ms
            .windows(2)
            .any(|w| w[0].0.index() >= w[1].0.index())
        {
            return Err("round trips not sorted by region, or a region twice".into());
        }
        Ok(())
    }
}

/// An upper bound of a row's encoded size (bincode varints: at most 3 bytes of length prefix
/// for a name of up to [`MAX_NAME`] bytes, 9 for a u64), what [`MAX_WRITER_BYTES`] counts.
pub fn row_cost(row: &Row) -> usize {
    // pool, origin and reason: prefix and bytes; healthy 1; rtt 1 + 5; last change 9;
    // reason's tag 1; verdict 2; seq 9.
    row.pool.len() + row.origin.len() + row.reason.as_ref().map_or(0, String::len) + 9 + 28
}

/// An upper bound of a batch's encoded size: its rows ([`row_cost`]), its writer's name, its
/// seal, its advert, and 64 bytes for the rest.
pub fn batch_cost(b: &Batch) -> usize {
    b.node.len() + b.sig.len() + 64 + b.advert.cost() + b.rows.iter().map(row_cost).sum::<usize>()
}

/// Most bytes of batches ([`batch_cost`]) packed into one delta message by [`pack`]: half a
/// stream message (`transport::MAX_STREAM`), so envelope and estimate errors always fit.
pub const MAX_DELTA_BYTES: usize = 1 << 20;

/// Packs `batches`, in order, into as few delta messages as fit [`MAX_DELTA_BYTES`] each; a
/// batch over it on its own goes alone (a writer's rows always fit one stream message).
/// One message per batch made a 50-node mesh's join send hundreds of messages a node, more
/// than a peer's send queue holds.
pub fn pack(batches: Vec<Batch>) -> Vec<Vec<Batch>> {
    let mut out: Vec<Vec<Batch>> = Vec::new();
    let mut bytes = 0;
    for b in batches {
        let cost = batch_cost(&b);
        match out.last_mut() {
            Some(last) if bytes + cost <= MAX_DELTA_BYTES => {
                bytes += cost;
                last.push(b);
            }
            _ => {
                bytes = cost;
                out.push(vec![b]);
            }
        }
    }
    out
}

/// The most a local row of `pool`/`origin` can cost in [`MAX_WRITER_BYTES`], its reason cut
/// to [`LOCAL_REASON`]: what `switchyard check` adds up for a node's config.
pub fn local_row_cost(pool: &str, origin: &str) -> usize {
    pool.len() + origin.len() + LOCAL_REASON + 9 + 28
}

/// An RTT move of less than this fraction of the replicated value and also under
/// [`RTT_MIN_DELTA_US`] is not replicated: probe jitter would otherwise make an idle mesh
/// chatter on every probe.
const RTT_MIN_DELTA_PERCENT: u64 = 5;
const RTT_MIN_DELTA_US: u32 = 1_000;

/// One origin as one node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub pool: String,
    pub origin: String,
    pub healthy: bool,
    /// Moving average of the probe round-trip time, in microseconds.
    pub rtt_us: Option<u32>,
    /// When health last changed, on the writer's wall clock (unix ms).
    pub last_change_ms: u64,
    pub reason: Option<String>,
    /// On a down row, whose fault its writer found it to be after asking peers; None on an
    /// up row, or when nobody could be asked.
    pub verdict: Option<Verdict>,
    /// The writer's seq at this row's latest change.
    pub seq: u64,
}

/// Whose fault a down row is, as its writer found out by asking peers in other regions to
/// probe the origin now (SWIM's ping-req, applied to origins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The writer has asked and waits for answers. Its own view uses the row; peers never
    /// see it (the node publishes the row as it was until the answers are in).
    Pending,
    /// The peers asked fail too: the origin is down, and the row counts everywhere.
    Origin,
    /// The peers asked reach the origin: only the path from the writer is down. The row
    /// counts in the writer's region and not in global health.
    Path,
    /// No peer answered in time: the row counts as if the origin were down.
    Unconfirmed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Origin => "origin",
            Verdict::Path => "path",
            Verdict::Unconfirmed => "unconfirmed",
        }
    }

    /// Its byte in a writer's signed claim; 0 is "none".
    fn tag(v: Option<Verdict>) -> u8 {
        match v {
            None => 0,
            Some(Verdict::Pending) => 1,
            Some(Verdict::Origin) => 2,
            Some(Verdict::Path) => 3,
            Some(Verdict::Unconfirmed) => 4,
        }
    }
}

/// What a writer says of one of its origins ([`Table::set_local`]): a row without its names
/// and seq.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    pub healthy: bool,
    pub rtt_us: Option<u32>,
    /// When health last changed, on the writer's wall clock (unix ms).
    pub last_change_ms: u64,
    pub reason: Option<&'a str>,
    pub verdict: Option<Verdict>,
}

/// A writer's rows on the wire: a push, a delta for anti-entropy, or a full snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub node: String,
    pub region: Region,
    pub epoch: u64,
    /// The receiver may count seqs up to the batch's highest as received only if it already
    /// had every seq <= base_seq.
    pub base_seq: u64,
    /// The batch's highest seq: the writer's seq when it was made (a removal or a fingerprint
    /// change takes a seq without any row carrying it, so the rows cannot tell). A relay's
    /// batch may carry rows newer than this, which it holds without having all before them.
    pub seq: u64,
    /// The writer's seq at its latest row removal, so a relay knows when a delta cannot
    /// express what changed. A delta always has `removed_seq <= base_seq`.
    pub removed_seq: u64,
    /// A full snapshot: the writer's rows are exactly these.
    pub full: bool,
    /// Fingerprint of the writer's config, for drift detection.
    pub fingerprint: u64,
    /// What the writer says of itself for DNS, as of `seq`.
    pub advert: Advert,
    pub rows: Vec<Row>,
    /// The writer's seal: its signature over the state this batch leads to (see [`Seal`]).
    pub sig: Vec<u8>,
}

/// Why a writer's seal was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealRefusal {
    /// The writer's certificate is not known here yet: the batch is ignored, not refused.
    UnknownSigner,
    /// Not the writer's signature over the state the batch leads to.
    BadSignature,
    /// The writer's certificate names another region than the batch claims.
    WrongRegion,
    /// The writer's certificate is revoked (`tls::Revoked`).
    Revoked,
}

impl SealRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SealRefusal::UnknownSigner => "unknown_signer",
            SealRefusal::BadSignature => "bad_signature",
            SealRefusal::WrongRegion => "wrong_region",
            SealRefusal::Revoked => "revoked",
        }
    }
}

/// Signs the local writer's state and checks a peer writer's. In the mesh it is the node's
/// key and the certificates of the cluster; [`Unsealed`] leaves replication alone for tests.
pub trait Seal: fmt::Debug + Send + Sync {
    /// This node's signature over `claim` (empty if it cannot sign).
    fn sign(&self, claim: &[u8]) -> Vec<u8>;
    /// Whether `sig` is `node`'s signature over `claim`, and `node` may speak for `region`.
    fn verify(
        &self,
        node: &str,
        region: Region,
        claim: &[u8],
        sig: &[u8],
    ) -> Result<(), SealRefusal>;
}

/// Signs nothing and accepts everything: the table's rules without cryptography.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsealed;

impl Seal for Unsealed {
    fn sign(&self, _claim: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn verify(&self, _: &str, _: Region, _: &[u8], _: &[u8]) -> Result<(), SealRefusal> {
        Ok(())
    }
}

/// What a node holds: per writer, its epoch and the highest seq up to which it has everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub entries: Vec<(String, u64 /*epoch*/, u64 /*seq*/)>,
}

impl Digest {
    /// A fingerprint of what the digest says, the same whatever the order of its entries
    /// (each node lists itself first). Anti-entropy sends this first and the digest itself
    /// only when the two differ, so a mesh in sync exchanges a few bytes per round however
    /// many writers it has.
    pub fn fingerprint(&self) -> u64 {
        let mut entries: Vec<&(String, u64, u64)> = self.entries.iter().collect();
        entries.sort_unstable();
        entries
            .into_iter()
            .fold(FNV_OFFSET, |h, (node, epoch, seq)| {
                let h = fnv1a(h, &(node.len() as u64).to_le_bytes());
                let h = fnv1a(h, node.as_bytes());
                fnv1a(fnv1a(h, &epoch.to_le_bytes()), &seq.to_le_bytes())
            })
    }
}

/// What [`Table::set_local`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Health changed, or the row is new.
    Flip,
    /// Only the RTT or the reason changed.
    Rtt,
}

/// One row whose health changed in an [`Table::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    pub node: String,
    pub pool: String,
    pub origin: String,
    /// The new health; None when the row went away.
    pub healthy: Option<bool>,
}

/// Why a well-formed batch was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// It carried this node's own rows, which only this node writes.
    OwnRows,
    /// Its epoch is older than the writer's epoch held here.
    OlderEpoch,
    /// Its writer was forgotten and has not restarted since.
    Forgotten,
    /// A delta starting past what is held: the state it leads to, and so its seal, cannot be
    /// checked. Ask its sender for what is missing.
    Gap,
    /// Its writer's certificate is not known here yet. Ask for it.
    UnknownSigner,
}

/// What [`Table::apply`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Some row's health, RTT or reason changed, or rows appeared or went away: rebuild views.
    pub changed: bool,
    /// Rows whose health changed, appeared or went away.
    pub flips: Vec<Flip>,
    /// The writer's region, config fingerprint or advert changed (or the writer is new).
    pub meta_changed: bool,
    pub ignored: Option<Ignored>,
    /// The mesh holds rows of this node from an epoch not older than the current one: a
    /// previous run of this node with a clock ahead, or the same epoch reused. The table took
    /// this epoch, above it, so its rows win again; push a snapshot of the local rows.
    pub local_epoch_bumped: Option<u64>,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Batches refused as malformed.
    pub malformed: u64,
    /// Batches carrying this node's own rows, dropped.
    pub own_rows: u64,
    /// Batches from an older epoch or a forgotten writer, dropped.
    pub stale: u64,
    /// Local rows refused by `set_local` because a name is empty or over [`MAX_NAME`].
    pub local_refused: u64,
    /// Batches refused because they would grow a writer past [`MAX_WRITER_ROWS`] or
    /// [`MAX_WRITER_BYTES`].
    pub writer_too_large: u64,
    /// Batches whose seal did not verify (not the writer's signature, or the wrong region).
    pub bad_seal: u64,
    /// Batches ignored as a gap or for an unknown signer.
    pub unverifiable: u64,
    /// Batches carrying the very claim already held (same version, same seal), taken
    /// without verifying the signature again.
    pub duplicates: u64,
}

/// Why a batch was refused; nothing of a refused batch is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("batch names no node")]
    EmptyNode,
    #[error("batch node name of {0} bytes is over the {MAX_NAME}-byte limit")]
    NodeTooLong(usize),
    #[error("batch from {node} has {rows} rows, over the {MAX_ROWS}-row limit")]
    TooManyRows { node: String, rows: usize },
    #[error("batch from {node}: a row has an empty {what} name")]
    EmptyName { node: String, what: &'static str },
    #[error(
        "batch from {node}: a row's {what} name of {len} bytes is over the {MAX_NAME}-byte limit"
    )]
    NameTooLong {
        node: String,
        what: &'static str,
        len: usize,
    },
    #[error(
        "batch from {node}: row {pool}/{origin} has a reason of {len} bytes, \
         over the {MAX_REASON}-byte limit"
    )]
    ReasonTooLong {
        node: String,
        pool: String,
        origin: String,
        len: usize,
    },
    #[error("batch from {node}: row {pool}/{origin} appears twice")]
    DuplicateRow {
        node: String,
        pool: String,
        origin: String,
    },
    #[error("batch from {node}: two rows share seq {seq}")]
    DuplicateSeq { node: String, seq: u64 },
    #[error("batch from {node} has inconsistent seqs: {detail}")]
    BadSeq { node: String, detail: String },
    #[error("batch from {node} would make one writer too many (limit {MAX_WRITERS})")]
    TooManyWriters { node: String },
    #[error(
        "batch from {node} would grow its rows to {rows} ({bytes} bytes), over the \
         {MAX_WRITER_ROWS}-row or {MAX_WRITER_BYTES}-byte limit of one writer"
    )]
    WriterTooLarge {
        node: String,
        rows: usize,
        bytes: usize,
    },
    #[error("digest of {0} entries is over the {MAX_DIGEST}-entry limit")]
    DigestTooLarge(usize),
    #[error("batch from {node}: its advert is refused: {detail}")]
    Advert { node: String, detail: String },
    #[error("batch from {node}: its seal does not hold ({})", .why.as_str())]
    Seal { node: String, why: SealRefusal },
}

/// Read access to one writer's rows.
#[derive(Debug, Clone)]
pub struct WriterView<'a> {
    pub node: &'a str,
    pub region: Region,
    pub fingerprint: u64,
    pub advert: &'a Advert,
    pub epoch: u64,
    /// Up to where this table has every change of the writer.
    pub seq: u64,
    /// Whether this is the local node.
    pub local: bool,
    /// The writer's rows by pool then origin, each with the instant it was last received (or,
    /// for local rows, last changed).
    pub rows: WriterRows<'a>,
}

/// The rows of a [`WriterView`].
#[derive(Debug, Clone)]
pub struct WriterRows<'a> {
    pools: btree_map::Values<'a, String, BTreeMap<String, Stored>>,
    origins: Option<btree_map::Values<'a, String, Stored>>,
    left: usize,
}

impl<'a> Iterator for WriterRows<'a> {
    type Item = (&'a Row, Instant);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.origins.as_mut().and_then(Iterator::next) {
                self.left = self.left.saturating_sub(1);
                return Some((&s.row, s.at));
            }
            self.origins = Some(self.pools.next()?.values());
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for WriterRows<'_> {}

#[derive(Debug, Clone)]
struct Stored {
    row: Row,
    at: Instant,
}

/// Rows keyed by pool then origin, so lookups take `&str` without allocating.
#[derive(Debug, Clone, Default)]
struct Rows {
    by_pool: BTreeMap<String, BTreeMap<String, Stored>>,
    len: usize,
    /// Sum of [`row_cost`] over the rows.
    bytes: usize,
}

impl Rows {
    fn get(&self, pool: &str, origin: &str) -> Option<&Stored> {
        self.by_pool.get(pool)?.get(origin)
    }

    fn get_mut(&mut self, pool: &str, origin: &str) -> Option<&mut Stored> {
        self.by_pool.get_mut(pool)?.get_mut(origin)
    }

    fn insert(&mut self, stored: Stored) {
        let origins = match self.by_pool.get_mut(&stored.row.pool) {
            Some(origins) => origins,
            None => self.by_pool.entry(stored.row.pool.clone()).or_default(),
        };
        self.bytes += row_cost(&stored.row);
        match origins.insert(stored.row.origin.clone(), stored) {
            None => self.len += 1,
            Some(old) => self.bytes -= row_cost(&old.row),
        }
    }

    fn remove(&mut self, pool: &str, origin: &str) -> Option<Stored> {
        let origins = self.by_pool.get_mut(pool)?;
        let removed = origins.remove(origin)?;
        if origins.is_empty() {
            self.by_pool.remove(pool);
        }
        self.len -= 1;
        self.bytes -= row_cost(&removed.row);
        Some(removed)
    }

    fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.by_pool.values().flat_map(|o| o.values())
    }

    fn rows_since(&self, since: u64) -> Vec<Row> {
        self.iter()
            .filter(|s| s.row.seq > since)
            .map(|s| s.row.clone())
            .collect()
    }
}

/// What views are built from: the fields whose change makes `apply` report `changed`.
#[derive(Debug, Clone, PartialEq)]
struct Visible {
    healthy: bool,
    rtt_us: Option<u32>,
    reason: Option<String>,
    verdict: Option<Verdict>,
}

impl Visible {
    fn of(row: &Row) -> Self {
        Visible {
            healthy: row.healthy,
            rtt_us: row.rtt_us,
            reason: row.reason.clone(),
            verdict: row.verdict,
        }
    }
}

/// One writer's rows and versions, as held here.
#[derive(Debug, Clone)]
struct Writer {
    region: Region,
    fingerprint: u64,
    advert: Advert,
    epoch: u64,
    /// Every change up to here is held (for the local writer: its current seq).
    seq: u64,
    /// At or above the writer's seq of its latest removal as of `seq`, and never above `seq`.
    removed_seq: u64,
    rows: Rows,
    /// A peer writer's seal over exactly this state (unused for the local writer, whose seal
    /// is made when a batch of it is sent).
    sig: Vec<u8>,
}

impl Writer {
    fn empty(region: Region, epoch: u64, fingerprint: u64) -> Self {
        Writer {
            region,
            fingerprint,
            advert: Advert::default(),
            epoch,
            seq: 0,
            removed_seq: 0,
            rows: Rows::default(),
            sig: Vec::new(),
        }
    }

    /// What the writer signs: everything a holder keeps of it, rows in (pool, origin) order,
    /// each field length-prefixed behind a domain tag. Arrival times are the holder's own.
    fn claim(&self, node: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.rows.len * 64);
        put_field(&mut out, b"switchyard/rows/3");
        put_field(&mut out, node.as_bytes());
        put_field(&mut out, self.region.code().as_bytes());
        for n in [self.epoch, self.seq, self.removed_seq, self.fingerprint] {
            out.extend(n.to_le_bytes());
        }
        self.advert.put_claim(&mut out);
        out.extend((self.rows.len as u64).to_le_bytes());
        for s in self.rows.iter() {
            let r = &s.row;
            put_field(&mut out, r.pool.as_bytes());
            put_field(&mut out, r.origin.as_bytes());
            out.push(u8::from(r.healthy));
            match r.rtt_us {
                Some(us) => {
                    out.push(1);
                    out.extend(us.to_le_bytes());
                }
                None => out.push(0),
            }
            out.extend(r.last_change_ms.to_le_bytes());
            match &r.reason {
                Some(reason) => {
                    out.push(1);
                    put_field(&mut out, reason.as_bytes());
                }
                None => out.push(0),
            }
            out.push(Verdict::tag(r.verdict));
            out.extend(r.seq.to_le_bytes());
        }
        out
    }

    fn batch(&self, node: &str, base_seq: u64, full: bool, rows: Vec<Row>) -> Batch {
        Batch {
            node: node.to_string(),
            region: self.region,
            epoch: self.epoch,
            base_seq,
            seq: self.seq,
            removed_seq: self.removed_seq,
            full,
            fingerprint: self.fingerprint,
            advert: self.advert.clone(),
            rows,
            sig: self.sig.clone(),
        }
    }

    fn full(&self, node: &str) -> Batch {
        self.batch(node, 0, true, self.rows.rows_since(0))
    }

    /// Changes after `since`, or everything when a delta cannot express them.
    fn since(&self, node: &str, since: u64) -> Batch {
        if since < self.removed_seq || since > self.seq {
            self.full(node)
        } else {
            self.batch(node, since, false, self.rows.rows_since(since))
        }
    }

    fn view<'a>(&'a self, node: &'a str, local: bool) -> WriterView<'a> {
        WriterView {
            node,
            region: self.region,
            fingerprint: self.fingerprint,
            advert: &self.advert,
            epoch: self.epoch,
            seq: self.seq,
            local,
            rows: WriterRows {
                pools: self.rows.by_pool.values(),
                origins: None,
                left: self.rows.len,
            },
        }
    }
}

/// The old visible state of every row a batch touched, to report what changed.
#[derive(Default)]
struct Touched(HashMap<(String, String), Option<Visible>>);

impl Touched {
    fn note(&mut self, pool: &str, origin: &str, old: Option<&Stored>) {
        self.0
            .entry((pool.to_string(), origin.to_string()))
            .or_insert_with(|| old.map(|s| Visible::of(&s.row)));
    }

    fn report(self, node: &str, rows: &Rows, applied: &mut Applied) {
        let mut touched: Vec<_> = self.0.into_iter().collect();
        touched.sort_by(|a, b| a.0.cmp(&b.0));
        for ((pool, origin), old) in touched {
            let new = rows.get(&pool, &origin).map(|s| Visible::of(&s.row));
            if old == new {
                continue;
            }
            applied.changed = true;
            let was = old.map(|v| v.healthy);
            let is = new.map(|v| v.healthy);
            if was != is {
                applied.flips.push(Flip {
                    node: node.to_string(),
                    pool,
                    origin,
                    healthy: is,
                });
            }
        }
    }
}

/// The replicated health table of one node.
#[derive(Debug, Clone)]
pub struct Table {
    local_name: String,
    local: Writer,
    peers: BTreeMap<String, Writer>,
    /// Writers forgotten, with the epoch they had: a peer that has not forgotten them yet
    /// must not bring them back, but a restart (newer epoch) does.
    forgotten: BTreeMap<String, u64>,
    stats: TableStats,
    seal: Arc<dyn Seal>,
    /// The local writer's latest seal: (epoch, seq, signature). Made when a batch of that
    /// state is first sent, so a burst of changes costs one signature.
    local_seal: RefCell<Option<(u64, u64, Vec<u8>)>>,
}

impl Table {
    /// A table without signatures ([`Unsealed`]); the mesh sets its seal with
    /// [`Table::with_seal`].
    pub fn new(local: String, region: Region, epoch: u64, fingerprint: u64) -> Self {
        Table {
            local_name: local,
            local: Writer::empty(region, epoch, fingerprint),
            peers: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            stats: TableStats::default(),
            seal: Arc::new(Unsealed),
            local_seal: RefCell::new(None),
        }
    }

    /// Signs local batches and checks peers' with `seal`.
    pub fn with_seal(mut self, seal: Arc<dyn Seal>) -> Self {
        self.seal = seal;
        self
    }

    /// Puts the local writer's seal on a batch of it.
    fn sealed(&self, mut batch: Batch) -> Batch {
        if batch.node != self.local_name {
            return batch;
        }
        let mut cache = self.local_seal.borrow_mut();
        let key = (self.local.epoch, self.local.seq);
        match cache.as_ref() {
            Some((epoch, seq, sig)) if (*epoch, *seq) == key => batch.sig = sig.clone(),
            _ => {
                let sig = self.seal.sign(&self.local.claim(&self.local_name));
                batch.sig = sig.clone();
                *cache = Some((key.0, key.1, sig));
            }
        }
        batch
    }

    /// The local writer's key changed (a rotated certificate): the next batch takes a new seq,
    /// so that it carries a seal made with the new key instead of the one peers hold.
    pub fn reseal(&mut self) {
        self.local.seq += 1;
        *self.local_seal.borrow_mut() = None;
    }

    pub fn local_name(&self) -> &str {
        &self.local_name
    }

    pub fn local_epoch(&self) -> u64 {
        self.local.epoch
    }

    pub fn local_seq(&self) -> u64 {
        self.local.seq
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Whether the local rows are within what peers accept of one writer
    /// ([`MAX_WRITER_ROWS`], [`MAX_WRITER_BYTES`]); beyond, every peer refuses them.
    pub fn local_within_bounds(&self) -> bool {
        self.local.rows.len <= MAX_WRITER_ROWS && self.local.rows.bytes <= MAX_WRITER_BYTES
    }

    /// Sets the local config fingerprint. A change takes a seq, so that pushes and
    /// anti-entropy carry it even when no row changes.
    pub fn set_fingerprint(&mut self, fp: u64) {
        if self.local.fingerprint != fp {
            self.local.fingerprint = fp;
            self.local.seq += 1;
        }
    }

    /// Sets what the local writer says of itself for DNS. A change takes a seq, as a
    /// fingerprint change does; returns whether it changed. One peers would refuse
    /// ([`Advert::check`]) is refused here (counted in [`TableStats::local_refused`]).
    pub fn set_advert(&mut self, advert: Advert) -> bool {
        if advert.check().is_err() {
            self.stats.local_refused += 1;
            return false;
        }
        if self.local.advert == advert {
            return false;
        }
        self.local.advert = advert;
        self.local.seq += 1;
        true
    }

    /// Updates one local row; bumps the local seq only if something changed. Returns Flip
    /// when `healthy` changed (or the row is new), Rtt when only the RTT/reason changed, None
    /// otherwise.
    ///
    /// An RTT change is ignored (None) when it is both under 5% of the RTT last replicated
    /// and under 1 ms: measured against the replicated value, not the last sample, so a slow
    /// drift still crosses the threshold. `last_change_ms` is taken only along with a change
    /// that is replicated; alone it changes nothing. A reason over [`MAX_REASON`] bytes is cut
    /// to fit; a row with an empty name or one over [`MAX_NAME`] bytes is refused (None,
    /// counted in [`TableStats::local_refused`]), since every peer would refuse it.
    pub fn set_local(
        &mut self,
        pool: &str,
        origin: &str,
        obs: Observation<'_>,
        now: Instant,
    ) -> Option<Change> {
        if !valid_name(pool) || !valid_name(origin) {
            self.stats.local_refused += 1;
            return None;
        }
        let reason = obs.reason.map(|r| truncate(r, LOCAL_REASON));
        let change = match self.local.rows.get(pool, origin) {
            None => Change::Flip,
            Some(old) if old.row.healthy != obs.healthy || old.row.verdict != obs.verdict => {
                Change::Flip
            }
            Some(old) => {
                if !rtt_moved(old.row.rtt_us, obs.rtt_us) && old.row.reason.as_deref() == reason {
                    return None;
                }
                Change::Rtt
            }
        };
        self.local.seq += 1;
        self.local.rows.insert(Stored {
            row: Row {
                pool: pool.to_string(),
                origin: origin.to_string(),
                healthy: obs.healthy,
                rtt_us: obs.rtt_us,
                last_change_ms: obs.last_change_ms,
                reason: reason.map(str::to_string),
                verdict: obs.verdict,
                seq: self.local.seq,
            },
            at: now,
        });
        Some(change)
    }

    /// Removes one local row (e.g. its origin left the config). Returns whether it existed.
    pub fn remove_local(&mut self, pool: &str, origin: &str) -> bool {
        if self.local.rows.remove(pool, origin).is_none() {
            return false;
        }
        self.local.seq += 1;
        self.local.removed_seq = self.local.seq;
        true
    }

    /// The local rows changed since seq `since` as one Batch (base_seq = since), for pushes.
    /// It is a full batch instead when a row was removed after `since` (a delta cannot say
    /// so) or `since` is ahead of the local seq.
    pub fn local_since(&self, since: u64) -> Batch {
        self.sealed(self.local.since(&self.local_name, since))
    }

    /// Applies a batch from a peer. Never lets a peer write the local node's rows (count and
    /// drop). A higher epoch of a writer replaces all its older-epoch rows; an older epoch is
    /// ignored. The batch leads to a state (a full batch: its rows; a delta: laid over the
    /// rows held, which must reach its base, else [`Ignored::Gap`]), taken whole only if the
    /// writer's seal verifies over it, and only if it is not older than what is held. A
    /// malformed or badly sealed batch is refused whole.
    pub fn apply(&mut self, batch: Batch, now: Instant) -> Result<Applied, TableError> {
        if let Err(e) = validate(&batch) {
            self.stats.malformed += 1;
            return Err(e);
        }
        if batch.node == self.local_name {
            return Ok(self.own_rows(&batch, now));
        }
        if let Some(&epoch) = self.forgotten.get(&batch.node) {
            if batch.epoch <= epoch {
                self.stats.stale += 1;
                return Ok(Applied {
                    ignored: Some(Ignored::Forgotten),
                    ..Applied::default()
                });
            }
        }
        if !self.peers.contains_key(&batch.node) && self.peers.len() >= MAX_WRITERS {
            return Err(TableError::TooManyWriters { node: batch.node });
        }

        let held = self.peers.get(&batch.node);
        let same_epoch = held.filter(|w| w.epoch == batch.epoch);
        if held.is_some_and(|w| w.epoch > batch.epoch) {
            self.stats.stale += 1;
            return Ok(Applied {
                ignored: Some(Ignored::OlderEpoch),
                ..Applied::default()
            });
        }
        let c = same_epoch.map_or(0, |w| w.seq);
        if same_epoch.is_some() && batch.seq < c {
            return Ok(Applied::default());
        }
        if !batch.full && batch.base_seq > c {
            self.stats.unverifiable += 1;
            return Ok(Applied {
                ignored: Some(Ignored::Gap),
                ..Applied::default()
            });
        }

        let mut rows = match same_epoch {
            Some(w) if !batch.full => w.rows.clone(),
            _ => Rows::default(),
        };
        for row in batch.rows {
            match rows.get_mut(&row.pool, &row.origin) {
                Some(held) if held.row.seq > row.seq => {}
                Some(held) if held.row.seq == row.seq => held.at = now,
                _ => rows.insert(Stored { row, at: now }),
            }
        }
        // A delta laid over the rows held must lead to a state the writer could have had:
        // its rows are checked apart from the held ones (`validate`), but one of them may
        // share a seq with a held row of another origin. Such a state can only be forged or
        // signed by a lying writer, and holding it would break anti-entropy for the writer:
        // every new holder refuses the snapshot of it (a full batch with a shared seq).
        if !batch.full && same_epoch.is_some() {
            if let Some(seq) = shared_seq(rows.iter().map(|s| &s.row), rows.len) {
                self.stats.malformed += 1;
                return Err(TableError::DuplicateSeq {
                    node: batch.node,
                    seq,
                });
            }
        }
        let candidate = Writer {
            region: batch.region,
            fingerprint: batch.fingerprint,
            advert: batch.advert,
            epoch: batch.epoch,
            seq: batch.seq,
            removed_seq: batch.removed_seq,
            rows,
            sig: batch.sig,
        };
        // Bounded before the signature is checked: an oversized writer costs no verification.
        let (rows, bytes) = (candidate.rows.len, candidate.rows.bytes);
        if rows > MAX_WRITER_ROWS || bytes > MAX_WRITER_BYTES {
            self.stats.writer_too_large += 1;
            return Err(TableError::WriterTooLarge {
                node: batch.node,
                rows,
                bytes,
            });
        }
        let claim = candidate.claim(&batch.node);
        // The same signed claim as the one held (a batch that came by several peers at once,
        // as when nodes join) was verified when it was taken: checking it again buys nothing.
        let held_already = same_epoch.is_some_and(|w| {
            w.seq == batch.seq && w.sig == candidate.sig && w.claim(&batch.node) == claim
        });
        match if held_already {
            self.stats.duplicates += 1;
            Ok(())
        } else {
            self.seal
                .verify(&batch.node, batch.region, &claim, &candidate.sig)
        } {
            Ok(()) => {}
            Err(SealRefusal::UnknownSigner) => {
                self.stats.unverifiable += 1;
                return Ok(Applied {
                    ignored: Some(Ignored::UnknownSigner),
                    ..Applied::default()
                });
            }
            Err(why) => {
                self.stats.bad_seal += 1;
                return Err(TableError::Seal {
                    node: batch.node,
                    why,
                });
            }
        }

        self.forgotten.remove(&batch.node);
        let mut applied = Applied::default();
        let mut touched = Touched::default();
        match self.peers.get(&batch.node) {
            None => applied.meta_changed = true,
            Some(old) => {
                applied.meta_changed = old.region != candidate.region
                    || old.fingerprint != candidate.fingerprint
                    || old.advert != candidate.advert;
                for s in old.rows.iter() {
                    touched.note(&s.row.pool, &s.row.origin, Some(s));
                }
            }
        }
        for s in candidate.rows.iter() {
            touched.note(&s.row.pool, &s.row.origin, None);
        }
        touched.report(&batch.node, &candidate.rows, &mut applied);
        self.peers.insert(batch.node, candidate);
        Ok(applied)
    }

    /// A peer sent rows of this node. They are never taken; but if they come from a run of
    /// this node the mesh ranks above the current one, the current one could never replace
    /// them, so it moves to an epoch above theirs. A full batch must carry this node's own
    /// seal; a delta cannot be checked, so only one of the current epoch (a reused epoch) is
    /// believed, which at worst moves this node one epoch up.
    fn own_rows(&mut self, batch: &Batch, now: Instant) -> Applied {
        self.stats.own_rows += 1;
        let mut applied = Applied {
            ignored: Some(Ignored::OwnRows),
            ..Applied::default()
        };
        let local = &self.local;
        let ahead =
            batch.epoch > local.epoch || (batch.epoch == local.epoch && batch.seq > local.seq);
        if !ahead {
            return applied;
        }
        let believed = if batch.full {
            let mut rows = Rows::default();
            for row in &batch.rows {
                rows.insert(Stored {
                    row: row.clone(),
                    at: now,
                });
            }
            let theirs = Writer {
                region: batch.region,
                fingerprint: batch.fingerprint,
                advert: batch.advert.clone(),
                epoch: batch.epoch,
                seq: batch.seq,
                removed_seq: batch.removed_seq,
                rows,
                sig: Vec::new(),
            };
            let claim = theirs.claim(&batch.node);
            self.seal
                .verify(&batch.node, batch.region, &claim, &batch.sig)
                .is_ok()
        } else {
            batch.epoch == local.epoch
        };
        if !believed {
            self.stats.bad_seal += 1;
            return applied;
        }
        if let Some(epoch) = batch.epoch.checked_add(1) {
            self.local.epoch = epoch;
            applied.local_epoch_bumped = Some(epoch);
        }
        applied
    }

    pub fn digest(&self) -> Digest {
        let local = (self.local_name.clone(), self.local.epoch, self.local.seq);
        let peers = self
            .peers
            .iter()
            .map(|(node, w)| (node.clone(), w.epoch, w.seq));
        Digest {
            entries: std::iter::once(local).chain(peers).collect(),
        }
    }

    /// What a peer with digest `theirs` lacks: for each writer we know newer than they do, a
    /// full batch if their epoch is older or missing, else the rows with seq > their seq
    /// (base_seq = their seq), or a full batch if a delta cannot express a removal. Includes
    /// the local writer. Unbounded: peers are answered with [`Table::answer`].
    pub fn delta(&self, theirs: &Digest) -> Vec<Batch> {
        let known = index(theirs);
        self.all_writers()
            .filter_map(|(node, w)| lacking(&known, node, w))
            .map(|b| self.sealed(b))
            .collect()
    }

    /// [`Table::delta`], bounded: at most [`MAX_ANSWER_BATCHES`] batches and
    /// [`MAX_ANSWER_BYTES`] of rows (but always the first batch), starting at writer number
    /// `start` (modulo the writer count) so that a writer the asker cannot take does not hold
    /// up the others round after round; the caller passes a random `start`. A digest over
    /// [`MAX_DIGEST`] entries is refused.
    pub fn answer(&self, theirs: &Digest, start: usize) -> Result<Answer, TableError> {
        if theirs.entries.len() > MAX_DIGEST {
            return Err(TableError::DigestTooLarge(theirs.entries.len()));
        }
        let known = index(theirs);
        let count = 1 + self.peers.len();
        let start = start % count;
        let mut answer = Answer::default();
        let mut bytes = 0usize;
        // Rotated: writers from `start` on, then those before it.
        let rotated = self
            .all_writers()
            .skip(start)
            .chain(self.all_writers().take(start));
        for (node, w) in rotated {
            // Full batches carry every row, deltas some; the writer's total bounds both.
            let cost = w.rows.bytes;
            let full = answer.batches.len() >= MAX_ANSWER_BATCHES
                || (!answer.batches.is_empty() && bytes.saturating_add(cost) > MAX_ANSWER_BYTES);
            if full {
                if lacking(&known, node, w).is_some() {
                    answer.more = true;
                    break;
                }
                continue;
            }
            if let Some(batch) = lacking(&known, node, w) {
                bytes = bytes.saturating_add(batch.rows.iter().map(row_cost).sum::<usize>());
                answer.batches.push(self.sealed(batch));
            }
        }
        Ok(answer)
    }

    /// Compares a peer's digest with ours in one pass over each (a hash index of theirs),
    /// whatever their sizes. A digest over [`MAX_DIGEST`] entries is refused.
    pub fn compare(&self, theirs: &Digest) -> Result<Comparison, TableError> {
        if theirs.entries.len() > MAX_DIGEST {
            return Err(TableError::DigestTooLarge(theirs.entries.len()));
        }
        let known = index(theirs);
        let mut cmp = Comparison {
            work: theirs.entries.len(),
            ..Comparison::default()
        };
        let mut shared = 0;
        for (node, w) in self.all_writers() {
            cmp.work += 1;
            match known.get(node) {
                None => cmp.they_lack = true,
                Some(&version) => {
                    shared += 1;
                    match version.cmp(&(w.epoch, w.seq)) {
                        std::cmp::Ordering::Greater => cmp.they_have_newer = true,
                        std::cmp::Ordering::Less => cmp.they_lack = true,
                        std::cmp::Ordering::Equal => {}
                    }
                }
            }
        }
        // They list a writer we do not hold at all.
        if known.len() > shared {
            cmp.they_have_newer = true;
        }
        Ok(cmp)
    }

    /// Every writer as full batches (for a joining node).
    pub fn snapshot(&self) -> Vec<Batch> {
        self.all_writers()
            .map(|(node, w)| self.sealed(w.full(node)))
            .collect()
    }

    /// Every writer, the local one first, then peers by name.
    pub fn writers(&self) -> impl Iterator<Item = WriterView<'_>> {
        std::iter::once(self.local.view(&self.local_name, true))
            .chain(self.peers.iter().map(|(node, w)| w.view(node, false)))
    }

    /// One writer's rows, the local node's included.
    pub fn writer(&self, node: &str) -> Option<WriterView<'_>> {
        if node == self.local_name {
            return Some(self.local.view(&self.local_name, true));
        }
        self.peers
            .get_key_value(node)
            .map(|(n, w)| w.view(n, false))
    }

    /// Age of the oldest peer row (now - last received), for a metric. Local rows are not
    /// counted: they are the source, never stale. Rows are re-sent only when they change or
    /// in a full batch, so on a quiet mesh this grows until the next snapshot.
    pub fn oldest_row_age(&self, now: Instant) -> Option<Duration> {
        self.peers
            .values()
            .flat_map(|w| w.rows.iter())
            .map(|s| now.saturating_duration_since(s.at))
            .max()
    }

    /// Drops a writer's rows without remembering its epoch, unlike [`Table::forget`]: its
    /// rows are taken again when they come back. For a revoked node, whose claims the caller
    /// refuses while it stays revoked: once taken back (the list emptied, or a certificate
    /// with another serial), its rows must count again without waiting for a restart.
    pub fn drop_writer(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// Forget a writer entirely (e.g. removed from the cluster). Until it restarts (newer
    /// epoch), batches of it are ignored, so a peer that has not forgotten it yet cannot bring
    /// it back. The local node cannot be forgotten.
    pub fn forget(&mut self, node: &str) {
        let Some(w) = self.peers.remove(node) else {
            return;
        };
        if self.forgotten.len() >= MAX_FORGOTTEN {
            // Epochs are boot times, so the lowest is the longest gone.
            if let Some(oldest) = self
                .forgotten
                .iter()
                .min_by_key(|(_, &e)| e)
                .map(|(n, _)| n.clone())
            {
                self.forgotten.remove(&oldest);
            }
        }
        self.forgotten.insert(node.to_string(), w.epoch);
    }

    fn all_writers(&self) -> impl Iterator<Item = (&str, &Writer)> {
        std::iter::once((self.local_name.as_str(), &self.local))
            .chain(self.peers.iter().map(|(n, w)| (n.as_str(), w)))
    }
}

/// A bounded answer to a digest ([`Table::answer`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub batches: Vec<Batch>,
    /// The asker lacks more than this answer carries; it gets the rest in later rounds.
    pub more: bool,
}

/// How a peer's digest compares with ours ([`Table::compare`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Comparison {
    /// We hold something newer than they do (or a writer they lack).
    pub they_lack: bool,
    /// They hold something newer than we do (or a writer we lack).
    pub they_have_newer: bool,
    /// Entries visited, ours and theirs: linear in their sum, which tests check.
    pub work: usize,
}

/// A digest's entries by writer. A repeated writer (only a confused peer sends one) counts as
/// its oldest claim: sending too much is harmless, too little is not.
fn index(theirs: &Digest) -> HashMap<&str, (u64, u64)> {
    let mut known: HashMap<&str, (u64, u64)> = HashMap::with_capacity(theirs.entries.len());
    for (node, epoch, seq) in &theirs.entries {
        known
            .entry(node.as_str())
            .and_modify(|v| *v = (*v).min((*epoch, *seq)))
            .or_insert((*epoch, *seq));
    }
    known
}

/// What a peer whose digest says `known` lacks of writer `w`, if anything.
fn lacking(known: &HashMap<&str, (u64, u64)>, node: &str, w: &Writer) -> Option<Batch> {
    match known.get(node) {
        None => Some(w.full(node)),
        Some(&(epoch, _)) if epoch < w.epoch => Some(w.full(node)),
        Some(&(epoch, seq)) if epoch == w.epoch && seq < w.seq => Some(w.since(node, seq)),
        Some(_) => None,
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn rtt_moved(old: Option<u32>, new: Option<u32>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => {
            let delta = old.abs_diff(new);
            delta > 0
                && (delta >= RTT_MIN_DELTA_US
                    || u64::from(delta) * 100 >= u64::from(old) * RTT_MIN_DELTA_PERCENT)
        }
        (old, new) => old != new,
    }
}

fn validate(b: &Batch) -> Result<(), TableError> {
    if b.node.is_empty() {
        return Err(TableError::EmptyNode);
    }
    if b.node.len() > MAX_NAME {
        return Err(TableError::NodeTooLong(b.node.len()));
    }
    let node = || b.node.clone();
    if let Err(detail) = b.advert.check() {
        return Err(TableError::Advert {
            node: node(),
            detail,
        });
    }
    if b.rows.len() > MAX_ROWS {
        return Err(TableError::TooManyRows {
            node: node(),
            rows: b.rows.len(),
        });
    }
    let bad_seq = |detail: String| {
        Err(TableError::BadSeq {
            node: node(),
            detail,
        })
    };
    if b.base_seq > b.seq {
        return bad_seq(format!("base_seq {} is above seq {}", b.base_seq, b.seq));
    }
    if b.removed_seq > b.seq {
        return bad_seq(format!(
            "removed_seq {} is above seq {}",
            b.removed_seq, b.seq
        ));
    }
    if !b.full && b.removed_seq > b.base_seq {
        return bad_seq(format!(
            "a delta from base_seq {} cannot carry the removal at seq {}",
            b.base_seq, b.removed_seq
        ));
    }
    for r in &b.rows {
        for (what, name) in [("pool", &r.pool), ("origin", &r.origin)] {
            if name.is_empty() {
                return Err(TableError::EmptyName { node: node(), what });
            }
            if name.len() > MAX_NAME {
                return Err(TableError::NameTooLong {
                    node: node(),
                    what,
                    len: name.len(),
                });
            }
        }
        if let Some(reason) = &r.reason {
            if reason.len() > MAX_REASON {
                return Err(TableError::ReasonTooLong {
                    node: node(),
                    pool: r.pool.clone(),
                    origin: r.origin.clone(),
                    len: reason.len(),
                });
            }
        }
        if r.seq == 0 {
            return bad_seq(format!("row {}/{} has seq 0", r.pool, r.origin));
        }
        if r.seq > b.seq {
            return bad_seq(format!(
                "row {}/{} has seq {}, above the batch's seq {}",
                r.pool, r.origin, r.seq, b.seq
            ));
        }
        if !b.full && r.seq <= b.base_seq {
            return bad_seq(format!(
                "row {}/{} has seq {}, not above the delta's base_seq {}",
                r.pool, r.origin, r.seq, b.base_seq
            ));
        }
    }
    let mut keys = HashSet::with_capacity(b.rows.len());
    for r in &b.rows {
        if !keys.insert((r.pool.as_str(), r.origin.as_str())) {
            return Err(TableError::DuplicateRow {
                node: node(),
                pool: r.pool.clone(),
                origin: r.origin.clone(),
            });
        }
    }
    match shared_seq(&b.rows, b.rows.len()) {
        Some(seq) => Err(TableError::DuplicateSeq { node: node(), seq }),
        None => Ok(()),
    }
}

/// A seq two of `rows` share, if any. A writer gives each change its own seq, so no state it
/// ever had (nor any batch of one) holds two rows of one seq.
fn shared_seq<'a>(rows: impl IntoIterator<Item = &'a Row>, len: usize) -> Option<u64> {
    let mut seqs = HashSet::with_capacity(len);
    rows.into_iter()
        .map(|r| r.seq)
        .find(|&seq| !seqs.insert(seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_fingerprint_ignores_order_and_sees_every_field() {
        let d = |entries: &[(&str, u64, u64)]| Digest {
            entries: entries
                .iter()
                .map(|(n, e, s)| ((*n).to_owned(), *e, *s))
                .collect(),
        };
        let base = d(&[("edge-a", 1, 5), ("edge-b", 2, 7)]);
        assert_eq!(
            base.fingerprint(),
            d(&[("edge-b", 2, 7), ("edge-a", 1, 5)]).fingerprint(),
            "each node lists itself first; the order must not matter"
        );
        for other in [
            d(&[("edge-a", 1, 6), ("edge-b", 2, 7)]),
            d(&[("edge-a", 2, 5), ("edge-b", 2, 7)]),
            d(&[("edge-a", 1, 5)]),
            d(&[("edge-a", 1, 5), ("edge-b", 2, 7), ("edge-c", 1, 1)]),
            // Names are length-prefixed, so moving a character between them shows.
            d(&[("edge-ab", 1, 5), ("dge-b", 2, 7)]),
        ] {
            assert_ne!(base.fingerprint(), other.fingerprint(), "{other:?}");
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    /// A table without signatures, for tests of the bounds alone.
    fn unsealed(name: &str, epoch: u64) -> Table {
        Table::new(name.into(), Region::Weu, epoch, 7)
    }

    fn table(name: &str, epoch: u64) -> Table {
        Table::new(name.into(), Region::Weu, epoch, 7).with_seal(FakeSeal::of(name))
    }

    /// Stands in for node keys: a node's "signature" is a hash of its name, a secret only
    /// the tests know, and the claim. Enough to tell whether the table checks the writer's
    /// seal over exactly the state it takes; the real keys are tested in `keys` and the
    /// security tests. Writers named "unknown-*" have no certificate.
    #[derive(Debug)]
    struct FakeSeal(String);

    impl FakeSeal {
        fn of(name: &str) -> Arc<FakeSeal> {
            Arc::new(FakeSeal(name.to_owned()))
        }

        fn sig(node: &str, claim: &[u8]) -> Vec<u8> {
            let h = fnv1a(fnv1a(FNV_OFFSET, b"secret"), node.as_bytes());
            fnv1a(h, claim).to_le_bytes().to_vec()
        }
    }

    impl Seal for FakeSeal {
        fn sign(&self, claim: &[u8]) -> Vec<u8> {
            Self::sig(&self.0, claim)
        }
        fn verify(
            &self,
            node: &str,
            _: Region,
            claim: &[u8],
            sig: &[u8],
        ) -> Result<(), SealRefusal> {
            if node.starts_with("unknown-") {
                return Err(SealRefusal::UnknownSigner);
            }
            if Self::sig(node, claim) == sig {
                Ok(())
            } else {
                Err(SealRefusal::BadSignature)
            }
        }
    }

    #[test]
    fn a_relay_can_pass_rows_on_but_not_change_add_or_withhold_any() {
        let now = t0();
        let mut a = table("a", 1);
        let mut relay = table("r", 1);
        for o in ["o1", "o2", "o3"] {
            up(&mut a, "web", o, 1000, now);
        }
        relay.apply(a.local_since(0), now).unwrap();

        type Forge = Box<dyn Fn(&mut Batch)>;
        let forgeries: Vec<(&str, Forge)> = vec![
            (
                "a row's health changed",
                Box::new(|b| b.rows[0].healthy = false),
            ),
            (
                "a row's RTT changed",
                Box::new(|b| b.rows[1].rtt_us = Some(9)),
            ),
            (
                "a row withheld",
                Box::new(|b| {
                    b.rows.pop();
                }),
            ),
            (
                "a row moved to another origin",
                Box::new(|b| b.rows[2].origin = "o9".into()),
            ),
            ("another region", Box::new(|b| b.region = Region::Enam)),
            (
                "the seal of another writer",
                Box::new(|b| b.node = "r".into()),
            ),
            ("no seal", Box::new(|b| b.sig.clear())),
        ];
        for (what, forge) in &forgeries {
            let mut b = table("b", 1);
            let mut batch = relay
                .snapshot()
                .into_iter()
                .find(|b| b.node == "a")
                .unwrap();
            forge(&mut batch);
            let result = b.apply(batch, now);
            assert!(
                matches!(result, Err(TableError::Seal { .. })),
                "{what}: {result:?}"
            );
            assert!(rows_of(&b, "a").is_empty(), "{what}");
            assert!(rows_of(&b, "r").is_empty(), "{what}");
        }

        // The relay's honest snapshot and delta are taken.
        let mut b = table("b", 1);
        for batch in relay.snapshot() {
            b.apply(batch, now).unwrap();
        }
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        up(&mut a, "web", "o1", 50_000, now);
        relay.apply(a.local_since(3), now).unwrap();
        let delta = relay.delta(&b.digest());
        assert_eq!(delta.len(), 1);
        assert!(!delta[0].full);
        b.apply(delta[0].clone(), now).unwrap();
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        assert_eq!(b.stats().bad_seal, 0);
    }

    /// Counts the signatures it is asked to verify.
    #[derive(Debug)]
    struct Counting(FakeSeal, std::sync::atomic::AtomicU64);

    impl Seal for Counting {
        fn sign(&self, claim: &[u8]) -> Vec<u8> {
            self.0.sign(claim)
        }
        fn verify(
            &self,
            node: &str,
            r: Region,
            claim: &[u8],
            sig: &[u8],
        ) -> Result<(), SealRefusal> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.verify(node, r, claim, sig)
        }
    }

    #[test]
    fn a_claim_held_already_is_not_verified_again_but_a_changed_one_is() {
        // When nodes join, one writer's batch reaches a node from many peers at once;
        // verifying each copy made joining a 50-node mesh CPU-bound (mesh benchmark).
        let now = t0();
        let mut a = table("a", 1);
        up(&mut a, "web", "o1", 1000, now);
        let seal = Arc::new(Counting(FakeSeal("b".into()), Default::default()));
        let mut b = Table::new("b".into(), Region::Weu, 1, 7).with_seal(seal.clone());
        let batch = a.local_since(0);
        b.apply(batch.clone(), now).unwrap();
        b.apply(batch.clone(), now).unwrap();
        b.apply(batch.clone(), now).unwrap();
        assert_eq!(seal.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(b.stats().duplicates, 2);

        // Same version and seal, a row changed: a row at a seq already held is not taken.
        let mut forged = batch.clone();
        forged.rows[0].healthy = false;
        b.apply(forged, now).unwrap();
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        // Same version and seal, another claim: verified, and refused.
        let mut forged = batch;
        forged.region = Region::Enam;
        let err = b.apply(forged, now).unwrap_err();
        assert!(matches!(err, TableError::Seal { .. }), "{err:?}");
        assert_eq!(seal.1.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn pack_fills_messages_in_order_and_sends_a_large_batch_alone() {
        let batch = |node: &str, rows: usize, origin_len: usize| Batch {
            node: node.into(),
            region: Region::Weu,
            epoch: 1,
            base_seq: 0,
            seq: rows as u64,
            removed_seq: 0,
            full: true,
            fingerprint: 7,
            advert: Default::default(),
            rows: (0..rows)
                .map(|i| Row {
                    pool: "web".into(),
                    origin: format!("{i:0origin_len$}"),
                    healthy: true,
                    rtt_us: None,
                    last_change_ms: 0,
                    reason: None,
                    verdict: None,
                    seq: i as u64 + 1,
                })
                .collect(),
            sig: vec![0; 64],
        };
        assert!(pack(Vec::new()).is_empty());
        // Fifty small writers (a join): one message.
        let small: Vec<Batch> = (0..50).map(|i| batch(&format!("n{i}"), 3, 4)).collect();
        let packed = pack(small.clone());
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0], small);
        // Writers of about 0.6 MiB each: one a message, in order.
        let big: Vec<Batch> = (0..3).map(|i| batch(&format!("b{i}"), 2000, 300)).collect();
        assert!(batch_cost(&big[0]) > MAX_DELTA_BYTES / 2);
        let packed = pack(vec![
            small[0].clone(),
            big[0].clone(),
            big[1].clone(),
            small[1].clone(),
        ]);
        let names: Vec<Vec<&str>> = packed
            .iter()
            .map(|m| m.iter().map(|b| b.node.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["n0", "b0"], vec!["b1", "n1"]]);
        for m in &packed {
            assert!(m.iter().map(batch_cost).sum::<usize>() <= MAX_DELTA_BYTES);
        }
        // A batch over the budget on its own still goes.
        let huge = batch("h", 5000, 300);
        assert!(batch_cost(&huge) > MAX_DELTA_BYTES);
        assert_eq!(pack(vec![small[0].clone(), huge.clone()]).len(), 2);
    }

    #[test]
    fn a_dropped_writer_is_taken_back_at_the_same_epoch_a_forgotten_one_is_not() {
        let now = t0();
        let mut a = table("a", 1);
        up(&mut a, "web", "o1", 1000, now);
        for (drop, taken_back) in [(true, true), (false, false)] {
            let mut b = table("b", 1);
            b.apply(a.local_since(0), now).unwrap();
            if drop {
                b.drop_writer("a");
            } else {
                b.forget("a");
            }
            assert!(rows_of(&b, "a").is_empty());
            b.apply(a.local_since(0), now).unwrap();
            assert_eq!(
                !rows_of(&b, "a").is_empty(),
                taken_back,
                "drop_writer: {drop}"
            );
        }
    }

    #[test]
    fn a_delta_forging_rows_over_a_held_state_is_refused() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        b.apply(a.local_since(0), now).unwrap();
        let held = rows_of(&b, "a");
        up(&mut a, "web", "o2", 1000, now);
        let mut forged = a.local_since(1);
        forged.rows[0].healthy = false;
        let err = b.apply(forged, now).unwrap_err();
        assert_eq!(
            err,
            TableError::Seal {
                node: "a".into(),
                why: SealRefusal::BadSignature
            }
        );
        assert_eq!(rows_of(&b, "a"), held);
        assert_eq!(b.stats().bad_seal, 1);
    }

    #[test]
    fn a_writer_without_a_known_certificate_is_ignored_until_it_is() {
        let now = t0();
        let mut w = Table::new("unknown-w".into(), Region::Weu, 1, 0).with_seal(FakeSeal::of("x"));
        up(&mut w, "web", "o1", 1000, now);
        let mut b = table("b", 1);
        let applied = b.apply(w.local_since(0), now).unwrap();
        assert_eq!(applied.ignored, Some(Ignored::UnknownSigner));
        assert!(rows_of(&b, "unknown-w").is_empty());
    }

    fn obs(
        healthy: bool,
        rtt_us: Option<u32>,
        last_change_ms: u64,
        reason: Option<&str>,
    ) -> Observation<'_> {
        Observation {
            healthy,
            rtt_us,
            last_change_ms,
            reason,
            verdict: None,
        }
    }

    fn up(t: &mut Table, pool: &str, origin: &str, rtt: u32, now: Instant) -> Option<Change> {
        t.set_local(pool, origin, obs(true, Some(rtt), 1, None), now)
    }

    fn down(t: &mut Table, pool: &str, origin: &str, why: &str, now: Instant) -> Option<Change> {
        t.set_local(pool, origin, obs(false, None, 2, Some(why)), now)
    }

    /// The rows `holder` has of `writer`, without receive times.
    fn rows_of(holder: &Table, writer: &str) -> Vec<Row> {
        holder
            .writers()
            .find(|w| w.node == writer)
            .map(|w| w.rows.map(|(r, _)| r.clone()).collect())
            .unwrap_or_default()
    }

    fn seq_of(holder: &Table, writer: &str) -> Option<(u64, u64)> {
        holder
            .digest()
            .entries
            .into_iter()
            .find(|(n, _, _)| n == writer)
            .map(|(_, e, s)| (e, s))
    }

    /// One anti-entropy exchange: `to` sends its digest, `from` answers with a delta.
    fn pull(to: &mut Table, from: &Table, now: Instant) -> Applied {
        let mut all = Applied::default();
        for b in from.delta(&to.digest()) {
            let a = to.apply(b, now).unwrap();
            all.changed |= a.changed;
            all.flips.extend(a.flips);
        }
        all
    }

    #[test]
    fn set_local_reports_what_changed_and_bumps_seq_only_then() {
        let now = t0();
        let mut t = table("a", 1);
        assert_eq!(up(&mut t, "web", "o1", 10_000, now), Some(Change::Flip));
        assert_eq!(t.local_seq(), 1);
        assert_eq!(up(&mut t, "web", "o1", 10_000, now), None);
        // 4% and 400 us: jitter, not replicated.
        assert_eq!(up(&mut t, "web", "o1", 10_400, now), None);
        assert_eq!(t.local_seq(), 1);
        // Measured against the replicated value, so drift adds up: 5% of 10 ms.
        assert_eq!(up(&mut t, "web", "o1", 10_500, now), Some(Change::Rtt));
        assert_eq!(t.local_seq(), 2);
        // Large RTT: 1 ms is enough even under 5%.
        assert_eq!(up(&mut t, "web", "o2", 100_000, now), Some(Change::Flip));
        assert_eq!(up(&mut t, "web", "o2", 101_000, now), Some(Change::Rtt));
        // Small RTT: 5% is enough even under 1 ms; less is not.
        assert_eq!(up(&mut t, "web", "o3", 200, now), Some(Change::Flip));
        assert_eq!(up(&mut t, "web", "o3", 209, now), None);
        assert_eq!(up(&mut t, "web", "o3", 210, now), Some(Change::Rtt));
        assert_eq!(
            down(&mut t, "web", "o3", "timeout", now),
            Some(Change::Flip)
        );
        assert_eq!(down(&mut t, "web", "o3", "timeout", now), None);
        assert_eq!(down(&mut t, "web", "o3", "refused", now), Some(Change::Rtt));
        assert_eq!(up(&mut t, "web", "o3", 200, now), Some(Change::Flip));
        assert_eq!(t.local_seq(), 9);
        // A zero RTT (a very near origin) stays put, and any move from it counts.
        assert_eq!(up(&mut t, "web", "o4", 0, now), Some(Change::Flip));
        assert_eq!(up(&mut t, "web", "o4", 0, now), None);
        assert_eq!(up(&mut t, "web", "o4", 1, now), Some(Change::Rtt));
        let gone = t.set_local("web", "o4", obs(true, None, 1, None), now);
        assert_eq!(gone, Some(Change::Rtt));
        assert_eq!(t.local_seq(), 12);
        let rows = rows_of(&t, "a");
        assert_eq!(rows.len(), 4);
        assert_eq!(t.writers().next().unwrap().rows.len(), 4);
        assert_eq!(rows[0].rtt_us, Some(10_500));
    }

    #[test]
    fn local_rows_are_kept_within_what_peers_accept() {
        let now = t0();
        let mut a = table("a", 1);
        assert_eq!(up(&mut a, &"p".repeat(256), "o", 1, now), None);
        assert_eq!(up(&mut a, "", "o", 1, now), None);
        assert_eq!(a.stats().local_refused, 2);
        let long = "é".repeat(600);
        a.set_local("p", "o", obs(false, None, 0, Some(&long)), now);
        let reason = rows_of(&a, "a")[0].reason.clone().unwrap();
        assert!(reason.len() <= MAX_REASON && long.starts_with(&reason));
        let mut b = table("b", 1);
        b.apply(a.local_since(0), now).unwrap();
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn pushes_replicate_and_report_flips() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        let applied = b.apply(a.local_since(0), now).unwrap();
        assert!(applied.changed && applied.meta_changed);
        assert_eq!(
            applied.flips,
            vec![Flip {
                node: "a".into(),
                pool: "web".into(),
                origin: "o1".into(),
                healthy: Some(true)
            }]
        );
        let since = a.local_seq();
        up(&mut a, "web", "o1", 5000, now);
        let applied = b.apply(a.local_since(since), now).unwrap();
        assert!(applied.changed && applied.flips.is_empty() && !applied.meta_changed);
        let since = a.local_seq();
        down(&mut a, "web", "o1", "timeout", now);
        let applied = b.apply(a.local_since(since), now).unwrap();
        assert_eq!(applied.flips.len(), 1);
        assert_eq!(applied.flips[0].healthy, Some(false));
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        assert_eq!(seq_of(&b, "a"), Some((1, 3)));
    }

    #[test]
    fn applying_the_same_batch_twice_changes_nothing_the_second_time() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        down(&mut a, "web", "o2", "refused", now);
        for batch in [a.local_since(0), a.local_since(1), a.snapshot().remove(0)] {
            let first = b.apply(batch.clone(), now).unwrap();
            let rows = rows_of(&b, "a");
            let digest = b.digest();
            let second = b.apply(batch, now).unwrap();
            assert!(!second.changed && second.flips.is_empty() && !second.meta_changed);
            assert_eq!(rows_of(&b, "a"), rows);
            assert_eq!(b.digest(), digest);
            let _ = first;
        }
    }

    #[test]
    fn an_early_push_waits_for_the_missed_ones() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        let p1 = a.local_since(0);
        up(&mut a, "web", "o2", 1000, now);
        let p2 = a.local_since(1);
        up(&mut a, "web", "o3", 1000, now);
        let p3 = a.local_since(2);

        // p3 arrives first: b lacks seqs 1 and 2, so the state p3 leads to, and so its seal,
        // cannot be checked: it is ignored (the mesh then asks its sender for a delta).
        let applied = b.apply(p3, now).unwrap();
        assert_eq!(applied.ignored, Some(Ignored::Gap));
        assert!(rows_of(&b, "a").is_empty());
        assert_eq!(seq_of(&b, "a"), None);
        // p1 arrives; p2 is lost.
        b.apply(p1, now).unwrap();
        assert_eq!(seq_of(&b, "a"), Some((1, 1)));
        drop(p2);

        let delta = a.delta(&b.digest());
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].base_seq, 1);
        pull(&mut b, &a, now);
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        assert_eq!(seq_of(&b, "a"), Some((1, 3)));
        assert!(a.delta(&b.digest()).is_empty());
    }

    #[test]
    fn a_restart_replaces_the_old_rows_everywhere() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        let mut c = table("c", 1);
        for o in ["o1", "o2", "o3"] {
            up(&mut a, "web", o, 1000, now);
        }
        b.apply(a.local_since(0), now).unwrap();
        pull(&mut c, &b, now);
        assert_eq!(rows_of(&c, "a").len(), 3);

        // a restarts with a newer epoch and fewer origins; seq starts again from 0.
        let mut a = table("a", 2);
        up(&mut a, "web", "o1", 2000, now);
        let applied = b.apply(a.local_since(0), now).unwrap();
        assert!(applied.changed);
        assert_eq!(
            applied.flips.iter().filter(|f| f.healthy.is_none()).count(),
            2
        );
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        // c hears of the restart only from b.
        pull(&mut c, &b, now);
        assert_eq!(rows_of(&c, "a"), rows_of(&a, "a"));
        assert_eq!(seq_of(&c, "a"), Some((2, 1)));

        // Late batches of the old run change nothing.
        let mut old = table("a", 1);
        for o in ["o1", "o2", "o3", "o4"] {
            up(&mut old, "web", o, 1000, now);
        }
        let applied = c.apply(old.local_since(0), now).unwrap();
        assert_eq!(applied.ignored, Some(Ignored::OlderEpoch));
        assert_eq!(rows_of(&c, "a"), rows_of(&a, "a"));
        // And the restarted node ignores the mesh's memory of its old run.
        let applied = a.apply(old.local_since(0), now).unwrap();
        assert_eq!(applied.ignored, Some(Ignored::OwnRows));
        assert_eq!(applied.local_epoch_bumped, None);
    }

    #[test]
    fn a_peer_cannot_write_local_rows() {
        let now = t0();
        let mut a = table("a", 5);
        up(&mut a, "web", "o1", 1000, now);
        let mine = rows_of(&a, "a");
        let mut forged = a.local_since(0);
        forged.rows[0].healthy = false;
        forged.rows[0].reason = Some("forged".into());
        forged.seq = 1; // not ahead of a: an echo, not an older run of a
        let applied = a.apply(forged, now).unwrap();
        assert_eq!(applied.ignored, Some(Ignored::OwnRows));
        assert!(!applied.changed);
        assert_eq!(rows_of(&a, "a"), mine);
        assert_eq!(a.local_epoch(), 5);
        assert_eq!(a.stats().own_rows, 1);
    }

    #[test]
    fn a_reused_epoch_is_detected_and_moved_past() {
        let now = t0();
        let mut b = table("b", 1);
        let mut old = table("a", 5);
        for o in ["o1", "o2", "o3"] {
            up(&mut old, "web", o, 1000, now);
        }
        b.apply(old.local_since(0), now).unwrap();

        // a restarts with the same epoch (a clock went back): b would keep the old rows.
        let mut a = table("a", 5);
        up(&mut a, "web", "o1", 1000, now);
        let applied = a.apply(b.snapshot().remove(1), now).unwrap();
        assert_eq!(applied.local_epoch_bumped, Some(6));
        assert_eq!(a.local_epoch(), 6);
        pull(&mut b, &a, now);
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let now = t0();
        let mut a = table("a", 1);
        for o in ["o1", "o2"] {
            up(&mut a, "web", o, 1000, now);
        }
        let mut b = table("b", 1);
        let good = a.local_since(0);
        let long = "x".repeat(MAX_NAME + 1);
        let breakers: Vec<fn(&mut Batch, &str)> = vec![
            |b, _| b.node.clear(),
            |b, l| b.node = l.into(),
            |b, l| b.rows[1].pool = l.into(),
            |b, _| b.rows[1].origin.clear(),
            |b, _| b.rows[1].reason = Some("r".repeat(MAX_REASON + 1)),
            |b, _| b.rows[1].origin = b.rows[0].origin.clone(),
            |b, _| b.rows[1].seq = b.rows[0].seq,
            |b, _| b.rows[1].seq = 0,
            |b, _| b.base_seq = b.seq + 1,
            |b, _| b.removed_seq = b.seq + 1,
            |b, _| {
                b.base_seq = 1;
                b.removed_seq = 2;
            },
            |b, _| {
                // A delta carrying a row not above its base.
                b.base_seq = 1;
            },
            |b, _| {
                let row = b.rows[0].clone();
                b.rows = (0..=MAX_ROWS as u64)
                    .map(|i| Row {
                        origin: format!("o{i}"),
                        seq: i + 1,
                        ..row.clone()
                    })
                    .collect();
            },
        ];
        for (i, breaker) in breakers.into_iter().enumerate() {
            let mut bad = good.clone();
            breaker(&mut bad, &long);
            let err = b.apply(bad, now).unwrap_err();
            assert!(!err.to_string().is_empty());
            assert!(rows_of(&b, "a").is_empty(), "breaker {i} applied part");
            assert_eq!(b.digest().entries.len(), 1, "breaker {i}: {err}");
        }
        assert_eq!(b.stats().malformed, 13);
        b.apply(good, now).unwrap();
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn removals_travel_as_full_batches_through_relays() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        let mut c = table("c", 1);
        for o in ["o1", "o2", "o3"] {
            up(&mut a, "web", o, 1000, now);
        }
        b.apply(a.local_since(0), now).unwrap();
        pull(&mut c, &b, now);
        let since = a.local_seq();

        assert!(a.remove_local("web", "o2"));
        assert!(!a.remove_local("web", "o2"));
        up(&mut a, "web", "o4", 1000, now);
        let push = a.local_since(since);
        assert!(push.full, "a delta cannot say o2 went away");
        assert!(!a.local_since(a.local_seq() - 1).full);
        let applied = b.apply(push, now).unwrap();
        assert!(applied
            .flips
            .iter()
            .any(|f| f.origin == "o2" && f.healthy.is_none()));
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));

        // c hears it from b, which must also answer with a full batch.
        let delta = b.delta(&c.digest());
        assert!(delta.iter().any(|d| d.node == "a" && d.full));
        pull(&mut c, &b, now);
        assert_eq!(rows_of(&c, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn a_stale_snapshot_does_not_undo_newer_rows() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        up(&mut a, "web", "o2", 1000, now);
        let old_snapshot = a.snapshot().remove(0);
        a.remove_local("web", "o1");
        up(&mut a, "web", "o3", 1000, now);
        b.apply(a.local_since(0), now).unwrap();
        let rows = rows_of(&b, "a");
        let applied = b.apply(old_snapshot, now).unwrap();
        assert!(!applied.changed);
        assert_eq!(rows_of(&b, "a"), rows);
        assert_eq!(rows, rows_of(&a, "a"));
    }

    #[test]
    fn fingerprint_changes_replicate_without_row_changes() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        pull(&mut b, &a, now);
        a.set_fingerprint(99);
        a.set_fingerprint(99);
        assert_eq!(a.local_seq(), 2);
        let delta = a.delta(&b.digest());
        assert_eq!(delta.len(), 1);
        assert!(delta[0].rows.is_empty());
        let applied = b.apply(delta[0].clone(), now).unwrap();
        assert!(applied.meta_changed && !applied.changed);
        let view = b.writers().find(|w| w.node == "a").unwrap();
        assert_eq!(view.fingerprint, 99);
        assert_eq!(view.seq, 2);
        // An older batch does not bring the old fingerprint back.
        b.apply(a.local_since(0).clone(), now).unwrap();
        let mut stale = a.local_since(0);
        stale.fingerprint = 7;
        stale.seq = 1;
        b.apply(stale, now).unwrap();
        assert_eq!(b.writers().find(|w| w.node == "a").unwrap().fingerprint, 99);
    }

    fn advert(ready: bool) -> Advert {
        Advert {
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            ready,
            nameserver: true,
            names: vec![("api".into(), false), ("game".into(), true)],
            rtt_ms: vec![(Region::Wnam, 80), (Region::Weu, 1)],
        }
    }

    #[test]
    fn adverts_replicate_signed_and_a_change_takes_a_seq() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        up(&mut a, "web", "o1", 1000, now);
        pull(&mut b, &a, now);
        assert!(a.set_advert(advert(true)));
        assert!(
            !a.set_advert(advert(true)),
            "the same advert again changes nothing"
        );
        assert_eq!(a.local_seq(), 2);
        let delta = a.delta(&b.digest());
        assert!(delta[0].rows.is_empty());
        let applied = b.apply(delta[0].clone(), now).unwrap();
        assert!(applied.meta_changed && !applied.changed);
        assert_eq!(
            *b.writers().find(|w| w.node == "a").unwrap().advert,
            advert(true)
        );

        // The advert is part of the signed claim: a relay cannot turn a node ready.
        assert!(a.set_advert(advert(false)));
        let mut forged = a.local_since(0);
        forged.advert.ready = true;
        assert!(matches!(
            b.apply(forged, now),
            Err(TableError::Seal {
                why: SealRefusal::BadSignature,
                ..
            })
        ));
        assert!(b.writers().find(|w| w.node == "a").unwrap().advert.ready);
        b.apply(a.local_since(0), now).unwrap();
        assert!(!b.writers().find(|w| w.node == "a").unwrap().advert.ready);
    }

    #[test]
    fn adverts_past_their_bounds_are_refused_here_and_by_peers() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        let too_many = Advert {
            addresses: vec!["192.0.2.1".parse().unwrap(); MAX_ADVERT_ADDRESSES + 1],
            ..Advert::default()
        };
        let long_name = Advert {
            names: vec![("x".repeat(MAX_ADVERT_NAME + 1), true)],
            ..Advert::default()
        };
        let unsorted = Advert {
            names: vec![("b".into(), true), ("a".into(), true)],
            ..Advert::default()
        };
        let twice = Advert {
            rtt_ms: vec![(Region::Weu, 1), (Region::Weu, 2)],
            ..Advert::default()
        };
        for bad in [too_many, long_name, unsorted, twice] {
            assert!(!a.set_advert(bad.clone()), "{bad:?}");
            let mut batch = a.local_since(0);
            batch.advert = bad.clone();
            assert!(
                matches!(b.apply(batch, now), Err(TableError::Advert { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(a.stats().local_refused, 4);
        assert_eq!(b.stats().malformed, 4);
        assert_eq!(a.local_seq(), 0);
    }

    #[test]
    fn forgotten_writers_stay_gone_until_they_restart() {
        let now = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        let mut c = table("c", 1);
        up(&mut a, "web", "o1", 1000, now);
        b.apply(a.local_since(0), now).unwrap();
        c.apply(a.local_since(0), now).unwrap();
        c.forget("a");
        c.forget("c");
        assert_eq!(c.digest().entries.len(), 1);
        // b has not forgotten a yet and offers it back.
        let applied = pull(&mut c, &b, now);
        assert!(!applied.changed);
        assert!(rows_of(&c, "a").is_empty());
        assert_eq!(c.stats().stale, 1);
        // a restarts and comes back.
        let mut a = table("a", 2);
        up(&mut a, "web", "o1", 1000, now);
        pull(&mut c, &a, now);
        assert_eq!(rows_of(&c, "a"), rows_of(&a, "a"));
    }

    #[test]
    fn oldest_row_age_counts_peer_rows_from_when_they_were_last_received() {
        let t = t0();
        let mut a = table("a", 1);
        let mut b = table("b", 1);
        assert_eq!(b.oldest_row_age(t), None);
        up(&mut b, "web", "mine", 1000, t);
        assert_eq!(b.oldest_row_age(t + Duration::from_secs(60)), None);
        up(&mut a, "web", "o1", 1000, t);
        up(&mut a, "web", "o2", 1000, t);
        b.apply(a.local_since(0), t).unwrap();
        up(&mut a, "web", "o2", 9000, t);
        b.apply(a.local_since(2), t + Duration::from_secs(5))
            .unwrap();
        let now = t + Duration::from_secs(8);
        assert_eq!(b.oldest_row_age(now), Some(Duration::from_secs(8)));
        // A snapshot confirms every row.
        b.apply(a.snapshot().remove(0), t + Duration::from_secs(7))
            .unwrap();
        assert_eq!(b.oldest_row_age(now), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_hostile_digest_cannot_make_delta_send_too_little() {
        let now = t0();
        let mut a = table("a", 1);
        up(&mut a, "web", "o1", 1000, now);
        up(&mut a, "web", "o2", 1000, now);
        let digest = Digest {
            entries: vec![("a".into(), 1, 2), ("a".into(), 1, 1), ("x".into(), 0, 0)],
        };
        let delta = a.delta(&digest);
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].base_seq, 1);
        // A digest claiming a future seq gets nothing, and nothing breaks.
        let ahead = Digest {
            entries: vec![("a".into(), 1, u64::MAX), ("a".into(), u64::MAX, 0)],
        };
        assert!(a.delta(&ahead).is_empty() || a.delta(&ahead)[0].full);
    }

    /// A batch of writer `node` (epoch 1) whose rows are `p/o{i}` for i in `range`, each at
    /// seq i + 1, with `reason` bytes of reason each.
    fn rows_batch(node: &str, range: std::ops::Range<usize>, full: bool, reason: usize) -> Batch {
        let base = if full { 0 } else { range.start as u64 };
        Batch {
            node: node.into(),
            region: Region::Weu,
            epoch: 1,
            base_seq: base,
            seq: range.end as u64,
            removed_seq: 0,
            full,
            fingerprint: 0,
            advert: Default::default(),
            sig: Vec::new(),
            rows: range
                .map(|i| Row {
                    pool: "p".into(),
                    origin: format!("o{i}"),
                    healthy: true,
                    rtt_us: None,
                    last_change_ms: 0,
                    reason: (reason > 0).then(|| "r".repeat(reason)),
                    verdict: None,
                    seq: i as u64 + 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_writer_growing_past_the_row_bound_is_refused_and_others_still_replicate() {
        let now = t0();
        let mut b = unsealed("b", 1);
        b.apply(rows_batch("x", 0..MAX_WRITER_ROWS, true, 0), now)
            .unwrap();
        // One more row would take x past the bound: the delta is refused whole.
        let grow = rows_batch("x", MAX_WRITER_ROWS..MAX_WRITER_ROWS + 5, false, 0);
        let err = b.apply(grow, now).unwrap_err();
        assert!(matches!(err, TableError::WriterTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("batch from x"), "{err}");
        assert_eq!(rows_of(&b, "x").len(), MAX_WRITER_ROWS);
        assert_eq!(seq_of(&b, "x"), Some((1, MAX_WRITER_ROWS as u64)));
        assert_eq!(b.stats().writer_too_large, 1);
        // Changing rows it already has is still taken.
        let mut change = rows_batch("x", 3..4, false, 0);
        change.rows[0].seq = MAX_WRITER_ROWS as u64 + 1;
        change.rows[0].healthy = false;
        change.base_seq = MAX_WRITER_ROWS as u64;
        change.seq = MAX_WRITER_ROWS as u64 + 1;
        assert!(b.apply(change, now).unwrap().changed);

        // Anti-entropy keeps working: another writer's rows arrive, and a newcomer gets x
        // whole, in one batch it accepts.
        let mut a = unsealed("a", 1);
        up(&mut a, "web", "o1", 1000, now);
        pull(&mut b, &a, now);
        assert_eq!(rows_of(&b, "a"), rows_of(&a, "a"));
        let mut c = unsealed("c", 1);
        pull(&mut c, &b, now);
        assert_eq!(rows_of(&c, "x"), rows_of(&b, "x"));
        assert_eq!(rows_of(&c, "a"), rows_of(&a, "a"));
        assert!(b.delta(&c.digest()).is_empty());
    }

    /// The holder of `writer`'s rows web/weu-1 (seq 1) and api/weu-2 (seq 2), epoch E.
    fn holding_two_rows(writer: &str) -> Table {
        const E: u64 = 1_700_000_000_000;
        let now = t0();
        let mut w = Table::new(writer.into(), Region::Weu, E, 0xfeed);
        up(&mut w, "web", "weu-1", 900, now);
        down(&mut w, "api", "weu-2", "status 503", now);
        let mut holder = Table::new("edge-wnam-1".into(), Region::Wnam, 1, 0xfeed);
        holder.apply(w.local_since(0), now).unwrap();
        holder
    }

    #[test]
    fn a_delta_whose_row_shares_a_held_rows_seq_is_refused() {
        let now = t0();
        let mut holder = holding_two_rows("a");
        let before = rows_of(&holder, "a");
        // New origin api/x at seq 2, which the held api/weu-2 already has: no writer's state.
        let mut delta = holder
            .snapshot()
            .into_iter()
            .find(|b| b.node == "a")
            .unwrap();
        delta.full = false;
        delta.base_seq = 1;
        delta.rows = vec![Row {
            origin: "x".into(),
            ..before.iter().find(|r| r.seq == 2).unwrap().clone()
        }];
        let err = holder.apply(delta, now).unwrap_err();
        assert!(
            matches!(err, TableError::DuplicateSeq { seq: 2, .. }),
            "{err}"
        );
        assert_eq!(rows_of(&holder, "a"), before);
        assert_eq!(holder.stats().malformed, 1);
    }

    #[test]
    fn fuzz_mesh_crash_a_held_writer_always_snapshots() {
        // Found by the `mesh` fuzz target: an envelope whose Delta's first batch, laid over
        // the rows held of edge-weu-1, led to two rows of seq 2. The holder took it, and then
        // every new holder refused its snapshot of edge-weu-1.
        const INPUT: &[u8] = &[
            0x04, 0x04, 0x70, 0x72, 0x6f, 0x64, 0x0b, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x77, 0x6e,
            0x61, 0x6d, 0x2d, 0x31, 0x02, 0x02, 0x0a, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x77, 0x65,
            0x75, 0x2d, 0x31, 0x03, 0x57, 0x45, 0x55, 0xfd, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01,
            0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0xfb, 0xed, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x02, 0x23, 0x61, 0x70, 0x69, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
            0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
            0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x05, 0x77, 0x65, 0x75, 0x2d,
            0x32, 0x00, 0x00, 0xfd, 0x90, 0x69, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x01, 0x0a,
            0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x20, 0x35, 0x30, 0x33, 0x01, 0x02, 0x02, 0x03,
            0x77, 0x65, 0x62, 0x05, 0x77, 0x65, 0x75, 0x2d, 0x31, 0x01, 0x01, 0xfb, 0x84, 0x03,
            0xfd, 0x2c, 0x69, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0a,
            0x65, 0x64, 0x67, 0x65, 0x2d, 0x77, 0x65, 0x75, 0x2d, 0x31, 0x03, 0x57, 0x45, 0x55,
            0xfd, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0xfb,
            0xed, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let now = t0();
        let mut holder = holding_two_rows("edge-weu-1");
        let env: crate::wire::Envelope = crate::codec::decode(INPUT).unwrap();
        let crate::wire::Msg::Delta(batches) = env.msg else {
            panic!("a Delta: {:?}", env.msg);
        };
        for batch in batches {
            let _ = holder.apply(batch, now);
        }
        let mut joining = unsealed("edge-seas-1", 1);
        for batch in holder.snapshot() {
            joining.apply(batch, now).unwrap();
        }
        assert_eq!(
            rows_of(&joining, "edge-weu-1"),
            rows_of(&holder, "edge-weu-1")
        );
    }

    #[test]
    fn a_writer_growing_past_the_byte_bound_is_refused() {
        let now = t0();
        let mut b = unsealed("b", 1);
        // 1000 rows of about 1 KiB: under the row bound, over the byte bound.
        let big = rows_batch("x", 0..1000, true, MAX_REASON);
        assert!(big.rows.iter().map(row_cost).sum::<usize>() > MAX_WRITER_BYTES);
        assert!(matches!(
            b.apply(big, now),
            Err(TableError::WriterTooLarge { .. })
        ));
        assert!(rows_of(&b, "x").is_empty());
        b.apply(rows_batch("x", 0..500, true, MAX_REASON), now)
            .unwrap();
        let more = rows_batch("x", 500..1000, false, MAX_REASON);
        assert!(matches!(
            b.apply(more, now),
            Err(TableError::WriterTooLarge { .. })
        ));
        assert_eq!(rows_of(&b, "x").len(), 500);
        // A restart with fewer rows replaces the big run.
        let mut restart = rows_batch("x", 0..2, true, 0);
        restart.epoch = 2;
        b.apply(restart, now).unwrap();
        assert_eq!(rows_of(&b, "x").len(), 2);
    }

    #[test]
    fn an_empty_digest_gets_a_bounded_answer_and_the_rest_follows() {
        let now = t0();
        let mut b = unsealed("b", 1);
        let writers = MAX_ANSWER_BATCHES * 2 + 10;
        for i in 0..writers {
            b.apply(rows_batch(&format!("w{i}"), 0..3, true, 0), now)
                .unwrap();
        }
        let mut c = unsealed("c", 1);
        let answer = b.answer(&c.digest(), 0).unwrap();
        assert_eq!(answer.batches.len(), MAX_ANSWER_BATCHES);
        assert!(answer.more);
        // The asker pulls the rest in following rounds.
        let mut rounds = 0;
        loop {
            let answer = b.answer(&c.digest(), rounds * 7).unwrap();
            for batch in answer.batches {
                c.apply(batch, now).unwrap();
            }
            rounds += 1;
            if !answer.more || rounds > 10 {
                break;
            }
        }
        assert!(rounds <= 3, "{rounds} rounds");
        assert!(b.answer(&c.digest(), 0).unwrap().batches.is_empty());
        assert_eq!(c.digest().entries.len(), writers + 2);

        // Bytes bound it too: large writers come a few at a time, and always at least one.
        let mut big = unsealed("big", 1);
        for i in 0..10 {
            big.apply(rows_batch(&format!("w{i}"), 0..900, true, 1000), now)
                .unwrap();
        }
        let answer = big.answer(&table("d", 1).digest(), 3).unwrap();
        let bytes: usize = answer
            .batches
            .iter()
            .flat_map(|b| &b.rows)
            .map(row_cost)
            .sum();
        assert!(answer.more);
        assert!(
            !answer.batches.is_empty() && bytes <= MAX_ANSWER_BYTES,
            "{bytes}"
        );
        // Rotated: the answer starts at the writer asked for.
        assert_eq!(answer.batches[0].node, "w2");
    }

    #[test]
    fn digest_comparison_is_linear_and_a_huge_digest_is_refused() {
        let now = t0();
        let mut b = unsealed("b", 1);
        for i in 0..MAX_WRITERS {
            b.apply(rows_batch(&format!("w{i}"), 0..1, true, 0), now)
                .unwrap();
        }
        let mut theirs = b.digest();
        assert_eq!(theirs.entries.len(), MAX_DIGEST);
        let cmp = b.compare(&theirs).unwrap();
        assert!(!cmp.they_lack && !cmp.they_have_newer);
        // One pass over each side (a quadratic scan would visit about 16 million pairs).
        assert!(cmp.work <= 3 * MAX_DIGEST, "{} entries visited", cmp.work);
        theirs.entries[MAX_DIGEST / 2].2 += 1;
        theirs.entries[1].2 = 0;
        let cmp = b.compare(&theirs).unwrap();
        assert!(cmp.they_lack && cmp.they_have_newer);
        // A writer only they hold is newer there.
        let one = Digest {
            entries: vec![("zz".into(), 1, 1)],
        };
        let cmp = b.compare(&one).unwrap();
        assert!(cmp.they_have_newer && cmp.they_lack);

        theirs.entries.push(("one-too-many".into(), 1, 1));
        assert!(matches!(
            b.compare(&theirs),
            Err(TableError::DigestTooLarge(n)) if n == MAX_DIGEST + 1
        ));
        assert!(matches!(
            b.answer(&theirs, 0),
            Err(TableError::DigestTooLarge(_))
        ));
    }

    // ---- Convergence under a hostile network, by simulation. ----

    const POOLS: [&str; 2] = ["web", "api"];
    const ORIGINS: [&str; 3] = ["o1", "o2", "o3"];

    #[derive(Debug, Clone)]
    enum Op {
        Set {
            node: usize,
            key: usize,
            healthy: bool,
            rtt: Option<u32>,
            reason: Option<u8>,
        },
        Remove {
            node: usize,
            key: usize,
        },
        Fingerprint {
            node: usize,
            fp: u8,
        },
        Push {
            from: usize,
            to: u8,
        },
        AntiEntropy {
            asker: usize,
            answerer: usize,
        },
        Snapshot {
            joiner: usize,
            from: usize,
        },
        Deliver {
            pick: prop::sample::Index,
            twice: bool,
        },
        Drop {
            pick: prop::sample::Index,
        },
        Restart {
            node: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = 0usize..5;
        prop_oneof![
            4 => (
                n.clone(),
                0usize..6,
                any::<bool>(),
                // Small RTTs exercise the 5% rule, large ones the 1 ms rule.
                prop::option::of(prop_oneof![0u32..2000, 0u32..200_000]),
                prop::option::of(0u8..3),
            )
                .prop_map(|(node, key, healthy, rtt, reason)| Op::Set {
                    node,
                    key,
                    healthy,
                    rtt,
                    reason
                }),
            1 => (n.clone(), 0usize..6).prop_map(|(node, key)| Op::Remove { node, key }),
            1 => (n.clone(), 0u8..3).prop_map(|(node, fp)| Op::Fingerprint { node, fp }),
            3 => (n.clone(), any::<u8>()).prop_map(|(from, to)| Op::Push { from, to }),
            2 => (n.clone(), n.clone())
                .prop_map(|(asker, answerer)| Op::AntiEntropy { asker, answerer }),
            1 => (n.clone(), n.clone()).prop_map(|(joiner, from)| Op::Snapshot { joiner, from }),
            6 => (any::<prop::sample::Index>(), any::<bool>())
                .prop_map(|(pick, twice)| Op::Deliver { pick, twice }),
            2 => any::<prop::sample::Index>().prop_map(|pick| Op::Drop { pick }),
            1 => n.prop_map(|node| Op::Restart { node }),
        ]
    }

    type Visibles = BTreeMap<(String, String, String), (bool, Option<u32>, Option<String>)>;

    fn visibles(t: &Table) -> Visibles {
        t.writers()
            .filter(|w| !w.local)
            .flat_map(|w| {
                let node = w.node;
                w.rows.map(move |(r, _)| {
                    (
                        (node.to_string(), r.pool.clone(), r.origin.clone()),
                        (r.healthy, r.rtt_us, r.reason.clone()),
                    )
                })
            })
            .collect()
    }

    /// Every held row's version: (writer, pool, origin) -> (epoch, seq).
    fn versions(t: &Table) -> BTreeMap<(String, String, String), (u64, u64)> {
        t.writers()
            .flat_map(|w| {
                let (node, epoch) = (w.node, w.epoch);
                w.rows.map(move |(r, _)| {
                    (
                        (node.to_string(), r.pool.clone(), r.origin.clone()),
                        (epoch, r.seq),
                    )
                })
            })
            .collect()
    }

    /// Applies and checks that what apply reports matches what changed, and that no row
    /// goes back to an older version.
    fn apply_checked(t: &mut Table, batch: Batch, now: Instant) -> Result<(), TestCaseError> {
        let before = visibles(t);
        let old = versions(t);
        let applied = t.apply(batch, now);
        prop_assert!(applied.is_ok(), "{:?}", applied);
        let applied = applied.unwrap();
        for (key, new) in versions(t) {
            if let Some(old) = old.get(&key) {
                prop_assert!(
                    new >= *old,
                    "{:?} went from {:?} back to {:?}",
                    key,
                    old,
                    new
                );
            }
        }
        let after = visibles(t);
        prop_assert_eq!(applied.changed, before != after);
        let flipped: BTreeMap<_, _> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k).map(|v| v.0) != after.get(*k).map(|v| v.0))
            .map(|k| (k.clone(), after.get(k).map(|v| v.0)))
            .collect();
        let reported: BTreeMap<_, _> = applied
            .flips
            .iter()
            .map(|f| {
                (
                    (f.node.clone(), f.pool.clone(), f.origin.clone()),
                    f.healthy,
                )
            })
            .collect();
        prop_assert_eq!(flipped, reported);
        Ok(())
    }

    fn simulate(n: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let t = t0();
        let name = |i: usize| format!("node-{i}");
        let mut epochs: Vec<u64> = (0..n).map(|i| 100 + i as u64).collect();
        let mut tables: Vec<Table> = (0..n)
            .map(|i| {
                Table::new(name(i), Region::ALL[i], epochs[i], 0).with_seal(FakeSeal::of(&name(i)))
            })
            .collect();
        let mut pushed = vec![0u64; n];
        let mut wire: Vec<(usize, Batch)> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            let now = t + Duration::from_millis(step as u64);
            match op {
                Op::Set {
                    node,
                    key,
                    healthy,
                    rtt,
                    reason,
                } => {
                    let node = node % n;
                    let reason = reason.map(|r| format!("reason {r}"));
                    tables[node].set_local(
                        POOLS[key / 3],
                        ORIGINS[key % 3],
                        obs(healthy, rtt, step as u64, reason.as_deref()),
                        now,
                    );
                }
                Op::Remove { node, key } => {
                    tables[node % n].remove_local(POOLS[key / 3], ORIGINS[key % 3]);
                }
                Op::Fingerprint { node, fp } => tables[node % n].set_fingerprint(u64::from(fp)),
                Op::Push { from, to } => {
                    let from = from % n;
                    let batch = tables[from].local_since(pushed[from]);
                    pushed[from] = tables[from].local_seq();
                    for dst in (0..n).filter(|&d| d != from && to & (1 << d) != 0) {
                        wire.push((dst, batch.clone()));
                    }
                }
                Op::AntiEntropy { asker, answerer } => {
                    let (asker, answerer) = (asker % n, answerer % n);
                    if asker != answerer {
                        let digest = tables[asker].digest();
                        for batch in tables[answerer].delta(&digest) {
                            wire.push((asker, batch));
                        }
                    }
                }
                Op::Snapshot { joiner, from } => {
                    let (joiner, from) = (joiner % n, from % n);
                    if joiner != from {
                        for batch in tables[from].snapshot() {
                            wire.push((joiner, batch));
                        }
                    }
                }
                Op::Deliver { pick, twice } => {
                    if !wire.is_empty() {
                        let (dst, batch) = wire.swap_remove(pick.index(wire.len()));
                        if twice {
                            wire.push((dst, batch.clone()));
                        }
                        apply_checked(&mut tables[dst], batch, now)?;
                    }
                }
                Op::Drop { pick } => {
                    if !wire.is_empty() {
                        wire.swap_remove(pick.index(wire.len()));
                    }
                }
                Op::Restart { node } => {
                    let node = node % n;
                    epochs[node] += 1000;
                    tables[node] = Table::new(name(node), Region::ALL[node], epochs[node], 0)
                        .with_seal(FakeSeal::of(&name(node)));
                    pushed[node] = 0;
                }
            }
        }

        // One full anti-entropy round; whatever is still on the wire is lost.
        let end = t + Duration::from_secs(3600);
        for asker in 0..n {
            for answerer in (0..n).filter(|&a| a != asker) {
                let digest = tables[asker].digest();
                for batch in tables[answerer].delta(&digest) {
                    apply_checked(&mut tables[asker], batch, end)?;
                }
            }
        }

        for holder in &tables {
            let writers: Vec<_> = holder.writers().map(|w| w.node.to_string()).collect();
            let mut expected: Vec<_> = (0..n).map(name).collect();
            expected.sort();
            let mut got = writers.clone();
            got.sort();
            prop_assert_eq!(got, expected);
            for (w, writer) in tables.iter().enumerate() {
                let view = holder.writers().find(|v| v.node == name(w)).unwrap();
                prop_assert_eq!(view.epoch, writer.local_epoch());
                prop_assert_eq!(view.seq, writer.local_seq());
                prop_assert_eq!(
                    view.fingerprint,
                    writer.writers().next().unwrap().fingerprint
                );
                prop_assert_eq!(rows_of(holder, &name(w)), rows_of(writer, &name(w)));
            }
            prop_assert_eq!(holder.stats().malformed, 0);
        }
        // Converged: nobody has anything left to offer anybody.
        for a in &tables {
            for b in &tables {
                prop_assert!(a.delta(&b.digest()).is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn tables_converge_after_one_anti_entropy_round(
            n in 3usize..=5,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            simulate(n, ops)?;
        }

        #[test]
        fn random_batches_never_panic_and_bad_ones_change_nothing(
            full in any::<bool>(),
            base_seq in 0u64..6,
            seq in 0u64..8,
            removed_seq in 0u64..6,
            epoch in 0u64..3,
            rows in prop::collection::vec((0usize..6, 0u64..8, any::<bool>()), 0..8),
        ) {
            let now = t0();
            let mut t = unsealed("b", 1);
            let mut a = unsealed("a", 1);
            up(&mut a, "web", "o1", 1000, now);
            t.apply(a.local_since(0), now).unwrap();
            let before = (visibles(&t), t.digest());
            let batch = Batch {
                node: "a".into(),
                region: Region::Weu,
                epoch,
                base_seq,
                seq,
                removed_seq,
                full,
                fingerprint: 0,
                        advert: Default::default(),
                rows: rows.into_iter().map(|(key, seq, healthy)| Row {
                    pool: POOLS[key / 3].into(),
                    origin: ORIGINS[key % 3].into(),
                    healthy,
                    rtt_us: None,
                    last_change_ms: 0,
                    reason: None,
                    verdict: None,
                    seq,
                }).collect(),
                sig: Vec::new(),
            };
            if t.apply(batch, now).is_err() {
                prop_assert_eq!((visibles(&t), t.digest()), before);
            }
        }
    }
}
