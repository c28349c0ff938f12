"""pytest-benchmark: the cost of each stage of a run, one benchmark per stage.

``blockfuzz bench`` gives the headline runs/s; these split an engine's run into
what it does (generate a case, run it on the model, judge it with the oracle)
so that a change to one stage shows in that stage's figure, with
pytest-benchmark's statistics (min, median, IQR over many rounds) and its
comparison between saved runs::

    .venv/bin/pytest benchmarks                       # all stages
    .venv/bin/pytest benchmarks --benchmark-autosave  # keep this run ...
    .venv/bin/pytest benchmarks --benchmark-compare   # ... and compare with it later

Nothing here asserts a time: each benchmark checks only that its stage did
its work (a verdict, a chain), so it is not part of ``make test``.
Each round takes the next scheduler seed or the next generated case, so the
figures are over many schedules and cases, not one cached path.
"""
from __future__ import annotations

import itertools

import blockfuzz_fast  # noqa: F401  (the compiled model when it is current)
import pytest

from harness.backends.reference import run_case
from harness.bench import WORKLOADS
from harness.choices import PCTSource, RandomSource
from harness.corpus import judge
from harness.generate import generate, run_generated

CASES = 200     # generated cases the per-stage benchmarks cycle through


@pytest.fixture(scope="module")
def generated():
    """CASES generated cases with the observation of their own run."""
    out = []
    for seed in range(CASES):
        case, observation, _ = run_generated(RandomSource(seed))
        out.append((case, observation))
    return out


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_model_run(benchmark, workload):
    """The bare model on 030's overlapping_5, a random schedule per round."""
    case = WORKLOADS[workload]()
    seeds = itertools.count()
    observation = benchmark(lambda: run_case(case, RandomSource(next(seeds))))
    assert [n.node_name for n in observation.chain][-1] == "node0"


def test_model_run_pct(benchmark):
    """The same, under PCT schedules (priorities, change points)."""
    case = WORKLOADS["overlapping_5-6x1MiB"]()
    seeds = itertools.count()
    observation = benchmark(lambda: run_case(case, PCTSource(next(seeds), 3, 15)))
    assert observation.finding is None


def test_generate(benchmark):
    """The grammar alone: one case from a fresh random source."""
    seeds = itertools.count()
    case = benchmark(lambda: generate(RandomSource(next(seeds))))
    assert 2 <= len(case.images) <= 9


def test_run_generated_case(benchmark, generated):
    """The model on generated cases, each replaying its own recorded schedule."""
    cycle = itertools.cycle(generated)

    def run():
        case, _ = next(cycle)
        return run_case(case)

    observation = benchmark(run)
    assert observation.replies is not None


def test_judge(benchmark, generated):
    """The oracle alone, on observations made beforehand."""
    cycle = itertools.cycle(generated)

    def verdict():
        case, observation = next(cycle)
        return judge(case, observation)

    outcome = benchmark(verdict)
    assert outcome.kind == "ok"


def test_engine_run(benchmark):
    """What the random engine does per run: generate, run, judge."""
    seeds = itertools.count()
    _, _, outcome = benchmark(lambda: run_generated(RandomSource(next(seeds))))
    assert outcome.kind in ("ok", "hang")
