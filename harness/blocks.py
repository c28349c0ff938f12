"""hypothesis's own generator, with a fixed-size byte string drawn in one piece.

The hypothesis engine reads its decisions from blocks of bytes
(:class:`harness.choices.HypothesisSource`). hypothesis 6.170's provider draws a
byte string one byte at a time, each through its collection bookkeeping
(``many()``): about 2.3 microseconds a byte on a fast core, 150 for a 64-byte
block, more than a model run. For a string of fixed length that bookkeeping
decides nothing (there is no size to draw), so :class:`WholeBlockProvider` draws
the same distribution, uniform bytes and hypothesis's occasional constant, with
one call to the test case's random generator.

:func:`whole_blocks` puts it in place of the default provider for the duration of
one hypothesis call, under the default backend's own name: hypothesis grows its
tree of choice sequences, mutates and shrinks only for that backend, and all of
that stays as it was; only the generate phase's fresh bytes come cheaper. Where
hypothesis has no such provider, or draws bytes in another form, nothing
changes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import inspect

try:
    from hypothesis.internal.conjecture import providers as _providers
    from hypothesis.internal.conjecture.providers import HypothesisProvider
except ImportError:       # pragma: no cover - hypothesis before choice sequences
    _providers = None
    HypothesisProvider = object

#: whether this hypothesis's provider draws bytes as ``draw_bytes(min_size, max_size)``,
#: the form :class:`WholeBlockProvider` overrides (older ones took one size)
SUPPORTED = _providers is not None and {"min_size", "max_size"} <= set(
    inspect.signature(HypothesisProvider.draw_bytes).parameters)


class WholeBlockProvider(HypothesisProvider):   # type: ignore[misc, valid-type]
    """hypothesis's provider; ``draw_bytes(n, n)`` is one ``randbytes(n)``."""

    def draw_bytes(self, min_size: int = 0, max_size: int = 8 * 1024) -> bytes:
        if min_size != max_size:
            return super().draw_bytes(min_size, max_size)
        constant = self._maybe_draw_constant("bytes", {"min_size": min_size, "max_size": max_size})
        if constant is not None:
            return constant
        return self._random.randbytes(min_size)


@contextmanager
def whole_blocks() -> Iterator[None]:
    """Within: hypothesis's default backend draws fixed-size byte strings whole."""
    table = getattr(_providers, "AVAILABLE_PROVIDERS", None)
    if not SUPPORTED or table is None or "hypothesis" not in table:  # pragma: no cover - other hypothesis
        yield
        return
    before = table["hypothesis"]
    table["hypothesis"] = WholeBlockProvider
    try:
        yield
    finally:
        table["hypothesis"] = before
