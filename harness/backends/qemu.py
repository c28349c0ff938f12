"""Real QEMU 7.2 as a backend: run a case over QMP and observe it as the model does.

:func:`run_case` runs one case in a fresh process; :class:`QemuRunner` runs
many, reusing a process between cases where that is safe. Either returns an
:class:`~harness.observation.Observation` of the same shape as the model's.

How a case maps onto QEMU (see the README's "Real QEMU" section):

* images: the case's chain as qcow2 files (:mod:`.qemu_images`), filename
  arguments (``base``, ``top``) mapped to the real paths, real paths in
  error texts mapped back;
* a case with a ``drive``: ``qemu-system-x86_64 -machine none`` and HMP
  ``drive_add 0 file=<top>,if=none,id=<drive>,node-name=<top>,backing.node-name=...``
  (iotest 030's setup: backing nodes opened read-only);
  ``drive: null``: ``qemu-storage-daemon`` and one nested ``blockdev-add``;
* ``x-step {"count": N}``: wait until N more QMP events arrived or every job
  waits on a verb (when it ended: ``extra["x_step_until_ns"]``);
  ``x-wait-jobs``: wait until every job is concluded or waits on a verb
  (pending without auto-finalize, ready, user-paused); both bounded by
  ``timeout``, whose expiry is a ``hang`` finding showing ``query-jobs``;
  ``x-guest-write``: HMP ``qemu-io <drive> "write -P ..."``, or a write through
  a writable NBD export of the top node on the daemon;
* an implicit ``x-wait-jobs`` ends every case; then the chain
  (``x-debug-query-block-graph`` + ``query-named-block-nodes``), the guest
  data (read-only NBD export of the device's node), ``query-jobs``; after
  the images are closed, the on-disk backing strings
  (``extra["on_disk_backing"]``);
* QEMU dying is a ``qemu-crash`` finding (signal, stderr, the commands so far).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from typing import Any, Callable

from qemu.qmp import ExecuteError

from harness.backends.nbd import NbdClient
from harness.backends.qemu_graph import BlockGraph, chain_from, filters_above, parse_graph
from harness.backends.qemu_images import CaseImages, ImageStore, read_backing_strings
from harness.backends.qemu_jobs import JobTracker
from harness.backends.qemu_core import crash_site
from harness.backends.qemu_process import (STORAGE_DAEMON, SYSTEM, QemuDied, QemuHung,
                                           QemuProcess, describe_exit)
from harness.case import HARNESS_COMMANDS, Case, Command
from harness.errors import QemuError
from harness.observation import Finding, Observation

DEFAULT_TIMEOUT = 10.0
LOG_LIMIT = 4000            # characters of a case's QEMU output kept in its observation ...
TRACE_LOG_LIMIT = 1 << 20   # ... and with trace events on (``blockfuzz diff --qemu-trace``)
#: QMP arguments that name image files (mapped to and from the real paths)
FILENAME_ARGUMENTS = ("base", "top")
#: commands after which a process may serve the next case (anything else: a fresh one)
REUSABLE_PREFIXES = ("block-stream", "block-commit", "job-", "block-job-", "query-", "x-")
EXPORT_PREFIX = "blockfuzz-"
#: how often the job waits look at ``query-jobs`` when no event arrives
POLL_INTERVAL = 0.05
GRAPH_READ_ATTEMPTS = 20
_OTHER_BYTE = [re.compile(b"[^" + re.escape(bytes([b])) + b"]") for b in range(256)]

BeforeCommand = Callable[[int, Command, int], None]


def run_case(case: Case, *, workdir: str | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> Observation:
    """Run ``case`` on real QEMU in a fresh process and return what it showed.

    ``workdir``: the directory under which images are kept (default: tmpfs);
    ``timeout``: the bound, in seconds, of every wait and every QMP command.
    Raises :class:`~harness.errors.QemuError` when QEMU cannot be used at all.
    """
    with QemuRunner(workdir=workdir, timeout=timeout, reuse=False) as runner:
        return runner.run(case)


def data_runs(data: bytes) -> list[list[int]]:
    """Compress bytes to maximal runs ``[offset, length, byte]``."""
    runs: list[list[int]] = []
    start = 0
    while start < len(data):
        byte = data[start]
        m = _OTHER_BYTE[byte].search(data, start)
        end = m.start() if m else len(data)
        runs.append([start, end - start, byte])
        start = end
    return runs


class _Stop(Exception):
    """Ends a case early with a finding."""

    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


class QemuRunner:
    """Runs cases on real QEMU, one process per binary, reused between cases.

    Use as a context manager (or call :meth:`close`): processes, sockets and
    images are removed on every path, Ctrl-C included. ``reuse=False`` gives
    each case a fresh process. ``unthrottle=False`` keeps speed limits during
    ``x-wait-jobs`` (a throttled job then runs in real time, maybe into a
    ``hang``). ``before_command(index, command, pid)`` is a
    test hook called before each command is sent.
    """

    def __init__(self, *, workdir: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 reuse: bool = True, before_command: BeforeCommand | None = None,
                 unthrottle: bool = True, max_cases_per_process: int = 200,
                 trace: tuple[str, ...] = ()):
        self.timeout = timeout
        self.trace = tuple(trace)
        self.unthrottle = unthrottle
        self.reuse = reuse
        self.before_command = before_command
        self.max_cases_per_process = max_cases_per_process
        self.loop = asyncio.new_event_loop()
        self.store = ImageStore(workdir)
        self._procs: dict[str, QemuProcess] = {}
        self._serial = itertools.count(1)
        self._current: CaseImages | None = None

    def __enter__(self) -> "QemuRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, case: Case) -> Observation:
        """Run one case; see the module docstring for how it maps onto QEMU."""
        try:
            return self.loop.run_until_complete(self._run(case))
        except BaseException:
            self._abandon()
            raise

    def close(self) -> None:
        """Quit every process and remove every file."""
        if self.loop.is_closed():
            return
        try:
            for binary in list(self._procs):
                self.loop.run_until_complete(self._retire(binary))
        except BaseException:
            self._abandon()
            raise
        finally:
            self.store.close()
            self.loop.close()

    def pids(self) -> list[int]:
        """The pids of the running QEMU processes (for tests and reports)."""
        return [p.pid for p in self._procs.values() if p.alive()]

    # -- process life cycle -------------------------------------------------

    async def _process(self, binary: str) -> QemuProcess:
        proc = self._procs.get(binary)
        if proc is not None and proc.alive() and proc.cases_run < self.max_cases_per_process:
            return proc
        if proc is not None:
            await self._retire(binary)
        n = next(self._serial)
        proc = await QemuProcess.start(binary, os.path.join(self.store.root, f"qemu-{n}.log"),
                                       self.timeout, self.trace)
        self._procs[binary] = proc
        proc.nbd_socket = os.path.join(self.store.root, f"nbd-{n}.sock")
        try:
            await proc.execute("nbd-server-start",
                               {"addr": {"type": "unix", "data": {"path": proc.nbd_socket}}},
                               timeout=self.timeout)
        except ExecuteError as e:
            await self._retire(binary)
            raise QemuError(f"{binary}: nbd-server-start failed: {e}") from None
        return proc

    async def _retire(self, binary: str) -> None:
        proc = self._procs.pop(binary, None)
        if proc is None:
            return
        await proc.quit()
        sock = proc.nbd_socket
        if sock and os.path.exists(sock):  # QEMU 7.2 leaves it behind
            os.unlink(sock)
        if os.path.exists(proc.log_path):
            os.unlink(proc.log_path)

    def _abandon(self) -> None:
        """After an interruption: kill every process by pid, drop every task and file."""
        for proc in self._procs.values():
            proc.kill()
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in tasks:
            t.cancel()
        try:
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
            for proc in self._procs.values():
                self.loop.run_until_complete(proc.disconnect())
        except BaseException:
            pass
        self._procs.clear()
        if self._current is not None:
            self._current.remove()
            self._current = None

    # -- one case -------------------------------------------------------------

    async def _run(self, case: Case) -> Observation:
        binary = SYSTEM if case.drive else STORAGE_DAEMON
        images = self._current = self.store.checkout(case.images)
        try:
            proc = await self._process(binary)
            proc.cases_run += 1
            session = _Session(self, proc, case, images)
            reusable = await session.run()
            if not (reusable and self.reuse and proc.alive()):
                await self._retire(binary)
            session.read_on_disk()
            return session.obs
        finally:
            images.remove()
            self._current = None


class _Session:
    """One case on one process: attach, commands, waits, observation, teardown."""

    def __init__(self, runner: QemuRunner, proc: QemuProcess, case: Case, images: CaseImages):
        self.runner = runner
        self.proc = proc
        self.case = case
        self.images = images
        self.timeout = runner.timeout
        self.obs = Observation()
        self.obs.extra["binary"] = proc.binary
        self.tracker = JobTracker()
        self.top = case.images[-1]
        self.event_mark = len(proc.events)
        self.log_mark = proc.log_size()
        self.step = -1
        self._snapped = False

    # -- the whole case ---------------------------------------------------------

    async def run(self) -> bool:
        """Run the case; return whether the process may serve another case."""
        self.proc.listeners.append(self.tracker.on_event)
        try:
            await self.attach()
            try:
                await self.commands()
                self.step = -1
                await self.wait(-1, "x-wait-jobs", None)
            except _Stop as stop:
                self.obs.finding = stop.finding
            except QemuHung as e:
                self.obs.finding = Finding("hang", f"{e}; query-jobs: not available, the monitor "
                                           f"does not answer", where=e.command, step=self.step)
                self.snapshot()
                return False
            await self.observe(data=self.obs.finding is None)
            self.snapshot()
            if self.obs.finding is not None:
                return False
            return await self.teardown() and self._reusable_commands()
        except QemuDied as e:
            self.snapshot()
            self.obs.finding = self.crash_finding(e)
            return False
        except QemuHung as e:
            self.snapshot()
            self.obs.finding = Finding("hang", f"{e} (while observing the end of the case)",
                                       where=e.command, step=-1)
            return False
        finally:
            self.proc.listeners.remove(self.tracker.on_event)

    def _reusable_commands(self) -> bool:
        return all(c.execute.startswith(REUSABLE_PREFIXES) for c in self.case.commands)

    def snapshot(self) -> None:
        """Record the case's events, job statuses and log (not the teardown's)."""
        if self._snapped:
            return
        self._snapped = True
        self.obs.events = [e for e in self.proc.events[self.event_mark:] if not _harness_event(e)]
        self.obs.job_statuses = self.tracker.folded()
        limit = TRACE_LOG_LIMIT if self.runner.trace else LOG_LIMIT
        self.obs.extra["log"] = self.images.to_case(self.proc.log_tail(self.log_mark, limit))

    def crash_finding(self, e: QemuDied) -> Finding:
        step = self.step
        reached = self.case.commands[:step + 1] if step >= 0 else self.case.commands
        where = self.case.commands[step].execute if step >= 0 else "end of case"
        when = f"during command {step} ({where})" if step >= 0 else "at the end of the case"
        lines = [f"{e.binary} (pid {e.pid}) {describe_exit(e.returncode)}{e.crashed_in} {when}",
                 "stderr:", *("  " + line for line in self.images.to_case(e.log_tail).splitlines()[-20:])]
        if e.backtrace:
            lines += ["backtrace (gdb, from its core file):",
                      *(f"  #{i} {frame}" for i, frame in enumerate(e.backtrace))]
        lines += ["commands so far:", *(f"  {i}: {json.dumps(c.to_dict())}" for i, c in enumerate(reached))]
        # a crash is known by where in QEMU it happened, whatever command led there
        return Finding("qemu-crash", "\n".join(lines), where=crash_site(e.backtrace) or where, step=step)

    # -- attach -------------------------------------------------------------------

    async def attach(self) -> None:
        images = self.case.images
        if self.case.drive:
            opts = [f"file={_escape(self.images.path(self.top.filename))}", "if=none",
                    f"id={self.case.drive}", f"format={self.top.format}",
                    f"node-name={self.top.node_name}"]
            for depth, img in enumerate(reversed(images[:-1]), 1):
                opts.append("backing." * depth + f"node-name={img.node_name}")
            out = await self.proc.hmp("drive_add 0 " + ",".join(opts), timeout=self.timeout)
            if out.strip() != "OK":
                raise QemuError(f"drive_add failed: {self.images.to_case(out.strip())}")
        else:
            try:
                await self.proc.execute("blockdev-add", self._nested(len(images) - 1),
                                        timeout=self.timeout)
            except ExecuteError as e:
                raise QemuError(f"blockdev-add failed: {self.images.to_case(str(e))}") from None

    def _nested(self, index: int) -> dict:
        img = self.case.images[index]
        node: dict[str, Any] = {"driver": img.format, "node-name": img.node_name,
                                "file": {"driver": "file",
                                         "filename": self.images.path(img.filename)}}
        if index > 0:
            node["backing"] = self._nested(index - 1)
        return node

    # -- commands -----------------------------------------------------------------

    async def commands(self) -> None:
        """Send the case's commands in order.

        Consecutive QMP commands are sent as one pipelined batch, so QEMU's
        main loop runs as little as possible between them, as the model's
        does not run at all between commands: otherwise a job may finish
        in the round trip before the next command (measured: a throttled
        commit ended before the following block-stream in 30 % of runs
        when sent one by one, in none of 200 when pipelined).
        """
        commands = self.case.commands
        self.started = asyncio.get_running_loop().time()
        i = 0
        while i < len(commands):
            if commands[i].execute in HARNESS_COMMANDS:
                self.step = i
                self._before(i)
                self.obs.replies.append(await self.harness_command(i, commands[i]))
                i += 1
                continue
            j = i
            while j < len(commands) and commands[j].execute not in HARNESS_COMMANDS:
                self._before(j)
                j += 1
            await self.qmp_batch(i, commands[i:j])
            i = j

    def _before(self, index: int) -> None:
        if self.runner.before_command is not None:
            self.runner.before_command(index, self.case.commands[index], self.proc.pid)

    async def qmp_batch(self, first: int, batch: tuple[Command, ...]) -> None:
        """Send ``batch`` pipelined; record the replies in order up to the first failure."""
        results = await asyncio.gather(*(self.qmp_command(c) for c in batch),
                                       return_exceptions=True)
        for k, (command, result) in enumerate(zip(batch, results)):
            self.step = first + k
            if isinstance(result, BaseException):
                raise result
            self.tracker.on_reply(command, "return" in result, self.case.drive)
            self.obs.replies.append(result)

    async def qmp_command(self, command: Command) -> dict:
        args = dict(command.arguments)
        for key in FILENAME_ARGUMENTS:
            if isinstance(args.get(key), str):
                args[key] = self.images.real(args[key])
        try:
            await self.proc.execute(command.execute, args, timeout=self.timeout)
        except ExecuteError as e:
            return _error(self.images.to_case(str(e)), e.error_class)
        return {"return": {}}

    async def harness_command(self, index: int, command: Command) -> dict:
        """The ``x-`` commands, with the model's argument checks and error texts
        (``reference/qmp.py``), so that both backends reply alike."""
        args = command.arguments
        if command.execute == "x-step":
            count = int(args.get("count", 1))
            if count < 0:
                return _error("Parameter 'count' expects a non-negative integer")
            await self.wait(index, "x-step", count)
            # QEMU's rate limits run in real time: when, since the case's first command, this
            # x-step ended (diff lets the model's virtual clock get as far)
            elapsed = asyncio.get_running_loop().time() - self.started
            self.obs.extra.setdefault("x_step_until_ns", {})[index] = int(elapsed * 1e9)
        elif command.execute == "x-wait-jobs":
            await self.wait(index, "x-wait-jobs", None)
        else:
            offset, length, pattern = (int(args[k]) for k in ("offset", "length", "pattern"))
            if (offset < 0 or length <= 0 or offset + length > self.top.size
                    or not 0 <= pattern <= 255):
                return _error("Invalid guest write: offset, length or pattern out of range")
            return await self.guest_write(offset, length, pattern)
        return {"return": {}}

    async def guest_write(self, offset: int, length: int, pattern: int) -> dict:
        if self.case.drive:
            out = await self.proc.hmp(
                f'qemu-io {self.case.drive} "write -q -P {pattern} {offset} {length}"',
                timeout=self.timeout)
            if out.strip():
                return _error(out.strip())
            return {"return": {}}
        try:
            await self.with_export(self.top.node_name, True,
                                   lambda nbd: nbd.write(offset, bytes([pattern]) * length))
        except ExecuteError as e:
            return _error(self.images.to_case(str(e)), e.error_class)
        return {"return": {}}

    # -- waiting for jobs -----------------------------------------------------

    async def wait(self, index: int, what: str, count: int | None) -> None:
        """``x-step`` (``count`` events) or ``x-wait-jobs`` (``count`` None).

        Both end as soon as every job waits on a verb. ``x-step`` also ends
        after ``count`` events or when no event came for ``POLL_INTERVAL``
        (nothing visible is running: the model's loop would stop stepping).
        ``x-wait-jobs`` first lifts the speed limit of every job that is
        still working (the model's timers run in virtual time, QEMU's in real
        time) and waits until ``timeout``; its expiry is a ``hang`` finding.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        mark = len(self.proc.events)
        polled, first = True, True
        if count is None and self.runner.unthrottle:
            await self.lift_speed_limits(index)
        while True:
            seen = len(self.proc.events)
            if count is not None and seen - mark >= count:
                return
            if polled or self.tracker.settled():
                if self.tracker.settled(await self.query_jobs()):
                    return
                if count is not None and polled and not first:
                    return  # quiet for POLL_INTERVAL
            first = False
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _Stop(await self.hang_finding(index, what))
            polled = not await self.proc.wait_for_event(seen, min(remaining, POLL_INTERVAL))

    async def lift_speed_limits(self, index: int) -> None:
        """``block-job-set-speed 0`` for every throttled job that does not wait on a verb."""
        jobs = await self.proc.execute("query-block-jobs", timeout=self.timeout)
        for job in jobs:
            if job.get("speed", 0) > 0 and not self.tracker.waits_on_verb(job["device"], job["status"]):
                try:
                    await self.proc.execute("block-job-set-speed",
                                            {"device": job["device"], "speed": 0},
                                            timeout=self.timeout)
                except ExecuteError:
                    continue
                self.obs.extra.setdefault("unthrottled", []).append([index, job["device"]])

    async def query_jobs(self) -> dict[str, str]:
        jobs = await self.proc.execute("query-jobs", timeout=self.timeout)
        return {j["id"]: j["status"] for j in jobs}

    async def hang_finding(self, index: int, what: str) -> Finding:
        try:
            jobs = await self.proc.execute("query-jobs", timeout=min(self.timeout, 2.0))
            shown = json.dumps(jobs)
        except QemuHung:
            shown = "not available, the monitor does not answer"
        where = f"command {index} ({what})" if index >= 0 else "the implicit x-wait-jobs at the end"
        return Finding("hang", f"{where}: jobs did not settle within {self.timeout:g} s; "
                               f"query-jobs: {shown}", where=what, step=index)

    # -- observing --------------------------------------------------------------------

    async def observe(self, data: bool) -> None:
        """Jobs left, then (after the case's events are recorded) the chain and the data.

        Concluded jobs are dismissed before the graph is read: QEMU 7.2 dies
        with SIGSEGV in ``query-named-block-nodes`` while a stream job that
        has concluded is not yet dismissed (``auto-dismiss: false``), so
        reading the graph would otherwise turn such a case into a crash of
        the harness's own making. A dismissal changes no backing edge.
        """
        self.obs.jobs_left = await self.query_jobs()
        self.snapshot()
        for job, status in self.obs.jobs_left.items():
            if status == "concluded":
                await self.proc.execute("job-dismiss", {"id": job}, timeout=self.timeout)
        graph = await self.read_graph()
        root = graph.root_of(self.case.drive) if self.case.drive else (
            self.top.node_name if self.top.node_name in graph.nodes else None)
        self.obs.chain = chain_from(graph, root, self.images.to_case)
        self.obs.extra["root"] = root
        if data and root is not None:
            await self.read_data(graph, root)

    async def read_data(self, graph: BlockGraph, root: str) -> None:
        """The guest-visible data under ``root``, through a read-only NBD export.

        Without a device, a job's filter may sit above the top node with no
        parent (an active commit's mirror_top): a new reader on the top node
        itself is then refused (``Permission conflict``), so the filter above
        it, which is what a device would read through, is tried next.
        """
        errors = []
        for node in [root, *filters_above(graph, root)]:
            try:
                raw = await self.with_export(node, False, lambda nbd: nbd.read(0, nbd.size))
            except ExecuteError as e:
                errors.append(self.images.to_case(str(e)))
                continue
            self.obs.data = data_runs(raw)
            if node != root:
                self.obs.extra["data_read_through"] = node
            return
        self.obs.extra["data_error"] = "; ".join(errors)

    async def read_graph(self) -> BlockGraph:
        """``x-debug-query-block-graph`` and ``query-named-block-nodes``, re-read until they agree."""
        for _ in range(GRAPH_READ_ATTEMPTS):
            xdbg = await self.proc.execute("x-debug-query-block-graph", timeout=self.timeout)
            named = await self.proc.execute("query-named-block-nodes", {"flat": True},
                                            timeout=self.timeout)
            graph = parse_graph(xdbg, named)
            if graph is not None:
                return graph
            await asyncio.sleep(0.005)
        raise QemuError(f"the block graph kept changing over {GRAPH_READ_ATTEMPTS} reads")

    async def with_export(self, node: str, writable: bool, use: Callable[[NbdClient], Any]) -> Any:
        """Export ``node`` over NBD for the length of ``use(client)``."""
        name = f"{EXPORT_PREFIX}{'w' if writable else 'r'}{next(self.runner._serial)}"
        await self.proc.execute("block-export-add",
                                {"type": "nbd", "id": name, "node-name": node, "name": name,
                                 "writable": writable}, timeout=self.timeout)
        try:
            try:
                with NbdClient.connect(self.proc.nbd_socket, name, self.timeout) as nbd:
                    return use(nbd)
            except (OSError, QemuError):
                if self.proc.proc is not None and self.proc.proc.poll() is None:
                    await asyncio.sleep(0.05)  # a dying QEMU closes the socket first
                if not self.proc.alive():
                    raise self.proc.died_error() from None
                raise
        finally:
            if self.proc.alive():
                await self.delete_export(name)

    async def delete_export(self, name: str) -> None:
        seen = len(self.proc.events)
        await self.proc.execute("block-export-del", {"id": name, "mode": "hard"},
                                timeout=self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not any(e["event"] == "BLOCK_EXPORT_DELETED" and e["data"].get("id") == name
                      for e in self.proc.events[seen:]):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QemuHung(f"block-export-del {name}", self.timeout)
            await self.proc.wait_for_event(len(self.proc.events), remaining)

    # -- teardown ------------------------------------------------------------------------

    async def teardown(self) -> bool:
        """Cancel and dismiss every job, detach the chain; True if nothing is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.timeout, 5.0)
        cancelled: set[str] = set()
        while True:
            jobs = await self.query_jobs()
            if not jobs:
                break
            if loop.time() > deadline:
                return False
            seen = len(self.proc.events)
            for job, status in jobs.items():
                verb = "job-dismiss" if status == "concluded" else "job-cancel"
                if verb == "job-cancel" and job in cancelled:
                    continue
                cancelled.add(job)
                try:
                    await self.proc.execute(verb, {"id": job}, timeout=self.timeout)
                except ExecuteError:
                    pass
            await self.proc.wait_for_event(seen, POLL_INTERVAL)
        try:
            if self.case.drive:
                out = await self.proc.hmp(f"drive_del {self.case.drive}", timeout=self.timeout)
                if out.strip():
                    return False
            else:
                await self.proc.execute("blockdev-del", {"node-name": self.top.node_name},
                                        timeout=self.timeout)
        except ExecuteError:
            return False
        named = await self.proc.execute("query-named-block-nodes", timeout=self.timeout)
        exports = await self.proc.execute("query-block-exports", timeout=self.timeout)
        return not named and not exports

    def read_on_disk(self) -> None:
        """The on-disk backing strings of the final chain (images must be closed)."""
        top = next((n.filename for n in self.obs.chain if not n.is_filter), self.top.filename)
        try:
            self.obs.extra["on_disk_backing"] = read_backing_strings(
                self.runner.store.qemu_img, top, self.images)
        except QemuError as e:
            self.obs.extra["on_disk_backing_error"] = self.images.to_case(str(e))


def _error(desc: str, error_class: str = "GenericError") -> dict:
    return {"error": {"class": error_class, "desc": desc}}


def _harness_event(event: dict) -> bool:
    """Events caused by the harness's own exports, not by the case."""
    return (event["event"] == "BLOCK_EXPORT_DELETED"
            and str(event["data"].get("id", "")).startswith(EXPORT_PREFIX))


def _escape(value: str) -> str:
    """QemuOpts quoting: a comma in a value is written twice."""
    return value.replace(",", ",,")
