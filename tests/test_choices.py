"""Choice sources: every decision of a run, recorded and replayable."""
import pytest
from hypothesis import given, settings, strategies as st

from harness.choices import (
    SCHEDULER_RANDOM, BytesSource, ChoiceSource, HypothesisSource, PCTSource, PreemptionSource, RandomSource,
    RecordedSource, byte_width, graph_relevant, job_thread, pct_bound,
)


def test_a_single_option_is_not_a_choice():
    src = RandomSource(1)
    assert src.choose(1, "x") == 0
    assert src.choose(0, "x") == 0
    assert src.recorded == []


def test_base_source_has_no_policy():
    with pytest.raises(NotImplementedError):
        ChoiceSource().choose(2, "x")


def test_random_source_is_seeded_and_records():
    a, b = RandomSource(7), RandomSource(7)
    assert [a.choose(10, "x") for _ in range(20)] == [b.choose(10, "x") for _ in range(20)]
    assert len(a.recorded) == 20 and all(0 <= v < 10 for v in a.recorded)


def test_recorded_source_replays_reduces_modulo_then_gives_zero():
    src = RecordedSource([3, 7, 1])
    assert [src.choose(5, "x"), src.choose(5, "x")] == [3, 2]
    assert not src.exhausted
    assert src.choose(5, "x") == 1
    assert src.exhausted
    assert src.choose(5, "x") == 0
    assert src.recorded == [3, 2, 1, 0]


def test_random_source_draws_what_random_randrange_draws():
    """A case's ``{"policy": "random", "seed": S}`` means Random(S).randrange per decision:
    the fast path must not change a single schedule."""
    import random
    src, reference = RandomSource(11), random.Random(11)
    sizes = [2, 3, 7, 100, 255, 256, 257, 1000, 65536, 70000, 2**31]
    assert [src.choose(n, "x") for n in sizes * 20] == [reference.randrange(n) for n in sizes * 20]
    assert src.choose(1, "x") == 0 and len(src.recorded) == len(sizes) * 20


# -- PCT ----------------------------------------------------------------------------

def test_pct_without_change_points_always_runs_the_same_key_first():
    src = PCTSource(seed=3, depth=1)
    first = ["a", "b", "c"][src.choose(3, "poll", ["a", "b", "c"])]
    for keys in (["c", "b", "a"], ["b", "a", "c"], ["a", "c", "b"]):
        assert keys[src.choose(3, "poll", keys)] == first
    assert src.threads == 3
    assert src.change_points == {}


EXITS = ["bh:job_exit:a", "bh:job_exit:b"]      # completions: graph-relevant decisions


def test_pct_change_point_demotes_the_highest_key_there():
    src = PCTSource(seed=3, depth=2, n_steps_estimate=1)
    assert src.change_points == {1: 1.0}
    ran = [job_thread(EXITS[src.choose(2, "poll", EXITS)]) for _ in range(4)]
    (demoted,) = {"a", "b"} - {ran[0]}
    assert ran == [ran[0]] * 4
    assert src.priorities[demoted] == 1.0
    assert src.priorities[ran[0]] > 2.0


def test_pct_new_keys_rank_above_demoted_ones():
    src = PCTSource(seed=0, depth=2, n_steps_estimate=1)
    ran = job_thread(EXITS[src.choose(2, "poll", EXITS)])
    demoted = "b" if ran == "a" else "a"
    keys = ["bh:job_exit:x", f"bh:job_exit:{demoted}"]
    assert keys[src.choose(2, "poll", keys)] == "bh:job_exit:x"


def test_pct_counts_and_changes_only_at_graph_relevant_decisions():
    src = PCTSource(seed=3, depth=2, n_steps_estimate=1)
    copies = ["io:a", "timer:b"]                    # copy-loop steps: no graph change offered
    first = [copies[src.choose(2, "poll", copies)] for _ in range(5)]
    assert src.steps == 0 and len(set(first)) == 1
    assert not graph_relevant(copies)
    assert graph_relevant(["io:a", "io:bdrv_change_backing_file"])
    top = job_thread(first[0])
    keys = ["io:a", "bh:job_exit:b"]                # the change point (step 1) is here
    assert job_thread(keys[src.choose(2, "poll", keys)]) != top
    assert src.steps == 1


def test_pct_generation_choices_are_seeded_random():
    a, b = PCTSource(seed=5), PCTSource(seed=5)
    assert [a.choose(100, "gen:x") for _ in range(10)] == [b.choose(100, "gen:x") for _ in range(10)]
    assert a.steps == 0


def test_pct_rejects_a_depth_below_one():
    with pytest.raises(ValueError, match="depth >= 1"):
        PCTSource(seed=0, depth=0)


def test_pct_bound_is_one_over_n_k_to_the_d_minus_one():
    assert pct_bound(3, 200, 2) == 1 / 600
    assert pct_bound(4, 10, 3) == 1 / 400
    assert pct_bound(5, 1000, 1) == 1 / 5
    assert pct_bound(0, 0, 2) == 1.0


# -- non-preemptive schedules with exceptions ----------------------------------------

def test_preemption_source_continues_the_thread_that_ran_last():
    src = PreemptionSource()
    assert src.choose(2, "poll", ["timer:a", "timer:b"]) == 0          # the oldest: a
    assert src.choose(2, "poll", ["timer:b", "io:a"]) == 1             # a goes on
    assert src.choose(3, "between") == 0                               # no loop between commands
    assert src.choose(2, "poll", ["timer:b", "bh:job_exit:c"]) == 0    # a is gone: the oldest
    assert src.forced == [] and src.recorded == [0, 1, 0, 0]


def test_preemption_source_points_force_decisions_and_name_their_kind():
    src = PreemptionSource({1: 0, 2: 2, 3: 1})
    keys = [["timer:a", "timer:b"], ["timer:b", "io:a"], None, ["timer:c", "io:d"]]
    for k in keys:
        src.choose(3 if k is None else 2, "between" if k is None else "poll", k)
    assert [(d.index, d.kind, d.chosen, d.default) for d in src.forced] == [
        (1, "preemption", 0, 1), (2, "delay", 2, 0), (3, "reorder", 1, 0)]
    assert src.forced[0].describe() == "preemption at : ran timer:b instead of io:a"
    assert src.forced[1].describe() == "delay at : the loop ran until idle before the next command"
    assert src.forced[2].describe() == "reorder at : ran io:d instead of timer:c"
    twins = PreemptionSource({0: 1})
    twins.choose(2, "poll", ["io:bdrv_change_backing_file"] * 2)
    assert twins.forced[0].describe() == ("reorder at : ran io:bdrv_change_backing_file #2 instead of "
                                          "io:bdrv_change_backing_file #1")


def test_preemption_source_follows_a_recorded_schedule_and_finds_its_departures():
    src = PreemptionSource(follow=[1, 1])
    assert [src.choose(2, "poll", ["timer:a", "timer:b"]) for _ in range(3)] == [1, 1, 0]
    # b first is a reorder; past the list 0 (a) stops b, which could go on
    assert [(d.index, d.kind) for d in src.forced] == [(0, "reorder"), (2, "preemption")]


# -- bytes --------------------------------------------------------------------------

def test_bytes_source_reads_from_the_front_then_gives_zero():
    src = BytesSource(b"\x05\x01\x02\x09")
    assert src.choose(10, "x") == 5
    assert src.choose(300, "x") == 0x0102 % 300
    assert src.choose(4, "x") == 1
    assert src.exhausted
    assert src.choose(200, "x") == 0
    assert src.recorded == [5, 258, 1, 0]
    assert src.offsets == [0, 1, 3, 4]


def test_bytes_source_pads_a_short_tail_with_zeros():
    src = BytesSource(b"\x01")
    assert src.choose(1 << 16, "x") == 0x0100


def test_byte_width():
    assert [byte_width(n) for n in (2, 256, 257, 65536, 65537)] == [1, 1, 2, 2, 4]


def test_appending_bytes_keeps_earlier_choices():
    short, longer = BytesSource(b"\x03\x04"), BytesSource(b"\x03\x04\xff\xff")
    assert [short.choose(9, "x") for _ in range(2)] == [longer.choose(9, "x") for _ in range(2)]


# -- hypothesis ---------------------------------------------------------------------

@pytest.mark.parametrize("draws", ["integers", "bytes"])
def test_hypothesis_source_shrinks_generation_and_schedule_together(draws):
    seen = []

    @settings(max_examples=300, database=None, derandomize=True)
    @given(st.data())
    def prop(data):
        src = HypothesisSource(data, draws=draws)
        a = src.choose(100, "gen:a")
        b = src.choose(100, "poll", ["co:a", "co:b"])
        seen.append(list(src.recorded))
        assert a + b < 50

    with pytest.raises(AssertionError):
        prop()
    assert seen[-1] == [0, 50]


def test_hypothesis_source_draws_a_new_block_when_one_runs_out():
    from harness.choices import BLOCK
    drawn = []

    @settings(max_examples=1, database=None, derandomize=True)
    @given(st.data())
    def prop(data):
        src = HypothesisSource(data)
        src._block = lambda: drawn.append(1) or bytes(range(BLOCK))
        values = [src.choose(256, "gen:x") for _ in range(BLOCK + 1)]
        assert values == list(range(BLOCK)) + [0]

    prop()
    assert len(drawn) == 2


@given(st.lists(st.integers(0, 70000), max_size=200), st.integers(0, 2**32))
@settings(max_examples=50, database=None)
def test_hypothesis_source_inline_one_byte_choices_match_the_block_reader(sizes, seed):
    """The inline reader of one-byte decisions and the general block reader hand out
    the same values from the same blocks, for every width of decision."""
    import random

    from harness.choices import BLOCK
    stream = random.Random(seed).randbytes(4096)

    def reader(inline: bool):
        src = HypothesisSource(type("Data", (), {"conjecture_data": None})())
        blocks = iter(stream[i:i + BLOCK] for i in range(0, len(stream), BLOCK))
        src._draw_block = lambda: next(blocks)
        if not inline:
            src.choose = super(HypothesisSource, src).choose
        return [src.choose(n, "gen:x") for n in sizes], src.recorded, src.blocks

    assert reader(True) == reader(False)


def test_hypothesis_source_random_schedule_replays_through_register_random():
    seen = []

    @settings(max_examples=300, database=None, derandomize=True)
    @given(st.data())
    def prop(data):
        src = HypothesisSource(data, schedule="random")
        values = [src.choose(1000, "poll", ["co:a", "co:b"]) for _ in range(3)]
        seen.append(values)
        assert max(values) < 900

    # hypothesis replays the failing example: a schedule it did not seed would
    # make that replay differ, and hypothesis would raise FlakyFailure instead
    with pytest.raises(AssertionError):
        prop()
    assert max(seen[-1]) >= 900


def test_hypothesis_source_rejects_an_unknown_schedule_or_draw_kind():
    with pytest.raises(ValueError, match="'draw' or 'random'"):
        HypothesisSource(None, schedule="pct")
    with pytest.raises(ValueError, match="'bytes' or 'integers'"):
        HypothesisSource(None, draws="floats")


def test_scheduler_random_is_one_object():
    import harness.choices as choices
    assert choices.SCHEDULER_RANDOM is SCHEDULER_RANDOM


def test_pct_change_points_fall_within_its_default_ten_relevant_steps():
    for seed in range(50):
        assert all(1 <= p <= 10 for p in PCTSource(seed, depth=3).change_points)
