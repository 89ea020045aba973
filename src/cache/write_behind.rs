//! The cache's side of write-behind: the flush timer buckets, the queue of
//! evicted dirty users, the snapshots the flusher writes, and the clearing
//! of dirty marks once a write has landed.
//!
//! Every method takes one partition's lock briefly: a due bucket is
//! snapshotted a few users per lock hold, and the flusher takes one
//! partition per call so that it can yield to requests between them. An
//! evicted user is queued once when it leaves the LRU, so a flush round
//! costs the users it writes, never a walk over every user still waiting
//! for an earlier eviction write.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Cache, Partition, UserEntry};
use crate::ids::{ChannelId, UserId};
use crate::store::RowWrite;

/// Users snapshotted per hold of a partition's lock.
pub(super) const USERS_PER_LOCK: usize = 64;

/// What a flush snapshot of one user holds.
pub struct FlushJob {
    pub rows: Vec<RowWrite>,
}

impl FlushJob {
    /// Snapshots the dirty rows of one user.
    pub(super) fn of(user_id: UserId, entry: &UserEntry) -> Self {
        let mut rows = Vec::new();
        entry.dirty_rows(user_id, &mut rows);
        Self { rows }
    }
}

/// A timer tick as an entry keeps it: ticks a delay apart never collide.
pub(super) fn wrapped(tick: u64) -> u32 {
    tick as u32
}

impl Cache {
    /// Puts the user in the timer bucket due one flush delay from now,
    /// unless it already waits in one.
    pub(super) fn schedule(&self, partition: &mut Partition, user_id: UserId) {
        self.schedule_since(partition, user_id, None);
    }

    /// Puts the user in the timer bucket due one flush delay after `since`
    /// (now if `None`), unless it already waits in one.
    pub(super) fn schedule_since(
        &self,
        partition: &mut Partition,
        user_id: UserId,
        since: Option<Instant>,
    ) {
        let Some(entry) = partition.lru.peek_mut(&user_id) else {
            return;
        };
        if entry.scheduled {
            return;
        }
        let delay = Duration::from_millis(self.flush_delay_ms.load(Ordering::Relaxed));
        let due = self.tick_at(since.unwrap_or_else(Instant::now) + delay);
        entry.scheduled = true;
        entry.due_tick = wrapped(due);
        partition.waiting.insert(user_id);
        match partition.schedule.back_mut() {
            Some((tick, users)) if *tick == due => users.push(user_id),
            Some((tick, _)) if *tick > due => {
                // An earlier change (a deferred mention): keep the buckets
                // in due order.
                let at = partition.schedule.partition_point(|(tick, _)| *tick < due);
                match partition.schedule.get_mut(at) {
                    Some((tick, users)) if *tick == due => users.push(user_id),
                    _ => partition.schedule.insert(at, (due, vec![user_id])),
                }
            }
            _ => partition.schedule.push_back((due, vec![user_id])),
        }
    }

    /// Returns the timer tick an instant falls in (rounded down, so a state
    /// is never flushed later than its delay).
    pub(super) fn tick_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_millis() / self.flush_tick.as_millis().max(1)).unwrap_or(u64::MAX)
    }

    /// Waits until a dirty user was evicted (a wake-up may be spurious).
    pub async fn evictions(&self) {
        self.evicted.notified().await;
    }

    /// Takes the flush jobs of every partition; see
    /// [`Cache::take_partition_flush_jobs`].
    pub fn take_flush_jobs(&self, all: bool, jobs: &mut Vec<FlushJob>) {
        for index in 0..self.partitions.len() {
            self.take_partition_flush_jobs(index, all, jobs);
        }
    }

    /// Takes the flush jobs of one partition that are due: users whose
    /// timer bucket has come, and evicted users not yet being written. With
    /// `all`, every dirty user is taken (shutdown), even one whose write is
    /// in flight.
    pub fn take_partition_flush_jobs(&self, index: usize, all: bool, jobs: &mut Vec<FlushJob>) {
        let Some(partition) = self.partitions.get(index) else {
            return;
        };
        let now_tick = self.tick_at(Instant::now());
        // Each user with the tick of the bucket it was listed in (`None`: any).
        let due_users: Vec<(UserId, Option<u32>)> = {
            let mut partition = partition.lock();
            let mut due_users = Vec::new();
            if all {
                partition.schedule.clear();
                due_users.extend(
                    partition
                        .lru
                        .iter()
                        .filter(|(_, entry)| entry.dirty_count() > 0)
                        .map(|(user_id, _)| (*user_id, None)),
                );
            }
            while let Some((tick, _)) = partition.schedule.front() {
                if *tick > now_tick {
                    break;
                }
                if let Some((tick, users)) = partition.schedule.pop_front() {
                    let tick = Some(wrapped(tick));
                    due_users.extend(users.into_iter().map(|user_id| (user_id, tick)));
                }
            }
            due_users
        };
        for chunk in due_users.chunks(USERS_PER_LOCK) {
            let mut guard = partition.lock();
            let partition = &mut *guard;
            for &(user_id, tick) in chunk {
                let Some(entry) = partition.lru.peek_mut(&user_id) else {
                    continue; // evicted since: its eviction write covers it
                };
                let waits_here = entry.scheduled && tick.is_none_or(|tick| entry.due_tick == tick);
                if !(all || waits_here) {
                    // A stale listing: the user waits in a later bucket (the
                    // sweep took it and it changed since), or was taken and
                    // its write is in flight.
                    continue;
                }
                if entry.scheduled {
                    entry.scheduled = false;
                    partition.waiting.remove(&user_id);
                }
                let job = FlushJob::of(user_id, entry);
                if !job.rows.is_empty() {
                    jobs.push(job);
                }
            }
        }
        let mut guard = partition.lock();
        let partition = &mut *guard;
        if all {
            partition.evicted.clear();
            let evicted = partition.evicting.iter_mut();
            for (user_id, entry) in evicted.chain(partition.released.iter_mut()) {
                entry.writing = true;
                jobs.push(FlushJob::of(*user_id, entry));
            }
            return;
        }
        for user_id in partition.evicted.drain(..) {
            // Taken back by a request since, or already queued twice.
            let entry = match partition.evicting.get_mut(&user_id) {
                Some(entry) => entry,
                None => match partition.released.get_mut(&user_id) {
                    Some(entry) => entry,
                    None => continue,
                },
            };
            if entry.writing {
                continue;
            }
            entry.writing = true;
            jobs.push(FlushJob::of(user_id, entry));
        }
    }

    /// Records that `rows` reached the store: clears the dirty marks of the
    /// states that did not change since, and frees evicted users that are
    /// now clean.
    pub fn mark_written(&self, rows: &[RowWrite]) {
        let mut cleared = 0;
        for row in rows {
            let mut partition = self.partition(row.user_id).lock();
            let partition = &mut *partition;
            let channel_id: ChannelId = row.state.channel_id;
            let version = row.state.version;
            if let Some(entry) = partition.lru.peek_mut(&row.user_id) {
                let weight_before = entry.weight();
                let was_cleared = entry.mark_written(channel_id, version);
                cleared += usize::from(was_cleared);
                partition.weight -= weight_before - entry.weight();
            } else if let Some(entry) = partition.evicting.get_mut(&row.user_id) {
                let was_cleared = entry.mark_written(channel_id, version);
                cleared += usize::from(was_cleared);
                if entry.dirty_count() == 0 {
                    partition.evicting.remove(&row.user_id);
                }
            } else if let Some(entry) = partition.released.get_mut(&row.user_id) {
                let was_cleared = entry.mark_written(channel_id, version);
                cleared += usize::from(was_cleared);
                if entry.dirty_count() == 0 {
                    partition.released.remove(&row.user_id);
                }
            }
        }
        if cleared > 0 {
            self.dirty.fetch_sub(cleared, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_support::{ack, channel, new_cache, take_rows, temp_store, user};

    /// A cache of room for `users - 1` users, after users 1 to `users`
    /// acked one after the other: user 1 was evicted dirty.
    async fn one_evicted(users: u64) -> Cache {
        let (_dir, store) = temp_store();
        let cache = new_cache(users as usize - 1);
        for id in 1..=users {
            ack(&cache, &store, id, 9).await;
        }
        cache
    }

    #[tokio::test(start_paused = true)]
    async fn changes_inside_the_delay_coalesce_into_one_due_row() {
        let (_dir, store) = temp_store();
        let cache = new_cache(100);
        for message in 1..=100 {
            ack(&cache, &store, 1, message).await;
        }
        assert_eq!(cache.dirty_states(), 1);
        assert!(
            take_rows(&cache, false).is_empty(),
            "nothing is due before the delay"
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        let rows = take_rows(&cache, false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state.last_message_id.get(), 100);

        cache.mark_written(&rows);
        assert_eq!(cache.dirty_states(), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            take_rows(&cache, false).is_empty(),
            "a written state is not flushed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_the_write_stays_dirty_and_is_rescheduled() {
        let (_dir, store) = temp_store();
        let cache = new_cache(100);
        ack(&cache, &store, 1, 1).await;
        tokio::time::advance(Duration::from_secs(30)).await;
        let in_flight = take_rows(&cache, false);
        assert_eq!(in_flight.len(), 1);

        ack(&cache, &store, 1, 2).await;
        cache.mark_written(&in_flight);
        assert_eq!(cache.dirty_states(), 1, "the newer change is still dirty");

        tokio::time::advance(Duration::from_secs(30)).await;
        let rows = take_rows(&cache, false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state.last_message_id.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dirty_users_evicted_are_written_at_once_and_readable_meanwhile() {
        let cache = one_evicted(3).await;
        assert_eq!(cache.resident(), (2, 2));
        // User 1 was evicted dirty: its write is due now, not in 30 s.
        let rows = take_rows(&cache, false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].user_id, user(1));
        assert_eq!(
            cache.dirty_states(),
            3,
            "evicted states stay dirty until written"
        );

        // Before the write lands, a read takes the newest state back.
        let view = cache
            .try_write(user(1), |txn| txn.view(channel(1)))
            .unwrap();
        assert_eq!(view.ok().map(|view| view.last_message_id.get()), Some(9));
        cache.mark_written(&rows);
        assert_eq!(cache.dirty_states(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_eviction_write_in_flight_is_not_taken_again() {
        let cache = one_evicted(2).await;
        let in_flight = take_rows(&cache, false);
        assert_eq!(in_flight.len(), 1);
        assert!(
            take_rows(&cache, false).is_empty(),
            "the next round does not write it again"
        );
        // On shutdown everything dirty is taken, in flight or not.
        let mut jobs = Vec::new();
        cache.take_flush_jobs(true, &mut jobs);
        let users: Vec<_> = jobs.iter().map(|job| job.rows[0].user_id).collect();
        assert_eq!(users.len(), 2);
        assert!(users.contains(&user(1)) && users.contains(&user(2)));
    }
}
