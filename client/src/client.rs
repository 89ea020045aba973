//! The client: one typed method per unary call of the service. Each call
//! goes to its user's owner; a fan-out (`add_mentions`, `remove_mentions`)
//! is split by owner, its parts sent in parallel (each retried on its own)
//! and their states merged back in the order of `user_ids`, as the service
//! itself merges a fan-out it forwards.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use tokio::task::AbortHandle;
use tonic::{Request, Response, Status};

use crate::call::{Shared, Stub};
use crate::error::ConnectError;
use crate::proto::{
    AckPinsRequest, AckPinsResponse, AckRequest, AckResponse, AddMentionsRequest,
    AddMentionsResponse, BulkAckRequest, BulkAckResponse, DeleteReadStatesRequest,
    DeleteReadStatesResponse, GetReadStateRequest, GetReadStateResponse, GetUserReadStatesRequest,
    GetUserReadStatesResponse, ReadState, RemoveMentionsRequest, RemoveMentionsResponse,
};
use crate::retry::Rpc;
use crate::routing::{SlotMap, merge};

/// A client of a readstates tier. Cheap to clone: clones share the
/// channels, the slot map and the retry budget. The slot map's background
/// refresh stops when the last clone is dropped.
#[derive(Clone)]
pub struct ReadStatesClient {
    shared: Arc<Shared>,
    /// Each attempt's deadline, sent as `grpc-timeout`.
    deadline: Duration,
    _refresher: Arc<Refresher>,
}

/// Stops the slot map's background refresh when dropped.
pub(crate) struct Refresher(pub(crate) Option<AbortHandle>);

impl Drop for Refresher {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl std::fmt::Debug for ReadStatesClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReadStatesClient")
            .field("deadline", &self.deadline)
            .field("slot_map", &self.shared.router.map().is_some())
            .finish_non_exhaustive()
    }
}

impl ReadStatesClient {
    pub(crate) fn new(shared: Arc<Shared>, refresher: Refresher) -> Self {
        Self {
            deadline: shared.deadline,
            shared,
            _refresher: Arc::new(refresher),
        }
    }

    /// Returns what every clone shares: the router, the policy, the token.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Returns a client sharing this one's channels, map and budget whose
    /// calls have another deadline (per attempt).
    #[must_use]
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            deadline,
            ..self.clone()
        }
    }

    /// Returns the deadline of each attempt of a call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Returns the slot map calls are routed by; `None` when the cluster is
    /// off (or the map cannot be routed by), and calls go round-robin over
    /// the given addresses.
    pub fn slot_map(&self) -> Option<Arc<SlotMap>> {
        self.shared.router.map()
    }

    /// Reads the slot map again now, rather than at the next refresh.
    pub async fn refresh_routing(&self) -> Result<(), ConnectError> {
        self.shared.refresh(None).await
    }

    /// Marks the channel read up to `message_id`, or with `manual` sets it
    /// ("mark as unread"); a manual ack is never retried after a timeout.
    pub async fn ack(&self, request: AckRequest) -> Result<AckResponse, Status> {
        let (rpc, user_id) = (Rpc::of_ack(&request), request.user_id);
        self.unary(rpc, user_id, request, async |mut stub, request| {
            stub.ack(request).await
        })
        .await
    }

    /// Applies many acks of one user.
    pub async fn bulk_ack(&self, request: BulkAckRequest) -> Result<BulkAckResponse, Status> {
        let user_id = request.user_id;
        self.unary(Rpc::BulkAck, user_id, request, async |mut stub, request| {
            stub.bulk_ack(request).await
        })
        .await
    }

    /// Counts a new message's mention for each of `user_ids`; the states
    /// come back in the order of `user_ids` (none with `omit_read_states`).
    pub async fn add_mentions(
        &self,
        request: AddMentionsRequest,
    ) -> Result<AddMentionsResponse, Status> {
        let with_states = !request.omit_read_states;
        let read_states = self
            .fan_out(
                Rpc::AddMentions,
                request,
                |request| &mut request.user_ids,
                with_states,
                async |mut stub, request| stub.add_mentions(request).await,
                |response| response.read_states,
            )
            .await?;
        Ok(AddMentionsResponse { read_states })
    }

    /// Un-counts a message's mention for each of `user_ids`; the states
    /// come back in the order of `user_ids`.
    pub async fn remove_mentions(
        &self,
        request: RemoveMentionsRequest,
    ) -> Result<RemoveMentionsResponse, Status> {
        let read_states = self
            .fan_out(
                Rpc::RemoveMentions,
                request,
                |request| &mut request.user_ids,
                true,
                async |mut stub, request| stub.remove_mentions(request).await,
                |response| response.read_states,
            )
            .await?;
        Ok(RemoveMentionsResponse { read_states })
    }

    /// Records that the user saw the channel's pins up to a time.
    pub async fn ack_pins(&self, request: AckPinsRequest) -> Result<AckPinsResponse, Status> {
        let user_id = request.user_id;
        self.unary(Rpc::AckPins, user_id, request, async |mut stub, request| {
            stub.ack_pins(request).await
        })
        .await
    }

    /// Reads one state.
    pub async fn get_read_state(
        &self,
        request: GetReadStateRequest,
    ) -> Result<GetReadStateResponse, Status> {
        let user_id = request.user_id;
        self.unary(
            Rpc::GetReadState,
            user_id,
            request,
            async |mut stub, request| stub.get_read_state(request).await,
        )
        .await
    }

    /// Reads every state of a user, or the difference since a version.
    pub async fn get_user_read_states(
        &self,
        request: GetUserReadStatesRequest,
    ) -> Result<GetUserReadStatesResponse, Status> {
        let user_id = request.user_id;
        self.unary(
            Rpc::GetUserReadStates,
            user_id,
            request,
            async |mut stub, request| stub.get_user_read_states(request).await,
        )
        .await
    }

    /// Deletes the user's states in these channels.
    pub async fn delete_read_states(
        &self,
        request: DeleteReadStatesRequest,
    ) -> Result<DeleteReadStatesResponse, Status> {
        let user_id = request.user_id;
        self.unary(
            Rpc::DeleteReadStates,
            user_id,
            request,
            async |mut stub, request| stub.delete_read_states(request).await,
        )
        .await
    }

    async fn unary<Req, Resp, Dispatch, Answer>(
        &self,
        rpc: Rpc,
        user_id: u64,
        request: Req,
        send: Dispatch,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Dispatch: Fn(Stub, Request<Req>) -> Answer,
        Answer: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.shared
            .unary(rpc, Some(user_id), &request, self.deadline, send)
            .await
    }

    /// Sends a fan-out: whole to one instance when one owner (or none
    /// known) serves all its users, otherwise split by owner, the parts in
    /// parallel, each routed by its first user, and their states merged in
    /// request order. A failed part fails the call with its status; the
    /// other parts may have been applied, which is safe, as a fan-out is
    /// idempotent per (channel, message, user): retry the whole call.
    async fn fan_out<Req, Resp, Dispatch, Answer>(
        &self,
        rpc: Rpc,
        mut request: Req,
        user_ids: fn(&mut Req) -> &mut Vec<u64>,
        with_states: bool,
        send: Dispatch,
        states: fn(Resp) -> Vec<ReadState>,
    ) -> Result<Vec<ReadState>, Status>
    where
        Req: Clone,
        Dispatch: Fn(Stub, Request<Req>) -> Answer,
        Answer: Future<Output = Result<Response<Resp>, Status>>,
    {
        let parts = match self.shared.router.map() {
            Some(map) => map.split(user_ids(&mut request)),
            None => Vec::new(),
        };
        if parts.len() <= 1 {
            let first = user_ids(&mut request).first().copied();
            let response = self
                .shared
                .unary(rpc, first, &request, self.deadline, &send)
                .await?;
            return Ok(states(response));
        }
        let total = user_ids(&mut request).len();
        let calls = parts.into_iter().map(|part| {
            let mut part_request = request.clone();
            *user_ids(&mut part_request) = part.user_ids;
            let first = user_ids(&mut part_request).first().copied();
            let send = &send;
            async move {
                let response = self
                    .shared
                    .unary(rpc, first, &part_request, self.deadline, send)
                    .await?;
                Ok::<_, Status>((part.positions, states(response)))
            }
        });
        let answers = try_join_all(calls).await?;
        if !with_states {
            return Ok(Vec::new());
        }
        merge(total, answers).map_err(|error| {
            Status::internal(format!(
                "the instances' answers to a split {} cannot be merged: {error}",
                rpc.method()
            ))
        })
    }
}
