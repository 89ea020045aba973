#!/usr/bin/env python3
"""Finds store stalls from outside the server: samples what each store thread
is doing every 10 ms, then reports when the reader threads all waited on one
lock at once.

  benches/loadgen/store_threads.py sample PID OUT.txt   # until PID exits
  benches/loadgen/store_threads.py report OUT.txt

`sample` reads /proc/PID/task/*/syscall (root, or the server's own user) for
the threads named store-* (the reader pools and the writer) and any other
thread whose name is given with --also NAME (a library's own workers). Each
line is a unix time and, per thread, `name:tid:R` (on the CPU or runnable) or
`name:tid:SYSCALL:ARG0` (blocked in that system call; for futex, 202, the
first argument is the lock's address).

`report` takes each thread's most common futex address as its idle wait (a
reader waiting for work), and prints every run of samples in which all reader
threads were blocked on one other futex address: how long, which other store
threads waited on the same address, and what the --also threads were doing.

Sampling costs about a third of a core; run it on the generator's core and
read the run's latency figures with that in mind.
"""

import argparse
import collections
import os
import time


def sample(pid, out_path, also):
    names = {}
    refreshed = 0.0
    with open(out_path, "w") as out:
        while os.path.exists(f"/proc/{pid}"):
            now = time.time()
            if now - refreshed > 2:
                names = {}
                for tid in os.listdir(f"/proc/{pid}/task"):
                    try:
                        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                            name = comm.read().strip()
                    except OSError:
                        continue
                    if name.startswith("store-") or name in also:
                        names[tid] = name.replace(":", "_")
                refreshed = now
            fields = []
            for tid, name in names.items():
                try:
                    with open(f"/proc/{pid}/task/{tid}/syscall") as syscall:
                        call = syscall.read().split()
                except OSError:
                    continue
                if not call or call[0] == "running":
                    fields.append(f"{name}:{tid}:R")
                else:
                    fields.append(f"{name}:{tid}:{call[0]}:{call[1] if len(call) > 1 else ''}")
            out.write(f"{now:.3f} {' '.join(fields)}\n")
            time.sleep(0.01)


def parse(path):
    for line in open(path):
        time_field, *fields = line.split()
        threads = {}
        for field in fields:
            name, _tid, *state = field.split(":")
            threads[name] = state
        yield float(time_field), threads


def report(path):
    samples = list(parse(path))
    waits = collections.defaultdict(collections.Counter)
    for _, threads in samples:
        for name, state in threads.items():
            if len(state) == 2 and state[0] == "202":
                waits[name][state[1]] += 1
    idle = {name: counts.most_common(1)[0][0] for name, counts in waits.items()}
    readers = sorted(name for name in idle if name.startswith("store-reader"))
    if not readers:
        print("no reader threads in the samples")
        return

    def shared_lock(threads):
        addresses = {
            tuple(threads.get(name, []))
            for name in readers
        }
        if len(addresses) != 1:
            return None
        state = next(iter(addresses))
        if len(state) != 2 or state[0] != "202" or any(idle[name] == state[1] for name in readers):
            return None
        return state[1]

    stalls = 0
    run = []
    for when, threads in samples + [(None, {})]:
        lock = shared_lock(threads) if when is not None else None
        if lock is not None and (not run or run[0][2] == lock):
            run.append((when, threads, lock))
            continue
        if len(run) >= 2:
            stalls += 1
            start, end, lock = run[0][0], run[-1][0], run[0][2]
            others = sorted(
                name
                for name in idle
                if name not in readers and any(t.get(name, [None, None])[1:2] == [lock] for _, t, _ in run)
            )
            busy = collections.Counter(
                f"{name}:{':'.join(state[:1])}"
                for _, t, _ in run
                for name, state in t.items()
                if not name.startswith("store-")
            )
            print(
                f"{time.strftime('%H:%M:%S', time.gmtime(start))} ({start:.2f}): readers blocked on futex "
                f"{lock} for at least {1000 * (end - start):.0f} ms; also waiting: {', '.join(others) or 'none'}; "
                f"other threads' states: {dict(busy) or '-'}"
            )
        run = [(when, threads, lock)] if lock is not None else []
    print(f"{stalls} stall(s) of 20 ms or more in {len(samples)} samples")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sampler = commands.add_parser("sample")
    sampler.add_argument("pid")
    sampler.add_argument("out")
    sampler.add_argument("--also", action="append", default=[], help="another thread name to sample")
    reporter = commands.add_parser("report")
    reporter.add_argument("samples")
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.pid, args.out, set(args.also))
    else:
        report(args.samples)


if __name__ == "__main__":
    main()
