"""The catalogue of historical QEMU bugs that can be put back into the model.

Each entry names the upstream fix it undoes and the mechanism in one line.
The model asks ``bugs.active(ID)`` at the places where the historical code
differed; the fixed model (QEMU 7.2) has none active.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    id: str
    fix: str          # the upstream commit that fixed it
    release: str      # the first release with the fix
    mechanism: str    # one line
    finding: str      # the finding kind it produces


BUGS: dict[str, Bug] = {b.id: b for b in (
    Bug("stream-prepare-no-drain", "b1e1af394d", "7.0",
        "stream_prepare reads base with no reference and no drain, then "
        "bdrv_set_backing_hd drains: a commit completing there frees base (use-after-free)",
        "use-after-free"),
    Bug("stream-prepare-ref-only", "b1e1af394d", "7.0",
        "stream_prepare takes a reference on base but does not drain around the change: "
        "a node the commit just cut out is installed again as the backing",
        "wrong-backing"),
    Bug("stream-header-before-backing", "8441d82d51", "4.1",
        "stream_prepare rewrites the image header (I/O: a nested poll) before "
        "bdrv_set_backing_hd, holding base with no reference: a commit completing in that "
        "poll frees it (use-after-free)",
        "use-after-free"),
    Bug("no-never-freeze", "e5182c1c57", "4.1",
        "without BDS.never_freeze a stream may freeze a link to a commit filter: 030 "
        "test_overlapping_4's stream is accepted where QEMU refuses it; campaigns find "
        "what that led to before the fix: the commit cannot drop its filter (crash in "
        "commit_abort, &error_abort) or a node it freed is touched (use-after-free)",
        "accept-mismatch"),
)}


class UnknownBug(KeyError):
    pass


def validate(ids) -> tuple[str, ...]:
    """Return ``ids`` as a tuple; raise :class:`UnknownBug` for an id not in the catalogue."""
    out = tuple(ids)
    for i in out:
        if i not in BUGS:
            raise UnknownBug(i)
    return out
