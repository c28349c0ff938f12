"""One real QEMU process and its QMP monitor, for the QEMU backend.

Two binaries, as in the feasibility notes:

* ``qemu-system-x86_64 -machine none -nodefaults -display none``: has
  named BlockBackends (HMP ``drive_add``, iotest 030's ``drive0``) and
  in-process ``qemu-io`` through HMP;
* ``qemu-storage-daemon``: pure block layer, for cases without a device.

The monitor is one end of a ``socketpair()`` handed to the child (no socket
file, no polling); the child gets ``PR_SET_PDEATHSIG(SIGKILL)`` so it dies
with the harness, and its stdout and stderr go to a log file. QMP is spoken
with the ``qemu.qmp`` library's asyncio ``QMPClient``; an event recorder is
registered before ``connect`` so that no event is lost.

A monitor that goes away or a process that exits is reported as
:class:`QemuDied` (signal, exit status, the log's tail, and for a crash the
backtrace gdb reads from its core file, :mod:`harness.backends.qemu_core`);
a command that gets no answer within its bound as :class:`QemuHung`.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from typing import Any, Callable

from qemu.qmp import EventListener, ExecuteError, QMPClient

from harness.backends import qemu_core
from harness.backends.qemu_binaries import find_binary
from harness.errors import QemuError

SYSTEM = "qemu-system-x86_64"
STORAGE_DAEMON = "qemu-storage-daemon"
PR_SET_PDEATHSIG = 1
#: how long a process may take to exit after ``quit`` before it is killed
QUIT_GRACE = 2.0
#: what glibc writes over memory QEMU frees (malloc(3), ``MALLOC_PERTURB_``; the byte's
#: complement), as qemu-iotests' check sets it for every test: a use-after-free in QEMU then
#: reads garbage and crashes where it would read the freed object intact and go on (the
#: stream that walks a commit filter freed in its own drain crashed in 9 runs of 30 with it,
#: none of 20 without). A value in the environment wins; ``MALLOC_PERTURB_=0`` turns it off.
MALLOC_PERTURB = "165"


def qemu_environment() -> dict[str, str]:
    """The environment a QEMU process starts with: ours, with :data:`MALLOC_PERTURB`."""
    env = dict(os.environ)
    env.setdefault("MALLOC_PERTURB_", MALLOC_PERTURB)
    return env


class QemuDied(QemuError):
    """The QEMU process exited (or closed its monitor) while being used."""

    def __init__(self, binary: str, pid: int, returncode: int | None, log_tail: str,
                 backtrace: tuple[qemu_core.Frame, ...] = ()):
        self.binary = binary
        self.pid = pid
        self.returncode = returncode
        self.log_tail = log_tail
        self.backtrace = backtrace
        super().__init__(f"{binary} (pid {pid}) {describe_exit(returncode)}{self.crashed_in}")

    @property
    def crashed_in(self) -> str:
        """`` in bdrv_getlength``: the innermost frame of QEMU's own code in the backtrace
        (past the C library's abort path of a failed assertion), else the innermost one."""
        if not self.backtrace:
            return ""
        own = qemu_core.qemu_frames(self.backtrace)
        return f" in {own[0] if own else self.backtrace[0]}"


class QemuHung(QemuError):
    """A QMP command got no answer within its bound."""

    def __init__(self, command: str, timeout: float):
        self.command = command
        self.timeout = timeout
        super().__init__(f"QEMU did not answer '{command}' within {timeout:g} s")


def describe_exit(returncode: int | None) -> str:
    """``died with signal SIGKILL (9)``, ``exited with status 1``, ``closed its monitor``."""
    if returncode is None:
        return "closed its monitor but is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"died with signal {name} ({-returncode})"
    return f"exited with status {returncode}"


def trace_arguments(binary: str, patterns: tuple[str, ...]) -> list[str]:
    """``-trace PATTERN`` for each pattern (``--trace`` for the storage daemon), and
    timestamps on every line (``-msg timestamp=on``; the daemon has no such option)."""
    flag = "-trace" if binary == SYSTEM else "--trace"
    args = [a for p in patterns for a in (flag, p)]
    return args + ["-msg", "timestamp=on"] if patterns and binary == SYSTEM else args


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _die_with_parent_dumping_core() -> None:  # pragma: no cover - runs in the child
    _die_with_parent()
    qemu_core.allow_core_dumps()


class _EventRecorder(EventListener):
    """Keeps every event, in order, and wakes whoever waits for the next one."""

    def __init__(self, on_event: Callable[[dict], None]):
        super().__init__()
        self.log: list[dict] = []
        self.changed = asyncio.Event()
        self.on_event = on_event

    async def put(self, event: Any) -> None:
        record = {"event": event["event"], "data": dict(event.get("data", {}))}
        self.log.append(record)
        self.on_event(record)
        self.changed.set()


class QemuProcess:
    """A started QEMU: ``await QemuProcess.start(binary, log_path)``."""

    def __init__(self, binary: str, log_path: str):
        self.binary = binary
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.client: QMPClient | None = None
        self.recorder = _EventRecorder(self._dispatch)
        self.listeners: list[Callable[[dict], None]] = []
        self.cases_run = 0
        self.nbd_socket = ""
        self.path = ""          # the binary's path
        self.cwd: str | None = None     # its own working directory, where a crash leaves its core
        self._backtrace: tuple[qemu_core.Frame, ...] | None = None

    @classmethod
    async def start(cls, binary: str, log_path: str, timeout: float = 10.0,
                    trace: tuple[str, ...] = ()) -> "QemuProcess":
        """Start ``binary`` (``SYSTEM`` or ``STORAGE_DAEMON``) and connect its monitor.

        ``trace``: QEMU trace-event patterns (``job_*``), enabled with timestamps;
        their lines go to the process's log."""
        self = cls(binary, log_path)
        path = self.path = find_binary(binary)
        if qemu_core.cores_possible():
            self.cwd = log_path + ".cwd"
            os.makedirs(self.cwd, exist_ok=True)
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        if binary == SYSTEM:
            argv = [path, "-machine", "none", "-nodefaults", "-display", "none",
                    "-chardev", f"socket,id=mon0,fd={fd}", "-mon", "chardev=mon0,mode=control"]
        else:
            argv = [path, "--chardev", f"socket,id=mon0,fd={fd}", "--monitor", "chardev=mon0"]
        argv += trace_arguments(binary, trace)
        try:
            with open(log_path, "ab") as log:
                # a session of its own: kill() takes down what it started too (a wrapper's children)
                self.proc = subprocess.Popen(argv, pass_fds=[fd], stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, cwd=self.cwd,
                                             env=qemu_environment(),
                                             preexec_fn=_die_with_parent_dumping_core if self.cwd
                                             else _die_with_parent,
                                             start_new_session=True)
        finally:
            theirs.close()
        self.client = QMPClient(f"blockfuzz-{self.proc.pid}")
        self.client.register_listener(self.recorder)
        try:
            await asyncio.wait_for(self.client.connect(ours), timeout)
        except BaseException as e:
            ours.close()
            if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
                self.kill()
                raise
            died = await self._confirm_death()
            self.kill()
            output = died.log_tail.strip() if isinstance(died, QemuDied) else ""
            raise QemuError(f"{binary} did not start: {died}"
                            + (f"; its output: {output}" if output else "")) from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def events(self) -> list[dict]:
        return self.recorder.log

    def _dispatch(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener(event)

    async def execute(self, command: str, arguments: dict | None = None, *,
                      timeout: float = 10.0) -> Any:
        """Run a QMP command; raise ``ExecuteError`` for QMP errors,
        :class:`QemuDied` / :class:`QemuHung` when QEMU cannot answer."""
        assert self.client is not None
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments or None), timeout)
        except ExecuteError:
            raise
        except asyncio.TimeoutError:
            if self.proc is not None and self.proc.poll() is not None:
                raise self.died_error() from None
            raise QemuHung(command, timeout) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception:
            raise await self._confirm_death() from None

    async def hmp(self, command_line: str, *, timeout: float = 10.0) -> str:
        """Run an HMP command through ``human-monitor-command`` (qemu-system only)."""
        out = await self.execute("human-monitor-command", {"command-line": command_line},
                                 timeout=timeout)
        return str(out)

    async def wait_for_event(self, seen: int, timeout: float) -> bool:
        """Wait until more than ``seen`` events were recorded; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.recorder.log) <= seen:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self.proc is not None and self.proc.poll() is not None:
                raise self.died_error()
            self.recorder.changed.clear()
            try:
                await asyncio.wait_for(self.recorder.changed.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass
        return True

    async def _confirm_death(self) -> QemuDied:
        """The monitor failed: wait a little for the exit status, then describe it."""
        assert self.proc is not None
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        return self.died_error()

    def died_error(self) -> QemuDied:
        returncode = self.proc.poll() if self.proc is not None else None
        return QemuDied(self.binary, self.proc.pid if self.proc else -1, returncode,
                        self.log_tail(), self.backtrace(returncode))

    def backtrace(self, returncode: int | None) -> tuple[qemu_core.Frame, ...]:
        """gdb's backtrace of the core a crash left (read once; () for no crash or no core)."""
        if self._backtrace is None:
            if not (self.cwd and qemu_core.dumped_core(returncode)):
                return ()
            self._backtrace = qemu_core.take_backtrace(self.path, self.cwd)
        return self._backtrace

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_tail(self, since: int = 0, limit: int = 4000) -> str:
        """The process's stdout/stderr from byte ``since`` on, at most ``limit`` characters."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def quit(self) -> None:
        """``quit``, wait for the exit, kill by pid after a grace period; remove the log."""
        if self.alive() and self.client is not None:
            try:
                await asyncio.wait_for(self.client.execute("quit"), QUIT_GRACE)
            except BaseException as e:  # EOF after quit is normal
                if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
                    self.kill()
                    raise
            loop = asyncio.get_running_loop()
            deadline = loop.time() + QUIT_GRACE
            while self.alive() and loop.time() < deadline:
                await asyncio.sleep(0.002)
        await self.disconnect()
        self.kill()

    async def disconnect(self) -> None:
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.disconnect(), QUIT_GRACE)
            except BaseException as e:
                if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
                    raise
            self.client = None

    def kill(self) -> None:
        """SIGKILL the process and everything it started (its process group), and reap it."""
        if self.proc is not None:
            if self.proc.returncode is None:     # not reaped yet: its pid is still its group's
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
        if self.cwd is not None:
            shutil.rmtree(self.cwd, ignore_errors=True)
