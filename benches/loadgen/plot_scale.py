#!/usr/bin/env python3
"""Draws the embedded store's costs as it grows (scale.sh's scale.csv) or
under churn (churn.sh's churn.csv).

Usage:
  plot_scale.py scale.csv scale.png
  plot_scale.py --churn churn.csv churn.png
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def column(data, name):
    return [float(row[name]) for row in data]


def plot_scale(data, out):
    states = column(data, "states")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    ax = axes[0][0]
    ax.plot(states, [b / 2**30 for b in column(data, "file_bytes")], "o-", label="file (GiB)")
    ax.set_ylabel("file size (GiB)")
    ax.set_yscale("log")
    twin = ax.twinx()
    twin.plot(states, column(data, "bytes_per_state"), "s--", color="tab:orange", label="bytes per state")
    twin.set_ylabel("bytes per state")
    twin.set_ylim(bottom=0)
    ax.set_title("size on disk")

    ax = axes[0][1]
    for name, style, label in [
        ("cached_p50_us", "o-", "p50, file in page cache"),
        ("cached_p99_us", "o--", "p99, file in page cache"),
        ("limited_p50_us", "s-", "p50, memory = file / 10"),
        ("limited_p99_us", "s--", "p99, memory = file / 10"),
    ]:
        ax.plot(states, [v / 1000 for v in column(data, name)], style, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("cold user load (one at a time)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    ax.plot(states, column(data, "writeback_rows_per_s"), "o-", label="rows/s, 4 batches in flight")
    ax.set_ylabel("rows/s")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(states, column(data, "commits_per_s"), "s--", color="tab:orange", label="fsynced commits/s, 1 in flight")
    twin.set_ylabel("commits/s")
    twin.set_ylim(bottom=0)
    ax.set_title("write-back (512-row batches)")
    ax.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)

    ax = axes[1][1]
    ax.plot(states, column(data, "serving_clean_ms"), "o-", label="after a clean shutdown")
    ax.plot(states, column(data, "serving_crash_ms"), "s--", label="after SIGKILL")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("process start to SERVING")
    ax.legend(fontsize=8)

    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_xlabel("stored states")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def plot_churn(data, out):
    seconds = column(data, "seconds")
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    ax = axes[0]
    ax.plot(seconds, [b / 2**20 for b in column(data, "file_bytes")], "o-", label="file size")
    ax.plot(seconds, [b / 2**20 for b in column(data, "disk_bytes")], "^-", label="disk blocks of the file")
    ax.plot(seconds, [b / 2**20 for b in column(data, "live_bytes")], "s--", label="live data (keys + rows)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title("space under churn: rewrite all, delete half, purge, re-create, per cycle")
    ax.legend()
    for row, x in zip(data, seconds):
        if row["step"] == "Recreate":
            ax.annotate(row["cycle"], (x, float(row["file_bytes"]) / 2**20), fontsize=7)
    ax = axes[1]
    ax.plot(seconds, [v / 1000 for v in column(data, "load_p99_us")], "o-", label="load p99 during the step")
    ax.plot(seconds, [v / 1000 for v in column(data, "load_max_us")], "s--", label="load max during the step")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_xlabel("seconds")
    ax.legend()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main():
    args = sys.argv[1:]
    if args and args[0] == "--churn":
        plot_churn(rows(args[1]), args[2])
    elif len(args) == 2:
        plot_scale(rows(args[0]), args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
