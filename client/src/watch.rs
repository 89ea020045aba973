//! The change stream (`WatchReadStates`), wrapped: a [`Watch`] follows
//! users the way the README's gateway recipe says, and hands the caller one
//! continuous sequence of events per user.
//!
//! The caller subscribes users (each with the last version its copy holds)
//! and unsubscribes them; a background task keeps one bidirectional stream
//! per instance that owns a subscribed user (one stream in all when the
//! cluster is off), subscribes each user at its owner, and resubscribes it,
//! with the last version it delivered, wherever the user's events stop: on
//! an `ended` (the slot moved, the instance does not serve the user or is
//! shutting down, the user could not be loaded) and when a whole stream
//! fails. The server sends, after a subscription with the version the
//! caller holds, exactly what the caller missed, so the caller sees nothing
//! twice and misses nothing.
//!
//! - `session`: the task: the users, their streams, where each goes.
//! - `stream`: one stream's task and its queue of requests.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tonic::Status;

use crate::client::ReadStatesClient;
use crate::proto::{DeletedReadState, GetUserReadStatesResponse, ReadState};

mod session;
mod stream;

/// Events waiting for the caller to take them; past this the task waits
/// (and the instances, which never wait for a subscriber, let users fall
/// behind and catch them up later).
const EVENTS_BUFFER: usize = 1_024;

/// The largest user id (and any id) the service accepts: `i64::MAX`.
const MAX_USER_ID: u64 = i64::MAX as u64;

impl ReadStatesClient {
    /// Returns a change stream that follows no one yet: subscribe users
    /// with [`Watch::subscribe`], read their events with [`Watch::next`]
    /// (or as a [`Stream`]). Streams to the instances are opened as users
    /// need them, over the client's channels, with its bearer token. The
    /// watch shares the client's slot map (and keeps its background
    /// refresh going while it lives).
    ///
    /// # Panics
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn watch(&self) -> Watch {
        let inbox = Arc::new(Inbox::default());
        let (events, receiver) = mpsc::channel(EVENTS_BUFFER);
        let task = session::spawn(self.clone(), Arc::clone(&inbox), events);
        Watch {
            inbox,
            events: receiver,
            task,
        }
    }
}

/// One event of a followed user: the typed form of the service's
/// `WatchEvent`, less its `ended`, which the [`Watch`] handles itself.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The difference since the version the user was subscribed with (or
    /// resubscribed with, after a move or a failure: the last version
    /// delivered), or a reset. Apply it as `GetUserReadStates` answers
    /// one: on `reset` replace the copy with `read_states`, otherwise
    /// upsert `read_states` and drop `deleted`; then the copy is at
    /// `version`. It comes first after each subscription, and again
    /// whenever the user had to be resubscribed or fell behind.
    CatchUp {
        /// The user.
        user_id: u64,
        /// The difference, shaped as `GetUserReadStates` answers it.
        delta: GetUserReadStatesResponse,
    },
    /// A state changed: the resulting state, with the change's version
    /// (the changes of one call share a version).
    Changed(ReadState),
    /// A pair was deleted, with the deletion's version.
    Deleted(DeletedReadState),
}

impl WatchEvent {
    /// Returns the user the event is about.
    pub fn user_id(&self) -> u64 {
        match self {
            WatchEvent::CatchUp { user_id, .. } => *user_id,
            WatchEvent::Changed(state) => state.user_id,
            WatchEvent::Deleted(deleted) => deleted.user_id,
        }
    }

    /// Returns the user's version once the event is applied: the version
    /// to subscribe the user with next time.
    pub fn version(&self) -> u64 {
        match self {
            WatchEvent::CatchUp { delta, .. } => delta.version,
            WatchEvent::Changed(state) => state.version,
            WatchEvent::Deleted(deleted) => deleted.version,
        }
    }
}

/// Users the [`Watch`] stopped following, and why: their stream failed in
/// a way that resubscribing cannot fix (a missing or refused token,
/// `UNAUTHENTICATED` or `PERMISSION_DENIED`; a request the instance
/// rejects, `INVALID_ARGUMENT`; an instance without the call,
/// `UNIMPLEMENTED`). They get no more events until subscribed again.
/// Every other failure (`UNAVAILABLE`, a lost connection, an overloaded
/// instance, ...) is resumed after a backoff, and never shows here.
#[derive(Debug, thiserror::Error)]
#[error("stopped following users {user_ids:?}: {status}")]
pub struct WatchError {
    user_ids: Vec<u64>,
    status: Box<Status>,
}

impl WatchError {
    /// Returns the users no longer followed.
    pub fn user_ids(&self) -> &[u64] {
        &self.user_ids
    }

    /// Returns the failure, as the stream failed with it.
    pub fn status(&self) -> &Status {
        &self.status
    }
}

/// What a [`Watch`] yields.
pub type WatchItem = Result<WatchEvent, WatchError>;

/// Follows users' read states over the service's change streams; see
/// [`ReadStatesClient::watch`]. Events of one user come in its version
/// order, with no gap and no duplicate, across moves and failures; events
/// of different users interleave. Dropping it closes its streams and ends
/// its background task.
pub struct Watch {
    inbox: Arc<Inbox>,
    events: mpsc::Receiver<WatchItem>,
    task: AbortHandle,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Watch")
            .field("events_waiting", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Follows `user_id` from `since_version`: the last version the
    /// caller's copy holds (the `version` of its last event or catch-up,
    /// or of `GetUserReadStates`), 0 for none. Its first event is a
    /// [`WatchEvent::CatchUp`] from that version. A user already followed
    /// starts over from `since_version` (its events until the new catch-up
    /// are dropped). Returns at once; fails only with `INVALID_ARGUMENT`
    /// for a user id out of range (0, or above `i64::MAX`).
    pub fn subscribe(&self, user_id: u64, since_version: u64) -> Result<(), Status> {
        if user_id == 0 || user_id > MAX_USER_ID {
            return Err(Status::invalid_argument(format!(
                "user_id {user_id} is out of range: ids are 1 to {MAX_USER_ID}"
            )));
        }
        self.inbox.push(user_id, Some(since_version));
        Ok(())
    }

    /// Stops following `user_id` (nothing if it is not followed). Its
    /// events already waiting to be yielded may still come; no later one
    /// does (until it is subscribed again: then its next event is the new
    /// subscription's catch-up).
    pub fn unsubscribe(&self, user_id: u64) {
        self.inbox.push(user_id, None);
    }

    /// Returns the next event of any followed user, waiting for it (for
    /// ever while no user is followed); `None` only if the background
    /// task is gone (its runtime shut down).
    pub async fn next(&mut self) -> Option<WatchItem> {
        self.events.recv().await
    }
}

impl Stream for Watch {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        self.events.poll_recv(context)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caller's subscriptions and unsubscriptions, not yet taken by the
/// task: the last word per user (since version, or `None` to unsubscribe),
/// so it holds at most one entry per user, however fast they come.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Held only to insert or take: never across an await.
    requests: Mutex<HashMap<u64, Option<u64>>>,
    ready: Notify,
}

impl Inbox {
    fn push(&self, user_id: u64, since_version: Option<u64>) {
        // The last word wins; the order between users does not matter.
        self.requests.lock().insert(user_id, since_version);
        self.ready.notify_one();
    }

    /// Takes what the caller asked since the last take.
    pub(crate) fn take(&self) -> HashMap<u64, Option<u64>> {
        std::mem::take(&mut *self.requests.lock())
    }

    /// Waits until the caller asks something (at once if it asked since
    /// the last wait).
    pub(crate) async fn asked(&self) {
        self.ready.notified().await;
    }
}
