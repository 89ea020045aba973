//! The randomness of the backoff's jitter.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::routing::mix64;

/// Random words for the jitter: SplitMix64 (a counter advanced by the
/// golden-ratio increment, through [`mix64`]) from a random seed. Not for
/// secrets; lock-free, and distinct per client.
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// Returns a generator with a seed from std's per-process random keys.
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(RandomState::new().hash_one(0_u8)),
        }
    }

    /// Returns the next random word.
    pub(crate) fn next(&self) -> u64 {
        mix64(
            self.state
                .fetch_add(Self::GAMMA, Ordering::Relaxed)
                .wrapping_add(Self::GAMMA),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_spread_and_distinct() {
        let jitter = Jitter::new();
        let words: Vec<u64> = (0..1_000).map(|_| jitter.next()).collect();
        let upper_half = words.iter().filter(|&&word| word >= 1 << 63).count();
        assert!((400..600).contains(&upper_half), "{upper_half}");
        let mut distinct = words.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), words.len());
    }
}
