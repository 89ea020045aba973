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

use super::fan_out::Mentions;
use super::forward::{Caller, Forwarding, Remote};
use super::proto::read_states_client::ReadStatesClient;
use super::status::ApiError;
use super::{ReadStatesService, proto};
use crate::cluster::Owner;
use crate::ids::UserId;

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
    /// no user is served here, and for each owner `request`'s part of its
    /// users, forwarded by `call`; returns the parts' states, the local
    /// part's first.
    pub(super) async fn run_split<Req: Mentions, Fut>(
        &self,
        (forwarding, split): (&Forwarding, &Split),
        caller: &Caller,
        local: impl Future<Output = Result<Vec<proto::ReadState>, ApiError>>,
        request: &Req,
        call: impl FnOnce(ReadStatesClient<Channel>, Request<Req>) -> Fut + Copy,
    ) -> Result<Vec<Vec<proto::ReadState>>, ApiError>
    where
        Fut: Future<Output = Result<Response<Req::Response>, Status>>,
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
            let part = request.part(user_ids.clone());
            async move {
                let response = remote.forward(caller, part, call).await?;
                Ok::<_, ApiError>(Req::read_states(response))
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
}
