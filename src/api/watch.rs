//! `WatchReadStates`: one gRPC stream that follows many users
//! (ARCHITECTURE.md §1.3).
//!
//! Each stream has a task and an [`Outbox`]. The task reads the stream's
//! requests; for each user subscribed it reads the user's delta since the
//! subscriber's version and registers the subscription in one step, under
//! the user's partition lock (`Watchers::subscribe`), so that every later
//! change is queued after the delta by the engine's change hook. It sends
//! what the outbox holds, the changes of one call always in one message,
//! and catches up a user that fell behind the outbox from the last version
//! sent. It ends each subscription with its resume version when the user's
//! slot moves away or the server shuts down; at shutdown it then ends the
//! stream with `UNAVAILABLE`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{deleted_to_proto, delta_to_proto, to_proto};
use super::proto;
use super::proto::watch_ended::Reason;
use super::proto::watch_event::Event as ProtoEvent;
use super::status::ApiError;
use super::validate::user_id;
use crate::cache::CacheError;
use crate::config::WatchConfig;
use crate::engine::Engine;
use crate::ids::{ChannelId, UserId};
use crate::store::Tombstone;
use crate::watch::{EndReason, Event, Outbox, Taken, Watchers};

/// Catch-ups one stream runs at once.
const CATCH_UP_CONCURRENCY: usize = 16;
/// Events taken from the outbox at once.
const TAKE_EVENTS: usize = 512;
/// States and changes per message, past which the next event starts a new
/// message (a message holds at least one event, whatever its size).
const MESSAGE_WEIGHT: usize = 4_096;
/// Messages waiting for the connection before the task waits.
const SEND_QUEUE: usize = 4;
/// How long a shutting-down stream tries to send the ends of its
/// subscriptions.
const SHUTDOWN_SEND: Duration = Duration::from_secs(1);

/// The response stream of `WatchReadStates`.
pub type WatchStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<proto::WatchResponse, Status>> + Send>>;

/// What the service needs to serve change streams.
pub struct Watching {
    pub watchers: Arc<Watchers>,
    pub settings: WatchConfig,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
}

impl Watching {
    /// Starts a stream's task over `requests`; refuses the stream past
    /// `watch.max_streams`.
    pub(super) fn start(
        &self,
        engine: &Arc<Engine>,
        requests: Request<Streaming<proto::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let max_streams = self.settings.max_streams;
        let stream_open = self
            .watchers
            .metrics()
            .try_open_stream(max_streams)
            .map_err(|open| ApiError::TooManyStreams {
                open,
                limit: max_streams,
            })?;
        let (sender, receiver) = mpsc::channel(SEND_QUEUE);
        let task = StreamTask {
            engine: Arc::clone(engine),
            watchers: Arc::clone(&self.watchers),
            outbox: Outbox::new(self.settings.buffer_events),
            max_users: self.settings.max_users_per_stream,
            coalesce: Duration::from_millis(self.settings.coalesce_ms),
            users: HashSet::new(),
            pending: VecDeque::new(),
            sender,
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _open = stream_open;
            task.run(requests.into_inner(), shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// A catch-up to run: a new subscription, or one that fell behind.
#[derive(Debug, Clone, Copy)]
enum CatchUp {
    /// From the version the subscriber has.
    From(u64),
    /// From the last version queued (the subscription fell behind).
    Behind,
}

/// Why a stream's task stops.
enum Stop {
    /// The subscriber went away (or its requests failed).
    Gone,
    /// The stream ends with this status.
    Status(Status),
}

/// One stream's task.
struct StreamTask {
    engine: Arc<Engine>,
    watchers: Arc<Watchers>,
    outbox: Arc<Outbox>,
    max_users: usize,
    /// The shortest time between two sends (`watch.coalesce_ms`).
    coalesce: Duration,
    /// Users subscribed on this stream (or being caught up).
    users: HashSet<UserId>,
    /// Catch-ups waiting for room in the outbox.
    pending: VecDeque<(UserId, CatchUp)>,
    sender: mpsc::Sender<Result<proto::WatchResponse, Status>>,
}

impl StreamTask {
    async fn run(
        mut self,
        mut requests: Streaming<proto::WatchRequest>,
        shutdown: CancellationToken,
    ) {
        let stop = self.serve(&mut requests, &shutdown).await;
        for user_id in self.users.drain() {
            self.watchers.unsubscribe(user_id, &self.outbox);
        }
        if let Stop::Status(status) = stop {
            let _ = self.sender.send(Err(status)).await;
        }
    }

    async fn serve(
        &mut self,
        requests: &mut Streaming<proto::WatchRequest>,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut catching_up = FuturesUnordered::new();
        let mut reading = true;
        // Until then, what is queued waits, so that a busy stream's events
        // leave together; the first event after a quiet spell leaves at
        // once.
        let mut next_send = Instant::now();
        loop {
            while catching_up.len() < CATCH_UP_CONCURRENCY && self.outbox.has_room() {
                let Some((user_id, from)) = self.pending.pop_front() else {
                    break;
                };
                catching_up.push(catch_up(
                    Arc::clone(&self.engine),
                    Arc::clone(&self.watchers),
                    Arc::clone(&self.outbox),
                    user_id,
                    from,
                ));
            }
            let holding = Instant::now() < next_send;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return self.shut_down().await,
                request = requests.message(), if reading => match request {
                    Ok(Some(request)) => {
                        if let Err(status) = self.handle(request) {
                            return Stop::Status(status);
                        }
                    }
                    // The subscriber sends no more requests; its events go on.
                    Ok(None) => reading = false,
                    Err(_) => return Stop::Gone,
                },
                Some((user_id, from, result)) = catching_up.next() => {
                    self.caught_up(user_id, from, result);
                }
                () = self.outbox.pushed(), if !holding => {}
                () = tokio::time::sleep_until(next_send), if holding => {}
                // The subscriber dropped the stream: nothing else may tell
                // (a stream that follows nobody, or whose users never
                // change, would otherwise stay open for ever).
                () = self.sender.closed() => return Stop::Gone,
            }
            if Instant::now() < next_send {
                continue;
            }
            // A subscriber that does not read must not hold up the
            // shutdown: what is unsent then is resumed from its versions.
            let sent = tokio::select! {
                sent = self.send_pending() => sent,
                () = shutdown.cancelled() => return self.shut_down().await,
            };
            match sent {
                Ok(0) => {}
                Ok(_) => next_send = Instant::now() + self.coalesce,
                Err(()) => return Stop::Gone,
            }
        }
    }

    /// Applies one request: unsubscriptions first, then subscriptions.
    fn handle(&mut self, request: proto::WatchRequest) -> Result<(), Status> {
        for &raw in &request.unsubscribe {
            let user = user_id("unsubscribe", raw).map_err(Status::from)?;
            if self.users.remove(&user) {
                self.watchers.unsubscribe(user, &self.outbox);
            }
        }
        for subscription in &request.subscribe {
            let user = user_id("subscribe.user_id", subscription.user_id).map_err(Status::from)?;
            if !self.users.contains(&user) && self.users.len() >= self.max_users {
                return Err(ApiError::TooManyWatchedUsers {
                    limit: self.max_users,
                }
                .into());
            }
            self.users.insert(user);
            self.pending
                .push_back((user, CatchUp::From(subscription.since_version)));
        }
        Ok(())
    }

    /// Handles a finished catch-up.
    fn caught_up(&mut self, user_id: UserId, from: CatchUp, result: Result<bool, CacheError>) {
        let reason = match result {
            // Unsubscribed while it ran: its registration goes too.
            Ok(true) if !self.users.contains(&user_id) => {
                self.watchers.unsubscribe(user_id, &self.outbox);
                return;
            }
            // Caught up; or it had fallen behind and ended meanwhile.
            Ok(_) => return,
            Err(CacheError::NotServed { .. }) => EndReason::NotServed,
            Err(error) => {
                tracing::debug!(%error, user_id = user_id.get(), "a subscription's catch-up failed");
                EndReason::Unavailable
            }
        };
        match from {
            // Not subscribed yet: its end carries the subscriber's version.
            CatchUp::From(version) => {
                self.watchers.metrics().ended(reason);
                self.outbox.push(Event::Ended {
                    user_id,
                    reason,
                    resume_version: version,
                });
            }
            CatchUp::Behind => self.watchers.end(user_id, &self.outbox, reason),
        }
    }

    /// Sends what the outbox holds; queues catch-ups for users that fell
    /// behind. Returns the messages sent; fails once the subscriber is
    /// gone.
    async fn send_pending(&mut self) -> Result<usize, ()> {
        let mut taken = Taken::default();
        let mut sent = 0;
        loop {
            self.outbox.take(TAKE_EVENTS, &mut taken);
            for user_id in taken.lagging.drain(..) {
                self.pending.push_back((user_id, CatchUp::Behind));
            }
            if taken.events.is_empty() {
                return Ok(sent);
            }
            for message in self.messages(taken.events.drain(..)) {
                self.sender.send(Ok(message)).await.map_err(|_| ())?;
                sent += 1;
            }
        }
    }

    /// Turns events into messages: a message ends past [`MESSAGE_WEIGHT`],
    /// between events, so a transaction's changes are never split.
    fn messages(&mut self, events: impl Iterator<Item = Event>) -> Vec<proto::WatchResponse> {
        let metrics = self.watchers.metrics();
        let mut messages = Vec::new();
        let mut message = proto::WatchResponse::default();
        let mut weight = 0;
        for event in events {
            if weight >= MESSAGE_WEIGHT {
                messages.push(std::mem::take(&mut message));
                weight = 0;
            }
            match event {
                Event::CatchUp { user_id, delta } => {
                    weight += delta.states.len() + delta.deleted.len() + 1;
                    message.events.push(proto::WatchEvent {
                        user_id: user_id.get(),
                        event: Some(ProtoEvent::CatchUp(delta_to_proto(user_id, delta))),
                    });
                }
                Event::Changes {
                    user_id,
                    changes,
                    applied_at,
                } => {
                    metrics.delivery_lag.record_duration(applied_at.elapsed());
                    for change in changes.as_slice() {
                        weight += 1;
                        let event = if change.deleted {
                            ProtoEvent::Deleted(deleted_to_proto(
                                user_id,
                                tombstone(change.view.channel_id, change.view.version),
                            ))
                        } else {
                            ProtoEvent::Changed(to_proto(user_id, change.view))
                        };
                        message.events.push(proto::WatchEvent {
                            user_id: user_id.get(),
                            event: Some(event),
                        });
                    }
                }
                Event::Ended {
                    user_id,
                    reason,
                    resume_version,
                } => {
                    weight += 1;
                    self.users.remove(&user_id);
                    message.events.push(proto::WatchEvent {
                        user_id: user_id.get(),
                        event: Some(ProtoEvent::Ended(ended(reason, resume_version))),
                    });
                }
            }
        }
        if !message.events.is_empty() {
            messages.push(message);
        }
        let sent: usize = messages.iter().map(|message| message.events.len()).sum();
        metrics.events.increment(sent as u64);
        messages
    }

    /// Ends every subscription with its resume version, tries to send the
    /// ends for a moment, then ends the stream.
    async fn shut_down(&mut self) -> Stop {
        for &user_id in &self.users {
            self.watchers
                .end(user_id, &self.outbox, EndReason::ShuttingDown);
        }
        self.pending.clear();
        let _ = tokio::time::timeout(SHUTDOWN_SEND, self.send_pending()).await;
        Stop::Status(ApiError::ShuttingDown.into())
    }
}

/// Catches `user_id` up on `outbox` (see `Watchers::subscribe`); returns
/// whether it did (false: a subscription that fell behind had ended).
async fn catch_up(
    engine: Arc<Engine>,
    watchers: Arc<Watchers>,
    outbox: Arc<Outbox>,
    user_id: UserId,
    from: CatchUp,
) -> (UserId, CatchUp, Result<bool, CacheError>) {
    let result = engine
        .read(user_id, |txn| {
            let since = match from {
                CatchUp::From(version) => version,
                CatchUp::Behind => match watchers.last_version(user_id, &outbox) {
                    Some(version) => version,
                    None => return false,
                },
            };
            // Read once the user is loaded: a purge after its load only
            // raises the horizon.
            let delta = txn.delta(since, engine.delta_limits());
            watchers.subscribe(user_id, &outbox, delta);
            true
        })
        .await;
    (user_id, from, result)
}

fn tombstone(channel_id: ChannelId, version: u64) -> Tombstone {
    Tombstone {
        channel_id,
        version,
    }
}

fn ended(reason: EndReason, resume_version: u64) -> proto::WatchEnded {
    let (reason, message) = match reason {
        EndReason::Moved => (
            Reason::Moved,
            "the user's slot moved to another instance: resume at its owner (GetRouting)",
        ),
        EndReason::NotServed => (
            Reason::NotServed,
            "this instance does not serve the user's slot: subscribe at its owner (GetRouting)",
        ),
        EndReason::ShuttingDown => (
            Reason::ShuttingDown,
            "this instance is shutting down: resume at another instance",
        ),
        EndReason::Unavailable => (
            Reason::Unavailable,
            "the user's read states could not be loaded: retry with backoff",
        ),
    };
    proto::WatchEnded {
        reason: reason as i32,
        resume_version,
        message: message.to_owned(),
    }
}
