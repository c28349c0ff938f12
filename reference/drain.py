"""Drained sections (block/io.c, QEMU 7.2 with subtree drains).

``bdrv_drained_begin(bs)`` quiesces ``bs`` and, through its parent edges,
every ancestor: node parents quiesce in turn, job parents pause
(``job_pause``), BlockBackends count. The subtree form also drains every
child recursively. The outermost call then *polls* the event loop while
anything in the quiesced set is busy: this is where other jobs'
completions run re-entrantly. ``bdrv_drained_end`` undoes the counters and
resumes jobs; it does not poll (no 7.2 format driver has a drain-end hook).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from reference import graph as _graph

if TYPE_CHECKING:
    from reference.graph import BdrvChild, BlockDriverState


# -- parent callbacks (child_of_bds, child_job, child_root) ------------------
#
# An edge knows its parent's kind (``parent_node``, ``parent_job``, ``parent_blk``):
# the walks below take that branch without asking the parent.
# The polls are in helpers of their own, entered only when there is something
# to wait for (``poll_while`` returns at once otherwise), so that a walk that
# does not poll builds no closure and no description.

def parent_drained_begin_single(c: BdrvChild, poll: bool, target=None) -> None:
    _parent_quiesce(c)
    if poll and _parent_drained_poll_single(c):
        _parent_drained_wait(c, target)


def _parent_quiesce(c: BdrvChild) -> None:
    """bdrv_parent_drained_begin_single without the poll."""
    c.parent_quiesce_counter += 1
    node = c.parent_node
    if node is not None:
        _quiesce(node, None)
        return
    job = c.parent_job
    if job is not None:
        job.pause()
    else:
        c.parent_blk.quiesce_counter += 1


def _parent_drained_wait(c: BdrvChild, target) -> None:
    m = (target or c.bs).m
    m.aio.poll_while(lambda: _parent_drained_poll_single(c), f"drain of '{c.name}' parent")


def parent_drained_end_single(c: BdrvChild) -> None:
    c.parent_quiesce_counter -= 1
    node = c.parent_node
    if node is not None:
        _unquiesce(node, None)
        return
    job = c.parent_job
    if job is not None:
        job.resume()
        return
    p = c.parent_blk
    p.quiesce_counter -= 1
    if p.quiesce_counter == 0 and p.queued:
        queued, p.queued = p.queued, []
        for request in queued:          # blk_root_drained_end: resubmit
            c.bs.m.guest_write(*request)


def _parent_drained_poll_single(c: BdrvChild) -> bool:
    node = c.parent_node
    if node is not None:
        return _drain_poll(node, False, None)
    job = c.parent_job
    if job is not None:
        return job.drained_poll()
    return c.parent_blk.in_flight > 0


def child_attach(c: BdrvChild) -> None:
    """bdrv_child_cb_attach -> bdrv_apply_subtree_drain: a new child inherits the
    parent's subtree drains, each a drained_begin that polls, so a job below that
    was resumed in between (the child detached, then attached again) runs to its
    pause point before the attach returns, as QEMU 7.2's events show."""
    p = c.parent_node
    if p is None:
        return
    for _ in range(p.recursive_quiesce_counter):
        _drained_begin(c.bs, True, c, True)


def child_detach(c: BdrvChild) -> None:
    """bdrv_child_cb_detach: a removed child leaves the parent's subtree drains."""
    p = c.parent_node
    if p is None:
        return
    for _ in range(p.recursive_quiesce_counter):
        _drained_end(c.bs, True, c)


# -- the node side -------------------------------------------------------------

def _quiesce(bs: BlockDriverState, ignore: BdrvChild | None) -> None:
    """bdrv_do_drained_begin_quiesce: count, and tell every other parent."""
    c: BdrvChild
    bs.quiesce_counter += 1
    parents = bs.parents
    if len(parents) == 1:
        if parents[0] is not ignore:
            _parent_quiesce(parents[0])
        return
    for c in list(parents):
        if c is not ignore:
            _parent_quiesce(c)


def _unquiesce(bs: BlockDriverState, ignore: BdrvChild | None) -> None:
    c: BdrvChild
    parents = bs.parents
    if len(parents) == 1:
        if parents[0] is not ignore:
            parent_drained_end_single(parents[0])
    else:
        for c in list(parents):
            if c is not ignore:
                parent_drained_end_single(c)
    bs.quiesce_counter -= 1


def _drain_poll(bs: BlockDriverState, recursive: bool, ignore: BdrvChild | None) -> bool:
    """bdrv_drain_poll: is anything at or above (and, recursively, below) ``bs`` busy?"""
    c: BdrvChild
    for c in bs.parents:
        if c is not ignore and _parent_drained_poll_single(c):
            return True
    if recursive:
        for c in bs.children:
            if _drain_poll(c.bs, True, c):
                return True
    return False


def _drained_begin(bs: BlockDriverState, recursive: bool, parent: BdrvChild | None,
                   poll: bool) -> None:
    c: BdrvChild
    _graph.live(bs, "bdrv_drained_begin")
    _quiesce(bs, parent)
    if recursive:
        bs.recursive_quiesce_counter += 1
        for c in list(bs.children):
            _drained_begin(c.bs, True, c, False)
    if poll and _drain_poll(bs, recursive, parent):
        _drain_wait(bs, recursive, parent)


def _drain_wait(bs: BlockDriverState, recursive: bool, parent: BdrvChild | None) -> None:
    m = bs.m
    m.drain_depth += 1
    try:
        m.aio.poll_while(lambda: _drain_poll(bs, recursive, parent), f"drain of '{bs.node_name}'")
    finally:
        m.drain_depth -= 1


def _drained_end(bs: BlockDriverState, recursive: bool, parent: BdrvChild | None) -> None:
    c: BdrvChild
    _graph.live(bs, "bdrv_drained_end")
    _unquiesce(bs, parent)
    if recursive:
        bs.recursive_quiesce_counter -= 1
        for c in list(bs.children):
            _drained_end(c.bs, True, c)


def bdrv_drained_begin(bs: BlockDriverState) -> None:
    _drained_begin(bs, False, None, True)


def bdrv_drained_end(bs: BlockDriverState) -> None:
    _drained_end(bs, False, None)


def bdrv_subtree_drained_begin(bs: BlockDriverState) -> None:
    _drained_begin(bs, True, None, True)


def bdrv_subtree_drained_end(bs: BlockDriverState) -> None:
    _drained_end(bs, True, None)
