//! A small seeded PRNG (SplitMix64) for the test tools: the same sequence for a seed on every
//! platform and version, which a library RNG does not promise, so that a seed printed by a
//! run (mesh-bench's picks, chaos-soak's schedule) replays it.

/// SplitMix64; its state is the seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    // Not an Iterator: the sequence never ends, and callers want numbers, not Options.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_its_sequence() {
        // SplitMix64's published first outputs for seed 0.
        let mut r = Rng(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        let mut v: Vec<u32> = (0..10).collect();
        Rng(7).shuffle(&mut v);
        let mut again: Vec<u32> = (0..10).collect();
        Rng(7).shuffle(&mut again);
        assert_eq!(v, again);
        assert!((0..1000).all(|_| (3..=5).contains(&r.range(3, 5))));
    }
}
