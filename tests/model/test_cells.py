"""Scenario cells the model records: each shows up exactly where its precondition holds."""
from harness.backends.reference import run_case
from harness.choices import RandomSource

M = 1 << 20
SEEDS = range(30)
PMC = "a completion attached a node another unfinished job holds"
PENDING = "two job completions were pending at once"
WHILE_COMMIT = "stream_prepare ran while a commit was pending"
DROPS_BASE = "stream_prepare's base is a node a pending commit will drop"


def cells_by_seed(case):
    runs = [run_case(case, RandomSource(s)) for s in SEEDS]
    assert all(o.finding is None for o in runs)
    return [set(o.extra["cells"]) for o in runs]


def test_a_stream_attaching_a_running_commits_filter_is_a_shared_node(make_case):
    """030's test_overlapping_5 shape: the stream's completion makes the commit's filter
    node4's backing; while the commit has not completed, they share that node."""
    case = make_case(6, [("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                                           "filter-node-name": "commit-filter", "speed": M}),
                         ("block-stream", {"device": "node4", "base-node": "commit-filter", "job-id": "node4"})])
    cells = cells_by_seed(case)
    assert any(PMC in c for c in cells)
    assert [PMC in c for c in cells] == [WHILE_COMMIT in c for c in cells]
    # the stream's base is the commit's filter: the seed bug's precondition
    assert [DROPS_BASE in c for c in cells] == [WHILE_COMMIT in c for c in cells]


def test_a_stream_onto_a_node_the_commit_does_not_hold_shares_nothing(make_case):
    case = make_case(7, [("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                                           "filter-node-name": "commit-filter", "speed": 64 << 10}),
                         ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "node5"})])
    cells = cells_by_seed(case)
    assert any(WHILE_COMMIT in c for c in cells)
    assert not any(PMC in c for c in cells)
    assert not any(DROPS_BASE in c for c in cells)      # node3 stays: the commit merges node1-node2


def test_two_streams_can_finish_together_unless_one_waits_for_the_other(make_case):
    together = make_case(6, [("block-stream", {"device": "node2", "base-node": "node0", "job-id": "s2"}),
                             ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "s5"})])
    one_by_one = make_case(6, [("block-stream", {"device": "node2", "base-node": "node0", "job-id": "s2"}),
                               ("x-wait-jobs",),
                               ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "s5"})])
    assert any(PENDING in c for c in cells_by_seed(together))
    assert not any(PENDING in c for c in cells_by_seed(one_by_one))
