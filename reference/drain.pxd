# Cython declarations for drain.py (used only by `make fast`): the types its
# annotations name, so that node and edge fields are read as C struct slots.

from reference.graph cimport BdrvChild, BlockDriverState
