"""The exception hierarchy of blockfuzz.

One root, :class:`BlockfuzzError`; each subclass carries the facts a report
needs as attributes, and ``str()`` is one line::

    BlockfuzzError
     ├── QMPError            a modelled QMP error reply (class, desc)
     ├── ModelFault          the model itself went wrong: a finding
     │    ├── UseAfterFree        a freed node was touched
     │    ├── IllegalTransition   a job status change outside job.c's table
     │    └── Hang                the event loop could not make progress
     └── (harness.errors)    CaseError, UsageError, QemuError, ...
"""
from __future__ import annotations


class BlockfuzzError(Exception):
    """Root of every exception blockfuzz raises on purpose."""


class QMPError(BlockfuzzError):
    """A QMP command failed the way QEMU fails it.

    ``error_class`` is QEMU's class (``GenericError``, ``DeviceNotFound``,
    ``DeviceNotActive``), ``desc`` its text, letter for letter.
    """

    def __init__(self, desc: str, error_class: str = "GenericError"):
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def reply(self) -> dict:
        return {"error": {"class": self.error_class, "desc": self.desc}}


class ModelFault(BlockfuzzError):
    """Something happened that QEMU would crash on or assert against.

    ``kind`` is the finding kind it maps to; ``where`` names the model
    function, used to deduplicate findings.
    """

    kind = "crash"

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where


class UseAfterFree(ModelFault):
    """A node was used after its last reference was dropped."""

    kind = "use-after-free"

    def __init__(self, node: str, freed_at: str, touched_at: str, where: str = ""):
        super().__init__(
            f"node '{node}' was freed at step {freed_at} and touched at step {touched_at}",
            where=where or touched_at.split(" ", 1)[-1],
        )
        self.node = node
        self.freed_at = freed_at
        self.touched_at = touched_at


class IllegalTransition(ModelFault):
    """A job status change that job.c's transition table forbids."""

    kind = "illegal-transition"

    def __init__(self, job: str, old: str, new: str):
        super().__init__(f"job '{job}': illegal transition {old} -> {new}", where=f"{old}->{new}")
        self.job = job
        self.old = old
        self.new = new


class Hang(ModelFault):
    """The event loop had nothing to run while something still waited."""

    kind = "hang"

    def __init__(self, waiting_for: str, steps: int):
        super().__init__(f"no progress while waiting for {waiting_for} (after {steps} steps)",
                         where=waiting_for)
        self.waiting_for = waiting_for
        self.steps = steps
