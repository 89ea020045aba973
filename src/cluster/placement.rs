//! Placement: which live member each slot belongs on, by rendezvous
//! (highest random weight) hashing (Thaler and Ravishankar, 1996). Every
//! member scores every slot with a fixed hash of (member id, slot); the
//! highest score wins. Every instance computes the same answer from the
//! same member list with no coordination, and when a member joins only the
//! slots it now wins move (to it), and when one leaves only its own slots
//! move (each to its runner-up).
//!
//! The score hashes the id with 64-bit FNV-1a and mixes it with the slot by
//! SplitMix64's finaliser: both fixed, so every build agrees.

use super::slots::{Slot, mix64};

/// Returns the 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A member's score for a slot: the slot goes to the highest.
pub fn score(member_hash: u64, slot: Slot) -> u64 {
    mix64(member_hash ^ mix64(u64::from(slot).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// The live members, each with its id's hash computed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Sorted by id, without duplicates.
    members: Vec<(String, u64)>,
}

impl Members {
    /// Builds the member list from ids in any order; duplicates collapse.
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<(String, u64)> = ids
            .into_iter()
            .map(|id| {
                let id = id.into();
                let hash = fnv1a64(id.as_bytes());
                (id, hash)
            })
            .collect();
        members.sort_unstable();
        members.dedup_by(|a, b| a.0 == b.0);
        Self { members }
    }

    /// Returns the number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Returns whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Returns whether `id` is a member.
    pub fn contains(&self, id: &str) -> bool {
        self.members
            .binary_search_by(|(member, _)| member.as_str().cmp(id))
            .is_ok()
    }

    /// Returns the ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(id, _)| id.as_str())
    }

    /// Returns the member `slot` belongs on, `None` without members. Equal
    /// scores (a 2^-64 chance) go to the smaller id.
    pub fn owner_of(&self, slot: Slot) -> Option<&str> {
        let mut best: Option<(&str, u64)> = None;
        for (id, hash) in &self.members {
            let candidate = score(*hash, slot);
            if best.is_none_or(|(_, top)| candidate > top) {
                best = Some((id, candidate));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Returns, for each of `slots` slots, whether it belongs on `me`.
    pub fn targets_of(&self, me: &str, slots: u32) -> Vec<bool> {
        (0..slots)
            .map(|slot| self.owner_of(slot) == Some(me))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: u32 = 1024;

    fn members(count: usize) -> Members {
        Members::new((0..count).map(|index| format!("readstates-{index}")))
    }

    fn placement(members: &Members) -> Vec<String> {
        (0..SLOTS)
            .map(|slot| members.owner_of(slot).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_score_is_pinned_across_builds() {
        // FNV-1a's published test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // Changing the placement moves slots between the instances of a
        // running cluster whose members run different builds.
        let three = members(3);
        let owners: Vec<&str> = (0..8).map(|slot| three.owner_of(slot).unwrap()).collect();
        assert_eq!(
            owners,
            [
                "readstates-2",
                "readstates-1",
                "readstates-2",
                "readstates-0",
                "readstates-0",
                "readstates-0",
                "readstates-0",
                "readstates-1"
            ]
        );
    }

    #[test]
    fn slots_are_balanced_across_members() {
        // Each member's share is binomial around the fair share; these
        // bounds hold for the fixed ids here (the placement is
        // deterministic) and are about three standard deviations wide.
        for (count, tolerance) in [(1, 0.0), (3, 0.15), (5, 0.20), (10, 0.30)] {
            let members = members(count);
            let fair = f64::from(SLOTS) / count as f64;
            let owners = placement(&members);
            for id in members.ids() {
                let share = owners.iter().filter(|owner| *owner == id).count() as f64;
                assert!(
                    (share - fair).abs() <= fair * tolerance,
                    "{id} holds {share} of {SLOTS} slots over {count} members (fair {fair:.1})"
                );
            }
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        for count in [1, 2, 4, 9] {
            let before = placement(&members(count));
            let after = placement(&members(count + 1));
            let newcomer = format!("readstates-{count}");
            let mut moved = 0;
            for (slot, (old, new)) in before.iter().zip(&after).enumerate() {
                if old != new {
                    assert_eq!(new, &newcomer, "slot {slot} moved between old members");
                    moved += 1;
                }
            }
            let fair = f64::from(SLOTS) / (count + 1) as f64;
            assert!(
                (f64::from(moved) - fair).abs() <= fair * 0.3,
                "{moved} slots moved to the member joining {count} (fair {fair:.1})"
            );
        }
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_slots() {
        for count in [2, 3, 5, 10] {
            let all = members(count);
            let before = placement(&all);
            let leaving = "readstates-1";
            let rest = Members::new(all.ids().filter(|id| *id != leaving).map(str::to_owned));
            let after = placement(&rest);
            for (slot, (old, new)) in before.iter().zip(&after).enumerate() {
                if old == leaving {
                    assert_ne!(new, leaving);
                } else {
                    assert_eq!(old, new, "slot {slot} moved though its owner stayed");
                }
            }
        }
    }

    #[test]
    fn duplicates_collapse_and_order_does_not_matter() {
        let a = Members::new(["b", "a", "c", "a"]);
        let b = Members::new(["c", "b", "a"]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert!(a.contains("b") && !a.contains("d"));
        assert_eq!(Members::default().owner_of(0), None);
        let targets = a.targets_of("a", SLOTS);
        let held = targets.iter().filter(|held| **held).count();
        assert_eq!(
            held,
            placement(&a).iter().filter(|owner| *owner == "a").count()
        );
    }
}
