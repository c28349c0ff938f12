# Cython declarations for job.py (used only by `make fast`): see graph.pxd. The job
# types (stream, commit, mirror) stay Python subclasses with their own attributes.

cdef class Job:
    cdef public object m, id, status, user_paused, busy, paused, cancelled, force_cancel
    cdef public object deferred_to_main_loop, started, ret, err, auto_finalize, auto_dismiss
    cdef public object on_error, speed, offset, len, co, sleep_timer, edges, blocker, main_bs
    cdef public object slice_quota, slice_start, slice_end, dispatched, freed, aborting_txn
    cdef public Py_ssize_t pause_count, in_flight

    # what a drain asks of a job parent (drain.py): C calls
    cpdef pause(self)
    cpdef resume(self)
    cpdef enter_cond(self, bint timer_ok)
    cpdef bint drained_poll(self)
