//! Fan-outs (AddMentions, RemoveMentions): one change applied to many
//! users, cached ones at once and the others loaded a bounded number at a
//! time, or, without states in the answer, deferred to their next load.
//! The states come back in the order of the request's users.

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::validate::{ApiError, to_proto};
use super::{ReadStatesService, proto};
use crate::cache::{Deferral, StateView, UserTxn};
use crate::ids::{ChannelId, MessageId, UserId};
use crate::store::LoadPriority;

/// How many uncached users of one fan-out are loaded at once.
const FANOUT_LOAD_CONCURRENCY: usize = 32;

impl ReadStatesService {
    /// Applies one change to each user of a fan-out: cached users at once
    /// under their partition lock, the others loaded concurrently. Returns
    /// one state per user, in the order of `user_ids`.
    pub(super) async fn fan_out(
        &self,
        user_ids: &[UserId],
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        let mut states = Vec::with_capacity(user_ids.len());
        let mut uncached = Vec::new();
        for (index, &user_id) in user_ids.iter().enumerate() {
            match self.cache.try_write(user_id, change)? {
                Ok(view) => states.push(to_proto(user_id, view)),
                Err(_) => {
                    // A placeholder, replaced once the user is loaded.
                    states.push(proto::ReadState::default());
                    uncached.push((index, user_id));
                }
            }
        }
        self.load_fan_out(uncached, change, &mut states).await?;
        Ok(states)
    }

    /// Counts a mention of each user without waiting for loads: users in
    /// memory at once, the others when next loaded (see `cache::inbox`).
    /// Only a user whose inbox is full is loaded now.
    pub(super) async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), ApiError> {
        let mut full = Vec::new();
        for &user_id in user_ids {
            if self.cache.defer_mention(user_id, channel, message)? == Deferral::Full {
                full.push((full.len(), user_id));
            }
        }
        if !full.is_empty() {
            let change = |txn: &mut UserTxn<'_>| txn.add_mention(channel, message);
            let mut unused = vec![proto::ReadState::default(); full.len()];
            self.load_fan_out(full, change, &mut unused).await?;
        }
        Ok(())
    }

    /// Loads the users of a fan-out that are not cached, a bounded number
    /// at once at background priority, and applies the change to each;
    /// each `(index, user)`'s state goes to `states[index]`.
    pub(super) async fn load_fan_out(
        &self,
        uncached: Vec<(usize, UserId)>,
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
        states: &mut [proto::ReadState],
    ) -> Result<(), ApiError> {
        let mut pending = uncached.into_iter();
        let mut loads = FuturesUnordered::new();
        loop {
            while loads.len() < FANOUT_LOAD_CONCURRENCY {
                let Some((index, user_id)) = pending.next() else {
                    break;
                };
                let store = self.store.as_ref();
                loads.push(async move {
                    let view = self
                        .cache
                        .write_with_priority(store, user_id, LoadPriority::Background, change)
                        .await?;
                    Ok::<_, ApiError>((index, to_proto(user_id, view)))
                });
            }
            match loads.next().await {
                Some(loaded) => {
                    let (index, state) = loaded?;
                    if let Some(slot) = states.get_mut(index) {
                        *slot = state;
                    }
                }
                None => return Ok(()),
            }
        }
    }
}
