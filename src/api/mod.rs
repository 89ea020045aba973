//! The gRPC API: validates requests at the edge, runs them on the engine,
//! and maps results and errors to `readstates.v1` messages and gRPC
//! status codes (in one place: `From<ApiError> for Status`).
//!
//! Here: the service, its admission (overload limits) and per-call metrics,
//! and the tonic trait. The calls themselves are in `calls`, fan-outs in
//! `fan_out`, validation and the error mapping in `validate`; with
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
use crate::metrics::{Method, Metrics};
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
mod fan_out;
mod forward;
mod slot_map;
mod split;
mod validate;

pub use forward::{FORWARDED_BY, Forwarding, parse_grpc_timeout};
pub use slot_map::{SLOT_HASH, slot_map};
pub use validate::ApiError;

use forward::{Caller, Remote};

/// The `ReadStates` service.
pub struct ReadStatesService {
    engine: Arc<Engine>,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    /// Calls admitted and not yet ended, over all connections.
    in_flight: AtomicUsize,
    /// The workers' queueing delay, if `limits.max_queue_delay_ms` is set.
    queue_delay: Option<Arc<QueueDelay>>,
    /// With `cluster.enabled`: the slots this instance serves, and where
    /// the others' calls go.
    forwarding: Option<Forwarding>,
}

impl ReadStatesService {
    /// Creates the service over the engine.
    pub fn new(engine: Arc<Engine>, limits: LimitsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            limits,
            metrics,
            in_flight: AtomicUsize::new(0),
            queue_delay: None,
            forwarding: None,
        }
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
            slot,
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
    fn admit(&self) -> Result<InFlight<'_>, Status> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(&self.in_flight);
        if before >= self.limits.max_in_flight_calls {
            return Err(Status::resource_exhausted(format!(
                "overloaded: {} calls already in flight (limits.max_in_flight_calls); retry with backoff",
                self.limits.max_in_flight_calls
            )));
        }
        if let Some(queue_delay) = &self.queue_delay {
            let delay = queue_delay.get();
            if delay.as_millis() > u128::from(self.limits.max_queue_delay_ms) {
                return Err(Status::resource_exhausted(format!(
                    "overloaded: tasks wait {} ms for a worker (limits.max_queue_delay_ms = {}); retry with backoff",
                    delay.as_millis(),
                    self.limits.max_queue_delay_ms
                )));
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
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let mut record = CallRecord {
            metrics: &self.metrics,
            method,
            started: Instant::now(),
            code: Code::Cancelled,
        };
        let result = match self.admit() {
            Ok(_admitted) => call.instrument(span).await,
            Err(refused) => Err(refused),
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
    metrics: &'a Metrics,
    method: Method,
    started: Instant,
    /// `CANCELLED` until the call ends.
    code: Code,
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        self.metrics
            .record_rpc(self.method, self.code, self.started.elapsed());
    }
}

#[tonic::async_trait]
impl ReadStates for ReadStatesService {
    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "Ack",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(Method::Ack, span, self.ack_call(request, &caller))
            .await
    }

    async fn bulk_ack(
        &self,
        request: Request<proto::BulkAckRequest>,
    ) -> Result<Response<proto::BulkAckResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "BulkAck",
            user_id = request.user_id,
            acks = request.acks.len()
        );
        self.observe(Method::BulkAck, span, self.bulk_ack_call(request, &caller))
            .await
    }

    async fn add_mentions(
        &self,
        request: Request<proto::AddMentionsRequest>,
    ) -> Result<Response<proto::AddMentionsResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "AddMentions",
            channel_id = request.channel_id,
            users = request.user_ids.len()
        );
        self.observe(
            Method::AddMentions,
            span,
            self.add_mentions_call(request, &caller),
        )
        .await
    }

    async fn remove_mentions(
        &self,
        request: Request<proto::RemoveMentionsRequest>,
    ) -> Result<Response<proto::RemoveMentionsResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "RemoveMentions",
            channel_id = request.channel_id,
            users = request.user_ids.len()
        );
        self.observe(
            Method::RemoveMentions,
            span,
            self.remove_mentions_call(request, &caller),
        )
        .await
    }

    async fn ack_pins(
        &self,
        request: Request<proto::AckPinsRequest>,
    ) -> Result<Response<proto::AckPinsResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "AckPins",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(Method::AckPins, span, self.ack_pins_call(request, &caller))
            .await
    }

    async fn get_read_state(
        &self,
        request: Request<proto::GetReadStateRequest>,
    ) -> Result<Response<proto::GetReadStateResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "GetReadState",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(
            Method::GetReadState,
            span,
            self.get_read_state_call(request, &caller),
        )
        .await
    }

    async fn get_user_read_states(
        &self,
        request: Request<proto::GetUserReadStatesRequest>,
    ) -> Result<Response<proto::GetUserReadStatesResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "GetUserReadStates",
            user_id = request.user_id
        );
        self.observe(
            Method::GetUserReadStates,
            span,
            self.get_user_read_states_call(request, &caller),
        )
        .await
    }

    async fn delete_read_states(
        &self,
        request: Request<proto::DeleteReadStatesRequest>,
    ) -> Result<Response<proto::DeleteReadStatesResponse>, Status> {
        let (caller, request) = self.caller(request);
        let span = tracing::debug_span!(
            "rpc",
            method = "DeleteReadStates",
            user_id = request.user_id,
            channels = request.channel_ids.len()
        );
        self.observe(
            Method::DeleteReadStates,
            span,
            self.delete_read_states_call(request, &caller),
        )
        .await
    }

    async fn get_routing(
        &self,
        _request: Request<proto::GetRoutingRequest>,
    ) -> Result<Response<proto::GetRoutingResponse>, Status> {
        let span = tracing::debug_span!("rpc", method = "GetRouting");
        self.observe(Method::GetRouting, span, async { self.get_routing_call() })
            .await
    }
}
