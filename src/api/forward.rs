//! Forwarding (ARCHITECTURE.md §3.3): with `cluster.enabled`, a
//! call for a user whose slot this instance does not serve goes to the
//! slot's holder, as the routing table names it, once: the forwarded call
//! carries a marker, and an instance that receives a marked call for a
//! slot it does not serve refuses it with `UNAVAILABLE` instead of
//! forwarding again, so stale tables cannot make a loop. An unknown
//! holder, or a table naming this instance for a slot it does not serve
//! (its lease lapsed here), also gets `UNAVAILABLE` naming the slot.
//!
//! A forward carries the caller's `authorization` metadata (instances share
//! the tokens file) and its remaining deadline as `grpc-timeout`; without
//! one, `cluster.forward_timeout_ms` bounds it. The owner's answer, error
//! status included, goes back to the caller as it is; a forward that
//! reached no owner gets `UNAVAILABLE`, one that ran out of time
//! `DEADLINE_EXCEEDED` (the caller's deadline) or `UNAVAILABLE` (the
//! default bound).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::channels::Channels;
use super::proto::read_states_client::ReadStatesClient;
use super::status::ApiError;
use crate::auth::AuthError;
use crate::cluster::{
    Cluster, ForwardResult, Forwards, Owner, Ownership, Routing, RoutingSnapshot, Slot,
};
use crate::config::ClusterConfig;
use crate::ids::UserId;

/// The metadata key that marks a forwarded call; its value is the id of
/// the instance that forwarded it.
pub const FORWARDED_BY: &str = "readstates-forwarded-by";

/// Returns the forward of a call by one method of the client: a closure
/// for `Forwarding::forward`, `by!(ack)`.
macro_rules! by {
    ($method:ident) => {
        |mut client: $crate::api::proto::read_states_client::ReadStatesClient<
            tonic::transport::Channel,
        >,
         request| async move { client.$method(request).await }
    };
}
pub(super) use by;

/// What a forward needs of the call it continues.
pub struct Caller {
    /// When this instance received the call.
    received: Instant,
    /// The caller's `grpc-timeout`, if it sent one.
    timeout: Option<Duration>,
    authorization: Option<AsciiMetadataValue>,
    /// Whether another instance forwarded the call here.
    forwarded: bool,
}

impl Caller {
    /// A call that is never forwarded (`cluster.enabled` is off).
    pub fn none() -> Self {
        Self {
            received: Instant::now(),
            timeout: None,
            authorization: None,
            forwarded: false,
        }
    }

    /// Reads the call's metadata.
    pub fn of(metadata: &MetadataMap) -> Self {
        Self {
            received: Instant::now(),
            timeout: metadata
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok())
                .and_then(parse_grpc_timeout),
            authorization: metadata.get("authorization").cloned(),
            forwarded: metadata.contains_key(FORWARDED_BY),
        }
    }

    /// Returns how long a forward may take from now, and whether that is
    /// the caller's deadline (rather than `default`).
    fn budget(&self, default: Duration) -> (Duration, bool) {
        match self.timeout {
            Some(timeout) => (timeout.saturating_sub(self.received.elapsed()), true),
            None => (default, false),
        }
    }
}

/// Returns a `grpc-timeout` value as a duration: at most 8 digits and a
/// unit (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC HTTP/2 protocol says.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3_600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// This instance's part of the cluster, as the request path sees it.
pub struct Forwarding {
    ownership: Arc<Ownership>,
    routing: Arc<Routing>,
    instance_id: AsciiMetadataValue,
    channels: Channels,
    default_timeout: Duration,
    forwards: Arc<Forwards>,
}

impl Forwarding {
    /// Sets up forwarding for `cluster`; reads the `[cluster]` TLS files.
    pub async fn new(
        cluster: &Cluster,
        config: &ClusterConfig,
        forwards: Arc<Forwards>,
    ) -> Result<Self, AuthError> {
        let instance_id = cluster.instance_id().parse().map_err(|_| {
            AuthError::Tls("cluster.instance_id cannot be sent as gRPC metadata".to_owned())
        })?;
        Ok(Self {
            ownership: cluster.ownership(),
            routing: cluster.routing(),
            instance_id,
            channels: Channels::from_config(config).await?,
            default_timeout: config.forward_timeout(),
            forwards,
        })
    }

    /// Returns the routing table's current snapshot.
    pub fn snapshot(&self) -> Arc<RoutingSnapshot> {
        self.routing.snapshot()
    }

    /// Returns whether this instance serves `user` now.
    pub fn serves(&self, user: UserId) -> bool {
        self.ownership.owns(user)
    }

    /// Returns the instance `user`'s call goes to, and the user's slot
    /// (`None`: here), with `snapshot` of the routing table. Refuses a
    /// forwarded call for a slot not served here, and a slot whose holder
    /// is unknown or is this instance.
    pub fn route(
        &self,
        snapshot: &RoutingSnapshot,
        user: UserId,
        caller: &Caller,
    ) -> Result<Option<(Arc<Owner>, Slot)>, ApiError> {
        let slot = self.ownership.slot_of(user);
        if self.ownership.owns_slot(slot) {
            return Ok(None);
        }
        let user_id = user.get();
        if caller.forwarded {
            return Err(ApiError::ForwardedToNonOwner { user_id, slot });
        }
        match snapshot.owner(slot) {
            None => Err(ApiError::UnknownOwner { user_id, slot }),
            Some(owner) if owner.instance_id.as_bytes() == self.instance_id.as_bytes() => {
                Err(ApiError::NotOwner { user_id, slot })
            }
            Some(owner) => Ok(Some((Arc::clone(owner), slot))),
        }
    }
}

/// A call (or a fan-out's part) to forward: the owner it goes to, and the
/// slot, when the call is one user's.
pub struct Remote<'a> {
    pub forwarding: &'a Forwarding,
    pub owner: Arc<Owner>,
    /// Names the slot in errors.
    pub slot: Option<Slot>,
}

impl Remote<'_> {
    /// Sends `request` to the owner with `call` (one method of the
    /// client), on behalf of `caller`.
    pub async fn forward<Req, Resp, Fut>(
        &self,
        caller: &Caller,
        request: Req,
        call: impl FnOnce(ReadStatesClient<Channel>, Request<Req>) -> Fut,
    ) -> Result<Resp, ApiError>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let Self {
            forwarding,
            owner,
            slot,
        } = self;
        let started = Instant::now();
        let (budget, callers_deadline) = caller.budget(forwarding.default_timeout);
        // Formatted only for an error.
        let target = || match slot {
            Some(slot) => format!(
                "the holder of slot {slot} ({} at {})",
                owner.instance_id, owner.address
            ),
            None => format!("{} at {}", owner.instance_id, owner.address),
        };
        let client = forwarding.channels.client(&owner.address)?;
        let mut request = Request::new(request);
        request.set_timeout(budget);
        let metadata = request.metadata_mut();
        metadata.insert(FORWARDED_BY, forwarding.instance_id.clone());
        if let Some(authorization) = &caller.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        let (result, answer) = match tokio::time::timeout(budget, call(client, request)).await {
            Ok(Ok(response)) => (ForwardResult::Ok, Ok(response.into_inner())),
            Ok(Err(status)) if is_transport_failure(&status) => (
                ForwardResult::Unreachable,
                Err(ApiError::Unreachable {
                    target: target(),
                    reason: status.message().to_owned(),
                }),
            ),
            // The owner's own answer, passed through.
            Ok(Err(status)) => (ForwardResult::Error, Err(ApiError::Owner(status))),
            Err(_elapsed) => (
                ForwardResult::Timeout,
                Err(ApiError::ForwardTimedOut {
                    target: target(),
                    budget_ms: budget.as_millis(),
                    callers_deadline,
                }),
            ),
        };
        forwarding.forwards.record(result, started.elapsed());
        answer
    }
}

/// Returns whether `status` is the client's own (no connection, a broken
/// one), not an answer from the owner.
fn is_transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let cases = [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2H", Some(Duration::from_secs(7_200))),
            ("3M", Some(Duration::from_secs(180))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("10n", Some(Duration::from_nanos(10))),
            ("123456789m", None),
            ("S", None),
            ("5s", None),
            ("-5S", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value), expected, "{value:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_deadline_counts_down_from_its_arrival() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "2S".parse().unwrap());
        let caller = Caller::of(&metadata);
        assert!(!caller.forwarded);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            caller.budget(Duration::from_secs(9)),
            (Duration::from_millis(1_500), true)
        );
        let mut metadata = MetadataMap::new();
        metadata.insert(FORWARDED_BY, "a".parse().unwrap());
        let caller = Caller::of(&metadata);
        assert!(caller.forwarded);
        assert_eq!(
            caller.budget(Duration::from_secs(9)),
            (Duration::from_secs(9), false)
        );
    }
}
