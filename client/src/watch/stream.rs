//! One change stream to one instance: a task that opens it over the
//! instance's pooled channel, with the client's bearer token, sends the
//! subscriptions and unsubscriptions queued for it, and hands every
//! message it receives, then its end, to the session. The stream lives as
//! long as its task: the session aborts the task to close it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::call::Stub;
use crate::proto::{WatchRequest, WatchResponse, WatchSubscription};

/// Users named in one request at most, so that subscribing many users at
/// once stays far below the message size limit.
const USERS_PER_REQUEST: usize = 10_000;

/// A stream's number in its session (never reused).
pub(super) type StreamId = u64;

/// What the session's helper tasks tell it.
pub(super) enum Inbound {
    /// A message the stream received.
    Message(StreamId, WatchResponse),
    /// The stream failed or ended (its last word).
    Failed(StreamId, Status),
    /// A refresh of the slot map ended (whether or not it read one).
    Refreshed,
}

/// The requests not yet sent on a stream: the users to unsubscribe and
/// those to subscribe (with their since versions). Coalesced, so it holds
/// at most two entries per user whatever the rate of requests; unsent
/// unsubscriptions go out first, as the instance applies a request's
/// unsubscriptions before its subscriptions.
#[derive(Default)]
pub(super) struct Outgoing {
    /// Held only to queue or take: never across an await.
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    unsubscribe: HashSet<u64>,
    subscribe: HashMap<u64, u64>,
    /// The stream's task is gone: the requests end.
    closed: bool,
}

impl Outgoing {
    /// Queues a subscription of `user_id` from `since_version`.
    pub(super) fn subscribe(&self, user_id: u64, since_version: u64) {
        self.queue.lock().subscribe.insert(user_id, since_version);
        self.ready.notify_one();
    }

    /// Changes the version of a queued subscription of `user_id`; returns
    /// whether one was queued (not yet sent).
    pub(super) fn resubscribe_unsent(&self, user_id: u64, since_version: u64) -> bool {
        match self.queue.lock().subscribe.get_mut(&user_id) {
            Some(version) => {
                *version = since_version;
                true
            }
            None => false,
        }
    }

    /// Queues an unsubscription of `user_id`, dropping its queued
    /// subscription if any; returns whether there was one (then no answer
    /// to it will come).
    pub(super) fn unsubscribe(&self, user_id: u64) -> bool {
        let unsent = {
            let mut queue = self.queue.lock();
            queue.unsubscribe.insert(user_id);
            queue.subscribe.remove(&user_id).is_some()
        };
        self.ready.notify_one();
        unsent
    }

    /// Ends the requests (and so the call, whose response is gone).
    fn close(&self) {
        self.queue.lock().closed = true;
        self.ready.notify_one();
    }

    /// Takes the next request to send: unsubscriptions first, then
    /// subscriptions, at most [`USERS_PER_REQUEST`] users; `None` when
    /// nothing waits.
    fn take(&self) -> Option<WatchRequest> {
        let mut queue = self.queue.lock();
        let mut request = WatchRequest::default();
        let unsubscribe: Vec<u64> = queue
            .unsubscribe
            .iter()
            .take(USERS_PER_REQUEST)
            .copied()
            .collect();
        for user_id in &unsubscribe {
            queue.unsubscribe.remove(user_id);
        }
        request.unsubscribe = unsubscribe;
        // A subscription goes only once every unsubscription before it
        // has gone (a user may be in both: unsubscribed, then subscribed
        // again from another version).
        if queue.unsubscribe.is_empty() {
            let room = USERS_PER_REQUEST - request.unsubscribe.len();
            let subscribe: Vec<(u64, u64)> = queue
                .subscribe
                .iter()
                .take(room)
                .map(|(&user_id, &version)| (user_id, version))
                .collect();
            for (user_id, _) in &subscribe {
                queue.subscribe.remove(user_id);
            }
            request.subscribe = subscribe
                .into_iter()
                .map(|(user_id, since_version)| WatchSubscription {
                    user_id,
                    since_version,
                })
                .collect();
        }
        (!request.unsubscribe.is_empty() || !request.subscribe.is_empty()).then_some(request)
    }
}

/// The requests of a stream: whatever is queued, as it is queued, until
/// the stream's task is gone. (An instance goes on sending events after
/// the requests end; but the connection goes on sending requests as long
/// as they last, and keeps the call open even with its response dropped.)
fn requests(outgoing: Arc<Outgoing>) -> impl Stream<Item = WatchRequest> + Send + 'static {
    futures_util::stream::unfold(outgoing, |outgoing| async move {
        loop {
            if outgoing.queue.lock().closed {
                return None;
            }
            if let Some(request) = outgoing.take() {
                return Some((request, outgoing));
            }
            outgoing.ready.notified().await;
        }
    })
}

/// Ends a stream's requests when its task ends, aborted or not.
struct CloseOnDrop(Arc<Outgoing>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs stream `id` over `channel` until it fails or ends, or the session
/// is gone; its messages and its end go to `inbound`.
pub(super) async fn run(
    id: StreamId,
    channel: Channel,
    authorization: Option<AsciiMetadataValue>,
    outgoing: Arc<Outgoing>,
    inbound: mpsc::Sender<Inbound>,
) {
    let _close = CloseOnDrop(Arc::clone(&outgoing));
    let mut request = Request::new(requests(outgoing));
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization);
    }
    let end = match Stub::new(channel).watch_read_states(request).await {
        Err(status) => status,
        Ok(response) => {
            let mut messages = response.into_inner();
            loop {
                match messages.message().await {
                    Ok(Some(message)) => {
                        if inbound.send(Inbound::Message(id, message)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break Status::unavailable("the instance ended the change stream"),
                    Err(status) => break status,
                }
            }
        }
    };
    let _ = inbound.send(Inbound::Failed(id, end)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_coalesce_and_unsubscriptions_go_first() {
        let outgoing = Outgoing::default();
        assert!(outgoing.take().is_none());
        outgoing.subscribe(1, 10);
        outgoing.subscribe(2, 20);
        // Subscribed, then unsubscribed before anything was sent.
        assert!(outgoing.unsubscribe(2));
        assert!(!outgoing.unsubscribe(3));
        assert!(outgoing.resubscribe_unsent(1, 11));
        assert!(!outgoing.resubscribe_unsent(4, 1));
        // Unsubscribed, then subscribed again: both go, in that order.
        outgoing.subscribe(3, 30);
        let request = outgoing.take().unwrap();
        let mut unsubscribe = request.unsubscribe.clone();
        unsubscribe.sort_unstable();
        assert_eq!(unsubscribe, vec![2, 3]);
        let mut subscribe: Vec<(u64, u64)> = request
            .subscribe
            .iter()
            .map(|sub| (sub.user_id, sub.since_version))
            .collect();
        subscribe.sort_unstable();
        assert_eq!(subscribe, vec![(1, 11), (3, 30)]);
        assert!(outgoing.take().is_none());
    }

    #[test]
    fn a_large_batch_goes_in_several_requests_in_order() {
        let outgoing = Outgoing::default();
        let count = USERS_PER_REQUEST as u64 + 5;
        for user_id in 1..=count {
            outgoing.unsubscribe(user_id);
            outgoing.subscribe(user_id, user_id);
        }
        let first = outgoing.take().unwrap();
        assert_eq!(first.unsubscribe.len(), USERS_PER_REQUEST);
        assert!(first.subscribe.is_empty(), "unsubscriptions first");
        let second = outgoing.take().unwrap();
        assert_eq!(second.unsubscribe.len(), 5);
        assert_eq!(second.subscribe.len(), USERS_PER_REQUEST - 5);
        let third = outgoing.take().unwrap();
        assert_eq!((third.unsubscribe.len(), third.subscribe.len()), (0, 10));
        assert!(outgoing.take().is_none());
    }
}
