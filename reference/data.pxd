# Cython declarations for data.py (used only by `make fast`): see graph.pxd.

cdef class ImageData:
    cdef public object size, cluster_size
    cdef public list runs, breaks
    cdef public dict host
    cdef public bint raw
