"""One QEMU instance: the graph, the main loop, the jobs, the QMP events.

:class:`Machine` is what ``qmp.execute`` acts on. It builds the backing
chain of a case the way 030 attaches it (``-drive`` with read-only backing
nodes and a BlockBackend on the top), and offers the data-path helpers
(``is_allocated_above``, reads through the chain, copy-on-read) the jobs use.
It also records the scenario *cells* a run reached ("a job completed
inside a drain", ...): Antithesis-style "sometimes" events.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

from reference.data import ImageData, merge_runs
from reference.errors import ModelFault, QMPError
from reference.drain import bdrv_drained_begin, bdrv_drained_end
from reference import graph as _graph
from reference.graph import (BlockDriverState, BdrvChild, bdrv_attach_child, bdrv_filter_or_cow_bs,
                             bdrv_ref, bdrv_skip_filters, bdrv_unref, bdrv_unref_child, live)
from reference.job import Job
from reference.loop import AioContext


class BlockBackend:
    """A BlockBackend: a named device (``drive0``) or a job's anonymous one."""

    kind = "bb"

    def __init__(self, name: str = ""):
        self.name = name
        self.root: BdrvChild | None = None
        self.quiesce_counter = 0
        self.in_flight = 0
        self.queued: list = []          # guest requests waiting for the drain to end

    @property
    def bs(self) -> BlockDriverState | None:
        return self.root.bs if self.root else None


class Machine:
    def __init__(self, choose: Callable, bugs: Iterable[str] = (), trace: bool = False):
        self.aio = AioContext(choose)
        self.named_nodes: dict[str, BlockDriverState] = {}
        self.all_nodes: list[BlockDriverState] = []         # every node made, freed or not
        self.images: dict[str, BlockDriverState] = {}      # filename -> image node
        self.blks: dict[str, BlockBackend] = {}
        self.jobs: dict[str, Job] = {}
        self.job_order: list[str] = []
        #: command index -> block jobs whose speed limit x-wait-jobs lifts there, in order
        #: (what the QEMU backend did on QEMU; only `blockfuzz diff` asks for it)
        self.unthrottle: dict[int, list[str]] = {}
        #: command index -> the virtual time, since the first command (``case_start``),
        #: up to which that x-step may run (default: qmp.X_STEP_HORIZON_NS past now);
        #: `blockfuzz diff` gives when QEMU's ended, since QEMU's rate limits run in real time
        self.x_step_until: dict[int, int] = {}
        #: position (the index of the command before the gap) -> exact loop steps of
        #: that client gap, past the three a ``between`` choice can name short of
        #: running idle: QEMU's main loop may stop anywhere in a job's run between two
        #: pipelined commands (only `blockfuzz diff`'s search asks for it);
        #: ``gap_idle`` notes a gap that went idle before its steps were done
        self.gap_steps: dict[int, int] = {}
        self.gap_idle = False
        self.case_start = 0
        #: qcow2 metadata reads as I/O (only `blockfuzz diff`'s gap search asks for it):
        #: the first block-status query that reaches a qcow2 image reads its L2 table
        #: (and refcount block) from disk, and the job waits for it, busy; ``metadata_loaded``
        #: holds the images whose tables QEMU has cached by then
        self.metadata_io = False
        self.metadata_loaded: set = set()
        #: how many characters QEMU's absolute paths add to each image filename (the
        #: model names images by their bare filenames): a string written into an image
        #: header is that much longer per filename in it, and qcow2 refuses one longer
        #: than 1,023 characters (:func:`reference.filename.qemu_length`)
        self.path_prefix = 0
        self.events: list[dict] = []
        self.bugs = frozenset(bugs)
        self.cells: set[str] = set()
        self.cmd_index = -1
        self.drain_depth = 0
        self.opening = False        # building the chain: attaching backing nodes just opened
        self.completing: list[Job] = []
        self.auto_counter = 0
        self.errors: list[str] = []
        self.top_node: BlockDriverState | None = None
        self.trace: list[str] | None = [] if trace else None
        if trace:
            self.aio.on_step = lambda key: self.trace.append(f"{self.step_label()} run {key}")

    def release(self) -> None:
        """Break the run's reference cycles once it has been observed: edges and the
        nodes and parents they join, nodes and jobs and the machine they point at, the
        loop's pending callbacks. The run's objects are then freed by reference
        counting as it returns, not by the cyclic garbage collector some runs later
        (which traced each of them, and the live objects of the runs in between, to
        find them). The machine is not usable afterwards."""
        for bs in self.all_nodes:
            for c in bs.parents:        # every edge is some node's parent edge
                _cut(c)
            bs.children = []
            bs.parents = []
            bs.m = None
            bs.mirror_job = None        # a mirror_top filter and its job point at each other
        self.all_nodes = []
        for job in self.jobs.values():
            job.co = None               # the coroutine's callbacks are the job's
            job.sleep_timer = None      # so is the timer's
            job.edges = []
            job.unshared_read = []
        self.jobs = {}
        self.completing = []
        aio = self.aio
        aio.bhs = []
        aio.timers = []
        aio.on_step = None

    # -- bookkeeping ------------------------------------------------------------

    def step_label(self) -> str:
        """``<command index>.<loop step>``: where in a run something happened."""
        return f"{self.cmd_index}.{self.aio.steps}"

    def stamp(self, where: str) -> str:
        """``<command>.<loop step> <function>``, and the job whose completion runs."""
        stamp = f"{self.step_label()} {where}"
        if self.completing and where:
            job = self.completing[-1]
            stamp += f" (in {job.job_type} job '{job.id}' completion)"
        return stamp

    def bug(self, bug_id: str) -> bool:
        return bug_id in self.bugs

    def event(self, name: str, data: dict) -> None:
        # "step": the command being executed (-1 before the first); QEMU's events
        # cannot carry it, the model's do, so the oracle places each command exactly
        self.events.append({"event": name, "data": data, "step": self.cmd_index})
        if self.trace is not None:
            self.trace.append(f"{self.step_label()} event {name} {data}")

    def cell(self, name: str) -> None:
        self.cells.add(name)

    def report_error(self, msg: str) -> None:
        """error_report: QEMU prints it on stderr."""
        self.errors.append(msg)

    def auto_node_name(self) -> str:
        self.auto_counter += 1
        return f"#block{self.auto_counter:03d}"

    def note_freed(self, bs: BlockDriverState) -> None:
        if self.drain_depth > 0:
            self.cell("a node was freed during a drain")
        if self.completing and bs.is_filter:
            self.cell(f"a {bs.drv} filter was freed by a job completion")

    def note_run_end(self, job: Job) -> None:
        for j in self.jobs.values():
            if j is not job and j.deferred_to_main_loop and not j.is_completed():
                self.cell("two job completions were pending at once")
                break

    def note_new_backing(self, backing: BlockDriverState) -> None:
        """A completion makes ``backing`` some node's backing child: if another unfinished
        job holds ``backing``, the two completions share a node (a potential
        communication, as Snowboard calls it: where races between them live)."""
        if not self.completing:
            return
        current = self.completing[-1]
        for j in self.jobs.values():
            if j is not current and not j.is_completed() and j.holds(backing):
                self.cell("a completion attached a node another unfinished job holds")
                break

    def note_completion_start(self, job: Job) -> None:
        if self.drain_depth > 0:
            self.cell("a job completed inside a drain")
        if self.completing:
            self.cell("a job completed inside another job's completion")
            self.cell(f"a {job.job_type} completed inside a {self.completing[-1].job_type} completion")
        self.completing.append(job)

    def note_completion_end(self, job: Job) -> None:
        if self.completing and self.completing[-1] is job:
            self.completing.pop()

    def nested_io_poll(self, what: str) -> None:
        """Synchronous I/O outside coroutine context (bdrv_poll_co): poll until the
        request completes; whatever else is ready may run first."""
        done = []
        self.aio.bh_schedule(f"io:{what}", lambda: done.append(True))
        self.aio.poll_while(lambda: not done, what)

    def must_succeed(self, fn: Callable[[], None], where: str) -> None:
        """A call QEMU makes with &error_abort: a failure is a crash."""
        try:
            fn()
        except QMPError as e:
            raise ModelFault(f"{where}: &error_abort: {e.desc}", where=where) from None

    # -- building the chain -------------------------------------------------------

    def add_image(self, node_name: str, drv: str, filename: str, size: int, cluster_size: int,
                  backing: BlockDriverState | None, read_only: bool) -> BlockDriverState:
        bs = BlockDriverState(self, node_name, drv, filename=filename, read_only=read_only,
                              data=ImageData(size, cluster_size, raw=(drv == "raw")))
        self.named_nodes[node_name] = bs
        self.images[filename] = bs
        if backing is not None:
            self.opening = True         # the chain below was just opened: its filenames are fresh
            try:
                bdrv_attach_child(bs, backing, "backing")
            finally:
                self.opening = False
            bdrv_unref_child_owner(backing)
            bs.header_backing = bs.backing_file = bs.auto_backing_file = backing.filename
            bs.header_backing_format = backing.drv
        return bs

    def on_disk_backing(self, top_filename: str) -> dict[str, str | None]:
        """The backing strings in the image headers, following them from
        ``top_filename`` as ``qemu-img info --backing-chain`` does: each image is
        opened with the format its overlay's header names (a qcow2 file opened as
        raw has no backing; a raw file opened as qcow2, a missing file or a loop
        make the chain unopenable, and then every image is read alone)."""
        out: dict[str, str | None] = {}
        name: str | None = top_filename
        opened_as = self.images[top_filename].drv if top_filename in self.images else None
        while name is not None:
            img = self.images.get(name)
            if img is None or name in out or (opened_as != img.drv and opened_as != "raw"):
                return {f: i.header_backing for f, i in reversed(list(self.images.items()))}
            if opened_as == "raw" and img.drv != "raw":
                out[name] = None
                break
            out[name] = img.header_backing
            opened_as, name = img.header_backing_format, img.header_backing
        return out

    def attach_device(self, name: str | None, bs: BlockDriverState) -> None:
        """-drive id=NAME (a BlockBackend owning the chain) or blockdev-add (a monitor ref)."""
        self.top_node = bs
        if name is None:
            return          # the monitor's reference is the one bs was created with
        blk = BlockBackend(name)
        blk.root = bdrv_attach_child(blk, bs, "root")
        bs.refcnt -= 1      # -drive: the BlockBackend's root edge is the only owner
        self.blks[name] = blk

    def blk_new(self, bs: BlockDriverState) -> BlockBackend:
        blk = BlockBackend("")
        blk.root = bdrv_attach_child(blk, bs, "root")
        return blk

    def blk_unref(self, blk: BlockBackend | None) -> None:
        """blk_unref of a job's own BlockBackend, its last reference: QEMU 7.2 drains
        it (blk_drain), then blk_delete -> blk_remove_bs drains it again and drops the
        edge. Two drained sections on its node, each quiescing the node's parents and
        polling the loop, so a job paused by one runs on between them (QEMU shows a
        throttled commit copy a chunk in each)."""
        if blk is not None and blk.root is not None:
            self.blk_drain(blk)          # blk_unref
            self.blk_drain(blk)          # blk_delete -> blk_remove_bs
            c, blk.root = blk.root, None
            bdrv_unref_child(blk, c)

    def blk_drain(self, blk: BlockBackend) -> None:
        """blk_drain: a drained section on the BlockBackend's node, waiting for its requests."""
        bs = blk.root.bs
        bdrv_ref(bs, "blk_drain")
        bdrv_drained_begin(bs)
        self.aio.poll_while(lambda: blk.in_flight > 0, f"blk_drain of '{bs.node_name}'")
        bdrv_drained_end(bs)
        bdrv_unref(bs, "blk_drain")

    # -- jobs ---------------------------------------------------------------------

    def create_job(self, cls, job_id: str | None, main_bs: BlockDriverState, **kw) -> Job:
        """block_job_create: id checks, then the job in status 'created'."""
        if job_id is None:
            job_id = device_name(main_bs)
        if not id_wellformed(job_id):
            raise QMPError(f"Invalid job ID '{job_id}'")
        if job_id in self.jobs:
            raise QMPError(f"Job ID '{job_id}' already in use")
        speed = kw.pop("speed", 0)
        job = cls(self, job_id, main_bs, **kw)
        self.jobs[job_id] = job
        self.job_order.append(job_id)
        if speed:
            try:
                job.set_speed(speed)
            except QMPError:
                self.job_early_fail(job)
                raise
        return job

    def job_early_fail(self, job: Job) -> None:
        job.do_dismiss()

    def job_removed(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]

    # -- data path ------------------------------------------------------------------

    def read(self, bs: BlockDriverState | None, start, end) -> list[tuple[int, int, int]]:
        """What a read of [start, end) through ``bs`` returns (zeros past the chain).

        ``read`` and ``write`` are C calls when compiled (machine.pxd): a read recurses
        down the chain and a write's copy-on-write reads below. Their offsets carry no
        ``int`` annotation, which Cython would take for a type the .pxd does not say."""
        if bs is None or start >= end:
            return [(start, end, 0)] if start < end else []
        live(bs, "bdrv_co_preadv")
        if bs.is_filter or bs.data is None:
            return self.read(bdrv_filter_or_cow_bs(bs), start, end)
        out = []
        size = bs.data.size
        for s, e, b in bs.data.read(start, min(end, size)):
            if b is None:
                out.extend(self.read(bdrv_filter_or_cow_bs(bs), s, e))
            else:
                out.append((s, e, b))
        if end > size:
            out.append((max(start, size), end, 0))
        return out

    def is_allocated_above(self, top, base_overlay, offset: int, n: int) -> tuple[bool, int]:
        """bdrv_is_allocated_above(top, base_overlay, include_base=true).

        Hot path: the next node is bdrv_filter_or_cow_bs's (a C call when compiled)."""
        bs = top
        while bs is not None:
            if bs.freed_at is not None:
                live(bs, "bdrv_is_allocated_above")
            data = bs.data
            if data is not None:
                allocated, pnum = data.block_status(offset, n)
                if allocated:
                    return True, pnum
                if pnum:
                    n = pnum if pnum < n else n
            if bs is base_overlay:
                break
            bs = _graph.bdrv_filter_or_cow_bs(bs)
        return False, n

    def write(self, bs: BlockDriverState, start, end, runs) -> None:
        """A write into a format node (cluster allocation with copy-on-write). The read
        below is a ``partial``: a compiled method (cpdef) can build no closure."""
        live(bs, "bdrv_co_pwritev")
        below = bdrv_filter_or_cow_bs(bs)
        bs.data.write(start, end, runs, partial(self.read, below))

    def copy_on_read(self, bs: BlockDriverState, offset: int, n: int) -> None:
        """The copy-on-read filter copies what the backing chain shows into the parts
        of ``bs`` that are still unallocated: COR requests are serialising, so a guest
        write that landed meanwhile wins (bdrv_co_do_copy_on_readv)."""
        below = bdrv_filter_or_cow_bs(bs)
        for s, e, b in bs.data.read(offset, offset + n):
            if b is None:
                self.write(bs, s, e, self.read(below, s, e))

    def copy_range(self, src: BlockDriverState, dst: BlockDriverState, offset: int, n: int) -> None:
        runs = self.read(src, offset, offset + n)
        self.write(bdrv_skip_filters(dst), offset, offset + n, runs)

    def device_root(self) -> BlockDriverState | None:
        for blk in self.blks.values():
            return blk.bs
        return self.top_node

    def guest_write(self, offset: int, length: int, pattern: int) -> None:
        """A guest write through the device: down the filters into the format node;
        an active mirror marks the range dirty. While the device is drained the
        request waits in its queue (blk_root_drained_begin) and is resubmitted when
        the drain ends, to whatever node the device then points at."""
        blk = next(iter(self.blks.values()), None)
        if blk is not None and blk.quiesce_counter > 0:
            blk.queued.append((offset, length, pattern))
            return
        bs = self.device_root()
        while bs.is_filter:
            job = bs.mirror_job
            if job is not None and not job.exited:
                job.mark_dirty(offset, offset + length)
            bs = bdrv_filter_or_cow_bs(bs)
        self.metadata_loaded.add(bs)
        self.write(bs, offset, offset + length, [(offset, offset + length, pattern)])

    def guest_view(self) -> list[list[int]]:
        bs = self.device_root()
        size = bdrv_skip_filters(bs).data.size
        return [[s, e - s, b] for s, e, b in merge_runs(self.read(bs, 0, size))]


def bdrv_unref_child_owner(bs: BlockDriverState) -> None:
    """Opening a backing child through its parent's options: the edge is the only owner."""
    bs.refcnt -= 1


def device_name(bs: BlockDriverState) -> str:
    """bdrv_get_device_name: the first named BlockBackend parent, else ''."""
    for c in bs.parents:
        if c.parent.kind == "bb" and c.parent.name:
            return c.parent.name
    return ""


def id_wellformed(s: str) -> bool:
    """id_wellformed (util/id.c): a letter, then letters, digits, '-', '.', '_'."""
    if not s or not s[0].isascii() or not s[0].isalpha():
        return False
    return all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in s)


def _cut(c: BdrvChild) -> None:
    c.parent = c.parent_node = c.parent_job = c.parent_blk = None
    c.bs = None
