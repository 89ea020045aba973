# shellcheck shell=bash
# Where a server's threads spent a soak: per thread, the CPU time and the
# time spent runnable but waiting for a CPU (the kernel's
# /proc/<pid>/task/<tid>/schedstat: run ns, run-queue wait ns, time slices).
# Sourced by soak.sh, not run. Read once before the generator starts and once
# after it ends, so nothing runs on either core while it measures.
#
# A thread under SCHED_IDLE (the embedded store's readers and writer) waits
# whenever a normal thread on its core is runnable; its wait here is how long
# its loads or commits were held off by the CPU, apart from the disk.

# thread_times PID: one line per thread of PID, "tid name run_ns wait_ns
# slices" (name as the kernel keeps it, at most 15 bytes, spaces as '_').
thread_times() {
    local task name stat
    for task in /proc/"$1"/task/*; do
        [ -r "$task/schedstat" ] || continue
        read -r name < "$task/comm" || continue
        read -r stat < "$task/schedstat" || continue
        echo "${task##*/} ${name// /_} $stat"
    done
}

# thread_report BEFORE AFTER: from two thread_times files, each group of
# threads (the name without a trailing -N or number) with its thread count,
# CPU seconds, run-queue wait seconds, time slices and mean wait per slice,
# busiest first. A thread that started between the two counts from zero.
thread_report() {
    awk '
        FNR == NR { run0[$1] = $3; wait0[$1] = $4; n0[$1] = $5; next }
        {
            group = $2
            sub(/-?[0-9]+$/, "", group)
            threads[group]++
            run[group] += $3 - run0[$1]
            wait[group] += $4 - wait0[$1]
            slices[group] += $5 - n0[$1]
        }
        END {
            printf "%-18s %7s %9s %10s %9s %12s\n", "threads", "count", "cpu_s", "rq_wait_s", "slices", "wait/slice"
            fflush()
            sorted = "sort -k3,3nr"
            for (g in threads)
                printf "%-18s %7d %9.3f %10.3f %9d %9.3f ms\n", g, threads[g], run[g] / 1e9, wait[g] / 1e9,
                    slices[g], slices[g] ? wait[g] / slices[g] / 1e6 : 0 | sorted
            close(sorted)
        }' "$1" "$2"
}
