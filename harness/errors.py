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


class AtherisError(BlockfuzzError):
    """An atheris worker of a campaign stopped on its own with an error.

    ``worker`` is its number, ``returncode`` libFuzzer's exit code and ``log``
    the file holding libFuzzer's output, kept for the reader.
    """

    def __init__(self, worker: int, returncode: int, log: str):
        last = _last_line(log)
        super().__init__(f"atheris worker {worker} exited with code {returncode}"
                         f"{f' ({last})' if last else ''}; libFuzzer's output is in {log}")
        self.worker = worker
        self.returncode = returncode
        self.log = log


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""
