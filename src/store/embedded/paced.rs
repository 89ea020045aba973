//! The database file as redb sees it: redb's own file backend, with the
//! writer giving way to request threads between the pieces of a commit.
//!
//! The writer thread runs at a low priority (see `priority`), but the kernel
//! (EEVDF) still picks it over a request thread that has run ahead of its
//! share of a busy core, and then lets it keep the core until the next
//! scheduler tick: up to 4 ms at 250 Hz, which a request waits out. A
//! scheduler trace of the soak showed exactly that, about ten times a
//! second (BENCHMARKS.md, "Where the tail comes from"). So the writer gives
//! way itself, every [`QUANTUM`] of its CPU time: `sched_yield` hands the
//! core to a runnable request thread, and costs one system call when there
//! is none.
//!
//! Its pieces are the rows of a group (`writer`), the pages redb writes,
//! and the fsync. An fsync makes the kernel start the writeback of every
//! page the commit dirtied in one system call, milliseconds of CPU on a
//! kernel that does not preempt it. So before it, the writeback is started
//! [`SYNC_CHUNK_PAGES`] pages at a time (`sync_file_range`), giving way
//! between chunks, and the fsync is left to wait for the disk and make it
//! durable. What is durable, and when, is unchanged: redb still returns
//! from a commit only after `fdatasync`.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The writer's work between two chances for a request thread to run.
pub(super) const QUANTUM: Duration = Duration::from_micros(200);

/// Pages whose writeback one `sync_file_range` call starts.
pub(super) const SYNC_CHUNK_PAGES: usize = 32;

/// Writes recorded at most before their writeback is started without
/// waiting for the sync (a large transaction, such as an import, writes
/// many pages before it commits).
const MAX_RECORDED: usize = 16 * 1024;

/// Gives way every [`QUANTUM`] of the calling thread's CPU time. Not of
/// wall time: a writer that had waited a quantum for the CPU then gave way
/// at its next piece of work, every time it got the CPU back, and beside
/// threads that kept its core busy it wrote a batch of 200 rows in 11 s.
#[derive(Debug)]
pub(super) struct Pace {
    origin: Instant,
    /// When this pace last read the thread's CPU time, in nanoseconds since
    /// `origin` (read at most once a quantum: it takes a system call).
    looked: AtomicU64,
    /// The thread's CPU time, in nanoseconds, when it last gave way.
    ran: AtomicU64,
    /// Times it gave way.
    pub(super) gave_way: AtomicU64,
}

impl Pace {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            looked: AtomicU64::new(0),
            ran: AtomicU64::new(0),
            gave_way: AtomicU64::new(0),
        }
    }

    /// Yields the CPU if the thread has run a quantum since the last time.
    pub(super) fn give_way(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.looked.load(Ordering::Relaxed)) < QUANTUM.as_nanos() as u64 {
            return;
        }
        self.looked.store(now, Ordering::Relaxed);
        let Some(cpu) = thread_cpu_nanos() else {
            // No CPU clock: give way by wall time, as if it ran throughout.
            std::thread::yield_now();
            self.gave_way.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ran = self.ran.load(Ordering::Relaxed);
        if cpu < ran {
            // Another thread's clock: count from here.
            self.ran.store(cpu, Ordering::Relaxed);
            return;
        }
        if cpu - ran >= QUANTUM.as_nanos() as u64 {
            std::thread::yield_now();
            self.ran.store(cpu, Ordering::Relaxed);
            self.gave_way.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The calling thread's CPU time in nanoseconds.
pub(super) fn thread_cpu_nanos() -> Option<u64> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec the call writes into.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return None;
    }
    let seconds = u64::try_from(time.tv_sec).ok()?;
    let nanos = u64::try_from(time.tv_nsec).ok()?;
    Some(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// redb's file backend, paced as the module says.
#[derive(Debug)]
pub(super) struct PacedFile {
    inner: FileBackend,
    /// The same open file, for `sync_file_range`.
    file: File,
    /// (offset, length) of each write since the last sync.
    written: Mutex<Vec<(u64, u64)>>,
    pace: Pace,
}

impl PacedFile {
    pub(super) fn new(file: File) -> Result<Self, redb::DatabaseError> {
        let own = file.try_clone()?;
        Ok(Self {
            inner: FileBackend::new(file)?,
            file: own,
            written: Mutex::new(Vec::new()),
            pace: Pace::new(),
        })
    }

    /// Writes not yet handed to writeback.
    #[cfg(test)]
    pub(super) fn unsynced_writes(&self) -> usize {
        self.written.lock().len()
    }

    /// Starts the writeback of what was written since the last sync, a
    /// chunk at a time, giving way between chunks.
    fn start_writeback(&self) {
        let mut written = std::mem::take(&mut *self.written.lock());
        for (start, len) in writeback_ranges(&mut written) {
            // Only starts writeback: an error it meets stays recorded for
            // the fdatasync that follows, which is what reports it.
            // SAFETY: sync_file_range reads only its integer arguments; the
            // descriptor is open for as long as `self`.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    start as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.pace.give_way();
        }
        // The buffer's capacity is kept for the next commit.
        written.clear();
        let mut slot = self.written.lock();
        if slot.is_empty() {
            *slot = written;
        }
    }
}

/// Sorts the writes and returns one byte range (start, length) per
/// [`SYNC_CHUNK_PAGES`] of them: together they cover every write. A range
/// may span pages not written since the last sync; their writeback has
/// nothing to do.
pub(super) fn writeback_ranges(written: &mut [(u64, u64)]) -> impl Iterator<Item = (u64, u64)> {
    written.sort_unstable();
    written.chunks(SYNC_CHUNK_PAGES).map(|chunk| {
        let start = chunk.first().map_or(0, |&(offset, _)| offset);
        let end = chunk
            .iter()
            .map(|&(offset, len)| offset.saturating_add(len))
            .max()
            .unwrap_or(start);
        (start, end - start)
    })
}

impl StorageBackend for PacedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.start_writeback();
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)?;
        let recorded = {
            let mut written = self.written.lock();
            written.push((offset, data.len() as u64));
            written.len()
        };
        if recorded >= MAX_RECORDED {
            self.start_writeback();
        }
        self.pace.give_way();
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
