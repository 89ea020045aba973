//! The workload: which operations are issued, on which users and channels.
//!
//! Membership model. Users are split round-robin into guilds of
//! `--channels-per-user` channels each (`guilds = channels /
//! channels_per_user`); user `u` belongs to guild `(u - 1) % guilds` and
//! only ever has read states in its guild's channels, so a connect
//! (GetUserReadStates) returns at most `channels_per_user` states, as a real
//! client's would. Users are drawn Zipf-distributed by rank (user id = rank,
//! so user 1 is the hottest), channels Zipf-distributed within the guild.
//! A mention fan-out picks a channel of a Zipf-drawn user's guild and then
//! mentions a skewed number of that guild's members (Zipf over
//! `1..=max_fanout`: most mention one user, a few mention hundreds, as
//! `@here` would).
//!
//! Message ids are snowflake-like and increase over the run: every Ack and
//! every new mention takes the next id, so acks move `last_message_id`
//! forward (a real write each time) and clear earlier mentions.
//! RemoveMentions removes a mention this generator added recently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The kinds of operation, for per-kind statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Connect,
    Ack,
    AddMentions,
    RemoveMentions,
    AckPins,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Connect,
        OpKind::Ack,
        OpKind::AddMentions,
        OpKind::RemoveMentions,
        OpKind::AckPins,
    ];

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Connect => "connect",
            OpKind::Ack => "ack",
            OpKind::AddMentions => "add_mentions",
            OpKind::RemoveMentions => "remove_mentions",
            OpKind::AckPins => "ack_pins",
        }
    }
}

/// One request to issue.
#[derive(Debug, Clone)]
pub enum Op {
    /// GetUserReadStates: what a client fetches when it connects.
    Connect { user: u64 },
    Ack {
        user: u64,
        channel: u64,
        message: u64,
    },
    AddMentions {
        channel: u64,
        message: u64,
        users: Arc<[u64]>,
    },
    RemoveMentions {
        channel: u64,
        message: u64,
        users: Arc<[u64]>,
    },
    AckPins {
        user: u64,
        channel: u64,
        pin_timestamp_ms: u64,
    },
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Connect { .. } => OpKind::Connect,
            Op::Ack { .. } => OpKind::Ack,
            Op::AddMentions { .. } => OpKind::AddMentions,
            Op::RemoveMentions { .. } => OpKind::RemoveMentions,
            Op::AckPins { .. } => OpKind::AckPins,
        }
    }
}

/// Relative weights of the operation kinds.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub connect: u32,
    pub ack: u32,
    pub add_mentions: u32,
    pub remove_mentions: u32,
    pub ack_pins: u32,
}

impl Mix {
    /// Only acks: the pure Ack throughput figure.
    pub const ACK_ONLY: Mix = Mix {
        connect: 0,
        ack: 1,
        add_mentions: 0,
        remove_mentions: 0,
        ack_pins: 0,
    };

    fn cumulative(&self) -> [(u32, OpKind); 5] {
        let mut total = 0;
        let mut out = [(0, OpKind::Ack); 5];
        for (slot, (weight, kind)) in out.iter_mut().zip([
            (self.connect, OpKind::Connect),
            (self.ack, OpKind::Ack),
            (self.add_mentions, OpKind::AddMentions),
            (self.remove_mentions, OpKind::RemoveMentions),
            (self.ack_pins, OpKind::AckPins),
        ]) {
            total += weight;
            *slot = (total, kind);
        }
        out
    }
}

/// The shape of the key space and of the fan-outs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub users: u64,
    pub channels: u64,
    pub channels_per_user: u64,
    pub zipf_s: f64,
    pub max_fanout: u64,
    pub fanout_s: f64,
}

/// Hands out increasing snowflake-like message ids, shared by every
/// generator of a run.
#[derive(Debug)]
pub struct MessageClock {
    next: AtomicU64,
}

impl MessageClock {
    /// Starts at a snowflake of the current time (Discord epoch, 22 low bits
    /// of sequence), well inside the 2^63-1 id limit.
    pub fn new() -> Self {
        const EPOCH_MS: u64 = 1_420_070_400_000;
        let since_epoch = now_unix_ms().saturating_sub(EPOCH_MS);
        Self {
            next: AtomicU64::new((since_epoch << 22).max(1)),
        }
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The current Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The immutable part of a workload, shared by all generators of a run.
#[derive(Debug)]
pub struct Workload {
    cumulative: [(u32, OpKind); 5],
    total_weight: u32,
    users: u64,
    guilds: u64,
    channels_per_user: u64,
    user_dist: Zipf<f64>,
    channel_dist: Zipf<f64>,
    fanout_dist: Zipf<f64>,
    zipf_s: f64,
    clock: MessageClock,
}

impl Workload {
    pub fn new(mix: Mix, shape: Shape) -> anyhow::Result<Self> {
        let cumulative = mix.cumulative();
        let total_weight = cumulative[4].0;
        if total_weight == 0 {
            bail!("the operation mix has no non-zero weight");
        }
        if shape.users == 0 || shape.channels == 0 || shape.channels_per_user == 0 {
            bail!("--users, --channels and --channels-per-user must be at least 1");
        }
        if shape.channels_per_user > shape.channels {
            bail!("--channels-per-user cannot exceed --channels");
        }
        if shape.max_fanout == 0 {
            bail!("--max-fanout must be at least 1");
        }
        let guilds = (shape.channels / shape.channels_per_user).max(1);
        Ok(Self {
            cumulative,
            total_weight,
            users: shape.users,
            guilds,
            channels_per_user: shape.channels_per_user,
            user_dist: Zipf::new(shape.users as f64, shape.zipf_s).context("users Zipf")?,
            channel_dist: Zipf::new(shape.channels_per_user as f64, shape.zipf_s)
                .context("channels Zipf")?,
            fanout_dist: Zipf::new(shape.max_fanout as f64, shape.fanout_s)
                .context("fan-out Zipf")?,
            zipf_s: shape.zipf_s,
            clock: MessageClock::new(),
        })
    }

    /// Users are `1..=users()`.
    pub fn users(&self) -> u64 {
        self.users
    }

    /// The next message id: newer than every id this workload handed out
    /// before, and (the clock starts at the current time) than any an
    /// earlier run took.
    pub fn next_message(&self) -> u64 {
        self.clock.next()
    }

    /// Every channel `user` can ever have a state in: all of its guild's
    /// channels, the ones [`Generator`] picks from for its acks and
    /// mentions.
    pub fn channels_of(&self, user: u64) -> impl Iterator<Item = u64> + '_ {
        let guild = self.guild_of(user);
        (1..=self.channels_per_user).map(move |rank| self.channel_in(guild, rank))
    }

    /// The guild of `user`: users `1..=guilds` are in guilds `0..guilds`,
    /// one each, and the rest round-robin after them.
    pub fn guild_of(&self, user: u64) -> u64 {
        (user - 1) % self.guilds
    }

    /// Members of guild `g` are `g + 1 + m * guilds` for `m` in `0..count`.
    fn member_count(&self, guild: u64) -> u64 {
        if guild >= self.users {
            return 0;
        }
        (self.users - guild).div_ceil(self.guilds)
    }

    fn channel_in(&self, guild: u64, rank: u64) -> u64 {
        guild * self.channels_per_user + rank
    }
}

/// How many recent mention fan-outs a generator remembers for
/// RemoveMentions.
const RECENT_MENTIONS: usize = 256;

/// Draws operations; one per issuing thread or task (not shared).
pub struct Generator {
    workload: Arc<Workload>,
    rng: SmallRng,
    recent: Vec<(u64, u64, Arc<[u64]>)>,
    recent_next: usize,
    member_dist_cache: Option<(u64, Zipf<f64>)>,
}

impl Generator {
    pub fn new(workload: Arc<Workload>, seed: u64) -> Self {
        Self {
            workload,
            rng: SmallRng::seed_from_u64(seed),
            recent: Vec::with_capacity(RECENT_MENTIONS),
            recent_next: 0,
            member_dist_cache: None,
        }
    }

    fn user(&mut self) -> u64 {
        let w = &self.workload;
        (w.user_dist.sample(&mut self.rng) as u64).clamp(1, w.users)
    }

    fn channel_of(&mut self, user: u64) -> u64 {
        let w = &self.workload;
        let rank = (w.channel_dist.sample(&mut self.rng) as u64).clamp(1, w.channels_per_user);
        w.channel_in(w.guild_of(user), rank)
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let w = Arc::clone(&self.workload);
        let pick = self.rng.random_range(0..w.total_weight);
        let kind = w
            .cumulative
            .iter()
            .find(|(upper, _)| pick < *upper)
            .map_or(OpKind::Ack, |(_, kind)| *kind);
        match kind {
            OpKind::Connect => Op::Connect { user: self.user() },
            OpKind::Ack => {
                let user = self.user();
                let channel = self.channel_of(user);
                Op::Ack {
                    user,
                    channel,
                    message: w.clock.next(),
                }
            }
            OpKind::AddMentions => self.add_mentions(),
            OpKind::RemoveMentions => match self.recent_pick() {
                Some((channel, message, users)) => Op::RemoveMentions {
                    channel,
                    message,
                    users,
                },
                // Nothing added yet: add first, so removals have a target.
                None => self.add_mentions(),
            },
            OpKind::AckPins => {
                let user = self.user();
                let channel = self.channel_of(user);
                Op::AckPins {
                    user,
                    channel,
                    pin_timestamp_ms: now_unix_ms(),
                }
            }
        }
    }

    fn recent_pick(&mut self) -> Option<(u64, u64, Arc<[u64]>)> {
        if self.recent.is_empty() {
            return None;
        }
        let index = self.rng.random_range(0..self.recent.len());
        let (channel, message, users) = &self.recent[index];
        Some((*channel, *message, Arc::clone(users)))
    }

    fn add_mentions(&mut self) -> Op {
        let w = Arc::clone(&self.workload);
        let author = self.user();
        let guild = w.guild_of(author);
        let channel = self.channel_of(author);
        let members = w.member_count(guild).max(1);
        let wanted = (w.fanout_dist.sample(&mut self.rng) as u64).clamp(1, members);
        let member_ids = self.members(members, wanted);
        let users: Arc<[u64]> = member_ids
            .into_iter()
            .map(|m| guild + 1 + m * w.guilds)
            .collect();
        let message = w.clock.next();
        let entry = (channel, message, Arc::clone(&users));
        if self.recent.len() < RECENT_MENTIONS {
            self.recent.push(entry);
        } else {
            self.recent[self.recent_next] = entry;
            self.recent_next = (self.recent_next + 1) % RECENT_MENTIONS;
        }
        Op::AddMentions {
            channel,
            message,
            users,
        }
    }

    /// `wanted` distinct member indexes of a guild of `members`, skewed
    /// towards the guild's most active (lowest-rank) members.
    fn members(&mut self, members: u64, wanted: u64) -> Vec<u64> {
        // Large fan-outs (an @here) take the guild's top members outright.
        if wanted * 4 >= members || wanted > 64 {
            return (0..wanted).collect();
        }
        let dist = match &self.member_dist_cache {
            Some((count, dist)) if *count == members => *dist,
            _ => match Zipf::new(members as f64, self.workload.zipf_s) {
                Ok(dist) => {
                    self.member_dist_cache = Some((members, dist));
                    dist
                }
                Err(_) => return (0..wanted).collect(),
            },
        };
        let mut chosen: Vec<u64> = Vec::with_capacity(wanted as usize);
        let mut attempts = 0;
        while (chosen.len() as u64) < wanted && attempts < wanted * 8 {
            attempts += 1;
            let m = (dist.sample(&mut self.rng) as u64).clamp(1, members) - 1;
            if !chosen.contains(&m) {
                chosen.push(m);
            }
        }
        let mut filler = 0;
        while (chosen.len() as u64) < wanted {
            if !chosen.contains(&filler) {
                chosen.push(filler);
            }
            filler += 1;
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            users: 1000,
            channels: 500,
            channels_per_user: 50,
            zipf_s: 0.99,
            max_fanout: 1000,
            fanout_s: 2.0,
        }
    }

    #[test]
    fn ids_stay_in_range_and_in_the_users_guild() -> anyhow::Result<()> {
        let realistic = Mix {
            connect: 5,
            ack: 70,
            add_mentions: 15,
            remove_mentions: 2,
            ack_pins: 8,
        };
        let workload = Arc::new(Workload::new(realistic, shape())?);
        let mut generator = Generator::new(Arc::clone(&workload), 7);
        for _ in 0..10_000 {
            match generator.next_op() {
                Op::Ack { user, channel, .. } | Op::AckPins { user, channel, .. } => {
                    assert!((1..=1000).contains(&user));
                    assert_eq!((channel - 1) / 50, workload.guild_of(user));
                }
                Op::AddMentions { channel, users, .. }
                | Op::RemoveMentions { channel, users, .. } => {
                    assert!(!users.is_empty());
                    for user in users.iter() {
                        assert!((1..=1000).contains(user));
                        assert_eq!((channel - 1) / 50, workload.guild_of(*user));
                    }
                }
                Op::Connect { user } => assert!((1..=1000).contains(&user)),
            }
        }
        Ok(())
    }

    /// `warm` acks `channels_of(user)` for every user: that must be exactly
    /// the (user, channel) pairs the generator ever touches, so a warm run
    /// leaves no state for the measured run to create and creates none it
    /// never reads.
    #[test]
    fn warm_channels_are_exactly_the_ones_the_generator_picks() -> anyhow::Result<()> {
        use std::collections::BTreeSet;

        // Few users and channels per guild, so the Zipf draws reach every
        // rank; 27 channels in guilds of 5 leaves channels 26 and 27 unused.
        let small = Shape {
            users: 40,
            channels: 27,
            channels_per_user: 5,
            zipf_s: 0.99,
            max_fanout: 10,
            fanout_s: 2.0,
        };
        let realistic = Mix {
            connect: 5,
            ack: 70,
            add_mentions: 15,
            remove_mentions: 2,
            ack_pins: 8,
        };
        let workload = Arc::new(Workload::new(realistic, small)?);
        let mut warm = BTreeSet::new();
        for user in 1..=workload.users() {
            let channels: BTreeSet<u64> = workload.channels_of(user).collect();
            assert_eq!(channels.len(), 5, "user {user}: {channels:?}");
            assert!(channels.iter().all(|channel| (1..=25).contains(channel)));
            warm.extend(channels.into_iter().map(|channel| (user, channel)));
        }
        assert_eq!(warm.len(), 40 * 5);

        let mut touched = BTreeSet::new();
        let mut generator = Generator::new(Arc::clone(&workload), 3);
        for _ in 0..200_000 {
            match generator.next_op() {
                Op::Ack { user, channel, .. } | Op::AckPins { user, channel, .. } => {
                    touched.insert((user, channel));
                }
                Op::AddMentions { channel, users, .. }
                | Op::RemoveMentions { channel, users, .. } => {
                    touched.extend(users.iter().map(|user| (*user, channel)));
                }
                Op::Connect { .. } => {}
            }
        }
        let outside: Vec<_> = touched.difference(&warm).collect();
        assert!(outside.is_empty(), "touched but not warmed: {outside:?}");
        let never: Vec<_> = warm.difference(&touched).collect();
        assert!(never.is_empty(), "warmed but never touched: {never:?}");
        Ok(())
    }

    #[test]
    fn message_ids_increase() -> anyhow::Result<()> {
        let workload = Workload::new(Mix::ACK_ONLY, shape())?;
        let first = workload.next_message();
        assert!(first > 0 && first < i64::MAX as u64);
        assert!(workload.next_message() > first);
        // A later workload (a later run) starts above this one's ids.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(Workload::new(Mix::ACK_ONLY, shape())?.next_message() > first + 1);
        Ok(())
    }
}
