#!/usr/bin/env python3
"""Plots readstates-bench per-second latency series as a PNG.

Each input is the CSV that `readstates-bench run --series FILE` writes
(header `second,ok,p50_us,p99_us,p999_us,max_us`), optionally labelled as
`label=path` (the label defaults to the file name without `.series.csv`).
For every series it draws the per-second p99 (solid) and max (dotted, same
colour) in milliseconds on a log axis; seconds without a completed request
(ok = 0) are left as gaps.

    benches/loadgen/plot_series.py -o open.png --title "open loop, 10k req/s" \\
        readstates=out/open-readstates.series.csv redis=out/open-redis.series.csv \\
        --hline 2ms:"p99 target" --mark-from 27:"write-back starts"

Needs matplotlib (benches/loadgen/install-plot.sh).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import textwrap
from dataclasses import dataclass

HEADER = ["second", "ok", "p50_us", "p99_us", "p999_us", "max_us"]


@dataclass
class Series:
    label: str
    seconds: list[int]
    p99_ms: list[float]  # NaN where the second had no completed request
    max_ms: list[float]


def parse_input(text: str) -> tuple[str, str]:
    """`label=path` or `path`; a path that exists as given wins."""
    if "=" in text and not os.path.exists(text):
        label, path = text.split("=", 1)
        return label, path
    name = os.path.basename(text)
    for suffix in (".series.csv", ".csv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name, text


def read_series(label: str, path: str) -> Series:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip() for cell in rows[0]] != HEADER:
        raise ValueError(f"{path}: expected the header {','.join(HEADER)}")
    series = Series(label, [], [], [])
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            # A second with no successful call has empty latency cells.
            values = dict(zip(HEADER, (int(cell) if cell else 0 for cell in row), strict=True))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        series.seconds.append(values["second"])
        gap = values["ok"] == 0
        series.p99_ms.append(math.nan if gap else values["p99_us"] / 1000)
        series.max_ms.append(math.nan if gap else values["max_us"] / 1000)
    return series


def parse_duration_ms(text: str) -> float:
    """`250us`, `2ms`, `1.5s`, or a bare number of milliseconds."""
    text = text.strip()
    for suffix, scale in (("us", 1e-3), ("µs", 1e-3), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def parse_hline(text: str) -> tuple[float, str]:
    value, _, label = text.partition(":")
    try:
        ms = parse_duration_ms(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a latency: {value!r} (try 2ms, 500us or 1s)"
        ) from None
    return ms, label or value


def parse_mark(text: str) -> tuple[float, str]:
    value, _, label = text.partition(":")
    try:
        return float(value), label or "write-back starts"
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a second: {value!r}") from None


def minor_label(value: float, narrow: bool) -> str:
    if not narrow or value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if mantissa in (2, 3, 5) else ""


def finite(values: list[float]) -> list[float]:
    return [value for value in values if not math.isnan(value)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Plot per-second p99 and max latency of readstates-bench series CSVs."
    )
    parser.add_argument("series", nargs="+", metavar="[LABEL=]CSV")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="per-second latency")
    parser.add_argument(
        "--hline",
        action="append",
        default=[],
        type=parse_hline,
        metavar="LATENCY[:LABEL]",
        help="horizontal reference line, e.g. 2ms:target (repeatable)",
    )
    parser.add_argument(
        "--mark-from",
        action="append",
        default=[],
        type=parse_mark,
        metavar="SECOND[:LABEL]",
        help="vertical line from this second on, e.g. 27:'write-back starts' (repeatable)",
    )
    parser.add_argument("--width", type=int, default=1400, help="pixels")
    parser.add_argument("--height", type=int, default=600, help="pixels")
    args = parser.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print(
            "plot_series.py needs matplotlib: run benches/loadgen/install-plot.sh",
            file=sys.stderr,
        )
        return 2

    try:
        all_series = [read_series(*parse_input(text)) for text in args.series]
    except (OSError, ValueError) as error:
        print(f"plot_series.py: {error}", file=sys.stderr)
        return 1

    dpi = 100
    fig, ax = plt.subplots(
        figsize=(args.width / dpi, args.height / dpi), dpi=dpi, layout="constrained"
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, series in enumerate(all_series):
        colour = colours[index % len(colours)]
        p99 = finite(series.p99_ms)
        peaks = finite(series.max_ms)
        p99_note = f" (median {statistics.median(p99):.2f} ms)" if p99 else " (no data)"
        max_note = f" (worst {max(peaks):.1f} ms)" if peaks else ""
        ax.plot(
            series.seconds,
            series.p99_ms,
            color=colour,
            linestyle="-",
            linewidth=1.6,
            label=f"{series.label} p99{p99_note}",
        )
        ax.plot(
            series.seconds,
            series.max_ms,
            color=colour,
            linestyle=":",
            linewidth=1.4,
            label=f"{series.label} max{max_note}",
        )
    for ms, label in args.hline:
        ax.axhline(ms, color="dimgray", linestyle="--", linewidth=1.0)
        ax.annotate(
            label,
            xy=(1.0, ms),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=9,
            color="dimgray",
        )
    seconds = [second for series in all_series for second in series.seconds]
    first, last = (min(seconds), max(seconds)) if seconds else (0, 0)
    for second, label in args.mark_from:
        if not first <= second <= last:
            print(
                f"plot_series.py: --mark-from {second:g} is outside the series' seconds "
                f"{first} to {last}; not drawn",
                file=sys.stderr,
            )
            continue
        ax.axvline(second, color="firebrick", linestyle="-.", linewidth=1.0)
        ax.annotate(
            label,
            xy=(second, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -14),
            textcoords="offset points",
            ha="left",
            fontsize=9,
            color="firebrick",
        )

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Under two decades of data, label the minor ticks 2, 3 and 5 too.
    values = [v for series in all_series for v in finite(series.p99_ms) + finite(series.max_ms)]
    narrow = bool(values) and max(values) / max(min(values), 1e-9) < 100
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: minor_label(value, narrow)))
    ax.set_xlabel("second of the measured window")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("\n".join(textwrap.wrap(args.title, width=args.width // 9)), fontsize=11)
    ax.grid(True, which="major", linewidth=0.6, alpha=0.6)
    ax.grid(True, which="minor", linewidth=0.3, alpha=0.3)
    if seconds:
        ax.set_xlim(first, max(last, first + 1))
    # Below the plot, one column per series (p99 above max), or two series a
    # column when there are many.
    count = len(all_series)
    fig.legend(
        loc="outside lower center",
        fontsize=9,
        ncols=count if count <= 5 else math.ceil(count / 2),
    )
    fig.savefig(args.output, dpi=dpi)
    print(f"plot written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
