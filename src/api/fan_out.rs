//! Fan-outs (AddMentions, RemoveMentions) on the engine, their states
//! answered in the order of the request's users.

use super::convert::to_proto;
use super::status::ApiError;
use super::{ReadStatesService, proto};
use crate::cache::{StateView, UserTxn};
use crate::ids::{ChannelId, MessageId, UserId};

impl ReadStatesService {
    /// Applies one change to each user of a fan-out (see
    /// `Engine::fan_out`); returns one state per user, in the order of
    /// `user_ids`.
    pub(super) async fn fan_out(
        &self,
        user_ids: &[UserId],
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        let mut states = vec![proto::ReadState::default(); user_ids.len()];
        self.engine
            .fan_out(user_ids, change, |index, user_id, view| {
                if let Some(state) = states.get_mut(index) {
                    *state = to_proto(user_id, view);
                }
            })
            .await?;
        Ok(states)
    }

    /// Counts a mention of each user without waiting for loads (see
    /// `Engine::defer_mentions`).
    pub(super) async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), ApiError> {
        Ok(self
            .engine
            .defer_mentions(user_ids, channel, message)
            .await?)
    }
}
