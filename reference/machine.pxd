# Cython declarations for machine.py (used only by `make fast`): see graph.pxd. The
# machine every node and job points at, as an extension type: its loop and its
# bookkeeping are C struct slots, its note_* hooks C calls.

from reference.loop cimport AioContext
from reference cimport graph as _graph

cdef class BlockBackend:
    cdef public object name, root
    cdef public Py_ssize_t quiesce_counter, in_flight
    cdef public list queued

cdef class Machine:
    cdef public AioContext aio
    cdef public dict named_nodes, images, blks, jobs, unthrottle, x_step_until, gap_steps
    cdef public list job_order, events, completing, errors, trace, all_nodes
    cdef public object bugs, cells, top_node
    cdef public Py_ssize_t cmd_index, drain_depth, auto_counter, case_start, path_prefix
    cdef public bint opening, metadata_io, gap_idle
    cdef public set metadata_loaded

    cpdef str step_label(self)
    cpdef str stamp(self, str where)
    cpdef bint bug(self, str bug_id)
    cpdef event(self, str name, dict data)
    cpdef cell(self, str name)
    cpdef note_freed(self, bs)
    cpdef note_run_end(self, job)
    cpdef note_new_backing(self, backing)
    cpdef note_completion_start(self, job)
    cpdef note_completion_end(self, job)
    # the data path, recursive down the chain and called back by copy-on-write: C calls
    cpdef list read(self, _graph.BlockDriverState bs, start, end)
    cpdef write(self, _graph.BlockDriverState bs, start, end, runs)
