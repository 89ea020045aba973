//! Users to slots. A user's slot must be the same in every build and on
//! every instance, or two instances would disagree on who serves the user:
//! so it is not taken from `ahash` (randomly keyed per process) or std's
//! SipHash (keys and algorithm unspecified), but from SplitMix64's
//! finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", 2014; the mixer of `java.util.SplittableRandom`), a fixed
//! bijection of 64-bit words whose output bits each depend on every input
//! bit. Snowflake ids carry a timestamp in their high bits and a counter in
//! their low ones; the mixer spreads both over the slots.

use crate::config::MAX_SLOTS;
use crate::ids::UserId;

/// A slot number, below the keyspace's slot count.
pub type Slot = u32;

/// Returns SplitMix64's finaliser of `value`.
pub const fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Returns the slot of `user_id` among `slots` slots (at least 1).
pub fn slot_of(user_id: UserId, slots: u32) -> Slot {
    debug_assert!(slots > 0 && slots <= MAX_SLOTS);
    // The remainder's bias is below slots / 2^64: nothing.
    (mix64(user_id.get()) % u64::from(slots.max(1))) as Slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn the_mixer_is_splitmix64s_finaliser() {
        // The published SplitMix64 sequence from seed 0: each output is the
        // finaliser of the state advanced by the golden-ratio increment.
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(mix64(GAMMA), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(GAMMA.wrapping_mul(2)), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(mix64(GAMMA.wrapping_mul(3)), 0x06c4_5d18_8009_454f);
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn slots_are_pinned_across_builds() {
        // Changing any of these moves users between instances of a running
        // cluster: a new hash needs a new keyspace.
        let pinned = [
            (1_u64, 1024_u32, 485),
            (80_351_110_224_678_912, 1024, 499),
            (175_928_847_299_117_063, 1024, 224),
            (u64::MAX >> 1, 1024, 701),
            (42, 7, 3),
        ];
        for (id, slots, expected) in pinned {
            assert_eq!(
                slot_of(user(id), slots),
                expected,
                "user {id} over {slots} slots"
            );
        }
    }

    #[test]
    fn consecutive_ids_spread_over_every_slot() {
        let slots = 1024;
        let mut counts = vec![0_u32; slots as usize];
        for id in 1..=(u64::from(slots) * 100) {
            counts[slot_of(user(id), slots) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 55 && *max <= 145, "min {min}, max {max}");
    }
}
