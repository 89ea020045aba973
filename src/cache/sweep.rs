//! The cache's side of the flusher's sweep: the users waiting for their
//! write, taken a key range at a time.
//!
//! The timer buckets write each user one flush delay after its first
//! change, so a round holds users scattered over the whole key space, and
//! in a B-tree store every row then rewrites a page of its own. The sweep
//! instead walks the key space, taking every waiting user of the current
//! range from every partition, so a round's rows sit side by side in the
//! store and share its pages. The timer buckets stay as they are: they
//! bound every write by the delay whatever the sweep does.

use std::ops::Bound;

use super::write_behind::{FlushJob, USERS_PER_LOCK, wrapped};
use super::{Cache, Partition};
use crate::ids::UserId;

impl Cache {
    /// How many cached users of partition `index` wait for their write.
    pub fn waiting_users(&self, index: usize) -> usize {
        self.partitions
            .get(index)
            .map_or(0, |partition| partition.lock().waiting.len())
    }

    /// How many cached users of partition `index` at or after `from` (all
    /// if `None`) wait for their write.
    pub fn waiting_after(&self, index: usize, from: Option<UserId>) -> usize {
        let Some(partition) = self.partitions.get(index) else {
            return 0;
        };
        let partition = partition.lock();
        match from {
            None => partition.waiting.len(),
            Some(from) => partition.waiting.range(from..).count(),
        }
    }

    /// Where a sweep step from `from` (the start of the key space if
    /// `None`) that takes `step` waiting users of partition `index` ends
    /// (exclusive): `None` if fewer than `step` wait there from `from` on,
    /// so the step runs to the end of the key space.
    pub fn sweep_end(&self, index: usize, from: Option<UserId>, step: usize) -> Option<UserId> {
        let partition = self.partitions.get(index)?.lock();
        let lower = from.map_or(Bound::Unbounded, Bound::Included);
        partition
            .waiting
            .range((lower, Bound::Unbounded))
            .nth(step)
            .copied()
    }

    /// Takes the flush jobs of the users of partition `index` that wait for
    /// their write and whose ids are in `from..to` (`None`: that end of the
    /// key space). A taken user waits no more: a later change puts it back.
    pub fn take_partition_sweep(
        &self,
        index: usize,
        from: Option<UserId>,
        to: Option<UserId>,
        jobs: &mut Vec<FlushJob>,
    ) {
        let Some(partition) = self.partitions.get(index) else {
            return;
        };
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return;
        }
        let mut lower = from.map_or(Bound::Unbounded, Bound::Included);
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        let mut users = Vec::with_capacity(USERS_PER_LOCK);
        loop {
            let mut guard = partition.lock();
            let partition = &mut *guard;
            users.clear();
            users.extend(
                partition
                    .waiting
                    .range((lower, upper))
                    .take(USERS_PER_LOCK)
                    .copied(),
            );
            for &user_id in &users {
                partition.waiting.remove(&user_id);
                let Some(entry) = partition.lru.peek_mut(&user_id) else {
                    continue;
                };
                entry.scheduled = false;
                let job = FlushJob::of(user_id, entry);
                if !job.rows.is_empty() {
                    jobs.push(job);
                }
            }
            match users.last() {
                Some(&last) if users.len() == USERS_PER_LOCK => lower = Bound::Excluded(last),
                _ => {
                    drop_stale_buckets(partition);
                    return;
                }
            }
        }
    }
}

/// Drops the timer buckets at the front that list no user waiting in them
/// any more (all swept, or waiting in later buckets), so the oldest bucket
/// left is the oldest waiting user's and the flush lag reads true.
fn drop_stale_buckets(partition: &mut Partition) {
    while let Some((tick, users)) = partition.schedule.front_mut() {
        let tick = wrapped(*tick);
        let lru = &mut partition.lru;
        let waits_here = |user_id: &UserId| {
            lru.peek_mut(user_id)
                .is_some_and(|entry| entry.scheduled && entry.due_tick == tick)
        };
        if users.iter().any(waits_here) {
            return;
        }
        partition.schedule.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::test_support::{
        ack, partitioned_cache, settings, take_rows, temp_store, user,
    };

    /// A cache of `partitions` partitions in which users 1 to `users`
    /// acked message 1.
    async fn acked(partitions: usize, users: u64) -> Cache {
        let (_dir, store) = temp_store();
        let cache = partitioned_cache(partitions);
        for id in 1..=users {
            ack(&cache, &store, id, 1).await;
        }
        cache
    }

    fn swept(cache: &Cache, from: Option<UserId>, to: Option<UserId>) -> Vec<(u64, u64)> {
        let mut jobs = Vec::new();
        for index in 0..cache.partition_count() {
            cache.take_partition_sweep(index, from, to, &mut jobs);
        }
        let mut rows: Vec<(u64, u64)> = jobs
            .iter()
            .flat_map(|job| &job.rows)
            .map(|row| (row.user_id.get(), row.state.last_message_id.get()))
            .collect();
        rows.sort_unstable();
        rows
    }

    fn waiting(cache: &Cache) -> usize {
        (0..cache.partition_count())
            .map(|index| cache.waiting_users(index))
            .sum()
    }

    #[tokio::test]
    async fn a_range_is_taken_from_every_partition_once() {
        let cache = acked(4, 300).await;
        assert_eq!(waiting(&cache), 300);
        // More than one lock hold's worth of users in the range.
        let rows = swept(&cache, Some(user(10)), Some(user(290)));
        let expected: Vec<(u64, u64)> = (10..290).map(|id| (id, 1)).collect();
        assert_eq!(rows, expected);
        assert_eq!(waiting(&cache), 20);
        assert!(
            swept(&cache, Some(user(10)), Some(user(290))).is_empty(),
            "a taken user waits no more"
        );
        let rest = swept(&cache, None, None);
        let ids: Vec<u64> = rest.iter().map(|(id, _)| *id).collect();
        let expected: Vec<u64> = (1..10).chain(290..=300).collect();
        assert_eq!(ids, expected);
        assert_eq!(waiting(&cache), 0);
        assert!(swept(&cache, Some(user(5)), Some(user(5))).is_empty());
        assert!(swept(&cache, Some(user(6)), Some(user(5))).is_empty());
    }

    #[tokio::test]
    async fn a_change_after_the_sweep_waits_again() {
        let (_dir, store) = temp_store();
        let cache = acked(2, 3).await;
        assert_eq!(swept(&cache, None, None).len(), 3);
        ack(&cache, &store, 2, 7).await;
        assert_eq!(waiting(&cache), 1);
        assert_eq!(swept(&cache, None, None), vec![(2, 7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_writes_a_swept_user_one_delay_after_its_next_change() {
        let (_dir, store) = temp_store();
        let cache = Cache::new(&settings(100), 0);
        ack(&cache, &store, 1, 1).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(swept(&cache, None, None), vec![(1, 1)]);
        tokio::time::advance(Duration::from_secs(1)).await;
        ack(&cache, &store, 1, 2).await;
        // The first change's bucket comes due: the user is listed there
        // still, but waits in the second change's.
        tokio::time::advance(Duration::from_secs(28)).await;
        assert!(take_rows(&cache, false).is_empty(), "a stale listing");
        tokio::time::advance(Duration::from_secs(2)).await;
        let rows = take_rows(&cache, false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state.last_message_id.get(), 2);
        assert_eq!(cache.waiting_users(0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_lag_is_the_oldest_waiting_users() {
        let (_dir, store) = temp_store();
        let cache = Cache::new(&settings(100), 0);
        ack(&cache, &store, 1, 1).await;
        ack(&cache, &store, 2, 1).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        ack(&cache, &store, 3, 1).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.stats().flush_lag, Duration::from_secs(11));
        assert_eq!(swept(&cache, None, Some(user(3))).len(), 2);
        assert_eq!(cache.stats().flush_lag, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_step_ends_past_its_count_of_one_partitions_users() {
        let cache = acked(1, 10).await;
        assert_eq!(cache.sweep_end(0, None, 3), Some(user(4)));
        assert_eq!(cache.sweep_end(0, Some(user(4)), 3), Some(user(7)));
        assert_eq!(cache.sweep_end(0, Some(user(9)), 2), None);
        assert_eq!(cache.sweep_end(7, None, 1), None, "no such partition");
        assert_eq!(cache.waiting_users(7), 0);
    }

    #[tokio::test]
    async fn an_evicted_user_waits_no_more() {
        let (_dir, store) = temp_store();
        // Room for two states: the third user evicts the first, dirty.
        let cache = Cache::new(&settings(2), 0);
        for id in 1..=3 {
            ack(&cache, &store, id, 1).await;
        }
        assert_eq!(cache.waiting_users(0), 2);
        assert_eq!(
            swept(&cache, None, None),
            vec![(2, 1), (3, 1)],
            "the evicted user is the eviction write's"
        );
    }
}
