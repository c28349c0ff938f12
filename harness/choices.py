"""Choice sources: the one interface behind every decision of a run.

The model's scheduler and the case generator ask ``choose(n, label, keys)``
for an integer in ``range(n)``. ``label`` says what is being decided (for
traces and for engines that treat kinds of decision differently), ``keys``
optionally names the ``n`` options (PCT uses them as thread identities).

Every source records the choices it handed out in ``recorded``, so any run
can be replayed exactly with :class:`RecordedSource`. A decision with a single
option (``n == 1``) is not a choice: it is neither asked for nor recorded,
which keeps recorded schedules short and stable under shrinking.
"""
from __future__ import annotations

import random
from typing import Hashable, Sequence


class ChoiceSource:
    """Base class: subclasses implement :meth:`_pick`."""

    def __init__(self) -> None:
        self.recorded: list[int] = []

    def choose(self, n: int, label: str, keys: Sequence[Hashable] | None = None) -> int:
        """Return an integer in ``range(n)``; ``n`` must be at least 1."""
        if n <= 1:
            return 0
        value = self._pick(n, label, keys)
        self.recorded.append(value)
        return value

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        raise NotImplementedError


class RandomSource(ChoiceSource):
    """Seeded uniform choices: the plain-random baseline."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.rng = random.Random(seed)

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        return self.rng.randrange(n)


class RecordedSource(ChoiceSource):
    """Replays a recorded list; past its end every choice is 0.

    A recorded value that is out of range for the decision at hand (the case
    was edited, or a shrinker removed something) is reduced modulo ``n``.
    """

    def __init__(self, choices: Sequence[int]) -> None:
        super().__init__()
        self.choices = list(choices)
        self.position = 0

    def _pick(self, n: int, label: str, keys: Sequence[Hashable] | None) -> int:
        if self.position >= len(self.choices):
            return 0
        value = self.choices[self.position] % n
        self.position += 1
        return value

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self.choices)
