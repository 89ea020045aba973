//! The gRPC API: validates requests at the edge, runs them against the
//! cache, and maps results and errors to `readstates.v1` messages and gRPC
//! status codes (in one place: `From<ApiError> for Status`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::cache::{Cache, CacheError, Deferral, StateView, UserTxn};
use crate::cluster::{Ownership, Slot};
use crate::config::LimitsConfig;
use crate::ids::{ChannelId, IdError, MessageId, UserId};
use crate::metrics::{Method, Metrics};
use crate::overload::QueueDelay;
use crate::store::{ErrorClass, LoadPriority, Store};

/// The generated protobuf and gRPC code of `readstates.v1`.
pub mod proto {
    tonic::include_proto!("readstates.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/readstates_descriptor.bin"));
}

use proto::read_states_server::ReadStates;

/// How many uncached users of one fan-out are loaded at once.
const FANOUT_LOAD_CONCURRENCY: usize = 32;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or out of range.
    #[error("{field} {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The cache could not serve the request.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A user's slot is not served by this instance (`cluster.enabled`).
    #[error("user_id {user_id} is in slot {slot}, which this instance does not serve")]
    NotOwner { user_id: u64, slot: Slot },
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            // Forwarding to the slot's owner is not built yet.
            ApiError::NotOwner { .. } => Status::unavailable(format!(
                "{error}; call the instance that holds the slot, or retry with backoff while \
                 slots move"
            )),
            ApiError::Cache(CacheError::Backlog { .. }) => Status::unavailable(
                "write backlog full: the store is not keeping up; retry with backoff",
            ),
            // The flusher logs the lease's expiry once; not one log a call.
            ApiError::Cache(CacheError::LeaseExpired(_)) => Status::unavailable(
                "the read-state store has not confirmed new versions; retry with backoff",
            ),
            ApiError::Cache(CacheError::Load(store_error)) => match store_error.class() {
                ErrorClass::Retryable => {
                    tracing::warn!(error = %store_error, "store load failed");
                    Status::unavailable("the read-state store is unavailable; retry with backoff")
                }
                // INTERNAL, not FAILED_PRECONDITION: the fault is in the
                // service's own store (a damaged row, an altered schema, a
                // revoked permission), which nothing the caller does can fix.
                ErrorClass::Permanent => {
                    tracing::error!(error = %store_error, "store load failed, not retryable");
                    Status::internal(
                        "the read-state store failed in a way retrying will not fix; do not \
                         retry: the operator must repair the store",
                    )
                }
            },
        }
    }
}

fn invalid(field: &'static str, error: IdError) -> ApiError {
    ApiError::InvalidArgument {
        field,
        reason: error.to_string(),
    }
}

fn user_id(field: &'static str, raw: u64) -> Result<UserId, ApiError> {
    UserId::new(raw).map_err(|error| invalid(field, error))
}

fn channel_id(field: &'static str, raw: u64) -> Result<ChannelId, ApiError> {
    ChannelId::new(raw).map_err(|error| invalid(field, error))
}

fn message_id(field: &'static str, raw: u64) -> Result<MessageId, ApiError> {
    MessageId::new(raw).map_err(|error| invalid(field, error))
}

fn mentioned_message_id(field: &'static str, raw: u64) -> Result<MessageId, ApiError> {
    MessageId::new_nonzero(raw).map_err(|error| invalid(field, error))
}

fn list_length(field: &'static str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::InvalidArgument {
            field,
            reason: "must not be empty".to_owned(),
        });
    }
    if len > max {
        return Err(ApiError::InvalidArgument {
            field,
            reason: format!("has {len} entries, more than the limit of {max}"),
        });
    }
    Ok(())
}

fn to_proto(user_id: UserId, view: StateView) -> proto::ReadState {
    proto::ReadState {
        user_id: user_id.get(),
        channel_id: view.channel_id.get(),
        last_message_id: view.last_message_id.get(),
        mention_count: view.mention_count,
        last_pin_timestamp_ms: view.last_pin_timestamp_ms,
        updated_at_ms: view.updated_at_ms,
        version: view.version,
    }
}

/// The `ReadStates` service.
pub struct ReadStatesService {
    cache: Arc<Cache>,
    store: Arc<dyn Store>,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    /// Calls admitted and not yet ended, over all connections.
    in_flight: AtomicUsize,
    /// The workers' queueing delay, if `limits.max_queue_delay_ms` is set.
    queue_delay: Option<Arc<QueueDelay>>,
    /// With `cluster.enabled`: the slots whose users this instance serves.
    ownership: Option<Arc<Ownership>>,
}

impl ReadStatesService {
    /// Creates the service over a cache and its store.
    pub fn new(
        cache: Arc<Cache>,
        store: Arc<dyn Store>,
        limits: LimitsConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cache,
            store,
            limits,
            metrics,
            in_flight: AtomicUsize::new(0),
            queue_delay: None,
            ownership: None,
        }
    }

    /// Serves only the users of the slots `ownership` holds; the others'
    /// calls get `UNAVAILABLE` naming the slot.
    pub fn with_ownership(mut self, ownership: Arc<Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Refuses the call unless this instance serves every one of `users`
    /// (always, without `cluster.enabled`). Checked once, after the request
    /// is validated and before it runs: a call still running when its
    /// slot's lease lapses is not stopped.
    fn check_served(&self, users: &[UserId]) -> Result<(), ApiError> {
        let Some(ownership) = &self.ownership else {
            return Ok(());
        };
        match users.iter().find(|user| !ownership.owns(**user)) {
            Some(user) => Err(ApiError::NotOwner {
                user_id: user.get(),
                slot: ownership.slot_of(*user),
            }),
            None => Ok(()),
        }
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

    /// Applies one change to each user of a fan-out: cached users at once
    /// under their partition lock, the others loaded concurrently.
    async fn fan_out(
        &self,
        user_ids: &[UserId],
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        let mut states = Vec::with_capacity(user_ids.len());
        let mut uncached = Vec::new();
        for &user_id in user_ids {
            match self.cache.try_write(user_id, change)? {
                Ok(view) => states.push(to_proto(user_id, view)),
                Err(_) => uncached.push(user_id),
            }
        }
        self.load_fan_out(uncached, change, &mut states).await?;
        Ok(states)
    }

    /// Counts a mention of each user without waiting for loads: users in
    /// memory at once, the others when next loaded (see `cache::inbox`).
    /// Only a user whose inbox is full is loaded now.
    async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), ApiError> {
        let mut full = Vec::new();
        for &user_id in user_ids {
            if self.cache.defer_mention(user_id, channel, message)? == Deferral::Full {
                full.push(user_id);
            }
        }
        if !full.is_empty() {
            let change = |txn: &mut UserTxn<'_>| txn.add_mention(channel, message);
            self.load_fan_out(full, change, &mut Vec::new()).await?;
        }
        Ok(())
    }

    /// Loads the users of a fan-out that are not cached, a bounded number
    /// at once at background priority, and applies the change to each.
    async fn load_fan_out(
        &self,
        uncached: Vec<UserId>,
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
        states: &mut Vec<proto::ReadState>,
    ) -> Result<(), ApiError> {
        let mut pending = uncached.into_iter();
        let mut loads = FuturesUnordered::new();
        loop {
            while loads.len() < FANOUT_LOAD_CONCURRENCY {
                let Some(user_id) = pending.next() else {
                    break;
                };
                let store = self.store.as_ref();
                loads.push(async move {
                    let view = self
                        .cache
                        .write_with_priority(store, user_id, LoadPriority::Background, change)
                        .await?;
                    Ok::<_, ApiError>(to_proto(user_id, view))
                });
            }
            match loads.next().await {
                Some(state) => states.push(state?),
                None => return Ok(()),
            }
        }
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

fn parse_user_ids(raw: &[u64], max: usize) -> Result<Vec<UserId>, ApiError> {
    list_length("user_ids", raw.len(), max)?;
    raw.iter().map(|&raw| user_id("user_ids", raw)).collect()
}

impl ReadStatesService {
    async fn ack_call(&self, request: proto::AckRequest) -> Result<proto::AckResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        let message = message_id("message_id", request.message_id)?;
        self.check_served(&[user])?;
        let view = if request.manual {
            let count = request.mention_count.unwrap_or(0);
            self.cache
                .write(self.store.as_ref(), user, |txn| {
                    txn.manual_ack(channel, message, count)
                })
                .await
        } else {
            self.cache
                .write(self.store.as_ref(), user, |txn| txn.ack(channel, message))
                .await
        }
        .map_err(ApiError::from)?;
        Ok(proto::AckResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    async fn bulk_ack_call(
        &self,
        request: proto::BulkAckRequest,
    ) -> Result<proto::BulkAckResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        list_length("acks", request.acks.len(), self.limits.max_bulk_acks)?;
        let acks = request
            .acks
            .iter()
            .map(|ack| {
                Ok((
                    channel_id("acks.channel_id", ack.channel_id)?,
                    message_id("acks.message_id", ack.message_id)?,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.check_served(&[user])?;
        let read_states = self
            .cache
            .write(self.store.as_ref(), user, |txn| {
                acks.iter()
                    .map(|&(channel, message)| to_proto(user, txn.ack(channel, message)))
                    .collect()
            })
            .await
            .map_err(ApiError::from)?;
        Ok(proto::BulkAckResponse { read_states })
    }

    async fn add_mentions_call(
        &self,
        request: proto::AddMentionsRequest,
    ) -> Result<proto::AddMentionsResponse, Status> {
        let channel = channel_id("channel_id", request.channel_id)?;
        let message = mentioned_message_id("message_id", request.message_id)?;
        let users = parse_user_ids(&request.user_ids, self.limits.max_mention_users)?;
        self.check_served(&users)?;
        if request.omit_read_states {
            self.defer_mentions(&users, channel, message).await?;
            return Ok(proto::AddMentionsResponse::default());
        }
        let read_states = self
            .fan_out(&users, |txn| txn.add_mention(channel, message))
            .await?;
        Ok(proto::AddMentionsResponse { read_states })
    }

    async fn remove_mentions_call(
        &self,
        request: proto::RemoveMentionsRequest,
    ) -> Result<proto::RemoveMentionsResponse, Status> {
        let channel = channel_id("channel_id", request.channel_id)?;
        let message = mentioned_message_id("message_id", request.message_id)?;
        let users = parse_user_ids(&request.user_ids, self.limits.max_mention_users)?;
        self.check_served(&users)?;
        let read_states = self
            .fan_out(&users, |txn| txn.remove_mention(channel, message))
            .await?;
        Ok(proto::RemoveMentionsResponse { read_states })
    }

    async fn ack_pins_call(
        &self,
        request: proto::AckPinsRequest,
    ) -> Result<proto::AckPinsResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        let pin_timestamp_ms = request.pin_timestamp_ms;
        self.check_served(&[user])?;
        let view = self
            .cache
            .write(self.store.as_ref(), user, |txn| {
                txn.ack_pins(channel, pin_timestamp_ms)
            })
            .await
            .map_err(ApiError::from)?;
        Ok(proto::AckPinsResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    async fn get_read_state_call(
        &self,
        request: proto::GetReadStateRequest,
    ) -> Result<proto::GetReadStateResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        self.check_served(&[user])?;
        let view = self
            .cache
            .read(self.store.as_ref(), user, |txn| txn.view(channel))
            .await
            .map_err(ApiError::from)?;
        Ok(proto::GetReadStateResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    async fn get_user_read_states_call(
        &self,
        request: proto::GetUserReadStatesRequest,
    ) -> Result<proto::GetUserReadStatesResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        let since_version = request.since_version.unwrap_or(0);
        self.check_served(&[user])?;
        let (views, version) = self
            .cache
            .read(self.store.as_ref(), user, |txn| {
                let mut views = Vec::new();
                txn.views_since(since_version, &mut views);
                (views, txn.user_version())
            })
            .await
            .map_err(ApiError::from)?;
        let read_states = views.into_iter().map(|view| to_proto(user, view)).collect();
        Ok(proto::GetUserReadStatesResponse {
            read_states,
            version,
        })
    }

    async fn delete_read_states_call(
        &self,
        request: proto::DeleteReadStatesRequest,
    ) -> Result<proto::DeleteReadStatesResponse, Status> {
        let user = user_id("user_id", request.user_id)?;
        list_length(
            "channel_ids",
            request.channel_ids.len(),
            self.limits.max_delete_channels,
        )?;
        let channels = request
            .channel_ids
            .iter()
            .map(|&raw| channel_id("channel_ids", raw))
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.check_served(&[user])?;
        let read_states = self
            .cache
            .write(self.store.as_ref(), user, |txn| {
                channels
                    .iter()
                    .map(|&channel| to_proto(user, txn.delete(channel)))
                    .collect()
            })
            .await
            .map_err(ApiError::from)?;
        Ok(proto::DeleteReadStatesResponse { read_states })
    }
}

#[tonic::async_trait]
impl ReadStates for ReadStatesService {
    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "Ack",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(Method::Ack, span, self.ack_call(request))
            .await
    }

    async fn bulk_ack(
        &self,
        request: Request<proto::BulkAckRequest>,
    ) -> Result<Response<proto::BulkAckResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "BulkAck",
            user_id = request.user_id,
            acks = request.acks.len()
        );
        self.observe(Method::BulkAck, span, self.bulk_ack_call(request))
            .await
    }

    async fn add_mentions(
        &self,
        request: Request<proto::AddMentionsRequest>,
    ) -> Result<Response<proto::AddMentionsResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "AddMentions",
            channel_id = request.channel_id,
            users = request.user_ids.len()
        );
        self.observe(Method::AddMentions, span, self.add_mentions_call(request))
            .await
    }

    async fn remove_mentions(
        &self,
        request: Request<proto::RemoveMentionsRequest>,
    ) -> Result<Response<proto::RemoveMentionsResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "RemoveMentions",
            channel_id = request.channel_id,
            users = request.user_ids.len()
        );
        self.observe(
            Method::RemoveMentions,
            span,
            self.remove_mentions_call(request),
        )
        .await
    }

    async fn ack_pins(
        &self,
        request: Request<proto::AckPinsRequest>,
    ) -> Result<Response<proto::AckPinsResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "AckPins",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(Method::AckPins, span, self.ack_pins_call(request))
            .await
    }

    async fn get_read_state(
        &self,
        request: Request<proto::GetReadStateRequest>,
    ) -> Result<Response<proto::GetReadStateResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "GetReadState",
            user_id = request.user_id,
            channel_id = request.channel_id
        );
        self.observe(
            Method::GetReadState,
            span,
            self.get_read_state_call(request),
        )
        .await
    }

    async fn get_user_read_states(
        &self,
        request: Request<proto::GetUserReadStatesRequest>,
    ) -> Result<Response<proto::GetUserReadStatesResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "GetUserReadStates",
            user_id = request.user_id
        );
        self.observe(
            Method::GetUserReadStates,
            span,
            self.get_user_read_states_call(request),
        )
        .await
    }

    async fn delete_read_states(
        &self,
        request: Request<proto::DeleteReadStatesRequest>,
    ) -> Result<Response<proto::DeleteReadStatesResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "rpc",
            method = "DeleteReadStates",
            user_id = request.user_id,
            channels = request.channel_ids.len()
        );
        self.observe(
            Method::DeleteReadStates,
            span,
            self.delete_read_states_call(request),
        )
        .await
    }
}
