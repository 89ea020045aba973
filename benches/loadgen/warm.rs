//! `warm`: creates, before a measured run, every read state the workload can
//! touch, so that the run's acks update existing states (as production's
//! mostly do) instead of inserting new ones.
//!
//! Each warmed user gets a state in every channel of its guild
//! ([`Workload::channels_of`], the same mapping the generator draws from),
//! acknowledged at a new message id from the workload's clock. The clock
//! starts at the current time, so a later `run`'s acks take higher ids and
//! move these states forward. Against a gRPC target that is one BulkAck per
//! user. Against Redis it is one script call per user that leaves the hash
//! exactly as the ack script would, or, for a user that does not exist yet,
//! a `RESTORE` of its guild's template: the same hash, made once per guild
//! (every member of a guild then shares its message id), since building a
//! hash of hundreds of fields field by field costs Redis over a millisecond
//! (see `redis_target.rs`). Users are warmed with a bounded number of
//! requests in flight, spread over the connections; any error stops the
//! warm-up with that error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::driver::Target;
use crate::workload::Workload;

/// The most acks sent in one BulkAck: the server's default
/// `limits.max_bulk_acks`. Guilds of more channels take several calls.
const MAX_BULK_ACKS: usize = 1_000;

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a warm-up did.
#[derive(Debug, Clone, Copy)]
pub struct Warmed {
    pub users: u64,
    pub states: u64,
    /// Redis: users created from their guild's template.
    pub restored: u64,
    pub elapsed: Duration,
}

/// What warming one user did.
struct UserWarmed {
    states: u64,
    restored: bool,
}

/// Warms users `1..=users` (clamped to the workload's users) with at most
/// `in_flight` requests outstanding.
pub async fn warm(
    target: &Target,
    workload: &Workload,
    users: u64,
    in_flight: usize,
) -> anyhow::Result<Warmed> {
    let users = users.min(workload.users());
    let start = Instant::now();
    let templates = match target {
        Target::Redis(redis) => {
            // Users 1..=guilds are one per guild: one template each.
            let mut templates = HashMap::new();
            for user in 1..=users {
                let guild = workload.guild_of(user);
                if templates.contains_key(&guild) {
                    break;
                }
                let channels: Vec<u64> = workload.channels_of(user).collect();
                let payload = redis
                    .warm_template(&channels, workload.next_message())
                    .await?;
                templates.insert(guild, payload);
            }
            templates
        }
        Target::Grpc(_) | Target::Smart(_) => HashMap::new(),
    };
    let templates = &templates;
    let mut next_progress = start + PROGRESS_EVERY;
    let warmed = stream::iter(1..=users)
        .map(|user| warm_user(target, workload, templates, user))
        .buffer_unordered(in_flight.max(1))
        .try_fold(
            Warmed {
                users: 0,
                states: 0,
                restored: 0,
                elapsed: Duration::ZERO,
            },
            |mut warmed, user| {
                warmed.users += 1;
                warmed.states += user.states;
                warmed.restored += u64::from(user.restored);
                if Instant::now() >= next_progress {
                    next_progress += PROGRESS_EVERY;
                    eprintln!(
                        "  {} of {users} users ({:.0}%), {} states, {:.0} s",
                        warmed.users,
                        warmed.users as f64 * 100.0 / users.max(1) as f64,
                        warmed.states,
                        start.elapsed().as_secs_f64()
                    );
                }
                async move { anyhow::Ok(warmed) }
            },
        )
        .await?;
    Ok(Warmed {
        elapsed: start.elapsed(),
        ..warmed
    })
}

/// Acks all of `user`'s channels at one new id.
async fn warm_user(
    target: &Target,
    workload: &Workload,
    templates: &HashMap<u64, Vec<u8>>,
    user: u64,
) -> anyhow::Result<UserWarmed> {
    let channels: Vec<u64> = workload.channels_of(user).collect();
    match target {
        Target::Grpc(grpc) => {
            let message = workload.next_message();
            warm_grpc_user(user, &channels, async |chunk| {
                grpc.bulk_ack(user, chunk, message).await
            })
            .await
        }
        Target::Smart(smart) => {
            let message = workload.next_message();
            warm_grpc_user(user, &channels, async |chunk| {
                smart.bulk_ack(user, chunk, message).await
            })
            .await
        }
        Target::Redis(redis) => {
            let template = templates
                .get(&workload.guild_of(user))
                .with_context(|| format!("no warm template for user {user}'s guild"))?;
            if redis
                .restore_user(user, template)
                .await
                .with_context(|| format!("restoring user {user} in Redis"))?
            {
                return Ok(UserWarmed {
                    states: channels.len() as u64,
                    restored: true,
                });
            }
            // The user exists: ack its channels in place.
            let changed = redis
                .warm_user(user, &channels, workload.next_message())
                .await
                .with_context(|| format!("warming user {user} in Redis"))?;
            Ok(UserWarmed {
                states: changed as u64,
                restored: false,
            })
        }
    }
}

/// Acks `channels` of `user` over gRPC with `bulk_ack`, in chunks of at
/// most [`MAX_BULK_ACKS`].
async fn warm_grpc_user(
    user: u64,
    channels: &[u64],
    bulk_ack: impl AsyncFn(&[u64]) -> Result<usize, tonic::Status>,
) -> anyhow::Result<UserWarmed> {
    for chunk in channels.chunks(MAX_BULK_ACKS) {
        let answered = bulk_ack(chunk).await.map_err(|status| {
            anyhow::anyhow!(
                "BulkAck of user {user} ({} channels) failed: {:?}: {}",
                chunk.len(),
                status.code(),
                status.message()
            )
        })?;
        // The no-op server answers with no states; readstates with one per
        // ack.
        if answered != 0 && answered != chunk.len() {
            bail!(
                "BulkAck of user {user}: {} acks answered with {answered} states",
                chunk.len()
            );
        }
    }
    Ok(UserWarmed {
        states: channels.len() as u64,
        restored: false,
    })
}
