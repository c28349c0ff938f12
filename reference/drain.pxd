# Cython declarations for drain.py (used only by `make fast`): the types its
# annotations name, so that node and edge fields are read as C struct slots.

from reference.graph cimport BdrvChild, BlockDriverState

# the recursive walks over parents and children: C calls between them
cpdef parent_drained_end_single(BdrvChild c)
cpdef bint _parent_drained_poll_single(BdrvChild c)
cpdef child_attach(BdrvChild c)
cpdef child_detach(BdrvChild c)
cpdef _quiesce(BlockDriverState bs, BdrvChild ignore)
cpdef _unquiesce(BlockDriverState bs, BdrvChild ignore)
cpdef bint _drain_poll(BlockDriverState bs, bint recursive, BdrvChild ignore)
