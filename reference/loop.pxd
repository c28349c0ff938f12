# Cython declarations for loop.py (used only by `make fast`): see graph.pxd.

cdef class Timer:
    cdef public object deadline, key, cb, armed, ctx

cdef class AioContext:
    cdef public object choose, max_steps, bhs, timers, now, steps, on_step, waiting

cdef class Yield:
    cdef public object kind, delay

cdef class Coroutine:
    cdef public object gen, running, done, on_yield, on_return
