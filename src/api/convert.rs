//! Conversion of the engine's read states to `readstates.v1` messages.

use super::proto;
use crate::cache::{Delta, StateView};
use crate::ids::UserId;
use crate::store::Tombstone;

/// Returns `user_id`'s state `view` as a `readstates.v1.ReadState`.
pub(super) fn to_proto(user_id: UserId, view: StateView) -> proto::ReadState {
    proto::ReadState {
        user_id: user_id.get(),
        channel_id: view.channel_id.get(),
        last_message_id: view.last_message_id.get(),
        mention_count: view.mention_count,
        last_pin_timestamp_ms: view.last_pin_timestamp_ms,
        updated_at_ms: view.updated_at_ms,
        version: view.version,
    }
}

/// Returns `user_id`'s deleted pair as a `readstates.v1.DeletedReadState`.
pub(super) fn deleted_to_proto(user_id: UserId, tombstone: Tombstone) -> proto::DeletedReadState {
    proto::DeletedReadState {
        user_id: user_id.get(),
        channel_id: tombstone.channel_id.get(),
        version: tombstone.version,
    }
}

/// Returns `user_id`'s delta as `GetUserReadStates` answers it.
pub(super) fn delta_to_proto(user_id: UserId, delta: Delta) -> proto::GetUserReadStatesResponse {
    proto::GetUserReadStatesResponse {
        read_states: delta
            .states
            .into_iter()
            .map(|view| to_proto(user_id, view))
            .collect(),
        version: delta.version,
        deleted: delta
            .deleted
            .into_iter()
            .map(|tombstone| deleted_to_proto(user_id, tombstone))
            .collect(),
        reset: delta.reset,
    }
}
