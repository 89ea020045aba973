//! The same workload against Redis, for comparison.
//!
//! Layout: each user is a hash `rs:{USER}` (the braces are a cluster hash
//! tag) with, per channel `C`, the fields `C:l` (last_message_id), `C:n`
//! (mention_count), `C:p` (last_pin_timestamp_ms), `C:t` (updated_at_ms) and
//! `C:v` (version), plus `_v`, the user's version counter. Each state's
//! pending mention ids are a sorted set `rsm:{USER}:C` whose members are the
//! ids as 20-digit zero-padded decimals (all scores 0), so that "every
//! mention at or below id X" is one `ZREMRANGEBYLEX` and ids above 2^53 keep
//! their precision (Lua numbers are doubles; ids are compared as padded
//! strings).
//!
//! Updates are Lua scripts loaded once (`SCRIPT LOAD`) and run with
//! `EVALSHA`, implementing ARCHITECTURE.md §1.2:
//! - ack: `last = max(last, id)`; pending mentions at or below it cleared;
//!   a stale ack changes nothing;
//! - add mentions (one script call per fan-out, every user's keys passed):
//!   counted only if `id > last`, idempotent through the pending set;
//! - remove mentions: un-counts only a pending mention;
//! - ack pins: `pin = max(pin, ts)`;
//! - connect: `HGETALL rs:{USER}`;
//! - warm (`readstates-bench warm`, not part of the workload): one call per
//!   user acks all the given channels at one id, exactly as ACK would one
//!   by one (each changed state takes the next version, `_v` ends at the
//!   last one), in a few large `HSET`s. Filling a user's hash this way is
//!   slow (with ~400 fields it stays a listpack, and each field's insert
//!   scans it: over 1 ms per user), so a user that does not exist yet is
//!   instead `RESTORE`d from a `DUMP` of its guild's template: the hash the
//!   script makes for a new user of that guild (user 0, which never exists,
//!   is the scratch key), byte for byte what the script would have made.
//!
//! Every change bumps the user's version and stamps the state with it and
//! with the time, and every script returns the resulting state(s), as the
//! gRPC API does. Not modelled: manual acks (the workload sends none) and
//! the cap on tracked mentions per state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::workload::{Op, now_unix_ms};

const ACK: &str = r"
local h, z, c, m, now = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local st = redis.call('HMGET', h, c..':l', c..':n', c..':p', c..':t', c..':v')
local last = st[1] or '00000000000000000000'
if m <= last then
  return {last, st[2] or '0', st[3] or '0', st[4] or '0', st[5] or '0'}
end
redis.call('ZREMRANGEBYLEX', z, '-', '['..m)
local n = redis.call('ZCARD', z)
local v = redis.call('HINCRBY', h, '_v', 1)
redis.call('HSET', h, c..':l', m, c..':n', n, c..':t', now, c..':v', v)
return {m, n, st[3] or '0', now, v}
";

const ADD_MENTIONS: &str = r"
local c, m, now = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #KEYS, 2 do
  local h, z = KEYS[i], KEYS[i + 1]
  local st = redis.call('HMGET', h, c..':l', c..':n', c..':p', c..':t', c..':v')
  local last = st[1] or '00000000000000000000'
  local n, t, v = st[2] or '0', st[4] or '0', st[5] or '0'
  if m > last and redis.call('ZADD', z, 'NX', 0, m) == 1 then
    n = redis.call('ZCARD', z)
    v = redis.call('HINCRBY', h, '_v', 1)
    t = now
    redis.call('HSET', h, c..':l', last, c..':n', n, c..':t', now, c..':v', v)
  end
  out[#out + 1] = {last, n, st[3] or '0', t, v}
end
return out
";

const REMOVE_MENTIONS: &str = r"
local c, m, now = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #KEYS, 2 do
  local h, z = KEYS[i], KEYS[i + 1]
  local st = redis.call('HMGET', h, c..':l', c..':n', c..':p', c..':t', c..':v')
  local n, t, v = st[2] or '0', st[4] or '0', st[5] or '0'
  if redis.call('ZREM', z, m) == 1 then
    n = redis.call('ZCARD', z)
    v = redis.call('HINCRBY', h, '_v', 1)
    t = now
    redis.call('HSET', h, c..':n', n, c..':t', now, c..':v', v)
  end
  out[#out + 1] = {st[1] or '0', n, st[3] or '0', t, v}
end
return out
";

const ACK_PINS: &str = r"
local h, c, ts, now = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local st = redis.call('HMGET', h, c..':l', c..':n', c..':p', c..':t', c..':v')
local p, t, v = st[3] or '0', st[4] or '0', st[5] or '0'
if tonumber(ts) > tonumber(p) then
  p, t = ts, now
  v = redis.call('HINCRBY', h, '_v', 1)
  redis.call('HSET', h, c..':p', ts, c..':t', now, c..':v', v)
end
return {st[1] or '0', st[2] or '0', p, t, v}
";

/// KEYS: the user's hash, then the pending-mention set of each channel in
/// ARGV[3..]; ARGV: message id (padded), now, then the channels. Returns how
/// many states it changed (a state already at a newer id is left alone).
const WARM: &str = r"
local h, m, now = KEYS[1], ARGV[1], ARGV[2]
local v = tonumber(redis.call('HGET', h, '_v') or '0')
local fields, changed = {}, 0
for i = 3, #ARGV do
  local c, z = ARGV[i], KEYS[i - 1]
  local last = redis.call('HGET', h, c..':l') or '00000000000000000000'
  if m > last then
    redis.call('ZREMRANGEBYLEX', z, '-', '['..m)
    local n = redis.call('ZCARD', z)
    v = v + 1
    changed = changed + 1
    local at = #fields
    fields[at + 1], fields[at + 2] = c..':l', m
    fields[at + 3], fields[at + 4] = c..':n', n
    fields[at + 5], fields[at + 6] = c..':t', now
    fields[at + 7], fields[at + 8] = c..':v', v
    if #fields >= 512 then
      redis.call('HSET', h, unpack(fields))
      fields = {}
    end
  end
end
if changed > 0 then
  fields[#fields + 1], fields[#fields + 2] = '_v', v
  redis.call('HSET', h, unpack(fields))
end
return changed
";

/// The SHA1s of the loaded scripts.
struct Scripts {
    ack: String,
    add_mentions: String,
    remove_mentions: String,
    ack_pins: String,
    warm: String,
}

/// Requests are spread round-robin over several multiplexed connections.
pub struct RedisTarget {
    connections: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    scripts: Scripts,
}

fn pad(id: u64) -> String {
    format!("{id:020}")
}

fn hash_key(user: u64) -> String {
    format!("rs:{{{user}}}")
}

fn mentions_key(user: u64, channel: u64) -> String {
    format!("rsm:{{{user}}}:{channel}")
}

impl RedisTarget {
    /// Opens `connections` connections to `url`, retrying for up to `wait`
    /// while the server starts, and loads the scripts.
    pub async fn connect(url: &str, connections: usize, wait: Duration) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).with_context(|| format!("invalid Redis URL {url}"))?;
        // Same 10 s request timeout as the gRPC client, not redis-rs's 500 ms.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        let deadline = Instant::now() + wait;
        let mut opened = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let connection = loop {
                match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(connection) => break connection,
                    // Not up yet: try again shortly.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => {
                        return Err(error).with_context(|| format!("connecting to {url}"));
                    }
                }
            };
            opened.push(connection);
        }
        let first = opened
            .first_mut()
            .context("no Redis connection was opened")?;
        let scripts = Scripts {
            ack: load(first, ACK).await?,
            add_mentions: load(first, ADD_MENTIONS).await?,
            remove_mentions: load(first, REMOVE_MENTIONS).await?,
            ack_pins: load(first, ACK_PINS).await?,
            warm: load(first, WARM).await?,
        };
        Ok(Self {
            connections: opened,
            next: AtomicUsize::new(0),
            scripts,
        })
    }

    fn connection(&self) -> MultiplexedConnection {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[index].clone()
    }

    /// The serialized (`DUMP`) hash of a new user whose states are
    /// `channels`, all acknowledged at `message` (for `warm`): built with the
    /// warm script under the scratch user 0, then deleted.
    pub async fn warm_template(&self, channels: &[u64], message: u64) -> anyhow::Result<Vec<u8>> {
        const SCRATCH: u64 = 0;
        let mut connection = self.connection();
        let key = hash_key(SCRATCH);
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut connection)
            .await
            .context("deleting the warm template's scratch key")?;
        self.warm_user(SCRATCH, channels, message)
            .await
            .context("building a warm template")?;
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .context("dumping a warm template")?;
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut connection)
            .await
            .context("deleting the warm template's scratch key")?;
        Ok(payload)
    }

    /// Creates `user`'s hash from a [`warm_template`](Self::warm_template)
    /// payload; `Ok(false)` (and nothing changed) if the user exists already.
    pub async fn restore_user(&self, user: u64, payload: &[u8]) -> redis::RedisResult<bool> {
        let mut connection = self.connection();
        match redis::cmd("RESTORE")
            .arg(hash_key(user))
            .arg(0)
            .arg(payload)
            .query_async::<()>(&mut connection)
            .await
        {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some("BUSYKEY") => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Acknowledges every one of `channels` for `user` at `message` in one
    /// script call (for `warm`); returns how many states it changed.
    pub async fn warm_user(
        &self,
        user: u64,
        channels: &[u64],
        message: u64,
    ) -> redis::RedisResult<usize> {
        let mut connection = self.connection();
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(&self.scripts.warm)
            .arg(1 + channels.len())
            .arg(hash_key(user));
        for channel in channels {
            command.arg(mentions_key(user, *channel));
        }
        command.arg(pad(message)).arg(now_unix_ms());
        for channel in channels {
            command.arg(channel);
        }
        command.query_async(&mut connection).await
    }

    /// Issues one operation; an error is reported as its Redis error kind.
    pub async fn execute(&self, op: &Op) -> Result<(), String> {
        let mut connection = self.connection();
        let now = now_unix_ms();
        let result = match op {
            Op::Connect { user } => redis::cmd("HGETALL")
                .arg(hash_key(*user))
                .query_async::<Vec<(String, String)>>(&mut connection)
                .await
                .map(|fields| {
                    // Decode into states, as the gRPC client decodes its
                    // response.
                    std::hint::black_box(decode_states(&fields));
                }),
            Op::Ack {
                user,
                channel,
                message,
            } => redis::cmd("EVALSHA")
                .arg(&self.scripts.ack)
                .arg(2)
                .arg(hash_key(*user))
                .arg(mentions_key(*user, *channel))
                .arg(channel)
                .arg(pad(*message))
                .arg(now)
                .query_async::<redis::Value>(&mut connection)
                .await
                .map(drop),
            Op::AddMentions {
                channel,
                message,
                users,
            }
            | Op::RemoveMentions {
                channel,
                message,
                users,
            } => {
                let sha = if matches!(op, Op::AddMentions { .. }) {
                    &self.scripts.add_mentions
                } else {
                    &self.scripts.remove_mentions
                };
                let mut command = redis::cmd("EVALSHA");
                command.arg(sha).arg(users.len() * 2);
                for user in users.iter() {
                    command
                        .arg(hash_key(*user))
                        .arg(mentions_key(*user, *channel));
                }
                command
                    .arg(channel)
                    .arg(pad(*message))
                    .arg(now)
                    .query_async::<redis::Value>(&mut connection)
                    .await
                    .map(drop)
            }
            Op::AckPins {
                user,
                channel,
                pin_timestamp_ms,
            } => redis::cmd("EVALSHA")
                .arg(&self.scripts.ack_pins)
                .arg(1)
                .arg(hash_key(*user))
                .arg(channel)
                .arg(pin_timestamp_ms)
                .arg(now)
                .query_async::<redis::Value>(&mut connection)
                .await
                .map(drop),
        };
        result.map_err(|error| format!("redis:{:?}", error.kind()))
    }
}

async fn load(connection: &mut MultiplexedConnection, source: &str) -> anyhow::Result<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query_async(connection)
        .await
        .context("loading a Lua script into Redis")
}

/// One state as read back from the hash.
#[derive(Debug, Default)]
struct State {
    last_message_id: u64,
    mention_count: u32,
    last_pin_timestamp_ms: u64,
    updated_at_ms: u64,
    version: u64,
}

fn decode_states(fields: &[(String, String)]) -> HashMap<u64, State> {
    let mut states: HashMap<u64, State> = HashMap::new();
    for (field, value) in fields {
        let Some((channel, which)) = field.split_once(':') else {
            continue;
        };
        let Ok(channel) = channel.parse::<u64>() else {
            continue;
        };
        let state = states.entry(channel).or_default();
        match which {
            "l" => state.last_message_id = value.parse().unwrap_or(0),
            "n" => state.mention_count = value.parse().unwrap_or(0),
            "p" => state.last_pin_timestamp_ms = value.parse().unwrap_or(0),
            "t" => state.updated_at_ms = value.parse().unwrap_or(0),
            "v" => state.version = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    states
}
