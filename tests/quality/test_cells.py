"""Quality: the seed corpus plus a bounded campaign still reach every required scenario cell."""
from harness.campaign import Budget, Campaign, Config, replay_corpus, run_random
from harness.cells import REQUIRED

RUNS = 2000


def test_the_seed_corpus_and_a_bounded_campaign_reach_the_required_cells():
    c = Campaign(Config(budget=Budget(runs=RUNS)))
    replay_corpus(c, "corpus/seeds")
    run_random(c)
    assert c.stats.seeds == 9 and c.stats.runs == RUNS
    assert c.stats.cells.missing(REQUIRED) == []
