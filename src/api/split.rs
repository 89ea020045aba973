//! Fan-outs (AddMentions, RemoveMentions) whose users are served by
//! several instances: the users are split by owner, the local part runs
//! here while the other parts are forwarded to their owners in parallel,
//! and the states are merged back into the order of the request.
//!
//! A part that fails fails the call, with the first failure (the local
//! part's, then the owners' in the order of their first user); the other
//! parts may have been applied. Both calls are idempotent per (channel,
//! message, user), so the caller retries the whole call.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::{join, join_all};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::{Caller, Forwarding, Remote, by};
use super::proto::read_states_client::ReadStatesClient;
use super::status::ApiError;
use super::{ReadStatesService, proto};
use crate::cache::UserTxn;
use crate::cluster::Owner;
use crate::ids::{ChannelId, MessageId, UserId};

/// The users of a fan-out, split by owner.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The users served here, in request order.
    pub local: Vec<UserId>,
    /// Each other owner (in the order of its first user) with its users'
    /// ids, in request order.
    pub remote: Vec<(Arc<Owner>, Vec<u64>)>,
    /// Per user of the request: 0 for the local part, i + 1 for
    /// `remote[i]`.
    parts: Vec<usize>,
}

impl Split {
    /// Splits `users` by `route`, which returns a user's owner (`None`:
    /// here) or refuses it; the first refusal refuses the call. Returns
    /// `None` when every user is served here.
    pub fn new(
        users: &[UserId],
        mut route: impl FnMut(UserId) -> Result<Option<Arc<Owner>>, ApiError>,
    ) -> Result<Option<Self>, ApiError> {
        let mut split: Option<Self> = None;
        for (index, &user) in users.iter().enumerate() {
            let owner = route(user)?;
            if owner.is_none() && split.is_none() {
                continue;
            }
            // The first user served elsewhere: the users before it are
            // local.
            let split = split.get_or_insert_with(|| Self {
                local: users[..index].to_vec(),
                remote: Vec::new(),
                parts: vec![0; index],
            });
            let part = match owner {
                None => {
                    split.local.push(user);
                    0
                }
                Some(owner) => match split.remote.iter().position(|(known, _)| *known == owner) {
                    Some(position) => {
                        split.remote[position].1.push(user.get());
                        position + 1
                    }
                    None => {
                        split.remote.push((owner, vec![user.get()]));
                        split.remote.len()
                    }
                },
            };
            split.parts.push(part);
        }
        Ok(split)
    }

    /// Merges the parts' states (the local part's first, then each
    /// owner's, each in its own request order) into the request's order,
    /// checking that each part answered one state per user, for that user.
    pub fn merge(
        &self,
        users: &[UserId],
        answers: Vec<Vec<proto::ReadState>>,
    ) -> Result<Vec<proto::ReadState>, ApiError> {
        let mut answers: Vec<_> = answers.into_iter().map(Vec::into_iter).collect();
        let mut merged = Vec::with_capacity(users.len());
        for (&user, &part) in users.iter().zip(&self.parts) {
            match answers.get_mut(part).and_then(Iterator::next) {
                Some(state) if state.user_id == user.get() => merged.push(state),
                _ => return Err(self.mismatch(part)),
            }
        }
        if let Some(part) = answers.iter().position(|rest| rest.len() > 0) {
            return Err(self.mismatch(part));
        }
        Ok(merged)
    }

    fn mismatch(&self, part: usize) -> ApiError {
        let part = match part.checked_sub(1).and_then(|index| self.remote.get(index)) {
            Some((owner, _)) => format!("instance {} at {}", owner.instance_id, owner.address),
            None => "this instance".to_owned(),
        };
        ApiError::SplitMismatch { part }
    }
}

impl ReadStatesService {
    /// Splits a fan-out's users by owner; `None` when all are served here
    /// (always, without `cluster.enabled`).
    pub(super) fn split(
        &self,
        users: &[UserId],
        caller: &Caller,
    ) -> Result<Option<(&Forwarding, Split)>, ApiError> {
        let Some(forwarding) = &self.forwarding else {
            return Ok(None);
        };
        let snapshot = forwarding.snapshot();
        let split = Split::new(users, |user| {
            Ok(forwarding
                .route(&snapshot, user, caller)?
                .map(|(owner, _slot)| owner))
        })?;
        Ok(split.map(|split| (forwarding, split)))
    }

    /// Runs the local part and the owners' parts at once: `local` unless
    /// no user is served here, and for each owner the request `part` of
    /// its users, forwarded by `call`; returns the parts' states, the
    /// local part's first.
    async fn run_split<Req, Resp, Fut>(
        &self,
        (forwarding, split): (&Forwarding, &Split),
        caller: &Caller,
        local: impl Future<Output = Result<Vec<proto::ReadState>, ApiError>>,
        part: impl Fn(Vec<u64>) -> Req,
        call: impl FnOnce(ReadStatesClient<Channel>, Request<Req>) -> Fut + Copy,
        read_states: impl Fn(Resp) -> Vec<proto::ReadState> + Copy,
    ) -> Result<Vec<Vec<proto::ReadState>>, ApiError>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let local = async {
            if split.local.is_empty() {
                return Ok(Vec::new());
            }
            local.await
        };
        let remotes = join_all(split.remote.iter().map(|(owner, user_ids)| {
            let remote = Remote {
                forwarding,
                owner: Arc::clone(owner),
                slot: None,
            };
            let part = part(user_ids.clone());
            async move {
                let response = remote.forward(caller, part, call).await?;
                Ok::<_, ApiError>(read_states(response))
            }
        }));
        let (local, remotes) = join(local, remotes).await;
        let mut answers = Vec::with_capacity(1 + remotes.len());
        answers.push(local?);
        for answer in remotes {
            answers.push(answer?);
        }
        Ok(answers)
    }

    /// AddMentions over several owners.
    pub(super) async fn add_mentions_across(
        &self,
        (forwarding, split): (&Forwarding, Split),
        users: &[UserId],
        (channel, message): (ChannelId, MessageId),
        request: proto::AddMentionsRequest,
        caller: &Caller,
    ) -> Result<proto::AddMentionsResponse, ApiError> {
        let omit = request.omit_read_states;
        let local = async {
            if omit {
                self.defer_mentions(&split.local, channel, message).await?;
                return Ok(Vec::new());
            }
            self.fan_out(&split.local, |txn: &mut UserTxn<'_>| {
                txn.add_mention(channel, message)
            })
            .await
        };
        let part = |user_ids| proto::AddMentionsRequest {
            user_ids,
            ..request.clone()
        };
        let answers = self
            .run_split(
                (forwarding, &split),
                caller,
                local,
                part,
                by!(add_mentions),
                |response: proto::AddMentionsResponse| response.read_states,
            )
            .await?;
        if omit {
            return Ok(proto::AddMentionsResponse::default());
        }
        let read_states = split.merge(users, answers)?;
        Ok(proto::AddMentionsResponse { read_states })
    }

    /// RemoveMentions over several owners.
    pub(super) async fn remove_mentions_across(
        &self,
        (forwarding, split): (&Forwarding, Split),
        users: &[UserId],
        (channel, message): (ChannelId, MessageId),
        request: proto::RemoveMentionsRequest,
        caller: &Caller,
    ) -> Result<proto::RemoveMentionsResponse, ApiError> {
        let local = self.fan_out(&split.local, |txn: &mut UserTxn<'_>| {
            txn.remove_mention(channel, message)
        });
        let part = |user_ids| proto::RemoveMentionsRequest {
            user_ids,
            ..request.clone()
        };
        let answers = self
            .run_split(
                (forwarding, &split),
                caller,
                local,
                part,
                by!(remove_mentions),
                |response: proto::RemoveMentionsResponse| response.read_states,
            )
            .await?;
        let read_states = split.merge(users, answers)?;
        Ok(proto::RemoveMentionsResponse { read_states })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Arc<Owner> {
        Arc::new(Owner {
            instance_id: id.to_owned(),
            address: format!("{id}:50051"),
        })
    }

    fn users(ids: &[u64]) -> Vec<UserId> {
        ids.iter().map(|&id| UserId::new(id).unwrap()).collect()
    }

    fn state(user_id: u64, mention_count: u32) -> proto::ReadState {
        proto::ReadState {
            user_id,
            channel_id: 7,
            mention_count,
            ..proto::ReadState::default()
        }
    }

    /// Routes users 1..=9 here, 10..=19 to b, 20.. to c.
    fn route(
        b: &Arc<Owner>,
        c: &Arc<Owner>,
    ) -> impl FnMut(UserId) -> Result<Option<Arc<Owner>>, ApiError> {
        move |user| {
            Ok(match user.get() {
                0..10 => None,
                10..20 => Some(Arc::clone(b)),
                _ => Some(Arc::clone(c)),
            })
        }
    }

    #[test]
    fn users_are_split_by_owner_in_request_order() {
        let (b, c) = (owner("b"), owner("c"));
        assert_eq!(Split::new(&users(&[1, 2, 3]), route(&b, &c)).unwrap(), None);
        let request = users(&[1, 20, 10, 2, 21, 11, 3]);
        let split = Split::new(&request, route(&b, &c)).unwrap().unwrap();
        assert_eq!(split.local, users(&[1, 2, 3]));
        assert_eq!(split.remote, vec![(c, vec![20, 21]), (b, vec![10, 11])]);
        assert_eq!(split.parts, vec![0, 1, 2, 0, 1, 2, 0]);
        let refused = Split::new(&users(&[1, 10, 5]), |user| match user.get() {
            5 => Err(ApiError::UnknownOwner {
                user_id: 5,
                slot: 3,
            }),
            _ => Ok(None),
        });
        assert!(matches!(
            refused,
            Err(ApiError::UnknownOwner { slot: 3, .. })
        ));
    }

    #[test]
    fn answers_merge_back_into_request_order() {
        let (b, c) = (owner("b"), owner("c"));
        let request = users(&[20, 1, 10, 20, 2]);
        let split = Split::new(&request, route(&b, &c)).unwrap().unwrap();
        let answers = vec![
            vec![state(1, 1), state(2, 2)],
            vec![state(20, 3), state(20, 4)],
            vec![state(10, 5)],
        ];
        let merged = split.merge(&request, answers).unwrap();
        let order: Vec<(u64, u32)> = merged
            .iter()
            .map(|state| (state.user_id, state.mention_count))
            .collect();
        assert_eq!(order, vec![(20, 3), (1, 1), (10, 5), (20, 4), (2, 2)]);
    }

    #[test]
    fn a_part_answering_too_few_too_many_or_other_users_is_an_error() {
        let (b, c) = (owner("b"), owner("c"));
        let request = users(&[1, 10, 11]);
        let split = Split::new(&request, route(&b, &c)).unwrap().unwrap();
        let bad = [
            vec![vec![state(1, 0)], vec![state(10, 0)]],
            vec![
                vec![state(1, 0)],
                vec![state(10, 0), state(11, 0), state(11, 0)],
            ],
            vec![vec![state(1, 0)], vec![state(11, 0), state(10, 0)]],
            vec![vec![], vec![state(10, 0), state(11, 0)]],
        ];
        for answers in bad {
            let error = Status::from(split.merge(&request, answers.clone()).unwrap_err());
            assert_eq!(error.code(), tonic::Code::Internal, "{answers:?}");
        }
        let good = vec![vec![state(1, 0)], vec![state(10, 0), state(11, 0)]];
        assert_eq!(split.merge(&request, good).unwrap().len(), 3);
    }
}
