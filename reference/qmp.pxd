# Cython declarations for qmp.py (used only by `make fast`): see graph.pxd. x-wait-jobs
# asks after every loop step whether each job has settled: the job typed, so that its
# fields are read as C struct slots, and the questions C calls.

from reference.job cimport Job
from reference.machine cimport Machine

cpdef bint job_settled(Job job)
cpdef bint _all_settled(dict jobs)

# the gap between two QMP commands, taken before every command of every run
cpdef client_gap(Machine m, str label)
