//! What the streams send the session: each event is delivered to the
//! caller only if it belongs to the user's current subscription and moves
//! its version forward; an `ended` or a failed stream makes its users wait
//! to be subscribed again, with the last version delivered, after a
//! backoff and, where the owner may have changed, a refresh of the slot
//! map. A stream failure that resubscribing cannot fix stops following
//! its users, and the caller is told.

use tokio::time::Instant;
use tonic::{Code, Status};

use super::{Gone, Place, Session};
use crate::proto::watch_ended::Reason;
use crate::proto::watch_event::Event;
use crate::proto::{
    DeletedReadState, GetUserReadStatesResponse, ReadState, WatchEnded, WatchResponse,
};
use crate::retry::{Failure, classify};
use crate::watch::stream::{Inbound, StreamId};
use crate::watch::{WatchError, WatchEvent};

/// Returns whether a stream that failed with `status` would fail the same
/// way however often its users are subscribed again: a refused or missing
/// token, a request the instance rejects, a call it does not have.
pub(crate) fn is_final(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists
    )
}

impl Session {
    /// Handles what a stream or a refresh sent; fails once the caller is
    /// gone.
    pub(super) async fn receive(&mut self, inbound: Inbound) -> Result<(), Gone> {
        match inbound {
            Inbound::Message(stream, message) => self.message(stream, message).await,
            Inbound::Failed(stream, status) => self.failed(stream, status).await,
            Inbound::Refreshed => {
                self.refreshed();
                Ok(())
            }
        }
    }

    async fn message(&mut self, stream: StreamId, message: WatchResponse) -> Result<(), Gone> {
        if !self.streams.contains_key(&stream) {
            return Ok(());
        }
        self.message += 1;
        for event in message.events {
            let user_id = event.user_id;
            let delivered = match event.event {
                Some(Event::CatchUp(delta)) => self.caught_up(stream, user_id, delta),
                Some(Event::Changed(state)) => self
                    .advances(stream, user_id, state.version)
                    .then_some(WatchEvent::Changed(ReadState { user_id, ..state })),
                Some(Event::Deleted(deleted)) => self
                    .advances(stream, user_id, deleted.version)
                    .then_some(WatchEvent::Deleted(DeletedReadState { user_id, ..deleted })),
                Some(Event::Ended(ended)) => {
                    self.ended(stream, user_id, &ended);
                    None
                }
                None => None,
            };
            if let Some(event) = delivered {
                self.events.send(Ok(event)).await.map_err(|_| Gone)?;
            }
        }
        Ok(())
    }

    /// Handles a catch-up: the answer to a pending subscription, or a live
    /// user's catch-up after it fell behind.
    fn caught_up(
        &mut self,
        stream: StreamId,
        user_id: u64,
        delta: GetUserReadStatesResponse,
    ) -> Option<WatchEvent> {
        match self.users.get(&user_id)?.place {
            Place::Pending(on) if on == stream => {
                if !self.answered(stream, user_id, true) {
                    return None;
                }
            }
            Place::Live(on) if on == stream => {}
            // An earlier subscription's, on a stream it left.
            _ => return None,
        }
        let user = self.users.get_mut(&user_id)?;
        user.place = Place::Live(stream);
        user.failures = 0;
        user.version = delta.version;
        user.change_message = 0;
        Some(WatchEvent::CatchUp { user_id, delta })
    }

    /// Handles the answer to `user_id`'s pending subscription on `stream`
    /// (its catch-up when `registered`, or its end); returns whether the
    /// subscription goes on, false when the caller unsubscribed or
    /// restarted the user meanwhile.
    fn answered(&mut self, stream: StreamId, user_id: u64, registered: bool) -> bool {
        let Some(user) = self.users.get_mut(&user_id) else {
            return false;
        };
        if !user.followed {
            self.forget(user_id);
            return false;
        }
        let Some(version) = user.restart.take() else {
            return true;
        };
        user.version = version;
        user.change_message = 0;
        user.retry_at = Instant::now();
        if registered && let Some(link) = self.streams.get(&stream) {
            link.outgoing.unsubscribe(user_id);
        }
        self.make_wait(user_id);
        false
    }

    /// Returns whether a change of `user_id` at `version` on `stream`
    /// follows what was delivered, and if so takes it as delivered.
    fn advances(&mut self, stream: StreamId, user_id: u64, version: u64) -> bool {
        let message = self.message;
        let Some(user) = self.users.get_mut(&user_id) else {
            return false;
        };
        if user.place != Place::Live(stream) {
            return false;
        }
        // The changes of one call share a version, in one message.
        let next =
            version > user.version || (version == user.version && user.change_message == message);
        if next {
            user.version = version;
            user.change_message = message;
        }
        next
    }

    /// Handles the end of `user_id`'s subscription on `stream`: it is
    /// subscribed again, with the last version delivered, after a backoff,
    /// and at its owner as the slot map says after reading it again when
    /// the reason says the owner is elsewhere.
    fn ended(&mut self, stream: StreamId, user_id: u64, ended: &WatchEnded) {
        let Some(place) = self.users.get(&user_id).map(|user| user.place) else {
            return;
        };
        match place {
            Place::Pending(on) if on == stream => {
                if !self.answered(stream, user_id, false) {
                    return;
                }
            }
            Place::Live(on) if on == stream => {}
            _ => return,
        }
        let reason = Reason::try_from(ended.reason).unwrap_or(Reason::Unspecified);
        tracing::debug!(
            user_id,
            ?reason,
            resume_version = ended.resume_version,
            detail = %ended.message,
            "a subscription ended; subscribing again"
        );
        self.wait_after_failure(user_id, Failure::Transient);
        match reason {
            Reason::Moved | Reason::NotServed => self.refresh_routing(),
            Reason::ShuttingDown => {
                self.retire(stream);
                self.refresh_routing();
            }
            // The user could not be loaded: the same owner, later.
            Reason::Unavailable | Reason::Unspecified => {}
        }
    }

    /// Makes `user_id` wait for its next subscription after one more
    /// failure in a row.
    fn wait_after_failure(&mut self, user_id: u64, failure: Failure) {
        let Some(failures) = self.users.get(&user_id).map(|user| user.failures + 1) else {
            return;
        };
        let retry_at = Instant::now() + self.backoff(failures, failure);
        if let Some(user) = self.users.get_mut(&user_id) {
            user.failures = failures;
            user.retry_at = retry_at;
        }
        self.make_wait(user_id);
    }

    /// Handles the end of a whole stream: its users are subscribed again
    /// elsewhere (wherever the slot map, read again, says), or, when the
    /// failure is final, no longer followed, and the caller told so.
    async fn failed(&mut self, stream: StreamId, status: Status) -> Result<(), Gone> {
        let Some(link) = self.streams.get(&stream) else {
            return Ok(());
        };
        let address = link.address.clone();
        let users: Vec<u64> = self
            .users
            .iter()
            .filter(|(_, user)| user.place.stream() == Some(stream))
            .map(|(&user_id, _)| user_id)
            .collect();
        let final_failure = is_final(&status);
        if final_failure {
            tracing::warn!(%address, code = ?status.code(), detail = status.message(), users = users.len(), "a change stream failed for good; its users are no longer followed");
        } else {
            tracing::debug!(%address, code = ?status.code(), detail = status.message(), users = users.len(), "a change stream failed; subscribing its users again");
        }
        let failure = match classify(&status) {
            Failure::Overloaded => Failure::Overloaded,
            Failure::Transient | Failure::Final => Failure::Transient,
        };
        let mut dropped = Vec::new();
        for user_id in users {
            if !self.answered(stream, user_id, false) {
                continue;
            }
            if final_failure {
                self.forget(user_id);
                dropped.push(user_id);
            } else {
                self.wait_after_failure(user_id, failure);
            }
        }
        // Its users are gone from it, and so it is closed; in case it had
        // none (a failure as it opened), close it here.
        self.close(stream);
        if !final_failure {
            self.refresh_routing();
        }
        if dropped.is_empty() {
            return Ok(());
        }
        dropped.sort_unstable();
        let error = WatchError {
            user_ids: dropped,
            status: Box::new(status),
        };
        self.events.send(Err(error)).await.map_err(|_| Gone)
    }
}
