# Cython declarations for choices.py (used only by `make fast`): see reference/graph.pxd.
# Every run asks its source for each decision (about a hundred a run, the generator's
# and the scheduler's): the base class and the seeded source are extension types, so
# that the hot path reads its fields as C slots. The other sources stay Python classes
# (they subclass ChoiceSource and keep an instance dict).

cdef class ChoiceSource:
    cdef public list recorded
    cdef dict __dict__

cdef class RandomSource(ChoiceSource):
    cdef public object seed, rng, _bits

cdef class PCTSource(ChoiceSource):
    cdef public object seed, rng
    cdef public dict change_points, priorities
    cdef public Py_ssize_t depth, steps
