//! The setup phase: connections to the server, and the creation of every
//! big user's states and every fan-out population's state through the API.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use tonic::transport::{Channel, Endpoint};

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::{AckRequest, BulkAckRequest, ChannelAck};

use super::{BigUsersArgs, Layout, SETUP_MESSAGE};

/// How often setup progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Largest answer accepted (tonic's default, 4 MiB, is about 80,000 states).
const MAX_ANSWER_BYTES: usize = 1 << 30;

/// Opens `connections` HTTP/2 connections to `addr` (as `grpc_target.rs`
/// does), retrying for up to `wait` while the server starts.
pub(super) async fn connect(
    addr: &str,
    connections: usize,
    wait: Duration,
    call_timeout: Duration,
) -> anyhow::Result<Vec<ReadStatesClient<Channel>>> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid address {uri}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .buffer_size(16 * 1024);
    let deadline = Instant::now() + wait;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error).with_context(|| format!("connecting to {uri}")),
            }
        };
        clients.push(ReadStatesClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES));
    }
    Ok(clients)
}

/// A failed call as an error naming what was called.
pub(super) fn call_error(what: impl std::fmt::Display, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} failed: {:?}: {}", status.code(), status.message())
}

/// Creates every user and state of the layout.
pub(super) async fn setup(
    args: &BigUsersArgs,
    layout: &Layout,
    clients: &[ReadStatesClient<Channel>],
) -> anyhow::Result<()> {
    let start = Instant::now();

    // Big users: one BulkAck per chunk of a user's channels.
    let mut chunks = Vec::new();
    let mut big_users = 0u64;
    for (group, size) in layout.groups() {
        let channels: Vec<u64> = Layout::big_channels(size).collect();
        for user in layout.group_users(group) {
            big_users += 1;
            for chunk in channels.chunks(args.max_bulk_acks) {
                chunks.push((user, chunk.to_vec()));
            }
        }
    }
    eprintln!(
        "setup: {big_users} big users (sizes {:?} x {}, warm-up group included) in {} BulkAcks...",
        layout.sizes,
        layout.users_per_size,
        chunks.len()
    );
    let big_states = in_flight(
        "big users' states",
        chunks.into_iter().enumerate(),
        args.in_flight,
        |(index, (user, channels))| {
            let mut client = clients[index % clients.len()].clone();
            async move {
                let wanted = channels.len();
                let acks = channels
                    .into_iter()
                    .map(|channel_id| ChannelAck {
                        channel_id,
                        message_id: SETUP_MESSAGE,
                    })
                    .collect();
                let answer = client
                    .bulk_ack(BulkAckRequest {
                        user_id: user,
                        acks,
                    })
                    .await
                    .map_err(|status| {
                        call_error(
                            format_args!("BulkAck of user {user} ({wanted} acks)"),
                            status,
                        )
                    })?
                    .into_inner();
                ensure!(
                    answer.read_states.len() == wanted,
                    "BulkAck of user {user}: {wanted} acks answered with {} states",
                    answer.read_states.len()
                );
                Ok(wanted as u64)
            }
        },
    )
    .await?;

    // Fan-out populations: one Ack per user, in the population's channel.
    let acks: Vec<(u64, u64)> = layout
        .populations()
        .flat_map(|p| {
            layout
                .population_users(p)
                .map(move |user| (user, Layout::population_channel(p)))
        })
        .collect();
    let populations = layout.populations().count();
    eprintln!(
        "setup: {} fan-out users in {populations} populations (2 of them warm-up), one Ack each...",
        acks.len()
    );
    let fanout_states = in_flight(
        "fan-out users",
        acks.into_iter().enumerate(),
        args.in_flight,
        |(index, (user, channel))| {
            let mut client = clients[index % clients.len()].clone();
            async move {
                let answer = client
                    .ack(AckRequest {
                        user_id: user,
                        channel_id: channel,
                        message_id: SETUP_MESSAGE,
                        manual: false,
                        mention_count: None,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("Ack of user {user} in {channel}"), status)
                    })?
                    .into_inner();
                let state = answer
                    .read_state
                    .with_context(|| format!("Ack of user {user}: no state in the answer"))?;
                ensure!(
                    state.last_message_id == SETUP_MESSAGE,
                    "Ack of user {user}: last_message_id {} after an ack at {SETUP_MESSAGE}",
                    state.last_message_id
                );
                Ok(1)
            }
        },
    )
    .await?;

    let seconds = start.elapsed().as_secs_f64();
    println!(
        "set up {big_users} big users ({big_states} states) and {fanout_states} fan-out users in {seconds:.1} s"
    );
    println!(
        "SETUP big_users={big_users} big_states={big_states} fanout_users={fanout_states} \
         populations={populations} seconds={seconds:.2}"
    );
    Ok(())
}

/// Runs `call` on every item with at most `limit` in flight, printing
/// progress; returns the sum of what the calls return. The first error
/// stops it.
async fn in_flight<I, F, Fut>(what: &str, items: I, limit: usize, call: F) -> anyhow::Result<u64>
where
    I: ExactSizeIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let total = items.len();
    let start = Instant::now();
    let mut next_progress = start + PROGRESS_EVERY;
    let (done, sum) = stream::iter(items)
        .map(call)
        .buffer_unordered(limit.max(1))
        .try_fold((0usize, 0u64), |(done, sum), value| {
            let done = done + 1;
            if Instant::now() >= next_progress {
                next_progress += PROGRESS_EVERY;
                eprintln!(
                    "  {what}: {done} of {total} calls ({:.0}%), {:.0} s",
                    done as f64 * 100.0 / total.max(1) as f64,
                    start.elapsed().as_secs_f64()
                );
            }
            async move { anyhow::Ok((done, sum + value)) }
        })
        .await?;
    ensure!(done == total, "{what}: {done} of {total} calls answered");
    Ok(sum)
}
