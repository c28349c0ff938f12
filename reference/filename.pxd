# Cython declarations for filename.py (used only by `make fast`): see graph.pxd. The
# node is typed, so the refresh reads its fields as C struct slots.

from reference.graph cimport BlockDriverState

cpdef bdrv_refresh_filename(BlockDriverState bs)
cpdef bint bdrv_backing_overridden(BlockDriverState bs)
cpdef dict _gather_options(BlockDriverState bs, bint overridden)
cpdef str _exact_filename(BlockDriverState bs, bint overridden)
