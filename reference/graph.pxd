# Cython declarations for graph.py (used only by `make fast`): the node and the edge
# as extension types, so that their fields are C struct slots, not instance dicts.

from reference.data cimport ImageData
from reference.job cimport Job
from reference cimport drain
from reference.machine cimport BlockBackend, Machine

cdef class BlockDriverState:
    cdef public Machine m
    cdef public str node_name, drv, image_file, filename, exact_filename
    cdef public object full_open_options, file_options, auto_backing_file, auto_backing_relative
    cdef public ImageData data
    cdef public bint read_only, implicit, is_filter, never_freeze
    cdef public list children, parents, op_blockers
    cdef public object backing_file, header_backing, header_backing_format, backing_format
    cdef public object freed_at, mirror_job
    cdef public BlockDriverState cor_bottom
    cdef public Py_ssize_t refcnt, quiesce_counter, recursive_quiesce_counter

cdef class BdrvChild:
    cdef public BlockDriverState bs
    cdef public str name
    cdef public object parent
    cdef public bint frozen, stay_at_node
    cdef public BlockDriverState parent_node
    cdef public Job parent_job
    cdef public BlockBackend parent_blk
    cdef public Py_ssize_t parent_quiesce_counter

# the small helpers every walk and graph change calls: C calls within this module
cpdef BlockDriverState live(BlockDriverState bs, str where)
cpdef bdrv_ref(BlockDriverState bs, str where=*)
cpdef bdrv_unref(BlockDriverState bs, str where=*)
cpdef BdrvChild bdrv_attach_child(parent, BlockDriverState child_bs, str name)
cpdef bdrv_unref_child(parent, BdrvChild c)
cpdef BlockDriverState bdrv_remove_child(parent, BdrvChild c)
cpdef _replace_child_noperm(BdrvChild c, BlockDriverState new, bint attaching=*)
cpdef bint _is_cow_child(BdrvChild c)
cpdef BdrvChild bdrv_filter_child(BlockDriverState bs)
cpdef BdrvChild bdrv_cow_child(BlockDriverState bs)
cpdef BlockDriverState bdrv_filter_or_cow_bs(BlockDriverState bs)
cpdef BlockDriverState bdrv_cow_bs(BlockDriverState bs)
cpdef BlockDriverState bdrv_skip_filters(BlockDriverState bs, bint implicit_only=*)
cpdef BlockDriverState bdrv_backing_chain_next(BlockDriverState bs)

# imported by job.py, which (through the types above) may start before this module's
# code has run: cpdef functions exist from the start, plain ones only once defined
cpdef bdrv_op_block_all(BlockDriverState bs, str reason)
cpdef bdrv_op_unblock_all(BlockDriverState bs, str reason)
