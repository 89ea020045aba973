//! The batches taken from the cache and not yet written: their versions,
//! the only writes that can still arrive at the store older than a row it
//! already holds (see `purge`); and the take rounds they came from, so a
//! slot's handoff can wait for every write taken before it
//! ([`FlushBarrier`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::RowWrite;

/// The unwritten batches. A plain mutex: held for a few map operations,
/// never across an `.await`.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    inner: Mutex<Inner>,
    /// Woken whenever a round or a batch is done.
    done: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// The lowest row version of each unwritten batch, as a multiset.
    lowest_versions: BTreeMap<u64, usize>,
    /// The take rounds still open or with unwritten batches: round number
    /// to the count of its open marks (the round itself, and its batches).
    rounds: BTreeMap<u64, usize>,
    next_round: u64,
}

/// One round of taking rows from the cache; its batches belong to it. The
/// round counts as unwritten until it and each of its batches are dropped.
#[derive(Debug)]
pub(super) struct TakeRound {
    registry: Arc<InFlight>,
    round: u64,
}

/// One batch's entry in [`InFlight`]; removed when dropped (written, or
/// given up at the shutdown deadline).
#[derive(Debug)]
pub(super) struct InFlightBatch {
    registry: Arc<InFlight>,
    lowest_version: u64,
    round: u64,
}

/// Waits for the write-behind's writes taken so far (see
/// [`FlushBarrier::wait`]).
#[derive(Debug, Clone)]
pub struct FlushBarrier {
    registry: Arc<InFlight>,
}

impl InFlight {
    /// Opens a take round: rows taken from the cache from now on until it
    /// is dropped are in its batches.
    pub(super) fn begin_round(self: &Arc<Self>) -> TakeRound {
        let mut inner = self.inner.lock();
        let round = inner.next_round;
        inner.next_round += 1;
        *inner.rounds.entry(round).or_default() += 1;
        TakeRound {
            registry: Arc::clone(self),
            round,
        }
    }

    /// Registers a batch of `rows` taken in `round` until the returned
    /// entry is dropped.
    pub(super) fn register(
        self: &Arc<Self>,
        round: &TakeRound,
        rows: &[RowWrite],
    ) -> InFlightBatch {
        let lowest_version = rows
            .iter()
            .map(|row| row.state.version)
            .min()
            .unwrap_or(u64::MAX);
        let mut inner = self.inner.lock();
        *inner.lowest_versions.entry(lowest_version).or_default() += 1;
        *inner.rounds.entry(round.round).or_default() += 1;
        InFlightBatch {
            registry: Arc::clone(self),
            lowest_version,
            round: round.round,
        }
    }

    /// Returns the lowest row version among the unwritten batches.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.inner.lock().lowest_versions.keys().next().copied()
    }

    /// Returns a barrier over this registry.
    pub(super) fn barrier(self: &Arc<Self>) -> FlushBarrier {
        FlushBarrier {
            registry: Arc::clone(self),
        }
    }

    fn close_round(&self, round: u64) {
        let mut inner = self.inner.lock();
        remove_one(&mut inner.rounds, round);
        drop(inner);
        self.done.notify_waiters();
    }
}

impl FlushBarrier {
    /// Waits until every row the write-behind took from the cache before
    /// this call is written (or given up at the shutdown deadline): the
    /// rounds open now, and every batch they made, are done.
    pub async fn wait(&self) {
        let registry = &self.registry;
        let before = registry.inner.lock().next_round;
        loop {
            let done = registry.done.notified();
            tokio::pin!(done);
            // Registered before the check, so no wake-up is missed.
            done.as_mut().enable();
            let oldest = registry.inner.lock().rounds.keys().next().copied();
            if oldest.is_none_or(|round| round >= before) {
                return;
            }
            done.await;
        }
    }
}

impl Drop for TakeRound {
    fn drop(&mut self) {
        self.registry.close_round(self.round);
    }
}

impl Drop for InFlightBatch {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock();
        remove_one(&mut inner.lowest_versions, self.lowest_version);
        drop(inner);
        self.registry.close_round(self.round);
    }
}

/// Removes one count of `key` from a multiset.
fn remove_one(multiset: &mut BTreeMap<u64, usize>, key: u64) {
    if let Some(count) = multiset.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            multiset.remove(&key);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::{ChannelId, UserId};
    use crate::read_state::ReadState;

    /// A row of user 1 at `version`.
    pub(crate) fn row(channel: u64, version: u64) -> RowWrite {
        let mut state = ReadState::empty(ChannelId::new(channel).unwrap());
        state.version = version;
        RowWrite {
            user_id: UserId::new(1).unwrap(),
            state,
            deleted: false,
        }
    }

    #[test]
    fn the_oldest_unwritten_version_is_tracked_until_its_batch_is_done() {
        let registry = Arc::new(InFlight::default());
        assert_eq!(registry.oldest(), None);
        let round = registry.begin_round();
        let first = registry.register(&round, &[row(1, 50), row(2, 30)]);
        let second = registry.register(&round, &[row(3, 30)]);
        let third = registry.register(&round, &[row(4, 70)]);
        drop(round);
        assert_eq!(registry.oldest(), Some(30));
        drop(first);
        assert_eq!(registry.oldest(), Some(30), "another batch holds 30");
        drop(second);
        assert_eq!(registry.oldest(), Some(70));
        drop(third);
        assert_eq!(registry.oldest(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_barrier_waits_for_the_rounds_and_batches_taken_before_it() {
        let registry = Arc::new(InFlight::default());
        let barrier = registry.barrier();
        barrier.wait().await; // nothing taken: done at once

        let round = registry.begin_round();
        let batch = registry.register(&round, &[row(1, 10)]);
        let waiting = tokio::spawn({
            let barrier = barrier.clone();
            async move { barrier.wait().await }
        });
        // A round begun after the barrier's call is not waited for.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let later = registry.begin_round();
        let _later_batch = registry.register(&later, &[row(2, 20)]);
        drop(round);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!waiting.is_finished(), "a batch of the round is unwritten");
        drop(batch);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the barrier ends once its rounds are written")
            .unwrap();
    }
}
