//! The readstates gRPC service through the project's own client,
//! `readstates-client`, as a load target (`--client smart`).
//!
//! Where [`GrpcTarget`](crate::grpc_target::GrpcTarget) spreads calls
//! round-robin over the given addresses (so that, with the cluster on, an
//! instance forwards every call whose user it does not own), this target
//! sends each call straight to its user's owner as the client's slot map
//! (`GetRouting`) names it, and splits a mention fan-out by owner, its parts
//! sent in parallel and counted here as one call. With the cluster off the
//! client falls back to round-robin over the addresses.
//!
//! The client never retries here ([`RetryPolicy::never`]): every failed call
//! is reported as its gRPC code, as the plain target reports it, so errors
//! count the same under either client. A call refused because its slot
//! moved still makes the client read the map again (in the background), so
//! the calls after it go to the new owner.
//!
//! One client holds one HTTP/2 connection per instance it calls (opened on
//! first use). To stay close to the plain target's `--connections`, this
//! target builds `ceil(connections / addresses)` clients, each with its own
//! connections and slot map, and spreads calls over them round-robin.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use readstates_client::proto::{
    AckPinsRequest, AckRequest, AddMentionsRequest, BulkAckRequest, ChannelAck,
    GetUserReadStatesRequest, RemoveMentionsRequest,
};
use readstates_client::{ConnectError, ReadStatesClient, RetryPolicy};

use crate::workload::Op;

/// Each call's deadline when `--call-timeout` is not given: the plain
/// target's per-request timeout (the smart client always sends one).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Calls go round-robin over several clients, each routing by owner.
pub struct SmartTarget {
    clients: Vec<ReadStatesClient>,
    next: AtomicUsize,
    omit_mention_states: bool,
    /// HTTP/2 connections in all, as far as known at connect time.
    connections: usize,
    /// Instances in the slot map; `None` with the cluster off.
    owners: Option<usize>,
}

impl SmartTarget {
    /// Builds clients over `addr` (comma-separated addresses of one tier),
    /// retrying for up to `wait` while the servers start. With
    /// `omit_mention_states`, AddMentions asks for no states back;
    /// `call_timeout` is each call's deadline (default 10 s).
    pub async fn connect(
        addr: &str,
        connections: usize,
        wait: Duration,
        omit_mention_states: bool,
        call_timeout: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let addresses: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!addresses.is_empty(), "no address in --addr {addr:?}");
        let builder = ReadStatesClient::builder()
            .addresses(addresses.iter().cloned())
            .deadline(call_timeout.unwrap_or(DEFAULT_DEADLINE))
            .retry(RetryPolicy::never())
            .connect_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + wait;
        let count = connections.div_ceil(addresses.len()).max(1);
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            let client = loop {
                match builder.clone().connect().await {
                    Ok(client) => break client,
                    // No instance answered GetRouting yet: try again shortly.
                    Err(ConnectError::GetRoutingFailed { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => {
                        return Err(error)
                            .with_context(|| format!("connecting the smart client to {addr}"));
                    }
                }
            };
            clients.push(client);
        }
        // Each client connects to every given address and every owner it
        // routes to.
        let map = clients.first().and_then(ReadStatesClient::slot_map);
        let mut instances: BTreeSet<&str> = addresses
            .iter()
            .map(|address| {
                address
                    .split_once("://")
                    .map_or(address.as_str(), |(_, bare)| bare)
            })
            .collect();
        if let Some(map) = &map {
            instances.extend(map.owners().iter().map(|owner| owner.address.as_str()));
        }
        let connections = clients.len() * instances.len();
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            omit_mention_states,
            connections,
            owners: map.map(|map| map.owners().len()),
        })
    }

    /// HTTP/2 connections in all (each client's to every given address and
    /// to every owner in its slot map when connected).
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// What the clients route by, for the log.
    pub fn describe(&self) -> String {
        let routing = match self.owners {
            Some(owners) => format!("by owner, {owners} instance(s) in the slot map"),
            None => "round-robin (the cluster is off)".to_owned(),
        };
        format!(
            "{} client(s), {} connection(s), routing {routing}, no retries",
            self.clients.len(),
            self.connections
        )
    }

    fn client(&self) -> &ReadStatesClient {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[index]
    }

    /// Acknowledges every one of `channels` for `user` at `message` in one
    /// BulkAck (for `warm`); returns how many states the server answered
    /// with.
    pub async fn bulk_ack(
        &self,
        user: u64,
        channels: &[u64],
        message: u64,
    ) -> Result<usize, tonic::Status> {
        let acks = channels
            .iter()
            .map(|&channel_id| ChannelAck {
                channel_id,
                message_id: message,
            })
            .collect();
        let response = self
            .client()
            .bulk_ack(BulkAckRequest {
                user_id: user,
                acks,
            })
            .await?;
        Ok(response.read_states.len())
    }

    /// Issues one operation; an error is reported as its gRPC code.
    pub async fn execute(&self, op: &Op) -> Result<(), String> {
        let client = self.client();
        let result = match op {
            Op::Connect { user } => client
                .get_user_read_states(GetUserReadStatesRequest {
                    user_id: *user,
                    since_version: None,
                })
                .await
                .map(drop),
            Op::Ack {
                user,
                channel,
                message,
            } => client
                .ack(AckRequest {
                    user_id: *user,
                    channel_id: *channel,
                    message_id: *message,
                    manual: false,
                    mention_count: None,
                })
                .await
                .map(drop),
            Op::AddMentions {
                channel,
                message,
                users,
            } => client
                .add_mentions(AddMentionsRequest {
                    channel_id: *channel,
                    message_id: *message,
                    user_ids: users.to_vec(),
                    omit_read_states: self.omit_mention_states,
                })
                .await
                .map(drop),
            Op::RemoveMentions {
                channel,
                message,
                users,
            } => client
                .remove_mentions(RemoveMentionsRequest {
                    channel_id: *channel,
                    message_id: *message,
                    user_ids: users.to_vec(),
                })
                .await
                .map(drop),
            Op::AckPins {
                user,
                channel,
                pin_timestamp_ms,
            } => client
                .ack_pins(AckPinsRequest {
                    user_id: *user,
                    channel_id: *channel,
                    pin_timestamp_ms: *pin_timestamp_ms,
                })
                .await
                .map(drop),
        };
        // The code, then (after a tab) the message, which the report keeps
        // one sample of per code.
        result.map_err(|status| format!("grpc:{:?}\t{}", status.code(), status.message()))
    }
}
