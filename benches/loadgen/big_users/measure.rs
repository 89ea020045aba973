//! The measure phase: the server's idle CPU and the cost of a metrics
//! scrape, the warm-up, then the timed reads of each size and the fan-outs
//! of each mode, each answer checked, and the deferred mentions checked at
//! the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tonic::transport::Channel;

use readstates::api::proto::read_states_client::ReadStatesClient;
use readstates::api::proto::{AddMentionsRequest, GetReadStateRequest, GetUserReadStatesRequest};

use super::cpu::{CpuSpent, Metrics, ServerCpu, metric};
use super::report::print_report;
use super::results::{FanoutResult, Latencies, ReadResult};
use super::setup::call_error;
use super::{BigUsersArgs, DRAIN_POLL, Layout, MENTION_MESSAGE, Mode, SETUP_MESSAGE};

/// Cached reads of each warm-up user.
const WARMUP_READS: u64 = 5;

/// What measuring needs at hand.
struct Bench<'a> {
    layout: &'a Layout,
    client: ReadStatesClient<Channel>,
    cpu: ServerCpu,
    metrics: Option<Metrics>,
    max_mention_users: usize,
    drain_wait: Duration,
    /// Server CPU of one metrics scrape (ns), measured at the start.
    scrape_ns: f64,
}

pub(super) async fn measure(
    args: &BigUsersArgs,
    layout: &Layout,
    client: ReadStatesClient<Channel>,
    pid: u32,
) -> anyhow::Result<()> {
    let mut bench = Bench {
        layout,
        client,
        cpu: ServerCpu::new(pid)?,
        metrics: args.metrics_addr.clone().map(|addr| Metrics { addr }),
        max_mention_users: args.max_mention_users,
        drain_wait: args.drain_wait,
        scrape_ns: 0.0,
    };
    let fanout_calls = layout.fanout_users.div_ceil(args.max_mention_users as u64);
    if fanout_calls > 1 {
        eprintln!(
            "NOTE: --fanout-users {} exceeds --max-mention-users {} (the server's limits.max_mention_users): \
             each fan-out is split into {fanout_calls} calls, sent one after another; its latency is theirs together",
            layout.fanout_users, args.max_mention_users
        );
    }

    // The server's idle CPU, and what a metrics scrape costs it.
    let before = bench.cpu.snapshot()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = bench.cpu.between(&before, &bench.cpu.snapshot()?);
    let idle_us_per_s = idle.ns as f64 / 1e3 / idle.wall.as_secs_f64().max(1e-9);
    if let Some(metrics) = &bench.metrics {
        const SCRAPES: u32 = 10;
        let before = bench.cpu.snapshot()?;
        for _ in 0..SCRAPES {
            metrics.scrape().await?;
        }
        let spent = bench.cpu.between(&before, &bench.cpu.snapshot()?);
        let idle_ns = idle_us_per_s * 1e3 * spent.wall.as_secs_f64();
        bench.scrape_ns = ((spent.ns as f64 - idle_ns) / f64::from(SCRAPES)).max(0.0);
    }
    eprintln!(
        "server pid {pid}: idle CPU {idle_us_per_s:.0} us/s; one metrics scrape {:.0} us",
        bench.scrape_ns / 1e3
    );

    // Warm-up, not recorded: a cold and a few cached reads of the warm-up
    // group, and one fan-out per mode.
    eprintln!("warm-up...");
    let warmup_size = layout.sizes[0];
    bench.reads(0, warmup_size, 1, "get_cold").await?;
    bench
        .reads(0, warmup_size, WARMUP_READS, "get_cached")
        .await?;
    for mode in Mode::BOTH {
        bench.fan_out(Layout::warmup_population(mode), mode).await?;
    }

    // Reads, by size.
    let mut reads = Vec::new();
    for &size in &layout.sizes {
        let group = layout.group_of(size)?;
        eprintln!(
            "reads of {} users of {size} states: cold, then {} cached each...",
            layout.users_per_size, args.repeats
        );
        reads.push(bench.reads(group, size, 1, "get_cold").await?);
        if args.repeats > 0 {
            reads.push(bench.reads(group, size, args.repeats, "get_cached").await?);
        }
    }

    // Fan-outs, alternating the modes.
    let mut fanouts: Vec<FanoutResult> = Mode::BOTH
        .iter()
        .map(|&mode| FanoutResult {
            mode,
            users: layout.fanout_users,
            calls: fanout_calls as usize,
            latencies: Latencies::default(),
            cpu_call: CpuSpent::default(),
            cpu_total_ns: bench.metrics.as_ref().map(|_| 0.0),
            drains: Vec::new(),
            scrapes: 0,
            misses: bench.metrics.as_ref().map(|_| 0.0),
        })
        .collect();
    for repeat in 0..layout.fanout_repeats {
        for (result, mode) in fanouts.iter_mut().zip(Mode::BOTH) {
            eprintln!(
                "fan-out {} of {}: AddMentions to {} cold users, {}...",
                repeat + 1,
                layout.fanout_repeats,
                layout.fanout_users,
                if mode.omit() {
                    "omit_read_states"
                } else {
                    "with states"
                }
            );
            let one = bench
                .fan_out(Layout::measured_population(repeat, mode), mode)
                .await?;
            result.latencies.0.push(one.latency);
            result.cpu_call.add(one.cpu_call);
            result.scrapes += one.scrapes;
            if let Some(drain) = one.drain {
                result.drains.push(drain);
            }
            if let (Some(total), Some(one_total)) = (&mut result.cpu_total_ns, one.cpu_total_ns) {
                *total += one_total;
            }
            if let (Some(misses), Some(one_misses)) = (&mut result.misses, one.misses) {
                *misses += one_misses;
            }
        }
    }

    // Checks, outside every measured phase: each population without states
    // holds its mention once its deferred mentions are merged.
    bench.check_deferred().await?;
    let evictions = match &bench.metrics {
        Some(metrics) => Some(metric(
            &metrics.scrape().await?,
            "readstates_cache_evictions_total",
        )),
        None => None,
    };

    print_report(
        args,
        layout,
        &reads,
        &fanouts,
        idle_us_per_s,
        bench.scrape_ns,
        evictions,
    );
    Ok(())
}

/// One fan-out's figures.
struct OneFanout {
    latency: Duration,
    cpu_call: CpuSpent,
    cpu_total_ns: Option<f64>,
    drain: Option<Duration>,
    scrapes: u64,
    misses: Option<f64>,
}

impl Bench<'_> {
    async fn scrape(&self) -> anyhow::Result<Option<HashMap<String, f64>>> {
        match &self.metrics {
            Some(metrics) => Ok(Some(metrics.scrape().await?)),
            None => Ok(None),
        }
    }

    /// Reads every user of `group` (each with `size` states) `repeats`
    /// times, round-robin, one call at a time.
    async fn reads(
        &mut self,
        group: u64,
        size: u64,
        repeats: u64,
        kind: &'static str,
    ) -> anyhow::Result<ReadResult> {
        let users: Vec<u64> = self.layout.group_users(group).collect();
        let mut latencies = Vec::with_capacity(users.len() * repeats as usize);
        let metrics_before = self.scrape().await?;
        let cpu_before = self.cpu.snapshot()?;
        for _ in 0..repeats {
            for &user in &users {
                let start = Instant::now();
                let answer = self
                    .client
                    .get_user_read_states(GetUserReadStatesRequest {
                        user_id: user,
                        since_version: None,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("GetUserReadStates of user {user}"), status)
                    })?;
                latencies.push(start.elapsed());
                let states = answer.into_inner().read_states.len();
                ensure!(
                    states as u64 == size,
                    "GetUserReadStates of user {user} answered {states} states, not {size}: \
                     was the setup run with the same --sizes and --users-per-size?"
                );
            }
        }
        let cpu = self.cpu.between(&cpu_before, &self.cpu.snapshot()?);
        let metrics_after = self.scrape().await?;
        let misses = metrics_before.zip(metrics_after).map(|(before, after)| {
            metric(&after, "readstates_cache_misses_total")
                - metric(&before, "readstates_cache_misses_total")
        });
        Ok(ReadResult {
            kind,
            size,
            latencies: Latencies(latencies),
            cpu,
            misses,
        })
    }

    /// Mentions every user of population `p` once, in calls of at most
    /// `max_mention_users`, one after another; without states, then waits
    /// until the server has merged every deferred mention.
    async fn fan_out(&mut self, p: u64, mode: Mode) -> anyhow::Result<OneFanout> {
        let users: Vec<u64> = self.layout.population_users(p).collect();
        let channel = Layout::population_channel(p);
        let requests: Vec<AddMentionsRequest> = users
            .chunks(self.max_mention_users)
            .map(|chunk| AddMentionsRequest {
                channel_id: channel,
                message_id: MENTION_MESSAGE,
                user_ids: chunk.to_vec(),
                omit_read_states: mode.omit(),
            })
            .collect();
        let metrics_before = self.scrape().await?;
        let cpu_before = self.cpu.snapshot()?;
        let start = Instant::now();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let count = request.user_ids.len();
            let answer = self.client.add_mentions(request).await.map_err(|status| {
                call_error(
                    format_args!("AddMentions of {count} users in channel {channel}"),
                    status,
                )
            })?;
            answers.push(answer.into_inner());
        }
        let latency = start.elapsed();
        let cpu_call_end = self.cpu.snapshot()?;
        let cpu_call = self.cpu.between(&cpu_before, &cpu_call_end);

        // Without states: wait for the deferred mentions to be merged.
        let mut scrapes = 0u64;
        let mut drain = None;
        let mut cpu_total_ns = None;
        if let (Mode::Omit, Some(metrics)) = (mode, &self.metrics) {
            let deadline = Instant::now() + self.drain_wait;
            loop {
                scrapes += 1;
                let waiting = metric(
                    &metrics.scrape().await?,
                    "readstates_mentions_deferred_waiting",
                );
                if waiting == 0.0 {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{waiting} deferred mentions still waiting {:?} after the fan-out",
                    self.drain_wait
                );
                tokio::time::sleep(DRAIN_POLL).await;
            }
            drain = Some(start.elapsed().saturating_sub(latency));
            let total = self.cpu.between(&cpu_before, &self.cpu.snapshot()?);
            cpu_total_ns = Some((total.ns as f64 - scrapes as f64 * self.scrape_ns).max(0.0));
        } else if mode == Mode::States {
            cpu_total_ns = self.metrics.as_ref().map(|_| cpu_call.ns as f64);
        }
        let metrics_after = self.scrape().await?;
        let misses = metrics_before.zip(metrics_after).map(|(before, after)| {
            metric(&after, "readstates_cache_misses_total")
                - metric(&before, "readstates_cache_misses_total")
        });

        // Check the answers.
        let mut expected = users.iter();
        for answer in &answers {
            if mode.omit() {
                ensure!(
                    answer.read_states.is_empty(),
                    "AddMentions with omit_read_states answered {} states",
                    answer.read_states.len()
                );
                continue;
            }
            for state in &answer.read_states {
                let user = expected
                    .next()
                    .context("AddMentions answered more states than users")?;
                ensure!(
                    state.user_id == *user
                        && state.channel_id == channel
                        && state.mention_count == 1
                        && state.last_message_id == SETUP_MESSAGE,
                    "AddMentions answered {state:?} for user {user} in channel {channel}: expected \
                     one mention over last_message_id {SETUP_MESSAGE} (the setup's stored state)"
                );
            }
        }
        ensure!(
            mode.omit() || expected.next().is_none(),
            "AddMentions answered fewer states than users"
        );
        Ok(OneFanout {
            latency,
            cpu_call,
            cpu_total_ns,
            drain,
            scrapes,
            misses,
        })
    }

    /// The first and last user of every population mentioned without
    /// states read the mention over their stored state.
    async fn check_deferred(&mut self) -> anyhow::Result<()> {
        let populations = std::iter::once(Layout::warmup_population(Mode::Omit)).chain(
            (0..self.layout.fanout_repeats)
                .map(|repeat| Layout::measured_population(repeat, Mode::Omit)),
        );
        for p in populations {
            let users: Vec<u64> = self.layout.population_users(p).collect();
            let channel = Layout::population_channel(p);
            for user in [users.first(), users.last()].into_iter().flatten() {
                let state = self
                    .client
                    .get_read_state(GetReadStateRequest {
                        user_id: *user,
                        channel_id: channel,
                    })
                    .await
                    .map_err(|status| {
                        call_error(format_args!("GetReadState of user {user}"), status)
                    })?
                    .into_inner()
                    .read_state
                    .with_context(|| format!("GetReadState of user {user}: no state"))?;
                ensure!(
                    state.mention_count == 1 && state.last_message_id == SETUP_MESSAGE,
                    "user {user} in channel {channel} reads {state:?} after a deferred mention: \
                     expected one mention over last_message_id {SETUP_MESSAGE}"
                );
            }
        }
        Ok(())
    }
}
