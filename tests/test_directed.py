"""The cases ``fuzz --differential --engine pct`` sends to QEMU: those a pct campaign
on the model found rare (:func:`harness.qemu_campaign.directed_case_stream`)."""
from itertools import islice

from harness.backends.reference import run_case
from harness.qemu_campaign import case_stream, directed_case_stream

#: the cells nearly every run with a job reaches; the others are what QEMU's time is for
COMMON = {"stream_prepare ran", "a copy-on-read filter was freed by a job completion",
          "a commit_top filter was freed by a job completion"}


def _rare_cells(cases):
    return [set(run_case(c).extra.get("cells", ())) - COMMON for c in cases]


def test_directed_cases_reach_the_rare_cells_uniform_cases_do_not():
    directed = _rare_cells(islice(directed_case_stream(2), 10))
    uniform = _rare_cells(islice(case_stream(2), 10))
    assert sum(bool(c) for c in directed) >= 7
    assert sum(bool(c) for c in uniform) <= 2
    assert any("a node was freed during a drain" in c for c in directed)


def test_directed_stream_is_deterministic_and_keeps_the_schedule_that_reached_the_cell():
    first = list(islice(directed_case_stream(4), 3))
    again = list(islice(case_stream(4, "pct"), 3))
    assert [c.to_json() for c in first] == [c.to_json() for c in again]
    assert all(c.schedule.get("choices") for c in first)
    assert all(run_case(c).extra.get("cells") for c in first)
