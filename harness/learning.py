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
#: weights before any lesson (option 0 of a swarm decision keeps the command kind in)
PRIOR: dict[tuple[str, int], tuple[float, ...]] = {
    ("gen:swarm:block-commit", 2): (9.0, 1.0),
    ("gen:swarm:block-stream", 2): (9.0, 1.0),
}


class GrammarModel:
    """Per (label, range): a weight per option, 1 until runs teach otherwise."""

    def __init__(self) -> None:
        self.weights: dict[tuple[str, int], list[float]] = {k: list(w) for k, w in PRIOR.items()}
        self.cumulative: dict[tuple[str, int], list[float]] = {}   # running sums, until the next lesson
        self.lessons = 0

    def sample(self, rng: random.Random, label: str, n: int) -> int:
        key = (label, n)
        if key not in self.weights or rng.random() < EXPLORE:
            return int(rng.random() * n)
        cum = self.cumulative.get(key)
        if cum is None:
            cum = self.cumulative[key] = list(accumulate(self.weights[key]))
        return min(n - 1, bisect(cum, rng.random() * cum[-1]))

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


class LearnedPCTSource(PCTSource):
    """PCT for the scheduler; the generator's decisions sampled from ``model``.
    ``generated`` keeps them (label, range, value) for :meth:`GrammarModel.learn`."""

    def __init__(self, seed: int, depth: int, n_steps_estimate: int, model: GrammarModel) -> None:
        super().__init__(seed, depth, n_steps_estimate)
        self.model = model
        self.generated: list[tuple[str, int, int]] = []

    def choose(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """:meth:`~harness.choices.ChoiceSource.choose`, with the generator's decisions
        (about 90 a case, the hot path of a pct run) sampled here rather than through
        :meth:`_pick`: the same values, one call fewer each."""
        if n <= 1:
            return 0
        if keys is None:
            value = self.model.sample(self.rng, label, n)
            self.generated.append((label, n, value))
        else:
            value = self._pick(n, label, keys)
        self.recorded.append(value)
        return value
