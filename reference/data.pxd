# Cython declarations for data.py (used only by `make fast`): see graph.pxd. data.py
# has Cython read none of its annotations (its first line): its ints stay Python ints.

cdef class ImageData:
    cdef public object size, cluster_size
    cdef public list runs, breaks
    cdef public dict host
    cdef public bint raw

    # called from each other for every read, write and block-status query: C calls
    cpdef _first(self, offset)
    cpdef block_status(self, offset, max_bytes)
    cpdef list read(self, start, end)
    cpdef overwrite(self, start, end, data)
    cpdef write(self, start, end, data, read_below)
    cpdef _allocate(self, first, last)
    cpdef _note_break(self, k)
    cpdef list _cow_fill(self, start, end, read_below)

cpdef list _merge(runs)
