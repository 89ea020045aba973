//! `watch`: follows users on `WatchReadStates` streams, as a gateway does,
//! and measures what a subscriber sees.
//!
//! It opens `streams` streams (each on its own HTTP/2 connection), subscribes
//! users `1..=users` round-robin over them from version 0, in requests of at
//! most [`MAX_SUBSCRIBE`] subscriptions, and reads events until the duration
//! passes, SIGTERM or SIGINT arrives, or (with `exit_when_caught_up`) every
//! subscription's first catch-up has arrived. It counts catch-ups, changed and
//! deleted events and ends, and records each `changed` event's delivery lag
//! as the wall clock at its arrival minus the state's `updated_at_ms` (the
//! server's wall clock when it applied the change): on one machine, both
//! clocks are the same, so the lag covers the server's queueing, sending,
//! the network and this process's own scheduling, at millisecond resolution.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::stream;
use hdrhistogram::Histogram;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{WatchRequest, WatchSubscription};

/// The most subscriptions sent in one `WatchRequest`.
pub const MAX_SUBSCRIBE: usize = 1_000;

/// What to follow, and for how long.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// gRPC server address (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Follow users 1..=N.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Streams (each on its own HTTP/2 connection); users go round-robin.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// How long to follow them (SIGTERM or SIGINT stops it earlier).
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// How long to keep retrying the first connection while the server starts.
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    connect_wait: Duration,
    /// Stop as soon as every subscription has had its first catch-up.
    #[arg(long)]
    exit_when_caught_up: bool,
}

/// `readstates-bench watch`: follows the users and prints what arrived.
pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    eprintln!(
        "following users 1..={} on {} streams of {} for {:?}...",
        args.users, args.streams, args.addr, args.duration
    );
    let watched = watch(&args).await?;
    let lag = &watched.lag_ms;
    let (p50, p99, max) = if lag.is_empty() {
        (0, 0, 0)
    } else {
        (
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.99),
            lag.max(),
        )
    };
    let caught_up = watched
        .caught_up
        .map_or_else(|| "-".to_string(), |at| format!("{:.2}", at.as_secs_f64()));
    println!(
        "WATCH users={} streams={} catch_ups={} events={} ended={} lag_p50_ms={p50} lag_p99_ms={p99} \
         lag_max_ms={max} caught_up_s={caught_up} changed={} deleted={} catch_up_states={} resets={} messages={}",
        args.users,
        args.streams,
        watched.catch_ups,
        watched.changed + watched.deleted,
        watched.ended,
        watched.changed,
        watched.deleted,
        watched.catch_up_states,
        watched.resets,
        watched.messages,
    );
    Ok(())
}

/// What the subscriber saw, on one stream or over all.
struct Watched {
    /// `WatchResponse`s received.
    messages: u64,
    catch_ups: u64,
    /// States in the catch-ups.
    catch_up_states: u64,
    resets: u64,
    changed: u64,
    deleted: u64,
    ended: u64,
    /// Delivery lag of `changed` events, in milliseconds.
    lag_ms: Histogram<u64>,
    /// Time from the start until every subscription's first catch-up (or
    /// its end) had arrived; `None` if that never happened.
    caught_up: Option<Duration>,
}

impl Watched {
    fn new(caught_up: Option<Duration>) -> anyhow::Result<Self> {
        Ok(Self {
            messages: 0,
            catch_ups: 0,
            catch_up_states: 0,
            resets: 0,
            changed: 0,
            deleted: 0,
            ended: 0,
            lag_ms: Histogram::new(3)?,
            caught_up,
        })
    }

    /// Adds one stream's figures; caught up when both are.
    fn add(&mut self, one: &Watched) -> anyhow::Result<()> {
        self.messages += one.messages;
        self.catch_ups += one.catch_ups;
        self.catch_up_states += one.catch_up_states;
        self.resets += one.resets;
        self.changed += one.changed;
        self.deleted += one.deleted;
        self.ended += one.ended;
        self.lag_ms.add(&one.lag_ms)?;
        self.caught_up = self.caught_up.zip(one.caught_up).map(|(a, b)| a.max(b));
        Ok(())
    }
}

/// The users of stream `index` of `streams` (round-robin over `1..=users`),
/// as subscription requests of at most `max` users each, from version 0.
pub fn subscribe_requests(
    users: u64,
    streams: usize,
    index: usize,
    max: usize,
) -> Vec<WatchRequest> {
    let ids: Vec<u64> = (1..=users)
        .filter(|user| (user - 1) % streams as u64 == index as u64)
        .collect();
    ids.chunks(max.max(1))
        .map(|chunk| WatchRequest {
            subscribe: chunk
                .iter()
                .map(|&user_id| WatchSubscription {
                    user_id,
                    since_version: 0,
                })
                .collect(),
            unsubscribe: Vec::new(),
        })
        .collect()
}

/// The delivery lag of a state changed at `updated_at_ms` and seen at
/// `now_ms` (0 if the clock reads earlier, as a millisecond boundary can).
pub fn lag_ms(now_ms: u64, updated_at_ms: u64) -> u64 {
    now_ms.saturating_sub(updated_at_ms)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Follows the users as `settings` says; returns what arrived.
async fn watch(settings: &WatchArgs) -> anyhow::Result<Watched> {
    anyhow::ensure!(settings.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(settings.users > 0, "--users must be at least 1");
    let uri = if settings.addr.contains("://") {
        settings.addr.clone()
    } else {
        format!("http://{}", settings.addr)
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("invalid address {uri}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + settings.connect_wait;
    let mut clients = Vec::with_capacity(settings.streams);
    for _ in 0..settings.streams {
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error).with_context(|| format!("connecting to {uri}")),
            }
        };
        clients.push(ReadStatesClient::new(channel).max_decoding_message_size(64 << 20));
    }

    let (stop_tx, stop) = watch::channel(false);
    let start = Instant::now();
    let streams_left = Arc::new(AtomicUsize::new(settings.streams));
    let mut tasks = Vec::with_capacity(settings.streams);
    for (index, client) in clients.into_iter().enumerate() {
        let requests = subscribe_requests(settings.users, settings.streams, index, MAX_SUBSCRIBE);
        let follower = Follower {
            start,
            stop: stop.clone(),
            stop_all: stop_tx.clone(),
            exit_when_caught_up: settings.exit_when_caught_up,
            streams_left: Arc::clone(&streams_left),
        };
        tasks.push(tokio::spawn(async move {
            let stop_all = follower.stop_all.clone();
            let result = follower.follow(client, requests).await;
            if result.is_err() {
                // A failed stream stops the others: the figures would be partial.
                let _ = stop_all.send(true);
            }
            result
        }));
    }

    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut stopped = stop.clone();
    tokio::select! {
        () = tokio::time::sleep(settings.duration) => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = stopped.wait_for(|&stop| stop) => {}
    }
    let _ = stop_tx.send(true);

    let mut watched = Watched::new(Some(Duration::ZERO))?;
    for task in tasks {
        watched.add(&task.await.context("a stream's task panicked")??)?;
    }
    Ok(watched)
}

/// One stream's follower.
struct Follower {
    start: Instant,
    stop: watch::Receiver<bool>,
    /// Stops every stream.
    stop_all: watch::Sender<bool>,
    /// Stop once every stream has caught up.
    exit_when_caught_up: bool,
    /// Streams whose subscriptions have not all had their first catch-up.
    streams_left: Arc<AtomicUsize>,
}

impl Follower {
    async fn follow(
        mut self,
        mut client: ReadStatesClient<tonic::transport::Channel>,
        requests: Vec<WatchRequest>,
    ) -> anyhow::Result<Watched> {
        // Users whose first catch-up (or end) has not arrived.
        let mut waiting: std::collections::HashSet<u64> = requests
            .iter()
            .flat_map(|request| request.subscribe.iter().map(|sub| sub.user_id))
            .collect();
        let mut seen = Watched::new(None)?;
        // The request stream stays open after the subscriptions, as a
        // gateway's does.
        let outgoing = stream::StreamExt::chain(stream::iter(requests), stream::pending());
        let mut events = client
            .watch_read_states(outgoing)
            .await
            .context("opening WatchReadStates")?
            .into_inner();
        loop {
            let message = tokio::select! {
                _ = self.stop.wait_for(|&stop| stop) => break,
                message = events.message() => message.context("reading WatchReadStates")?,
            };
            let Some(message) = message else {
                anyhow::bail!("the server ended a WatchReadStates stream");
            };
            let now = now_ms();
            seen.messages += 1;
            for event in message.events {
                match event.event {
                    Some(Event::CatchUp(delta)) => {
                        seen.catch_ups += 1;
                        seen.catch_up_states += delta.read_states.len() as u64;
                        seen.resets += u64::from(delta.reset);
                        waiting.remove(&event.user_id);
                    }
                    Some(Event::Changed(state)) => {
                        seen.changed += 1;
                        seen.lag_ms
                            .saturating_record(lag_ms(now, state.updated_at_ms));
                    }
                    Some(Event::Deleted(_)) => seen.deleted += 1,
                    Some(Event::Ended(_)) => {
                        seen.ended += 1;
                        waiting.remove(&event.user_id);
                    }
                    None => {}
                }
            }
            if seen.caught_up.is_none() && waiting.is_empty() {
                self.caught_up();
                seen.caught_up = Some(self.start.elapsed());
            }
        }
        Ok(seen)
    }

    /// This stream's subscriptions have all had their first catch-up.
    fn caught_up(&mut self) {
        if self.streams_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            eprintln!(
                "every subscription caught up in {:.2} s",
                self.start.elapsed().as_secs_f64()
            );
            if self.exit_when_caught_up {
                let _ = self.stop_all.send(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_go_round_robin_in_bounded_requests() {
        let users_of = |index| -> Vec<Vec<u64>> {
            subscribe_requests(10, 3, index, 2)
                .into_iter()
                .map(|request| request.subscribe.iter().map(|sub| sub.user_id).collect())
                .collect()
        };
        assert_eq!(users_of(0), vec![vec![1, 4], vec![7, 10]]);
        assert_eq!(users_of(1), vec![vec![2, 5], vec![8]]);
        assert_eq!(users_of(2), vec![vec![3, 6], vec![9]]);
        let all = subscribe_requests(2_500, 1, 0, MAX_SUBSCRIBE);
        assert_eq!(all.len(), 3);
        assert!(
            all.iter()
                .all(|request| request.subscribe.len() <= MAX_SUBSCRIBE)
        );
        assert!(
            all.iter()
                .flat_map(|r| &r.subscribe)
                .all(|s| s.since_version == 0)
        );
    }

    #[test]
    fn lag_never_goes_negative() {
        assert_eq!(lag_ms(1_000, 990), 10);
        assert_eq!(lag_ms(1_000, 1_000), 0);
        assert_eq!(lag_ms(999, 1_000), 0);
    }
}
