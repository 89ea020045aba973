//! The fake's change streams: each subscription is recorded (user and
//! since version) and answered with the next scripted end (a reason, and
//! optionally a new slot map to serve from then on, as an instance whose
//! slot moved would), or not at all once the script is spent.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use readstates::api::proto::watch_ended::Reason;
use readstates::api::proto::watch_event::Event;
use readstates::api::proto::{
    GetRoutingResponse, WatchEnded, WatchEvent, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Script;

/// The events of a fake's change stream.
pub type Events = ReceiverStream<Result<WatchResponse, Status>>;

/// How a fake's change streams answer subscriptions.
#[derive(Default)]
pub struct WatchScript {
    ends: Mutex<VecDeque<(Reason, Option<GetRoutingResponse>)>>,
    subscriptions: Mutex<Vec<(u64, u64)>>,
}

impl WatchScript {
    /// Queues the ends of the next subscriptions: each with its reason,
    /// and a slot map to serve from then on, if given.
    pub fn then(&self, ends: impl IntoIterator<Item = (Reason, Option<GetRoutingResponse>)>) {
        self.ends.lock().extend(ends);
    }

    /// Returns the subscriptions received: (user, since version).
    pub fn subscriptions(&self) -> Vec<(u64, u64)> {
        self.subscriptions.lock().clone()
    }
}

/// Serves one change stream over `requests`.
pub fn serve(script: Arc<Script>, mut requests: Streaming<WatchRequest>) -> Events {
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(request)) = requests.message().await {
            for subscription in request.subscribe {
                let (user_id, since) = (subscription.user_id, subscription.since_version);
                script.watch.subscriptions.lock().push((user_id, since));
                let Some((reason, map)) = script.watch.ends.lock().pop_front() else {
                    continue;
                };
                if let Some(map) = map {
                    script.set_routing(map);
                }
                let ended = WatchEnded {
                    reason: reason as i32,
                    resume_version: since,
                    message: format!("scripted: {reason:?}"),
                };
                let event = WatchEvent {
                    user_id,
                    event: Some(Event::Ended(ended)),
                };
                let message = WatchResponse {
                    events: vec![event],
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
