"""Which QEMU binaries the QEMU backend runs.

A block developer tests the QEMU they are changing, so each tool is looked
for, in order:

1. the variable qemu-iotests' ``check`` reads for it (``QEMU_PROG``,
   ``QSD_PROG``, ``QEMU_IMG_PROG``, ``QEMU_IO_PROG``), so that an iotests
   environment carries over;
2. a QEMU build directory, ``--qemu-build DIR`` (``diff``, ``fuzz``), passed
   on to worker processes as ``BLOCKFUZZ_QEMU_BUILD``: the tools where
   QEMU's meson build puts them;
3. ``PATH``: Debian's QEMU 7.2, which ``make test`` installs.

The model is QEMU 7.2's: against another version, ``diff`` reports the
version beside its results (:func:`version_note`), since a difference may be
the versions' rather than a bug.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from harness.errors import QemuError, UsageError

#: tool -> (the iotests variable, its path in a build directory, Debian's package)
TOOLS = {
    "qemu-system-x86_64": ("QEMU_PROG", "qemu-system-x86_64", "qemu-system-x86"),
    "qemu-storage-daemon": ("QSD_PROG", os.path.join("storage-daemon", "qemu-storage-daemon"),
                            "qemu-system-common"),
    "qemu-img": ("QEMU_IMG_PROG", "qemu-img", "qemu-utils"),
    "qemu-io": ("QEMU_IO_PROG", "qemu-io", "qemu-utils"),
}
BUILD_ENV = "BLOCKFUZZ_QEMU_BUILD"
#: the version the model is written after
MODEL_VERSION = (7, 2)


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_binary(name: str) -> str:
    """The path of QEMU tool ``name`` (a key of :data:`TOOLS`); a :class:`QemuError`
    saying where it was looked for and what to do when it is not there."""
    return locate(name)[0]


def locate(name: str) -> tuple[str, str]:
    """``(path, where it came from)``: the iotests variable's name, ``--qemu-build``
    or ``PATH``."""
    variable, in_build, package = TOOLS[name]
    path = os.environ.get(variable)
    if path:
        if not _executable(path):
            raise QemuError(f"{variable}={path}: not an executable file; point it at {name} or unset it")
        return path, variable
    build = os.environ.get(BUILD_ENV)
    if build:
        path = os.path.join(build, in_build)
        if not _executable(path):
            raise QemuError(f"QEMU build directory {build}: no {in_build} in it; build it there "
                            f"or set {variable}")
        return path, "--qemu-build"
    path = shutil.which(name)
    if path is None:
        raise QemuError(f"{name} not found on PATH: install Debian's {package} "
                        f"(apt-get install qemu-utils qemu-system-x86), put it on PATH, "
                        f"set {variable} or pass --qemu-build DIR")
    return path, "PATH"


def use_build(directory: str) -> None:
    """``--qemu-build DIR``: take the tools from this QEMU build directory, in this
    process and the workers it starts."""
    if not os.path.isdir(directory):
        raise UsageError(f"--qemu-build {directory}: not a directory")
    if not any(_executable(os.path.join(directory, in_build)) for _, in_build, _ in TOOLS.values()):
        raise UsageError(f"--qemu-build {directory}: no QEMU tool in it (expected "
                         f"{', '.join(t[1] for t in TOOLS.values())}); give the build directory")
    os.environ[BUILD_ENV] = os.path.abspath(directory)


def version(path: str) -> tuple[int, int] | None:
    """``(major, minor)`` as the tool's ``--version`` reports it (None if it does not say)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise QemuError(f"{path} --version failed: {e}") from None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def version_note(name: str = "qemu-system-x86_64") -> str | None:
    """The line naming the QEMU a run uses, with a warning when it is not 7.2; None
    for the usual one (7.2 from ``PATH``), which needs no saying."""
    path, where = locate(name)
    v = version(path)
    if where == "PATH" and v == MODEL_VERSION:
        return None
    shown = "unknown version" if v is None else f"{v[0]}.{v[1]}"
    line = f"QEMU: {path} ({shown}, from {where})"
    if v != MODEL_VERSION:
        line += (f"; the model is QEMU {MODEL_VERSION[0]}.{MODEL_VERSION[1]}'s, so a difference "
                 f"may be the versions' rather than a bug")
    return line
