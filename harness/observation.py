"""What a backend saw when it ran a case, in one shape for the model and QEMU.

Backends fill an :class:`Observation`; :mod:`harness.oracle` and
:mod:`harness.check` judge it; the differential mode compares two of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChainNode:
    """One node of the final chain, top first, filters included."""

    node_name: str
    driver: str                 # qcow2, raw, copy-on-read, commit_top, mirror_top
    filename: str               # the case's filename of the image (a filter: its child's)
    backing_file: str | None    # the image header's backing string (None: no backing)
    read_only: bool | None = None   # opened read-only (QEMU's "ro"); None: not observed

    @property
    def is_filter(self) -> bool:
        return self.driver in ("copy-on-read", "commit_top", "mirror_top")


@dataclass
class Finding:
    """A backend-level finding: the run itself went wrong."""

    kind: str          # use-after-free, hang, crash, illegal-transition, qemu-crash
    message: str
    where: str = ""    # for deduplication: the model function / QMP command
    step: int = -1     # index of the command during which it happened (-1: at the end)


@dataclass
class Observation:
    """Everything a run showed.

    ``replies``: one per command, ``{"return": {}}`` or
    ``{"error": {"class": C, "desc": D}}``; a command not reached because
    the run ended early has no entry.
    ``events``: QMP events in order, ``{"event": NAME, "data": {...}}``.
    ``job_statuses``: job id -> its status sequence from JOB_STATUS_CHANGE,
    starting with ``created``, with drain-caused paused/running (and
    standby/ready) pairs folded away.
    ``chain``: the device's (or top image's) chain at the end, top first,
    following each node's immediate backing (or filtered) child.
    ``data``: guest-visible data through the device at the end, as maximal
    runs ``[offset, length, byte]``.
    ``jobs_left``: ids of jobs that still exist at the end, with their status.
    """

    replies: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    job_statuses: dict[str, list[str]] = field(default_factory=dict)
    chain: list[ChainNode] = field(default_factory=list)
    data: list[list[int]] = field(default_factory=list)
    jobs_left: dict[str, str] = field(default_factory=dict)
    finding: Finding | None = None
    choices: list[int] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def chain_names(self, collapse_filters: bool = True) -> list[str]:
        return [n.node_name for n in self.chain if not (collapse_filters and n.is_filter)]


#: a status -> the status that, right after it, folds the pair away (a dict lookup
#: per status: every run's observation folds every job's sequence)
_FOLDED = {"paused": "running", "standby": "ready"}


def fold_drain_pairs(statuses: list[str]) -> list[str]:
    """Drop transient paused->running and standby->ready pairs (drain noise)."""
    out: list[str] = []
    for s in statuses:
        if out and _FOLDED.get(out[-1]) == s:
            out.pop()
            continue
        out.append(s)
    return out


def raw_statuses(events: list[dict]) -> list[str]:
    """Job status changes as ``id:status``, other events by name, drain pauses kept
    (the differential comparison folds them away; a job at 1 byte/s makes them
    countable, see ``scripts/drain_diff.py``)."""
    return [f"{e['data']['id']}:{e['data']['status']}" if e["event"] == "JOB_STATUS_CHANGE" else e["event"]
            for e in events]
