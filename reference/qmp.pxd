# Cython declarations for qmp.py (used only by `make fast`): see graph.pxd. x-wait-jobs
# asks after every loop step whether each job has settled: the job typed, so that its
# fields are read as C struct slots, and the questions C calls.

from reference.job cimport Job

cpdef bint job_settled(Job job)
cpdef bint _all_settled(dict jobs)
