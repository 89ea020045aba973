//! The embedded database's handle, reopened after an I/O error.
//!
//! redb latches its first I/O error: once a write fails (a full disk is the
//! common case), every later operation of that `Database` fails with
//! `PreviousIo`, even after the disk has space again. Its remedy is to
//! close the database and open it again, which replays nothing (a commit
//! either landed whole or not at all) and repairs the file if the failed
//! commit left it unclean. Without that, a store that hit a full disk once
//! refuses every write until the process restarts, and a restart is what
//! loses the dirty states the cache still holds.
//!
//! So every user of the database takes it from this handle per operation,
//! and the writer thread, after a failed operation, probes the database and
//! reopens it when redb says it must: first at once, then with a growing
//! wait between attempts while opening keeps failing. Between the close
//! and a successful open, operations fail as retryable (`Unavailable`), so
//! the flusher keeps its rows and retries, and loads of uncached users get
//! `UNAVAILABLE`, as in any store outage.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{Database, StorageError, TransactionError};

use super::error::redb_error;
use super::paced::PacedFile;
use super::snapshot::{Snapshot, StatesTable};
use crate::store::StoreError;

/// The first wait between failed reopen attempts; it doubles up to
/// [`MAX_REOPEN_WAIT`].
const FIRST_REOPEN_WAIT: Duration = Duration::from_millis(50);
const MAX_REOPEN_WAIT: Duration = Duration::from_secs(5);

/// How long a reopen waits for loads still reading the old database.
/// Loads are short range reads; one that takes longer fails this attempt,
/// and the next one tries again.
const DRAIN_READERS: Duration = Duration::from_secs(5);

/// The open database, or none while it is being reopened.
pub(super) struct DbHandle {
    path: PathBuf,
    cache_bytes: usize,
    /// The table loads read (see `snapshot`). Declared before `current`,
    /// so that it is closed before the database when the handle drops.
    snapshot: Snapshot,
    current: RwLock<Option<Arc<Database>>>,
    /// Set by any operation that failed: the writer thread probes the
    /// database before its next job.
    suspect: AtomicBool,
    /// Set once a probe found the database latched on an I/O error (or
    /// closed by a reopen that has not succeeded yet).
    broken: AtomicBool,
    /// When the next reopen may be tried, and the wait after it fails.
    retry: Mutex<(Instant, Duration)>,
}

impl DbHandle {
    /// Wraps a database already open.
    pub(super) fn of(db: Database, path: PathBuf, cache_bytes: usize) -> Self {
        let snapshot = Snapshot::default();
        snapshot.refresh(&db);
        Self {
            path,
            cache_bytes,
            snapshot,
            current: RwLock::new(Some(Arc::new(db))),
            suspect: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            retry: Mutex::new((Instant::now(), FIRST_REOPEN_WAIT)),
        }
    }

    /// Returns the database, or `Unavailable` while it is being reopened.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current.read().clone().ok_or_else(|| {
            StoreError::Unavailable(
                "embedded database: closed after an I/O error, reopening".to_owned(),
            )
        })
    }

    /// Runs `work` on the database; a failure marks the database suspect,
    /// so that the writer probes it.
    pub(super) fn with<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.get()?;
        let result = work(&db);
        if result.is_err() {
            self.suspect.store(true, Ordering::Release);
        }
        result
    }

    /// Runs `work` on the states table as of the last commit the writer
    /// thread answered (see `snapshot`); a failure marks the database
    /// suspect, as `with` does.
    pub(super) fn with_states<T>(
        &self,
        work: impl FnOnce(&StatesTable) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|db| {
            let table = self.snapshot.table(db)?;
            work(&table)
        })
    }

    /// Makes the last commit of `db` the one loads read: the writer thread
    /// calls it after each commit, before it answers the commit's batches.
    pub(super) fn refresh_snapshot(&self, db: &Database) {
        self.snapshot.refresh(db);
    }

    /// Whether loads read a shared snapshot now.
    #[cfg(test)]
    pub(super) fn has_snapshot(&self) -> bool {
        self.snapshot.is_open()
    }

    /// Returns whether an operation failed since the last probe.
    pub(super) fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Acquire)
    }

    /// Called by the writer thread (the only writer) before each job: if an
    /// operation failed, asks redb whether the database is latched on an
    /// I/O error, and reopens it if so and the wait since the last failed
    /// attempt is over. Returns the error to fail the job with while the
    /// database cannot be used.
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        if self.suspect.swap(false, Ordering::AcqRel) && self.is_latched() {
            tracing::warn!(
                path = %self.path.display(),
                "embedded database failed an I/O operation; closing and reopening it"
            );
            self.broken.store(true, Ordering::Release);
        }
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let retry = self.retry.lock();
            if Instant::now() < retry.0 {
                return Err(StoreError::Unavailable(format!(
                    "embedded database: closed after an I/O error; the next reopen is in {} ms",
                    retry
                        .0
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                )));
            }
        }
        match self.reopen() {
            Ok(()) => {
                self.broken.store(false, Ordering::Release);
                *self.retry.lock() = (Instant::now(), FIRST_REOPEN_WAIT);
                tracing::info!(path = %self.path.display(), "embedded database reopened");
                Ok(())
            }
            Err(error) => {
                let mut retry = self.retry.lock();
                let wait = retry.1;
                *retry = (Instant::now() + wait, (wait * 2).min(MAX_REOPEN_WAIT));
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "reopening the embedded database failed");
                Err(error)
            }
        }
    }

    /// Whether redb refuses a write transaction because of an earlier I/O
    /// error (or the database is already closed for a reopen).
    fn is_latched(&self) -> bool {
        let Ok(db) = self.get() else {
            return true;
        };
        match db.begin_write() {
            Ok(txn) => {
                // Nothing was written: aborting only returns the lock.
                let _ = txn.abort();
                false
            }
            Err(TransactionError::Storage(StorageError::PreviousIo | StorageError::Io(_))) => true,
            Err(_) => false,
        }
    }

    /// Closes the database once no load reads it, and opens it again.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.current.write().take();
        // Loads reading it hold the database too: the wait below covers
        // them.
        self.snapshot.clear();
        if let Some(old) = old {
            let since = Instant::now();
            // Each load holds its own reference for the length of its read.
            while Arc::strong_count(&old) > 1 {
                if since.elapsed() > DRAIN_READERS {
                    *self.current.write() = Some(old);
                    return Err(StoreError::Unavailable(
                        "embedded database: loads still read the database to reopen".to_owned(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let db = open_database(&self.path, self.cache_bytes)?;
        self.snapshot.refresh(&db);
        *self.current.write() = Some(Arc::new(db));
        Ok(())
    }
}

/// Opens (or creates) the database file, repairing it if it was not closed
/// cleanly.
pub(super) fn open_database(
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    // After a crash (or a failed commit), redb walks the whole file to
    // verify it and rebuild its free-space map before it opens; say so, or
    // a large store's start looks like a hang.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| redb_error(redb::DatabaseError::from(error)))?;
    let file = PacedFile::new(file).map_err(redb_error)?;
    Database::builder()
        .set_cache_size(cache_bytes)
        .set_repair_callback(|session| {
            tracing::info!(
                progress_pct = (session.progress() * 100.0).round(),
                "the embedded database was not closed cleanly; checking and repairing it"
            );
        })
        .create_with_backend(file)
        .map_err(redb_error)
}
