#!/usr/bin/env python3
"""Reports interleaved pairs of soaks: readstates against the no-op server.

Each input is a generator report (`readstates-bench run ... > FILE`) named
`pair<P>-readstates.txt` or `pair<P>-noop.txt` (as benches/loadgen/soak.sh
writes them with PAIRS=N), given in the order the runs ran: that order says
which run of a pair went first. From each report's `SUMMARY key=value ...`
line (benches/loadgen/report.rs) it prints a markdown report:

  * per pair, for p50, p99, p99.9 and max: the readstates figure, the no-op
    figure and their ratio (readstates / no-op); then the median of each ratio
    over the pairs (pairs missing a run or a figure are left out of it);
  * per run: the achieved rate, errors, the server's CPU and the CPU other
    processes used during the run (`other_cpu_pct`).

    benches/loadgen/soak_pairs.py -o out/pairs.md --title "5000 req/s, 240 s" \\
        out/pair1-readstates.txt out/pair1-noop.txt out/pair2-noop.txt out/pair2-readstates.txt

Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

NAME = re.compile(r"pair(\d+)-(readstates|noop)\.txt$")
# (SUMMARY key, column heading)
QUANTILES = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"), ("max_us", "max")]
TARGETS = ("readstates", "noop")


def read_summary(path: str) -> dict[str, str] | None:
    """The key=value pairs of the last SUMMARY line in PATH, or None."""
    summary = None
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("SUMMARY "):
                    summary = dict(
                        field.split("=", 1) for field in line.split()[1:] if "=" in field
                    )
    except OSError as error:
        print(f"soak_pairs: {error}", file=sys.stderr)
    if summary is None:
        print(f"soak_pairs: no SUMMARY line in {path}", file=sys.stderr)
    return summary


def number(summary: dict[str, str] | None, key: str) -> float | None:
    if summary is None:
        return None
    try:
        return float(summary[key])
    except (KeyError, ValueError):
        return None


def fmt_latency(us: float | None) -> str:
    """Microseconds as BENCHMARKS.md writes them: 136 µs, 5.10 ms, 46.5 ms."""
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f} µs"
    ms = us / 1000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


def fmt_ratio(ratio: float | None) -> str:
    """Two decimals; two significant digits below 0.1 (0.0041×, not 0.00×)."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def fmt_plain(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def report(paths: list[str], title: str | None) -> str:
    pairs: dict[int, dict[str, dict[str, str] | None]] = {}
    first: dict[int, str] = {}
    runs = []  # (name, pair, target, summary) in the order they ran
    for path in paths:
        match = NAME.search(os.path.basename(path))
        if not match:
            raise SystemExit(f"soak_pairs: {path}: expected a name like pair1-readstates.txt or pair1-noop.txt")
        pair, target = int(match.group(1)), match.group(2)
        summary = read_summary(path)
        if target in pairs.setdefault(pair, {}):
            raise SystemExit(f"soak_pairs: pair {pair} has two {target} runs")
        pairs[pair][target] = summary
        first.setdefault(pair, target)
        runs.append((os.path.basename(path)[: -len(".txt")], pair, target, summary))

    out = ["# Soak pairs: readstates against the no-op server", ""]
    if title:
        out += [title.strip(), ""]

    header = ["pair", "first"]
    align = ["---:", "---"]
    for _, label in QUANTILES:
        header += [f"{label} readstates", f"{label} no-op", f"{label} ratio"]
        align += ["---:", "---:", "---:"]
    rows = []
    ratios: dict[str, list[float]] = {key: [] for key, _ in QUANTILES}
    for pair in sorted(pairs):
        rs, noop = pairs[pair].get("readstates"), pairs[pair].get("noop")
        row = [str(pair), "no-op" if first[pair] == "noop" else first[pair]]
        for key, _ in QUANTILES:
            a, b = number(rs, key), number(noop, key)
            ratio = a / b if a is not None and b else None
            if ratio is not None:
                ratios[key].append(ratio)
            row += [fmt_latency(a), fmt_latency(b), fmt_ratio(ratio)]
        rows.append(row)
    counted = min(len(values) for values in ratios.values())
    median_row = ["**median**", f"(of {counted} pair{'' if counted == 1 else 's'})"]
    for key, _ in QUANTILES:
        values = ratios[key]
        median_row += ["", "", "**" + fmt_ratio(statistics.median(values)) + "**" if values else "-"]
    rows.append(median_row)
    out += table(header, align, rows)
    out += [
        "",
        "Latency from intended start (open loop), over the measured window; ratio = readstates / no-op.",
        "",
        "Per run, in the order they ran:",
        "",
    ]

    rows = []
    for name, pair, target, summary in runs:
        rows.append(
            [
                name,
                fmt_plain(number(summary, "achieved")),
                fmt_plain(number(summary, "errors")),
                fmt_plain(number(summary, "server_cpu_pct"), 1),
                fmt_plain(number(summary, "gen_cpu_pct"), 1),
                fmt_plain(number(summary, "other_cpu_pct"), 1),
            ]
        )
    out += table(
        ["run", "achieved req/s", "errors", "server CPU %", "generator CPU %", "other processes CPU %"],
        ["---", "---:", "---:", "---:", "---:", "---:"],
        rows,
    )
    out += ["", "CPU in % of one core, over the measured window."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="also write the report to this file")
    parser.add_argument("--title", help="a paragraph under the heading (the runs' settings)")
    parser.add_argument("reports", nargs="+", help="pair<P>-<readstates|noop>.txt, in the order they ran")
    args = parser.parse_args()
    text = report(args.reports, args.title)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
