# Cython declarations for stream.py (used only by `make fast`): see graph.pxd. The
# stream job as an extension type: its fields are C struct slots, and Job's cpdef
# methods reach it without looking for a Python override first.

from reference.job cimport Job

cdef class StreamJob(Job):
    cdef public object target_bs, base_overlay, above_base, backing_file_str, cor_filter_bs, blk
    cdef public bint cor_frozen, bs_read_only
