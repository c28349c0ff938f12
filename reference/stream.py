"""block-stream (block/stream.c, QEMU 6.0 ... 7.2): copy the data of the
intermediate nodes into the top, then make ``base`` the top's backing.

:func:`stream_prepare` has the variants of the seed bug: the fixed one
(b1e1af394d: subtree drain of ``above_base`` around reading ``base`` and
changing the graph), ``stream-prepare-no-drain`` (no reference, no drain:
use-after-free when a commit completes inside ``bdrv_set_backing_hd``'s
drain) and ``stream-prepare-ref-only`` (a reference but no drain: a node the
commit cut out is installed again).
"""
from __future__ import annotations

from typing import Generator

from reference import drain
from reference.errors import QMPError
from reference.graph import (bdrv_append_filter, bdrv_cow_bs, bdrv_cow_child, bdrv_drop_filter,
                             bdrv_filter_or_cow_bs, bdrv_find_overlay, bdrv_freeze_backing_chain,
                             bdrv_ref, bdrv_reopen_set_read_only, bdrv_skip_filters,
                             bdrv_unfreeze_backing_chain, bdrv_unref, bdrv_change_backing_file,
                             bdrv_set_backing_hd)
from reference.job import Job

STREAM_CHUNK = 512 << 10


class StreamJob(Job):
    job_type = "stream"

    def __init__(self, m, job_id: str, main_bs, **kw):
        self.cor_filter_bs = None      # until the start function inserts it (holds() reads it)
        self.blk = None                # the job's own BlockBackend (StreamBlockJob.blk)
        super().__init__(m, job_id, main_bs, **kw)

    def filter_bs(self):
        return self.cor_filter_bs

    def run(self) -> Generator:
        """stream_run: copy what is allocated between the top and base_overlay."""
        m = self.m
        bs = bdrv_skip_filters(self.target_bs)
        if bs is self.base_overlay:
            return 0
        length = bs.data.size
        self.len = length
        offset = 0
        delay = 0
        while offset < length:
            yield from self.sleep_ns(delay)
            if self.is_cancelled():
                break
            if m.metadata_io:
                yield from self.read_metadata(bs, self.base_overlay)
            allocated, n = bs.data.block_status(offset, STREAM_CHUNK)
            copy = False
            if not allocated:
                copy, n = m.is_allocated_above(bdrv_cow_bs(bs), self.base_overlay, offset, n)
                if not copy and n == 0:
                    n = length - offset
            if copy:
                yield from self.io()
                m.copy_on_read(bs, offset, n)
            offset += n
            self.offset = offset
            delay = self.ratelimit_calculate_delay(n) if copy else 0
        return 0

    def prepare(self) -> int:
        m = self.m
        m.cell("stream_prepare ran")
        if any(j is not self and j.job_type == "commit" and not j.is_completed()
               for j in m.jobs.values()):
            m.cell("stream_prepare ran while a commit was pending")
            base = bdrv_filter_or_cow_bs(self.above_base)
            droppers = [] if base is None else [j for j in m.jobs.values() if j is not self
                                                and not j.is_completed() and j.will_drop(base)]
            if droppers:
                m.cell("stream_prepare's base is a node a pending commit will drop")
                copying = [j for j in droppers if not j.deferred_to_main_loop]
                if copying:
                    m.cell("stream_prepare's base is a node a commit still copying will drop")
                    if any(j.copies_left() <= 1 for j in copying):
                        m.cell("stream_prepare's base is a node a commit with at most one chunk "
                               "left to copy will drop")
        self.cor_filter_drop()
        if m.bug("stream-prepare-no-drain"):
            return self._prepare_unfixed(take_ref=False)
        if m.bug("stream-prepare-ref-only"):
            return self._prepare_unfixed(take_ref=True)
        if m.bug("stream-header-before-backing"):
            return self._prepare_header_first()
        return self._prepare_fixed()

    def _prepare_header_first(self) -> int:
        """QEMU before 8441d82d51: header rewrite (polls), then a non-draining
        bdrv_set_backing_hd, with ``base`` read before both."""
        bs = bdrv_skip_filters(self.target_bs)
        base = bdrv_filter_or_cow_bs(self.above_base)
        if bdrv_cow_child(bs) is None:
            return 0
        ret = bdrv_change_backing_file(bs, *self._base_id(bdrv_skip_filters(base)))
        try:
            bdrv_set_backing_hd(bs, base, drain_it=False)
        except QMPError as e:
            self.m.report_error(e.desc)
            return -1
        return ret

    def _base_id(self, unfiltered_base) -> tuple[str | None, str | None, bool]:
        """The header's new backing string and format: ``backing-file`` or the
        unfiltered base's filename as cached right now (QEMU keeps a pointer
        to ``unfiltered_base->filename``: read it after the graph change, the
        string is the one the backing attach refreshed); and whether the user
        gave it."""
        if unfiltered_base is None:
            return None, None, False
        if self.backing_file_str:
            return self.backing_file_str, unfiltered_base.drv, True
        return unfiltered_base.filename, unfiltered_base.drv, False

    def _prepare_fixed(self) -> int:
        above_base = self.above_base
        drain.bdrv_subtree_drained_begin(above_base)
        base = bdrv_filter_or_cow_bs(above_base)
        if base is not None:
            bdrv_ref(base, "stream_prepare")
        try:
            return self._set_backing(base)
        finally:
            if base is not None:
                bdrv_unref(base, "stream_prepare")
            drain.bdrv_subtree_drained_end(above_base)

    def _prepare_unfixed(self, take_ref: bool) -> int:
        base = bdrv_filter_or_cow_bs(self.above_base)
        if take_ref and base is not None:
            bdrv_ref(base, "stream_prepare")
        try:
            return self._set_backing(base)
        finally:
            if take_ref and base is not None:
                bdrv_unref(base, "stream_prepare")

    def _set_backing(self, base) -> int:
        bs = bdrv_skip_filters(self.target_bs)
        if bdrv_cow_child(bs) is None:
            return 0
        unfiltered_base = bdrv_skip_filters(base)      # read before the graph changes
        try:
            bdrv_set_backing_hd(bs, base)
        except QMPError as e:
            failed = e
        else:
            failed = None
        # the header is rewritten even when the graph change failed; that failure wins
        ret = bdrv_change_backing_file(bs, *self._base_id(unfiltered_base))
        if failed is not None:
            self.m.report_error(failed.desc)
            return -1      # -EPERM
        return ret

    def cor_filter_drop(self) -> None:
        """bdrv_cor_filter_drop: unfreeze, drop the filter, drop our reference."""
        cor = self.cor_filter_bs
        if cor is None:
            return
        self.cor_filter_bs = None
        if self.cor_frozen:
            self.cor_frozen = False
            bdrv_unfreeze_backing_chain(cor, self.base_overlay)
        bdrv_drop_filter(cor)
        bdrv_unref(cor, "bdrv_cor_filter_drop")

    def clean(self) -> None:
        """stream_clean: drop the filter if still there, release the job's own
        BlockBackend (now on the top: dropping the filter moved it), reopen read-only."""
        self.cor_filter_drop()
        blk, self.blk = self.blk, None
        self.m.blk_unref(blk)
        if self.bs_read_only:
            bdrv_reopen_set_read_only(self.target_bs, True)


def stream_start(m, job_id, bs, base, backing_file_str, bottom, *, speed, on_error,
                 filter_node_name, auto_finalize, auto_dismiss) -> StreamJob:
    """stream_start: freeze/reopen, insert the copy-on-read filter, create and start the job."""
    if bottom is not None:
        base_overlay = above_base = bottom
    else:
        base_overlay = bdrv_find_overlay(bs, base)
        if base_overlay is None:
            raise QMPError(f"'{base.node_name}' is not in the backing chain of '{bs.node_name}'")
        above_base = base_overlay
        if bdrv_cow_bs(above_base) is not base:
            above_base = bdrv_cow_bs(above_base)
            while bdrv_filter_or_cow_bs(above_base) is not base:
                above_base = bdrv_filter_or_cow_bs(above_base)
    bs_read_only = bs.read_only
    if bs_read_only:
        bdrv_freeze_backing_chain(bs, above_base)
        try:
            bdrv_reopen_set_read_only(bs, False)
        finally:
            bdrv_unfreeze_backing_chain(bs, above_base)
    try:
        cor = _insert_cor(m, bs, base_overlay, filter_node_name)
    except QMPError:
        _undo_reopen(bs, bs_read_only)
        raise
    try:
        job = m.create_job(StreamJob, job_id, cor, speed=speed, on_error=on_error,
                           auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    except QMPError:
        _drop_cor(cor, base_overlay)
        _undo_reopen(bs, bs_read_only)
        raise
    job.blk = m.blk_new(cor)       # blk_new_with_bs on the filter, no request queuing
    job.target_bs = bs
    job.base_overlay = base_overlay
    job.above_base = above_base
    job.backing_file_str = backing_file_str
    job.cor_filter_bs = cor
    job.cor_frozen = True
    job.bs_read_only = bs_read_only
    job.add_bdrv("active node", bs)
    stop = bdrv_filter_or_cow_bs(above_base)
    it = bdrv_filter_or_cow_bs(bs)
    while it is not None and it is not stop:
        job.add_bdrv("intermediate node", it)
        it = bdrv_filter_or_cow_bs(it)
    if stop is not None and any(j is not job and not j.is_completed() and j.will_drop(stop)
                                for j in m.jobs.values()):
        m.cell("a stream started with a base a pending commit will drop")
    job.start()
    return job


def _insert_cor(m, bs, bottom, filter_node_name):
    """bdrv_insert_node with driver copy-on-read: the filter freezes its chain down to
    ``bottom`` (cor_open) and holds a reference on it."""
    try:
        cor = bdrv_append_filter(m, "copy-on-read", filter_node_name, bs, implicit=False)
    except QMPError as e:        # bdrv_insert_node prefixes the open error
        raise QMPError(f"Could not create node: {e.desc}") from None
    # 7.2's stream_start marks the filter implicit only once bdrv_insert_node has
    # returned: the refresh as it became the overlay's backing (bdrv_backing_attach)
    # gave it a json: filename of its own, not its child's, and the overlay's header
    # no longer names its backing node (bdrv_backing_overridden) until a refresh
    cor.implicit = not filter_node_name
    try:
        bdrv_freeze_backing_chain(cor, bottom)
    except QMPError:
        bdrv_drop_filter(cor)
        bdrv_unref(cor, "cor_open")
        raise
    bdrv_ref(bottom, "cor_open")
    cor.cor_bottom = bottom
    return cor


def _drop_cor(cor, bottom) -> None:
    bdrv_unfreeze_backing_chain(cor, bottom)
    bdrv_drop_filter(cor)
    bdrv_unref(cor, "bdrv_cor_filter_drop")


def _undo_reopen(bs, bs_read_only: bool) -> None:
    if bs_read_only:
        bdrv_reopen_set_read_only(bs, True)
