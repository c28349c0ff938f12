"""The QMP command surface (blockdev.c, job-qmp.c, qapi/block-core.json, qapi/job.json).

``execute(machine, name, arguments)`` returns the reply as QMP shapes it:
``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``, with
QEMU's own texts. Arguments are checked as QAPI checks them (missing,
unexpected, wrong type, bad enum value) before the handler runs.
Harness commands start with ``x-``: ``x-step``, ``x-wait-jobs``,
``x-guest-write``.
"""
from __future__ import annotations

from typing import Any, Callable

from reference.commit import commit_active_start, commit_start
from reference.errors import Hang, QMPError
from reference.filename import bdrv_refresh_filename
from reference.graph import (bdrv_chain_contains, bdrv_filter_or_cow_bs, bdrv_find_backing_image,
                             bdrv_find_base, bdrv_find_overlay, bdrv_op_is_blocked,
                             bdrv_skip_filters, live)
from reference.job import Job
from reference.stream import stream_start

ON_ERROR = ("report", "ignore", "enospc", "stop", "auto")
S, I, B, E = "string", "integer", "boolean", "on-error"
_JOB_ARGS = {"job-id": S, "speed": I, "on-error": E, "filter-node-name": S,
             "auto-finalize": B, "auto-dismiss": B}
#: command -> (required arguments, all arguments with their QAPI type), in schema order
SCHEMA: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "block-stream": (("device",), {"job-id": S, "device": S, "base": S, "base-node": S,
                                   "backing-file": S, "bottom": S, **_JOB_ARGS}),
    "block-commit": (("device",), {"job-id": S, "device": S, "base-node": S, "base": S,
                                   "top-node": S, "top": S, "backing-file": S, **_JOB_ARGS}),
    "block-job-set-speed": (("device", "speed"), {"device": S, "speed": I}),
    "block-job-cancel": (("device",), {"device": S, "force": B}),
    "block-job-pause": (("device",), {"device": S}),
    "block-job-resume": (("device",), {"device": S}),
    "block-job-complete": (("device",), {"device": S}),
    "block-job-finalize": (("id",), {"id": S}),
    "block-job-dismiss": (("id",), {"id": S}),
    "job-pause": (("id",), {"id": S}),
    "job-resume": (("id",), {"id": S}),
    "job-cancel": (("id",), {"id": S}),
    "job-complete": (("id",), {"id": S}),
    "job-finalize": (("id",), {"id": S}),
    "job-dismiss": (("id",), {"id": S}),
    "query-jobs": ((), {}),
    "query-block-jobs": ((), {}),
    "query-named-block-nodes": ((), {"flat": B}),
    "x-debug-query-block-graph": ((), {}),
    "x-step": ((), {"count": I}),
    "x-wait-jobs": ((), {}),
    "x-guest-write": (("offset", "length", "pattern"), {"offset": I, "length": I, "pattern": I}),
}
#: QAPI argument name -> the handler's keyword (dashes as underscores), made once
KEYWORDS: dict[str, str] = {key: key.replace("-", "_") for _, spec in SCHEMA.values() for key in spec}


def execute(m, name: str, arguments: dict[str, Any] | None = None) -> dict:
    """Run one command; a modelled error becomes an error reply, a ModelFault propagates."""
    arguments = arguments or {}
    try:
        if name not in SCHEMA:
            raise QMPError(f"The command {name} has not been found", "CommandNotFound")
        check_arguments(name, arguments)
        result = HANDLERS[name](m, **{KEYWORDS[k]: v for k, v in arguments.items()})
    except QMPError as e:
        return e.reply()
    return {"return": {} if result is None else result}


def check_arguments(name: str, args: dict[str, Any]) -> None:
    """Raise QAPI's error for the first bad argument, in schema order.

    Every command of every run comes through here, and nearly all are well formed:
    that is settled by looking at the few arguments given, not at each of the
    fourteen a block job's schema lists. Only a call that is not well formed walks
    the schema, to find the error QEMU reports first."""
    required, spec = SCHEMA[name]
    if not _well_formed(args, required, spec):
        _first_error(args, required, spec)


def _well_formed(args: dict[str, Any], required: tuple[str, ...], spec: dict[str, str]) -> bool:
    for key in required:
        if key not in args:
            return False
    for key, value in args.items():
        typ = spec.get(key)
        if typ is None or not _type_ok(value, typ):
            return False
    return True


def _first_error(args: dict[str, Any], required: tuple[str, ...], spec: dict[str, str]) -> None:
    for key, typ in spec.items():
        if key not in args:
            if key in required:
                raise QMPError(f"Parameter '{key}' is missing")
            continue
        value = args[key]
        if typ == E:
            if not isinstance(value, str):
                raise QMPError(f"Invalid parameter type for '{key}', expected: string")
            if value not in ON_ERROR:
                raise QMPError(f"Parameter '{key}' does not accept value '{value}'")
        elif not _type_ok(value, typ):
            raise QMPError(f"Invalid parameter type for '{key}', expected: {typ}")
    for key in args:
        if key not in spec:
            raise QMPError(f"Parameter '{key}' is unexpected")


def _type_ok(value, typ: str) -> bool:
    """Whether ``value`` is a valid ``typ`` (an enum's value one of its members)."""
    if typ == E:
        return isinstance(value, str) and value in ON_ERROR
    if typ == S:
        return isinstance(value, str)
    if typ == B:
        return isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)


# -- lookups ---------------------------------------------------------------------

def bdrv_lookup_bs(m, device: str | None, node_name: str | None):
    if device is not None and device in m.blks:
        bs = m.blks[device].bs
        if bs is None:
            raise QMPError(f"Device '{device}' has no medium")
        return live(bs, "bdrv_lookup_bs")
    if node_name is not None and node_name in m.named_nodes:
        return live(m.named_nodes[node_name], "bdrv_lookup_bs")
    raise QMPError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")


def is_root_node(bs) -> bool:
    return all(c.parent.kind == "bb" for c in bs.parents)


# -- block-stream ------------------------------------------------------------------

def qmp_block_stream(m, device, job_id=None, base=None, base_node=None, backing_file=None,
                     bottom=None, speed=0, on_error="report", filter_node_name=None,
                     auto_finalize=True, auto_dismiss=True):
    for a, b, an, bn in ((base, base_node, "base", "base-node"), (base, bottom, "base", "bottom"),
                         (bottom, base_node, "bottom", "base-node")):
        if a is not None and b is not None:
            raise QMPError(f"'{an}' and '{bn}' cannot be specified at the same time")
    bs = bdrv_lookup_bs(m, device, device)
    base_bs = bottom_bs = None
    if base is not None:
        base_bs = bdrv_find_backing_image(bs, base)
        if base_bs is None:
            raise QMPError(f"Can't find '{base}' in the backing chain")
    if base_node is not None:
        base_bs = bdrv_lookup_bs(m, None, base_node)
        if bs is base_bs or not bdrv_chain_contains(bs, base_bs):
            raise QMPError(f"Node '{base_node}' is not a backing image of '{device}'")
        bdrv_refresh_filename(base_bs)      # blockdev.c does, for the base's name below
    if bottom is not None:
        bottom_bs = bdrv_lookup_bs(m, None, bottom)
        if bottom_bs.is_filter:
            raise QMPError(f"Node '{bottom}' is a filter, use a non-filter node as 'bottom'")
        if not bdrv_chain_contains(bs, bottom_bs):
            raise QMPError(f"Node '{bottom}' is not in a chain starting from '{device}'")
    iter_end = bdrv_filter_or_cow_bs(bottom_bs) if bottom_bs is not None else base_bs
    it = bs
    while it is not None and it is not iter_end:
        bdrv_op_is_blocked(it)
        it = bdrv_filter_or_cow_bs(it)
    if base_bs is None and backing_file is not None:
        raise QMPError("backing file specified, but streaming the entire chain")
    stream_start(m, job_id, bs, base_bs, backing_file, bottom_bs, speed=speed, on_error=on_error,
                 filter_node_name=filter_node_name, auto_finalize=auto_finalize,
                 auto_dismiss=auto_dismiss)


# -- block-commit ------------------------------------------------------------------

def qmp_block_commit(m, device, job_id=None, base_node=None, base=None, top_node=None, top=None,
                     backing_file=None, speed=0, on_error="report", filter_node_name=None,
                     auto_finalize=True, auto_dismiss=True):
    bs = _commit_root(m, device)
    bdrv_op_is_blocked(bs)
    top_bs = _commit_top(m, bs, top_node, top)
    base_bs = _commit_base(m, top_bs, base_node, base)
    stop = bdrv_filter_or_cow_bs(base_bs)
    it = top_bs
    while it is not None and it is not stop:     # COMMIT_TARGET blockers, top to base
        bdrv_op_is_blocked(it)
        it = bdrv_filter_or_cow_bs(it)
    if top_bs is base_bs:                        # only then (blockdev.c's order)
        raise QMPError("cannot commit an image into itself")
    kw = dict(speed=speed, on_error=on_error, filter_node_name=filter_node_name,
              auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    if bdrv_skip_filters(top_bs) is bdrv_skip_filters(bs):
        if backing_file is not None:
            raise QMPError("'backing-file' specified, but 'top' is the active layer")
        commit_active_start(m, job_id, bs, base_bs, **kw)
        return
    overlay = bdrv_find_overlay(bs, top_bs)
    bdrv_op_is_blocked(overlay)
    commit_start(m, job_id, bs, base_bs, top_bs, backing_file, **kw)


def _commit_root(m, device):
    """qmp_get_root_bs, with the DeviceNotFound class libvirt probes for."""
    try:
        bs = bdrv_lookup_bs(m, device, device)
    except QMPError:
        raise QMPError(f"Device '{device}' not found", "DeviceNotFound") from None
    if not is_root_node(bs):
        raise QMPError("Need a root block node")
    return bs


def _commit_top(m, bs, top_node, top):
    if top_node is not None and top is not None:
        raise QMPError("'top-node' and 'top' are mutually exclusive")
    top_bs = bs
    if top_node is not None:
        top_bs = bdrv_lookup_bs(m, None, top_node)
        if not bdrv_chain_contains(bs, top_bs):
            raise QMPError(f"'{top_node}' is not in this backing file chain")
    elif top is not None and bs.filename != top:     # the cached filename, a shortcut
        top_bs = bdrv_find_backing_image(bs, top)
    if top_bs is None:
        raise QMPError(f"Top image file {top} not found")
    return top_bs


def _commit_base(m, top_bs, base_node, base):
    if base_node is not None and base is not None:
        raise QMPError("'base-node' and 'base' are mutually exclusive")
    if base_node is not None:
        base_bs = bdrv_lookup_bs(m, None, base_node)
        if not bdrv_chain_contains(top_bs, base_bs):
            raise QMPError(f"'{base_node}' is not in this backing file chain")
        return base_bs
    if base is not None:
        base_bs = bdrv_find_backing_image(top_bs, base)
        if base_bs is None:
            raise QMPError(f"Can't find '{base}' in the backing chain")
        return base_bs
    base_bs = bdrv_find_base(top_bs)
    if base_bs is None:
        raise QMPError("There is no backimg image")
    return base_bs


# -- job verbs ---------------------------------------------------------------------

def find_block_job(m, device: str) -> Job:
    job = m.jobs.get(device)
    if job is None:
        raise QMPError(f"Block job '{device}' not found", "DeviceNotActive")
    return job


def find_job(m, job_id: str) -> Job:
    job = m.jobs.get(job_id)
    if job is None:
        raise QMPError("Job not found")
    return job


def qmp_block_job_cancel(m, device, force=False):
    job = find_block_job(m, device)
    if job.user_paused and not force:
        raise QMPError(f"The block job for device '{device}' is currently paused")
    job.user_cancel(force)


def qmp_block_job_set_speed(m, device, speed):
    find_block_job(m, device).set_speed(speed)


def _verb(lookup: Callable, method: str, *args) -> Callable:
    def handler(m, **kw):
        key = kw.get("device", kw.get("id"))
        getattr(lookup(m, key), method)(*args)
    return handler


def qmp_query_jobs(m):
    return [m.jobs[i].info() for i in m.job_order if i in m.jobs]


def qmp_query_block_jobs(m):
    return [m.jobs[i].block_info() for i in m.job_order if i in m.jobs]


def qmp_query_named_block_nodes(m, flat=False):
    """bdrv_block_device_info of every named node: each refreshes its filename
    (a side effect later header writes can show)."""
    out = []
    for name, bs in m.named_nodes.items():
        bdrv_refresh_filename(bs)
        backing = bdrv_filter_or_cow_bs(bs) if not bs.is_filter else None
        image = {"filename": bs.filename, "format": bs.drv}
        if bs.backing_file:
            image["backing-filename"] = bs.backing_file
        if backing is not None:
            image["backing-image"] = {"filename": backing.filename, "format": backing.drv}
        out.append({"node-name": name, "drv": bs.drv, "file": bs.filename,
                    "ro": bs.read_only, "image": image})
    return out


def qmp_x_debug_query_block_graph(m):
    nodes, edges, seen = [], [], {}

    def node_id(obj, name, typ):
        key = id(obj)
        if key not in seen:
            seen[key] = len(seen) + 1
            nodes.append({"id": seen[key], "type": typ, "name": name})
        return seen[key]

    for bs in list(m.named_nodes.values()):
        pid = node_id(bs, bs.node_name, "block-driver")
        for c in bs.children:
            edges.append({"parent": pid, "child": node_id(c.bs, c.bs.node_name, "block-driver"),
                          "name": c.name})
    for name, blk in m.blks.items():
        if blk.bs is not None:
            edges.append({"parent": node_id(blk, name, "block-backend"),
                          "child": node_id(blk.bs, blk.bs.node_name, "block-driver"), "name": "root"})
    for job in m.jobs.values():
        for c in job.edges:
            edges.append({"parent": node_id(job, job.id, "block-job"),
                          "child": node_id(c.bs, c.bs.node_name, "block-driver"), "name": c.name})
    return {"nodes": nodes, "edges": edges}


# -- harness commands ------------------------------------------------------------------

#: how far x-step may move virtual time: as a real QEMU backend waits a bounded
#: while for events, a rate-limited job does not finish in one x-step
X_STEP_HORIZON_NS = 50_000_000


def x_step(m, count=1):
    if count < 0:
        raise QMPError("Parameter 'count' expects a non-negative integer")
    target = m.x_step_until.get(m.cmd_index)
    until = m.aio.now + X_STEP_HORIZON_NS if target is None else max(m.aio.now, m.case_start + target)
    for _ in range(count):
        if not m.aio.aio_poll(blocking=True, until=until):
            break


def job_settled(job: Job) -> bool:
    """Concluded, or waiting for a verb: finalize, complete, resume."""
    if job.status in ("concluded", "null"):
        return True
    if job.user_paused and job.status in ("paused", "standby"):
        return True       # waits for resume
    if job.deferred_to_main_loop and not job.is_completed():
        return False      # job_exit is still to run
    if job.status in ("ready", "standby"):
        return not (getattr(job, "should_complete", False) or job.cancelled)
    if job.status == "pending" and not job.auto_finalize:
        return True
    return False       # a pause asked for, not yet reached: QEMU reports 'running' until the pause point


#: between two QMP commands the loop runs 0 .. CLIENT_GAP-2 iterations, or (the
#: last choice) everything that is ready until it idles: QEMU's main loop is much
#: faster than a QMP round trip, so a job with nothing left to wait for may finish
#: before the next command arrives.
CLIENT_GAP = 5
IDLE_BOUND = 10_000


def client_gap(m, label: str) -> None:
    """The loop's work while the client's next command is on its way (a choice
    of ``label``: how many iterations; ``Machine.gap_steps`` may set it exactly)."""
    k = m.aio.choose(CLIENT_GAP, label)
    if m.gap_steps and label == "between" and m.cmd_index in m.gap_steps:
        for _ in range(m.gap_steps[m.cmd_index]):
            if not m.aio.aio_poll(blocking=False):
                m.gap_idle = True
                return
        return
    for _ in range(k if k < CLIENT_GAP - 1 else IDLE_BOUND):
        if not m.aio.aio_poll(blocking=False):
            break


def x_wait_jobs(m):
    # the QEMU backend sends one block-job-set-speed per throttled job and waits
    # for each reply: a woken job may run, even to its completion, in between
    for i, device in enumerate(m.unthrottle.get(m.cmd_index, ())):
        if i:
            client_gap(m, "lift-gap")
        _lift_speed_limit(m, device)
    while not _all_settled(m.jobs):
        if not m.aio.aio_poll(blocking=True):
            busy = ", ".join(f"{j.id} ({j.status})" for j in m.jobs.values() if not job_settled(j))
            raise Hang(f"jobs to settle: {busy}", m.aio.steps)


def _all_settled(jobs: dict) -> bool:
    """Whether every job is settled: asked after each step x-wait-jobs runs, so a plain
    loop, not all() over a generator (which costs a generator object and its frame)."""
    for job in jobs.values():
        if not job_settled(job):
            return False
    return True


def _lift_speed_limit(m, device: str) -> None:
    """``block-job-set-speed 0``, as the QEMU backend sends it before waiting: QEMU's
    rate limits run in real time, the model's in virtual time. A job that is gone or
    refuses the verb is left alone, as the backend does."""
    try:
        qmp_block_job_set_speed(m, device, 0)
    except QMPError:
        pass


def x_guest_write(m, offset, length, pattern):
    root = m.device_root()
    size = bdrv_skip_filters(root).data.size
    if offset < 0 or length <= 0 or offset + length > size or not 0 <= pattern <= 255:
        raise QMPError("Invalid guest write: offset, length or pattern out of range")
    blk = next(iter(m.blks.values()), None)
    m.guest_write(offset, length, pattern)
    if blk is not None and blk.queued:
        # the device is drained: the request waits in its queue, and the write (HMP
        # qemu-io, synchronous) returns only when it has run; if nothing can end the
        # drain (an active commit pending for job-finalize), QEMU hangs here too
        m.aio.poll_while(lambda: bool(blk.queued), "a guest write on a drained device")


HANDLERS: dict[str, Callable] = {
    "block-stream": qmp_block_stream,
    "block-commit": qmp_block_commit,
    "block-job-set-speed": qmp_block_job_set_speed,
    "block-job-cancel": qmp_block_job_cancel,
    "block-job-pause": _verb(find_block_job, "user_pause"),
    "block-job-resume": _verb(find_block_job, "user_resume"),
    "block-job-complete": _verb(find_block_job, "user_complete"),
    "block-job-finalize": _verb(find_block_job, "finalize"),
    "block-job-dismiss": _verb(find_block_job, "dismiss"),
    "job-pause": _verb(find_job, "user_pause"),
    "job-resume": _verb(find_job, "user_resume"),
    "job-cancel": _verb(find_job, "user_cancel", True),
    "job-complete": _verb(find_job, "user_complete"),
    "job-finalize": _verb(find_job, "finalize"),
    "job-dismiss": _verb(find_job, "dismiss"),
    "query-jobs": qmp_query_jobs,
    "query-block-jobs": qmp_query_block_jobs,
    "query-named-block-nodes": qmp_query_named_block_nodes,
    "x-debug-query-block-graph": qmp_x_debug_query_block_graph,
    "x-step": x_step,
    "x-wait-jobs": x_wait_jobs,
    "x-guest-write": x_guest_write,
}
