//! FNV-1a, the one hash of every value nodes compare across the mesh: digest, config and
//! rendezvous fingerprints.

/// Start of an FNV-1a hash; feed it bytes with [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `h` ([`FNV_OFFSET`] to start): a 64-bit hash every
/// build of every node computes alike (std's hasher is keyed at random), for values nodes
/// compare across the mesh.
#[inline]
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
