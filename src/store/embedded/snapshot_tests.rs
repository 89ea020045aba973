//! Loads read the snapshot the writer thread opens after each commit (see
//! `snapshot`): a load never waits for a commit that is growing the file,
//! and a load that starts after a batch is answered reads the batch.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use redb::StorageBackend;

use super::paced::PacedFile;
use super::tests::{load, state, write};
use super::*;

/// Where the gate's next `set_len` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum GateState {
    /// Lets it through.
    #[default]
    Open,
    /// Will hold it.
    Armed,
    /// Holds it: redb is growing the file, with its own lock held.
    Holding,
    /// Has let it go.
    Released,
}

/// Holds the first `set_len` after `arm` until `release`.
#[derive(Debug, Default)]
struct SetLenGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl SetLenGate {
    fn arm(&self) {
        *self.state.lock() = GateState::Armed;
    }

    /// Waits until a `set_len` is held (a minute at most).
    fn wait_holding(&self) {
        let mut state = self.state.lock();
        while *state != GateState::Holding {
            let timed_out = self
                .changed
                .wait_for(&mut state, Duration::from_secs(60))
                .timed_out();
            assert!(!timed_out, "the commit never grew the file");
        }
    }

    fn release(&self) {
        *self.state.lock() = GateState::Released;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut state = self.state.lock();
        if *state != GateState::Armed {
            return;
        }
        *state = GateState::Holding;
        self.changed.notify_all();
        while *state == GateState::Holding {
            self.changed.wait(&mut state);
        }
    }
}

/// The store's file backend, with a gate on growing the file.
#[derive(Debug)]
struct GatedFile {
    inner: PacedFile,
    gate: Arc<SetLenGate>,
}

impl StorageBackend for GatedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.gate.pass();
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    // The file-lock methods keep redb's defaults (unsupported): this test
    // opens the file from one process, and redb needs no lock for that.
}

/// The store under `dir`, its file behind `gate`.
fn open_gated(dir: &Path, gate: &Arc<SetLenGate>) -> EmbeddedStore {
    let options = EmbeddedOptions::new(dir);
    let path = dir.join(DATABASE_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let backend = GatedFile {
        inner: PacedFile::new(file).unwrap(),
        gate: Arc::clone(gate),
    };
    let db = Database::builder().create_with_backend(backend).unwrap();
    EmbeddedStore::start(&options, db, path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_does_not_wait_for_a_commit_that_grows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SetLenGate::default());
    let store = open_gated(dir.path(), &gate);
    store
        .write_batch(Arc::from(vec![write(1, state(1, 10, 1), false)]))
        .await
        .unwrap();
    assert!(store.handle.has_snapshot());

    // A batch too large for the file: its commit grows it, and the gate
    // holds the writer there, inside redb, with redb's lock held.
    gate.arm();
    let rows: Vec<RowWrite> = (0..20_000)
        .map(|user| write(100 + user, state(1, 10, 2), false))
        .collect();
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { store.write_batch(Arc::from(rows)).await })
    };
    let holding = Arc::clone(&gate);
    tokio::task::spawn_blocking(move || holding.wait_holding())
        .await
        .unwrap();

    // The bound only turns a load stuck behind the writer into a failure
    // instead of a hang; the load needs no time from the writer.
    let loaded = tokio::time::timeout(
        Duration::from_secs(30),
        store.load_user(UserId::new(1).unwrap(), LoadPriority::Urgent),
    )
    .await;
    gate.release();
    let loaded = loaded
        .expect("the load waited for the commit that grows the file")
        .unwrap();
    assert_eq!(loaded.states, vec![state(1, 10, 1)]);

    // Once the batch is answered, loads read it.
    writing.await.unwrap().unwrap();
    let last = load(&store, UserId::new(100 + 19_999).unwrap()).await;
    assert_eq!(last.states, vec![state(1, 10, 2)]);
}

#[tokio::test]
async fn a_load_after_each_answered_batch_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let user = UserId::new(7).unwrap();
    for version in 1..=20 {
        store
            .write_batch(Arc::from(vec![write(7, state(3, version, version), false)]))
            .await
            .unwrap();
        let loaded = load(&store, user).await;
        assert_eq!(loaded.states, vec![state(3, version, version)]);
    }
    // A delete is read as soon as it is answered too.
    store
        .write_batch(Arc::from(vec![write(7, state(3, 20, 21), true)]))
        .await
        .unwrap();
    let loaded = load(&store, user).await;
    assert!(loaded.states.is_empty());
    assert_eq!(loaded.version, 21);
}
