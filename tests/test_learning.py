"""The learned grammar of the PCT engine: rare-cell runs teach it, and it finds the seed bug."""
import random
from collections import Counter

import pytest

from harness.campaign import Budget, Campaign, Config, run_pct
from harness.learning import EXPLORE, RARE, GrammarModel, LearnedPCTSource


def test_only_runs_that_reached_a_rare_cell_teach():
    model = GrammarModel()
    assert not model.learn([("gen:x", 3, 2)], None)          # no cell at all
    assert not model.learn([("gen:x", 3, 2)], RARE)          # a common cell
    assert model.weights == {} and model.lessons == 0
    assert model.learn([("gen:x", 3, 2), ("gen:y", 2, 0)], RARE / 4)
    assert model.weights == {("gen:x", 3): [1.0, 1.0, 5.0], ("gen:y", 2): [5.0, 1.0]}
    assert model.lessons == 1


def test_sampling_follows_what_was_learned_but_keeps_exploring():
    model = GrammarModel()
    model.weights[("gen:x", 4)] = [1.0, 1.0, 1.0, 97.0]
    rng = random.Random(3)
    counts = Counter(model.sample(rng, "gen:x", 4) for _ in range(4000))
    uniform_share = EXPLORE / 4
    assert counts[3] / 4000 == pytest.approx(1 - 3 * uniform_share - (1 - EXPLORE) * 0.03, abs=0.03)
    assert all(counts[v] > 4000 * uniform_share * 0.7 for v in range(3))
    # an unknown label, or the same label with another range, is uniform
    assert set(Counter(model.sample(rng, "gen:x", 5) for _ in range(500))) == set(range(5))


def test_the_learned_source_keeps_generator_decisions_and_schedules_with_pct():
    src = LearnedPCTSource(seed=1, depth=1, n_steps_estimate=5, model=GrammarModel())
    a = src.choose(10, "gen:a")
    first = src.choose(2, "poll", ["bh:job_exit:j1", "bh:job_exit:j2"])
    assert src.generated == [("gen:a", 10, a)]
    assert [src.choose(2, "poll", ["bh:job_exit:j1", "bh:job_exit:j2"]) for _ in range(3)] == [first] * 3
    assert src.steps == 4 and src.recorded == [a, first, first, first, first]


@pytest.mark.parametrize("bug,kind", [("stream-prepare-no-drain", "use-after-free"),
                                      ("stream-prepare-ref-only", "wrong-backing")])
def test_a_pct_campaign_learns_its_way_to_the_seed_bug_and_not_on_the_fixed_model(bug, kind):
    found = Campaign(Config(engine="pct", bugs=(bug,), budget=Budget(runs=3000), minimize=False,
                            stop_at_first=True))
    run_pct(found)
    assert found.stats.first is not None and found.stats.first.kind == kind
    fixed = Campaign(Config(engine="pct", budget=Budget(runs=1500), minimize=False))
    run_pct(fixed)
    assert fixed.stats.first is None and not fixed.stats.kinds
