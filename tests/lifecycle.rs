//! The server binary as operators run it: a graceful stop (SIGTERM) loses
//! nothing, and a crash (SIGKILL) loses at most the last flush delay.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::{Client, binary, connect};
use readstates::api::proto::{AckRequest, AddMentionsRequest, GetUserReadStatesRequest};

/// A server process and the addresses it logged.
struct Process {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    config: std::path::PathBuf,
}

impl Process {
    fn start(dir: &Path, flush_delay_ms: u64) -> Self {
        Self::start_with(dir, &config_text(dir, flush_delay_ms, 1_000_000))
    }

    fn start_with(dir: &Path, text: &str) -> Self {
        let config = dir.join("readstates.toml");
        std::fs::write(&config, text).unwrap();
        let binary::Spawned {
            child,
            addr,
            metrics_addr,
        } = binary::spawn(
            Path::new(env!("CARGO_BIN_EXE_readstates")),
            &config,
            Duration::from_secs(30),
        );
        Self {
            child,
            addr,
            metrics_addr,
            config,
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the exit without blocking the runtime, whose client
    /// connections must keep answering the server's shutdown.
    async fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!("the server did not exit within 30 s");
    }
}

fn config_text(dir: &Path, flush_delay_ms: u64, capacity: usize) -> String {
    format!(
        "[server]\nlisten_addr = \"127.0.0.1:0\"\n\
         [metrics]\nlisten_addr = \"127.0.0.1:0\"\n\
         [store]\ndata_dir = \"{}\"\n\
         [cache]\ncapacity = {capacity}\n\
         [flush]\ndelay_ms = {flush_delay_ms}\ntick_ms = 50\n",
        dir.join("data").display()
    )
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a mix of updates to users 1..=20, channels 1..=10; returns the
/// expected (user, channel, last_message_id, mention_count).
async fn send_updates(client: &mut Client) -> Vec<(u64, u64, u64, u32)> {
    let mut expected = Vec::new();
    for user in 1..=20u64 {
        for channel in 1..=10u64 {
            let message = user * 1_000 + channel;
            client
                .ack(AckRequest {
                    user_id: user,
                    channel_id: channel,
                    message_id: message,
                    manual: false,
                    mention_count: None,
                })
                .await
                .unwrap();
            expected.push((user, channel, message, 0));
        }
    }
    for channel in 1..=10u64 {
        let users: Vec<u64> = (1..=20).filter(|user| user % 2 == 0).collect();
        client
            .add_mentions(AddMentionsRequest {
                channel_id: channel,
                message_id: 1_000_000 + channel,
                user_ids: users,
                omit_read_states: false,
            })
            .await
            .unwrap();
    }
    for entry in &mut expected {
        if entry.0 % 2 == 0 {
            entry.3 = 1;
        }
    }
    expected
}

async fn assert_all_there(client: &mut Client, expected: &[(u64, u64, u64, u32)]) -> u64 {
    let mut highest_version = 0;
    for user in 1..=20u64 {
        let response = client
            .get_user_read_states(GetUserReadStatesRequest {
                user_id: user,
                since_version: None,
            })
            .await
            .unwrap()
            .into_inner();
        highest_version = highest_version.max(response.version);
        for &(_, channel, message, mentions) in expected.iter().filter(|e| e.0 == user) {
            let state = response
                .read_states
                .iter()
                .find(|state| state.channel_id == channel)
                .unwrap_or_else(|| panic!("user {user} channel {channel} lost"));
            assert_eq!(
                state.last_message_id, message,
                "user {user} channel {channel}"
            );
            assert_eq!(
                state.mention_count, mentions,
                "user {user} channel {channel}"
            );
        }
    }
    highest_version
}

#[tokio::test]
async fn sigterm_flushes_everything_and_a_restart_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    // A long flush delay: only the shutdown flush can have written the updates.
    let server = Process::start(dir.path(), 600_000);
    let mut client = connect(server.addr).await;
    let expected = send_updates(&mut client).await;
    let before = assert_all_there(&mut client, &expected).await;
    drop(client);

    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.wait().await;
    assert!(status.success(), "graceful shutdown exited with {status}");

    let server = Process::start(dir.path(), 600_000);
    let mut client = connect(server.addr).await;
    let after = assert_all_there(&mut client, &expected).await;
    assert_eq!(after, before, "the user's version survives the restart");
    server.signal(nix::sys::signal::Signal::SIGINT);
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn after_sigkill_everything_older_than_the_flush_delay_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let flush_delay_ms = 500;
    let server = Process::start(dir.path(), flush_delay_ms);
    let mut client = connect(server.addr).await;
    let expected = send_updates(&mut client).await;
    let before = assert_all_there(&mut client, &expected).await;
    drop(client);
    // Let a flush delay (and a margin for the writes) pass, then crash.
    tokio::time::sleep(Duration::from_millis(flush_delay_ms * 4)).await;
    server.signal(nix::sys::signal::Signal::SIGKILL);
    let status = server.wait().await;
    assert!(!status.success());

    let server = Process::start(dir.path(), flush_delay_ms);
    let mut client = connect(server.addr).await;
    assert_all_there(&mut client, &expected).await;
    let state = client
        .ack(AckRequest {
            user_id: 1,
            channel_id: 99,
            message_id: 1,
            manual: false,
            mention_count: None,
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap();
    assert!(
        state.version > before,
        "a version was handed out twice across the crash"
    );
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn sighup_applies_a_new_capacity_and_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), 600_000);
    let mut client = connect(server.addr).await;
    let expected = send_updates(&mut client).await;
    let capacity = async |server: &Process| {
        let (_, text) = common::http_get(server.metrics_addr, "/metrics").await;
        common::sample(&text, "readstates_cache_capacity_read_states")
    };
    assert_eq!(capacity(&server).await, Some(1_000_000.0));

    std::fs::write(&server.config, "[cache]\ncapacity = 0\n").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        capacity(&server).await,
        Some(1_000_000.0),
        "an invalid config was applied"
    );

    std::fs::write(&server.config, config_text(dir.path(), 600_000, 50)).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        common::eventually(Duration::from_secs(10), async || capacity(&server).await
            == Some(50.0))
        .await,
        "the new capacity never showed in the metrics"
    );
    // Shrinking evicted most users; every state still reads back.
    assert_all_there(&mut client, &expected).await;
    drop(client);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait().await.success());

    let server = Process::start(dir.path(), 600_000);
    let mut client = connect(server.addr).await;
    assert_all_there(&mut client, &expected).await;
}

/// The `THP_enabled` line of a process's status: whether transparent huge
/// pages may back its memory (0 once `PR_SET_THP_DISABLE` is set); None
/// where the kernel does not report it.
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(|value| value.trim().to_owned())
}

#[tokio::test]
async fn transparent_huge_pages_are_off_unless_the_config_allows_them() {
    // The flag is inherited: this test's own process must show it unset,
    // or the server's value would prove nothing.
    if thp_enabled("self").as_deref() != Some("1") {
        eprintln!("skipped: this kernel does not report transparent huge pages as enabled");
        return;
    }
    for (allowed, expected) in [(None, "0"), (Some(false), "0"), (Some(true), "1")] {
        let dir = tempfile::tempdir().unwrap();
        let mut text = config_text(dir.path(), 600_000, 1_000);
        if let Some(allowed) = allowed {
            text = text.replace(
                "[cache]\n",
                &format!("[cache]\ntransparent_huge_pages = {allowed}\n"),
            );
        }
        let server = Process::start_with(dir.path(), &text);
        let pid = server.child.id().to_string();
        assert_eq!(
            thp_enabled(&pid).as_deref(),
            Some(expected),
            "cache.transparent_huge_pages = {allowed:?}"
        );
        server.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(server.wait().await.success());
    }
}
