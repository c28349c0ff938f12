"""Scenario coverage: the "sometimes" cells a campaign reached.

Line coverage does not say whether the dangerous interleavings happened.
The model names them as it passes through them (``Machine.cell``, reported
in ``observation.extra["cells"]``): "a job completed inside a drain",
"stream_prepare ran while a commit was pending", ... A campaign keeps, per
cell, the run that first reached it, and prints what it reached and what it
did not. :data:`REQUIRED` lists the cells the seed corpus plus a bounded
campaign must keep reaching (``tests/quality/test_cells.py``).
"""
from __future__ import annotations

from typing import Iterable

#: cells the seed corpus plus a bounded random campaign on the fixed model reach
REQUIRED: tuple[str, ...] = (
    "stream_prepare ran",
    "stream_prepare ran while a commit was pending",
    "stream_prepare's base is a node a pending commit will drop",
    "a job completed inside a drain",
    "a job completed inside another job's completion",
    "a node was freed during a drain",
    "a commit_top filter was freed by a job completion",
    "a copy-on-read filter was freed by a job completion",
    "a completion attached a node another unfinished job holds",
    "two job completions were pending at once",
)


class CellCoverage:
    """Cells reached so far, each with the run that first reached it."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}

    def add(self, cells: Iterable[str], run: int) -> list[str]:
        """Record ``cells`` reached by ``run`` (0: a corpus case); return the new ones."""
        new = [c for c in cells if c not in self.first]
        for c in new:
            self.first[c] = run
        return new

    def __len__(self) -> int:
        return len(self.first)

    def missing(self, wanted: Iterable[str] = REQUIRED) -> list[str]:
        return [c for c in wanted if c not in self.first]

    def lines(self) -> list[str]:
        """One line per cell reached, in the order reached, then the required ones missed."""
        out = [f"  {c}  ({f'first at run {r}' if r else 'the corpus'})"
               for c, r in sorted(self.first.items(), key=lambda x: x[1])]
        out += [f"  NOT REACHED: {c}" for c in self.missing()]
        return out
