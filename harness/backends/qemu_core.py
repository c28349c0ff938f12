"""Where a crashed QEMU crashed: gdb's backtrace from its core file.

A SIGSEGV at the end of a case says little; the function it died in says
which bug it is. Debian's QEMU has no debug symbols here, but it exports most
of its functions (``nm -D`` lists about 20,000), so gdb names nearly every
frame of the block layer: ``bdrv_refresh_filename ← bdrv_block_device_info ←
bdrv_named_nodes_list ← qmp_marshal_query_named_block_nodes``.

Nothing runs under a debugger: QEMU runs as before, in a working directory of
its own, with the core size limit raised to its hard limit. Only when it dies
of a signal that dumps core is gdb run, on the core file, which is then
deleted. Where ``core_pattern`` hands cores to a program (systemd-coredump,
apport) or gdb is missing, there are no backtraces and nothing else changes.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass

#: signals that dump core
CORE_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL})
#: frames kept from gdb's backtrace
FRAMES = 30
#: how long gdb may take to read a core
GDB_TIMEOUT = 60.0
CORE_PATTERN = "/proc/sys/kernel/core_pattern"

_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(.*?\)(?: at (\S+))?(?: from (\S+))?\s*$")


@dataclass(frozen=True)
class Frame:
    """One frame: its function (``??`` when gdb cannot name it) and, for a frame
    outside the QEMU binary, the shared library it is in."""

    function: str
    library: str = ""

    def __str__(self) -> str:
        return self.function + (f" ({os.path.basename(self.library)})" if self.library else "")


def cores_possible() -> bool:
    """Whether a crashed process leaves a core file in its working directory that
    gdb can read: ``core_pattern`` a plain file name, gdb on PATH."""
    try:
        with open(CORE_PATTERN) as f:
            pattern = f.read().strip()
    except OSError:
        return False
    return bool(pattern) and not pattern.startswith("|") and "/" not in pattern \
        and shutil.which("gdb") is not None


def allow_core_dumps() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Raise the core size limit to the hard limit (no privilege needed)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def dumped_core(returncode: int | None) -> bool:
    return returncode is not None and returncode < 0 and -returncode in CORE_SIGNALS


def take_backtrace(binary_path: str, directory: str) -> tuple[Frame, ...]:
    """The backtrace of the core file a crashed process left in ``directory``
    (innermost frame first), the core then deleted; () when there is none or gdb
    cannot read it."""
    cores = [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.startswith("core")] \
        if os.path.isdir(directory) else []
    if not cores:
        return ()
    try:
        out = subprocess.run(["gdb", "-q", "-nx", "-batch", "-ex", "set pagination off",
                              "-ex", f"bt {FRAMES}", binary_path, cores[0]],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=GDB_TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    finally:
        for core in cores:
            os.unlink(core)
    return parse_backtrace(out)


def parse_backtrace(text: str) -> tuple[Frame, ...]:
    """gdb's ``bt`` lines as frames, in order."""
    frames = []
    for line in text.splitlines():
        m = _FRAME.match(line.strip())
        if m is not None:
            frames.append(Frame(m.group(2), m.group(4) or ""))
    return tuple(frames)


def qemu_frames(frames: tuple[Frame, ...]) -> list[str]:
    """The named frames of QEMU's own code, innermost first: not a shared library's,
    and not the C library's abort path (``__GI_raise``, ``__GI_abort``,
    ``__assert_fail_base``, ...: with libc's debug symbols installed gdb names them
    without their library), which every failed assertion goes through."""
    own: list[str] = []
    for f in frames:
        name = f.function
        if f.library or name == "??" or name.startswith("__") or name in ("raise", "abort"):
            continue
        # gdb may show the innermost function twice when it unwinds a core without symbols
        if not own or own[-1] != name:
            own.append(name)
    return own


def crash_site(frames: tuple[Frame, ...], depth: int = 2) -> str:
    """The innermost ``depth`` named frames of QEMU's own code, innermost first:
    ``bdrv_getlength<bdrv_co_common_block_status_above``. A crash is known by
    where it happened, whatever command led there."""
    return "<".join(qemu_frames(frames)[:depth])
