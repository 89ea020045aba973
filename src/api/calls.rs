//! The calls of `readstates.v1.ReadStates`: each validates its request,
//! forwards it to its users' owner if this instance does not serve them
//! (`cluster.enabled`), and otherwise runs it on the engine.

use super::convert::{delta_to_proto, to_proto};
use super::forward::by;
use super::status::ApiError;
use super::validate::{channel_id, list_length, message_id, user_id};
use super::{Caller, ReadStatesService, proto};

impl ReadStatesService {
    pub(super) async fn ack_call(
        &self,
        request: proto::AckRequest,
        caller: &Caller,
    ) -> Result<proto::AckResponse, ApiError> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        let message = message_id("message_id", request.message_id)?;
        if let Some(remote) = self.route(user, caller)? {
            return remote.forward(caller, request, by!(ack)).await;
        }
        let view = if request.manual {
            let count = request.mention_count.unwrap_or(0);
            self.engine
                .write(user, |txn| txn.manual_ack(channel, message, count))
                .await?
        } else {
            self.engine
                .write(user, |txn| txn.ack(channel, message))
                .await?
        };
        Ok(proto::AckResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    pub(super) async fn bulk_ack_call(
        &self,
        request: proto::BulkAckRequest,
        caller: &Caller,
    ) -> Result<proto::BulkAckResponse, ApiError> {
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
        if let Some(remote) = self.route(user, caller)? {
            return remote.forward(caller, request, by!(bulk_ack)).await;
        }
        let read_states = self
            .engine
            .write(user, |txn| {
                acks.iter()
                    .map(|&(channel, message)| to_proto(user, txn.ack(channel, message)))
                    .collect()
            })
            .await?;
        Ok(proto::BulkAckResponse { read_states })
    }

    pub(super) async fn ack_pins_call(
        &self,
        request: proto::AckPinsRequest,
        caller: &Caller,
    ) -> Result<proto::AckPinsResponse, ApiError> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        let pin_timestamp_ms = request.pin_timestamp_ms;
        if let Some(remote) = self.route(user, caller)? {
            return remote.forward(caller, request, by!(ack_pins)).await;
        }
        let view = self
            .engine
            .write(user, |txn| txn.ack_pins(channel, pin_timestamp_ms))
            .await?;
        Ok(proto::AckPinsResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    pub(super) async fn get_read_state_call(
        &self,
        request: proto::GetReadStateRequest,
        caller: &Caller,
    ) -> Result<proto::GetReadStateResponse, ApiError> {
        let user = user_id("user_id", request.user_id)?;
        let channel = channel_id("channel_id", request.channel_id)?;
        if let Some(remote) = self.route(user, caller)? {
            return remote.forward(caller, request, by!(get_read_state)).await;
        }
        let view = self.engine.read(user, |txn| txn.view(channel)).await?;
        Ok(proto::GetReadStateResponse {
            read_state: Some(to_proto(user, view)),
        })
    }

    pub(super) async fn get_user_read_states_call(
        &self,
        request: proto::GetUserReadStatesRequest,
        caller: &Caller,
    ) -> Result<proto::GetUserReadStatesResponse, ApiError> {
        let user = user_id("user_id", request.user_id)?;
        let since_version = request.since_version.unwrap_or(0);
        if let Some(remote) = self.route(user, caller)? {
            return remote
                .forward(caller, request, by!(get_user_read_states))
                .await;
        }
        // The limits are read once the user is loaded: a purge after its
        // load only raises them.
        let engine = &self.engine;
        let delta = engine
            .read(user, |txn| txn.delta(since_version, engine.delta_limits()))
            .await?;
        Ok(delta_to_proto(user, delta))
    }

    pub(super) async fn delete_read_states_call(
        &self,
        request: proto::DeleteReadStatesRequest,
        caller: &Caller,
    ) -> Result<proto::DeleteReadStatesResponse, ApiError> {
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
        if let Some(remote) = self.route(user, caller)? {
            return remote
                .forward(caller, request, by!(delete_read_states))
                .await;
        }
        let read_states = self
            .engine
            .write(user, |txn| {
                channels
                    .iter()
                    .map(|&channel| to_proto(user, txn.delete(channel)))
                    .collect()
            })
            .await?;
        Ok(proto::DeleteReadStatesResponse { read_states })
    }
}
