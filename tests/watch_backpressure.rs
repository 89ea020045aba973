//! The bounds of a change stream (ARCHITECTURE.md §1.3): a subscriber that
//! stops reading never slows the writes down nor grows the server's
//! memory, falls behind, and is caught up again once it reads, with
//! nothing lost; a busy stream sends the changes queued within
//! `watch.coalesce_ms` together; and a stream past its limits (users per
//! stream, streams open, a bad user id) ends with the setting or field
//! named.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{DeleteReadStatesRequest, WatchResponse};
use tonic::Code;
use tonic::transport::Channel;

use common::watch::{Follower, WatchStream, open_watch, subscribe, truth, unsubscribe};
use common::{
    Client, InstrumentedStore, TestServer, ack_request, eventually, http_get, sample, test_config,
};

/// Users the slow subscriber follows.
const USERS: u64 = 50;
/// Changes made while it does not read: far more than the stream's buffer
/// and what the connection's flow-control window holds (each write is a
/// change: see `write`).
const WRITES: u64 = 6_000;
/// Clients making them at once.
const WRITERS: u64 = 4;
/// A hang guard on the writes: they take seconds, and would never end if
/// the write path waited for the subscriber.
const WRITE_GUARD: Duration = Duration::from_secs(120);
/// How much the process's resident memory may grow while the subscriber
/// does not read. The server is in this process, with the test's own
/// clients; what matters is that it is bounded, not its exact figure.
const MEMORY_SLACK: f64 = 64.0 * 1024.0 * 1024.0;
/// Changes that may be held for a subscriber that does not read: what the
/// 4 KiB window takes (under a hundred), the stream's send queue (4
/// messages of at most one buffer each) and its buffer (16), with room to
/// spare; far fewer than `WRITES`.
const HELD_AT_MOST: u64 = 1_000;
/// A hang guard on reading the stream back.
const READ_GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_falls_behind_and_is_caught_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.watch.buffer_events = 16;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let metrics_addr = server.running.metrics_addr.expect("metrics are served");

    let mut watch_client = small_window_client(server.running.addr).await;
    let mut stream = open_watch(&mut watch_client).await.unwrap();
    stream
        .requests
        .send(subscribe((1..=USERS).map(|user| (user, 0))))
        .await
        .unwrap();
    let mut follower = Follower::default();
    let subscribed = tokio::time::timeout(READ_GUARD, async {
        while follower.counts.catch_ups < USERS {
            let message = next_message(&mut stream).await;
            follower.receive(&message);
        }
    })
    .await;
    assert!(subscribed.is_ok(), "the {USERS} catch-ups did not arrive");
    let before = http_get(metrics_addr, "/metrics").await.1;

    // The subscriber reads nothing while the writes go on.
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = server.client.clone();
        writers.push(tokio::spawn(write(client, writer)));
    }
    let written = tokio::time::timeout(WRITE_GUARD, async {
        for writer in writers {
            writer.await.unwrap();
        }
    })
    .await;
    assert!(
        written.is_ok(),
        "{WRITES} writes did not complete within {WRITE_GUARD:?} while a subscriber did not read"
    );
    let after = http_get(metrics_addr, "/metrics").await.1;
    let fell_behind = sample(&after, "readstates_watch_fell_behind_total").unwrap_or(0.0);
    assert!(
        fell_behind > 0.0,
        "no subscription fell behind the unread stream's buffer"
    );
    let memory = |text: &str| {
        sample(text, "readstates_process_resident_memory_bytes")
            .expect("the resident memory is reported")
    };
    let grown = memory(&after) - memory(&before);
    assert!(
        grown < MEMORY_SLACK,
        "resident memory grew by {:.1} MiB while the subscriber did not read",
        grown / 1024.0 / 1024.0
    );

    // Now it reads: every user that fell behind gets a new catch-up, from
    // the last version the stream sent, and every copy ends exact.
    let mut truths = BTreeMap::new();
    for user in 1..=USERS {
        truths.insert(user, truth(&mut server.client, user).await);
    }
    let mut caught_up_again = HashSet::new();
    let changes_before = follower.counts.changed + follower.counts.deleted;
    let read = tokio::time::timeout(READ_GUARD, async {
        while truths
            .iter()
            .any(|(&user, answer)| follower.version_of(user) < answer.version)
        {
            let message = next_message(&mut stream).await;
            for event in &message.events {
                let Some(Event::CatchUp(delta)) = &event.event else {
                    continue;
                };
                let user = event.user_id;
                assert!(
                    follower.is_caught_up(user),
                    "user {user}: a catch-up that no subscription asked for"
                );
                // Its events were dropped since the last version sent: the
                // new catch-up starts there, with nothing sent before.
                let last_sent = follower.version_of(user);
                assert!(!delta.reset, "user {user}: a reset after falling behind");
                let oldest = delta
                    .read_states
                    .iter()
                    .map(|state| state.version)
                    .chain(delta.deleted.iter().map(|deleted| deleted.version))
                    .min();
                assert!(
                    oldest.is_some_and(|oldest| oldest > last_sent),
                    "user {user}: a catch-up after falling behind at {last_sent} holds {delta:?}"
                );
                caught_up_again.insert(user);
            }
            follower.receive(&message);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the stream did not bring every copy up to the server's version within {READ_GUARD:?}"
    );
    assert!(
        follower.violations.is_empty(),
        "{} broken rules, first ones:\n{}",
        follower.violation_count,
        follower.violations.join("\n")
    );
    for (user, answer) in &truths {
        let copy = follower.copies.get(user).cloned().unwrap_or_default();
        assert_eq!(copy.differences(answer), None, "user {user}'s copy");
    }
    assert!(
        !caught_up_again.is_empty(),
        "no user was caught up again after falling behind"
    );
    // What was held for the subscriber while it did not read is what came
    // as single changes: the connection's window, the stream's send queue
    // and its buffer, a few hundred at most. Everything else came in the
    // catch-ups. (The memory figure above is too coarse to show a few
    // thousand events queued; this shows that they were not.)
    let single_changes = follower.counts.changed + follower.counts.deleted - changes_before;
    assert!(
        single_changes < HELD_AT_MOST,
        "{single_changes} of {WRITES} changes were held for a subscriber that did not read"
    );
    println!(
        "slow subscriber: {WRITES} writes while not reading; {fell_behind} subscriptions fell \
         behind, {} users caught up again, {single_changes} changes held and delivered singly; \
         resident memory grew by {:.1} MiB; all told {} messages, {} events ({} changed, {} \
         deleted, {} catch-ups)",
        caught_up_again.len(),
        grown / 1024.0 / 1024.0,
        follower.counts.messages,
        follower.counts.events,
        follower.counts.changed,
        follower.counts.deleted,
        follower.counts.catch_ups,
    );
    drop((stream, watch_client));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_limits_ends_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.watch.max_users_per_stream = 2;
    config.watch.max_streams = 2;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let client = &mut server.client;

    // Two users fit; subscribing one of them again does not count twice;
    // a third ends the stream.
    let mut stream = open_eventually(client).await;
    let mut follower = Follower::default();
    stream
        .requests
        .send(subscribe([(1, 0), (2, 0)]))
        .await
        .unwrap();
    stream.requests.send(subscribe([(1, 0)])).await.unwrap();
    while follower.counts.catch_ups < 3 {
        follower.receive(&next_message(&mut stream).await);
    }
    stream.requests.send(subscribe([(3, 0)])).await.unwrap();
    let status = stream_end(&mut stream).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("watch.max_users_per_stream"),
        "{status:?}"
    );

    // An invalid user id ends the stream, naming the field.
    let mut stream = open_eventually(client).await;
    stream.requests.send(subscribe([(0, 0)])).await.unwrap();
    let status = stream_end(&mut stream).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("subscribe.user_id"), "{status:?}");
    let mut stream = open_eventually(client).await;
    stream.requests.send(unsubscribe([0])).await.unwrap();
    let status = stream_end(&mut stream).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("unsubscribe"), "{status:?}");

    // Two streams fit; a third is refused while they are open. (The
    // streams ended above give their room back as their tasks finish,
    // hence the patience.)
    let first = open_eventually(client).await;
    let second = open_eventually(client).await;
    let refused = open_watch(client)
        .await
        .err()
        .expect("a third stream opened");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("watch.max_streams"),
        "{refused:?}"
    );
    drop((first, second));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_by_its_subscriber_gives_its_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.watch.max_streams = 1;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let metrics_addr = server.running.metrics_addr.expect("metrics are served");

    // One stream that follows a user nobody changes, one that follows no
    // one: each is dropped, and its room (and subscription) must come back
    // without waiting for a change.
    for users in [vec![(1, 0)], vec![]] {
        let mut stream = open_eventually(&mut server.client).await;
        if !users.is_empty() {
            stream.requests.send(subscribe(users)).await.unwrap();
            next_message(&mut stream).await;
        }
        drop(stream);
        let mut metrics = String::new();
        let released = eventually(Duration::from_secs(5), async || {
            metrics = http_get(metrics_addr, "/metrics").await.1;
            sample(&metrics, "readstates_watch_streams") == Some(0.0)
                && sample(&metrics, "readstates_watch_subscriptions") == Some(0.0)
        })
        .await;
        assert!(
            released,
            "a dropped stream is still open on the server:\n{}",
            metrics
                .lines()
                .filter(|line| line.starts_with("readstates_watch_s"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    server.shutdown().await;
}

/// Changes made at once on a busy stream, in `a_busy_stream_sends_its_events_together`.
const BURST: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stream_sends_its_events_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Far longer than the burst below takes, so that its changes all wait.
    config.watch.coalesce_ms = 1_000;
    let mut server = TestServer::start(&config, InstrumentedStore::open(dir.path())).await;
    let mut watch_client = server.client.clone();
    let mut stream = open_watch(&mut watch_client).await.unwrap();
    stream.requests.send(subscribe([(1, 0)])).await.unwrap();
    let mut follower = Follower::default();
    let message = tokio::time::timeout(READ_GUARD, next_message(&mut stream))
        .await
        .expect("the catch-up arrives");
    follower.receive(&message);
    assert!(follower.is_caught_up(1));

    // After a quiet spell, one change leaves alone, at once.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    server.client.ack(ack_request(1, 1, 1)).await.unwrap();
    let message = tokio::time::timeout(READ_GUARD, next_message(&mut stream))
        .await
        .expect("the change arrives");
    assert_eq!(message.events.len(), 1, "{message:?}");
    follower.receive(&message);

    // The changes that follow it within the setting wait, and leave
    // together.
    for message_id in 2..=1 + BURST {
        server
            .client
            .ack(ack_request(1, 1 + message_id % 4, message_id))
            .await
            .unwrap();
    }
    let mut messages = 0;
    let read = tokio::time::timeout(READ_GUARD, async {
        while follower.counts.changed < 1 + BURST {
            let message = next_message(&mut stream).await;
            follower.receive(&message);
            messages += 1;
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the burst's {BURST} changes did not all arrive"
    );
    assert!(
        messages <= 2,
        "the burst's {BURST} changes came in {messages} messages"
    );
    assert!(
        follower.violations.is_empty(),
        "{}",
        follower.violations.join("\n")
    );
    let truth = truth(&mut server.client, 1).await;
    let copy = follower.copies.get(&1).cloned().unwrap_or_default();
    assert_eq!(copy.differences(&truth), None);
    drop((stream, watch_client));
    server.shutdown().await;
}

/// Makes this writer's share of the changes on the users it owns (so that
/// each of its acks moves forward, and is a change): acks with rising
/// message ids over four channels, and now and then a delete, so that
/// catch-ups after falling behind carry deletions too.
async fn write(mut client: Client, writer: u64) {
    let owned: Vec<u64> = (1..=USERS)
        .filter(|user| (user - 1) % WRITERS == writer)
        .collect();
    for index in 0..WRITES / WRITERS {
        let user = owned[index as usize % owned.len()];
        let channel = 1 + (index / owned.len() as u64) % 4;
        if index % 16 == 15 {
            client
                .delete_read_states(DeleteReadStatesRequest {
                    user_id: user,
                    channel_ids: vec![channel],
                })
                .await
                .expect("DeleteReadStates");
        } else {
            client
                .ack(ack_request(user, channel, 1_000 + index))
                .await
                .expect("Ack");
        }
    }
}

/// A client whose connection holds little unread data (4 KiB), so that an
/// unread stream backs up into the server within a few dozen events. With
/// hyper's default windows (megabytes) the client would take tens of
/// thousands of events first; with 16 KiB, the client's own HTTP/2 layer
/// closed the connection (ENHANCE_YOUR_CALM, "too_many_data_frames": its
/// guard against floods of small DATA frames left unread) before the
/// server's buffer filled.
async fn small_window_client(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .initial_stream_window_size(4 * 1024)
        .initial_connection_window_size(4 * 1024)
        .connect()
        .await
        .expect("connect");
    ReadStatesClient::new(channel)
}

/// The stream's next message; fails the test if the stream ends.
async fn next_message(stream: &mut WatchStream) -> WatchResponse {
    match stream.responses.message().await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("the stream ended"),
        Err(status) => panic!("the stream failed: {status:?}"),
    }
}

/// Reads the stream to its end; returns the status it ended with.
async fn stream_end(stream: &mut WatchStream) -> tonic::Status {
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended with OK"),
                Err(status) => return status,
            }
        }
    })
    .await;
    ended.expect("the stream did not end")
}

/// Opens a stream, waiting for room among `watch.max_streams`.
async fn open_eventually(client: &mut Client) -> WatchStream {
    let mut opened = None;
    let ok = eventually(Duration::from_secs(5), async || {
        opened = open_watch(client).await.ok();
        opened.is_some()
    })
    .await;
    assert!(ok, "no room for a stream");
    opened.expect("opened")
}
