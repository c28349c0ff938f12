"""Disk images for the QEMU backend: one template chain per layout, copied per case.

What iotest 030's ``setUp`` does with ``qemu-img create -b`` and ``qemu-io
-c 'write -P ...'``, done once per distinct layout (filenames, formats,
sizes, cluster sizes, writes) into a template directory, then copied into a
fresh directory for each case. Everything lives under one root directory on
tmpfs (``/dev/shm``) when there is one.

Backing files are named by absolute path (with relative names and explicit
``backing.node-name`` options QEMU gives every overlay a ``json:`` filename,
which breaks filename arguments such as ``base``). Template and case
directories have names of the same length, so a copy is made independent of
its template by rewriting the backing file name inside each qcow2 header in
place (the header field QEMU reads in ``block/qcow2.c``'s ``qcow2_do_open``).
That length is chosen so that a case directory's path is :data:`CASE_PATH_PREFIX`
characters long, which the model adds to each path in a backing string.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from harness.case import Image
from harness.backends.qemu_binaries import find_binary
from harness.errors import QemuError

QCOW2_MAGIC = b"QFI\xfb"
#: how many template chains a store keeps before dropping the oldest
MAX_TEMPLATES = 32
ROOT_PREFIX = "blockfuzz-qemu-"
#: the length of every case directory's path with its final "/": what QEMU's absolute
#: paths add to each image filename. The model counts it in strings built from
#: filenames (qcow2 refuses a backing string over 1,023 characters), so the case
#: directories' names are padded to it (unless the root directory is too long)
CASE_PATH_PREFIX = 64
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def default_root_parent() -> str | None:
    """tmpfs when there is one (images are small and copied per case), else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def remove_stale_roots(parent: str | None) -> None:
    """Remove image roots left behind by blockfuzz processes that no longer exist."""
    parent = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = re.match(re.escape(ROOT_PREFIX) + r"(\d+)-", name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def layout_key(images: tuple[Image, ...]) -> str:
    """A stable name for a layout: what the images' bytes depend on."""
    text = repr([(i.filename, i.format, i.size, i.cluster_size, i.writes) for i in images])
    return hashlib.sha256(text.encode()).hexdigest()[:15]


@dataclass
class CaseImages:
    """One case's copy of a chain: its directory and the filename mapping."""

    directory: str
    filenames: tuple[str, ...]      # bottom first, as in the case

    def path(self, filename: str) -> str:
        return os.path.join(self.directory, filename)

    def real(self, name: str) -> str:
        """A case filename as QEMU must see it; anything else unchanged."""
        return self.path(name) if name in self.filenames else name

    def to_case(self, text: str) -> str:
        """Map real paths in a QEMU text back to the case's filenames."""
        return text.replace(self.directory + "/", "")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ImageStore:
    """Template chains and per-case copies under one root directory.

    Use as a context manager, or call :meth:`close`, which removes every file.
    """

    def __init__(self, parent: str | None = None):
        parent = parent if parent is not None else default_root_parent()
        remove_stale_roots(parent)
        self.root = tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=parent)
        self.qemu_img = find_binary("qemu-img")
        self.qemu_io = find_binary("qemu-io")
        self._templates: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._copies = 0
        #: template and case directory names, the root's "/" and theirs within the prefix
        self.name_width = max(16, CASE_PATH_PREFIX - len(self.root) - 2)

    def __enter__(self) -> "ImageStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._templates.clear()

    def checkout(self, images: tuple[Image, ...]) -> CaseImages:
        """A fresh copy of the layout's template chain for one case."""
        template = self.template(images)
        self._copies += 1
        directory = os.path.join(self.root, f"c{self._copies:0{self.name_width - 1}x}")
        os.mkdir(directory)
        copy = CaseImages(directory, tuple(i.filename for i in images))
        for img in images:
            shutil.copyfile(os.path.join(template, img.filename), copy.path(img.filename))
            if img.format == "qcow2":
                _rebase_header(copy.path(img.filename), template, directory)
        return copy

    def template(self, images: tuple[Image, ...]) -> str:
        """The template directory of this layout, built on first use."""
        key = layout_key(images)
        directory = self._templates.get(key)
        if directory is not None:
            self._templates.move_to_end(key)
            return directory
        directory = os.path.join(self.root, f"t{key}".ljust(self.name_width, "0"))
        shutil.rmtree(directory, ignore_errors=True)
        os.mkdir(directory)
        try:
            self._build(images, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._templates[key] = directory
        while len(self._templates) > MAX_TEMPLATES:
            _, old = self._templates.popitem(last=False)
            shutil.rmtree(old, ignore_errors=True)
        return directory

    def _build(self, images: tuple[Image, ...], directory: str) -> None:
        for i, img in enumerate(images):
            _check_image(img, i)
            cmd = [self.qemu_img, "create", "-q", "-f", img.format]
            if img.format == "qcow2":
                cmd += ["-o", f"cluster_size={img.cluster_size}"]
            if i > 0:
                below = images[i - 1]
                cmd += ["-b", os.path.join(directory, below.filename), "-F", below.format]
            cmd += [os.path.join(directory, img.filename), str(img.size)]
            _run(cmd, f"qemu-img create for image {i} ('{img.filename}')")
        script: list[str] = []
        for img in images:
            if img.writes:
                script += ["-c", f"open -o driver={img.format} {os.path.join(directory, img.filename)}"]
                script += [a for w in img.writes
                           for a in ("-c", f"write -q -P {w.pattern} {w.offset} {w.length}")]
                script += ["-c", "close"]
        if script:
            out = _run([self.qemu_io, *script], "qemu-io writing the images' patterns")
            if out.strip():
                raise QemuError(f"qemu-io writing the images' patterns failed: {out.strip()}")


def _check_image(img: Image, index: int) -> None:
    if not _SAFE_FILENAME.match(img.filename):
        raise QemuError(f"image {index}: filename '{img.filename}' cannot be used on real QEMU: "
                        f"use a plain file name (letters, digits, '_', '.', '+', '-')")
    if img.format not in ("qcow2", "raw") or (img.format == "raw" and index != 0):
        raise QemuError(f"image {index}: format '{img.format}' is not supported here: "
                        f"use qcow2 (raw only for the bottom image)")


QEMU_IMG_TIMEOUT = 60   # seconds; qemu-img create/rebase of a case's images takes milliseconds


def _run(cmd: list[str], what: str) -> str:
    """Run a qemu-img/qemu-io command in a session of its own, so that at the timeout
    everything it started is killed with it (a wrapper script's children too)."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        raise QemuError(f"{what}: {cmd[0]} not found: install qemu-utils") from None
    with proc:
        try:
            out, err = proc.communicate(timeout=QEMU_IMG_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise QemuError(f"{what}: {cmd[0]} did not finish within {QEMU_IMG_TIMEOUT} s: check that "
                            "it is QEMU 7.2's qemu-img (qemu-img --version) and that it runs") from None
    if proc.returncode != 0:
        raise QemuError(f"{what} failed: {(err or out).strip()}")
    return out


def _rebase_header(path: str, old_dir: str, new_dir: str) -> None:
    """Point a copied qcow2 image's backing file name at the copy's directory.

    The name is rewritten in place: both directories have names of the same
    length, so the header's offset and size fields stay valid.
    """
    old, new = old_dir.encode() + b"/", new_dir.encode() + b"/"
    if len(old) != len(new):  # pragma: no cover - guaranteed by ImageStore's naming
        raise QemuError("template and case directories must have names of the same length")
    with open(path, "r+b") as f:
        header = f.read(20)
        if header[:4] != QCOW2_MAGIC:
            raise QemuError(f"{path}: not a qcow2 image")
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset:
            return
        f.seek(offset)
        name = f.read(size)
        if name.startswith(old):
            f.seek(offset)
            f.write(new + name[len(old):])


def read_backing_strings(qemu_img: str, top: str, images: CaseImages) -> dict[str, str | None]:
    """The on-disk backing strings of the chain under ``top`` (a case filename), top first.

    Runs ``qemu-img info --output=json --backing-chain`` (with ``-U``: it must
    not wait for locks) and maps the paths back to the case's filenames. When
    the chain cannot be opened (a header names a file that is not there, as
    ``backing-file`` can make it), each image is read on its own instead.
    """
    argv = [qemu_img, "info", "-U", "--output=json"]
    try:
        infos = json.loads(_run(argv + ["--backing-chain", images.path(top)],
                                f"qemu-img info of '{top}'"))
    except QemuError:
        infos = []
        for name in reversed(images.filenames):
            info = json.loads(_run(argv + [images.path(name)], f"qemu-img info of '{name}'"))
            infos.append(info)
    chain: dict[str, str | None] = {}
    for info in infos:
        backing = info.get("backing-filename")
        chain[images.to_case(info["filename"])] = images.to_case(backing) if backing is not None else None
    return chain
