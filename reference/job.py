"""The generic job and the block job (job.c, blockjob.c, QEMU 7.2).

Status changes go through one table (:data:`TRANSITIONS`), verbs through
another (:data:`VERBS`); anything else is an
:class:`~reference.errors.IllegalTransition` or QEMU's refusal text.
A job's ``run`` is a generator run as a coroutine; completion is always the
bottom half ``job_exit``, never called from ``run`` itself.
"""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Generator

from reference.errors import IllegalTransition, QMPError
from reference.graph import (bdrv_attach_child, bdrv_filter_or_cow_bs, bdrv_op_block_all,
                             bdrv_op_unblock_all, bdrv_unref_child)
from reference.loop import YIELD_IO, YIELD_WAIT, Coroutine, Yield

if TYPE_CHECKING:
    from reference.machine import Machine

STATUSES = ("undefined", "created", "running", "paused", "ready", "standby",
            "waiting", "pending", "aborting", "concluded", "null")
#: job.c JobSTT: TRANSITIONS[from] = the statuses it may change to
TRANSITIONS: dict[str, frozenset[str]] = {
    "undefined": frozenset({"created"}),
    "created": frozenset({"running", "aborting", "null"}),
    "running": frozenset({"paused", "ready", "waiting", "aborting"}),
    "paused": frozenset({"running"}),
    "ready": frozenset({"standby", "waiting", "aborting"}),
    "standby": frozenset({"ready"}),
    "waiting": frozenset({"pending", "aborting"}),
    "pending": frozenset({"aborting", "concluded"}),
    "aborting": frozenset({"aborting", "concluded"}),
    "concluded": frozenset({"null"}),
    "null": frozenset(),
}
#: job.c JobVerbTable: the statuses in which each verb is accepted
VERBS: dict[str, frozenset[str]] = {
    "cancel": frozenset({"created", "running", "paused", "ready", "standby", "waiting", "pending"}),
    "pause": frozenset({"created", "running", "paused", "ready", "standby"}),
    "resume": frozenset({"created", "running", "paused", "ready", "standby"}),
    "set-speed": frozenset({"created", "running", "paused", "ready", "standby"}),
    # QEMU 7.2 accepts complete in standby too (measured; it acts after resume)
    "complete": frozenset({"ready", "standby"}),
    "finalize": frozenset({"pending"}),
    "dismiss": frozenset({"concluded"}),
}
COMPLETED = frozenset({"waiting", "pending", "aborting", "concluded", "null"})
SLICE_NS = 100_000_000        # rate limit slice: 100 ms
ECANCELED = -errno.ECANCELED


class Job:
    """A block job: the generic job state machine plus node registration."""

    kind = "job"
    job_type = "?"

    def __init__(self, m: "Machine", job_id: str, main_bs, *, speed: int = 0,
                 auto_finalize: bool = True, auto_dismiss: bool = True, on_error: str = "report"):
        self.m = m
        self.id = job_id
        self.status = "undefined"
        self.pause_count = 1
        self.user_paused = False
        self.busy = False
        self.paused = False
        self.cancelled = False
        self.force_cancel = False
        self.deferred_to_main_loop = False
        self.started = False
        self.ret = 0
        self.err: str | None = None
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.on_error = on_error
        self.speed = 0
        self.offset = 0
        self.len = 0
        self.co: Coroutine | None = None
        self.sleep_timer = None
        self.edges = []
        #: the claimed nodes whose 'consistent read' this job leaves unshared, while it
        #: holds them (a commit's intermediate nodes: :func:`reference.commit._claim_intermediate`)
        self.unshared_read = []
        self.blocker = f"block device is in use by block job: {self.job_type}"
        self.main_bs = main_bs
        self.slice_quota = 0.0
        self.slice_start = 0
        self.slice_end = -1
        self.dispatched = 0
        self.freed = False
        self.in_flight = 0
        self.aborting_txn = False
        self.transition("created")
        self.add_bdrv("main node", main_bs)
        if speed:
            self.set_speed(speed)

    def __repr__(self) -> str:
        return f"<{self.job_type} job {self.id} {self.status}>"

    # -- status and verbs ----------------------------------------------------

    def transition(self, new: str) -> None:
        old = self.status
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(self.id, old, new)
        self.status = new
        if old != new:
            self.m.event("JOB_STATUS_CHANGE", {"id": self.id, "status": new})

    def apply_verb(self, verb: str) -> None:
        if self.status not in VERBS[verb]:
            raise QMPError(f"Job '{self.id}' in state '{self.status}' cannot accept "
                           f"command verb '{verb}'")

    def is_completed(self) -> bool:
        return self.status in COMPLETED

    def is_cancelled(self) -> bool:
        return self.cancelled and self.force_cancel

    def should_pause(self) -> bool:
        return self.pause_count > 0

    # -- nodes (blockjob.c) ---------------------------------------------------

    def add_bdrv(self, name: str, bs) -> None:
        """block_job_add_bdrv: an edge that pauses us on drain, and all op blockers."""
        self.edges.append(bdrv_attach_child(self, bs, name))
        bdrv_op_block_all(bs, self.blocker)

    def holds(self, bs) -> bool:
        """Whether ``bs`` is one of this job's registered nodes or its filter."""
        return any(c.bs is bs for c in self.edges) or bs is self.filter_bs()

    def filter_bs(self):
        """The filter node this job inserted, if any (each job type names its own)."""
        return None

    def unshares_read(self, bs) -> bool:
        """Whether this job's claim on ``bs`` leaves 'consistent read' unshared, so that
        no new parent may read ``bs`` (a commit's intermediate nodes; a stream's share it)."""
        return any(n is bs for n in self.unshared_read)

    def will_drop(self, bs) -> bool:
        """Whether this job's completion takes ``bs`` out of the graph (an intermediate
        commit's filter and the nodes it merges). Only asked of the nodes a stream can
        have as its base: never an active commit's, which sit at the root."""
        return False

    def remove_all_bdrv(self) -> None:
        """block_job_remove_all_bdrv: drop every registered node (they may be freed)."""
        edges, self.edges = self.edges, []
        self.unshared_read = []
        for c in edges:
            bdrv_op_unblock_all(c.bs, self.blocker)
            bdrv_unref_child(self, c)

    def drained_poll(self) -> bool:
        """child_job_drained_poll: does a drain have to wait for us?"""
        if not self.busy or self.is_completed():
            return False
        return self.driver_drained_poll()

    def driver_drained_poll(self) -> bool:
        return True

    # -- pausing and entering -------------------------------------------------

    def pause(self) -> None:
        """job_pause: count, and wake the job so it reaches its pause point."""
        self.pause_count += 1
        if not self.paused:
            self.enter_cond(timer_ok=True)

    def resume(self) -> None:
        """job_resume: uncount; at zero, re-enter unless a sleep timer is pending."""
        assert self.pause_count > 0, f"job {self.id}: resume without pause"
        self.pause_count -= 1
        if self.pause_count == 0:
            self.enter_cond(timer_ok=False)

    def enter_cond(self, timer_ok: bool) -> None:
        """job_enter_cond: enter the coroutine now (synchronously) if it sleeps."""
        if not self.started or self.deferred_to_main_loop or self.busy:
            return
        if not timer_ok and self.sleep_timer is not None:
            return
        if self.sleep_timer is not None:
            self.sleep_timer.cancel()
            self.sleep_timer = None
        self.busy = True
        self.co.enter()

    def enter(self) -> None:
        self.enter_cond(timer_ok=True)

    def _on_yield(self, y: Yield) -> None:
        if y.kind == "sleep":
            self.sleep_timer = self.m.aio.timer_new(y.delay, f"timer:{self.id}", self._timer_cb)
        elif y.kind == "io":
            self.m.aio.bh_schedule(f"io:{self.id}", self.co.enter)

    def _timer_cb(self) -> None:
        self.sleep_timer = None
        self.enter_cond(timer_ok=True)

    # -- coroutine helpers used by run() --------------------------------------

    def do_yield(self, ns: int | None) -> Generator:
        self.busy = False
        yield Yield("sleep", ns) if ns is not None else YIELD_WAIT
        self.busy = True

    def sleep_ns(self, ns: int) -> Generator:
        """job_sleep_ns: sleep (a yield) unless asked to pause; then the pause point.

        The copy loops' hot path, so do_yield is written out here and the pause
        point entered only when it would stop (the same steps, two generators fewer)."""
        if self.is_cancelled():
            return
        if not self.should_pause():
            self.busy = False
            yield Yield("sleep", ns)
            self.busy = True
        if self.should_pause() and not self.is_cancelled():
            yield from self.pause_point()

    def pause_point(self) -> Generator:
        """job_pause_point: stop here (paused/standby) while pause_count > 0."""
        if not self.should_pause() or self.is_cancelled():
            return
        status = self.status
        self.transition("standby" if status == "ready" else "paused")
        self.paused = True
        yield from self.do_yield(None)
        self.paused = False
        self.transition(status)

    def io(self) -> Generator:
        """An I/O request: the coroutine waits (still busy) for its completion."""
        self.in_flight += 1
        yield YIELD_IO
        self.in_flight -= 1

    def read_metadata(self, top, base_overlay, offset=None) -> Generator:
        """With ``Machine.metadata_io`` (the caller checks it): a block-status query from
        ``top`` down to ``base_overlay`` first reads the L2 tables of the qcow2 images it
        reaches that QEMU has not cached yet, one I/O the job waits for, busy
        (qcow2_co_block_status; QEMU's trace shows qcow2_cache_get_read for each image on
        a stream's first iteration). A job asked to pause reaches its pause point after it.
        With ``offset``, the query is one at that offset: it reaches down to the first
        image that has it allocated (mirror_dirty_init's, one per extent)."""
        loaded = self.m.metadata_loaded
        missing = False
        bs = top
        while bs is not None and bs.freed_at is None:
            data = bs.data
            if data is not None and not data.raw and bs not in loaded:
                loaded.add(bs)
                missing = True
            if bs is base_overlay or (offset is not None and data is not None
                                      and data.block_status(offset, 1)[0]):
                break
            bs = bdrv_filter_or_cow_bs(bs)
        if missing:
            yield from self.io()

    def ratelimit_calculate_delay(self, n: int) -> int:
        """block_job_ratelimit_get_delay / ratelimit_calculate_delay on virtual time.

        QEMU 7.2 computes the delay after a chunk that copied and sleeps it at the
        top of the next iteration; a job woken early (a drain) does not sleep again.

        A slice that ends exactly now is over. QEMU starts a new slice once its
        clock is past the slice's end; after a full sleep it always is, by the
        timer's latency and the chunk's I/O, which take no virtual time here. Kept
        open, the slice would charge the chunk after the sleep to the one before it
        and make the job wait again: a commit of three 64 KiB chunks at 1 MiB/s
        ended at 187.5 ms instead of QEMU's 125 ms."""
        if not self.slice_quota:
            return 0
        now = self.m.aio.now
        if self.slice_end <= now:
            self.slice_start = now
            self.slice_end = now + SLICE_NS
            self.dispatched = 0
        self.dispatched += n
        if self.dispatched < self.slice_quota:
            return 0
        slices = self.dispatched / self.slice_quota
        self.slice_end = self.slice_start + int(slices * SLICE_NS)
        return self.slice_end - now

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """job_start: create the coroutine and enter it."""
        self.co = Coroutine(self._entry(), self._on_yield, self._on_return)
        self.started = True
        self.pause_count -= 1
        self.busy = True
        self.transition("running")
        self.co.enter()

    def _entry(self) -> Generator:
        """job_co_entry: a pause point first, then run()."""
        yield from self.pause_point()
        ret = yield from self.run()
        return ret

    def _on_return(self, ret) -> None:
        self.ret = int(ret or 0)
        self.m.note_run_end(self)
        self.deferred_to_main_loop = True
        self.busy = True
        self.m.aio.bh_schedule(f"bh:job_exit:{self.id}", self.job_exit)

    def run(self) -> Generator:
        raise NotImplementedError
        yield  # pragma: no cover

    def job_exit(self) -> None:
        """The completion BH: the 'lie' (busy = false), then job_completed."""
        if self.is_completed():
            return
        self.busy = False
        self.m.note_completion_start(self)
        try:
            self.completed()
        finally:
            self.m.note_completion_end(self)

    def update_rc(self) -> None:
        if not self.ret and self.is_cancelled():
            self.ret = ECANCELED
        if self.ret:
            if self.err is None:
                self.err = os.strerror(-self.ret)
            self.transition("aborting")

    def completed(self) -> None:
        assert not self.is_completed(), f"job {self.id} completed twice"
        self.update_rc()
        if self.ret:
            self.txn_abort()
        else:
            self.txn_success()

    def txn_success(self) -> None:
        self.transition("waiting")
        self.transition("pending")
        if not self.auto_finalize:
            self.m.event("BLOCK_JOB_PENDING", {"type": self.job_type, "id": self.id})
            return
        self.do_finalize()

    def do_finalize(self) -> None:
        if not self.ret:
            self.ret = self.prepare() or 0
            self.update_rc()
        if self.ret:
            self.txn_abort()
        else:
            self.finalize_single()

    def txn_abort(self) -> None:
        """job_completed_txn_abort for a one-job transaction."""
        if self.aborting_txn:
            return
        self.aborting_txn = True
        if not self.is_completed():
            self.m.aio.poll_while(lambda: not self.is_completed(), f"job '{self.id}' to finish")
        self.finalize_single()

    def finalize_single(self) -> None:
        self.update_rc()
        if not self.ret:
            self.commit()
        else:
            self.abort()
        self.clean()
        if self.started:
            self.emit_end_event()
        self.transition("concluded")
        if self.auto_dismiss or not self.started:
            self.do_dismiss()

    def emit_end_event(self) -> None:
        data = {"type": self.job_type, "device": self.id, "len": self.len,
                "offset": self.offset, "speed": self.speed}
        if self.is_cancelled():
            self.m.event("BLOCK_JOB_CANCELLED", data)
            return
        if self.ret:
            data["error"] = self.err
        self.m.event("BLOCK_JOB_COMPLETED", data)

    def do_dismiss(self) -> None:
        self.busy = False
        self.paused = False
        self.deferred_to_main_loop = True
        self.transition("null")
        self.m.job_removed(self)
        self.free()

    def free(self) -> None:
        """block_job_free: release the registered nodes (may free them)."""
        self.freed = True
        self.remove_all_bdrv()
        self.free_extra()

    # hooks for drivers
    def prepare(self) -> int:
        return 0

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def clean(self) -> None:
        pass

    def free_extra(self) -> None:
        pass

    # -- QMP verbs ---------------------------------------------------------------

    def user_pause(self) -> None:
        self.apply_verb("pause")
        if self.user_paused:
            raise QMPError("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        if not self.user_paused or self.pause_count <= 0:
            raise QMPError("Can't resume a job that was not paused")
        self.apply_verb("resume")
        self.user_paused = False
        self.resume()

    def user_cancel(self, force: bool) -> None:
        self.apply_verb("cancel")
        self.cancel(force)

    def cancel(self, force: bool) -> None:
        """job_cancel: every stream/commit cancel is a force cancel."""
        if self.status == "concluded":
            self.do_dismiss()
            return
        self.cancel_async(force)
        if not self.started:
            self.completed()
        elif self.deferred_to_main_loop:
            if self.is_cancelled():
                self.txn_abort()
        else:
            self.enter()

    def cancel_async(self, force: bool) -> None:
        force = self.driver_cancel(force)
        if self.user_paused:
            self.user_paused = False
            self.pause_count -= 1
        if not self.deferred_to_main_loop or force:
            self.cancelled = True
            self.force_cancel |= force

    def driver_cancel(self, force: bool) -> bool:
        return True       # no .cancel: behaves as force-cancelled

    def user_complete(self) -> None:
        self.apply_verb("complete")
        if self.cancelled or not self.can_complete():
            raise QMPError(f"The active block job '{self.id}' cannot be completed")
        self.complete()

    def can_complete(self) -> bool:
        return False

    def complete(self) -> None:
        pass

    def finalize(self) -> None:
        self.apply_verb("finalize")
        self.do_finalize()

    def dismiss(self) -> None:
        self.apply_verb("dismiss")
        self.do_dismiss()

    def set_speed(self, speed: int) -> None:
        """block_job_set_speed."""
        self.apply_verb("set-speed")
        if speed < 0:
            raise QMPError("Parameter 'speed' expects a non-negative value")
        old = self.speed
        self.speed = speed
        self.slice_quota = max(speed * SLICE_NS / 1e9, 1.0) if speed else 0.0
        if speed and speed <= old:
            return
        if self.sleep_timer is not None:      # kick only if a timer is pending
            self.enter_cond(timer_ok=True)

    def info(self) -> dict:
        """query-jobs entry."""
        out = {"id": self.id, "type": self.job_type, "status": self.status,
               "current-progress": self.offset, "total-progress": self.len}
        if self.ret and self.err:
            out["error"] = self.err
        return out

    def block_info(self) -> dict:
        """query-block-jobs entry."""
        return {"type": self.job_type, "device": self.id, "len": self.len,
                "offset": self.offset, "busy": self.busy, "paused": self.pause_count > 0,
                "speed": self.speed, "ready": self.status in ("ready", "standby"),
                "status": self.status, "io-status": "ok",
                "auto-finalize": self.auto_finalize, "auto-dismiss": self.auto_dismiss}
