# Cython declarations for job.py (used only by `make fast`): see graph.pxd. The job
# types (stream, commit, mirror) stay Python subclasses with their own attributes.

from reference.loop cimport Coroutine, Timer, Yield
from reference.machine cimport Machine

cdef class Job:
    cdef public Machine m
    cdef public object id, status, ret, err, auto_finalize, auto_dismiss
    cdef public bint user_paused, busy, paused, cancelled, force_cancel
    cdef public bint deferred_to_main_loop, started, freed, aborting_txn
    cdef public object on_error, speed, offset, len, blocker, main_bs
    cdef public Timer sleep_timer
    cdef public Coroutine co
    cdef public list edges, unshared_read
    cdef public object slice_quota, slice_start, slice_end, dispatched
    cdef public Py_ssize_t pause_count, in_flight

    # what a drain asks of a job parent (drain.py): C calls
    cpdef pause(self)
    cpdef resume(self)
    cpdef enter_cond(self, bint timer_ok)
    cpdef bint drained_poll(self)
    cpdef bint driver_drained_poll(self)
    cpdef bint is_completed(self)
    cpdef bint is_cancelled(self)
    cpdef bint should_pause(self)
    cpdef transition(self, str new)
