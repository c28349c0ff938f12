# Cython declarations for drain.py (used only by `make fast`): the types its
# annotations name, so that node and edge fields are read as C struct slots.

from reference.graph cimport BdrvChild, BlockDriverState
from reference cimport graph as _graph

# the recursive walks over parents and children: C calls between them
cpdef parent_drained_begin_single(BdrvChild c, bint poll, target=*)
cpdef _parent_quiesce(BdrvChild c)
cpdef parent_drained_end_single(BdrvChild c)
cpdef bint _parent_drained_poll_single(BdrvChild c)
cpdef child_attach(BdrvChild c)
cpdef child_detach(BdrvChild c)
cpdef _quiesce(BlockDriverState bs, BdrvChild ignore)
cpdef _unquiesce(BlockDriverState bs, BdrvChild ignore)
cpdef bint _drain_poll(BlockDriverState bs, bint recursive, BdrvChild ignore)
cpdef _drained_begin(BlockDriverState bs, bint recursive, BdrvChild parent, bint poll)
cpdef _drained_end(BlockDriverState bs, bint recursive, BdrvChild parent)
cpdef bdrv_drained_begin(BlockDriverState bs)
cpdef bdrv_drained_end(BlockDriverState bs)
cpdef bdrv_subtree_drained_begin(BlockDriverState bs)
cpdef bdrv_subtree_drained_end(BlockDriverState bs)
