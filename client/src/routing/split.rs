//! A fan-out's users split by owner, each part remembering its users'
//! positions in the request, and the parts' answers merged back in
//! request order, as the service merges a fan-out it forwards.

use super::SlotMap;

impl SlotMap {
    /// Splits `user_ids` by owner, each part keeping its users in request
    /// order with their positions; the users whose owner is unknown make
    /// one part of their own. Parts come in the order of their first user.
    pub fn split(&self, user_ids: &[u64]) -> Vec<Part> {
        // Part index per owner index; the last entry is the unknown owner's.
        let mut part_of_owner: Vec<Option<usize>> = vec![None; self.owners.len() + 1];
        let mut parts: Vec<Part> = Vec::new();
        for (position, &user_id) in user_ids.iter().enumerate() {
            let owner = self.owner_index(user_id);
            let key = owner.unwrap_or(self.owners.len());
            let part = *part_of_owner[key].get_or_insert_with(|| {
                parts.push(Part {
                    owner,
                    user_ids: Vec::new(),
                    positions: Vec::new(),
                });
                parts.len() - 1
            });
            parts[part].user_ids.push(user_id);
            parts[part].positions.push(position);
        }
        parts
    }
}

/// The users of a fan-out that one instance serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The index of their owner in the map's owners; `None` for users whose
    /// slot has no known holder.
    pub owner: Option<usize>,
    /// The users, in request order.
    pub user_ids: Vec<u64>,
    /// Each user's position in the request's `user_ids`.
    pub positions: Vec<usize>,
}

/// Why the answers of a split fan-out cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A part's answer does not hold one state per user of the part.
    #[error("a part of {users} users answered {answers} read states, not one per user")]
    PartMismatch {
        /// Users in the part.
        users: usize,
        /// States in its answer.
        answers: usize,
    },
    /// No part answered for a position of the request.
    #[error("no part answered for position {position} of the request")]
    Missing {
        /// The first position without an answer.
        position: usize,
    },
}

/// Merges the answers of the parts of a fan-out of `total` users back in
/// request order: each item is a part's positions and its answers, one per
/// position, in the part's order.
pub fn merge<T>(
    total: usize,
    parts: impl IntoIterator<Item = (Vec<usize>, Vec<T>)>,
) -> Result<Vec<T>, MergeError> {
    let mut merged: Vec<Option<T>> = std::iter::repeat_with(|| None).take(total).collect();
    for (positions, answers) in parts {
        if positions.len() != answers.len() {
            return Err(MergeError::PartMismatch {
                users: positions.len(),
                answers: answers.len(),
            });
        }
        for (position, answer) in positions.into_iter().zip(answers) {
            debug_assert!(merged[position].is_none(), "position {position} twice");
            merged[position] = Some(answer);
        }
    }
    let mut states = Vec::with_capacity(total);
    for (position, state) in merged.into_iter().enumerate() {
        states.push(state.ok_or(MergeError::Missing { position })?);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GetRoutingResponse, SlotOwner};

    /// A map of 64 slots alternating between owners "a" and "b", with
    /// every third slot unknown.
    fn striped() -> SlotMap {
        let owner = |id: &str| SlotOwner {
            instance_id: id.to_owned(),
            address: format!("{id}:1"),
        };
        SlotMap::from_response(GetRoutingResponse {
            slot_count: 64,
            slot_hash: super::super::SLOT_HASH.to_owned(),
            owners: vec![owner("a"), owner("b")],
            slot_owners: (0..64)
                .map(|slot| if slot % 3 == 2 { 0 } else { slot % 2 + 1 })
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_split_keeps_every_users_position_and_merges_back_in_order() {
        let map = striped();
        // Duplicates, and users of both owners and of unknown slots.
        let user_ids: Vec<u64> = (1..200).chain([7, 7, 150, 1]).collect();
        let parts = map.split(&user_ids);
        assert!(parts.len() == 3, "two owners and the unknown: {parts:?}");
        let mut seen = vec![false; user_ids.len()];
        for part in &parts {
            assert_eq!(part.user_ids.len(), part.positions.len());
            assert!(part.positions.windows(2).all(|pair| pair[0] < pair[1]));
            for (&user_id, &position) in part.user_ids.iter().zip(&part.positions) {
                assert_eq!(user_ids[position], user_id);
                assert_eq!(map.owner_index(user_id), part.owner);
                seen[position] = true;
            }
        }
        assert!(seen.iter().all(|&seen| seen));
        // Each part answers its users (here: the ids themselves), in the
        // part's order; the merge restores the request's.
        let answers = parts
            .into_iter()
            .rev()
            .map(|part| (part.positions, part.user_ids));
        assert_eq!(merge(user_ids.len(), answers).unwrap(), user_ids);
    }

    #[test]
    fn a_part_answering_the_wrong_count_fails_the_merge() {
        let answers = vec![(vec![0, 2], vec!["a", "c"]), (vec![1], vec![])];
        assert_eq!(
            merge(3, answers),
            Err(MergeError::PartMismatch {
                users: 1,
                answers: 0
            })
        );
        assert_eq!(
            merge(3, vec![(vec![0, 2], vec!["a", "c"])]),
            Err(MergeError::Missing { position: 1 })
        );
        assert_eq!(merge::<u8>(0, Vec::new()), Ok(Vec::new()));
    }
}
