//! The default store: an embedded LSM database (fjall) under `data_dir`.
//!
//! Keys are `user_id ++ channel_id`, both big-endian, so one user's rows are
//! one contiguous prefix: a cache miss is one prefix scan. Values use the
//! shared row layout. Deletes are written as tombstone rows carrying their
//! version, so a stale flush that lands after a delete cannot resurrect the
//! row. fjall hands every write to the OS before returning, so a killed
//! process loses nothing that was written; `sync` adds an fsync for power
//! loss at shutdown.
//!
//! fjall's calls block on disk I/O, so no async worker makes them. User
//! loads run on a small fixed pool of reader threads, urgent loads first
//! (see `readers`). Batch writes run on one dedicated writer thread at a
//! lowered scheduling priority (nice [`WRITER_NICE`]), and so do fjall's own
//! flush and compaction workers: write-behind and compaction are background
//! work, and when they compete for the CPU with requests, the requests
//! should win, not wait out a background thread's time slice. A single
//! writer thread also serializes the read-compare-write of versioned rows;
//! the mutex covers the version floor, written from the blocking pool.

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;
use tokio::sync::oneshot;

mod readers;

use super::row::{Row, decode_row, encode_row};
use super::{LoadPriority, RowWrite, Store, StoreError, StoreFuture, UserRows, newest_per_key};
use crate::ids::{ChannelId, UserId};
use readers::Readers;

const STATES_KEYSPACE: &str = "read_states";
const META_KEYSPACE: &str = "meta";
const VERSION_FLOOR_KEY: &[u8] = b"version_floor";

/// The writer thread's nice value: it gets roughly a tenth of a contended
/// CPU against request threads at nice 0, and all of an idle one.
pub const WRITER_NICE: i32 = 10;

/// Reader threads when the configuration does not say: two keep a load
/// from waiting behind one slow scan without letting loads take every core
/// of a small machine.
pub const DEFAULT_READER_THREADS: usize = 2;

/// The name fjall gives its flush and compaction threads.
const FJALL_WORKER_THREAD: &str = "fjall:worker";

/// Batches queued for the writer thread; the flusher bounds how many are in
/// flight, so this only absorbs bursts.
const WRITER_QUEUE: usize = 64;

/// One batch for the writer thread. The job carries the database handle, so
/// the thread holds none between jobs and the database closes as soon as
/// the last store handle is dropped.
struct WriteJob {
    inner: Arc<Inner>,
    rows: Arc<[RowWrite]>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The embedded fjall store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    writer: std::sync::mpsc::SyncSender<WriteJob>,
    readers: Arc<Readers>,
}

struct Inner {
    db: Database,
    states: Keyspace,
    meta: Keyspace,
    /// Serializes the read-compare-write of batches.
    write_lock: Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database under `data_dir`, with the default
    /// number of reader threads.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_readers(data_dir, DEFAULT_READER_THREADS)
    }

    /// Opens (or creates) the database under `data_dir`, loading users on
    /// `reader_threads` threads.
    pub fn open_with_readers(data_dir: &Path, reader_threads: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            StoreError::Unavailable(format!("cannot create {}: {error}", data_dir.display()))
        })?;
        let db = Database::builder(data_dir).open().map_err(fjall_error)?;
        let states = db
            .keyspace(STATES_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(fjall_error)?;
        let meta = db
            .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(fjall_error)?;
        lower_threads_priority(FJALL_WORKER_THREAD, WRITER_NICE);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                states,
                meta,
                write_lock: Mutex::new(()),
            }),
            writer: spawn_writer()?,
            readers: Arc::new(Readers::start(reader_threads)?),
        })
    }

    /// Runs a blocking closure on the blocking pool.
    fn blocking<T, F>(&self, work: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&inner))
                .await
                .map_err(|error| StoreError::Worker(error.to_string()))?
        })
    }
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn load_user(&self, user_id: UserId, priority: LoadPriority) -> StoreFuture<'_, UserRows> {
        let inner = Arc::clone(&self.inner);
        Box::pin(self.readers.run(priority, move || inner.load_user(user_id)))
    }

    fn write_batch(&self, rows: Arc<[RowWrite]>) -> StoreFuture<'_, ()> {
        let (done, result) = oneshot::channel();
        let job = WriteJob {
            inner: Arc::clone(&self.inner),
            rows,
            done,
        };
        let writer = self.writer.clone();
        Box::pin(async move {
            // The queue is bounded and the writer drains it; a full queue
            // waits on the blocking pool, never on an async worker.
            tokio::task::spawn_blocking(move || writer.send(job))
                .await
                .map_err(|error| StoreError::Worker(error.to_string()))?
                .map_err(|_| writer_stopped())?;
            result.await.map_err(|_| writer_stopped())?
        })
    }

    fn load_version_floor(&self) -> StoreFuture<'_, u64> {
        self.blocking(|inner| {
            let Some(bytes) = inner.meta.get(VERSION_FLOOR_KEY).map_err(fjall_error)? else {
                return Ok(0);
            };
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                StoreError::Unavailable("stored version floor is damaged".to_owned())
            })?;
            Ok(u64::from_le_bytes(array))
        })
    }

    fn record_version_floor(&self, floor: u64) -> StoreFuture<'_, ()> {
        self.blocking(move |inner| {
            let _guard = inner.write_lock.lock();
            let current = match inner.meta.get(VERSION_FLOOR_KEY).map_err(fjall_error)? {
                Some(bytes) => bytes
                    .as_ref()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0),
                None => 0,
            };
            if floor > current {
                inner
                    .meta
                    .insert(VERSION_FLOOR_KEY, floor.to_le_bytes())
                    .map_err(fjall_error)?;
            }
            Ok(())
        })
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        self.blocking(|inner| inner.db.persist(PersistMode::SyncAll).map_err(fjall_error))
    }
}

impl Inner {
    fn load_user(&self, user_id: UserId) -> Result<UserRows, StoreError> {
        let mut rows = UserRows::default();
        for guard in self.states.prefix(user_id.get().to_be_bytes()) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let channel_id = channel_of(&key).ok_or_else(|| StoreError::Corrupt {
                user_id: user_id.get(),
                source: super::RowDecodeError::Id,
            })?;
            let row = decode_row(channel_id, &value).map_err(|source| StoreError::Corrupt {
                user_id: user_id.get(),
                source,
            })?;
            rows.version = rows.version.max(row.version());
            if let Row::Live(state) = row {
                rows.states.push(state);
            }
        }
        Ok(rows)
    }

    fn write_batch(&self, rows: &[RowWrite]) -> Result<(), StoreError> {
        let rows = newest_per_key(rows);

        let _guard = self.write_lock.lock();
        let mut batch = self.db.batch();
        let mut value = Vec::with_capacity(64);
        for row in rows {
            let key = key_of(row.user_id, row.state.channel_id);
            if let Some(stored) = self.states.get(key).map_err(fjall_error)? {
                let stored_version = decode_row(row.state.channel_id, &stored)
                    .map(|stored| stored.version())
                    // A damaged row is replaced by the newer write.
                    .unwrap_or(0);
                if stored_version >= row.state.version {
                    continue;
                }
            }
            encode_row(&row.state, row.deleted, &mut value);
            batch.insert(&self.states, key, value.as_slice());
        }
        batch.commit().map_err(fjall_error)
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Worker("the store writer thread has stopped".to_owned())
}

/// Starts the writer thread; it ends when the last store handle is dropped.
fn spawn_writer() -> Result<std::sync::mpsc::SyncSender<WriteJob>, StoreError> {
    let (sender, jobs) = std::sync::mpsc::sync_channel::<WriteJob>(WRITER_QUEUE);
    std::thread::Builder::new()
        .name("store-writer".to_owned())
        .spawn(move || {
            lower_priority(WRITER_NICE);
            for WriteJob { inner, rows, done } in jobs {
                let result = inner.write_batch(&rows);
                drop(inner);
                let _ = done.send(result);
            }
        })
        .map_err(|error| StoreError::Worker(format!("cannot start the store writer: {error}")))?;
    Ok(sender)
}

/// Lowers the calling thread's scheduling priority (Linux nice values are
/// per thread). Failure only costs latency, so it is logged, not fatal.
fn lower_priority(nice: i32) {
    set_thread_nice(0, nice);
}

/// Lowers the scheduling priority of this process's threads named `name`
/// (the threads a library starts for itself, which take no priority
/// setting), by listing `/proc/self/task`.
fn lower_threads_priority(name: &str, nice: i32) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Some(tid) = task.file_name().to_str().and_then(|tid| tid.parse().ok()) {
            set_thread_nice(tid, nice);
        }
    }
}

/// Sets the nice value of thread `tid` (0: the calling thread).
fn set_thread_nice(tid: libc::id_t, nice: i32) {
    // SAFETY: setpriority has no memory-safety preconditions; with
    // PRIO_PROCESS, `who` names one thread (0: the calling one).
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if result != 0 {
        tracing::debug!(tid, nice, "could not lower a store thread's priority");
    }
}

fn key_of(user_id: UserId, channel_id: ChannelId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&user_id.get().to_be_bytes());
    key[8..].copy_from_slice(&channel_id.get().to_be_bytes());
    key
}

fn channel_of(key: &[u8]) -> Option<ChannelId> {
    let raw: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    ChannelId::new(u64::from_be_bytes(raw)).ok()
}

fn fjall_error(error: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("embedded database: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageId;
    use crate::read_state::ReadState;

    fn state(channel: u64, last: u64, version: u64) -> ReadState {
        ReadState {
            last_message_id: MessageId::new(last).unwrap(),
            version,
            ..ReadState::empty(ChannelId::new(channel).unwrap())
        }
    }

    fn write(user: u64, state: ReadState, deleted: bool) -> RowWrite {
        RowWrite {
            user_id: UserId::new(user).unwrap(),
            state,
            deleted,
        }
    }

    #[tokio::test]
    async fn stale_writes_never_overwrite_newer_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let user = UserId::new(7).unwrap();
        store
            .write_batch(Arc::from(vec![write(7, state(1, 50, 10), false)]))
            .await
            .unwrap();
        store
            .write_batch(Arc::from(vec![write(7, state(1, 40, 9), false)]))
            .await
            .unwrap();
        assert_eq!(
            store
                .load_user(user, LoadPriority::Urgent)
                .await
                .unwrap()
                .states,
            vec![state(1, 50, 10)]
        );

        store
            .write_batch(Arc::from(vec![write(7, state(1, 0, 11), true)]))
            .await
            .unwrap();
        store
            .write_batch(Arc::from(vec![write(7, state(1, 60, 10), false)]))
            .await
            .unwrap();
        assert!(
            store
                .load_user(user, LoadPriority::Urgent)
                .await
                .unwrap()
                .states
                .is_empty(),
            "delete wins over older write"
        );

        store
            .write_batch(Arc::from(vec![write(7, state(1, 70, 12), false)]))
            .await
            .unwrap();
        assert_eq!(
            store
                .load_user(user, LoadPriority::Urgent)
                .await
                .unwrap()
                .states,
            vec![state(1, 70, 12)]
        );
    }

    #[tokio::test]
    async fn users_are_separate_prefixes_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let rows = vec![
                write(1, state(5, 1, 1), false),
                write(2, state(3, 2, 1), false),
                write(2, state(4, 3, 1), false),
                write(3, state(1, 4, 1), false),
            ];
            store.write_batch(Arc::from(rows)).await.unwrap();
            store.record_version_floor(99).await.unwrap();
            store.record_version_floor(50).await.unwrap();
            store.sync().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let user2 = store
            .load_user(UserId::new(2).unwrap(), LoadPriority::Urgent)
            .await
            .unwrap()
            .states;
        assert_eq!(user2, vec![state(3, 2, 1), state(4, 3, 1)]);
        assert_eq!(store.load_version_floor().await.unwrap(), 99);
    }

    #[tokio::test]
    async fn the_newest_duplicate_in_a_batch_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rows = vec![
            write(1, state(1, 9, 3), false),
            write(1, state(1, 5, 2), false),
        ];
        store.write_batch(Arc::from(rows)).await.unwrap();
        let loaded = store
            .load_user(UserId::new(1).unwrap(), LoadPriority::Urgent)
            .await
            .unwrap()
            .states;
        assert_eq!(loaded, vec![state(1, 9, 3)]);
    }

    #[test]
    fn fjall_workers_run_at_the_writer_nice_value() {
        let dir = tempfile::tempdir().unwrap();
        let _store = EmbeddedStore::open(dir.path()).unwrap();
        // Other tests open stores too, so this counts the workers already
        // lowered rather than asserting on every one of them.
        let mut lowered = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != FJALL_WORKER_THREAD {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            // The fields after "(comm) " start at the third; nice is the 19th.
            let fields = &stat[stat.rfind(')').unwrap() + 2..];
            let nice: i32 = fields.split(' ').nth(16).unwrap().parse().unwrap();
            lowered += usize::from(nice == WRITER_NICE);
        }
        assert!(lowered > 0, "no fjall worker runs at nice {WRITER_NICE}");
    }
}
