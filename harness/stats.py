"""Comparing two engines' campaigns, as FuzzBench and Magma report them.

Runs (or seconds) to the first finding vary a lot from one campaign seed to
the next, so a median alone says little. Next to it: the interquartile
range, the Vargha-Delaney Â12 effect size (the chance that a campaign of
one engine needs less than one of the other: 0.5 is no difference, above
0.71 a large one), and the two-sided Mann-Whitney U test's p-value (normal
approximation with tie and continuity corrections; below 0.05, the
difference is unlikely to be chance).
"""
from __future__ import annotations

from statistics import NormalDist, quantiles
from typing import Sequence


def a12(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Vargha-Delaney Â12: P(x < y) + P(x = y) / 2 for x from ``xs``, y from ``ys``
    (oriented so that above 0.5 means ``xs`` needs less)."""
    less = sum(1.0 if x < y else 0.5 if x == y else 0.0 for x in xs for y in ys)
    return less / (len(xs) * len(ys))


def mann_whitney_p(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation)."""
    n1, n2 = len(xs), len(ys)
    ranked = sorted([(v, 0) for v in xs] + [(v, 1) for v in ys])
    ranks = [0.0] * len(ranked)
    ties = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, group) in zip(ranks, ranked) if group == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma_sq = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if sigma_sq <= 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma_sq ** 0.5
    return min(1.0, 2 * (1 - NormalDist().cdf(max(z, 0.0))))


def iqr(xs: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (both the value itself for one campaign)."""
    if len(xs) < 2:
        return (xs[0], xs[0])
    q1, _, q3 = quantiles(xs, n=4)
    return (q1, q3)
