//! Tests of what is the embedded store's own: a commit durable without a
//! sync, the import of the earlier LSM store, the writer thread's
//! priority. The contract every store keeps (versions, deletes, the
//! version floor, reopening) is checked in `tests/store_contract.rs`.

use super::*;
use crate::ids::MessageId;
use crate::read_state::ReadState;
use crate::store::row::encode_row;

pub(super) fn state(channel: u64, last: u64, version: u64) -> ReadState {
    ReadState {
        last_message_id: MessageId::new(last).unwrap(),
        version,
        ..ReadState::empty(ChannelId::new(channel).unwrap())
    }
}

pub(super) fn write(user: u64, state: ReadState, deleted: bool) -> RowWrite {
    RowWrite {
        user_id: UserId::new(user).unwrap(),
        state,
        deleted,
    }
}

/// Loads a user, as a cache miss would.
pub(super) async fn load(store: &EmbeddedStore, user: UserId) -> UserRows {
    store.load_user(user, LoadPriority::Urgent).await.unwrap()
}

#[tokio::test]
async fn a_committed_batch_is_on_disk_without_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .write_batch(Arc::from(vec![write(4, state(2, 8, 5), false)]))
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let loaded = load(&store, UserId::new(4).unwrap()).await;
    assert_eq!(loaded.states, vec![state(2, 8, 5)]);
    assert_eq!(loaded.version, 5);
}

/// Returns a new data dir holding rows the way the earlier LSM store laid
/// them out.
pub(super) fn lsm_data_dir(rows: &[RowWrite], floor: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = fjall::Database::builder(dir.path()).open().unwrap();
    let states = db
        .keyspace("read_states", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut value = Vec::new();
    for row in rows {
        let mut key = row.user_id.get().to_be_bytes().to_vec();
        key.extend_from_slice(&row.state.channel_id.get().to_be_bytes());
        encode_row(&row.state, row.deleted, &mut value);
        states.insert(key, value.as_slice()).unwrap();
    }
    meta.insert("version_floor", floor.to_le_bytes()).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
    dir
}

#[tokio::test]
async fn an_earlier_lsm_data_dir_is_imported_once() {
    let dir = lsm_data_dir(
        &[
            write(9, state(1, 10, 3), false),
            write(9, state(2, 0, 7), true),
            write(10, state(1, 20, 4), false),
        ],
        1_000,
    );
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let user9 = load(&store, UserId::new(9).unwrap()).await;
    assert_eq!(user9.states, vec![state(1, 10, 3)]);
    assert_eq!(
        user9.deleted,
        [Tombstone {
            channel_id: ChannelId::new(2).unwrap(),
            version: 7
        }],
        "the tombstone is kept"
    );
    assert_eq!(user9.version, 7, "the tombstone's version is kept");
    let user10 = load(&store, UserId::new(10).unwrap()).await;
    assert_eq!(user10.states, vec![state(1, 20, 4)]);
    assert_eq!(store.load_version_floor().await.unwrap(), 1_000);
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [legacy::LEGACY_DIR, DATABASE_FILE],
        "the LSM files moved"
    );
    assert!(
        dir.path()
            .join(legacy::LEGACY_DIR)
            .join("keyspaces")
            .is_dir()
    );

    // A second open does not import again: a write made since stands.
    store
        .write_batch(Arc::from(vec![write(10, state(1, 30, 8), false)]))
        .await
        .unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let user10 = load(&store, UserId::new(10).unwrap()).await;
    assert_eq!(user10.states, vec![state(1, 30, 8)]);
}

#[test]
fn fan_out_readers_run_idle_and_the_writer_and_urgent_readers_in_batch() {
    let dir = tempfile::tempdir().unwrap();
    let _store = EmbeddedStore::open(dir.path()).unwrap();
    // A new thread names itself and sets its policy as it starts, so look
    // again until each kind shows up with its policy set. Other tests start
    // stores too: every store thread seen must have its kind's policy and
    // nice value.
    let expected = |name: &str| {
        if name == "store-writer" {
            (libc::SCHED_BATCH, 10)
        } else if name.starts_with("store-reader-") {
            (libc::SCHED_BATCH, 0)
        } else {
            (libc::SCHED_IDLE, 0)
        }
    };
    let mut seen = Vec::new();
    for _ in 0..400 {
        seen = store_thread_policies();
        let has = |name: &str| seen.iter().any(|(thread, ..)| thread.starts_with(name));
        if has("store-writer")
            && has("store-reader-")
            && has("store-bgload-")
            && seen
                .iter()
                .all(|(name, _, policy, nice)| (*policy, *nice) == expected(name))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!(
        "store threads (name, tid, policy, nice): {seen:?}; SCHED_IDLE is {}, SCHED_BATCH {}",
        libc::SCHED_IDLE,
        libc::SCHED_BATCH
    );
}

/// The name, id, scheduling policy and nice value of each live thread named
/// `store-writer`, `store-reader-N` or `store-bgload-N`.
fn store_thread_policies() -> Vec<(String, libc::pid_t, libc::c_int, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = comm.trim_end();
        if name != "store-writer"
            && !name.starts_with("store-reader-")
            && !name.starts_with("store-bgload-")
        {
            continue;
        }
        let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // The nice value is the 19th field of `stat`, the 17th after the
        // name's closing parenthesis.
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some(nice) = stat
            .rsplit_once(')')
            .and_then(|(_, fields)| fields.split_whitespace().nth(16))
            .and_then(|nice| nice.parse::<i64>().ok())
        else {
            continue; // the thread ended meanwhile
        };
        // SAFETY: sched_getscheduler has no memory-safety preconditions.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy != -1 {
            threads.push((name.to_owned(), tid, policy, nice)); // -1: the thread ended meanwhile
        }
    }
    threads
}
