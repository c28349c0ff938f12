# Cython declarations for commit.py (used only by `make fast`): see stream.pxd.

from reference.job cimport Job

cdef class CommitJob(Job):
    cdef public object top_bs, base_bs, backing_file_str, base_blk, top_blk, commit_top_bs
    cdef public object base_overlay
    cdef public bint chain_frozen, base_read_only

cdef class MirrorCommitJob(Job):
    cdef public object src_bs, target_bs, mirror_top_bs, target_blk, base_overlay
    cdef public bint should_complete, exited, in_drain, src_drained, chain_frozen
    cdef public list dirty

    cpdef bint driver_drained_poll(self)
