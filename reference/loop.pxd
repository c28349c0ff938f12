# Cython declarations for loop.py (used only by `make fast`): see graph.pxd.

cdef class Timer:
    cdef public object deadline, key, cb
    cdef public bint armed
    cdef public AioContext ctx

    cpdef cancel(self)

cdef class AioContext:
    cdef public object choose, max_steps, now, on_step
    cdef public list bhs, timers, waiting
    cdef public Py_ssize_t steps

    cpdef bh_schedule(self, str key, cb)
    cpdef list _due(self)
    cpdef bint aio_poll(self, bint blocking, until=*)
    cpdef poll_while(self, cond, str what)

cdef class Yield:
    cdef public str kind
    cdef public object delay

cdef class Coroutine:
    cdef public object gen, on_yield, on_return
    cdef public bint running, done

