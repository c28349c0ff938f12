"""A probabilistic grammar that learns from the runs that reached rare scenario cells.

The grammar (:mod:`harness.generate`) asks for every decision by label
("gen:command", "gen:commit:speed", "gen:stream:onto-filter", ...). Uniform
choices reach a race between two completions about once in a thousand
cases: it takes a stream onto another job's filter *and* jobs that end at
the same virtual instant *and* the interleaving, each a few decisions of
their own. Each part shows in the scenario cells before the whole does
("stream_prepare ran while a commit was pending", "a completion attached a
node another unfinished job holds", "two job completions were pending at
once"), so a run that reached a rare cell teaches the grammar: every choice
it made gains weight under its label, the more the rarer the cell
(Soremekun et al., "Inputs from Hell", TSE 2020, learn a probabilistic
grammar from samples; the cross-entropy method does it iteratively). The
parts then combine in later cases, where mutating one case (tried first, see
:func:`harness.campaign.run_pct`) only ever moved one part at a time.

A share of decisions stays uniform (:data:`EXPLORE`), so nothing the grammar
can produce becomes unreachable.

Before any lesson the grammar is uniform but for :data:`PRIOR`: PCT looks for
races between jobs, and only block-commit and block-stream start one, so its
swarm leaves either out about one case in five rather than one in two. Over
200 campaigns a form (seeds 0-199), median runs to no-drain / ref-only went
from 212 / 212 to 146 / 146 and the median time to the finding from 0.133 /
0.121 s to 0.076 / 0.069 s (cases with two jobs cost more a run, but fewer
focus runs go to cases without them). A weight of 3 gave 177 / 169 runs, 30
gave 164 / 160; a prior for the swarm without error forms as well (2 or 3 to 1)
did no better (145 / 134, 164 / 142); a prior for images without writes made
it worse (3 to 1: 200 / 207 runs over 40 campaigns).
"""
from __future__ import annotations

import random
from bisect import bisect
from itertools import accumulate
from typing import Hashable, Iterable, Sequence

from harness.choices import PCTSource

EXPLORE = 0.25      # share of generator decisions drawn uniformly, whatever was learned
RARE = 0.2          # a run teaches when its rarest cell was reached by fewer than this share of runs
MAX_WEIGHT = 100.0  # what one run can add to a choice's weight
HALF_LIFE = 300.0   # runs after which a run counts half as much in a cell's share (RecentShares)
#: weights before any lesson (option 0 of a swarm decision keeps the command kind in)
PRIOR: dict[tuple[str, int], tuple[float, ...]] = {
    ("gen:swarm:block-commit", 2): (9.0, 1.0),
    ("gen:swarm:block-stream", 2): (9.0, 1.0),
}


class GrammarModel:
    """Per (label, range): a weight per option, 1 until runs teach otherwise."""

    def __init__(self) -> None:
        self.weights: dict[tuple[str, int], list[float]] = {k: list(w) for k, w in PRIOR.items()}
        #: running sums (``()``: no weights, uniform), until the next lesson
        self.cumulative: dict[tuple[str, int], list[float] | tuple] = {}
        self.lessons = 0

    def sample(self, rng: random.Random, label: str, n: int) -> int:
        return self.draw(rng.random, label, n)

    def draw(self, random, label: str, n: int) -> int:
        """:meth:`sample` with ``rng.random`` bound once by the caller: a uniform draw
        for a decision nothing taught (and for :data:`EXPLORE` of the others), else one
        by the learned weights. The running sums are kept per (label, range) until the
        next lesson, ``()`` for a pair without weights: one dict lookup a decision, the
        hot path of a pct case's hundred-odd generator decisions."""
        key = (label, n)
        cum = self.cumulative.get(key)
        if cum is None:
            weights = self.weights.get(key)
            cum = self.cumulative[key] = () if weights is None else list(accumulate(weights))
        if not cum or random() < EXPLORE:
            return int(random() * n)
        value = bisect(cum, random() * cum[-1])
        return value if value < n else n - 1

    def learn(self, decisions: Iterable[tuple[str, int, int]], rarest_share: float | None) -> bool:
        """Weigh a run's generator decisions by how rare its rarest cell is; True if it taught."""
        if rarest_share is None or rarest_share >= RARE:
            return False
        weight = min(MAX_WEIGHT, RARE / max(rarest_share, 1e-9))
        for label, n, value in decisions:
            self.weights.setdefault((label, n), [1.0] * n)[value] += weight
        self.cumulative.clear()
        self.lessons += 1
        return True


class RecentShares:
    """The share of recent runs that reached each scenario cell (or pair of cells),
    each run weighed ``2 ** (-age / half_life)``: what pct calls rare.

    Why recent: learning moves the grammar, so a cell that uniform cases reached once
    in a hundred runs is reached every few runs once the grammar has learned it, and a
    share counted since the campaign began still calls it rare for hundreds of runs:
    the grammar keeps learning from (and focus keeps spending on) what it already
    produces. Weighed by age, a cell's share follows what the grammar does now, and
    lessons go to what is rare now. Over 200 campaigns a form (seeds 0-199), median
    runs to no-drain / ref-only, against 140.5 / 140 (means 201 / 187) with every run
    counted alike: half-life 100 runs 152.5 / 125.5 (means 195 / 175), 200 131.5 / 119
    (180 / 170), 300 131 / 122.5 (181 / 155; Â12 0.54 / 0.56, p 0.21 / 0.045), 400
    129 / 124 (178 / 160), 1,000 145 / 130 (191 / 176). Seeds 200-399, half-life 300:
    164.5 / 158 (means 217 / 208) against 170.5 / 169.5 (234 / 227). A small gain,
    the same way at every half-life and on both seed ranges. It costs no other bug:
    crash@commit_abort (no-never-freeze, seeds 0-11, 8,000 runs at most) took a
    median 1,502.5 runs, all found (2,181 without).

    Rather than every count shrinking each run, each new run weighs ``growth`` times
    the one before; all weights are scaled down together before they overflow."""

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        self.growth = 2.0 ** (1.0 / half_life)
        self.weight = 1.0                       # the next run's weight
        self.total = 0.0                        # all runs' weights
        self.reached: dict[Hashable, float] = {}

    def add(self, features: Iterable[Hashable]) -> None:
        """Count one run that reached ``features`` (cells and pairs; may be none)."""
        w, reached = self.weight, self.reached
        for f in features:
            reached[f] = reached.get(f, 0.0) + w
        self.total += w
        self.weight = w * self.growth
        if self.weight > 1e100:
            for f in reached:
                reached[f] *= 1e-100
            self.total *= 1e-100
            self.weight *= 1e-100

    def rarest(self, features: Iterable[Hashable]) -> float | None:
        """The smallest share among ``features`` (None: no feature or no run yet)."""
        shares = [self.reached.get(f, 0.0) for f in features]
        if not shares or not self.total:
            return None
        return min(shares) / self.total


class LearnedPCTSource(PCTSource):
    """PCT for the scheduler; the generator's decisions sampled from ``model``.
    ``generated`` keeps them (label, range, value) for :meth:`GrammarModel.learn`."""

    def __init__(self, seed: int, depth: int, n_steps_estimate: int, model: GrammarModel) -> None:
        super().__init__(seed, depth, n_steps_estimate)
        self.model = model
        self.generated: list[tuple[str, int, int]] = []
        self._random = self.rng.random

    def choose(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """:meth:`~harness.choices.ChoiceSource.choose`, with the generator's decisions
        (about 90 a case, the hot path of a pct run) sampled here rather than through
        :meth:`_pick`: the same values, one call fewer each."""
        if n <= 1:
            return 0
        if keys is None:
            value = self.model.draw(self._random, label, n)
            self.generated.append((label, n, value))
        else:
            value = self._pick(n, label, keys)
        self.recorded.append(value)
        return value
