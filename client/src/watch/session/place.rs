//! Where users go: each waiting user, once due, is subscribed on its
//! owner's stream (or the fallback stream), opened if need be; a stream
//! counts its users and closes when the last one leaves it.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Link, Place, Session};
use crate::watch::stream::{self, Outgoing, StreamId};

impl Session {
    /// Subscribes the waiting users whose time has come, each at its
    /// owner; none while the slot map is being read again.
    pub(super) fn place_waiting(&mut self) {
        if self.refreshing || self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(&(due, user_id)) = self.waiting.first() {
            if due > now {
                break;
            }
            self.waiting.pop_first();
            let Some(version) = self.users.get(&user_id).map(|user| user.version) else {
                continue;
            };
            let stream = self.stream_for(user_id);
            if let Some(link) = self.streams.get_mut(&stream) {
                link.users += 1;
                link.outgoing.subscribe(user_id, version);
            }
            if let Some(user) = self.users.get_mut(&user_id) {
                user.place = Place::Pending(stream);
            }
        }
    }

    /// Returns when the next waiting user is due; `None` while a refresh
    /// runs (its end wakes the loop) or no one waits.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        if self.refreshing {
            return None;
        }
        self.waiting.first().map(|&(due, _)| due)
    }

    /// Returns the stream to subscribe `user_id` on: its owner's, or the
    /// fallback stream; opens it if need be.
    pub(super) fn stream_for(&mut self, user_id: u64) -> StreamId {
        let router = &self.client.shared().router;
        let (address, channel) = match router.owner(user_id) {
            Some(owner) => (owner.address, owner.channel),
            None => {
                let fallback = self
                    .fallback
                    .as_ref()
                    .and_then(|address| self.by_address.get(address));
                if let Some(&stream) = fallback {
                    return stream;
                }
                // The next given address in turn.
                let seed = router.target(None);
                self.fallback = Some(seed.address.clone());
                (seed.address, seed.channel)
            }
        };
        match self.by_address.get(&address) {
            Some(&stream) => stream,
            None => self.open(address, channel),
        }
    }

    pub(super) fn open(&mut self, address: String, channel: Channel) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        let outgoing = Arc::new(Outgoing::default());
        let task = self.tasks.spawn(stream::run(
            id,
            channel,
            self.shared().authorization.clone(),
            Arc::clone(&outgoing),
            self.inbound_sender.clone(),
        ));
        tracing::debug!(%address, stream = id, "opening a change stream");
        self.by_address.insert(address.clone(), id);
        self.streams.insert(
            id,
            Link {
                address,
                outgoing,
                task,
                users: 0,
            },
        );
        id
    }

    /// Takes no more users on `stream` (its instance is shutting down).
    pub(super) fn retire(&mut self, stream: StreamId) {
        let Some(link) = self.streams.get(&stream) else {
            return;
        };
        if self.by_address.get(&link.address) == Some(&stream) {
            self.by_address.remove(&link.address);
        }
        if self.fallback.as_ref() == Some(&link.address) {
            self.fallback = None;
        }
    }

    /// Closes `stream` (its task ends, and the call with it).
    pub(super) fn close(&mut self, stream: StreamId) {
        self.retire(stream);
        if let Some(link) = self.streams.remove(&stream) {
            link.task.abort();
            tracing::debug!(address = %link.address, stream, "closing a change stream");
        }
    }

    /// Takes `user_id` off its stream (closing the stream if it was the
    /// last user), and makes it wait until its `retry_at` (set first).
    pub(super) fn make_wait(&mut self, user_id: u64) {
        let Some(user) = self.users.get_mut(&user_id) else {
            return;
        };
        let Some(left) = user.place.stream() else {
            return;
        };
        user.place = Place::Waiting;
        self.waiting.insert((user.retry_at, user_id));
        self.leave(left);
    }

    /// Forgets `user_id` wherever it is.
    pub(super) fn forget(&mut self, user_id: u64) {
        let Some(user) = self.users.remove(&user_id) else {
            return;
        };
        match user.place.stream() {
            Some(stream) => self.leave(stream),
            None => {
                self.waiting.remove(&(user.retry_at, user_id));
            }
        }
    }

    /// Counts a user off `stream`; closes it when none is left.
    pub(super) fn leave(&mut self, stream: StreamId) {
        let empty = self.streams.get_mut(&stream).is_some_and(|link| {
            link.users = link.users.saturating_sub(1);
            link.users == 0
        });
        if empty {
            self.close(stream);
        }
    }
}
