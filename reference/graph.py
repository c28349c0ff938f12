"""The block graph (block.c): nodes, child edges, parents, references, the
chain helpers, and the graph changes jobs make.

Names follow block.c so both sides can be grepped: ``bdrv_set_backing_hd``,
``bdrv_replace_node``, ``bdrv_drop_intermediate``, ``bdrv_freeze_backing_chain``,
``bdrv_filter_or_cow_bs``, ...

A node whose reference count drops to zero is freed: its child edges are
detached (which may free more nodes) and it is *poisoned*: any later use
through :func:`live` raises :class:`~reference.errors.UseAfterFree` naming the
node, the step where it was freed and the step where it was touched.
Permissions are not modelled; op blockers and frozen links are.
"""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Iterator

from reference import drain
from reference.data import ImageData
from reference.errors import QMPError, UseAfterFree
from reference.filename import (QCOW2_BACKING_FILE_MAX, bdrv_backing_overridden,
                                bdrv_refresh_filename, qemu_length)

if TYPE_CHECKING:
    from reference.machine import Machine

#: filter drivers and the name of their filtered child
FILTER_CHILD = {"copy-on-read": "file", "commit_top": "backing", "mirror_top": "backing"}


class BlockDriverState:
    """A node (BlockDriverState)."""

    kind = "node"

    def __init__(self, m: "Machine", node_name: str, drv: str, *, filename: str = "",
                 read_only: bool = False, data: ImageData | None = None, implicit: bool = False):
        self.m = m
        self.node_name = node_name
        self.drv = drv
        self.image_file = filename          # the protocol child's file name: fixed
        #: the protocol child's options, as bdrv_refresh_filename gathers them: fixed
        #: too, so made once and shared by every refresh (nothing changes them)
        self.file_options = {"driver": "file", "filename": filename} if filename else None
        self.filename = filename            # bs->filename: a cache, see reference.filename
        self.exact_filename = filename
        self.full_open_options: dict | None = None
        self.auto_backing_file = ""         # what the header would open as backing
        self.auto_backing_relative = False  # ... given by the user (see bdrv_change_backing_file)
        self.read_only = read_only
        self.data = data
        self.implicit = implicit
        self.is_filter = drv in FILTER_CHILD
        self.never_freeze = drv in ("commit_top", "mirror_top")
        self.refcnt = 1
        self.children: list[BdrvChild] = []
        self.parents: list[BdrvChild] = []
        self.quiesce_counter = 0
        self.recursive_quiesce_counter = 0
        self.op_blockers: list[str] = []
        self.backing_file: str | None = None     # bs->backing_file, what queries show
        self.header_backing: str | None = None   # the backing string in the image header
        self.header_backing_format: str | None = None
        self.backing_format: str | None = None
        self.freed_at: str | None = None
        self.cor_bottom: BlockDriverState | None = None
        self.mirror_job = None              # a mirror_top filter's job (MirrorBDSOpaque.job)
        m.all_nodes.append(self)            # for Machine.release

    def __repr__(self) -> str:
        return f"<{self.drv} {self.node_name}{' (freed)' if self.freed_at else ''}>"

    @property
    def backing(self) -> "BdrvChild | None":
        c: BdrvChild
        for c in self.children:
            if c.name == "backing":
                return c
        return None

    @property
    def file(self) -> "BdrvChild | None":
        c: BdrvChild
        for c in self.children:
            if c.name == "file":
                return c
        return None

    def display_filename(self) -> str:
        """The image file the observed chain shows for this node (a filter: the
        one of the node it filters), as the QEMU backend reads it from the
        protocol node, whatever the node's own (cached) filename says."""
        if self.is_filter:
            child = bdrv_filter_child(self)
            return child.bs.display_filename() if child else ""
        return self.image_file


class BdrvChild:
    """An edge from a parent (node, BlockBackend or job) to a child node."""

    __slots__ = ("name", "parent", "bs", "frozen", "parent_quiesce_counter", "stay_at_node",
                 "parent_node", "parent_job", "parent_blk")

    def __init__(self, name: str, parent, bs: BlockDriverState):
        self.name = name
        self.parent = parent
        self.bs = bs
        self.frozen = False
        self.parent_quiesce_counter = 0
        kind = parent.kind
        self.stay_at_node = kind == "job"
        #: the parent again, in the field of its kind (node, job, BlockBackend), None in
        #: the others: the drain walks branch on these typed fields, where ``parent``
        #: can be any of the three
        self.parent_node = parent if kind == "node" else None
        self.parent_job = parent if kind == "job" else None
        self.parent_blk = parent if kind == "bb" else None

    def __repr__(self) -> str:
        return f"<edge {parent_name(self.parent)} -{self.name}-> {self.bs.node_name}>"


def parent_name(p) -> str:
    if p.kind == "node":
        return p.node_name
    if p.kind == "bb":
        return p.name or "(job bb)"
    return f"job {p.id}"


# -- liveness and references -------------------------------------------------

def live(bs: BlockDriverState, where: str) -> BlockDriverState:
    """Touch ``bs``: raise UseAfterFree if it was freed."""
    if bs.freed_at is not None:
        raise UseAfterFree(bs.node_name, bs.freed_at, bs.m.stamp(where), where)
    return bs


def bdrv_ref(bs: BlockDriverState, where: str = "bdrv_ref") -> None:
    live(bs, where)
    bs.refcnt += 1


def bdrv_unref(bs: BlockDriverState, where: str = "bdrv_unref") -> None:
    live(bs, where)
    bs.refcnt -= 1
    if bs.refcnt == 0:
        _bdrv_delete(bs, where)


def _bdrv_delete(bs: BlockDriverState, where: str) -> None:
    m = bs.m
    assert not bs.parents, f"{bs.node_name} freed with parents"
    m.named_nodes.pop(bs.node_name, None)
    for c in list(bs.children):
        bdrv_unref_child(bs, c)
    bottom, bs.cor_bottom = bs.cor_bottom, None
    if bottom is not None:
        bdrv_unref(bottom, "cor_close")
    bs.freed_at = m.stamp(where)
    m.note_freed(bs)


def bdrv_attach_child(parent, child_bs: BlockDriverState, name: str) -> BdrvChild:
    """Attach ``child_bs`` under ``parent`` (a node, BB or job); the edge owns a reference."""
    live(child_bs, "bdrv_attach_child")
    bdrv_ref(child_bs, "bdrv_attach_child")
    c = BdrvChild(name, parent, child_bs)
    if parent.kind == "node":
        parent.children.insert(0, c)
    _replace_child_noperm(c, child_bs, attaching=True)
    return c


def bdrv_unref_child(parent, c: BdrvChild) -> None:
    """Detach edge ``c`` and drop the reference it owned."""
    bdrv_unref(bdrv_remove_child(parent, c), "bdrv_unref_child")


def bdrv_remove_child(parent, c: BdrvChild) -> BlockDriverState:
    """Detach edge ``c`` but keep its reference: the caller drops it later, as
    QEMU's graph transactions drop the old child's reference only at commit."""
    old = c.bs
    _replace_child_noperm(c, None)
    if parent.kind == "node" and c in parent.children:
        parent.children.remove(c)
    return old


def _replace_child_noperm(c: BdrvChild, new: BlockDriverState | None, attaching: bool = False) -> None:
    """bdrv_replace_child_noperm: move ``c`` to ``new``, fixing drain accounting.

    Attaching to a drained node quiesces the parent, and in QEMU 7.x that
    polls (``bdrv_parent_drained_begin_single(child, true)``): a poll point
    in the middle of a graph change.
    """
    old = None if attaching else c.bs
    new_q = new.quiesce_counter if new is not None else 0
    saldo = new_q - c.parent_quiesce_counter
    while saldo > 0:
        drain.parent_drained_begin_single(c, poll=True, target=new)
        saldo -= 1
    if old is not None:
        drain.child_detach(c)
        old.parents.remove(c)
    if new is not None:
        c.bs = new
        new.parents.insert(0, c)
        saldo += new.quiesce_counter - new_q
        # bdrv_child_cb_attach: bdrv_backing_attach (its filename refresh) comes before
        # bdrv_apply_subtree_drain, whose poll may run a job below to its completion
        if _is_cow_child(c) and not new.m.opening:
            bdrv_refresh_filename(new)          # bdrv_backing_attach
        drain.child_attach(c)
    while saldo < 0:
        drain.parent_drained_end_single(c)
        saldo += 1


def _is_cow_child(c: BdrvChild) -> bool:
    """A format node's backing edge (role COW; a filter's is FILTERED, a
    BlockBackend's or a job's is no node edge at all)."""
    return c.name == "backing" and c.parent.kind == "node" and not c.parent.is_filter


# -- chain helpers (block.c, include/block/block_int-io.h) -------------------

def bdrv_filter_child(bs: BlockDriverState) -> BdrvChild | None:
    if not bs.is_filter:
        return None
    name = FILTER_CHILD[bs.drv]
    c: BdrvChild
    for c in bs.children:
        if c.name == name:
            return c
    return None


def bdrv_cow_child(bs: BlockDriverState) -> BdrvChild | None:
    if bs.is_filter:
        return None
    return bs.backing


def bdrv_filter_or_cow_child(bs: BlockDriverState) -> BdrvChild | None:
    return bdrv_filter_child(bs) if bs.is_filter else bdrv_cow_child(bs)


def bdrv_filter_or_cow_bs(bs: BlockDriverState | None) -> BlockDriverState | None:
    """The next node down: the filtered child of a filter, else the backing child.

    Hot path: one attribute walk, no helper calls."""
    if bs is None:
        return None
    if bs.freed_at is not None:
        live(bs, "bdrv_filter_or_cow_bs")
    want = FILTER_CHILD[bs.drv] if bs.is_filter else "backing"    # a node's drv is fixed
    c: BdrvChild
    for c in bs.children:
        if c.name == want:
            return c.bs
    return None


def bdrv_cow_bs(bs: BlockDriverState | None) -> BlockDriverState | None:
    if bs is None:
        return None
    c = bdrv_cow_child(live(bs, "bdrv_cow_bs"))
    return c.bs if c else None


def bdrv_skip_filters(bs: BlockDriverState | None, implicit_only: bool = False) -> BlockDriverState | None:
    while bs is not None and bs.is_filter and (bs.implicit or not implicit_only):
        c = bdrv_filter_child(live(bs, "bdrv_skip_filters"))
        if c is None:
            break
        bs = c.bs
    return bs


def bdrv_backing_chain_next(bs: BlockDriverState | None) -> BlockDriverState | None:
    return bdrv_skip_filters(bdrv_cow_bs(bdrv_skip_filters(bs)))


def bdrv_find_overlay(active: BlockDriverState, bs: BlockDriverState | None) -> BlockDriverState | None:
    bs = bdrv_skip_filters(bs)
    active = bdrv_skip_filters(active)
    while active is not None:
        nxt = bdrv_backing_chain_next(active)
        if nxt is bs:
            return active
        active = nxt
    return None


def bdrv_chain_contains(top: BlockDriverState | None, base: BlockDriverState | None) -> bool:
    while top is not None and top is not base:
        top = bdrv_filter_or_cow_bs(top)
    return top is base


def bdrv_find_base(bs: BlockDriverState) -> BlockDriverState | None:
    """bdrv_find_base: the last node of the COW chain starting at ``bs`` — ``bs``
    itself when it has no backing (so committing the bottom image "into itself")."""
    last = bdrv_skip_filters(bs)
    cur = bdrv_backing_chain_next(last)
    while cur is not None:
        last = cur
        cur = bdrv_backing_chain_next(cur)
    return last


def chain(bs: BlockDriverState | None) -> Iterator[BlockDriverState]:
    """Walk ``bs`` and every node below it via bdrv_filter_or_cow_bs."""
    while bs is not None:
        yield bs
        bs = bdrv_filter_or_cow_bs(bs)


def bdrv_find_backing_image(bs: BlockDriverState, filename: str) -> BlockDriverState | None:
    """The first image strictly below ``bs`` (filters skipped) that ``filename``
    names: compared with its overlay's header string, or, where that overlay's
    backing is overridden, with the image's own filename (refreshed once, then
    cached for the rest of the walk, as block.c does)."""
    refreshed = False
    curr = bdrv_skip_filters(bs)
    while curr is not None and bdrv_cow_child(curr) is not None:
        below = bdrv_backing_chain_next(curr)
        if bdrv_backing_overridden(curr):
            if not refreshed:
                bdrv_refresh_filename(below)
                refreshed = True
            if filename == below.filename:
                return below
        elif filename == curr.backing_file and _names_existing_file(curr.m, filename):
            return below
        curr = below
    return None


def _names_existing_file(m: "Machine", name: str) -> bool:
    """block.c compares a plain path with realpath(), which needs the file to
    exist (a protocol path is compared as it is)."""
    return path_has_protocol(name) or name in m.images


def path_has_protocol(path: str) -> bool:
    """A ``<protocol>:`` prefix before any '/' (``json:``, ``nbd:``, ...)."""
    head = path.split("/", 1)[0]
    return ":" in head


def bdrv_get_device_or_node_name(bs: BlockDriverState) -> str:
    for c in bs.parents:
        if c.parent.kind == "bb" and c.parent.name:
            return c.parent.name
    return bs.node_name


# -- op blockers ---------------------------------------------------------------

def bdrv_op_is_blocked(bs: BlockDriverState) -> None:
    """Raise ``Node '...' is busy: <reason>`` if any blocker is set."""
    live(bs, "bdrv_op_is_blocked")
    if bs.op_blockers:
        raise QMPError(f"Node '{bdrv_get_device_or_node_name(bs)}' is busy: {bs.op_blockers[0]}")


def bdrv_op_block_all(bs: BlockDriverState, reason: str) -> None:
    live(bs, "bdrv_op_block_all").op_blockers.append(reason)


def bdrv_op_unblock_all(bs: BlockDriverState, reason: str) -> None:
    if reason in bs.op_blockers:
        bs.op_blockers.remove(reason)


# -- frozen chains -----------------------------------------------------------

def bdrv_is_backing_chain_frozen(bs, base, errp_ok: bool = False) -> None:
    i = bs
    while i is not None and i is not base:
        c = bdrv_filter_or_cow_child(i)
        if c is not None and c.frozen:
            raise QMPError(f"Cannot change '{c.name}' link from '{i.node_name}' to '{c.bs.node_name}'")
        i = c.bs if c else None


def bdrv_freeze_backing_chain(bs: BlockDriverState, base: BlockDriverState | None) -> None:
    """Freeze every edge from ``bs`` down to (not leaving) ``base``."""
    bdrv_is_backing_chain_frozen(bs, base)
    check_never_freeze = not bs.m.bug("no-never-freeze")
    for i in _chain_until(bs, base):
        c = bdrv_filter_or_cow_child(i)
        if check_never_freeze and c is not None and c.bs.never_freeze:
            raise QMPError(f"Cannot freeze '{c.name}' link to '{c.bs.node_name}'")
    for i in _chain_until(bs, base):
        c = bdrv_filter_or_cow_child(i)
        if c is not None:
            c.frozen = True


def bdrv_unfreeze_backing_chain(bs: BlockDriverState, base: BlockDriverState | None) -> None:
    for i in _chain_until(bs, base):
        c = bdrv_filter_or_cow_child(i)
        if c is not None:
            c.frozen = False


def _chain_until(bs, base) -> list[BlockDriverState]:
    out = []
    i = bs
    while i is not None and i is not base:
        out.append(live(i, "bdrv_freeze_backing_chain"))
        i = bdrv_filter_or_cow_bs(i)
    return out


# -- graph changes -------------------------------------------------------------

def bdrv_set_backing_hd(bs: BlockDriverState, backing: BlockDriverState | None,
                        drain_it: bool = True) -> None:
    """Drain ``bs``, replace its backing edge, undrain (block.c, since c0829cb1fd).

    The drain polls: other jobs' completions may run here.
    """
    if drain_it:
        drain.bdrv_drained_begin(bs)
    try:
        live(bs, "bdrv_set_backing_hd")
        if backing is not None:
            live(backing, "bdrv_set_backing_hd")
            bs.m.note_new_backing(backing)
        c = bs.backing
        if c is not None:
            if c.frozen:
                raise QMPError(f"Cannot change frozen 'backing' link from '{bs.node_name}' "
                               f"to '{c.bs.node_name}'")
            if backing is not None and _would_cycle(bs, backing):
                raise QMPError(f"Making '{backing.node_name}' a backing child of "
                               f"'{bs.node_name}' would create a cycle")
        if backing is not None:
            _check_read_shared(bs, backing)
        # bdrv_set_file_or_backing_noperm: detach, attach, and only then (at the
        # transaction's commit) drop the old child's reference
        old = bdrv_remove_child(bs, c) if c is not None else None
        if backing is not None:
            bdrv_attach_child(bs, backing, "backing")
        if old is not None:
            bdrv_unref(old, "bdrv_set_backing_hd")
    finally:
        if drain_it:
            drain.bdrv_drained_end(bs)


def _check_read_shared(bs, backing) -> None:
    """bdrv_refresh_perms on the new backing edge, which fails the change (-EPERM) and
    rolls it back: a format node's backing child takes 'consistent read' when the chain
    above it is read (bdrv_default_perms_for_cow; a device reads), and a commit's
    intermediate nodes do not share it (:meth:`Job.unshares_read`). A stream whose top
    another job left read-write is accepted during a commit and fails here at its end."""
    c: BdrvChild
    for c in backing.parents:
        job = c.parent_job
        if job is not None and job.unshares_read(backing) and _read_by_device(bs):
            raise QMPError(f"Permission conflict on node '{backing.node_name}': permissions "
                           f"'consistent read' are both required by node '{bs.node_name}' (uses "
                           f"node '{backing.node_name}' as 'backing' child) and unshared by "
                           f"{job.job_type} job '{job.id}' (uses node '{backing.node_name}' as "
                           f"'intermediate node' child).")


def _read_by_device(bs) -> bool:
    """Whether a device's BlockBackend reads ``bs`` through the node edges above it (a
    job's own BlockBackends take no 'consistent read' on the nodes they sit on)."""
    c: BdrvChild
    seen = set()
    todo = [bs]
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for c in n.parents:
            if c.parent_node is not None:
                todo.append(c.parent_node)
            elif c.parent_blk is not None and c.parent_blk.name:
                return True
    return False


def _would_cycle(bs, new) -> bool:
    """Whether ``bs`` is in chain(new) (the same walk, without a generator)."""
    n = new
    while n is not None:
        if n is bs:
            return True
        n = bdrv_filter_or_cow_bs(n)
    return False


def bdrv_replace_node(from_bs: BlockDriverState, to: BlockDriverState,
                      auto_skip: bool = True, detach_subchain: bool = False,
                      drained: bool = True) -> None:
    """Move every movable parent edge of ``from_bs`` to ``to`` (bdrv_replace_node_common,
    which drains ``from_bs``; with ``drained`` False, bdrv_append's
    bdrv_replace_node_noperm, which does not)."""
    bdrv_ref(from_bs, "bdrv_replace_node")
    if drained:
        drain.bdrv_drained_begin(from_bs)
    try:
        live(to, "bdrv_replace_node")
        to_cow_parent = None
        if detach_subchain:
            to_cow_parent = _node_above(from_bs, to)
        edges = [c for c in from_bs.parents]
        moving = []
        for c in edges:
            if c.stay_at_node or (c.parent_node is not None and _would_cycle(c.parent, to)):
                if not auto_skip:
                    raise QMPError(f"Should not change '{c.name}' link to '{from_bs.node_name}'")
                continue
            if c.frozen:
                raise QMPError(f"Cannot change '{c.name}' link to '{from_bs.node_name}'")
            moving.append(c)
        for c in moving:
            bdrv_ref(to, "bdrv_replace_node")
            _replace_child_noperm(c, to)
            bdrv_unref(from_bs, "bdrv_replace_node")
        if to_cow_parent is not None:
            c = bdrv_filter_or_cow_child(to_cow_parent)
            if c is not None and c.bs is to:
                bdrv_unref_child(to_cow_parent, c)
    finally:
        if drained:
            drain.bdrv_drained_end(from_bs)
        bdrv_unref(from_bs, "bdrv_replace_node")


def _node_above(top: BlockDriverState, target: BlockDriverState) -> BlockDriverState | None:
    for n in chain(top):
        if bdrv_filter_or_cow_bs(n) is target:
            return n
    return None


def bdrv_append_filter(m: "Machine", drv: str, name: str | None, bs: BlockDriverState,
                       implicit: bool, drained: bool = True) -> BlockDriverState:
    """Create a filter above ``bs`` and move ``bs``'s movable parents to it (bdrv_append /
    bdrv_insert_node). The creator's reference is returned to the caller.

    ``drained``: whether ``bs`` is drained while its parents move, as
    bdrv_insert_node (copy-on-read) and mirror_start_job (mirror_top) do; 7.2's
    commit_start calls bdrv_append bare (QEMU shows a throttled job above ``bs``
    pause once as a commit starts, for the base's reopen, not twice)."""
    node_name = name if name else m.auto_node_name()
    if name and name in m.named_nodes:
        raise QMPError(f"Duplicate nodes with node-name='{name}'")
    f = BlockDriverState(m, node_name, drv, implicit=implicit)
    f.read_only = bs.read_only
    m.named_nodes[node_name] = f
    bdrv_attach_child(f, bs, FILTER_CHILD[drv])
    bdrv_replace_node(bs, f, auto_skip=True, drained=drained)
    return f


def bdrv_drop_filter(f: BlockDriverState) -> None:
    """bdrv_drop_filter: replace the filter by its child for all movable parents and
    detach the child."""
    child = bdrv_filter_or_cow_bs(f)
    if child is None:
        return
    bdrv_replace_node(f, child, auto_skip=True, detach_subchain=True)


def bdrv_drop_intermediate(top: BlockDriverState, base: BlockDriverState,
                           backing_file_str: str | None) -> int:
    """Make the parents of ``top`` point at ``base`` (block.c bdrv_drop_intermediate, 7.2).

    Runs inside a subtree drain of ``top``; the header rewrites of the
    overlays are I/O (a poll point), covered by that drain. Returns 0, or the
    negative errno of a header it could not rewrite, after the graph changed.
    """
    bdrv_ref(top, "bdrv_drop_intermediate")
    drain.bdrv_subtree_drained_begin(top)
    try:
        if not bdrv_chain_contains(top, base):
            raise QMPError("Input/output error", "EIO")
        given = backing_file_str is not None
        if not given:
            bdrv_refresh_filename(base)
        updated = [c for c in top.parents]
        bdrv_replace_node(top, base, auto_skip=False)
        for c in updated:
            if c.parent.kind == "node" and c.bs is base:
                # without backing-file, QEMU passes a pointer to base->filename:
                # each header gets the string as the attaches above left it
                ret = bdrv_change_backing_file(c.parent,
                                               backing_file_str if given else base.filename,
                                               bdrv_skip_filters(base).drv, given=given)
                if ret < 0:     # the graph stays changed: QEMU has no rollback here
                    top.m.report_error(f"Could not update backing file link: {os.strerror(-ret)}")
                    return ret
        return 0
    finally:
        drain.bdrv_subtree_drained_end(top)
        bdrv_unref(top, "bdrv_drop_intermediate")


def bdrv_change_backing_file(bs: BlockDriverState, filename: str | None, fmt: str | None,
                             given: bool = False) -> int:
    """Rewrite the image header's backing string (a filter passes it down);
    0, or ``-EINVAL`` with nothing changed when the string is longer than qcow2
    takes (:data:`~reference.filename.QCOW2_BACKING_FILE_MAX` characters, counted
    as QEMU has it: :func:`~reference.filename.qemu_length`).

    The string also becomes what the header would open (auto_backing_file).
    ``given``: the string is the user's ``backing-file``, which the QEMU
    backend passes as it is, a relative path, while the model's filenames
    stand for the absolute paths QEMU's nodes have: it never equals one.
    """
    target = bdrv_skip_filters(live(bs, "bdrv_change_backing_file"))
    if target is None or target.drv not in ("qcow2",):
        return 0
    if qemu_length(filename, given, bs.m.path_prefix) > QCOW2_BACKING_FILE_MAX:
        return -errno.EINVAL
    bs.m.nested_io_poll("bdrv_change_backing_file")     # the header write is I/O
    live(target, "bdrv_change_backing_file")
    target.backing_file = filename
    target.header_backing = filename
    target.auto_backing_file = filename or ""
    target.auto_backing_relative = given and bool(filename) and not path_has_protocol(filename)
    target.backing_format = target.header_backing_format = fmt if filename else None
    return 0


def bdrv_reopen_set_read_only(bs: BlockDriverState, read_only: bool) -> None:
    """Reopen ``bs`` read-only or read-write; drains its subtree while doing it."""
    drain.bdrv_subtree_drained_begin(bs)
    try:
        live(bs, "bdrv_reopen_set_read_only").read_only = read_only
    finally:
        drain.bdrv_subtree_drained_end(bs)
