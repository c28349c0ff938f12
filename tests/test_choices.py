"""Choice sources: every decision of a run, recorded and replayable."""
import pytest
from hypothesis import given, settings, strategies as st

from harness.choices import (
    SCHEDULER_RANDOM, BytesSource, ChoiceSource, HypothesisSource, PCTSource, RandomSource,
    RecordedSource, byte_width, pct_bound,
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


# -- PCT ----------------------------------------------------------------------------

def test_pct_without_change_points_always_runs_the_same_key_first():
    src = PCTSource(seed=3, depth=1)
    first = ["a", "b", "c"][src.choose(3, "poll", ["a", "b", "c"])]
    for keys in (["c", "b", "a"], ["b", "a", "c"], ["a", "c", "b"]):
        assert keys[src.choose(3, "poll", keys)] == first
    assert src.threads == 3
    assert src.change_points == {}


def test_pct_change_point_demotes_the_highest_key_there():
    src = PCTSource(seed=3, depth=2, n_steps_estimate=1)
    assert src.change_points == {1: 1.0}
    keys = ["a", "b"]
    ran = [keys[src.choose(2, "poll", keys)] for _ in range(4)]
    (demoted,) = set(keys) - {ran[0]}
    assert ran == [ran[0]] * 4
    assert src.priorities[demoted] == 1.0
    assert src.priorities[ran[0]] > 2.0


def test_pct_new_keys_rank_above_demoted_ones():
    src = PCTSource(seed=0, depth=2, n_steps_estimate=1)
    ran = ["a", "b"][src.choose(2, "poll", ["a", "b"])]
    demoted = "b" if ran == "a" else "a"
    assert ["x", demoted][src.choose(2, "poll", ["x", demoted])] == "x"


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

def test_hypothesis_source_shrinks_generation_and_schedule_together():
    seen = []

    @settings(max_examples=300, database=None, derandomize=True)
    @given(st.data())
    def prop(data):
        src = HypothesisSource(data)
        a = src.choose(100, "gen:a")
        b = src.choose(100, "poll", ["co:a", "co:b"])
        seen.append(list(src.recorded))
        assert a + b < 50

    with pytest.raises(AssertionError):
        prop()
    assert seen[-1] == [0, 50]


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


def test_hypothesis_source_rejects_an_unknown_schedule():
    with pytest.raises(ValueError, match="'draw' or 'random'"):
        HypothesisSource(None, schedule="pct")


def test_scheduler_random_is_one_object():
    import harness.choices as choices
    assert choices.SCHEDULER_RANDOM is SCHEDULER_RANDOM
