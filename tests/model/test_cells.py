"""Scenario cells the model records: each shows up exactly where its precondition holds."""
from harness.backends.reference import run_case
from harness.choices import RandomSource

M = 1 << 20
SEEDS = range(30)
PMC = "a completion attached a node another unfinished job holds"
PENDING = "two job completions were pending at once"
WHILE_COMMIT = "stream_prepare ran while a commit was pending"
DROPS_BASE = "stream_prepare's base is a node a pending commit will drop"
STARTED_ON = "a stream started with a base a pending commit will drop"
STILL_COPYING = "stream_prepare's base is a node a commit still copying will drop"
LAST_CHUNK = "stream_prepare's base is a node a commit with at most one chunk left to copy will drop"


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
    assert all(STARTED_ON in c for c in cells)
    # the finer cells: the commit's coroutine has not returned yet, and then has little left
    assert any(STILL_COPYING in c for c in cells)
    assert all(DROPS_BASE in c for c in cells if STILL_COPYING in c)
    assert all(STILL_COPYING in c for c in cells if LAST_CHUNK in c)


def test_a_stream_onto_a_node_the_commit_does_not_hold_shares_nothing(make_case):
    case = make_case(7, [("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                                           "filter-node-name": "commit-filter", "speed": 64 << 10}),
                         ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "node5"})])
    cells = cells_by_seed(case)
    assert any(WHILE_COMMIT in c for c in cells)
    assert not any(PMC in c for c in cells)
    assert not any(DROPS_BASE in c for c in cells)      # node3 stays: the commit merges node1-node2
    assert not any(STARTED_ON in c or STILL_COPYING in c for c in cells)


def test_two_streams_can_finish_together_unless_one_waits_for_the_other(make_case):
    together = make_case(6, [("block-stream", {"device": "node2", "base-node": "node0", "job-id": "s2"}),
                             ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "s5"})])
    one_by_one = make_case(6, [("block-stream", {"device": "node2", "base-node": "node0", "job-id": "s2"}),
                               ("x-wait-jobs",),
                               ("block-stream", {"device": "node5", "base-node": "node3", "job-id": "s5"})])
    assert any(PENDING in c for c in cells_by_seed(together))
    assert not any(PENDING in c for c in cells_by_seed(one_by_one))
