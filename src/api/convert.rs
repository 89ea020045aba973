//! Conversion of the engine's read states to `readstates.v1` messages.

use super::proto;
use crate::cache::StateView;
use crate::ids::UserId;

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
