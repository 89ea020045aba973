//! The report: the human-readable tables of the reads and the fan-outs,
//! with their notes and warnings, then one machine-readable `BIG` line per
//! measured phase.

use std::fmt::Write as _;

use super::results::{FanoutResult, ReadResult, Scaling};
use super::{BigUsersArgs, DRAIN_POLL, Layout};

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1e3)
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.decimals$}"))
}

pub(super) fn print_report(
    args: &BigUsersArgs,
    layout: &Layout,
    reads: &[ReadResult],
    fanouts: &[FanoutResult],
    idle_us_per_s: f64,
    scrape_ns: f64,
    evictions: Option<f64>,
) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== big users: GetUserReadStates of {} users per size, cold (first read since the server started) \
         and cached ({} reads each); one call at a time",
        layout.users_per_size, args.repeats
    );
    let _ = writeln!(
        out,
        "{:<11} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12} {:>6} {:>12} {:>12} {:>6} {:>12} {:>7}",
        "kind",
        "size",
        "calls",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_us/state",
        "cpu_x",
        "cpu_marginal",
        "p50_us/state",
        "lat_x",
        "p50_marginal",
        "misses"
    );
    for (index, read) in reads.iter().enumerate() {
        let scaling = Scaling::of(reads, index);
        let _ = writeln!(
            out,
            "{:<11} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12.4} {:>6.2} {:>12} {:>12.4} {:>6.2} {:>12} {:>7}",
            read.kind,
            read.size,
            read.latencies.0.len(),
            ms(read.latencies.quantile_us(0.5)),
            ms(read.latencies.quantile_us(0.99)),
            ms(read.latencies.max_us()),
            read.cpu_us_per_state(),
            scaling.cpu_x,
            opt(scaling.marginal_cpu_us, 4),
            read.p50_us_per_state(),
            scaling.lat_x,
            opt(scaling.marginal_p50_us, 4),
            opt(read.misses, 0),
        );
    }
    let split = if fanouts.first().is_some_and(|fanout| fanout.calls > 1) {
        format!(
            ", each split into {} calls of at most {} (limits.max_mention_users)",
            fanouts[0].calls, args.max_mention_users
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "\n== fan-outs: AddMentions to {} cold users (one stored state each), {} per mode{split}",
        layout.fanout_users, layout.fanout_repeats
    );
    let _ = writeln!(
        out,
        "{:<14} {:>7} {:>8} {:>10} {:>10} {:>10} {:>15} {:>16} {:>12} {:>8}",
        "kind",
        "users",
        "fanouts",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_us/user:call",
        "cpu_us/user:total",
        "drain_ms_max",
        "misses"
    );
    for fanout in fanouts {
        let drain = fanout
            .drains
            .iter()
            .max()
            .map(|drain| drain.as_secs_f64() * 1e3);
        let _ = writeln!(
            out,
            "{:<14} {:>7} {:>8} {:>10} {:>10} {:>10} {:>16.3} {:>17} {:>12} {:>8}",
            fanout.mode.kind(),
            fanout.users,
            fanout.fanouts(),
            ms(fanout.latencies.quantile_us(0.5)),
            ms(fanout.latencies.quantile_us(0.99)),
            ms(fanout.latencies.max_us()),
            fanout.cpu_call_us_per_user(),
            opt(fanout.cpu_total_us_per_user(), 3),
            opt(drain, 1),
            opt(fanout.misses, 0),
        );
    }
    let cold_per_user = reads
        .iter()
        .find(|read| read.kind == "get_cold")
        .map(|read| read.cpu.ns as f64 / 1e3 / read.latencies.0.len().max(1) as f64);
    let _ = writeln!(
        out,
        "\nserver CPU: the sum of its threads' run time (schedstat) over each phase, per state read \
         or per user mentioned; cpu_x and lat_x: per-state cost over the smallest size's, same kind \
         (1.00 = linear; below 1 where a call's fixed cost dominates the small size); *_marginal: \
         us per state past the next smaller size, (cost per call(S) - cost per call(S')) / (S - S'), \
         free of the fixed cost: growing with S is worse than linear. Server idle: {idle_us_per_s:.0} us/s (not subtracted). fanout_omit: 'call' \
         is up to the answer (the background loader starts meanwhile), 'total' until every deferred \
         mention is merged (readstates_mentions_deferred_waiting = 0), less {:.0} us per metrics \
         scrape made while waiting (polled every {} ms: drain_ms is that coarse). For reference, a cold read of a {}-state user cost {} us of CPU.",
        scrape_ns / 1e3,
        DRAIN_POLL.as_millis(),
        layout.sizes[0],
        opt(cold_per_user, 1),
    );
    let exited: usize = reads.iter().map(|read| read.cpu.exited).sum::<usize>()
        + fanouts
            .iter()
            .map(|fanout| fanout.cpu_call.exited)
            .sum::<usize>();
    if exited > 0 {
        let _ = writeln!(
            out,
            "WARNING: {exited} server threads exited during measured phases; their time in them is not counted"
        );
    }
    match evictions {
        Some(evictions) if evictions > 0.0 => {
            let _ = writeln!(
                out,
                "WARNING: the server evicted {evictions} users during the measurement: raise cache.capacity \
                 (reads and fan-outs may have found users cold by eviction, not only by the restart)"
            );
        }
        Some(_) => {
            let _ = writeln!(out, "evictions during the measurement: 0");
        }
        None => {}
    }

    // Machine-readable lines.
    for (index, read) in reads.iter().enumerate() {
        let scaling = Scaling::of(reads, index);
        let _ = writeln!(
            out,
            "BIG kind={} size={} calls={} states={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
             cpu_us_per_state={:.4} cpu_ratio={:.3} cpu_marginal_us_per_state={} \
             p50_us_per_state={:.4} lat_ratio={:.3} p50_marginal_us_per_state={} cpu_us_per_call={:.1} \
             cpu_ms={:.3} cpu_ticks_ms={:.0} cpu_sys_ticks_ms={:.0} misses={}",
            read.kind,
            read.size,
            read.latencies.0.len(),
            read.states(),
            read.latencies.quantile_us(0.5),
            read.latencies.quantile_us(0.99),
            read.latencies.max_us(),
            read.cpu_us_per_state(),
            scaling.cpu_x,
            opt(scaling.marginal_cpu_us, 4),
            read.p50_us_per_state(),
            scaling.lat_x,
            opt(scaling.marginal_p50_us, 4),
            read.cpu_us_per_call(),
            read.cpu.ns as f64 / 1e6,
            read.cpu.ticks_ns as f64 / 1e6,
            read.cpu.system_ticks_ns as f64 / 1e6,
            opt(read.misses, 0),
        );
    }
    for fanout in fanouts {
        let _ = writeln!(
            out,
            "BIG kind={} users={} fanouts={} calls_per_fanout={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
             cpu_us_per_user={:.3} cpu_us_per_user_total={} drain_max_ms={} cpu_ms={:.3} \
             cpu_ticks_ms={:.0} cpu_sys_ticks_ms={:.0} scrapes={} misses={}",
            fanout.mode.kind(),
            fanout.users,
            fanout.fanouts(),
            fanout.calls,
            fanout.latencies.quantile_us(0.5),
            fanout.latencies.quantile_us(0.99),
            fanout.latencies.max_us(),
            fanout.cpu_call_us_per_user(),
            opt(fanout.cpu_total_us_per_user(), 3),
            opt(
                fanout
                    .drains
                    .iter()
                    .max()
                    .map(|drain| drain.as_secs_f64() * 1e3),
                1
            ),
            fanout.cpu_call.ns as f64 / 1e6,
            fanout.cpu_call.ticks_ns as f64 / 1e6,
            fanout.cpu_call.system_ticks_ns as f64 / 1e6,
            fanout.scrapes,
            opt(fanout.misses, 0),
        );
    }
    print!("{out}");
}
