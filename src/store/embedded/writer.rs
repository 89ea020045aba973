//! The writer thread: every write of the running store (batches, purges,
//! and the repacking they earn) is made here, one group commit at a time.
//!
//! Batches that queue up while one commits are committed together, so a
//! slow disk makes commits larger rather than the queue longer. The thread
//! runs under `SCHED_BATCH` at nice 10 (see `priority`): write-behind is
//! background work, but it must keep up beside a busy neighbour. Since that
//! is not a strict priority, the writer also gives way itself, between rows
//! and between the pieces of a commit (see `paced`),
//! and write-back rounds are kept small (`flush.tick_ms`; BENCHMARKS.md,
//! "Where the tail comes from").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::Database;
use tokio::sync::oneshot;

use super::error::redb_error;
use super::handle::DbHandle;
use super::paced::Pace;
use super::priority::run_behind_requests;
use super::repack::{Inserts, Repacker};
use super::tombstones::{self, RowBytes, TOMBSTONES, Upserted};
use super::{META, STATES, begin_durable_write};
use crate::store::row::encode_row;
use crate::store::{ErrorClass, RowWrite, StoreError, newest_per_key};

/// Batches queued for the writer thread; the flusher bounds how many are in
/// flight, so this only absorbs bursts.
const WRITER_QUEUE: usize = 64;

/// Batches committed together at most, when several wait.
const MAX_GROUP: usize = 16;

/// One job for the writer thread. The job carries the database handle, so
/// the thread holds none between jobs and the database closes as soon as
/// the last store handle is dropped.
pub(super) struct WriteJob {
    pub(super) handle: Arc<DbHandle>,
    pub(super) work: Work,
}

/// What a writer job does, and where its answer goes.
pub(super) enum Work {
    /// Writes a batch of rows.
    Batch {
        rows: Arc<[RowWrite]>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Removes tombstones older than `below`; answers how many. Raises the
    /// recorded deletion horizon to `below`, and `horizon` with it.
    Purge {
        below: u64,
        max: usize,
        horizon: Arc<AtomicU64>,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Nothing to write: a load failed, and the writer checks whether the
    /// database must be reopened (see `handle`).
    Probe,
}

/// Runs the jobs of a group in one transaction, in order: each batch row
/// only if it is newer than the stored one, each purge as asked, with the
/// deletion horizon it promises; then the repacking its changes earned.
/// Commits with an fsync; returns the tombstones each job purged (0 for a
/// batch).
fn write_group(
    db: &Database,
    group: &[WriteJob],
    repacker: &mut Repacker,
    pace: &Pace,
) -> Result<Vec<usize>, StoreError> {
    let mut purged = Vec::with_capacity(group.len());
    let mut emptied = 0;
    let mut inserts = Inserts::default();
    let txn = begin_durable_write(db)?;
    {
        let mut states = txn.open_table(STATES).map_err(redb_error)?;
        let mut index = txn.open_table(TOMBSTONES).map_err(redb_error)?;
        let mut value = Vec::with_capacity(64);
        for job in group {
            match &job.work {
                Work::Batch { rows, .. } => {
                    for row in newest_per_key(rows) {
                        pace.give_way();
                        encode_row(&row.state, row.deleted, &mut value);
                        let bytes = RowBytes {
                            version: row.state.version,
                            deleted: row.deleted,
                            bytes: &value,
                        };
                        let user = row.user_id.get();
                        let upserted = tombstones::upsert(
                            &mut states,
                            &mut index,
                            user,
                            row.state.channel_id,
                            &bytes,
                        )?;
                        match upserted {
                            Upserted::New => {
                                inserts.push((user, row.state.channel_id.get()), &value)
                            }
                            Upserted::Emptied => emptied += 1,
                            Upserted::Stale | Upserted::Written => {}
                        }
                    }
                    // Before the next batch, which may write the same keys.
                    inserts.insert_into(&mut states, pace)?;
                    purged.push(0);
                }
                Work::Purge {
                    below,
                    max,
                    horizon,
                    ..
                } => {
                    let removed = tombstones::purge(&mut states, &mut index, *below, *max)?;
                    emptied += removed;
                    purged.push(removed);
                    let mut meta = txn.open_table(META).map_err(redb_error)?;
                    let raised = tombstones::raise_horizon(&mut meta, *below)?;
                    // Raised in memory before the commit makes the removals
                    // visible: a load that sees them, then reads the
                    // horizon, must read this one. Should the commit fail,
                    // nothing was removed, and the higher horizon is still
                    // a true promise.
                    horizon.fetch_max(raised, Ordering::Relaxed);
                }
                Work::Probe => purged.push(0),
            }
        }
    }
    repacker.earn(emptied);
    repacker.step(&txn, pace)?;
    txn.commit().map_err(redb_error)?;
    Ok(purged)
}

/// A group's failure, told to each of its batches with its class (the
/// message once, not wrapped again in "store unavailable").
fn shared_failure(error: &StoreError) -> StoreError {
    let message = match error {
        StoreError::Unavailable(message) | StoreError::Permanent(message) => message.clone(),
        other => other.to_string(),
    };
    match error.class() {
        ErrorClass::Retryable => StoreError::Unavailable(message),
        ErrorClass::Permanent => StoreError::Permanent(message),
    }
}

pub(super) fn writer_stopped() -> StoreError {
    StoreError::Worker("the store writer thread has stopped".to_owned())
}

/// Starts the writer thread; it ends when the last store handle is dropped.
pub(super) fn spawn_writer(
    mut repacker: Repacker,
) -> Result<std::sync::mpsc::SyncSender<WriteJob>, StoreError> {
    let (sender, jobs) = std::sync::mpsc::sync_channel::<WriteJob>(WRITER_QUEUE);
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            run_behind_requests("store-writer");
            let pace = Pace::new();
            let mut group = Vec::with_capacity(MAX_GROUP);
            while let Ok(first) = jobs.recv() {
                group.push(first);
                while group.len() < MAX_GROUP {
                    let Ok(next) = jobs.try_recv() else { break };
                    group.push(next);
                }
                // After a failed operation the handle checks the database
                // first, and reopens it if an I/O error latched it.
                let handle = Arc::clone(&group[0].handle);
                // Loads read the new commit before its batches are
                // answered (see `snapshot`).
                let result = handle.recover().and_then(|()| {
                    handle.with(|db| {
                        let purged = write_group(db, &group, &mut repacker, &pace)?;
                        handle.refresh_snapshot(db);
                        Ok(purged)
                    })
                });
                drop(handle);
                for (position, WriteJob { handle, work }) in group.drain(..).enumerate() {
                    // The handle goes before the answer: a caller that drops
                    // its store on hearing it may reopen the file at once.
                    drop(handle);
                    let purged = result
                        .as_ref()
                        .map(|purged| purged.get(position).copied().unwrap_or(0))
                        .map_err(shared_failure);
                    match work {
                        Work::Batch { rows, done } => {
                            drop(rows);
                            let _ = done.send(purged.map(|_| ()));
                        }
                        Work::Purge { done, .. } => {
                            let _ = done.send(purged);
                        }
                        Work::Probe => {}
                    }
                }
            }
        })
        .map_err(|error| StoreError::Worker(format!("cannot start the store writer: {error}")))?;
    Ok(sender)
}
