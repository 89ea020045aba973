//! A [`Watch`](super::Watch)'s task: which users are followed, on which
//! stream each is subscribed, and the last version delivered for each.
//!
//! A user is *waiting* (to be subscribed, at a time, after a backoff or a
//! refresh of the slot map), *pending* on a stream (subscribed there, its
//! catch-up or end not yet received) or *live* there. It is subscribed at
//! its owner in the client's slot map, or, when the map names none (the
//! cluster is off, or the slot's holder is unknown), on the one *fallback*
//! stream, to one of the given addresses. Each address has at most one
//! stream taking new users; a stream closes when its last user leaves it.
//! A user is never subscribed twice at once on a stream: a subscription
//! the caller restarts while one is pending goes once the pending one is
//! answered (the instance answers each with a catch-up or an end, and
//! events of a restarted subscription that come before the new catch-up
//! are dropped). What streams and the caller send is handled in
//! `receive`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::stream::{Inbound, Outgoing, StreamId};
use super::{Inbox, WatchItem};
use crate::call::Shared;
use crate::client::ReadStatesClient;
use crate::retry::Failure;

mod place;
mod receive;

/// Messages (and ends) of the streams waiting for the session.
const INBOUND_BUFFER: usize = 64;

/// Starts the task of a watch over `client`'s channels; it takes requests
/// from `inbox` and sends events to `events`.
pub(super) fn spawn(
    client: ReadStatesClient,
    inbox: Arc<Inbox>,
    events: mpsc::Sender<WatchItem>,
) -> AbortHandle {
    let (inbound_sender, inbound) = mpsc::channel(INBOUND_BUFFER);
    let session = Session {
        client,
        inbox,
        events,
        inbound,
        inbound_sender,
        tasks: JoinSet::new(),
        users: HashMap::new(),
        waiting: BTreeSet::new(),
        streams: HashMap::new(),
        by_address: HashMap::new(),
        fallback: None,
        next_stream: 1,
        refreshing: false,
        refresh_again: false,
        message: 0,
    };
    tokio::spawn(session.run()).abort_handle()
}

/// Where a user is subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Nowhere: subscribed at `retry_at` (once no refresh runs).
    Waiting,
    /// Subscribed on the stream; its answer (catch-up or end) not yet in.
    Pending(StreamId),
    /// Subscribed on the stream, and caught up.
    Live(StreamId),
}

impl Place {
    fn stream(self) -> Option<StreamId> {
        match self {
            Place::Waiting => None,
            Place::Pending(stream) | Place::Live(stream) => Some(stream),
        }
    }
}

/// One user the session knows.
#[derive(Debug)]
struct User {
    /// The version of the caller's copy: the last delivered, or the one
    /// the caller subscribed with.
    version: u64,
    place: Place,
    /// Subscriptions ended or failed since its last catch-up: the backoff.
    failures: u32,
    retry_at: Instant,
    /// False once the caller unsubscribed it while its subscription was
    /// pending: the record waits for the answer, which is dropped.
    followed: bool,
    /// A restart from this version, asked while a subscription was
    /// pending: made once that one is answered.
    restart: Option<u64>,
    /// The message of its last change delivered: changes of one call share
    /// a version and come in one message.
    change_message: u64,
}

/// One open stream.
struct Link {
    address: String,
    outgoing: Arc<Outgoing>,
    task: AbortHandle,
    /// Users pending or live on it.
    users: usize,
}

/// Tells the session's loop that the caller dropped the watch.
pub(super) struct Gone;

pub(super) struct Session {
    client: ReadStatesClient,
    inbox: Arc<Inbox>,
    events: mpsc::Sender<WatchItem>,
    inbound: mpsc::Receiver<Inbound>,
    inbound_sender: mpsc::Sender<Inbound>,
    /// The streams' tasks and the refreshes: aborted when the session ends.
    tasks: JoinSet<()>,
    users: HashMap<u64, User>,
    /// The users whose place is `Waiting`, by `retry_at`: exactly those.
    waiting: BTreeSet<(Instant, u64)>,
    streams: HashMap<StreamId, Link>,
    /// The stream of each address that takes new users.
    by_address: HashMap<String, StreamId>,
    /// The address of the fallback stream, once one is chosen.
    fallback: Option<String>,
    next_stream: StreamId,
    refreshing: bool,
    /// A refresh was asked for while one ran: another follows it.
    refresh_again: bool,
    /// The number of the last message received.
    message: u64,
}

impl Session {
    async fn run(mut self) {
        loop {
            self.take_requests();
            self.place_waiting();
            let wake = self.wake_at();
            tokio::select! {
                () = self.inbox.asked() => {}
                Some(inbound) = self.inbound.recv() => {
                    // What the caller asked before goes first: no event of
                    // a user it unsubscribed is delivered after that.
                    self.take_requests();
                    if self.receive(inbound).await.is_err() {
                        return;
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = sleep_until(wake), if wake.is_some() => {}
                () = self.events.closed() => return,
            }
        }
    }

    /// Applies what the caller asked since the last time.
    fn take_requests(&mut self) {
        for (user_id, since_version) in self.inbox.take() {
            match since_version {
                Some(version) => self.subscribe(user_id, version),
                None => self.unsubscribe(user_id),
            }
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        self.client.shared()
    }

    /// Follows `user_id` from `version`, or starts it over from there.
    fn subscribe(&mut self, user_id: u64, version: u64) {
        let now = Instant::now();
        let Some(user) = self.users.get_mut(&user_id) else {
            self.users.insert(
                user_id,
                User {
                    version,
                    place: Place::Waiting,
                    failures: 0,
                    retry_at: now,
                    followed: true,
                    restart: None,
                    change_message: 0,
                },
            );
            self.waiting.insert((now, user_id));
            return;
        };
        let was_due = std::mem::replace(&mut user.retry_at, now);
        user.followed = true;
        user.failures = 0;
        match user.place {
            Place::Waiting => {
                user.version = version;
                user.restart = None;
                self.waiting.remove(&(was_due, user_id));
                self.waiting.insert((now, user_id));
            }
            Place::Pending(stream) => {
                let unsent = self
                    .streams
                    .get(&stream)
                    .is_some_and(|link| link.outgoing.resubscribe_unsent(user_id, version));
                if unsent {
                    user.version = version;
                    user.restart = None;
                } else {
                    user.restart = Some(version);
                }
            }
            Place::Live(stream) => {
                user.version = version;
                user.change_message = 0;
                if let Some(link) = self.streams.get(&stream) {
                    link.outgoing.unsubscribe(user_id);
                }
                self.make_wait(user_id);
            }
        }
    }

    /// Stops following `user_id`.
    fn unsubscribe(&mut self, user_id: u64) {
        let Some(user) = self.users.get_mut(&user_id) else {
            return;
        };
        // Whether no answer to a subscription is to come.
        let settled = match user.place {
            Place::Waiting => true,
            Place::Pending(stream) | Place::Live(stream) => {
                let unsent = self
                    .streams
                    .get(&stream)
                    .is_some_and(|link| link.outgoing.unsubscribe(user_id));
                unsent || matches!(user.place, Place::Live(_))
            }
        };
        if settled {
            self.forget(user_id);
        } else {
            // The answer to its subscription is still to come.
            user.followed = false;
            user.restart = None;
        }
    }

    /// Reads the slot map again (in the background); waiting users are
    /// placed once it is read.
    fn refresh_routing(&mut self) {
        if self.refreshing {
            self.refresh_again = true;
            return;
        }
        self.refreshing = true;
        let shared = Arc::clone(self.shared());
        let done = self.inbound_sender.clone();
        self.tasks.spawn(async move {
            let generation = shared.router.generation();
            // A failure keeps the map in use (and is logged).
            let _ = shared.refresh(Some(generation)).await;
            let _ = done.send(Inbound::Refreshed).await;
        });
    }

    /// Handles the end of a refresh.
    fn refreshed(&mut self) {
        self.refreshing = false;
        if std::mem::take(&mut self.refresh_again) {
            self.refresh_routing();
        }
    }

    /// Returns the backoff after a user's `failures`-th failure in a row.
    fn backoff(&self, failures: u32, failure: Failure) -> Duration {
        let shared = self.shared();
        shared
            .policy
            .backoff_after(failures, failure, shared.jitter.next())
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake).await,
        None => std::future::pending().await,
    }
}
