//! Fan-outs (AddMentions, RemoveMentions): one change applied to many
//! users, cached ones at once and the others loaded a bounded number at a
//! time, at background priority; or, when the caller needs no states back,
//! mentions deferred to the users' next load (see `cache::inbox`).

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::Engine;
use crate::cache::{CacheError, Deferral, StateView, UserTxn};
use crate::ids::{ChannelId, MessageId, UserId};

/// How many uncached users of one fan-out are loaded at once.
const FANOUT_LOAD_CONCURRENCY: usize = 32;

impl Engine {
    /// Applies one change to each user of a fan-out: cached users at once
    /// under their partition lock, the others loaded concurrently. Hands
    /// each user's resulting state to `place` with the user's index in
    /// `user_ids` (cached users first, loaded ones as their loads end).
    pub async fn fan_out(
        &self,
        user_ids: &[UserId],
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
        mut place: impl FnMut(usize, UserId, StateView),
    ) -> Result<(), CacheError> {
        let mut uncached = Vec::new();
        for (index, &user_id) in user_ids.iter().enumerate() {
            match self.cache.try_write(user_id, change)? {
                Ok(view) => place(index, user_id, view),
                Err(_) => uncached.push((index, user_id)),
            }
        }
        self.load_fan_out(uncached, change, &mut place).await
    }

    /// Counts a mention of each user without waiting for loads: users in
    /// memory at once, the others when next loaded. Only a user whose inbox
    /// is full is loaded now.
    pub async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), CacheError> {
        let mut full = Vec::new();
        for &user_id in user_ids {
            if self.cache.defer_mention(user_id, channel, message)? == Deferral::Full {
                full.push((full.len(), user_id));
            }
        }
        if !full.is_empty() {
            let change = |txn: &mut UserTxn<'_>| txn.add_mention(channel, message);
            self.load_fan_out(full, change, &mut |_, _, _| {}).await?;
        }
        Ok(())
    }

    /// Loads the users of a fan-out that are not cached, a bounded number
    /// at once at background priority, and applies the change to each.
    async fn load_fan_out(
        &self,
        uncached: Vec<(usize, UserId)>,
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
        place: &mut impl FnMut(usize, UserId, StateView),
    ) -> Result<(), CacheError> {
        let mut pending = uncached.into_iter();
        let mut loads = FuturesUnordered::new();
        loop {
            while loads.len() < FANOUT_LOAD_CONCURRENCY {
                let Some((index, user_id)) = pending.next() else {
                    break;
                };
                loads.push(async move {
                    let view = self.write_in_background(user_id, change).await?;
                    Ok::<_, CacheError>((index, user_id, view))
                });
            }
            match loads.next().await {
                Some(loaded) => {
                    let (index, user_id, view) = loaded?;
                    place(index, user_id, view);
                }
                None => return Ok(()),
            }
        }
    }
}
