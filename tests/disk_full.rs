//! A full disk under the embedded store, for real: the data directory is a
//! small tmpfs that the test fills with a file, then frees. Acknowledged
//! changes are kept through the outage, drain by themselves once space is
//! back (the store reopens the database redb latched on its I/O error), and
//! survive a restart taken during the outage (spilled, then replayed).
//!
//! Mounting needs root (as CI runs); elsewhere each test says it skipped.
//! No test asserts how long anything took; timeouts only guard a hang.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, ack_request, channel, eventually, get, sample, test_config};
use readstates::api::proto::{BulkAckRequest, ChannelAck};
use readstates::config::Config;
use readstates::server::{self, STORE_HEALTH};
use readstates::store::{EmbeddedStore, Store};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const GUARD: Duration = Duration::from_secs(60);
const USERS: u64 = 60;
const CHANNELS: u64 = 5;
/// The ballast of the second round (see `server_refused_by_a_full_disk`):
/// 20,000 states, about 1.5 MB of rows.
const BALLAST_USERS: std::ops::RangeInclusive<u64> = 1_001..=1_020;
const BALLAST_CHANNELS: u64 = 1_000;

/// A tmpfs of a few MiB, mounted for one test and unmounted after it.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, or returns `None` (and says so) where mounting is not
    /// allowed.
    fn mount(test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !mounted {
            eprintln!("{test}: skipped, mounting a tmpfs needs root");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a file until the filesystem has no space left.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last partial pages too.
        while file.write_all(&chunk[..512]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config(data_dir: &Path) -> Config {
    let mut config = test_config(data_dir);
    config.flush.delay_ms = 100;
    config.flush.tick_ms = 10;
    config.flush.retry_initial_ms = 20;
    config.flush.retry_max_ms = 200;
    config.server.drain_timeout_ms = 500;
    config.server.shutdown_timeout_ms = 1_500;
    config
}

/// Starts a server on the disk. A restart in the same process may find the
/// database still held for a moment: the stopped store's writer thread
/// finishes the batches queued before the shutdown gave them up (a process
/// that exits lets go at once).
async fn start(config: &Config) -> TestServer {
    let mut tries = 0;
    let store = loop {
        match server::open_store(config).await {
            Ok(store) => break store,
            Err(error) if tries < 100 && format!("{error:#}").contains("already open") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("opening the store: {error:#}"),
        }
    };
    TestServer::start(config, store).await
}

/// Acks every (user, channel) at `message`; each is acknowledged.
async fn ack_all(server: &mut TestServer, message: u64) {
    for user in 1..=USERS {
        for channel in 1..=CHANNELS {
            server
                .client
                .ack(ack_request(user, channel, message))
                .await
                .unwrap();
        }
    }
}

async fn store_health(server: &TestServer) -> ServingStatus {
    let mut health = HealthClient::new(channel(server.running.addr).await);
    let status = health
        .check(HealthCheckRequest {
            service: STORE_HEALTH.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

fn write_failing(server: &TestServer) -> f64 {
    let text = server.running.metrics.render();
    sample(&text, "readstates_store_write_failing").unwrap()
}

/// Checks every state straight from the database file, with no server.
async fn assert_stored(data_dir: &Path, message: u64) {
    let store = EmbeddedStore::open(data_dir).unwrap();
    for user in 1..=USERS {
        let stored = common::stored(&store as &dyn Store, user).await;
        assert_eq!(stored.len() as u64, CHANNELS, "user {user}");
        for state in stored {
            assert_eq!(state.last_message_id.get(), message, "user {user}");
        }
    }
}

/// Acks channels 1..=channels of `user`, one of the ballast users, in one
/// call.
async fn ballast(server: &mut TestServer, user: u64, channels: u64) {
    let acks = (1..=channels)
        .map(|channel_id| ChannelAck {
            channel_id,
            message_id: 20,
        })
        .collect();
    server
        .client
        .bulk_ack(BulkAckRequest {
            user_id: user,
            acks,
        })
        .await
        .unwrap();
}

/// Starts a server on the disk and writes a first round to the store (and
/// one state of each ballast user, so that they are cached when the disk is
/// full: a user that must be loaded then gets `UNAVAILABLE`).
async fn server_with_a_first_round(config: &Config) -> TestServer {
    let mut server = start(config).await;
    ack_all(&mut server, 10).await;
    for user in BALLAST_USERS {
        ballast(&mut server, user, 1).await;
    }
    let cache = Arc::clone(&server.running.cache);
    assert!(eventually(GUARD, async || cache.dirty_states() == 0).await);
    assert_eq!(store_health(&server).await, ServingStatus::Serving);
    server
}

/// A server that wrote a first round, then acknowledged a second one after
/// the disk filled: the store refuses it.
///
/// The second round comes with ballast, states of other users that need
/// more pages than the file holds free: a small commit may fit in pages
/// the file freed earlier (already backed by the filesystem), and land.
async fn server_refused_by_a_full_disk(disk: &SmallDisk, config: &Config) -> TestServer {
    let mut server = server_with_a_first_round(config).await;
    disk.fill();
    ack_all(&mut server, 20).await;
    for user in BALLAST_USERS {
        ballast(&mut server, user, BALLAST_CHANNELS).await;
    }
    assert!(eventually(GUARD, async || write_failing(&server) == 1.0).await);
    server
}

#[tokio::test]
async fn a_full_disk_keeps_every_change_and_drains_once_space_frees() {
    let Some(disk) = SmallDisk::mount("a_full_disk_keeps_every_change") else {
        return;
    };
    let config = config(disk.path());
    let mut server = server_refused_by_a_full_disk(&disk, &config).await;

    // The writes fail, and health and metrics say so; reads still work.
    assert!(
        eventually(GUARD, async || store_health(&server).await
            == ServingStatus::NotServing)
        .await
    );
    assert_eq!(write_failing(&server), 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.running.cache.dirty_states() > 0, "kept, not dropped");
    assert_eq!(get(&mut server.client, 7, 3).await.last_message_id, 20);

    // Space comes back: the backlog drains with no restart.
    disk.free();
    let cache = Arc::clone(&server.running.cache);
    assert!(
        eventually(GUARD, async || cache.dirty_states() == 0).await,
        "{} dirty states never drained",
        cache.dirty_states()
    );
    assert!(
        eventually(GUARD, async || store_health(&server).await
            == ServingStatus::Serving)
        .await
    );
    assert_eq!(write_failing(&server), 0.0);
    server.shutdown().await;
    assert_stored(disk.path(), 20).await;
}

#[tokio::test]
async fn a_restart_during_a_full_disk_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount("a_restart_during_a_full_disk") else {
        return;
    };
    // The spill on another filesystem: the shutdown ends at its deadline.
    let spill = tempfile::tempdir().unwrap();
    let mut config = config(disk.path());
    config.store.spill_dir = Some(spill.path().to_owned());
    let server = server_refused_by_a_full_disk(&disk, &config).await;

    let TestServer { running, client } = server;
    drop(client);
    tokio::time::timeout(GUARD, running.shutdown())
        .await
        .expect("the shutdown hung")
        .expect("the unwritten states were spilled");
    assert_eq!(common::spill_files(spill.path()), 1);

    // The restart comes once the disk has space again: it writes the spill
    // before serving.
    disk.free();
    let mut server = start(&config).await;
    assert_eq!(common::spill_files(spill.path()), 0);
    for user in [1, USERS / 2, USERS] {
        assert_eq!(
            get(&mut server.client, user, CHANNELS)
                .await
                .last_message_id,
            20
        );
    }
    server.shutdown().await;
    assert_stored(disk.path(), 20).await;
}

#[tokio::test]
async fn a_shutdown_with_nowhere_to_keep_changes_waits_until_space_frees() {
    let Some(disk) = SmallDisk::mount("a_shutdown_with_nowhere_to_keep_changes") else {
        return;
    };
    // The spill beside the database (the default): the full disk refuses
    // it too, so the shutdown waits.
    let config = config(disk.path());
    let server = server_refused_by_a_full_disk(&disk, &config).await;

    let TestServer { running, client } = server;
    drop(client);
    let shutdown = tokio::spawn(running.shutdown());
    // Well past the shutdown deadline, it still holds the changes.
    tokio::time::sleep(Duration::from_millis(
        config.server.shutdown_timeout_ms + 2_000,
    ))
    .await;
    assert!(
        !shutdown.is_finished(),
        "it exited with the changes unwritten"
    );

    disk.free();
    tokio::time::timeout(GUARD, shutdown)
        .await
        .expect("the shutdown did not end once space was back")
        .unwrap()
        .expect("the changes were written or spilled");
    let mut server = start(&config).await;
    assert_eq!(get(&mut server.client, USERS, 1).await.last_message_id, 20);
    server.shutdown().await;
    assert_stored(disk.path(), 20).await;
}

/// The binary as operators run it, with its data and spill on the full
/// disk: SIGTERM does not make it exit with the changes unwritten; a second
/// SIGTERM does, with exit status 1.
#[tokio::test]
async fn only_a_second_sigterm_gives_unwritten_changes_up() {
    let Some(disk) = SmallDisk::mount("only_a_second_sigterm_gives_unwritten_changes_up") else {
        return;
    };
    let config = disk.path().join("readstates.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_addr = \"127.0.0.1:0\"\ndrain_timeout_ms = 500\nshutdown_timeout_ms = 1000\n\
             [metrics]\nlisten_addr = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = \"{}\"\n\
             [flush]\ndelay_ms = 100\ntick_ms = 10\nretry_initial_ms = 20\nretry_max_ms = 200\n",
            disk.path().join("data").display()
        ),
    )
    .unwrap();
    let mut process =
        common::binary::spawn(Path::new(env!("CARGO_BIN_EXE_readstates")), &config, GUARD);
    let mut client = common::connect(process.addr).await;
    client.ack(ack_request(1, 1, 10)).await.unwrap();
    disk.fill();
    for channel in 1..=CHANNELS {
        client.ack(ack_request(2, channel, 20)).await.unwrap();
    }
    let metrics_addr = process.metrics_addr;
    assert!(
        eventually(GUARD, async || {
            let (_, text) = common::http_get(metrics_addr, "/metrics").await;
            sample(&text, "readstates_store_write_failing") == Some(1.0)
        })
        .await
    );
    drop(client);

    let pid = nix::unistd::Pid::from_raw(process.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "it exited with the changes neither written nor spilled"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = process.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = process.child.kill();
    let status = status.expect("the second SIGTERM did not end it");
    assert_eq!(status.code(), Some(1), "{status:?}");
}
