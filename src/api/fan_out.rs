//! Fan-outs (AddMentions, RemoveMentions): validated, split by owner when
//! other instances serve some of their users (`split`), run on the engine,
//! and their states answered in the order of the request's users.

use std::future::Future;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::convert::to_proto;
use super::forward::{Caller, by};
use super::proto::read_states_client::ReadStatesClient;
use super::status::ApiError;
use super::validate::{channel_id, mentioned_message_id, parse_user_ids};
use super::{ReadStatesService, proto};
use crate::cache::{StateView, UserTxn};
use crate::ids::{ChannelId, MessageId, UserId};

/// A mention fan-out's request: one change to many users.
pub(super) trait Mentions: Sized {
    type Response: Default;
    /// The request's `(channel_id, message_id, user_ids)`.
    fn target(&self) -> (u64, u64, &[u64]);
    /// Whether the caller asked for no states back (`omit_read_states`:
    /// the mentions are then deferred, see `Engine::defer_mentions`).
    fn omits_states(&self) -> bool;
    /// The change to each user.
    fn change(txn: &mut UserTxn<'_>, channel: ChannelId, message: MessageId) -> StateView;
    /// This request for `user_ids` only (an owner's part).
    fn part(&self, user_ids: Vec<u64>) -> Self;
    /// Sends the request to an owner.
    fn forward(
        client: ReadStatesClient<Channel>,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>>;
    /// The states of an answer.
    fn read_states(response: Self::Response) -> Vec<proto::ReadState>;
    /// The answer of these states.
    fn response(read_states: Vec<proto::ReadState>) -> Self::Response;
}

/// Implements [`Mentions`] for a request with `channel_id`, `message_id`,
/// `user_ids` and the other `$field`s, whose response carries
/// `read_states`: forwarded by the client's `$method`, changing each user
/// with `UserTxn::$change`.
macro_rules! mentions {
    (
        $request:ident => $response:ident, $method:ident, $change:ident,
        |$this:ident| $omits:expr $(, $field:ident)*
    ) => {
        impl Mentions for proto::$request {
            type Response = proto::$response;
            fn target(&self) -> (u64, u64, &[u64]) {
                (self.channel_id, self.message_id, &self.user_ids)
            }
            fn omits_states(&self) -> bool {
                let $this = self;
                $omits
            }
            fn change(txn: &mut UserTxn<'_>, channel: ChannelId, message: MessageId) -> StateView {
                txn.$change(channel, message)
            }
            /// Copies the request's fields but `user_ids` (not cloned:
            /// each owner's part brings its own), listed so that a field
            /// added to the message is a compile error here until it is
            /// passed on.
            fn part(&self, user_ids: Vec<u64>) -> Self {
                Self {
                    user_ids,
                    channel_id: self.channel_id,
                    message_id: self.message_id,
                    $($field: self.$field,)*
                }
            }
            fn forward(
                client: ReadStatesClient<Channel>,
                request: Request<Self>,
            ) -> impl Future<Output = Result<Response<Self::Response>, Status>> {
                by!($method)(client, request)
            }
            fn read_states(response: Self::Response) -> Vec<proto::ReadState> {
                response.read_states
            }
            fn response(read_states: Vec<proto::ReadState>) -> Self::Response {
                Self::Response { read_states }
            }
        }
    };
}

mentions!(AddMentionsRequest => AddMentionsResponse, add_mentions, add_mention,
    |request| request.omit_read_states, omit_read_states);
// RemoveMentions always answers its states.
mentions!(RemoveMentionsRequest => RemoveMentionsResponse, remove_mentions, remove_mention,
    |_request| false);

impl ReadStatesService {
    /// AddMentions or RemoveMentions: validates the request; when other
    /// instances serve some of its users, runs the local part here while
    /// forwarding the others' parts to their owners, and merges the states
    /// back into the request's order (`split`).
    pub(super) async fn mentions_call<Req: Mentions>(
        &self,
        request: Req,
        caller: &Caller,
    ) -> Result<Req::Response, ApiError> {
        let (channel, message, user_ids) = request.target();
        let channel = channel_id("channel_id", channel)?;
        let message = mentioned_message_id("message_id", message)?;
        let users = parse_user_ids(user_ids, self.limits.max_mention_users)?;
        let omit = request.omits_states();
        let Some((forwarding, split)) = self.split(&users, caller)? else {
            let read_states = self
                .mention::<Req>(&users, (channel, message), omit)
                .await?;
            return Ok(Req::response(read_states));
        };
        let local = self.mention::<Req>(&split.local, (channel, message), omit);
        let answers = self
            .run_split((forwarding, &split), caller, local, &request, Req::forward)
            .await?;
        if omit {
            return Ok(Req::Response::default());
        }
        Ok(Req::response(split.merge(&users, answers)?))
    }

    /// Applies a mention fan-out's change to `users` here, or defers it
    /// when the caller wants no states back (`omit`).
    async fn mention<Req: Mentions>(
        &self,
        users: &[UserId],
        (channel, message): (ChannelId, MessageId),
        omit: bool,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        if omit {
            self.defer_mentions(users, channel, message).await?;
            return Ok(Vec::new());
        }
        self.fan_out(users, |txn| Req::change(txn, channel, message))
            .await
    }

    /// Applies one change to each user of a fan-out (see
    /// `Engine::fan_out`); returns one state per user, in the order of
    /// `user_ids`.
    pub(super) async fn fan_out(
        &self,
        user_ids: &[UserId],
        change: impl Fn(&mut UserTxn<'_>) -> StateView + Copy,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        let mut states = vec![proto::ReadState::default(); user_ids.len()];
        self.engine
            .fan_out(user_ids, change, |index, user_id, view| {
                if let Some(state) = states.get_mut(index) {
                    *state = to_proto(user_id, view);
                }
            })
            .await?;
        Ok(states)
    }

    /// Counts a mention of each user without waiting for loads (see
    /// `Engine::defer_mentions`).
    pub(super) async fn defer_mentions(
        &self,
        user_ids: &[UserId],
        channel: ChannelId,
        message: MessageId,
    ) -> Result<(), ApiError> {
        Ok(self
            .engine
            .defer_mentions(user_ids, channel, message)
            .await?)
    }
}
