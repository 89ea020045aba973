//! The states table as of the last commit, opened once per commit and
//! shared by every load, so that a load never begins a read transaction of
//! its own.
//!
//! Why: redb's `begin_read` takes the lock that a growing file holds across
//! an fdatasync. When a write transaction needs more room, redb extends the
//! file and syncs it before it lets go of that lock, and the sync waits for
//! the disk. On a busy disk that took tens to hundreds of milliseconds in
//! the soak; every load begun meanwhile waited for it, and so did each call
//! of a user not in memory, while the calls of cached users went on (the
//! p50 stayed where it was). A load that reads an open table takes none of
//! the locks a commit holds across I/O: its pages come from redb's cache
//! (whose locks are held only to look a page up) or the file.
//!
//! Freshness: the writer thread makes every commit of the running store,
//! and opens the new snapshot right after each commit, before it answers
//! the batches in it (`writer`). So a load that starts after a batch is
//! answered reads that batch, which is what lets the cache forget an
//! evicted user once its write is answered (ARCHITECTURE.md §2.2). A load
//! that started earlier may read the table as of the commit before, as a
//! read transaction begun at that moment would. Commits made elsewhere (the
//! version floor's, on the blocking pool) write only `meta`, which loads do
//! not read.
//!
//! An open snapshot keeps the pages of its commit: redb reuses the pages a
//! later commit frees only once no reader holds an older one. Since the
//! writer replaces it at every commit, that is one commit's worth.

use std::sync::Arc;

use parking_lot::RwLock;
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::STATES;
use super::error::redb_error;
use crate::store::StoreError;

/// The states table, read-only, as of one commit.
pub(super) type StatesTable = ReadOnlyTable<(u64, u64), &'static [u8]>;

/// The latest snapshot, or none (before the first, or after a failure to
/// open one): loads then open the table themselves.
#[derive(Default)]
pub(super) struct Snapshot {
    current: RwLock<Option<Arc<StatesTable>>>,
}

impl Snapshot {
    /// Opens the table as of the last commit of `db` and makes it the one
    /// loads read. Should that fail, loads open the table themselves until
    /// the next refresh succeeds.
    pub(super) fn refresh(&self, db: &Database) {
        let opened = open(db).map(Arc::new);
        if let Err(error) = &opened {
            tracing::debug!(%error, "could not open the states table for loads");
        }
        let old = std::mem::replace(&mut *self.current.write(), opened.ok());
        // The old snapshot (unless a load still reads it) is closed here,
        // outside the lock.
        drop(old);
    }

    /// Forgets the snapshot (before `db` is closed: an open table keeps
    /// the file in use).
    pub(super) fn clear(&self) {
        let old = self.current.write().take();
        drop(old);
    }

    /// The table to load from: the snapshot, or else one opened now.
    pub(super) fn table(&self, db: &Database) -> Result<Arc<StatesTable>, StoreError> {
        if let Some(table) = self.current.read().as_ref() {
            return Ok(Arc::clone(table));
        }
        open(db).map(Arc::new)
    }

    /// Whether loads read a shared snapshot now.
    #[cfg(test)]
    pub(super) fn is_open(&self) -> bool {
        self.current.read().is_some()
    }
}

fn open(db: &Database) -> Result<StatesTable, StoreError> {
    let txn = db.begin_read().map_err(redb_error)?;
    txn.open_table(STATES).map_err(redb_error)
}
