"""harness.blocks: hypothesis's provider with fixed-size byte strings drawn whole."""
import random

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.internal.conjecture.data import ConjectureData
from hypothesis.internal.conjecture.providers import AVAILABLE_PROVIDERS, HypothesisProvider

from harness.blocks import SUPPORTED, WholeBlockProvider, whole_blocks

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="this hypothesis draws bytes in another form")


def draw(provider, seed, size_range):
    data = ConjectureData(random=random.Random(seed), provider=provider)
    return data.provider.draw_bytes(*size_range)


@pytest.mark.parametrize("seed", range(40))
def test_a_fixed_size_string_is_one_randbytes_after_the_constant_check(seed):
    rng = random.Random(seed)
    wants_constant = rng.random() <= 0.05
    value = draw(WholeBlockProvider, seed, (64, 64))
    assert len(value) == 64
    if not wants_constant:
        assert value == rng.randbytes(64)


@pytest.mark.parametrize("seed", range(10))
def test_a_string_of_variable_size_is_hypothesis_s_own_draw(seed):
    assert draw(WholeBlockProvider, seed, (0, 40)) == draw(HypothesisProvider, seed, (0, 40))


def test_the_default_backend_uses_it_only_inside_whole_blocks():
    before = AVAILABLE_PROVIDERS["hypothesis"]
    seen = []

    @settings(max_examples=3, database=None)
    @given(st.data())
    def prop(data):
        seen.append(type(data.conjecture_data.provider))
        assert len(data.conjecture_data.draw_bytes(64, 64)) == 64

    with whole_blocks():
        prop()
    # hypothesis's first example is its simplest, all zeros, drawn without a provider's randomness
    assert seen[0] is HypothesisProvider and set(seen[1:]) == {WholeBlockProvider}
    assert AVAILABLE_PROVIDERS["hypothesis"] is before
    seen.clear()
    prop()
    assert WholeBlockProvider not in seen


def test_whole_blocks_puts_the_default_back_when_the_test_raises():
    before = AVAILABLE_PROVIDERS["hypothesis"]
    with pytest.raises(KeyError):
        with whole_blocks():
            raise KeyError("x")
    assert AVAILABLE_PROVIDERS["hypothesis"] is before
