"""block-commit (block/commit.c, and block/mirror.c for the active commit).

Intermediate commit copies everything allocated from ``top`` down to the node
above ``base`` into ``base`` through a ``commit_top`` filter inserted above
``top``; ``commit_prepare`` then calls ``bdrv_drop_intermediate``, which moves
the overlay's backing edge to ``base`` and frees the filter. Active commit
(``top`` is the device's node) is a mirror job of type ``commit``: it copies,
becomes READY, keeps copying guest writes, and on ``block-job-complete``
replaces the top by ``base``.
"""
from __future__ import annotations

from itertools import takewhile
from typing import Generator

from reference import drain
from reference.errors import QMPError
from reference.graph import (bdrv_append_filter, bdrv_drop_intermediate, bdrv_filter_or_cow_bs,
                             bdrv_cow_bs, bdrv_find_overlay, bdrv_freeze_backing_chain, bdrv_ref,
                             bdrv_reopen_set_read_only, bdrv_replace_node, bdrv_skip_filters,
                             bdrv_unfreeze_backing_chain, bdrv_unref, bdrv_filter_child, chain)
from reference.job import Job, SLICE_NS

COMMIT_BUFFER_SIZE = 512 << 10
#: mirror's default buffer (DEFAULT_MIRROR_BUF_SIZE): one mirror_iteration copies the
#: run of consecutive dirty clusters from the first dirty one, up to this much
MIRROR_BUF_SIZE = 16 << 20


class CommitJob(Job):
    job_type = "commit"

    def __init__(self, m, job_id: str, main_bs, **kw):
        self.commit_top_bs = None      # until the start function inserts it (holds() reads it)
        super().__init__(m, job_id, main_bs, **kw)

    def filter_bs(self):
        return self.commit_top_bs

    def will_drop(self, bs) -> bool:
        """Its filter, and the nodes from top down to base (base kept)."""
        base = self.base_bs
        return bs is self.commit_top_bs or any(n is bs for n in takewhile(lambda n: n is not base,
                                                                           chain(self.top_bs)))

    def run(self) -> Generator:
        """commit_run: copy what is allocated above base into base."""
        m = self.m
        length = self.top_bs.data.size
        self.len = length
        offset = 0
        delay = 0
        while offset < length:
            yield from self.sleep_ns(delay)
            if self.is_cancelled():
                break
            if m.metadata_io:
                yield from self.read_metadata(self.top_bs, self.base_overlay)
            copy, n = m.is_allocated_above(self.top_bs, self.base_overlay, offset, COMMIT_BUFFER_SIZE)
            if n == 0:
                n = length - offset
            if copy:
                yield from self.io()
                m.copy_range(self.top_bs, self.base_bs, offset, n)
            offset += n
            self.offset = offset
            delay = self.ratelimit_calculate_delay(n) if copy else 0
        return 0

    def copies_left(self) -> int:
        """How many more chunks commit_run would copy from where it is now (read
        without touching anything: a node it would read that was freed stops the count)."""
        m, top, overlay = self.m, self.top_bs, self.base_overlay
        for bs in chain(top):
            if bs.freed_at is not None:
                return 0
            if bs is overlay:
                break
        offset, left = self.offset, 0
        while offset < self.len:
            copy, n = m.is_allocated_above(top, overlay, offset, COMMIT_BUFFER_SIZE)
            left += copy
            offset += n or self.len - offset
        return left

    def prepare(self) -> int:
        m = self.m
        bdrv_unfreeze_backing_chain(self.commit_top_bs, self.base_bs)
        self.chain_frozen = False
        m.blk_unref(self.base_blk)
        self.base_blk = None
        try:
            return bdrv_drop_intermediate(self.commit_top_bs, self.base_bs, self.backing_file_str)
        except QMPError as e:
            m.report_error(e.desc)
            return -5      # -EIO

    def abort(self) -> None:
        m = self.m
        top = self.top_bs
        if self.chain_frozen:
            bdrv_unfreeze_backing_chain(self.commit_top_bs, self.base_bs)
        bdrv_ref(top, "commit_abort")
        bdrv_ref(self.commit_top_bs, "commit_abort")
        if self.base_blk is not None:
            m.blk_unref(self.base_blk)
            self.base_blk = None
        self.remove_all_bdrv()
        m.must_succeed(lambda: bdrv_replace_node(self.commit_top_bs, top), "commit_abort")
        bdrv_unref(self.commit_top_bs, "commit_abort")
        bdrv_unref(top, "commit_abort")

    def clean(self) -> None:
        if self.base_read_only:
            bdrv_reopen_set_read_only(self.base_bs, True)
        if self.top_blk is not None:
            self.m.blk_unref(self.top_blk)
            self.top_blk = None


def commit_start(m, job_id, bs, base, top, backing_file_str, *, speed, on_error,
                 filter_node_name, auto_finalize, auto_dismiss) -> CommitJob:
    if bdrv_skip_filters(top) is bdrv_skip_filters(base):
        raise QMPError("Invalid files for merge: top and base are the same")
    job = m.create_job(CommitJob, job_id, bs, speed=speed, on_error=on_error,
                       auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    job.top_bs, job.base_bs = top, base
    job.backing_file_str = backing_file_str
    job.chain_frozen = False
    job.base_blk = job.top_blk = None
    job.commit_top_bs = None
    job.base_read_only = base.read_only
    try:
        if job.base_read_only:
            bdrv_reopen_set_read_only(base, False)
        ct = bdrv_append_filter(m, "commit_top", filter_node_name, top, implicit=not filter_node_name,
                                drained=False)
        bdrv_unref(ct, "commit_start")   # owned by its new parents from here on
        job.commit_top_bs = ct
        job.base_overlay = bdrv_find_overlay(top, base)
        job.unshared_read = _claim_intermediate(job, top, base)
        bdrv_freeze_backing_chain(ct, base)
        job.chain_frozen = True
        job.add_bdrv("base", base)
        job.base_blk = m.blk_new(base)
        job.top_blk = m.blk_new(top)
    except QMPError:
        _commit_start_fail(m, job)
        raise
    job.start()
    return job


def _commit_start_fail(m, job) -> None:
    if job.chain_frozen:
        bdrv_unfreeze_backing_chain(job.commit_top_bs, job.base_bs)
    for blk in (job.base_blk, job.top_blk):
        if blk is not None:
            m.blk_unref(blk)
    if job.base_read_only and job.started is False and not job.base_bs.read_only:
        bdrv_reopen_set_read_only(job.base_bs, True)
    m.job_early_fail(job)
    if job.commit_top_bs is not None:
        m.must_succeed(lambda: bdrv_replace_node(job.commit_top_bs, job.top_bs), "commit_start")


class MirrorCommitJob(Job):
    """The active commit: mirror.c with job type ``commit``."""

    job_type = "commit"


    def __init__(self, m, job_id: str, main_bs, **kw):
        self.mirror_top_bs = None      # until the start function inserts it (holds() reads it)
        super().__init__(m, job_id, main_bs, **kw)

    def filter_bs(self):
        return self.mirror_top_bs

    def run(self) -> Generator:
        """mirror_run, in outline: copy the dirty ranges, become READY, keep copying
        guest writes, stop when completion was requested and nothing is dirty."""
        self.dirty = []                 # the dirty bitmap: guest writes mark it from now on
        yield from self._dirty_init()
        delay = 0
        while True:
            yield from self.sleep_ns(delay)
            if self.cancelled and (self.force_cancel or self.status != "ready"):
                break
            # job_progress_set_remaining: what was copied and what is still dirty, the
            # len and offset of its events (QEMU 7.2 reports 917504 for 896 KiB to copy
            # out of 1 MiB, not the image's length as a stream or commit does)
            self.len = self.offset + sum(end - start for start, end in self.dirty)
            if self.dirty:
                delay = yield from self._iteration()
                continue
            # nothing dirty at the start of an iteration: converged
            if self.status == "running":
                # mirror_flush of the target, then READY: QEMU 7.2 does not look again
                # at what came in during the flush, a cancel (forced: the job was not
                # ready) or a guest write
                yield from self.io()
                self.transition("ready")
                self.m.event("BLOCK_JOB_READY", {"type": "commit", "device": self.id,
                                                 "len": self.len, "offset": self.offset,
                                                 "speed": self.speed})
            if (self.should_complete or self.cancelled) and not self.dirty:
                # mirror_run: converged and asked to complete or to cancel
                # (job_cancel_requested): drain the source and keep it drained until
                # the graph change (guest writes wait in the device)
                self.in_drain = True
                drain.bdrv_drained_begin(self.src_bs)
                if self.dirty:
                    drain.bdrv_drained_end(self.src_bs)
                    self.in_drain = False
                    continue
                self.src_drained = True
                return 0
            # ready and not asked to finish: a slice's sleep when nothing is dirty
            delay = 0 if self.dirty else SLICE_NS
        # immediate_exit (force-cancelled): need_drain, the source drained all the same
        self.in_drain = True
        drain.bdrv_drained_begin(self.src_bs)
        self.src_drained = True
        return 0

    def _dirty_init(self) -> Generator:
        """mirror_dirty_init: one block-status query per extent of the source above the
        base, each after mirror_throttle's pause point (within its slice, as the whole
        of it is here, only a pause point, entered only when it would stop, as in
        :meth:`sleep_ns`), each marking its extent dirty if allocated;
        it stops when the job is cancelled (mirror_run then exits at once: before READY
        every cancel is forced). With ``metadata_io`` a query first reads the L2 tables
        of the images it reaches that are not cached yet, down to the first that has the
        extent (read_metadata): QEMU 7.2 traced three drains pausing an active commit
        before its first copy, one per image its first three queries reached."""
        m = self.m
        src, base_overlay = self.src_bs, self.base_overlay
        size = bdrv_skip_filters(src).data.size
        offset = 0
        while offset < size:
            if self.should_pause():
                yield from self.pause_point()
            if self.is_cancelled():
                return
            if m.metadata_io:
                yield from self.read_metadata(src, base_overlay, offset)
            allocated, n = m.is_allocated_above(src, base_overlay, offset, size - offset)
            n = n or size - offset
            if allocated:
                self.mark_dirty(offset, offset + n)
            offset += n

    def _iteration(self) -> Generator:
        """mirror_iteration: copy the first run of consecutive dirty clusters (up to the
        buffer's size) and return the rate limit's delay before the next. QEMU 7.2's
        trace (mirror_one_iteration) shows one iteration issuing every request of a
        640 KiB run made of three layers' extents."""
        start, end = self.dirty.pop(0)
        stop = min(end, start + MIRROR_BUF_SIZE)
        if stop < end:
            self.dirty.insert(0, (stop, end))
        yield from self.io()
        self.m.copy_range(self.src_bs, self.target_bs, start, stop - start)
        self.offset += stop - start
        return self.ratelimit_calculate_delay(stop - start)

    def mark_dirty(self, start: int, end: int) -> None:
        self.dirty = _add_range(self.dirty, start, end)

    def driver_drained_poll(self) -> bool:
        """mirror_drained_poll: a mirror that is neither paused nor cancelled may issue
        more requests, unless the drain is its own (``in_drain``)."""
        if not self.paused and not self.is_cancelled() and not self.in_drain:
            return True
        return self.in_flight > 0

    def driver_cancel(self, force: bool) -> bool:
        return force or self.status not in ("ready", "standby")

    def can_complete(self) -> bool:
        return True

    def complete(self) -> None:
        self.should_complete = True
        if not self.paused:       # a paused job is re-entered when it is resumed
            self.enter()

    def prepare(self) -> int:
        return self._exit_common(abort=False)

    def abort(self) -> None:
        self._exit_common(abort=True)

    def _exit_common(self, abort: bool) -> int:
        """mirror_exit_common: pivot to base if completion was requested, drop the filter."""
        if self.exited:
            return 0
        self.exited = True
        self.in_drain = True
        m = self.m
        src, mt, target = self.src_bs, self.mirror_top_bs, self.target_bs
        ret = 0
        if self.chain_frozen:
            bdrv_unfreeze_backing_chain(mt, target)
            self.chain_frozen = False
        bdrv_ref(src, "mirror_exit_common")
        bdrv_ref(mt, "mirror_exit_common")
        bdrv_ref(target, "mirror_exit_common")
        if self.target_blk is not None:
            m.blk_unref(self.target_blk)
            self.target_blk = None
        if self.should_complete and not abort:
            drain.bdrv_drained_begin(target)
            try:
                bdrv_replace_node(src, target)
            except QMPError as e:
                m.report_error(e.desc)
                ret = -1
            drain.bdrv_drained_end(target)
        self.remove_all_bdrv()
        m.must_succeed(lambda: bdrv_replace_node(mt, bdrv_filter_child(mt).bs), "mirror_exit_common")
        bdrv_unref(mt, "mirror_exit_common")
        if self.src_drained:
            self.src_drained = False
            drain.bdrv_drained_end(src)
        bdrv_unref(src, "mirror_exit_common")
        bdrv_unref(target, "mirror_exit_common")
        return ret

    # no clean hook: QEMU 7.2 leaves a base it made writable writable, after a pivot
    # (it is the device's image now), a soft cancel or an abort alike; the reopen
    # read-only on abort came in QEMU 8.x (MirrorBlockJob.base_ro)


def _add_range(ranges, start, end):
    """``ranges`` with ``[start, end)`` added, adjacent or overlapping ranges as one: a
    dirty bitmap does not remember which layer's extent a cluster came from."""
    out = []
    for s, e in sorted(ranges + [(start, end)]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def commit_active_start(m, job_id, bs, base, *, speed, on_error, filter_node_name,
                        auto_finalize, auto_dismiss) -> MirrorCommitJob:
    base_read_only = base.read_only
    if base_read_only:
        bdrv_reopen_set_read_only(base, False)
    try:
        mt = bdrv_append_filter(m, "mirror_top", filter_node_name, bs, implicit=not filter_node_name)
    except QMPError:
        if base_read_only:
            bdrv_reopen_set_read_only(base, True)
        raise
    try:
        job = m.create_job(MirrorCommitJob, job_id, mt, speed=speed, on_error=on_error,
                           auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    except QMPError:
        m.must_succeed(lambda: bdrv_replace_node(mt, bs), "mirror_start_job")
        bdrv_unref(mt, "mirror_start_job")
        if base_read_only:
            bdrv_reopen_set_read_only(base, True)
        raise
    bdrv_unref(mt, "mirror_start_job")     # the job now holds it
    job.src_bs, job.target_bs, job.mirror_top_bs = bs, base, mt
    job.should_complete = False
    job.exited = False
    job.in_drain = False
    job.src_drained = False
    job.dirty = []
    job.base_overlay = bdrv_find_overlay(bs, base)
    job.target_blk = m.blk_new(base)
    job.add_bdrv("source", bs)
    job.add_bdrv("target", base)
    job.unshared_read = _claim_intermediate(job, bdrv_filter_or_cow_bs(bs), base)
    bdrv_freeze_backing_chain(mt, base)
    job.chain_frozen = True
    mt.mirror_job = job
    job.start()
    return job


def _claim_intermediate(job: Job, top, base) -> list:
    """block_job_add_bdrv("intermediate node") for each node from ``top`` down to
    ``base`` (commit_start, and mirror_start_job for an active commit). A claim shares
    writes only, except on the filters sitting on the base (from the base overlay's
    backing down), where it shares 'consistent read' too. Returns the nodes whose
    'consistent read' the job leaves unshared."""
    filtered_base = bdrv_cow_bs(job.base_overlay) if job.base_overlay is not None else None
    unshared = []
    sharing = False
    it = top
    while it is not None and it is not base:
        sharing = sharing or it is filtered_base
        job.add_bdrv("intermediate node", it)
        if not sharing:
            unshared.append(it)
        it = bdrv_filter_or_cow_bs(it)
    return unshared
