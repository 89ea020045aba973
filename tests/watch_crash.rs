//! A copy that saw changes a crash then lost converges (ARCHITECTURE.md
//! §1.3): the server binary is killed with SIGKILL before it writes what a
//! subscriber already received, and the restarted service answers a reset
//! to a resume from such a version, on a delta and on a change stream, even
//! once the user has changed again; a resume from a version it does hold
//! stays a plain delta.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::{Client, binary, connect};
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{
    AckRequest, GetUserReadStatesRequest, GetUserReadStatesResponse, WatchRequest,
    WatchSubscription,
};
use tokio_stream::wrappers::ReceiverStream;

/// The server binary on `dir`, with this flush delay.
fn spawn(dir: &Path, flush_delay_ms: u64) -> (Child, SocketAddr) {
    let config = dir.join("readstates.toml");
    let text = format!(
        "[server]\nlisten_addr = \"127.0.0.1:0\"\n\
         [metrics]\nlisten_addr = \"127.0.0.1:0\"\n\
         [store]\ndata_dir = \"{}\"\n\
         [flush]\ndelay_ms = {flush_delay_ms}\ntick_ms = 50\n",
        dir.join("data").display()
    );
    std::fs::write(&config, text).unwrap();
    let spawned = binary::spawn(
        Path::new(env!("CARGO_BIN_EXE_readstates")),
        &config,
        Duration::from_secs(30),
    );
    (spawned.child, spawned.addr)
}

/// Stops `child` with `signal` and waits for it to exit.
async fn stop(mut child: Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the server did not exit within 30 s");
}

async fn ack(client: &mut Client, user: u64, channel: u64, message: u64) -> u64 {
    client
        .ack(AckRequest {
            user_id: user,
            channel_id: channel,
            message_id: message,
            ..AckRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .read_state
        .unwrap()
        .version
}

async fn delta(client: &mut Client, user: u64, since: u64) -> GetUserReadStatesResponse {
    client
        .get_user_read_states(GetUserReadStatesRequest {
            user_id: user,
            since_version: Some(since),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Subscribes `user` from `since` on a new stream and returns its
/// catch-up.
async fn catch_up(client: &mut Client, user: u64, since: u64) -> GetUserReadStatesResponse {
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    requests
        .send(WatchRequest {
            subscribe: vec![WatchSubscription {
                user_id: user,
                since_version: since,
            }],
            unsubscribe: Vec::new(),
        })
        .await
        .unwrap();
    let mut events = client
        .watch_read_states(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let message = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("a catch-up within 10 s")
        .unwrap()
        .expect("the stream is open");
    match message
        .events
        .into_iter()
        .next()
        .and_then(|event| event.event)
    {
        Some(Event::CatchUp(catch_up)) => catch_up,
        other => panic!("expected a catch-up, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_saw_changes_a_crash_lost_is_reset_and_a_held_version_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // Users 1, 2 and 3 each get a first state, written for certain by a
    // graceful stop.
    let (child, addr) = spawn(dir.path(), 100);
    let mut client = connect(addr).await;
    let mut written = [0; 4];
    for user in 1..=3 {
        written[user as usize] = ack(&mut client, user, 10, 5).await;
    }
    stop(child, nix::sys::signal::Signal::SIGTERM).await;

    // With a minute's flush delay, users 1 and 2 change again and a copy
    // sees it; the crash loses those changes.
    let (child, addr) = spawn(dir.path(), 60_000);
    let mut client = connect(addr).await;
    let lost_1 = ack(&mut client, 1, 20, 5).await;
    let lost_2 = ack(&mut client, 2, 20, 5).await;
    assert_eq!(delta(&mut client, 1, written[1]).await.version, lost_1);
    stop(child, nix::sys::signal::Signal::SIGKILL).await;

    let (child, addr) = spawn(dir.path(), 60_000);
    let mut client = connect(addr).await;

    // User 1: the copy is ahead of the service.
    let answer = delta(&mut client, 1, lost_1).await;
    assert!(answer.reset, "{answer:?}");
    assert_eq!(
        answer.read_states.len(),
        1,
        "only the written state is left"
    );
    assert_eq!(answer.read_states[0].channel_id, 10);

    // User 2 changes again first: its version passes the lost one, and only
    // the versions it holds tell that the copy's is not one of them.
    let after = ack(&mut client, 2, 30, 5).await;
    assert!(after > lost_2);
    let answer = catch_up(&mut client, 2, lost_2).await;
    assert!(answer.reset, "{answer:?}");
    let mut channels: Vec<u64> = answer.read_states.iter().map(|s| s.channel_id).collect();
    channels.sort_unstable();
    assert_eq!(channels, [10, 30], "the lost state 20 is not there");
    assert_eq!(answer.version, after);

    // User 3: a version the service holds resumes as a plain, empty delta.
    let answer = delta(&mut client, 3, written[3]).await;
    assert!(!answer.reset, "{answer:?}");
    assert!(answer.read_states.is_empty() && answer.deleted.is_empty());
    let answer = catch_up(&mut client, 3, written[3]).await;
    assert!(!answer.reset, "{answer:?}");
    stop(child, nix::sys::signal::Signal::SIGTERM).await;
}
