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

/// Users of a fan-out changed between two turns given back to the runtime.
/// A cached user costs about a microsecond, so a fan-out to a thousand of
/// them would hold the request worker for a millisecond, and every call
/// that arrives meanwhile would wait behind it; a turn is a few tens of
/// microseconds instead (BENCHMARKS.md, "Big fan-outs give way").
const FANOUT_USERS_PER_TURN: usize = 64;

/// Gives the runtime a turn before each [`FANOUT_USERS_PER_TURN`]th user
/// past the first: the calls queued behind a big fan-out run in between. A
/// call dropped there (its caller gave up) has changed some of its users,
/// as a failed fan-out may (ARCHITECTURE.md §1.2, rule 7).
async fn turn(index: usize) {
    if index > 0 && index.is_multiple_of(FANOUT_USERS_PER_TURN) {
        tokio::task::yield_now().await;
    }
}

impl Engine {
    /// Applies one change to each user of a fan-out: cached users at once
    /// under their partition lock, giving the runtime a turn every
    /// [`FANOUT_USERS_PER_TURN`] users, the others loaded concurrently. Hands
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
            turn(index).await;
            match self.cache.try_write(user_id, change)? {
                Ok(view) => place(index, user_id, view),
                Err(_) => uncached.push((index, user_id)),
            }
        }
        self.load_fan_out(uncached, change, &mut place).await
    }

    /// Counts a mention of each user without waiting for loads: users in
    /// memory at once, the others when next loaded, giving the runtime a
    /// turn every [`FANOUT_USERS_PER_TURN`] users. Only a user whose inbox
    /// is full is loaded now.
    pub async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), CacheError> {
        let mut full = Vec::new();
        for (index, &user_id) in user_ids.iter().enumerate() {
            turn(index).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::store::EmbeddedStore;

    const USERS: u64 = 1_000;

    async fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let mut config = Config::default();
        config.store.data_dir = dir.to_path_buf();
        let store = Arc::new(EmbeddedStore::open(dir).unwrap());
        Engine::open(&config, store, &Metrics::new()).await.unwrap()
    }

    /// Runs `fan_out` on a one-thread runtime, beside a task spawned just
    /// before it that sets the flag `fan_out` is given; returns whether the
    /// task had run by the time `fan_out` ended.
    async fn other_task_ran_during<F>(fan_out: impl FnOnce(Arc<AtomicBool>) -> F) -> bool
    where
        F: Future<Output = ()>,
    {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let other = tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        fan_out(Arc::clone(&ran)).await;
        let during = ran.load(Ordering::Relaxed);
        other.await.unwrap();
        during
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_big_fan_out_gives_other_calls_a_turn() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let users: Vec<UserId> = (1..=USERS).map(|id| UserId::new(id).unwrap()).collect();
        let channel = ChannelId::new(7).unwrap();
        let mention = |id| MessageId::new(id).unwrap();
        // Every user cached, so no load would give the runtime a turn.
        engine
            .fan_out(&users, |txn| txn.ack(channel, mention(1)), |_, _, _| {})
            .await
            .unwrap();

        // A task spawned before the fan-out runs while it is under way.
        let mut seen_at = None;
        let (seen, engine_ref, users_ref) = (&mut seen_at, &engine, &users);
        let during_fan_out = other_task_ran_during(|ran| async move {
            let place = |index: usize, _, view: StateView| {
                assert_eq!(view.mention_count, 1);
                if seen.is_none() && ran.load(Ordering::Relaxed) {
                    *seen = Some(index);
                }
            };
            let change = |txn: &mut UserTxn<'_>| txn.add_mention(channel, mention(2));
            engine_ref.fan_out(users_ref, change, place).await.unwrap();
        })
        .await;
        assert!(during_fan_out);
        assert_eq!(seen_at, Some(FANOUT_USERS_PER_TURN), "after the first turn");

        // The same for mentions deferred without waiting for loads.
        let ran_during_deferral = other_task_ran_during(|_| async {
            engine
                .defer_mentions(&users, channel, mention(3))
                .await
                .unwrap();
        })
        .await;
        assert!(ran_during_deferral);
        let view = engine
            .cache()
            .try_write(users[0], |txn| txn.view(channel))
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(view.mention_count, 2);
    }
}
