//! The gRPC API: validates requests at the edge, runs them on the engine,
//! and maps results and errors to `readstates.v1` messages and gRPC
//! status codes (in one place: `status`).
//!
//! Here: the service, its admission (overload limits) and per-call metrics,
//! and the tonic trait. The calls themselves are in `calls`, fan-outs in
//! `fan_out`, validation in `validate`, the conversion to messages in
//! `convert`, the errors and their status codes in `status`; with
//! `cluster.enabled`, forwarding to a slot's owner in `forward` (over the
//! pooled `channels`), fan-outs split by owner in `split`, and the slot
//! map of `GetRouting` in `slot_map`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::config::LimitsConfig;
use crate::engine::Engine;
use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::overload::QueueDelay;

/// The generated protobuf and gRPC code of `readstates.v1`.
pub mod proto {
    tonic::include_proto!("readstates.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/readstates_descriptor.bin"));
}

use proto::read_states_server::ReadStates;

mod calls;
mod channels;
mod convert;
mod fan_out;
mod forward;
mod latency;
mod slot_map;
mod split;
mod status;
mod validate;
mod watch;

pub use forward::{FORWARDED_BY, Forwarding, parse_grpc_timeout};
pub use slot_map::{SLOT_HASH, slot_map};
pub use status::ApiError;
pub use watch::{WatchStream, Watching};

use forward::{Caller, Remote};
use latency::{CallLatency, Method};

/// The `ReadStates` service.
pub struct ReadStatesService {
    engine: Arc<Engine>,
    limits: LimitsConfig,
    latency: Arc<CallLatency>,
    /// Calls admitted and not yet ended, over all connections.
    in_flight: AtomicUsize,
    /// The workers' queueing delay, if `limits.max_queue_delay_ms` is set.
    queue_delay: Option<Arc<QueueDelay>>,
    /// With `cluster.enabled`: the slots this instance serves, and where
    /// the others' calls go.
    forwarding: Option<Forwarding>,
    /// Change streams; without it `WatchReadStates` is unimplemented.
    watching: Option<Watching>,
}

impl ReadStatesService {
    /// Creates the service over the engine, registering its call latency
    /// with `metrics` (one service per server).
    pub fn new(engine: Arc<Engine>, limits: LimitsConfig, metrics: &Metrics) -> Self {
        Self {
            engine,
            limits,
            latency: CallLatency::register(metrics),
            in_flight: AtomicUsize::new(0),
            queue_delay: None,
            forwarding: None,
            watching: None,
        }
    }

    /// Serves `WatchReadStates` streams.
    pub fn with_watching(mut self, watching: Watching) -> Self {
        self.watching = Some(watching);
        self
    }

    /// Serves only the users of the slots this instance holds, and
    /// forwards the others' calls to their slot's holder.
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding = Some(forwarding);
        self
    }

    /// Returns where `user`'s call runs: `None` here (always, without
    /// `cluster.enabled`), or the owner to forward it to, and the slot.
    /// Checked once, after the request is validated and before it runs: a
    /// call still running when its slot's lease lapses is not stopped.
    fn route(&self, user: UserId, caller: &Caller) -> Result<Option<Remote<'_>>, ApiError> {
        let Some(forwarding) = &self.forwarding else {
            return Ok(None);
        };
        if forwarding.serves(user) {
            return Ok(None);
        }
        let route = forwarding.route(&forwarding.snapshot(), user, caller)?;
        Ok(route.map(|(owner, slot)| Remote {
            forwarding,
            owner,
            slot: Some(slot),
        }))
    }

    /// Splits a call into what a forward needs of it and its message.
    fn caller<T>(&self, request: Request<T>) -> (Caller, T) {
        let (metadata, _extensions, message) = request.into_parts();
        let caller = match &self.forwarding {
            Some(_) => Caller::of(&metadata),
            None => Caller::none(),
        };
        (caller, message)
    }

    /// Refuses calls while `delay` exceeds `limits.max_queue_delay_ms`.
    pub fn with_queue_delay(mut self, delay: Arc<QueueDelay>) -> Self {
        self.queue_delay = Some(delay);
        self
    }

    /// Admits a call unless the server is overloaded: `limits.max_in_flight_calls`
    /// calls are in flight already, or tasks wait longer than
    /// `limits.max_queue_delay_ms` for a worker. The call counts as in
    /// flight until the returned guard is dropped.
    fn admit(&self) -> Result<InFlight<'_>, ApiError> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(&self.in_flight);
        if before >= self.limits.max_in_flight_calls {
            return Err(ApiError::TooManyInFlight {
                limit: self.limits.max_in_flight_calls,
            });
        }
        if let Some(queue_delay) = &self.queue_delay {
            let delay = queue_delay.get();
            if delay.as_millis() > u128::from(self.limits.max_queue_delay_ms) {
                return Err(ApiError::QueueDelay {
                    delay_ms: delay.as_millis(),
                    limit_ms: self.limits.max_queue_delay_ms,
                });
            }
        }
        Ok(guard)
    }

    /// Runs one call in a tracing span, if `admit` lets it in (otherwise it
    /// is refused at once with `RESOURCE_EXHAUSTED`), and records its latency by status code; a
    /// call whose future is dropped before it ends (its client went away,
    /// or its `grpc-timeout` ran out) is recorded as `CANCELLED`.
    async fn observe<T>(
        &self,
        method: Method,
        span: tracing::Span,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let mut record = CallRecord {
            latency: &self.latency,
            method,
            started: Instant::now(),
            code: Code::Cancelled,
        };
        // Mapped in the span: the mapping logs store failures.
        let result = match self.admit() {
            Ok(_admitted) => {
                async { call.await.map_err(Status::from) }
                    .instrument(span)
                    .await
            }
            Err(refused) => Err(Status::from(refused)),
        };
        record.code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        drop(record);
        result.map(Response::new)
    }
}

/// One admitted call; ends its count when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records one call's latency and status code when dropped: at the end of
/// the call, or when the call's future is dropped unfinished.
struct CallRecord<'a> {
    latency: &'a CallLatency,
    method: Method,
    started: Instant,
    /// `CANCELLED` until the call ends.
    code: Code,
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        self.latency
            .record(self.method, self.code, self.started.elapsed());
    }
}

/// Writes the tonic trait: each handler splits off what a forward needs of
/// the call, opens its debug span (with the fields of the request named
/// between the bars), and runs its `*_call` under `observe`.
macro_rules! handlers {
    ($(
        $name:ident($request:ident -> $response:ident) = $method:ident, $call:ident,
        |$message:ident| $($field:ident = $value:expr),*;
    )*) => {
        #[tonic::async_trait]
        impl ReadStates for ReadStatesService {
            $(
                async fn $name(
                    &self,
                    request: Request<proto::$request>,
                ) -> Result<Response<proto::$response>, Status> {
                    let (caller, $message) = self.caller(request);
                    let span = tracing::debug_span!(
                        "rpc",
                        method = stringify!($method)
                        $(, $field = $value)*
                    );
                    // Boxed: the call's state is copied at each layer it
                    // is moved through (the trait's own box included); a
                    // pointer moves cheaper (about 2,000 instructions less
                    // per Ack through gRPC, under callgrind).
                    let call = Box::pin(self.$call($message, &caller));
                    self.observe(Method::$method, span, call).await
                }
            )*

            type WatchReadStatesStream = WatchStream;

            /// Not counted in the calls in flight, nor timed: a stream
            /// lasts as long as its subscriber. See `watch`.
            async fn watch_read_states(
                &self,
                request: Request<tonic::Streaming<proto::WatchRequest>>,
            ) -> Result<Response<WatchStream>, Status> {
                match &self.watching {
                    Some(watching) => watching.start(&self.engine, request),
                    None => Err(ApiError::NotWatching.into()),
                }
            }
        }
    };
}

handlers! {
    ack(AckRequest -> AckResponse) = Ack, ack_call,
        |request| user_id = request.user_id, channel_id = request.channel_id;
    bulk_ack(BulkAckRequest -> BulkAckResponse) = BulkAck, bulk_ack_call,
        |request| user_id = request.user_id, acks = request.acks.len();
    add_mentions(AddMentionsRequest -> AddMentionsResponse) = AddMentions, mentions_call,
        |request| channel_id = request.channel_id, users = request.user_ids.len();
    remove_mentions(RemoveMentionsRequest -> RemoveMentionsResponse) = RemoveMentions,
        mentions_call,
        |request| channel_id = request.channel_id, users = request.user_ids.len();
    ack_pins(AckPinsRequest -> AckPinsResponse) = AckPins, ack_pins_call,
        |request| user_id = request.user_id, channel_id = request.channel_id;
    get_read_state(GetReadStateRequest -> GetReadStateResponse) = GetReadState,
        get_read_state_call,
        |request| user_id = request.user_id, channel_id = request.channel_id;
    get_user_read_states(GetUserReadStatesRequest -> GetUserReadStatesResponse) =
        GetUserReadStates, get_user_read_states_call,
        |request| user_id = request.user_id;
    delete_read_states(DeleteReadStatesRequest -> DeleteReadStatesResponse) = DeleteReadStates,
        delete_read_states_call,
        |request| user_id = request.user_id, channels = request.channel_ids.len();
    get_routing(GetRoutingRequest -> GetRoutingResponse) = GetRouting, get_routing_call,
        |_request|;
}
