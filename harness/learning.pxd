# Cython declarations for learning.py (used only by `make fast`): see reference/graph.pxd.
# pct samples each of a case's hundred-odd generator decisions from the grammar: the
# grammar, the learned source and the recent shares are extension types, their tables
# typed dicts.

from harness.choices cimport PCTSource

cdef class GrammarModel:
    cdef public dict weights, cumulative
    cdef public Py_ssize_t lessons

cdef class RecentShares:
    cdef public double growth, weight, total
    cdef public dict reached

cdef class LearnedPCTSource(PCTSource):
    cdef public GrammarModel model
    cdef public list generated
    cdef public object _random
