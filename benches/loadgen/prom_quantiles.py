#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram between two /metrics snapshots.

    prom_quantiles.py METRIC BEFORE.prom AFTER.prom [Q ...]

prints `count=N p50_ms=.. p99_ms=..` (one `pQ_ms` per quantile, default 0.5
and 0.99) for the observations made between the two snapshots (AFTER alone
if BEFORE is `-`), as Prometheus' histogram_quantile computes them: linear
within the bucket the quantile falls in. A quantile in the last, open bucket
(`+Inf`) prints as `>` its lower bound. Values are in the metric's unit
(seconds) times 1000.

Self-test: python3 -m doctest benches/loadgen/prom_quantiles.py
"""

import math
import sys


def buckets(text, metric):
    """The cumulative counts of METRIC's buckets in a /metrics text, by bound.

    >>> buckets('m_bucket{le="0.1"} 2\\nm_bucket{le="+Inf"} 3\\nm_count 3\\n', "m")
    {0.1: 2.0, inf: 3.0}
    """
    counts = {}
    prefix = metric + "_bucket{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, _, value = line[len(prefix):].partition("} ")
        for label in labels.split(","):
            name, _, bound = label.partition("=")
            if name.strip() == "le":
                counts[float(bound.strip('"').replace("+Inf", "inf"))] = float(value)
    return counts


def quantile(cumulative, q):
    """The q-quantile of a histogram of cumulative bucket counts (bound -> count).

    >>> h = {0.001: 0, 0.0025: 50, 0.005: 90, 0.01: 100, math.inf: 100}
    >>> round(quantile(h, 0.5), 6), round(quantile(h, 0.99), 6)
    (0.0025, 0.0095)
    >>> quantile({0.001: 10, math.inf: 20}, 0.99)
    (0.001,)
    >>> quantile({0.001: 0, math.inf: 0}, 0.5) is None
    True
    """
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                # Past the last finite bound: only a lower bound is known.
                return (lower,)
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return None


def difference(after, before):
    """Bucket counts of AFTER minus BEFORE (observations made in between).

    >>> difference({1.0: 5, math.inf: 7}, {1.0: 2, math.inf: 2})
    {1.0: 3, inf: 5}
    """
    return {bound: count - before.get(bound, 0) for bound, count in after.items()}


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    metric, before_path, after_path = argv[1:4]
    qs = [float(q) for q in argv[4:]] or [0.5, 0.99]
    with open(after_path) as f:
        histogram = buckets(f.read(), metric)
    if before_path != "-":
        with open(before_path) as f:
            histogram = difference(histogram, buckets(f.read(), metric))
    total = histogram.get(math.inf, 0)
    fields = ["count=%d" % total]
    for q in qs:
        value = quantile(histogram, q)
        name = "p%s_ms" % ("%g" % (q * 100)).replace(".", "")
        if value is None:
            fields.append(name + "=-")
        elif isinstance(value, tuple):
            fields.append("%s=>%.3g" % (name, value[0] * 1000))
        else:
            fields.append("%s=%.3g" % (name, value * 1000))
    print(" ".join(fields))


if __name__ == "__main__":
    main(sys.argv)
