//! A client of the readstates gRPC service that sends each user's calls
//! straight to the instance that owns the user, and retries what is safe
//! to retry.
//!
//! A readstates tier is one or more instances over one keyspace. With
//! `cluster.enabled`, users are divided into slots, each served by one
//! instance; any instance accepts any call and forwards it to the owner,
//! which costs a hop. This client reads the slot map (`GetRouting`) when it
//! connects, routes each call to its user's owner, splits a fan-out by
//! owner, and reads the map again every few seconds and whenever a call
//! says that a slot moved. With the cluster off (`GetRouting` answers
//! `FAILED_PRECONDITION`) every instance serves every user, and calls go
//! round-robin over the given addresses. A call sent on a stale map still
//! works: the instance forwards it to the owner (the client never marks a
//! call `readstates-forwarded-by`, which only instances set), or refuses
//! it with `UNAVAILABLE` naming the slot, which makes the client read the
//! map again at once, and retry the call if that is safe (below).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use readstates_client::proto::{AckRequest, AddMentionsRequest};
//! use readstates_client::{ReadStatesClient, RetryPolicy};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ReadStatesClient::builder()
//!     .addresses(["10.0.0.1:50051", "10.0.0.2:50051"])
//!     .bearer_token("orders-0123456789abcdef")
//!     .deadline(Duration::from_millis(500))
//!     .retry(RetryPolicy::default().max_attempts(4))
//!     .connect()
//!     .await?;
//! let acked = client
//!     .ack(AckRequest {
//!         user_id: 80_351_110_224_678_912,
//!         channel_id: 7,
//!         message_id: 1_000,
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("{:?}", acked.read_state);
//! // One state per user, in the order of user_ids, whichever instances
//! // own them.
//! let mentioned = client
//!     .add_mentions(AddMentionsRequest {
//!         channel_id: 7,
//!         message_id: 1_001,
//!         user_ids: vec![1, 2, 3],
//!         omit_read_states: false,
//!     })
//!     .await?;
//! assert_eq!(mentioned.read_states.len(), 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Retries
//!
//! A call that timed out or lost its connection may have been applied, so
//! it is sent again only if applying it twice is the same as applying it
//! once:
//!
//! | RPC | safe to retry? | why |
//! |---|---|---|
//! | `Ack` | yes | `last_message_id = max(old, new)`: a second apply changes nothing |
//! | `Ack` with `manual = true` | **no** | sets exact values ("mark as unread"): if a change lands between the attempts, the retry undoes it |
//! | `BulkAck` | yes | a list of non-manual acks, each a maximum |
//! | `AddMentions` | yes | idempotent per (channel, message, user): a mention counts once |
//! | `RemoveMentions` | yes | idempotent per (channel, message, user): a count never goes below zero |
//! | `AckPins` | yes | `last_pin_timestamp_ms = max(old, new)` |
//! | `GetReadState` | yes | a read |
//! | `GetUserReadStates` | yes | a read |
//! | `DeleteReadStates` | yes | a deleted pair deleted again stays deleted |
//! | `GetRouting` | yes | a read |
//!
//! Which failures are retried ([`retry::classify`]):
//! - `UNAVAILABLE` and `DEADLINE_EXCEEDED` (an instance down or moving a
//!   slot, a lost connection, a timeout): safe calls only. A connection
//!   that fails under a call (tonic then says `UNKNOWN`, `CANCELLED` or
//!   `INTERNAL`, with the transport error as the source) counts as
//!   `UNAVAILABLE`, and an instance's own timeout (`CANCELLED` "Timeout
//!   expired") as `DEADLINE_EXCEEDED`; both also make the client read the
//!   slot map again, as the instance may have gone.
//! - `RESOURCE_EXHAUSTED` (an overloaded instance, which refuses a call
//!   before running it): every call, after at least
//!   [`RetryPolicy::overload_backoff`], never in a tight loop.
//! - Anything else is returned as it is: a retry would get the same answer.
//!
//! Each retry waits an exponential backoff with full jitter, a call makes at
//! most [`RetryPolicy::max_attempts`] attempts, and every retry spends a
//! token of the client-wide [`RetryBudget`](retry::RetryBudget), which only
//! successful calls refill: a tier that is down sees each call about once.
//! A fan-out whose part failed may have been applied in part; it is safe to
//! retry whole, as it is idempotent.
//!
//! # Modules
//! - [`routing`]: the slot of a user, the slot map, splitting a fan-out by
//!   owner and merging the answers (pure logic).
//! - [`retry`]: which calls and failures are retried, backoff and budget
//!   (pure logic).
//! - `builder`, `client`: the public client; `call`: one call's attempts;
//!   `router`: where each attempt goes; `pool`: one channel per instance.
//! - `watch`: the change stream ([`Watch`]): its session, which places
//!   users, and its streams.
//!
//! # Following changes
//!
//! [`ReadStatesClient::watch`] follows users over the change stream
//! (`WatchReadStates`), doing the README's gateway recipe for the caller.
//! [`Watch::subscribe`] a user with the version its copy holds (0 for
//! none) and [`Watch::unsubscribe`] it, both at once, without waiting;
//! [`Watch::next`] (or the [`Watch`] as a `Stream`) yields its events:
//! first a [`WatchEvent::CatchUp`] (the difference since that version, or
//! a reset), then every [`WatchEvent::Changed`] and
//! [`WatchEvent::Deleted`] in the user's version order.
//!
//! ```no_run
//! use std::collections::{BTreeMap, HashMap};
//!
//! use readstates_client::proto::ReadState;
//! use readstates_client::{ReadStatesClient, WatchEvent};
//!
//! # async fn example(client: ReadStatesClient) -> Result<(), Box<dyn std::error::Error>> {
//! // Each user's states by channel, and the version they are at.
//! let mut copies: HashMap<u64, (u64, BTreeMap<u64, ReadState>)> = HashMap::new();
//! let mut watch = client.watch();
//! watch.subscribe(80_351_110_224_678_912, 0)?;
//! while let Some(item) = watch.next().await {
//!     let event = item?; // users the watch no longer follows, and why
//!     let (version, states) = copies.entry(event.user_id()).or_default();
//!     match &event {
//!         WatchEvent::CatchUp { delta, .. } => {
//!             if delta.reset {
//!                 states.clear();
//!             }
//!             for state in &delta.read_states {
//!                 states.insert(state.channel_id, *state);
//!             }
//!             for deleted in &delta.deleted {
//!                 states.remove(&deleted.channel_id);
//!             }
//!         }
//!         WatchEvent::Changed(state) => {
//!             states.insert(state.channel_id, *state);
//!         }
//!         WatchEvent::Deleted(deleted) => {
//!             states.remove(&deleted.channel_id);
//!         }
//!     }
//!     *version = event.version(); // to subscribe with next time
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Each user is subscribed at its owner in the slot map, over one stream
//! per owner, opened on the client's channel to it (with its bearer token
//! and TLS); with the cluster off, all go over one stream to one of the
//! given addresses. The watch remembers the last version it delivered for
//! each user, and when a user's events stop, subscribes it again with that
//! version, so that the caller sees one sequence per user, with nothing
//! missing and nothing twice (a resubscription yields a new catch-up: the
//! difference since that version):
//! - an `ended` with `MOVED` or `NOT_SERVED` (the user's slot is elsewhere)
//!   or `SHUTTING_DOWN`: after reading the slot map again, at the owner it
//!   names; with `UNAVAILABLE` (the user could not be loaded): at the same
//!   owner, after a backoff. The `ended` itself is not yielded.
//! - a stream that fails (`UNAVAILABLE` at a shutdown, a lost connection,
//!   an overloaded instance): each of its users, after a backoff and a new
//!   read of the slot map, wherever it names.
//! - a stream refused for good (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
//!   `INVALID_ARGUMENT`, `UNIMPLEMENTED`, ...): its users are no longer
//!   followed, and a [`WatchError`] naming them is yielded, once.
//!
//! Backoffs follow the client's [`RetryPolicy`] (its ceilings and jitter;
//! resubscriptions spend no retry budget), counted per user since its last
//! catch-up. Memory is bounded: at most 1,024 events wait for the caller,
//! after which the watch stops reading its streams, and the instances,
//! which never wait for a subscriber, let users fall behind and catch them
//! up later (a new catch-up). Dropping the [`Watch`] closes its streams.

#![warn(missing_docs)]

mod builder;
mod call;
mod client;
mod error;
mod pool;
pub mod retry;
mod router;
pub mod routing;
mod watch;

/// The service's messages and its generated gRPC client, from
/// `proto/readstates/v1/readstates.proto`.
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("readstates.v1");
}

pub use builder::{ClientBuilder, Tls};
pub use client::ReadStatesClient;
pub use error::ConnectError;
pub use retry::RetryPolicy;
pub use routing::SlotMap;
/// The gRPC crate this client is built on: its `Status` and `Code` are
/// what calls fail with.
pub use tonic;
pub use tonic::{Code, Status};
pub use watch::{Watch, WatchError, WatchEvent, WatchItem};
