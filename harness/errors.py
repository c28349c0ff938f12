"""Harness-side exceptions; all derive from :class:`reference.errors.BlockfuzzError`."""
from __future__ import annotations

from reference.errors import BlockfuzzError


class UsageError(BlockfuzzError):
    """Bad input from the user: the CLI prints it on one line and exits 2."""


class CaseError(UsageError):
    """A case file that does not fit the case format.

    ``path`` is the file, ``json_path`` where in it (``$.commands[3].arguments``),
    ``expected`` what was expected there.
    """

    def __init__(self, path: str | None, json_path: str, expected: str):
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{json_path}: {expected}")
        self.path = path
        self.json_path = json_path
        self.expected = expected


class QemuError(BlockfuzzError):
    """Real QEMU could not be used (missing, failed to start, ...)."""
